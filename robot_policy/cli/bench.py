"""robot-policy bench NAME [key=value ...]: measure speed, write bench_out/bench_NAME.json and BENCHMARKS.md.

The benchmarks and what each measures are listed in :mod:`robot_policy.bench.runner` (printed by ``--help``).
"""

from __future__ import annotations

import shlex
import sys

from robot_policy.cli.common import ConfigError, fail, verb_help

SUMMARY = "benchmarks (data, sim, infer, success, runtime): JSON + BENCHMARKS.md"


def main(argv: list[str]) -> int:
    from robot_policy.bench.runner import BENCHES, run_bench

    if not argv or argv[0] in ("-h", "--help"):
        from robot_policy.bench import runner

        print("usage: robot-policy bench NAME [key=value ...]\n\n" + (runner.__doc__ or "").split("\n\n", 1)[1])
        return 0
    name, overrides = argv[0], argv[1:]
    if name not in BENCHES:
        return fail(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHES)}")
    if "--help" in overrides or "-h" in overrides:
        import importlib

        module, cls = BENCHES[name][1].split(":")
        print(verb_help(f"robot-policy bench {name} [key=value ...]", getattr(importlib.import_module(module), cls)))
        return 0
    command = "robot-policy bench " + " ".join(shlex.quote(a) for a in argv)
    try:
        path, rows = run_bench(name, overrides, command)
    except ConfigError as e:
        return fail(str(e))
    for row in rows:
        print(f"{row.metric:<70} {row.value:>12}  {row.target} {row.status}")
    print(f"wrote {path} and BENCHMARKS.md", file=sys.stderr)
    return 0
