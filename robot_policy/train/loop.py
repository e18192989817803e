"""The training loop: episode stores -> checkpoints of an RDT-style diffusion policy.

    run = train(TrainConfig(out="runs/lift", datasets=[DatasetEntry("datasets/lift.zarr")]), policy_cfg)

One process, or several under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU): each rank trains on its rows of
every global batch (see :mod:`robot_policy.data.mixture`), so results match one process on the same global
batch. Rank 0 writes checkpoints (every ``ckpt_every`` steps and at the end), TensorBoard logs and
``metrics.jsonl``. ``resume=True`` continues the run in ``out`` from its latest checkpoint: the same
batches and random draws follow, so the loss curve continues as if never interrupted.

SIGINT or SIGTERM stops the run after the step in progress: the steps since the last log entry are
logged at that step, a checkpoint of it is written and :class:`TrainingInterrupted` is raised (the CLI
exits 130 / 143); a second signal aborts at once.

A resumed run may change ``steps`` (to extend a finished run, or end it earlier): the batches and random
draws of every step are unchanged (functions of ``(seed, step)``), and the cosine LR schedule is rebuilt
for the new total and continued at the checkpoint's step, so from there on the learning rate is what a run
planned for the new total would use (after a finished run decayed to ``min_lr_ratio``, extending it raises
the rate again). The checkpoints record each change in ``lr_schedule``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robot_policy.algorithms.bc import BCConfig, DiffusionLoss, StepRandomness
from robot_policy.data import format as fmt
from robot_policy.data.mixture import MixtureDataset, StepBatchSampler, make_step_loader
from robot_policy.data.normalizer import Normalizer, compute_stats, merge_stats
from robot_policy.data.sampler import SequenceSampler, split_episodes
from robot_policy.data.store import EpisodeData, EpisodeStore
from robot_policy.data.torch_dataset import WindowBatchDataset
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.inputs import LanguageTable, make_model_inputs, normalized_actions
from robot_policy.models.rdt import RDTConfig, RDTPolicyModel
from robot_policy.models.text import make_text_encoder
from robot_policy.train.distributed import DistributedContext, distributed_context
from robot_policy.train.ema import EMA
from robot_policy.train.schedule import make_scheduler
from robot_policy.train.step import BCStep


@dataclass
class DatasetEntry:
    """One episode store in the training mixture."""

    #: the episode store (a zarr directory)
    path: str
    #: relative sampling weight of this store's windows
    weight: float = 1.0


@dataclass
class TrainConfig:
    """Options of ``robot-policy train`` besides the policy config. The defaults are the measured ones
    (BENCHMARKS.md: rdt_small on 100 demonstrations); this dataclass is their one place."""

    #: run directory: checkpoints/, tb/, metrics.jsonl (required)
    out: str = ""
    #: the stores to train on, with their sampling weights (the CLI: dataset.path or dataset.paths)
    datasets: list[DatasetEntry] = field(default_factory=list)
    #: cameras the policy sees; empty = state (+ object state) only
    cameras: list[str] = field(default_factory=list)
    #: condition on the stores' object_state (privileged low-dim object features)
    use_object_state: bool = True
    #: optimisation steps (one global batch each)
    steps: int = 3000
    #: global batch size (split across DDP ranks)
    batch_size: int = 64
    #: seed of the episode split, the batches and every random draw of a step
    seed: int = 0
    #: fraction of each store's episodes held out for the validation loss
    val_fraction: float = 0.05
    #: steps between validation losses
    val_every: int = 500
    #: batches per validation loss
    val_batches: int = 4
    #: steps between log lines (TensorBoard, metrics.jsonl)
    log_every: int = 50
    #: steps between checkpoints (one is also written at the end)
    ckpt_every: int = 1000
    #: checkpoints kept in out/checkpoints; older ones are deleted
    keep_checkpoints: int = 3
    #: continue the run in out from its latest checkpoint
    resume: bool = False
    #: DataLoader worker processes per rank
    num_workers: int = 0
    #: "auto" = cuda if available else cpu
    device: str = "auto"
    #: torch threads per rank; None = torch's default
    torch_threads: int | None = None
    #: actions executed per chunk at inference, stored in the checkpoint; None = the whole chunk (Ta)
    execute_horizon: int | None = None
    #: normalisation per key (state, action, object_state): gaussian (mean/std), minmax (to [-1, 1] over
    #: [min, max]) or quantile (to [-1, 1] over [q01, q99])
    normalizer: dict[str, str] = field(default_factory=lambda: {"state": "gaussian", "action": "minmax",
                                                                 "object_state": "gaussian"})
    #: optimiser, schedule, EMA and state noise
    optim: BCConfig = field(default_factory=BCConfig)
    #: show a progress bar
    progress: bool = True

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DatasetEntry) else DatasetEntry(**d) for d in self.datasets]
        if isinstance(self.optim, dict):
            self.optim = BCConfig(**self.optim)
        if not self.out:
            raise ValueError("out: give the run directory, e.g. out=runs/lift")
        if not self.datasets:
            raise ValueError("datasets: give at least one store (dataset.path=...)")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if min(self.ckpt_every, self.log_every, self.val_every) < 1:
            raise ValueError("ckpt_every, log_every and val_every must be >= 1")


@dataclass
class TrainingData:
    train: MixtureDataset
    val: MixtureDataset | None
    normalizer: Normalizer
    stores: list[EpisodeStore]


def build_data(cfg: TrainConfig, obs_horizon: int, horizon: int, image_size: tuple[int, int]) -> TrainingData:
    """Open the stores, split episodes, compute (merged) normalisation stats, build the mixtures.

    Stores may differ in object-state width (zero-padded to the widest; a store without object state
    counts as zeros, which is what the policy is fed for it) and in cameras (a camera a store lacks is a
    blank frame). ``image_size`` (H, W) is the policy's; every camera used must record at that size.
    """
    stores = [EpisodeStore.open(d.path) for d in cfg.datasets]
    unknown = set(cfg.normalizer) - {fmt.STATE, fmt.ACTION, fmt.OBJECT_STATE}
    if unknown:
        raise ValueError(f"normalizer: unknown key(s) {sorted(unknown)}; keys: state, action, object_state")
    obj_dims = [s.array(fmt.OBJECT_STATE).shape[1] if fmt.OBJECT_STATE in s.data_keys else 0 for s in stores]
    object_dim = max(obj_dims) if cfg.use_object_state else 0
    for cam in cfg.cameras:
        if not any(cam in s.cameras for s in stores):  # a camera some stores lack is blank there (mixing)
            held = "; ".join(f"{s.path} records {sorted(s.cameras) or 'no cameras'}" for s in stores)
            raise ValueError(f"cameras: the policy is to see camera {cam!r}, which no store records ({held}): "
                             f"collect with task.cameras=[{cam}], or choose cameras= among the stores' "
                             "(cameras=[] and a state policy such as rdt_small for state only)")
        for s in stores:
            if cam in s.cameras and (s.cameras[cam].height, s.cameras[cam].width) != tuple(image_size):
                raise ValueError(f"{s.path}: camera {cam!r} records {s.cameras[cam].height}x{s.cameras[cam].width} "
                                 f"images, the policy's obs_encoder.image_size is {list(image_size)}: collect with "
                                 "task.image_height/task.image_width equal to it, or change the policy config")
    train_sets, val_sets, parts = [], [], []
    for store, obj_dim in zip(stores, obj_dims):
        if store.n_episodes == 0:
            raise ValueError(f"{store.path} has no episodes")
        use_obj = bool(object_dim and obj_dim)
        keys = (fmt.STATE,) + ((fmt.OBJECT_STATE,) if use_obj else ()) + tuple(
            fmt.image_key(c) for c in cfg.cameras if c in store.cameras)
        # Read once: shared by both splits and the statistics.
        ram = store.load([fmt.STATE, fmt.ACTION] + ([fmt.OBJECT_STATE] if use_obj else []))
        tr, va = split_episodes(store.n_episodes, cfg.val_fraction, cfg.seed)
        train_sets.append(WindowBatchDataset(store, SequenceSampler(store.episode_ends, obs_horizon, horizon, tr),
                                             obs_keys=keys, ram=ram))
        if va.size:
            val_sets.append(WindowBatchDataset(store, SequenceSampler(store.episode_ends, obs_horizon, horizon, va),
                                               obs_keys=keys, ram=ram))
        stat_data = EpisodeData(ram.episode_ends, {fmt.STATE: ram.data[fmt.STATE], fmt.ACTION: ram.data[fmt.ACTION]},
                                ram.meta)
        if object_dim:  # stats over what the policy is fed: zero-padded to the widest, zeros when absent
            obj = ram.data[fmt.OBJECT_STATE] if use_obj else np.zeros((store.n_steps, 0), np.float32)
            stat_data.data[fmt.OBJECT_STATE] = np.pad(obj, ((0, 0), (0, object_dim - obj.shape[1])))
        parts.append((compute_stats(stat_data, list(stat_data.data)), store.n_steps))
    stats = merge_stats(parts)
    normalizer = Normalizer(stats, {k: v for k, v in cfg.normalizer.items() if k in stats})
    hz = [s.control_hz for s in stores]
    train = MixtureDataset(train_sets, hz, cfg.cameras, object_dim, image_size)
    val = MixtureDataset(val_sets, hz, cfg.cameras, object_dim, image_size) if len(val_sets) == len(stores) else None
    return TrainingData(train, val, normalizer, stores)


def complete_policy_config(policy: RDTConfig, cfg: TrainConfig, data: TrainingData) -> RDTConfig:
    """Fill the observation encoder from the data: which cameras, which object-state width.

    A policy config that names cameras (``obs_encoder.cameras``, e.g. ``rdt_small_image``) is an image
    policy: training it on no cameras would silently give a state-only model, so that is refused.
    """
    if cfg.execute_horizon is not None and not 1 <= cfg.execute_horizon <= policy.horizon:
        raise ValueError(f"execute_horizon={cfg.execute_horizon} does not fit the policy's chunk of "
                         f"{policy.horizon} actions (horizon): choose 1..{policy.horizon}")
    if policy.obs_encoder.cameras and not cfg.cameras:
        raise ValueError(f"cameras=[]: the policy config is an image policy (obs_encoder.cameras="
                         f"{list(policy.obs_encoder.cameras)}) and would train without images; name its "
                         "cameras (cameras=[...]) or use a state policy such as rdt_small")
    obs = dataclasses.replace(policy.obs_encoder, cameras=list(cfg.cameras),
                              object_state_dim=data.train.object_state_dim)
    return dataclasses.replace(policy, obs_encoder=obs)


def checkpoint_config(policy: RDTConfig, cfg: TrainConfig, data: TrainingData) -> dict[str, Any]:
    """What inference needs to rebuild the policy, as plain JSON."""
    return {
        "format": "robot_policy.checkpoint/1",
        "policy": dataclasses.asdict(policy),
        "normalizer": data.normalizer.to_json(),
        "languages": data.train.languages,
        "embodiments": {s.embodiment.name: s.embodiment.to_dict() for s in data.stores},
        "tasks": [(s.attrs.get("task") or {}).get("name") for s in data.stores],
        "task_configs": [s.attrs.get("task") for s in data.stores],
        "datasets": [d.path for d in cfg.datasets],
        "dataset_episodes": [s.n_episodes for s in data.stores],
        "execute_horizon": cfg.execute_horizon or policy.horizon,
        "train": dataclasses.asdict(cfg),
    }


#: TrainConfig fields a resumed run may change: they do not alter which batches or updates come next
#: (``steps`` changes the LR schedule from the checkpoint on, as documented at the top of this module)
_RESUME_MAY_CHANGE = {"resume", "progress", "num_workers", "device", "torch_threads", "out", "keep_checkpoints",
                      "log_every", "val_every", "val_batches", "ckpt_every", "steps"}


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the data or any setting that shapes training differs from the checkpoint's:
    the continued run would then not be the run that was interrupted."""
    problems = []
    for key in ("datasets", "dataset_episodes", "policy"):
        if saved.get(key) != current.get(key):
            problems.append(f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}")
    old, new = saved.get("train", {}), current["train"]
    for key in sorted(set(old) | set(new)):
        if key not in _RESUME_MAY_CHANGE and old.get(key) != new.get(key):
            problems.append(f"train.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    if problems:
        raise ValueError("cannot resume: the run differs from its checkpoint (start a new out= instead):\n  "
                         + "\n  ".join(problems))


def _device(name: str, ctx: DistributedContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


class RunLogger:
    """metrics.jsonl + TensorBoard on rank 0; entries past ``start_step`` from a crashed run are dropped.

    Entries at ``start_step`` itself stay: they were logged before that step's checkpoint was written.
    """

    def __init__(self, run_dir: Path, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        #: wall time of the training steps before ``start_step`` (a resumed run keeps counting)
        self.previous_seconds = 0.0
        if not enabled:
            return
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            if lines and not _is_json(lines[-1]):  # torn by a crash mid-append
                lines.pop()
            kept = [line for line in lines if json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
            times = [json.loads(line).get("train_seconds") for line in kept]
            self.previous_seconds = next((t for t in reversed(times) if t is not None), 0.0)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        assert self.tb is not None
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint of its last finished step.

    A ``KeyboardInterrupt``, so callers that catch ``Exception`` (the demo's stages) stop too.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}: wrote {checkpoint}; "
                         "continue with resume=true")

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopOnSignal:
    """SIGINT/SIGTERM handlers for the loop: the first signal only records itself, so the step in progress
    finishes and the loop saves it; a second one raises KeyboardInterrupt at once (the user insists).

    Handlers can only be installed from the main thread; elsewhere (a library caller's worker thread)
    signals keep their default behaviour.
    """

    def __init__(self) -> None:
        self.signum = 0  # 0 = no stop requested
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            self._restore()
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: aborted without saving")
        self.signum = signum

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()


def _agreed_stop(signum: int, ctx: DistributedContext, device: torch.device) -> int:
    """The stop request of any rank (the largest signal number), so all ranks leave after the same step:
    a rank that left alone would hang the others in their next collective."""
    if ctx.world_size == 1:
        return signum
    import torch.distributed as dist

    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def train(cfg: TrainConfig, policy: RDTConfig, command: str | None = None) -> Path:
    """Run training; returns the run directory. Call under torchrun for data-parallel training.

    ``command`` (the CLI line that asked for it) is recorded in train_config.json and the checkpoints.

    Raises:
        FileExistsError: ``out`` holds checkpoints and ``resume`` is false.
        FileNotFoundError: ``resume`` is true and ``out`` holds no checkpoint.
        ValueError: the data or settings do not fit the policy, or differ from the checkpoint's.
        TrainingInterrupted: SIGINT/SIGTERM; the last finished step was saved first.
    """
    with distributed_context() as ctx:
        return _train(cfg, policy, ctx, command)


def _resume_point(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from (None for a new run); refuses a resume with nothing to resume and a
    new run over an old one."""
    existing = ckpt.latest_checkpoint(run_dir)
    if cfg.resume and existing is None:
        where = "does not exist" if not run_dir.exists() else f"has no checkpoints under {run_dir / 'checkpoints'}"
        raise FileNotFoundError(f"resume=true, but there is nothing to resume: {run_dir} {where}; "
                                "drop resume=true to start a new run there")
    if not cfg.resume and existing is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass resume=true to continue it, "
                              "or choose another out=")
    return existing


def _lr_schedule(saved: dict[str, Any] | None, start_step: int, steps: int) -> list[dict[str, int]]:
    """The LR schedule history recorded in checkpoints: from which step the cosine ran for which total."""
    if saved is None:
        return [{"from_step": 0, "total_steps": steps}]
    history = list(saved.get("lr_schedule") or [{"from_step": 0, "total_steps": saved["train"]["steps"]}])
    if history[-1]["total_steps"] != steps:
        history.append({"from_step": start_step, "total_steps": steps})
    return history


@dataclass
class _Run:
    """What the training loop works with, built (and, on resume, restored) by :func:`_setup`."""

    cfg: TrainConfig
    #: completed from the data (cameras, object-state width)
    policy: RDTConfig
    ctx: DistributedContext
    device: torch.device
    run_dir: Path
    data: TrainingData
    model: RDTPolicyModel
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    language: LanguageTable
    bc_step: BCStep
    #: yields the batches of steps start_step.. (this rank's rows)
    loader: Any
    #: written to train_config.json and every checkpoint
    config_json: dict[str, Any]
    #: the first step to run: 0, or the resumed checkpoint's step
    start_step: int


def _train(cfg: TrainConfig, policy: RDTConfig, ctx: DistributedContext, command: str | None) -> Path:
    run = _setup(cfg, policy, ctx, command)
    logger = RunLogger(run.run_dir, run.start_step, ctx.is_main)
    if ctx.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "train_config.json").write_text(json.dumps(run.config_json, indent=2))
    bar = tqdm(total=cfg.steps, initial=run.start_step, desc="train", unit="step",
               disable=not (cfg.progress and ctx.is_main))
    run.model.train()
    try:
        _loop(run, logger, bar)
    finally:
        bar.close()
        logger.close()
    return run.run_dir


def _setup(cfg: TrainConfig, policy: RDTConfig, ctx: DistributedContext, command: str | None) -> _Run:
    """Data, model, EMA, optimizer and LR schedule, restored from the latest checkpoint on resume."""
    run_dir = Path(cfg.out)
    device = _device(cfg.device, ctx)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    latest = _resume_point(cfg, run_dir)
    saved = ckpt.load_config(latest) if latest is not None else None
    if saved is not None and int(saved["step"]) >= cfg.steps:
        raise ValueError(f"{latest} is at step {saved['step']}; steps={cfg.steps} leaves nothing to train: "
                         f"pass steps= above {saved['step']} to extend the run")
    height, width = policy.obs_encoder.image_size
    data = build_data(cfg, policy.obs_encoder.n_obs_steps, policy.horizon, (height, width))
    policy = complete_policy_config(policy, cfg, data)
    torch.manual_seed(cfg.seed)  # the initial weights
    model = RDTPolicyModel(policy).to(device)
    ema = EMA(model, max_decay=cfg.optim.ema_max_decay, power=cfg.optim.ema_power)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    config_json = checkpoint_config(policy, cfg, data)
    config_json["command"] = command
    start_step = 0
    if saved is not None:
        assert latest is not None
        check_resumable(saved, json.loads(json.dumps(config_json, default=str)))
        start_step = _restore(latest, model, ema, optimizer)
    config_json["lr_schedule"] = _lr_schedule(saved, start_step, cfg.steps)
    # Built after the optimizer state is restored: positioned at start_step, for this run's total.
    scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio,
                               last_step=start_step)
    if saved is not None and ctx.is_main:
        changed = saved["train"]["steps"] != cfg.steps
        _say(f"resuming {run_dir} from step {start_step}"
             + (f"; steps {saved['train']['steps']} -> {cfg.steps}: the cosine LR schedule is rebuilt for "
                f"{cfg.steps} steps and continues at step {start_step} (lr {scheduler.get_last_lr()[0]:.3g})"
                if changed else ""))
    language = LanguageTable(make_text_encoder(policy.text_encoder, policy.lang_dim, policy.max_lang_tokens),
                             data.train.languages).to(device)
    loss_module: nn.Module = DiffusionLoss(model)
    if ctx.world_size > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = StepBatchSampler(data.train.sizes, [d.weight for d in cfg.datasets], cfg.batch_size, cfg.seed,
                               cfg.steps, start_step, ctx.rank, ctx.world_size)
    loader = make_step_loader(data.train, sampler, cfg.num_workers)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    bc_step = BCStep(model, loss_module, optimizer, scheduler, ema, cfg.optim, autocast)
    return _Run(cfg=cfg, policy=policy, ctx=ctx, device=device, run_dir=run_dir, data=data, model=model,
                ema=ema, optimizer=optimizer, scheduler=scheduler, language=language, bc_step=bc_step,
                loader=loader, config_json=config_json, start_step=start_step)


@dataclass
class _Window:
    """The training steps since the last log entry, which reports their mean loss and throughput."""

    #: wall time (perf_counter, s) the window started
    t_last: float
    loss_sum: float = 0.0
    n: int = 0
    samples: int = 0

    def add(self, loss: float, samples: int) -> None:
        self.loss_sum, self.n, self.samples = self.loss_sum + loss, self.n + 1, self.samples + samples


def _loop(run: _Run, logger: RunLogger, bar: tqdm) -> None:
    """Steps ``run.start_step`` .. ``cfg.steps``: log, validate and checkpoint as configured; on a signal,
    log and save the step that finished, then raise :class:`TrainingInterrupted`."""
    cfg, ctx = run.cfg, run.ctx
    t_start = time.perf_counter()
    window = _Window(t_start)
    with StopOnSignal() as stop:
        for step, batch in zip(range(run.start_step, cfg.steps), run.loader):
            loss_value, grad_norm = _train_step(run, step, batch)
            window.add(loss_value, cfg.batch_size)
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                window = _log_window(run, logger, bar, window, done, loss_value, grad_norm, t_start)
            if run.data.val is not None and (done % cfg.val_every == 0 or done == cfg.steps):
                ema_model = run.ema.model
                assert isinstance(ema_model, RDTPolicyModel)
                val_loss = _validation_loss(ema_model, run.data, run.language, cfg, run.policy, run.device)
                logger.log(done, {"val_loss": val_loss})
            # Checked after the step, so a stop leaves a checkpoint of a finished step and resuming from
            # it continues the same (seed, step) sequence.
            signum = _agreed_stop(stop.signum, ctx, run.device)
            # The steps since the last entry are logged before the save: a resume keeps only the entries up
            # to the saved step, so a window logged after it would be lost.
            if signum and window.n:
                window = _log_window(run, logger, bar, window, done, loss_value, grad_norm, t_start)
            if done % cfg.ckpt_every == 0 or done == cfg.steps or signum:
                if ctx.is_main:
                    _save(run.run_dir, done, run.config_json, run.model, run.ema, run.optimizer,
                          cfg.keep_checkpoints)
                ctx.barrier()
            if signum and done < cfg.steps:
                written = ckpt.latest_checkpoint(run.run_dir)  # after the barrier: rank 0 wrote it
                assert written is not None
                raise TrainingInterrupted(signum, done, written)


def _train_step(run: _Run, step: int, batch: dict[str, Any]) -> tuple[float, torch.Tensor]:
    """One optimisation step on this rank's rows of the global batch of ``step``; returns the loss (mean
    over all ranks) and the gradient norm (a tensor: read only when logged)."""
    cfg, policy = run.cfg, run.policy
    r = StepRandomness.draw(cfg.seed, step, cfg.batch_size, policy.horizon, max(len(cfg.cameras), 1),
                            policy.diffusion.num_train_timesteps, policy.cond_dropout)
    r = r.rows(run.ctx.rank, run.ctx.world_size).to(run.device)
    inputs = make_model_inputs(batch, run.data.normalizer, run.language, run.device)
    actions = normalized_actions(batch, run.data.normalizer, run.device)
    loss, grad_norm = run.bc_step(inputs, actions, r)
    loss_value = run.ctx.mean(loss).item()
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"loss became {loss_value} at step {step}; last checkpoint: "
                                 f"{ckpt.latest_checkpoint(run.run_dir)}")
    return loss_value, grad_norm


def _log_window(run: _Run, logger: RunLogger, bar: tqdm, window: _Window, done: int,
                loss_last: float, grad_norm: torch.Tensor, t_start: float) -> _Window:
    """The log entry of step ``done`` for the steps of ``window``; returns the next (empty) window."""
    now = time.perf_counter()
    mean = window.loss_sum / window.n
    logger.log(done, {"loss": mean, "loss_last": loss_last, "lr": float(run.scheduler.get_last_lr()[0]),
                      "grad_norm": float(grad_norm), "samples_per_s": window.samples / (now - window.t_last),
                      "train_seconds": logger.previous_seconds + now - t_start, "ema_decay": run.ema.decay()})
    bar.set_postfix(loss=f"{mean:.4f}")
    return _Window(now)


def _say(message: str) -> None:
    """A line for the user on stderr, beside the progress bar."""
    tqdm.write(message, file=sys.stderr)


@torch.no_grad()
def _validation_loss(model: RDTPolicyModel, data: TrainingData, language: LanguageTable, cfg: TrainConfig,
                     policy: RDTConfig, device: torch.device) -> float:
    """Diffusion loss of the EMA model on fixed validation batches (same draws every time)."""
    assert data.val is not None
    sampler = StepBatchSampler(data.val.sizes, [1.0] * len(data.val.sizes), cfg.batch_size, cfg.seed + 1,
                               cfg.val_batches)
    losses = []
    for i, pairs in enumerate(sampler):
        batch = data.val[pairs]
        r = StepRandomness.draw(cfg.seed + 1, i, cfg.batch_size, policy.horizon, 1,
                                policy.diffusion.num_train_timesteps, policy.cond_dropout).to(device)
        inputs = make_model_inputs(batch, data.normalizer, language, device)
        losses.append(model.compute_loss(inputs, normalized_actions(batch, data.normalizer, device),
                                         noise=r.noise, t=r.t).item())
    return float(np.mean(losses))


def _save(run_dir: Path, step: int, config: dict[str, Any], model: nn.Module, ema: EMA,
          optimizer: torch.optim.Optimizer, keep: int) -> Path:
    """Weights, EMA and optimizer state of ``step``. No LR scheduler state: :func:`_restore` rebuilds the
    schedule at the step (checkpoints written before this still carry a ``scheduler`` entry, unread)."""
    optim_tensors, optim_plain = ckpt.optimizer_to_flat(optimizer.state_dict())
    train_tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    train_tensors.update(optim_tensors)
    train_json = {"optimizer": optim_plain, "ema_step": ema.step}
    return ckpt.save_checkpoint(run_dir, step, config, ema.model.state_dict(), train_tensors, train_json, keep)


def _restore(path: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer) -> int:
    """Load weights, EMA and optimizer state (with each group's ``initial_lr``) from ``path``; returns its
    step. The LR scheduler is not loaded: it is rebuilt at that step (see :func:`make_scheduler`), the
    same state for an unchanged ``steps`` and the documented continuation for a changed one."""
    meta = ckpt.load_config(path)
    tensors, plain = ckpt.load_train_state(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.model.load_state_dict(ckpt.load_model_state(path))
    ema.step = int(plain["ema_step"])
    optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, plain["optimizer"]))
    return int(meta["step"])
