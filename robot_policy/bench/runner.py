"""The one benchmark runner: ``run_bench(name, overrides)`` measures, writes bench_out/bench_NAME.json and
the benchmark's section of BENCHMARKS.md.

  data    sampler windows/s (To=2, Ta=64, 128-d, 1M-step store) from RAM and from disk;
          streaming-writer steps/s with two 224x224 cameras, fsync on and off
  sim     control steps/s per task, state and camera observations
  infer   chunk latency p50/p99 per backend, sampler, model size and batch; FLOPs per denoiser call
          against this CPU's matmul peak; same-run ratios; training samples/s
  success collate evaluations already run (evals=[dir,...]) into a success table with how each
          policy was trained: demos, steps, training time, commands
  runtime control-loop period error and periods met at 200 Hz in process and over ROS 2 while a policy
          infers, observation-to-command latency, success against injected inference delay per execution
          scheme (checkpoint=DIR, a trained one)

Options are the fields of each benchmark's config, e.g. `robot-policy bench data seconds=3`.
`robot-policy bench NAME --help` lists them. `section=LABEL` writes a variant's results (another checkpoint,
one part) to bench_NAME_LABEL.json and a section of its own instead of replacing the main one.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robot_policy.bench.report import Row, check, write_results
from robot_policy.configuration import ConfigError, parse_overrides


def _data(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    from robot_policy.bench.data import DataBenchConfig, run_data_bench

    cfg = parse_overrides(DataBenchConfig, overrides, "bench data")
    r = run_data_bench(cfg)
    rows = [
        Row("sampler from RAM, one core (windows/s, batch 256)", f"{r['ram_windows_per_s']:,.0f}", ">= 50,000",
            check(r["ram_windows_per_s"], 50_000)),
        Row("sampler from RAM, one window per call (windows/s)", f"{r['ram_windows_per_s_batch1']:,.0f}"),
        Row("sampler from disk (windows/s, batch 256, no chunk cache)", f"{r['disk_windows_per_s']:,.0f}", ">= 2,000",
            check(r["disk_windows_per_s"], 2_000)),
        Row("sampler from disk, tensorstore limited to 1 thread (windows/s)", f"{r['disk_windows_per_s_1thread']:,.0f}"),
        Row(f"streaming writer, {cfg.cameras} x {cfg.image_size}x{cfg.image_size} cameras, fsync on (steps/s)",
            f"{r['writer_steps_per_s']:,.0f}", ">= 200", check(r["writer_steps_per_s"], 200)),
        Row("streaming writer, same, fsync off (steps/s)", f"{r['writer_steps_per_s_no_fsync']:,.0f}"),
        Row("stored bytes per camera frame", f"{r['writer_bytes_per_frame']:,.0f}"),
        Row("building the store (s)", f"{r['store_build_s']:.1f}"),
    ]
    notes = (f"Store: {r['store_steps']:,} steps in {r['store_episodes']:,} episodes of synthetic smooth "
             f"trajectories (`panda_bimanual_joint` slots). Windows: To={cfg.obs_horizon} states + "
             f"Ta={cfg.action_horizon} actions, 128-d float32, drawn uniformly at random; disk reads decode "
             "every chunk (tensorstore cache off; the OS page cache is warm).")
    return "Data: sampler and streaming writer", rows, r, notes


def _infer(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    from robot_policy.bench.infer import InferBenchConfig, infer_notes, infer_rows, run_infer_bench

    cfg = parse_overrides(InferBenchConfig, overrides, "bench infer")
    r = run_infer_bench(cfg, progress=lambda msg: print(f"bench infer: {msg}", file=sys.stderr))
    return ("Inference: chunk latency per backend and sampler, FLOPs against the CPU's peak; training samples/s",
            infer_rows(r), r, infer_notes(r, cfg))


def _sim(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    import os

    from robot_policy.bench.sim import SimBenchConfig, run_sim_bench

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = parse_overrides(SimBenchConfig, overrides, "bench sim")
    r = run_sim_bench(cfg)
    rows = []
    collect_limits = {"pybullet_bimanual_lift": 120.0, "robosuite_two_arm_lift": 600.0}
    for task, v in r.items():
        if "state_steps_per_s" in v:
            target = (">= 500", check(v["state_steps_per_s"], 500)) if task == "pybullet_bimanual_lift" else ("", "")
            rows.append(Row(f"{task}, state observations (control steps/s)", f"{v['state_steps_per_s']:,.0f}", *target))
            rows.append(Row(f"{task}, + camera {v['camera']} {cfg.image_size}x{cfg.image_size} (control steps/s)",
                            f"{v['camera_steps_per_s']:,.1f}"))
        if "collect" in v:
            c, limit = v["collect"], collect_limits.get(task)
            rows.append(Row(f"{task}: collect {c['episodes']} scripted episodes ({c['steps']:,} steps) into a store (s)",
                            f"{c['seconds']:,.1f}", f"<= {limit:.0f}" if limit else "",
                            check(c["seconds"], limit, higher_is_better=False) if limit else ""))
    notes = ("One process, one core; resets included; actions hold the arms with small noise. pybullet renders "
             "with TinyRenderer (CPU), robosuite/MuJoCo with EGL (Mesa llvmpipe on these machines). Collection "
             "times are `robot-policy collect task=<task> episodes=N` (streaming writer, state observations, "
             "sim_state recorded), start to end, including env construction.")
    return "Simulation: control steps per second", rows, r, notes


def _runtime(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    import os

    from robot_policy.bench.runtime import RuntimeBenchConfig, run_runtime_bench, runtime_notes, runtime_rows

    # one thread per process on shared cores; the ROS nodes inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = parse_overrides(RuntimeBenchConfig, overrides, "bench runtime")
    r = run_runtime_bench(cfg)
    return ("Runtime: control loop timing, observation to command, success against inference delay",
            runtime_rows(r, cfg), r, runtime_notes(r, cfg))


@dataclasses.dataclass
class SuccessBenchConfig:
    """Options of ``robot-policy bench success``: collate evaluations already run (nothing is re-run)."""

    #: eval output directories (each holding eval.json)
    evals: list[str] = dataclasses.field(default_factory=list)
    #: success targets by task name (fraction), shown next to single-task rdt_small results
    targets: dict[str, float] = dataclasses.field(default_factory=lambda: {"pybullet_bimanual_lift": 0.90,
                                                                           "robosuite_two_arm_lift": 0.80})
    #: success target of the scripted experts
    scripted_target: float = 0.95
    #: context to print with the table (how and where the runs were made)
    notes: str = ""


def _success(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    from robot_policy.eval.report import collate_success

    cfg = parse_overrides(SuccessBenchConfig, overrides, "bench success")
    if not cfg.evals:
        raise ConfigError("evals: give the eval directories, e.g. evals=[runs/a/eval,runs/b/eval]")
    rows, notes, results = [], [], {}
    for rec in collate_success(cfg.evals):
        ev, tr = rec["eval"], rec["train"]
        if tr is None:
            label = f"{ev['task']}: {ev['policy']} expert"
            notes.append(f"- {label}: `{ev.get('command') or '(eval command not recorded)'}`")
        else:
            policy = tr["policy"]
            kind = "multi-task" if len(tr["datasets"]) > 1 else "single-task"
            obs = "images" if policy["obs_encoder"]["cameras"] else "state"
            demos = "+".join(str(n) for n in tr.get("dataset_episodes", [])) or "?"
            minutes = f", {rec['train_seconds'] / 60:.0f} min training" if rec["train_seconds"] else ""
            label = (f"{ev['task']}: {kind} RDT (width {policy['hidden_size']}, depth {policy['depth']}, {obs} "
                     f"obs), {demos} demos, {rec['step'] or tr['train']['steps']} steps{minutes}")
            notes.append(f"- {label}: `{tr.get('command') or '(train command not recorded)'}`, then "
                         f"`{ev.get('command') or '(eval command not recorded)'}`")
        value = (f"{100 * ev['success_rate']:.1f}% [{100 * ev['ci95_low']:.1f}, {100 * ev['ci95_high']:.1f}] "
                 f"of {ev['episodes']} (seeds {ev['seed']}-{ev['seed'] + ev['episodes'] - 1})")
        target: float | None
        if tr is None and ev["policy"] == "scripted":
            target = cfg.scripted_target
        elif tr is not None and len(tr["datasets"]) == 1 and not tr["policy"]["obs_encoder"]["cameras"]:
            target = cfg.targets.get(ev["task"])
        else:
            target = None
        rows.append(Row(label, value, f">= {100 * target:.0f}%" if target else "",
                        check(ev["success_rate"], target) if target else ""))
        results[label] = {k: ev[k] for k in ("task", "episodes", "seed", "success_rate", "ci95_low", "ci95_high")}
    note = ("Success on held-out seeds (never used for collection, training or tuning), 95% Wilson intervals. "
            + (cfg.notes.strip() + " " if cfg.notes else "")
            + "How each policy was trained and evaluated:\n" + "\n".join(notes))
    return "Policy success in simulation", rows, results, note


BENCHES: dict[str, tuple[Callable[[list[str]], tuple[str, list[Row], dict[str, Any], str]], str]] = {
    "data": (_data, "robot_policy.bench.data:DataBenchConfig"),
    "sim": (_sim, "robot_policy.bench.sim:SimBenchConfig"),
    "success": (_success, "robot_policy.bench.runner:SuccessBenchConfig"),
    "infer": (_infer, "robot_policy.bench.infer:InferBenchConfig"),
    "runtime": (_runtime, "robot_policy.bench.runtime:RuntimeBenchConfig"),
}


def split_section(name: str, overrides: list[str]) -> tuple[str, str | None, list[str]]:
    """Take ``section=LABEL`` out of a benchmark's overrides: the run then writes ``bench_<name>_<LABEL>.json``
    and a BENCHMARKS.md section of its own, so a variant (another checkpoint, one part) does not replace the
    benchmark's main table. Returns (output name, label or None, the other overrides)."""
    labels = [o.split("=", 1)[1] for o in overrides if o.startswith("section=")]
    rest = [o for o in overrides if not o.startswith("section=")]
    if not labels:
        return name, None, rest
    label = labels[-1]
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", label):
        raise ConfigError(f"section={label!r}: use lower-case letters, digits and underscores (it names a file)")
    return f"{name}_{label}", label, rest


def run_bench(name: str, overrides: list[str], command: str) -> tuple[Path, list[Row]]:
    """Run benchmark ``name`` with ``key=value`` overrides; write its JSON and BENCHMARKS.md section
    (``section=LABEL``: a section of its own, see :func:`split_section`)."""
    if name not in BENCHES:
        raise ConfigError(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHES)}")
    run, _ = BENCHES[name]
    out_name, label, overrides = split_section(name, overrides)
    title, rows, results, notes = run(overrides)
    if label is not None:
        title = f"{title} ({label})"
    return write_results(out_name, title, rows, results, command, notes), rows

