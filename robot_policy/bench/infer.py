"""Inference latency per deployment backend and training throughput of RDT-style policies on this machine
(``robot-policy bench infer``).

Chunk latency (:mod:`robot_policy.bench.backends`): per policy config, the policy is built from its config
with random weights and conditioned like the task's policy would be (the task's state and object state from
one real reset, its control rate and its instruction; no cameras), saved as a checkpoint, exported once to a
deploy bundle and run on each backend (torch eager, torch.compile, ONNX Runtime; TensorRT where it and a
GPU exist): ``predict_chunk`` at batch 1 per sampler, ``sample_chunk`` at the RL batch sizes for the
fastest samplers, one denoiser call, its FLOPs and their share of this CPU's matmul peak, and the ratios
the issue's targets are stated in, all from one run. Next to each policy, shallow students (its config with
``depth`` set to each of ``student_depths``, random weights, their own bundles) are timed on every backend in
the same rounds, as DDIM with ``student_steps`` calls: what ``robot-policy distill student_depth=N`` writes,
so the ratio of a shallow student-1 to the full-depth teacher's DPM-Solver++-5 can be read on each backend.

Training throughput: optimisation steps as ``train()`` runs them (the step's randomness drawn from
``(seed, step)``, condition dropout and state noise, ``compute_loss`` through ``DiffusionLoss``, backward,
gradient clipping, AdamW, cosine schedule, EMA update) on one synthetic batch of TrainConfig's
global batch size; data loading is not included (``bench data`` measures it).

Absolute numbers depend on the machine and its load; ratios between cases of one run are what carry over.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import Tensor

from robot_policy.algorithms.bc import BCConfig, DiffusionLoss, StepRandomness
from robot_policy.bench.backends import LatencyPlan, latency_rows, latency_tables, measure_backends, stats_ms
from robot_policy.bench.report import Row
from robot_policy.configuration import field_defaults
from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.envs.registry import available_tasks, make_env
from robot_policy.keys import ACTION_MASK, CTRL_FREQ, LANGUAGE_ID, OBS_OBJECT, OBS_STATE, OBS_STATE_MASK
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.diffusion import SAMPLERS
from robot_policy.models.inputs import LanguageTable, make_model_inputs, normalized_actions
from robot_policy.models.params import count_parameters
from robot_policy.models.rdt import RDTConfig, RDTPolicyModel, available_policy_configs, load_policy_config
from robot_policy.models.text import make_text_encoder, save_text_embeddings
from robot_policy.runtime.backends import backend_names
from robot_policy.spaces.unified import UNIFIED_DIM
from robot_policy.train.ema import EMA
from robot_policy.train.loop import TrainConfig
from robot_policy.train.schedule import make_scheduler
from robot_policy.train.step import BCStep

_LABELS = {"ddpm": "DDPM", "ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}


@dataclass
class InferBenchConfig:
    """Options of ``robot-policy bench infer``."""

    #: policy configs (``configs/policy/<name>.yaml``) timed for chunk latency, built with random weights
    models: list[str] = field(default_factory=lambda: ["rdt_small", "rdt_170m"])
    #: samplers timed at batch 1, as ``kind:steps`` (kinds: ddpm, ddim, dpmsolver++); ddim:1 and ddim:2 are
    #: what a distilled student-1 / student-2 runs
    samplers: list[str] = field(default_factory=lambda: ["ddpm:100", "ddim:10", "dpmsolver++:5", "ddim:2",
                                                         "ddim:1"])
    #: deployment backends (robot_policy.runtime.backends); tensorrt is reported unmeasured without a GPU
    backends: list[str] = field(default_factory=lambda: ["torch", "torch.compile", "onnxruntime", "tensorrt"])
    #: shallow students timed next to each model: its config with ``depth`` set to each of these (random weights,
    #: every backend, in the same rounds): what ``robot-policy distill student_depth=N`` writes; [] = none
    student_depths: list[int] = field(default_factory=lambda: [2])
    #: DDIM steps of the shallow students' batch-1 rows (``student-K (depth D)``)
    student_steps: list[int] = field(default_factory=lambda: [1, 2])
    #: samplers also timed at ``batches`` (the RL rollouts' batched call), as ``kind:steps``
    batch_samplers: list[str] = field(default_factory=lambda: ["ddim:1", "ddim:2"])
    #: batch sizes of the RL rows
    batches: list[int] = field(default_factory=lambda: [8, 32])
    #: the task whose observation, instruction and control rate condition the policy
    task: str = "pybullet_bimanual_lift"
    #: timed chunks per case (model, backend, sampler, batch)...
    repeats: int = 100
    #: ...but stop once a case's timed chunks took this long (s), after at least ``min_repeats``
    max_seconds: float = 10.0
    #: timed chunks per case at least, whatever max_seconds says
    min_repeats: int = 2
    #: untimed chunks per case before timing, with the same sampler at <= ``warmup_steps`` steps (same code
    #: path and shapes; torch.compile compiles here)
    warmup: int = 1
    #: at most this many denoising steps per warm-up chunk
    warmup_steps: int = 5
    #: timed denoiser calls per (model, backend), at least (one is timed per round of chunks)
    call_repeats: int = 20
    #: a batch-1 chunk estimated to take longer than this (s; steps x the backend's denoiser call) is
    #: reported as steps x call p50 + the chunk with a no-op denoiser, labelled extrapolated
    extrapolate_above_s: float = 20.0
    #: real chunks still timed per extrapolated case, as a check of the extrapolation (0 = none)
    extrapolated_full_chunks: int = 1
    #: n of the n x n float32 matmuls (torch and ONNX Runtime) that measure this CPU's peak GFLOP/s
    peak_size: int = 2048
    #: matmuls timed for the peak before and after each model's cases
    peak_repeats: int = 5
    #: policy configs timed for training samples/s
    train_models: list[str] = field(default_factory=lambda: ["rdt_tiny", "rdt_small"])
    #: global batch; None = TrainConfig's batch_size (``robot-policy train``'s default)
    train_batch_size: int | None = None
    #: timed optimisation steps per model, after ``train_warmup`` untimed ones
    train_steps: int = 5
    #: untimed optimisation steps per model before timing
    train_warmup: int = 1
    #: intra-op threads of torch and of each ONNX Runtime session; None = every core of the machine
    torch_threads: int | None = None
    #: weights, noise and batches
    seed: int = 0

    def __post_init__(self) -> None:
        self.models, self.samplers, self.train_models = list(self.models), list(self.samplers), list(self.train_models)
        self.backends, self.batch_samplers, self.batches = (list(self.backends), list(self.batch_samplers),
                                                            list(self.batches))
        self.student_depths, self.student_steps = list(self.student_depths), list(self.student_steps)
        for spec in self.samplers + self.batch_samplers:
            parse_sampler(spec)
        known = available_policy_configs()
        for name in self.models + self.train_models:
            if name not in known:
                raise ValueError(f"models/train_models: unknown policy config {name!r}; available: {', '.join(known)}")
        for depth in self.student_depths:
            if depth < 2:
                raise ValueError(f"student_depths: {depth} must be >= 2 (a language and an observation block)")
            shallower = [f"{n} (depth {d})" for n in self.models if (d := load_policy_config(n).depth) < depth]
            if shallower:
                raise ValueError(f"student_depths: {depth} is deeper than {', '.join(shallower)}")
        if any(k < 1 for k in self.student_steps):
            raise ValueError(f"student_steps: every step count must be >= 1, got {self.student_steps}")
        for name in self.backends:
            if name not in backend_names():
                raise ValueError(f"backends: unknown {name!r}; available: {', '.join(backend_names())}")
        if self.task not in available_tasks():
            raise ValueError(f"task: unknown {self.task!r}; available: {', '.join(available_tasks())}")
        for name in ("repeats", "min_repeats", "call_repeats", "train_steps", "warmup_steps", "peak_size",
                     "peak_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if any(b < 1 for b in self.batches):
            raise ValueError(f"batches: every batch size must be >= 1, got {self.batches}")
        if self.min_repeats > self.repeats:
            raise ValueError(f"min_repeats: {self.min_repeats} exceeds repeats {self.repeats}")
        for name in ("warmup", "train_warmup", "extrapolated_full_chunks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("max_seconds", "extrapolate_above_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads: must be >= 1 or null, got {self.torch_threads}")
        if self.train_batch_size is not None and self.train_batch_size < 1:
            raise ValueError(f"train_batch_size: must be >= 1 or null, got {self.train_batch_size}")

    def plan(self, threads: int) -> LatencyPlan:
        """The backend measurement's plan at ``threads`` intra-op threads."""
        def labelled(specs: list[str]) -> dict[str, tuple[str, int]]:
            return {sampler_label(*parse_sampler(spec)): parse_sampler(spec) for spec in specs}

        return LatencyPlan(labelled(self.samplers), self.backends, labelled(self.batch_samplers), self.batches,
                           threads, self.repeats, self.min_repeats, self.max_seconds, self.warmup,
                           self.warmup_steps, self.call_repeats, self.extrapolate_above_s,
                           self.extrapolated_full_chunks, self.peak_size, self.peak_repeats, self.seed,
                           self.student_steps if self.student_depths else ())


def parse_sampler(spec: str) -> tuple[str, int]:
    """``"ddim:10"`` -> ("ddim", 10)."""
    kind, sep, steps = str(spec).partition(":")
    if not sep or kind not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"samplers: expected kind:steps with kind in {', '.join(SAMPLERS)} and steps >= 1, "
                         f"got {spec!r}")
    return kind, int(steps)


def sampler_label(kind: str, steps: int) -> str:
    """``DDPM-100``; a 1- or 2-step DDIM is what a distilled student runs: ``student-1 (DDIM-1)``."""
    label = f"{_LABELS[kind]}-{steps}"
    return f"student-{steps} ({label})" if kind == "ddim" and steps <= 2 else label


def time_calls(fn: Callable[[], Any], repeats: int, max_seconds: float, min_repeats: int = 1) -> list[float]:
    """Wall times (s) of up to ``repeats`` calls of ``fn``; stops early past ``max_seconds`` in total once
    ``min_repeats`` calls are done."""
    times: list[float] = []
    while len(times) < repeats and (len(times) < min_repeats or sum(times) < max_seconds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# --- the policy's conditioning, as on the task -------------------------------------------------------


@dataclass
class TaskInputs:
    """One real observation of the task and what a policy trained on it would be conditioned with."""

    obs: dict[str, np.ndarray]
    action_mask: np.ndarray  # (Da,)
    control_hz: float
    instruction: str
    object_state_dim: int
    #: the task's embodiment spec as a checkpoint stores it (``EmbodimentSpec.to_dict``)
    embodiment: dict[str, Any]


def task_inputs(task: str, seed: int = 0) -> TaskInputs:
    env = make_env(task)
    try:
        obs, _ = env.reset(seed=seed)
        return TaskInputs({k: np.asarray(v) for k, v in obs.items()}, np.asarray(env.action_mask, np.float32),
                          float(env.task.control_hz), env.task.language, int(env.object_state_dim),
                          env.embodiment.to_dict())
    finally:
        env.close()


def policy_for_task(name: str, object_state_dim: int) -> RDTConfig:
    """The named policy config conditioned as ``train`` would fill it for a state-only task."""
    policy = load_policy_config(name)
    obs = dataclasses.replace(policy.obs_encoder, cameras=[], object_state_dim=object_state_dim)
    return dataclasses.replace(policy, obs_encoder=obs)


class RandomTextEncoder:
    """Stands in for a frozen encoder whose weights are not on this machine (T5-XXL): fixed random tokens.

    Instructions are encoded once per episode, outside the chunk loop, so only the token count matters here.
    """

    def __init__(self, dim: int, tokens: int, seed: int = 0) -> None:
        self.dim, self.tokens = dim, tokens
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = torch.randn(len(texts), self.tokens, self.dim, generator=self.generator)  # (B, L, lang_dim)
        return tokens, torch.ones(len(texts), self.tokens, dtype=torch.bool)


def language_table(policy: RDTConfig, instruction: str, seed: int = 0) -> LanguageTable:
    """The builtin byte encoder runs for real; others get random tokens, one per instruction byte (a T5
    tokenizer gives fewer, so this errs on the slow side)."""
    if policy.text_encoder.kind == "builtin":
        return LanguageTable(make_text_encoder(policy.text_encoder, policy.lang_dim, policy.max_lang_tokens),
                             [instruction])
    tokens = min(len(instruction.encode()), policy.max_lang_tokens)
    return LanguageTable(RandomTextEncoder(policy.lang_dim, tokens, seed), [instruction])  # type: ignore[arg-type]


def unit_normalizer(object_state_dim: int, state_mask: np.ndarray, action_mask: np.ndarray) -> Normalizer:
    """Identity statistics (speed does not depend on them), with the embodiment's masks."""
    def stats(dim: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        zeros, ones = np.zeros(dim), np.ones(dim)
        return {"mean": zeros, "std": ones, "min": -ones, "max": ones, "q01": -ones, "q99": ones,
                "mask": np.asarray(mask, np.float64)}

    all_stats = {fmt.STATE: stats(UNIFIED_DIM, state_mask), fmt.ACTION: stats(UNIFIED_DIM, action_mask)}
    modes = {fmt.STATE: "gaussian", fmt.ACTION: "minmax"}
    if object_state_dim:
        all_stats[fmt.OBJECT_STATE] = stats(object_state_dim, np.ones(object_state_dim))
        modes[fmt.OBJECT_STATE] = "gaussian"
    return Normalizer(all_stats, modes)


def observation_batch(ti: TaskInputs, n_obs_steps: int) -> dict[str, Tensor]:
    """A batch of one, laid out as training windows and ``DiffusionPolicy`` lay it out (history padded)."""
    state = torch.from_numpy(np.asarray(ti.obs[OBS_STATE], np.float32))
    batch = {
        fmt.STATE: state.expand(1, n_obs_steps, UNIFIED_DIM).clone(),  # (1, To, Da)
        OBS_STATE_MASK: torch.from_numpy(np.asarray(ti.obs[OBS_STATE_MASK], np.float32))[None],
        ACTION_MASK: torch.from_numpy(ti.action_mask)[None],
        CTRL_FREQ: torch.tensor([ti.control_hz], dtype=torch.float32),
        LANGUAGE_ID: torch.zeros(1, dtype=torch.int64),
    }
    if ti.object_state_dim:
        obj = torch.from_numpy(np.asarray(ti.obs[OBS_OBJECT], np.float32))
        batch[fmt.OBJECT_STATE] = obj.expand(1, n_obs_steps, ti.object_state_dim).clone()  # (1, To, Do)
    return batch


def write_checkpoint(model: RDTPolicyModel, normalizer: Normalizer, ti: TaskInputs, language: LanguageTable,
                     root: Path) -> Path:
    """A checkpoint directory of ``model`` (its random weights) as ``train`` writes one, for the task.

    A policy whose text encoder has no weights on this machine (T5) is stored with ``text_encoder.kind=file``
    and the instruction's tokens from ``language`` precomputed next to it: the instruction is encoded once
    at load, so the chunk loop is the same either way.
    """
    policy = model.cfg
    if policy.text_encoder.kind != "builtin":
        embeddings = root / "instruction.safetensors"
        tokens, mask = language.tokens, language.mask  # (1, L, lang_dim), (1, L)
        save_text_embeddings(embeddings, {ti.instruction: tokens[0][mask[0]]})
        policy = dataclasses.replace(policy, text_encoder=dataclasses.replace(
            policy.text_encoder, kind="file", path=str(embeddings)))
    config = {"format": "robot_policy.checkpoint/1", "policy": dataclasses.asdict(policy),
              "normalizer": normalizer.to_json(), "languages": [ti.instruction],
              "embodiments": {str(ti.embodiment["name"]): ti.embodiment}, "execute_horizon": policy.horizon}
    return ckpt.save_checkpoint(root, 0, config, model.state_dict(), keep_last=1)


# --- measurements ------------------------------------------------------------------------------------


def measure_latency(name: str, cfg: InferBenchConfig, ti: TaskInputs, plan: LatencyPlan,
                    say: Callable[[str], None]) -> dict[str, Any]:
    """The backend table of policy config ``name`` (:func:`robot_policy.bench.backends.measure_backends`) on
    the task's observation, with its sizes."""
    policy = policy_for_task(name, ti.object_state_dim)
    torch.manual_seed(cfg.seed)
    model = RDTPolicyModel(policy).eval()
    normalizer = unit_normalizer(ti.object_state_dim, ti.obs[OBS_STATE_MASK], ti.action_mask)
    language = language_table(policy, ti.instruction, cfg.seed)
    # what predict_chunk builds from this observation (a fresh history repeats it To times)
    inputs = make_model_inputs(observation_batch(ti, policy.obs_encoder.n_obs_steps), normalizer, language)
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        path = write_checkpoint(model, normalizer, ti, language, Path(tmp))
        students = {}
        for depth in cfg.student_depths:  # what distill student_depth=depth writes; random weights time the same
            torch.manual_seed(cfg.seed)
            student = RDTPolicyModel(dataclasses.replace(policy, depth=depth)).eval()
            students[depth] = (student, write_checkpoint(student, normalizer, ti, language, Path(tmp) / f"depth_{depth}"))
        out = measure_backends(model, path, inputs, ti.obs, plan, say, students)
    for depth in cfg.student_depths:
        out["students"][str(depth)]["parameters"] = count_parameters(dataclasses.replace(policy, depth=depth))
    return {"parameters": count_parameters(policy), "horizon": policy.horizon, "depth": policy.depth,
            "lang_tokens": int(inputs.lang_tokens.shape[1]) if inputs.lang_tokens is not None else 0,
            "obs_tokens": policy.obs_encoder.num_tokens, **out}


def train_defaults() -> dict[str, Any]:
    """``robot-policy train``'s batch size, optimiser settings, run length and execute horizon: the defaults
    of TrainConfig, their one place."""
    defaults = field_defaults(TrainConfig)
    return {"batch_size": defaults["batch_size"], "optim": dataclasses.asdict(defaults["optim"]),
            "steps": defaults["steps"], "execute_horizon": defaults["execute_horizon"]}


def synthetic_batch(ti: TaskInputs, policy: RDTConfig, batch_size: int, seed: int) -> dict[str, Tensor]:
    """(B, ...) windows shaped like the mixture dataset's batches, random values in the real slots."""
    g = torch.Generator().manual_seed(seed)
    To, Ta, B = policy.obs_encoder.n_obs_steps, policy.horizon, batch_size
    state_mask = torch.from_numpy(np.asarray(ti.obs[OBS_STATE_MASK], np.float32))
    action_mask = torch.from_numpy(ti.action_mask)
    batch = {
        fmt.STATE: torch.randn(B, To, UNIFIED_DIM, generator=g) * state_mask,  # (B, To, Da)
        fmt.ACTION: torch.rand(B, Ta, UNIFIED_DIM, generator=g) * action_mask,  # (B, Ta, Da)
        OBS_STATE_MASK: state_mask.expand(B, UNIFIED_DIM).clone(),
        ACTION_MASK: action_mask.expand(B, UNIFIED_DIM).clone(),
        CTRL_FREQ: torch.full((B,), ti.control_hz),
        LANGUAGE_ID: torch.zeros(B, dtype=torch.int64),
    }
    if ti.object_state_dim:
        batch[fmt.OBJECT_STATE] = torch.randn(B, To, ti.object_state_dim, generator=g)  # (B, To, Do)
    return batch


def measure_training(name: str, cfg: InferBenchConfig, ti: TaskInputs) -> dict[str, Any]:
    """Samples/s of ``train()``'s optimisation step (single process, CPU) on a synthetic batch."""
    defaults = train_defaults()
    batch_size = cfg.train_batch_size or int(defaults["batch_size"])
    optim = BCConfig(**defaults["optim"])
    policy = policy_for_task(name, ti.object_state_dim)
    torch.manual_seed(cfg.seed)
    model = RDTPolicyModel(policy).train()
    ema = EMA(model, max_decay=optim.ema_max_decay, power=optim.ema_power)
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = make_scheduler(optimizer, optim.warmup_steps, int(defaults["steps"]), optim.min_lr_ratio)
    bc_step = BCStep(model, DiffusionLoss(model), optimizer, scheduler, ema, optim)
    normalizer = unit_normalizer(ti.object_state_dim, ti.obs[OBS_STATE_MASK], ti.action_mask)
    language = language_table(policy, ti.instruction, cfg.seed)
    batch = synthetic_batch(ti, policy, batch_size, cfg.seed)
    step = 0

    def one_step() -> None:  # the body of train()'s loop, minus data loading, logging and checkpoints
        nonlocal step
        r = StepRandomness.draw(cfg.seed, step, batch_size, policy.horizon, 1,
                                policy.diffusion.num_train_timesteps, policy.cond_dropout)
        loss, _ = bc_step(make_model_inputs(batch, normalizer, language), normalized_actions(batch, normalizer), r)
        loss.item()
        step += 1

    for _ in range(cfg.train_warmup):
        one_step()
    times = time_calls(one_step, cfg.train_steps, float("inf"))
    return {"parameters": count_parameters(policy), "batch_size": batch_size, "horizon": policy.horizon,
            "step": stats_ms(times), "samples_per_s": batch_size * len(times) / sum(times)}


def run_infer_bench(cfg: InferBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every measurement of ``bench infer``; torch's thread count is restored afterwards."""
    say = progress or (lambda _msg: None)
    previous = torch.get_num_threads()
    threads = cfg.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    if threads > 1 and load >= 1.0:
        # threads of one op wait for each other at every barrier; a descheduled one stalls them all
        say(f"warning: 1-min load average {load:.1f} on {os.cpu_count()} cores before starting: "
            f"{threads}-thread timings can be many times slower; torch_threads=1 is steadier")
    try:
        ti = task_inputs(cfg.task, cfg.seed)
        results: dict[str, Any] = {"torch_threads": threads, "cpu_count": os.cpu_count(),
                                   "load_average_1min_before": os.getloadavg()[0], "torch": torch.__version__,
                                   "onnxruntime": onnxruntime.__version__, "cuda": torch.cuda.is_available(),
                                   "task": cfg.task, "control_hz": ti.control_hz,
                                   # null in the train config = the whole chunk of the first model
                                   "execute_horizon": int(train_defaults()["execute_horizon"]
                                                          or load_policy_config(cfg.models[0]).horizon),
                                   "object_state_dim": ti.object_state_dim, "latency": {}, "train": {}}
        for name in cfg.models:
            say(f"latency: {name}")
            results["latency"][name] = measure_latency(name, cfg, ti, cfg.plan(threads), say)
        for name in cfg.train_models:
            say(f"training: {name}")
            results["train"][name] = measure_training(name, cfg, ti)
        results["parameters"] = {name: count_parameters(load_policy_config(name)) for name in available_policy_configs()}
        # other processes on the cores distort every number (and multi-threaded ones most): record them
        results["load_average_1min_after"] = os.getloadavg()[0]
        return results
    finally:
        torch.set_num_threads(previous)


# --- the table ---------------------------------------------------------------------------------------

#: parameter targets of the RDT sizes the issue names
PARAMETER_TARGETS = {"rdt_170m": 170e6, "rdt_1b": 1.2e9}


def infer_rows(r: dict[str, Any]) -> list[Row]:
    """Latency rows with their targets, training samples/s, parameter counts."""
    rows = latency_rows(r["latency"], r["torch_threads"])
    for name, t in r["train"].items():
        rows.append(Row(f"training {name} ({t['parameters'] / 1e6:.1f}M params), batch {t['batch_size']}: samples/s "
                        f"(step p50 {t['step']['p50_ms']:,.0f} ms, n={t['step']['n']})", f"{t['samples_per_s']:,.1f}"))
    for name, n in r["parameters"].items():
        target = PARAMETER_TARGETS.get(name)
        rows.append(Row(f"{name}: parameters (transformer + adaptors, counted on the meta device)", f"{n:,}",
                        f"{target / 1e6:,.0f}M +-10%" if target else "",
                        ("pass" if abs(n / target - 1) <= 0.10 else "FAIL") if target else ""))
    return rows


def infer_notes(r: dict[str, Any], cfg: InferBenchConfig) -> str:
    """How the rows were measured, then the chunk-latency matrices (model x backend x sampler x batch)."""
    budget_ms = 1e3 * r["execute_horizon"] / r["control_hz"]
    lat = r["latency"]
    exports = ", ".join(f"{n} {m['export_s']:.0f} s" for n, m in lat.items())
    compiles = ", ".join(f"{n} {m['backends']['torch.compile']['warmup_s']:.0f} s" for n, m in lat.items()
                         if m["backends"].get("torch.compile", {}).get("status") == "measured")
    gpu = ("GPU: " + ("CUDA present, see the tensorrt column" if r["cuda"] else
                      "not measured (no GPU lent this session: no CUDA device, no TensorRT)") + ". ")
    text = (
        f"CPU, torch {r['torch']}, ONNX Runtime {r['onnxruntime']}: {r['torch_threads']} torch intra-op thread(s) and "
        f"{r['torch_threads']} intra-op thread(s) per ONNX Runtime session, on {r['cpu_count']} cores; 1-min load "
        f"average {r['load_average_1min_before']:.1f} before, {r['load_average_1min_after']:.1f} after (other "
        "processes on the cores slow every row; ratios within one run are what carry over). Policies built from "
        f"their configs with random weights, conditioned as on `{r['task']}`: its state and {r['object_state_dim']}-d "
        "object state from one reset, its instruction, no cameras; each saved as a checkpoint and exported once to a "
        f"deploy bundle ({exports}), each backend built once from the bundle. " + gpu
        + "Batch 1 = `predict_chunk(obs)` of the bundle's policy on that backend: the robot's loop (history, "
        "normalisation, encode, the sampler's loop over the denoiser, unnormalisation). Batch "
        f"{' / '.join(map(str, cfg.batches)) or '(none)'} (RL rollouts) = "
        "`sample_chunk` on the batch-1 inputs repeated (encode + the loop). student-1 / student-2 = the same network "
        "sampled with DDIM-1 / DDIM-2: a distilled student is an ordinary checkpoint whose sampler is DDIM-K, so its "
        "chunk costs what these do. "
        + (f"student-K (depth D) = the same config with {' / '.join(map(str, cfg.student_depths))} transformer "
           "blocks (what `robot-policy distill student_depth=D` writes; random weights, its own bundle and backend), "
           "sampled with DDIM-K, timed in the same rounds; its ratio rows compare it with the full-depth teacher's "
           "chunks on the same backend. " if cfg.student_depths else "")
        + "Every (backend, sampler) case takes one chunk per round in the same rounds, with "
        f"one denoiser call per backend per round; a case times up to {cfg.repeats} chunks, stopping after "
        f"{cfg.max_seconds:g} s once {cfg.min_repeats} are done (a p99 of n < 100 is about the max). A case estimated "
        f"above {cfg.extrapolate_above_s:g} s per chunk is extrapolated: steps x the backend's denoiser-call p50 + the "
        "same `predict_chunk` with a no-op denoiser (timed in the rounds), with "
        f"{cfg.extrapolated_full_chunks} real chunk(s) timed as a check. torch.compile: inductor, static shapes, "
        f"compiled in the warm-up (warm-up incl. compiling every batch size: {compiles or 'n/a'}). FLOPs: "
        "`torch.utils.flop_counter.FlopCounterMode` over one torch denoiser call at batch 1 (matmuls, and attention "
        "through CPU SDPA; elementwise ops not counted). Peak: the best GFLOP/s of float32 "
        f"{cfg.peak_size}x{cfg.peak_size} matmuls at the same thread count, in `torch.matmul` and in ONNX Runtime "
        "(a one-node MatMul graph: MLAS), before and after each model's cases; share = FLOPs / call p50 / peak; "
        "FLOP floor = FLOPs / peak. Real-time budget with asynchronous inference: "
        f"{r['execute_horizon']} actions at {r['control_hz']:g} Hz = {budget_ms:.0f} ms per chunk. Training: "
        "`train()`'s optimisation step (step randomness, condition dropout, state noise, compute_loss, backward, "
        "clip, AdamW, cosine LR, EMA) on one synthetic batch of TrainConfig's batch size, data loading excluded.")
    return text + "\n\n" + latency_tables(lat, {n: m["parameters"] for n, m in lat.items()})
