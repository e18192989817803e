"""Chunk latency of one policy on every deployment backend, and what its denoiser call costs in FLOPs (the
backend table of ``robot-policy bench infer``).

The policy's checkpoint is exported once to a deploy bundle (``robot-policy export``'s
:func:`~robot_policy.runtime.bundle.export.export_bundle`), each backend is built once from it, and every
sampler runs over that one backend as :class:`~robot_policy.runtime.bundle.BundlePolicy` (``load_bundle``
minus rebuilding the backend per sampler). What is timed:

- batch 1: ``predict_chunk(obs)``, the call the robot's loop makes (observation history, normalisation,
  the backend's ``encode``, the sampler's loop over its ``denoise``, unnormalisation, the ActionChunk);
- batch B (RL rollouts): :func:`~robot_policy.runtime.sampling.sample_chunk` on the batch-1 inputs repeated
  B times (encode + the loop; a vectorised env's glue is its own);
- one denoiser call ``backend.denoise(x_t, t, cond)`` at batch 1, once per backend per round.

Every case (backend x sampler) takes one chunk per round, in the same rounds, so load changes on a shared
machine hit them alike; a case stops after ``repeats`` chunks, or once it has ``min_repeats`` and its
chunks took ``max_seconds`` in all.

Shallow students (``measure_backends(students=...)``: the same config with fewer blocks, its own bundle and
backend per backend) are cases of the same rounds, as DDIM with ``plan.student_steps`` calls, labelled
``student-K (depth D)``; each has its own denoiser call timed with the others, and the ratios of its
1-step chunk to the teacher's DDPM-100 and DPM-Solver++-5 chunks on the same backend are computed like
the full-depth student's.

A case whose chunk would take longer than ``extrapolate_above_s`` (steps x the backend's call time; DDPM-100
of a 170M model on CPU) is not timed whole in the rounds: it is reported as ``steps x call p50 + the same
chunk with a no-op denoiser`` (everything but the network, timed in the rounds) and labelled extrapolated,
with ``extrapolated_full_chunks`` real chunks timed next to it as a check.

FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over the torch model's denoiser call at batch 1
(matmuls, and attention through CPU SDPA, which the counter's table lacks; elementwise ops not counted).
Every op of the denoiser is per sample, so batch B costs B times as much. The CPU's peak: the fastest of
large float32 matmuls (2 n^3 FLOPs each) in torch (``torch.matmul``) and in ONNX Runtime (a one-node
MatMul graph), at the bench's thread count, before and after the cases.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from robot_policy.bench.report import Row, check
from robot_policy.models.diffusion import Sampler
from robot_policy.models.rdt import Conditions, ModelInputs, RDTPolicyModel
from robot_policy.runtime.backends import Backend, BackendOptions, make_backend
from robot_policy.runtime.bundle import Bundle, BundlePolicy, open_bundle
from robot_policy.runtime.bundle.export import ExportConfig, export_bundle
from robot_policy.runtime.sampling import sample_chunk
from robot_policy.spaces.unified import UNIFIED_DIM

#: the samplers the issue's ratios compare: a 1-step student, the 100-step DDPM teacher loop, DPM-Solver++-5
STUDENT_1, DDPM_100, DPM_5 = ("ddim", 1), ("ddpm", 100), ("dpmsolver++", 5)


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    """QK^T and AV of one SDPA call (FlopCounterMode passes shapes)."""
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


#: torch's counter has formulas for the CUDA SDPA kernels only; the CPU kernel does the same arithmetic
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
NO_TENSORRT = "not measured: no GPU/TensorRT"


@dataclass(frozen=True)
class LatencyPlan:
    """What to time for one policy; ``InferBenchConfig`` fills it (its fields document the knobs)."""

    #: label -> (sampler kind, steps), timed at batch 1 through ``predict_chunk``
    samplers: Mapping[str, tuple[str, int]]
    #: backend names (``robot_policy.runtime.backends``); tensorrt is reported unmeasured without CUDA
    backends: Sequence[str]
    #: label -> (kind, steps), also timed at each of ``batches``
    batch_samplers: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    batches: Sequence[int] = ()
    #: intra-op threads of every backend (torch process-wide, ONNX Runtime per session)
    threads: int = 1
    repeats: int = 20
    min_repeats: int = 2
    max_seconds: float = 10.0
    warmup: int = 1
    warmup_steps: int = 5
    call_repeats: int = 20
    extrapolate_above_s: float = 20.0
    extrapolated_full_chunks: int = 1
    #: matmul size n (n x n @ n x n) and products timed, for the CPU's peak
    peak_size: int = 2048
    peak_repeats: int = 5
    seed: int = 0
    #: DDIM step counts timed at batch 1 on each shallow student (``student-K (depth D)``)
    student_steps: Sequence[int] = ()

    def enough(self, times: Sequence[float]) -> bool:
        return len(times) >= self.repeats or (len(times) >= self.min_repeats and sum(times) >= self.max_seconds)


# --- timing ------------------------------------------------------------------------------------------


def student_label(steps: int, depth: int) -> str:
    """The row of a shallow student: ``student-1 (depth 2)``."""
    return f"student-{steps} (depth {depth})"


def timed(fn: Callable[[], Any]) -> float:
    """Wall time (s) of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / min in ms and the count; with n < 100 the p99 is about the max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("stats_ms: no timings")
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "n": int(ms.size)}


@dataclass
class Case:
    """One thing timed in the rounds: ``run`` once per round until the plan has enough of it."""

    backend: str
    label: str
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)


def run_rounds(cases: Sequence[Case], enough: Callable[[Sequence[float]], bool],
               round_start: Callable[[set[str]], None] | None = None) -> int:
    """Time the cases in rounds, one run of each unfinished case per round; ``round_start(backends)`` is
    called before each round with the backends still active. Returns the number of rounds."""
    rounds = 0
    while active := [c for c in cases if not enough(c.times)]:
        if round_start is not None:
            round_start({c.backend for c in active})
        for case in active:
            case.times.append(timed(case.run))
        rounds += 1
    return rounds


def matmul_gflops(size: int = 2048, repeats: int = 5) -> list[float]:
    """GFLOP/s of ``repeats`` float32 (size x size) @ (size x size) products in torch at its current thread count."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    torch.matmul(a, b)  # the first call sizes the thread pool and the packing buffers
    return [2 * size**3 / timed(partial(torch.matmul, a, b)) / 1e9 for _ in range(repeats)]


def ort_matmul_gflops(size: int = 2048, repeats: int = 5, threads: int = 1) -> list[float]:
    """The same products as a one-node ONNX graph on ONNX Runtime's CPU provider (its MLAS GEMM), with
    ``threads`` intra-op threads. torch's BLAS and MLAS pick different kernels for one CPU (on AVX-512 parts
    they can differ by 2x), so the CPU's measured peak is the better of the two."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((size, size), dtype=np.float32) for n in "ab"}
    session.run(None, feeds)
    return [2 * size**3 / timed(partial(session.run, None, feeds)) / 1e9 for _ in range(repeats)]


def matmul_peaks(size: int, repeats: int, threads: int) -> dict[str, list[float]]:
    """GFLOP/s of large float32 matmuls per GEMM library the backends use (torch's, ONNX Runtime's)."""
    return {"torch.matmul": matmul_gflops(size, repeats), "onnxruntime MatMul": ort_matmul_gflops(size, repeats, threads)}


def best_peak(peaks: Mapping[str, Sequence[float]]) -> float:
    """The CPU's measured matmul peak: the fastest product of any library, before or after."""
    return max(max(v) for v in peaks.values())


# --- the policy's inputs and its denoiser ------------------------------------------------------------


def repeat_batch(inputs: ModelInputs, batch: int) -> ModelInputs:
    """Batch-1 inputs as ``batch`` identical rows (B, ...): one observation per env of a vectorised rollout."""
    if inputs.state.shape[0] != 1:
        raise ValueError(f"repeat_batch: expected batch-1 inputs, got state {tuple(inputs.state.shape)}")
    return dataclasses.replace(inputs, **{
        f.name: v.expand(batch, *v.shape[1:]).contiguous()
        for f in dataclasses.fields(inputs) if isinstance(v := getattr(inputs, f.name), Tensor)})


def _denoiser_args(model_or_backend: RDTPolicyModel | Backend, inputs: ModelInputs, horizon: int,
                   train_steps: int, seed: int) -> tuple[Tensor, Tensor, Conditions]:
    """x_t (B, Ta, Da) ~ N(0, I), t (B,) = the noisiest step, the encoded conditions."""
    B = inputs.state.shape[0]
    x_t = torch.randn(B, horizon, UNIFIED_DIM, generator=torch.Generator().manual_seed(seed))
    t = torch.full((B,), train_steps - 1, dtype=torch.long)
    with torch.no_grad():
        cond = model_or_backend.encode(inputs)
    return x_t, t, cond


@torch.no_grad()
def denoiser_flops(model: RDTPolicyModel, inputs: ModelInputs) -> dict[str, int]:
    """FLOPs of one denoiser call at the batch of ``inputs``, by aten op (matmuls count 2 per multiply-add)."""
    x_t, t, cond = _denoiser_args(model, inputs, model.cfg.horizon, model.cfg.diffusion.num_train_timesteps, 0)
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        model.denoise(x_t, t, cond)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


class NoOpDenoiser:
    """A backend whose ``encode`` is the wrapped one's and whose ``denoise`` returns zeros at once: a chunk
    through it costs everything but the network (glue, encoder, the sampler's updates and noise draws)."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.name = f"{backend.name} (no-op denoiser)"
        self.device = backend.device

    def encode(self, inputs: ModelInputs) -> Conditions:
        return self.inner.encode(inputs)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        return torch.zeros_like(x_t)  # (B, Ta, Da)


def _sync(device: torch.device) -> None:
    # CUDA work is asynchronous: a wall time means nothing until the stream is drained
    if device.type == "cuda":
        torch.cuda.synchronize()


def unavailable(name: str) -> str | None:
    """Why a backend cannot run here (only tensorrt: it needs the package and a CUDA device), else None."""
    if name != "tensorrt":
        return None
    importable, cuda = importlib.util.find_spec("tensorrt") is not None, torch.cuda.is_available()
    return None if importable and cuda else f"{NO_TENSORRT} (tensorrt importable: {importable}, CUDA: {cuda})"


def extrapolated_ms(steps: int, call_p50_ms: float, without_denoiser_p50_ms: float) -> float:
    """A chunk's time from its parts: ``steps`` denoiser calls plus the chunk with a no-op denoiser."""
    return steps * call_p50_ms + without_denoiser_p50_ms


# --- the measurement ---------------------------------------------------------------------------------


@dataclass
class _Runner:
    """One built backend and what is timed on it."""

    name: str
    backend: Backend
    bundle: Bundle
    inputs: ModelInputs  # batch 1
    obs: dict[str, np.ndarray]
    plan: LatencyPlan
    calls: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.bundle.cfg
        self.args = _denoiser_args(self.backend, self.inputs, cfg.horizon, cfg.diffusion.num_train_timesteps,
                                   self.plan.seed)  # x_t (1, Ta, Da), t (1,), conditions: one call's inputs

    def policy(self, kind: str, steps: int, backend: Backend | None = None) -> BundlePolicy:
        p = BundlePolicy(self.bundle, backend or self.backend, self.bundle.sampler(kind, steps))
        p.reset(self.plan.seed)
        return p

    def call(self) -> None:
        self.calls.append(timed(self._call))

    def _call(self) -> None:
        self.backend.denoise(*self.args)
        _sync(self.backend.device)

    def prepare(self) -> float:
        """Warm up every shape and path the rounds will time (torch.compile compiles here); returns seconds."""
        start = time.perf_counter()
        for _ in range(3):
            self._call()
        for kind, steps in self.plan.samplers.values():
            p = self.policy(kind, min(steps, self.plan.warmup_steps))
            for _ in range(self.plan.warmup):
                p.predict_chunk(self.obs)
        for batch in self.plan.batches:  # one shape per batch size: a 1-step chunk compiles and sizes it
            for _ in range(self.plan.warmup if self.plan.batch_samplers else 0):
                self.batched("ddim", 1, batch)()
        return time.perf_counter() - start

    def batched(self, kind: str, steps: int, batch: int) -> Callable[[], None]:
        inputs = repeat_batch(self.inputs, batch)
        noise = torch.randn(batch, self.bundle.cfg.horizon, UNIFIED_DIM,
                            generator=torch.Generator().manual_seed(self.plan.seed))
        sampler = Sampler(self.bundle.cfg.diffusion, kind, steps)

        def run() -> None:
            sample_chunk(self.backend, sampler, inputs, noise)
            _sync(self.backend.device)

        return run


def measure_backends(model: RDTPolicyModel, checkpoint: Path, inputs: ModelInputs, obs: dict[str, np.ndarray],
                     plan: LatencyPlan, say: Callable[[str], None] = lambda _msg: None,
                     students: Mapping[int, tuple[RDTPolicyModel, Path]] | None = None) -> dict[str, Any]:
    """The backend table of one policy (see the module docstring).

    Args:
        model: the policy's torch network (FLOPs are counted on it).
        checkpoint: the same weights as a checkpoint directory (exported to a bundle here).
        inputs: batch-1 model inputs as ``predict_chunk`` builds them from ``obs`` (state (1, Da), ...).
        obs: one observation of the task (``predict_chunk``'s argument).
        students: depth -> (network, checkpoint) of shallow students of the same policy, timed in the same
            rounds as DDIM with ``plan.student_steps`` calls.
    Returns:
        JSON-able: FLOPs, the CPU's matmul peak (before and after), per backend its build/warm-up times,
        denoiser call, chunks per sampler (batch 1) and per (sampler, batch), and the same-run ratios; per
        student depth its FLOPs and export time, and per backend its denoiser call (``students``).
    """
    students = students or {}
    out: dict[str, Any] = {"flops_by_op": denoiser_flops(model, inputs)}
    out["flops"] = sum(out["flops_by_op"].values())
    out["students"] = {str(d): {"flops": sum(denoiser_flops(m, inputs).values())} for d, (m, _) in students.items()}
    out["peak_size"] = plan.peak_size
    out["peak_gflops"] = matmul_peaks(plan.peak_size, plan.peak_repeats, plan.threads)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        start = time.perf_counter()
        bundle = open_bundle(export_bundle(ExportConfig(checkpoint=str(checkpoint), out=str(Path(tmp) / "bundle"))))
        out["export_s"] = time.perf_counter() - start
        out["export_check"] = bundle.spec["export_check"]
        student_bundles = {}
        for depth, (_, path) in students.items():
            start = time.perf_counter()
            student_bundles[depth] = open_bundle(export_bundle(ExportConfig(
                checkpoint=str(path), out=str(Path(tmp) / f"bundle_depth_{depth}"))))
            out["students"][str(depth)]["export_s"] = time.perf_counter() - start
        runners: dict[str, _Runner] = {}
        student_runners: dict[int, dict[str, _Runner]] = {d: {} for d in students}
        out["backends"] = {}
        for name in plan.backends:
            if (why := unavailable(name)) is not None:
                out["backends"][name] = {"status": why}
                continue
            say(f"  building {name}")
            start = time.perf_counter()
            runners[name] = _build_runner(name, bundle, inputs, obs, plan)
            build_s = time.perf_counter() - start
            say(f"  warming up {name}")
            out["backends"][name] = {"status": "measured", "device": _device_of(name), "build_s": build_s,
                                     "warmup_s": runners[name].prepare()}
            for depth, student_bundle in student_bundles.items():
                say(f"  building and warming up {name}, student depth {depth}")
                student_runners[depth][name] = _build_runner(name, student_bundle, inputs, obs,
                                                             _student_plan(plan, depth))
                student_runners[depth][name].prepare()
        _time_cases(runners, plan, out["backends"], say, student_runners)
    for lib, gflops in matmul_peaks(plan.peak_size, plan.peak_repeats, plan.threads).items():
        out["peak_gflops"][lib] += gflops  # after: the load may have changed over the cases
    out["peak"] = peak = best_peak(out["peak_gflops"])
    for name, runner in runners.items():
        b = out["backends"][name]
        b["denoiser_call"] = call = stats_ms(runner.calls)
        b["gflops"] = out["flops"] / (call["p50_ms"] * 1e6)
        # a GPU backend's share of the CPU's peak means nothing
        b["peak_share"] = b["gflops"] / peak if b["device"] == "cpu" else None
        b["students"] = {str(d): {"denoiser_call": stats_ms(by_backend[name].calls)}
                         for d, by_backend in student_runners.items()}
        _finish_chunks(b)
    out["ratios"] = same_run_ratios(out["backends"], plan.samplers)
    return out


def _device_of(backend: str) -> str:
    return "cuda" if backend == "tensorrt" else "cpu"


def _build_runner(name: str, bundle: Bundle, inputs: ModelInputs, obs: dict[str, np.ndarray],
                  plan: LatencyPlan) -> _Runner:
    backend = make_backend(name, bundle.source(), BackendOptions(device=_device_of(name), threads=plan.threads))
    return _Runner(name, backend, bundle, inputs, obs, plan)


def _student_plan(plan: LatencyPlan, depth: int) -> LatencyPlan:
    """What a shallow student's runner times: its DDIM-K chunks at batch 1, no batched rows."""
    samplers = {student_label(k, depth): ("ddim", k) for k in plan.student_steps}
    return dataclasses.replace(plan, samplers=samplers, batch_samplers={}, batches=())


def _time_cases(runners: dict[str, _Runner], plan: LatencyPlan, results: dict[str, Any],
                say: Callable[[str], None], students: Mapping[int, dict[str, _Runner]] | None = None) -> None:
    """Batch-1 rounds (the shallow students' chunks among them), then the real chunks that check the
    extrapolations, then the batched rounds."""
    students = students or {}
    for name in runners:
        results[name]["chunks"], results[name]["batched"] = {}, {}
    cases, checks = _batch1_cases(runners, plan)
    specs: dict[str, tuple[str, int, int | None]] = {label: (k, n, None) for label, (k, n) in plan.samplers.items()}
    for depth, by_backend in students.items():
        student_plan = _student_plan(plan, depth)
        more_cases, more_checks = _batch1_cases(by_backend, student_plan)
        cases, checks = cases + more_cases, {**checks, **more_checks}
        specs.update({label: (k, n, depth) for label, (k, n) in student_plan.samplers.items()})
    say(f"  batch 1: {len(cases)} cases in rounds ({len(checks)} extrapolated)")
    every = [*runners.values(), *(r for by_backend in students.values() for r in by_backend.values())]

    def one_call_each(active: set[str]) -> None:  # calls sampled over the same period as the chunks
        for r in every:
            if r.name in active:
                r.call()

    rounds = run_rounds(cases, plan.enough, one_call_each)
    for r in every:
        while len(r.calls) < plan.call_repeats:
            r.call()
    for case in cases:
        kind, steps, of_student = specs[case.label]
        row: dict[str, Any] = {"kind": kind, "steps": steps, "rounds": rounds}
        if of_student is not None:
            row["depth"] = of_student
        if (case.backend, case.label) in checks:
            row["without_denoiser"] = stats_ms(case.times)
            say(f"  {case.backend} {case.label}: {plan.extrapolated_full_chunks} real chunk(s) as a check")
            real = checks[(case.backend, case.label)]
            full = [timed(real) for _ in range(plan.extrapolated_full_chunks)]
            row["full_chunks"] = stats_ms(full) if full else None
        else:
            row.update(stats_ms(case.times))
        results[case.backend]["chunks"][case.label] = row
    batched = [Case(name, f"{label}@{batch}", r.batched(kind, steps, batch))
               for batch in plan.batches for name, r in runners.items()
               for label, (kind, steps) in plan.batch_samplers.items()]
    if batched:
        say(f"  batches {list(plan.batches)}: {len(batched)} cases in rounds")
        run_rounds(batched, plan.enough)
    for case in batched:
        label, _, batch = case.label.rpartition("@")
        kind, steps = plan.batch_samplers[label]
        results[case.backend]["batched"][case.label] = {"label": label, "batch": int(batch), "kind": kind,
                                                        "steps": steps, **stats_ms(case.times)}


def _batch1_cases(runners: dict[str, _Runner], plan: LatencyPlan
                  ) -> tuple[list[Case], dict[tuple[str, str], Callable[[], Any]]]:
    """A ``predict_chunk`` case per (backend, sampler); one estimated above ``extrapolate_above_s`` runs with a
    no-op denoiser instead, and its real chunk is returned by (backend, label) for the check."""
    cases: list[Case] = []
    checks: dict[tuple[str, str], Callable[[], Any]] = {}
    for name, r in runners.items():
        for _ in range(3):
            r.call()
        per_call_s = float(np.median(r.calls))
        for label, (kind, steps) in plan.samplers.items():
            real = partial(r.policy(kind, steps).predict_chunk, r.obs)
            if steps * per_call_s > plan.extrapolate_above_s:
                checks[(name, label)] = real
                cases.append(Case(name, label, partial(r.policy(kind, steps, NoOpDenoiser(r.backend)).predict_chunk,
                                                       r.obs)))
            else:
                cases.append(Case(name, label, real))
    return cases, checks


def _finish_chunks(backend: dict[str, Any]) -> None:
    """Extrapolated chunks get their p50; every chunk its non-denoiser part (p50 - steps x call p50), with the
    denoiser call of its own network (a shallow student's is its own)."""
    for row in backend["chunks"].values():
        call = backend["students"][str(row["depth"])]["denoiser_call"] if "depth" in row else backend["denoiser_call"]
        call_p50_ms = call["p50_ms"]
        if "without_denoiser" in row:
            row["extrapolated"] = {"calls": call["n"], "call_p50_ms": call_p50_ms,
                                   "chunks_without_denoiser": row["without_denoiser"]["n"]}
            row["p50_ms"] = extrapolated_ms(row["steps"], call_p50_ms, row["without_denoiser"]["p50_ms"])
            row["p99_ms"] = None  # a sum of p50s has no p99
            row["n"] = 0
        row["overhead_ms"] = row["p50_ms"] - row["steps"] * call_p50_ms


def _label_of(samplers: Mapping[str, tuple[str, int]], plan: tuple[str, int]) -> str | None:
    return next((label for label, ks in samplers.items() if tuple(ks) == plan), None)


def same_run_ratios(backends: Mapping[str, Any], samplers: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """Chunk p50 ratios of this run (batch 1): per backend, DDPM-100 and DPM-Solver++-5 over student-1
    (how many times faster the student is), the same over each shallow student-1 (``shallow_student_speedup``:
    backend -> its label -> ratios), and per sampler, torch eager over ONNX Runtime."""
    measured = {n: b for n, b in backends.items() if b.get("status") == "measured"}
    student, ddpm, dpm = (_label_of(samplers, p) for p in (STUDENT_1, DDPM_100, DPM_5))
    teachers = [label for label in (ddpm, dpm) if label is not None]
    out: dict[str, Any] = {"student_speedup": {}, "shallow_student_speedup": {}, "onnxruntime_over_torch": {}}
    for name, b in measured.items():
        chunks = b["chunks"]
        if student is not None:
            out["student_speedup"][name] = {other: chunks[other]["p50_ms"] / chunks[student]["p50_ms"]
                                            for other in teachers}
        shallow = [label for label, row in chunks.items()
                   if "depth" in row and (row["kind"], row["steps"]) == STUDENT_1]
        if shallow:
            out["shallow_student_speedup"][name] = {
                label: {other: chunks[other]["p50_ms"] / chunks[label]["p50_ms"] for other in teachers}
                for label in shallow}
    if "torch" in measured and "onnxruntime" in measured:
        eager, ort = measured["torch"]["chunks"], measured["onnxruntime"]["chunks"]
        out["onnxruntime_over_torch"] = {label: eager[label]["p50_ms"] / ort[label]["p50_ms"] for label in samplers}
    return out


def fastest_cpu_backend(backends: Mapping[str, Any]) -> str | None:
    """The measured CPU backend with the quickest denoiser call (p50)."""
    cpu = [n for n, b in backends.items() if b.get("status") == "measured" and b["device"] == "cpu"]
    return min(cpu, key=lambda n: backends[n]["denoiser_call"]["p50_ms"]) if cpu else None


# --- the table ---------------------------------------------------------------------------------------

#: ONNX Runtime over torch eager per chunk at batch 1, by policy config (the issue's target: rdt_small only)
ORT_TARGETS = {"rdt_small": 2.0}
#: student-1's speed-up over these samplers' chunks on the same backend
STUDENT_TARGETS = {DDPM_100: 50.0, DPM_5: 5.0}


def chunk_cell(row: Mapping[str, Any]) -> str:
    """``p50 / p99 (n=N)`` in ms, or an extrapolated p50 said to be one (with its check chunks)."""
    if "extrapolated" in row:
        full = row.get("full_chunks")
        check = f"; {full['n']} real chunk(s): {full['p50_ms']:,.0f}" if full else ""
        return f"~{row['p50_ms']:,.0f} (extrapolated from {row['extrapolated']['calls']} calls{check})"
    return f"{row['p50_ms']:,.1f} / {row['p99_ms']:,.1f} (n={row['n']})"


def _matrix_row(what: str, batch: int, backends: Mapping[str, Mapping[str, Any]],
                pick: Callable[[Mapping[str, Any]], str]) -> str:
    cells = [pick(b) if b.get("status") == "measured" else str(b["status"]).split(" (")[0] for b in backends.values()]
    return f"| {what} | {batch} | " + " | ".join(cells) + " |"


def _gflops_cell(b: Mapping[str, Any]) -> str:
    share = b["peak_share"]
    return f"{b['gflops']:.1f}" + (f", {100 * share:.0f}%" if share is not None else "")


def latency_tables(latency: Mapping[str, Mapping[str, Any]], parameters: Mapping[str, int]) -> str:
    """One markdown matrix per policy: a row per (sampler, batch), a column per backend."""
    out = []
    for model, m in latency.items():
        backends: Mapping[str, Mapping[str, Any]] = m["backends"]
        head = (f"**{model}** ({parameters[model] / 1e6:.1f}M params, Ta={m['horizon']}; {m['flops'] / 1e9:.3g} "
                "GFLOP per denoiser call at batch 1): chunk latency p50 / p99 (ms)")
        lines = [head, "", "| sampler | batch | " + " | ".join(backends) + " |",
                 "|---|---:|" + "---:|" * len(backends)]
        first = next((b for b in backends.values() if b.get("status") == "measured"), None)
        if first is not None:
            for label in first["chunks"]:
                lines.append(_matrix_row(label, 1, backends, partial(_pick, "chunks", label)))
            for key, row in first["batched"].items():
                lines.append(_matrix_row(row["label"], row["batch"], backends, partial(_pick, "batched", key)))
            lines.append(_matrix_row("one denoiser call", 1, backends, lambda b: chunk_cell(b["denoiser_call"])))
            for depth in first.get("students", {}):
                lines.append(_matrix_row(f"one denoiser call, student depth {depth}", 1, backends,
                                         partial(_student_call, depth)))
            lines.append(_matrix_row("denoiser GFLOP/s, share of the matmul peak", 1, backends, _gflops_cell))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _pick(group: str, key: str, backend: Mapping[str, Any]) -> str:
    return chunk_cell(backend[group][key])


def _student_call(depth: str, backend: Mapping[str, Any]) -> str:
    return chunk_cell(backend["students"][depth]["denoiser_call"])


def latency_rows(latency: Mapping[str, Mapping[str, Any]], threads: int) -> list[Row]:
    """The rows with targets and the FLOP accounting; the chunk times themselves are in
    :func:`latency_tables`."""
    rows = []
    for model, m in latency.items():
        peak = m["peak"]
        rows.append(Row(f"{model}: FLOPs per denoiser call, batch 1 (GFLOP; matmuls + attention, B x at batch B)",
                        f"{m['flops'] / 1e9:.3f}"))
        for depth, s in m.get("students", {}).items():
            rows.append(Row(f"{model}: FLOPs per denoiser call of a depth-{depth} student (of depth "
                            f"{m.get('depth', '?')}), batch 1 (GFLOP)", f"{s['flops'] / 1e9:.3f}"))
        for lib, gflops in m["peak_gflops"].items():
            rows.append(Row(f"{model}: this CPU's float32 {m['peak_size']}^2 matmul in {lib}, {threads} thread(s), "
                            f"{len(gflops)} products before and after the cases (GFLOP/s, best / median)",
                            f"{max(gflops):.1f} / {float(np.median(gflops)):.1f}"))
        for name, b in m["backends"].items():
            if b.get("status") != "measured":
                rows.append(Row(f"{model} {name}", str(b["status"])))
                continue
            call = b["denoiser_call"]
            share = f" = {100 * b['peak_share']:.0f}% of peak" if b["peak_share"] is not None else ""
            rows.append(Row(f"{model} {name}: denoiser call p50 / p99 (ms, batch 1, n={call['n']}); achieved GFLOP/s",
                            f"{call['p50_ms']:,.2f} / {call['p99_ms']:,.2f}; {b['gflops']:.1f}{share}"))
        fastest = fastest_cpu_backend(m["backends"])
        if fastest is not None:
            call_ms = m["backends"][fastest]["denoiser_call"]["p50_ms"]
            floor_ms = m["flops"] / (peak * 1e6)
            rows.append(Row(f"{model}: denoiser call p50 on the fastest CPU backend ({fastest}) vs its FLOP floor "
                            f"(FLOPs / the best matmul, {peak:.0f} GFLOP/s)", f"{call_ms:,.2f} ms vs {floor_ms:,.2f} ms "
                            f"(x{call_ms / floor_ms:.2f} the floor)"))
        labels = {(r["kind"], r["steps"]): lb for lb, r in _first_chunks(m).items() if "depth" not in r}
        teacher = f" (teacher, depth {m['depth']})" if "depth" in m else " (teacher)"
        for name, speedups in m["ratios"]["student_speedup"].items():
            rows.extend(_speedup_rows(f"{model} {name}", "student-1", speedups, labels, m["backends"][name], ""))
        for name, by_label in m["ratios"].get("shallow_student_speedup", {}).items():
            for label, speedups in by_label.items():
                rows.extend(_speedup_rows(f"{model} {name}", label, speedups, labels, m["backends"][name], teacher))
        ort_target = ORT_TARGETS.get(model)
        for label, ratio in m["ratios"]["onnxruntime_over_torch"].items():
            note = " (extrapolated)" if "extrapolated" in m["backends"]["torch"]["chunks"][label] else ""
            rows.append(Row(f"{model} {label}: ONNX Runtime faster than torch eager per chunk{note}, batch 1",
                            f"x{ratio:.2f}", f">= {ort_target:g}x" if ort_target else "",
                            check(ratio, ort_target) if ort_target else ""))
    return rows


def _speedup_rows(where: str, student: str, speedups: Mapping[str, float], labels: Mapping[tuple[str, int], str],
                  backend: Mapping[str, Any], teacher: str) -> list[Row]:
    """``student``'s chunk against DDPM-100 and DPM-Solver++-5 on one backend, with the issue's targets."""
    rows = []
    for plan, target in STUDENT_TARGETS.items():
        other = labels.get(plan)
        if other is None or other not in speedups:
            continue
        note = " (extrapolated)" if "extrapolated" in backend["chunks"][other] else ""
        rows.append(Row(f"{where}: {student} chunk faster than {other}{teacher}{note}, same backend and run",
                        f"x{speedups[other]:.1f}", f">= {target:g}x", check(speedups[other], target)))
    return rows


def _first_chunks(m: Mapping[str, Any]) -> Mapping[str, Any]:
    first = next((b for b in m["backends"].values() if b.get("status") == "measured"), None)
    return first["chunks"] if first else {}

