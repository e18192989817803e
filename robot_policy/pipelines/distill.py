"""Few-step distillation of a trained policy into a 1- or 2-step student: ``robot-policy distill``.

    run_dir = distill(DistillRunConfig(teacher="runs/lift/checkpoints/latest", out="runs/lift_s1"),
                      DistillConfig(steps=1), task)

Stages:

1. load the teacher (:mod:`robot_policy.pipelines.distill_teacher`: a diffusion checkpoint, or a DSRL or
   residual composite);
2. gather observation windows: every window of the demonstration stores (those the teacher checkpoint
   records, or ``dataset=``) and every window of ``rollout_episodes`` teacher episodes on the seeds
   ``rollout_seed..`` (saved to ``rollout_states.safetensors`` and reused by a resumed run); each batch
   mixes them by ``demo_weight`` : ``rollout_weight``;
3. train the student (the teacher's network, warm-started from its weights; with ``student_depth`` a
   shallower one holding some of its blocks, :func:`~robot_policy.algorithms.distill.student_blocks`) for
   ``train_steps`` steps of the loss in :mod:`robot_policy.algorithms.distill`, with AdamW, warm-up +
   cosine LR and EMA weights;
4. evaluate student and teacher on the tuning seeds ``eval_seed..`` (never the held-out seeds 1_000_000..
   of reported results, nor the rollout seeds).

Outputs in ``out``: ``checkpoints/step_<step>/``, the student as an ordinary diffusion checkpoint (EMA
weights) that samples DDIM with ``steps`` calls, so ``robot-policy eval policy=...`` and export take it as
is (resume state in ``train_state.*``); ``metrics.jsonl`` and ``tb/``; ``distill_config.json``;
``eval_student/`` and ``eval_teacher/`` (eval.json) and ``distill_summary.json``. A noise-actor teacher's
run also writes ``composite/checkpoints/``: its actor on the student.

The batch, the initial noise and the loss's draws of step k are functions of (seed, k), so ``resume=true``
continues the run as if never interrupted. SIGINT or SIGTERM stops after the step in progress, saves it
and raises :class:`~robot_policy.train.loop.TrainingInterrupted`; a second signal aborts at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robot_policy.algorithms.distill import (
    DistillBatch,
    DistillConfig,
    DistillModels,
    distill_loss,
    same_noise_mse,
    student_sampler,
    warm_started_student,
)
from robot_policy.algorithms.distill_states import NOISE, TARGET, WindowMixture
from robot_policy.envs.base import TaskConfig
from robot_policy.eval.harness import EvalConfig, evaluate
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.inputs import make_model_inputs
from robot_policy.models.rdt import RDTConfig, RDTPolicyModel
from robot_policy.pipelines.distill_states import gather_states
from robot_policy.pipelines.distill_teacher import (
    Teacher,
    actor_noise,
    load_teacher,
    replace_loss,
    write_student_composite,
)
from robot_policy.spaces.unified import UNIFIED_DIM
from robot_policy.train.ema import EMA
from robot_policy.train.loop import RunLogger, StopOnSignal, TrainingInterrupted
from robot_policy.train.schedule import make_scheduler

#: the final evaluation's summary, in the run directory
SUMMARY = "distill_summary.json"


@dataclass
class DistillRunConfig:
    """Options of ``robot-policy distill`` besides the task and the objective (DistillConfig)."""

    #: the teacher: a checkpoint or run directory (diffusion policy, DSRL composite or residual composite)
    teacher: str = ""
    #: run directory: checkpoints/, metrics.jsonl, tb/, eval_*/ (required)
    out: str = ""
    #: demonstration store to take windows from; '' = the stores the teacher checkpoint records
    dataset: str = ""
    #: sampling weight of the demonstration windows in a batch (0 = none)
    demo_weight: float = 1.0
    #: sampling weight of the teacher's rollout windows in a batch (0 = none)
    rollout_weight: float = 1.0
    #: teacher episodes rolled out for their observation windows (0 = demonstrations only)
    rollout_episodes: int = 100
    #: first seed of the teacher's rollouts (one episode per seed)
    rollout_seed: int = 30_000_000
    #: envs the rollouts step in lockstep, one worker process each
    num_envs: int = 2
    #: noise-actor teacher only: share of each batch whose noise is the actor's w at that state (the rest N(0, I))
    actor_noise_fraction: float = 0.5
    #: residual teacher only: distil its successful episodes only (ResiP); false = every episode
    successes_only: bool = True
    #: residual teacher only: keep the windows where its base planned a chunk, each with the noise it planned
    #: from, and regress the executed chunk from that same noise: the target is then a function of
    #: (observation, w). false = every step's window with fresh noise, where the student can only learn the
    #: mean over the base's noise of what follows (measured: 10% on tuning seeds against the teacher's 82%)
    residual_same_noise: bool = True
    #: actions per chunk the loss counts and the student executes; null = the teacher's own
    execute_horizon: int | None = None
    #: optimisation steps
    train_steps: int = 2000
    #: windows per step
    batch_size: int = 64
    #: seed of the batches, the noise and every draw of a step
    seed: int = 0
    #: steps between log lines (TensorBoard, metrics.jsonl)
    log_every: int = 50
    #: steps between validation losses (same-noise MSE of the EMA student on fixed batches)
    val_every: int = 250
    #: batches per validation loss
    val_batches: int = 2
    #: steps between checkpoints (one is also written at the end)
    ckpt_every: int = 500
    #: checkpoints kept
    keep_checkpoints: int = 3
    #: final evaluation episodes of the student and the teacher (tuning seeds eval_seed..; 0 = none)
    eval_episodes: int = 50
    #: first tuning seed of the final evaluation
    eval_seed: int = 200_000
    #: also evaluate the teacher on the same seeds
    eval_teacher: bool = True
    #: evaluation worker processes; 0 = one per core
    eval_workers: int = 0
    #: continue the run in out from its latest checkpoint
    resume: bool = False
    #: cpu, cuda, or auto (cuda if available)
    device: str = "auto"
    #: torch threads of the learner; null = torch's default
    torch_threads: int | None = None
    #: show progress bars
    progress: bool = True
    #: fsync checkpoints (off: faster, a machine crash may lose the newest)
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.demo_weight < 0 or self.rollout_weight < 0 or self.demo_weight + self.rollout_weight <= 0:
            raise ValueError(f"demo_weight and rollout_weight must be >= 0 with a positive sum, got "
                             f"{self.demo_weight}, {self.rollout_weight}")
        if self.rollout_episodes < 0 or self.num_envs < 1:
            raise ValueError(f"rollout_episodes must be >= 0 and num_envs >= 1, got {self.rollout_episodes}, "
                             f"{self.num_envs}")
        if not 0 <= self.actor_noise_fraction <= 1:
            raise ValueError(f"actor_noise_fraction: must be in [0, 1], got {self.actor_noise_fraction}")
        if self.train_steps < 1 or self.batch_size < 1:
            raise ValueError(f"train_steps and batch_size must be >= 1, got {self.train_steps}, {self.batch_size}")
        if min(self.log_every, self.val_every, self.ckpt_every) < 1 or self.val_batches < 0:
            raise ValueError("log_every, val_every and ckpt_every must be >= 1, val_batches >= 0")
        if self.eval_episodes < 0 or self.eval_workers < 0:
            raise ValueError(f"eval_episodes and eval_workers must be >= 0, got {self.eval_episodes}, "
                             f"{self.eval_workers}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device: cpu, cuda[:N] or auto, got {self.device!r}")


#: DistillRunConfig fields a resumed run may change: they do not alter which batches come next. The one that
#: alters updates is ``train_steps``: extending a run rebuilds the cosine schedule over the new total, so the
#: learning rate of an extended run rises again from where the old schedule had taken it
_RESUME_MAY_CHANGE = {"resume", "progress", "device", "torch_threads", "out", "keep_checkpoints", "log_every",
                      "val_every", "val_batches", "ckpt_every", "train_steps", "eval_episodes", "eval_seed",
                      "eval_teacher", "eval_workers", "fsync", "num_envs", "teacher"}


@dataclass
class _Run:
    """What the loop works with, built (and on resume restored) by :func:`_setup`."""

    cfg: DistillRunConfig
    algo: DistillConfig
    task: TaskConfig
    teacher: Teacher
    models: DistillModels
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mixture: WindowMixture
    val: WindowMixture
    device: torch.device
    execute_horizon: int
    run_dir: Path
    config_json: dict[str, Any]
    start_step: int


def distill(cfg: DistillRunConfig, algo: DistillConfig, task: TaskConfig, command: str = "") -> Path:
    """Run (or resume) a distillation; returns its directory. See the module docstring.

    Raises:
        FileExistsError: ``out`` holds checkpoints and ``resume`` is false.
        FileNotFoundError: ``resume`` is true and ``out`` holds no checkpoint; a demonstration store is missing.
        ValueError: the teacher, data or settings do not fit, or differ from the checkpoint's on resume.
        TrainingInterrupted: SIGINT/SIGTERM; the last finished step was saved first.
    """
    if not cfg.teacher or not cfg.out:
        raise ValueError("teacher and out are required: teacher=CKPT out=DIR")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run = _setup(cfg, algo, task, command)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "distill_config.json").write_text(json.dumps(
        {"run": dataclasses.asdict(cfg), "distill": dataclasses.asdict(run.algo), "task": dataclasses.asdict(task),
         "command": command}, indent=2, default=str))
    logger = RunLogger(run.run_dir, run.start_step, enabled=True)
    try:
        if run.start_step < cfg.train_steps:
            (run.run_dir / SUMMARY).unlink(missing_ok=True)  # it describes an earlier step
            _loop(run, logger)
        student = ckpt.latest_checkpoint(run.run_dir)
        assert student is not None
        policy = student
        if run.teacher.kind == "noise_actor":
            policy = write_student_composite(run.teacher, student, run.run_dir / "composite",
                                             int(ckpt.load_config(student)["step"]), fsync=cfg.fsync)
        if cfg.eval_episodes:
            summary = _final_eval(run, policy)
            logger.log(cfg.train_steps, {f"eval/{who}_success_rate": summary[who]["success_rate"]
                                         for who in ("student", "teacher") if who in summary})
    finally:
        logger.close()
    return run.run_dir


def _resume_point(cfg: DistillRunConfig, run_dir: Path) -> Path | None:
    existing = ckpt.latest_checkpoint(run_dir)
    if cfg.resume and existing is None:
        raise FileNotFoundError(f"resume=true, but {run_dir} holds no checkpoint to resume from; drop resume=true")
    if not cfg.resume and existing is not None:
        raise FileExistsError(f"{run_dir} already holds a distillation run ({existing.name}); resume=true to "
                              "continue it, or choose another out=")
    return existing


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _setup(cfg: DistillRunConfig, algo: DistillConfig, task: TaskConfig, command: str) -> _Run:
    """Teacher, windows, student, EMA, optimiser and LR schedule; restored from the latest checkpoint on resume."""
    run_dir = Path(cfg.out)
    latest = _resume_point(cfg, run_dir)
    device = _device(cfg.device)
    teacher = load_teacher(cfg.teacher, task, algo.teacher_sampler, algo.teacher_steps, device=str(device))
    algo = replace_loss(algo, teacher)
    base = teacher.base
    own_horizon = teacher.composite.execute_horizon if teacher.composite is not None else base.default_execute_horizon
    execute_horizon = cfg.execute_horizon or own_horizon
    if not 1 <= execute_horizon <= base.horizon:
        raise ValueError(f"execute_horizon={execute_horizon}: choose 1..{base.horizon} (the teacher's chunk)")
    # the warm start (the teacher's weights; a shallower student takes some of its blocks) comes before the
    # rollouts, so a student_depth that does not fit fails at once
    student, blocks = warm_started_student(base.model, algo.steps, algo.student_depth)
    sources, weights, states = gather_states(cfg, task, teacher, run_dir, execute_horizon)
    ema = EMA(student, max_decay=algo.ema_max_decay, power=algo.ema_power)
    optimizer = torch.optim.AdamW(student.parameters(), lr=algo.lr, betas=algo.betas, weight_decay=algo.weight_decay)
    config_json = _checkpoint_config(cfg, algo, task, teacher, student.cfg, blocks, execute_horizon, states, command)
    start_step = 0
    if latest is not None:
        _check_resumable(ckpt.load_config(latest), config_json)
        start_step = _restore(latest, student, ema, optimizer)
    scheduler = make_scheduler(optimizer, algo.warmup_steps, cfg.train_steps, algo.min_lr_ratio, last_step=start_step)
    models = DistillModels(student, base.model, base.sampler, student_sampler(base.model.cfg.diffusion, algo.steps),
                           target=_ema_student(ema) if algo.loss == "ctm" else None)
    mixture = WindowMixture(sources, weights, cfg.batch_size, cfg.seed)
    val = WindowMixture(sources, weights, cfg.batch_size, cfg.seed + 1)
    return _Run(cfg=cfg, algo=algo, task=task, teacher=teacher, models=models, ema=ema, optimizer=optimizer,
                scheduler=scheduler, mixture=mixture, val=val, device=device, execute_horizon=execute_horizon,
                run_dir=run_dir, config_json=config_json, start_step=start_step)


def _checkpoint_config(cfg: DistillRunConfig, algo: DistillConfig, task: TaskConfig, teacher: Teacher,
                       student_policy: RDTConfig, blocks: list[int], execute_horizon: int, states: dict[str, Any],
                       command: str) -> dict[str, Any]:
    """The student's config.json: the teacher's (normaliser, embodiments, languages, datasets, ...) with the
    student's policy config (its sampler: ddim, ``steps``; its depth) and a ``distill`` record (the teacher, its
    depth and which of its blocks each student block started from)."""
    skip = ("step", "versions", "command", "lr_schedule")
    meta = {k: v for k, v in teacher.base.meta.items() if k not in skip}
    meta.update(policy=dataclasses.asdict(student_policy), execute_horizon=execute_horizon, command=command,
                distill={"teacher": teacher.record(), "config": dataclasses.asdict(algo),
                         "teacher_depth": teacher.base.model.cfg.depth, "student_blocks": blocks,
                         "run": dataclasses.asdict(cfg), "task": dataclasses.asdict(task), "states": states})
    return json.loads(json.dumps(meta, default=str))


def _check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the teacher, the objective, the windows or a setting that shapes training differ."""
    old, new = saved.get("distill", {}), current["distill"]
    problems = []
    if old.get("teacher", {}).get("content_hash") != new["teacher"]["content_hash"]:
        problems.append(f"teacher: checkpoint content hash {old.get('teacher', {}).get('content_hash')}, now "
                        f"{new['teacher']['content_hash']}")
    for key in ("config", "states", "task"):
        if old.get(key) != new[key]:
            problems.append(f"{key}: checkpoint {old.get(key)!r}, now {new[key]!r}")
    # an option the checkpoint lacks was added since it was written: it ran with that option's default
    defaults = {f.name: f.default for f in dataclasses.fields(DistillRunConfig)
                if f.default is not dataclasses.MISSING}
    saved_run = {**{k: v for k, v in defaults.items() if k not in old.get("run", {})}, **old.get("run", {})}
    for key in sorted(set(saved_run) | set(new["run"])):
        if key not in _RESUME_MAY_CHANGE and saved_run.get(key) != new["run"].get(key):
            problems.append(f"{key}: checkpoint {saved_run.get(key)!r}, now {new['run'].get(key)!r}")
    if problems:
        raise ValueError("cannot resume: the run differs from its checkpoint (start a new out= instead):\n  "
                         + "\n  ".join(problems))


def _restore(path: Path, student: RDTPolicyModel, ema: EMA, optimizer: torch.optim.Optimizer) -> int:
    tensors, plain = ckpt.load_train_state(path)
    ckpt.load_modules_from_flat({"model": student}, {"optimizer": optimizer}, tensors, plain["modules"])
    ema.model.load_state_dict(ckpt.load_model_state(path))
    ema.step = int(plain["ema_step"])
    return int(ckpt.load_config(path)["step"])


def _ema_student(ema: EMA) -> RDTPolicyModel:
    """The EMA copy of the student: the saved weights, and ctm's target network."""
    model = ema.model
    assert isinstance(model, RDTPolicyModel)
    return model


def _save(run: _Run, step: int) -> Path:
    tensors, plain = ckpt.modules_to_flat({"model": run.models.student}, {"optimizer": run.optimizer})
    return ckpt.save_checkpoint(run.run_dir, step, run.config_json, run.ema.model.state_dict(), tensors,
                                {"modules": plain, "ema_step": run.ema.step}, keep_last=run.cfg.keep_checkpoints,
                                fsync=run.cfg.fsync)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of ``step`` (noise, the loss's own draws): a function of (seed, step)."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(state))


def _batch(run: _Run, mixture: WindowMixture, seed: int, step: int) -> DistillBatch:
    """Step ``step``'s windows as model inputs, its initial noise w (B, Ta, 128) and its generator."""
    windows = mixture.batch(step)
    g = step_generator(seed, step)
    inputs = make_model_inputs(windows, run.teacher.base.normalizer, run.teacher.base.language_table, run.device)
    B = inputs.state.shape[0]
    noise = torch.randn(B, run.teacher.base.horizon, UNIFIED_DIM, generator=g)
    if run.teacher.kind == "noise_actor" and run.cfg.actor_noise_fraction > 0:
        k = round(run.cfg.actor_noise_fraction * B)  # the first k rows: the noise the deployed actor chooses
        noise[:k] = actor_noise(run.teacher, {key: v[:k] for key, v in windows.items()})
    if NOISE in windows:  # a residual teacher's chunk starts: the noise its base planned from
        noise = windows[NOISE].to(noise.dtype)
    targets = windows.get(TARGET)
    return DistillBatch(inputs, noise.to(run.device), g, run.execute_horizon,
                        None if targets is None else targets.to(run.device))


def _train_step(run: _Run, step: int) -> tuple[float, dict[str, float], float]:
    """One update; returns the loss, its parts and the gradient norm."""
    batch = _batch(run, run.mixture, run.cfg.seed, step)
    loss, parts = distill_loss(run.models, batch, run.algo)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.models.student.parameters(), run.algo.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.ema.update(run.models.student)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; last checkpoint: "
                                 f"{ckpt.latest_checkpoint(run.run_dir)}")
    return value, parts, float(grad_norm)


def validation_mse(run: _Run) -> float:
    """Same-noise MSE (or, for a residual teacher, MSE to its executed actions) of the EMA student on
    ``val_batches`` fixed batches: the same windows and noise every time."""
    values = [same_noise_mse(run.models, _ema_student(run.ema), b.inputs, b.noise, run.execute_horizon, b.targets)
              for b in (_batch(run, run.val, run.cfg.seed + 1, i) for i in range(run.cfg.val_batches))]
    return float(np.mean(values)) if values else float("nan")


def _loop(run: _Run, logger: RunLogger) -> None:
    """Steps ``start_step`` .. ``train_steps``: log, validate and checkpoint; on a signal, save the step that
    finished and raise :class:`TrainingInterrupted`."""
    cfg = run.cfg
    bar = tqdm(total=cfg.train_steps, initial=run.start_step, desc=f"distill {run.algo.loss} -> {run.algo.steps} "
               "step(s)", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    run.models.student.train()
    if run.start_step == 0 and cfg.val_batches:
        logger.log(0, {"val/mse": validation_mse(run)})  # the warm start, before any update
    t_start = time.perf_counter()
    window: list[tuple[float, dict[str, float]]] = []
    t_window = t_start
    try:
        with StopOnSignal() as stop:
            for step in range(run.start_step, cfg.train_steps):
                loss, parts, grad_norm = _train_step(run, step)
                window.append((loss, parts))
                done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.train_steps or (stop.signum and window):
                    now = time.perf_counter()
                    mean = float(np.mean([v for v, _ in window]))
                    means = {f"loss/{k}": float(np.mean([p[k] for _, p in window])) for k in parts}
                    logger.log(done, {"loss": mean, **means,
                                      "lr": float(run.scheduler.get_last_lr()[0]), "grad_norm": grad_norm,
                                      "samples_per_s": len(window) * cfg.batch_size / (now - t_window),
                                      "train_seconds": logger.previous_seconds + now - t_start,
                                      "ema_decay": run.ema.decay()})
                    bar.set_postfix(loss=f"{mean:.4g}")
                    window, t_window = [], now
                if cfg.val_batches and (done % cfg.val_every == 0 or done == cfg.train_steps):
                    logger.log(done, {"val/mse": validation_mse(run)})
                if done % cfg.ckpt_every == 0 or done == cfg.train_steps or stop.signum:
                    saved = _save(run, done)
                    if stop.signum and done < cfg.train_steps:
                        raise TrainingInterrupted(stop.signum, done, saved)
    finally:
        bar.close()


def _final_eval(run: _Run, policy: Path) -> dict[str, Any]:
    """Student (and teacher) on the tuning seeds; writes ``distill_summary.json`` and returns its content."""
    cfg = run.cfg
    sources = {"student": str(policy)}
    if cfg.eval_teacher:
        sources["teacher"] = str(run.teacher.path)
    summary: dict[str, Any] = {"seeds": [cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes - 1],
                               "student_steps": run.algo.steps, "loss": run.algo.loss}
    # a diffusion teacher is evaluated with the sampler that made the targets (a composite with its own)
    sampler = run.teacher.base.sampler
    for who, source in sources.items():
        ecfg = EvalConfig(episodes=cfg.eval_episodes, seed=cfg.eval_seed, out=str(run.run_dir / f"eval_{who}"),
                          workers=cfg.eval_workers, videos=0)
        if who == "teacher" and run.teacher.kind == "policy":
            ecfg = dataclasses.replace(ecfg, sampler=sampler.kind, sampler_steps=sampler.num_steps)
        report = evaluate(run.task, source, ecfg, policy_name=source, progress=cfg.progress)
        summary[who] = {k: report[k] for k in ("policy", "episodes", "successes", "success_rate", "ci95_low",
                                               "ci95_high", "mean_episode_length", "mean_inference_ms", "errored")}
    if "teacher" in summary:
        summary["success_rate_difference"] = summary["student"]["success_rate"] - summary["teacher"]["success_rate"]
    (run.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
