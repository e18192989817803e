"""Write benchmark results: a JSON file per run and that benchmark's section of BENCHMARKS.md.

Each ``robot-policy bench <name>`` run replaces the section between ``<!-- bench:<name> -->`` markers, so
the file always shows the latest measurement of every benchmark with the command that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_policy.paths import REPO_ROOT

BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
_HEADER = """# Benchmarks

Every number here was measured by a `robot-policy bench ...` command (or the command named in its
section) on the machine named there; each run rewrites its own section and writes the raw JSON under
`bench_out/`. Absolute times on shared machines are noisy: compare ratios measured in one run.
"""


@dataclass
class Row:
    """One line of a benchmark table: a metric, its measured value, and the target it is held to."""

    metric: str
    value: str
    target: str = ""
    status: str = ""  # "pass", "FAIL" or "" when there is no target


def machine_description() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release().split('-')[0]}, Python {platform.python_version()}"


def check(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "pass" if ok else "FAIL"


def write_results(name: str, title: str, rows: list[Row], results: dict[str, Any], command: str,
                  notes: str = "", out_dir: Path = REPO_ROOT / "bench_out", md_path: Path = BENCHMARKS_MD,
                  device: str | None = None) -> Path:
    """Save ``results`` as ``bench_out/bench_<name>.json`` and rewrite the section in BENCHMARKS.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = device or machine_description()
    json_path = out_dir / f"bench_{name}.json"
    json_path.write_text(json.dumps({"bench": name, "command": command, "date": stamp, "machine": machine,
                                     "results": results}, indent=2, default=float))
    lines = [f"<!-- bench:{name} -->", f"## {title}", "",
             f"Command: `{command}`  ", f"Measured: {stamp} on {machine}", ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += ["| metric | value | target | status |", "|---|---:|---|---|"]
    lines += [f"| {r.metric} | {r.value} | {r.target} | {r.status} |" for r in rows]
    lines += ["", f"<!-- /bench:{name} -->"]
    section = "\n".join(lines)
    text = md_path.read_text() if md_path.exists() else _HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    md_path.write_text(text)
    return json_path
