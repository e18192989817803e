"""robot-policy bench NAME [key=value ...]: measure speed, write bench_out/bench_NAME.json and BENCHMARKS.md.

  data    sampler windows/s (To=2, Ta=64, 128-d, 1M-step store) from RAM and from disk;
          streaming-writer steps/s with two 224x224 cameras
  sim     control steps/s per task, state and camera observations
  infer   chunk latency p50/p95 per sampler and model size; training samples/s

Options are the fields of each benchmark's config, e.g. `robot-policy bench data seconds=3`.
`robot-policy bench NAME --help` lists them.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Callable
from typing import Any

from robot_policy.cli.common import ConfigError, fail, parse_overrides
from robot_policy.eval.bench_report import Row, check, write_results

SUMMARY = "benchmarks (data, sim, infer): JSON + BENCHMARKS.md"


def _data(overrides: list[str]) -> tuple[str, list[Row], dict[str, Any], str]:
    from robot_policy.data.bench import DataBenchConfig, run_data_bench

    cfg = parse_overrides(DataBenchConfig, overrides, "bench data")
    r = run_data_bench(cfg)
    rows = [
        Row("sampler from RAM, one core (windows/s, batch 256)", f"{r['ram_windows_per_s']:,.0f}", ">= 50,000",
            check(r["ram_windows_per_s"], 50_000)),
        Row("sampler from RAM, one window per call (windows/s)", f"{r['ram_windows_per_s_batch1']:,.0f}"),
        Row("sampler from disk (windows/s, batch 256, no chunk cache)", f"{r['disk_windows_per_s']:,.0f}", ">= 2,000",
            check(r["disk_windows_per_s"], 2_000)),
        Row("sampler from disk, tensorstore limited to 1 thread (windows/s)", f"{r['disk_windows_per_s_1thread']:,.0f}"),
        Row(f"streaming writer, {cfg.cameras} x {cfg.image_size}x{cfg.image_size} cameras (steps/s)",
            f"{r['writer_steps_per_s']:,.0f}", ">= 200", check(r["writer_steps_per_s"], 200)),
        Row("stored bytes per camera frame", f"{r['writer_bytes_per_frame']:,.0f}"),
        Row("building the store (s)", f"{r['store_build_s']:.1f}"),
    ]
    notes = (f"Store: {r['store_steps']:,} steps in {r['store_episodes']:,} episodes of synthetic smooth "
             f"trajectories (`panda_bimanual_joint` slots). Windows: To={cfg.obs_horizon} states + "
             f"Ta={cfg.action_horizon} actions, 128-d float32, drawn uniformly at random; disk reads decode "
             "every chunk (tensorstore cache off; the OS page cache is warm).")
    return "Data: sampler and streaming writer", rows, r, notes


BENCHES: dict[str, tuple[Callable[[list[str]], tuple[str, list[Row], dict[str, Any], str]], str]] = {
    "data": (_data, "robot_policy.data.bench:DataBenchConfig"),
}


def _config_help(target: str) -> str:
    import importlib

    module, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    lines = [f"  {f.name} = {f.default!r}" for f in dataclasses.fields(cls)]
    return "options:\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, overrides = argv[0], argv[1:]
    if name not in BENCHES:
        return fail(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHES)}")
    run, config_target = BENCHES[name]
    if "--help" in overrides or "-h" in overrides:
        print(_config_help(config_target))
        return 0
    try:
        title, rows, results, notes = run(overrides)
    except ConfigError as e:
        return fail(str(e))
    command = "robot-policy bench " + " ".join(shlex.quote(a) for a in argv)
    path = write_results(name, title, rows, results, command, notes)
    for row in rows:
        print(f"{row.metric:<70} {row.value:>12}  {row.target} {row.status}")
    print(f"wrote {path} and BENCHMARKS.md", file=sys.stderr)
    return 0
