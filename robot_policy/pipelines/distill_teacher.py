"""The teacher of a distillation run: what it is, which network the student copies, where its states come from.

Three kinds, by the checkpoint's format:

* ``policy`` (a diffusion checkpoint, e.g. BC): the student copies it and regresses its sampler's chunks.
* ``noise_actor`` (a DSRL composite): the student distils the composite's *base* with the base's recorded
  sampler (the map w -> chunk the actor was trained on); rollouts choose the base's noise with the actor, so
  the states are those the deployed composite visits, and part of each batch uses the actor's w. The run
  then writes a composite pairing the same actor with the student (:func:`write_student_composite`).
* ``residual`` (a residual-PPO composite): ResiP's teacher-student. The composite's successful rollouts
  become windows with target chunks (the normalised actions it executed from each step on); the student,
  warm-started from the base, regresses them, so the deployed policy needs no residual. By default only
  the windows where the base planned a chunk are kept, each with the noise it planned from, so the
  regression is a same-noise one (``residual_same_noise``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from robot_policy.algorithms.distill_states import NOISE, TARGET, NoiseChooser, WindowBank
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.data import format as fmt
from robot_policy.envs.base import TaskConfig
from robot_policy.envs.registry import make_env
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase, checkpoint_content_hash
from robot_policy.policies.composite import (
    NoiseActorComposite,
    ResidualComposite,
    is_composite,
    load_composite,
)

#: composite kind (``config.json`` composite.kind) -> teacher kind
COMPOSITE_KINDS = {"dsrl_sac": "noise_actor", "dsrl_na": "noise_actor", "residual_ppo": "residual"}


@dataclass
class Teacher:
    """A loaded teacher. ``base`` is the diffusion policy the student copies (the checkpoint itself, or a
    composite's base with its recorded sampler); ``composite`` is set for the composite kinds."""

    kind: str
    path: Path
    meta: dict[str, Any]
    base: FrozenBase
    content_hash: str
    composite: NoiseActorComposite | ResidualComposite | None = None

    def record(self) -> dict[str, Any]:
        """What the student's checkpoint records about its teacher."""
        return {"kind": self.kind, "path": str(self.path), "absolute_path": str(self.path.resolve()),
                "content_hash": self.content_hash, "base_path": str(self.base.path),
                "base_content_hash": self.base.content_hash, "sampler": self.base.sampler.kind,
                "num_steps": self.base.sampler.num_steps}


def load_teacher(path: str | Path, task: TaskConfig, sampler: str | None, num_steps: int | None,
                 device: str = "cpu") -> Teacher:
    """Load ``path`` (a checkpoint or run directory) as a teacher for ``task``.

    ``sampler``/``num_steps`` choose a diffusion teacher's sampler (default its own); a composite's base
    keeps the sampler it was fine-tuned with, since its actor or residual was trained on that map.
    """
    resolved = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_config(resolved)
    if is_composite(meta):
        kind = COMPOSITE_KINDS.get(meta["composite"]["kind"])
        if kind is None:
            raise ValueError(f"{resolved}: composite kind {meta['composite']['kind']!r} cannot be distilled; "
                             f"kinds: {', '.join(COMPOSITE_KINDS)}")
        recorded = meta["base"]
        for option, value, own in (("teacher_sampler", sampler, recorded["sampler"]),
                                   ("teacher_steps", num_steps, int(recorded["num_steps"]))):
            if value is not None and value != own:
                raise ValueError(f"{option}={value}: {resolved} was fine-tuned on its base sampling with "
                                 f"{recorded['sampler']} ({recorded['num_steps']} steps); its teacher samples so")
        composite = load_composite(resolved, device=device)
        base = composite.base
        teacher = Teacher(kind, resolved, meta, base, checkpoint_content_hash(resolved), composite)
    else:
        base = FrozenBase.from_checkpoint(resolved, device=device, sampler=sampler, num_steps=num_steps,
                                          language=task.language)
        teacher = Teacher("policy", resolved, meta, base, base.content_hash)
    if not base.sampler.deterministic:
        raise ValueError(f"the teacher samples with {base.sampler.kind} (eta {base.sampler.eta}); same-noise "
                         "distillation needs a deterministic map noise -> chunk: dpmsolver++, or ddim with eta 0")
    if base.embodiment.name != task.embodiment:
        raise ValueError(f"teacher {resolved} drives {base.embodiment.name}; task {task.name} is {task.embodiment}")
    return teacher


def noise_chooser(teacher: Teacher) -> NoiseChooser:
    """How rollouts choose the base's initial noise: the actor's deterministic w for a noise-actor teacher,
    else the episode's seeded draw (as ``DiffusionPolicy`` draws it)."""
    composite = teacher.composite
    if not isinstance(composite, NoiseActorComposite):
        return lambda rollout, due: rollout.draw_noise(due)

    def choose(rollout: VectorRollout, due: np.ndarray) -> Tensor:
        state, obj = rollout.features_state()
        idx = torch.as_tensor(np.flatnonzero(due))
        feats = composite.features(state[idx], None if obj is None else obj[idx])
        return composite.noise.full_noise(composite.actor.deterministic(feats))

    return choose


def actor_noise(teacher: Teacher, batch: dict[str, Tensor]) -> Tensor:
    """The noise-actor teacher's initial noise x_T (B, Ta, 128) for a batch of windows (latest frame)."""
    composite = teacher.composite
    assert isinstance(composite, NoiseActorComposite)
    obj = batch.get(fmt.OBJECT_STATE)
    with torch.no_grad():
        feats = composite.features(batch[fmt.STATE][:, -1], None if obj is None else obj[:, -1])
        return composite.noise.full_noise(composite.actor.deterministic(feats))


def residual_rollout_windows(teacher: Teacher, task: TaskConfig, seeds: Iterable[int], successes_only: bool = True,
                             progress: bool = False,
                             same_noise: bool = True) -> tuple[WindowBank | None, list[tuple[int, bool, int]]]:
    """Run the residual composite on ``seeds`` (one env, one episode per seed); returns the windows of its
    successful episodes (every episode unless ``successes_only``) with their target chunks (B, Ta, 128), the
    normalised actions executed from each window's step on (edge-padded at the episode's end, as training
    windows are), and (seed, success, length) per episode. The bank is None when no episode was kept.

    ``same_noise``: only the windows of the steps where the base planned a chunk, each with the noise w it
    planned from (``NOISE``, (B, Ta, 128)). The executed chunk is then a function of (observation, w): the
    base's chunk from w plus the residual's corrections along the episode. Every step's window with fresh noise
    instead (false) asks the student for the mean over the base's noise of what follows, a blend of the
    chunks different noise would have planned."""
    composite = teacher.composite
    if not isinstance(composite, ResidualComposite):
        raise TypeError(f"{teacher.path} is not a residual composite")
    base, horizon = composite.base, composite.base.horizon
    env = make_env(task)
    kept: list[dict[str, Tensor]] = []
    results: list[tuple[int, bool, int]] = []
    seeds = list(seeds)
    try:
        for seed in tqdm(seeds, desc="residual teacher rollouts", unit="ep", disable=not progress):
            obs, _ = env.reset(seed=seed)
            composite.reset(seed)
            history = base.new_history()
            windows: list[dict[str, Tensor]] = []
            actions: list[Tensor] = []  # normalised (128,) per step
            starts: list[int] = []  # steps where the base planned a chunk
            noises: list[Tensor] = []  # (1, Ta, 128) the noise of each of those chunks
            done, info = False, dict[str, Any]()
            while not done:
                history.add(obs)
                windows.append(history.as_batch())
                action = composite.predict_chunk(obs).unified[0]  # (128,) one action per step
                if composite.planned_noise is not None:
                    starts.append(len(actions))
                    noises.append(composite.planned_noise)
                actions.append(base.to_normalized(action))
                obs, _, terminated, truncated, info = env.step(action)
                done = bool(terminated or truncated)
            success = bool(info.get("success", False))
            results.append((seed, success, len(actions)))
            if success or not successes_only:
                acts = torch.stack(actions)  # (L, 128)
                idx = torch.clamp(torch.arange(len(acts))[:, None] + torch.arange(horizon), max=len(acts) - 1)
                episode = {k: torch.cat([w[k] for w in windows]) for k in windows[0]}
                episode[TARGET] = acts[idx]  # (L, Ta, 128)
                if same_noise:
                    episode = {k: v[starts] for k, v in episode.items()}
                    episode[NOISE] = torch.cat(noises)  # (chunks, Ta, 128)
                kept.append(episode)
    finally:
        env.close()
    return (WindowBank.from_batches(kept) if kept else None), results


def write_student_composite(teacher: Teacher, student_ckpt: Path, out: Path, step: int, fsync: bool = True) -> Path:
    """A noise-actor composite of the teacher's actor on the student: the teacher composite's config with
    ``base`` naming the student (its content hash, sampler ddim/K) and ``distilled_from`` the original base.
    Written as ``out/checkpoints/step_<step>``; returns that directory."""
    if teacher.kind != "noise_actor":
        raise ValueError(f"only a noise-actor teacher keeps its actor on the student; {teacher.path} is "
                         f"{teacher.kind}")
    student_meta = ckpt.load_config(student_ckpt)
    diffusion = student_meta["policy"]["diffusion"]
    recorded = dict(teacher.meta["base"])
    base = {**recorded, "path": str(student_ckpt), "absolute_path": str(student_ckpt.resolve()),
            "content_hash": checkpoint_content_hash(student_ckpt), "sampler": diffusion["sampler"],
            "num_steps": int(diffusion["num_inference_steps"])}
    skip = ("step", "versions", "base")
    config = {**{k: v for k, v in teacher.meta.items() if k not in skip}, "base": base,
              "distilled_from": {"composite": teacher.record(), "base": recorded}}
    weights = ckpt.load_model_state(teacher.path)  # the actor, unchanged
    return ckpt.save_checkpoint(out, step, config, weights, fsync=fsync)


def replace_loss(cfg: Any, teacher: Teacher) -> Any:
    """``loss: null`` resolved for the teacher: regress_actions for a residual composite, else same_noise;
    regress_actions needs the residual teacher's target chunks."""
    loss = cfg.loss or ("regress_actions" if teacher.kind == "residual" else "same_noise")
    if (loss == "regress_actions") != (teacher.kind == "residual"):
        raise ValueError(f"loss={loss}: regress_actions is the loss of a residual composite teacher (its executed "
                         f"actions are the targets); {teacher.path} is a {teacher.kind} teacher")
    return dataclasses.replace(cfg, loss=loss)
