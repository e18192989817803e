"""Fine-tuned composites behind the one ``predict_chunk`` interface: frozen base + residual, base + noise actor.

    policy = load_composite("runs/ft/checkpoints/latest")      # what `robot-policy finetune` wrote
    policy.reset(seed); chunk = policy.predict_chunk(obs)

A composite checkpoint (``config.json`` format ``robot_policy.composite/1``) holds only the small network RL
trained; its base is the checkpoint named in ``config.json`` ``base`` and must have the recorded content hash
(sha256 of its config and weights): a different base is refused, since the residual or the noise actor is
meaningless on any other. ``base=`` points at a moved copy of the same base.

* :class:`ResidualComposite` (residual PPO): the base's chunk is queued; every call returns ONE action
  ``a_base + scale * r_mean(obs, a_base)`` (normalised space, used slots), so its chunks have
  ``execute_horizon`` 1 and the caller asks every control step, as the residual was trained.
* :class:`NoiseActorComposite` (DSRL): the actor's deterministic w (tanh of its mean) becomes the base's
  initial noise; the decoded chunk is executed ``execute_horizon`` actions at a time, as in training.

The base's noise, where the composite does not choose it, comes from a generator seeded by ``reset(seed)``
and is drawn as fine-tuning drew it, so an evaluation episode matches the fine-tuning rollout of that seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase, checkpoint_content_hash
from robot_policy.models.rl_heads import NoiseSpace, ObservationFeatures, ResidualActor, TanhGaussianActor
from robot_policy.policies.base import ActionChunk
from robot_policy.spaces.unified import UNIFIED_DIM

#: ``config.json`` ``format`` of a composite checkpoint
COMPOSITE_FORMAT = "robot_policy.composite/1"


class BaseMismatchError(ValueError):
    """The base checkpoint offered to a composite is not the one it was fine-tuned on."""


def is_composite(meta: dict[str, Any]) -> bool:
    return meta.get("format") == COMPOSITE_FORMAT


class _Composite:
    def __init__(self, base: FrozenBase, features: ObservationFeatures, execute_horizon: int,
                 meta: dict[str, Any]) -> None:
        self.base = base
        self.features = features
        self.embodiment = base.embodiment
        self.horizon = base.horizon
        self.execute_horizon = execute_horizon
        self.meta = meta
        self._history = base.new_history()
        self._generator = torch.Generator().manual_seed(0)

    def reset(self, seed: int = 0) -> None:
        """Start an episode: forget the history, reseed the base's noise."""
        self._history.clear()
        self._generator = torch.Generator().manual_seed(int(seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self._history.add(obs)

    def _features(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        state = torch.as_tensor(np.asarray(obs[OBS_STATE], np.float32))[None]
        obj = obs.get(OBS_OBJECT)
        return self.features(state, None if obj is None else torch.as_tensor(np.asarray(obj, np.float32))[None])

    def _chunk(self, unified: np.ndarray, execute_horizon: int) -> ActionChunk:
        return ActionChunk.from_unified(unified, self.base.action_mask, self.embodiment.control_hz, execute_horizon,
                                        embodiment=self.embodiment)


class ResidualComposite(_Composite):
    """Base + residual. See the module docstring."""

    def __init__(self, base: FrozenBase, actor: ResidualActor, features: ObservationFeatures, scale: float,
                 execute_horizon: int, meta: dict[str, Any]) -> None:
        super().__init__(base, features, execute_horizon, meta)
        self.actor = actor.eval()
        self.scale = scale
        self.used = torch.as_tensor(base.used_action_slots)
        self._queue: list[torch.Tensor] = []
        #: the initial noise (1, Ta, 128) of the base chunk planned on the latest step, None if none was
        self.planned_noise: torch.Tensor | None = None

    def reset(self, seed: int = 0) -> None:
        super().reset(seed)
        self._queue = []
        self.planned_noise = None

    def base_action(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """Observe ``obs`` and pop the base's next normalised action (1, 128), planning a chunk when due."""
        self._history.add(obs)
        self.planned_noise = None
        if not self._queue:
            noise = torch.randn(1, self.base.horizon, UNIFIED_DIM, generator=self._generator)
            chunk = self.base.sample(self._history.as_batch(), noise, generator=self._generator)[0]
            self._queue = list(chunk[:self.execute_horizon])
            self.planned_noise = noise
        return self._queue.pop(0)[None]

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        a_base = self.base_action(obs)
        residual = self.actor(self._features(obs), a_base[:, self.used])
        a = a_base.clone()
        a[:, self.used] = a[:, self.used] + self.scale * residual
        return self._chunk(self.base.to_unified(a), 1)


class NoiseActorComposite(_Composite):
    """Base + latent-noise actor. See the module docstring."""

    def __init__(self, base: FrozenBase, actor: TanhGaussianActor, features: ObservationFeatures,
                 noise: NoiseSpace, execute_horizon: int, meta: dict[str, Any]) -> None:
        super().__init__(base, features, execute_horizon, meta)
        self.actor = actor.eval()
        self.noise = noise

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        self._history.add(obs)
        w = self.actor.deterministic(self._features(obs))
        chunk = self.base.sample(self._history.as_batch(), self.noise.full_noise(w), generator=self._generator)
        return self._chunk(self.base.to_unified(chunk[0]), self.execute_horizon)


def _find_base(recorded: dict[str, Any], base: str | Path | None, where: Path) -> Path:
    if base is not None:
        return ckpt.resolve_checkpoint(base)
    for candidate in (recorded.get("path"), recorded.get("absolute_path")):
        if candidate and Path(candidate).exists():
            return ckpt.resolve_checkpoint(candidate)
    raise FileNotFoundError(f"{where}: its base checkpoint {recorded.get('path')!r} is gone; pass the same base "
                            "where it now lives as base=<checkpoint dir> (+policy_kwargs.base=... for eval)")


def load_composite(path: str | Path, *, base: str | Path | None = None, device: str = "cpu",
                   embodiment: str | None = None, language: str | None = None,
                   execute_horizon: int | None = None) -> ResidualComposite | NoiseActorComposite:
    """Load a composite checkpoint (or run directory). ``base`` overrides where its base lives; its content
    hash must still match. ``embodiment``/``language`` are the base's (default: those fine-tuned with)."""
    path = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_config(path)
    if not is_composite(meta):
        raise ValueError(f"{path}: not a composite checkpoint (format {meta.get('format')!r})")
    recorded, comp = meta["base"], meta["composite"]
    base_path = _find_base(recorded, base, path)
    digest = checkpoint_content_hash(base_path)
    if digest != recorded["content_hash"]:
        raise BaseMismatchError(f"{path} was fine-tuned on the base with content hash {recorded['content_hash']}; "
                                f"{base_path} has {digest}: a residual or noise actor only applies to its own base")
    frozen = FrozenBase.from_checkpoint(base_path, device=device, sampler=recorded["sampler"],
                                        num_steps=int(recorded["num_steps"]),
                                        embodiment=embodiment or recorded.get("embodiment"),
                                        language=language if language is not None else recorded.get("language"))
    features = ObservationFeatures(frozen.normalizer, frozen.embodiment.state.mask, frozen.object_state_dim,
                                   float(comp["obs_clip"]))
    if features.dim != int(comp["obs_dim"]):
        raise ValueError(f"{path}: the actor reads {comp['obs_dim']} features; the base gives {features.dim}")
    weights = ckpt.strip_prefix(ckpt.load_model_state(path), "actor.")
    horizon = int(recorded["execute_horizon"])
    if execute_horizon is not None and execute_horizon != horizon:
        raise ValueError(f"{path}: fine-tuned executing {horizon} actions per base chunk; execute_horizon="
                         f"{execute_horizon} would run a policy it was not trained as")
    kind = comp["kind"]
    if kind == "residual_ppo":
        actor = ResidualActor(int(comp["obs_dim"]), int(comp["action_dim"]), comp["hidden"], float(comp["log_std"]))
        actor.load_state_dict(weights)
        return ResidualComposite(frozen, actor, features, float(comp["residual_scale"]), horizon, meta)
    if kind in ("dsrl_sac", "dsrl_na"):
        noise = NoiseSpace(frozen, horizon, int(comp["noise_seed"]))
        tanh_actor = TanhGaussianActor(int(comp["obs_dim"]), int(comp["w_dim"]), comp["hidden"], float(comp["w_max"]))
        tanh_actor.load_state_dict(weights)
        return NoiseActorComposite(frozen, tanh_actor, features, noise, horizon, meta)
    raise ValueError(f"{path}: unknown composite kind {kind!r}")

