"""``robot-policy bench runtime`` at toy sizes: a 2-step rdt_tiny checkpoint, a second of real-time control
per model (robot and policy in processes of their own; once more in the loop's process), one episode per
(scheme, delay) on two delays; the JSON holds every part's results, the table its rows, the PNG is written.
The ROS 2 part runs on its own (``ros``: skips without rclpy). SCHED_FIFO is off (``rt_priority=null``: it
needs a capability; tests/test_runtime_loop.py checks it is applied)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_checkpoint import train_tiny_checkpoint

from robot_policy.bench import runner as bench
from robot_policy.bench.report import write_results
from robot_policy.pipelines.runtime_sim import SCHEMES

TASK = "pybullet_bimanual_lift"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rdt_tiny`` trained 2 steps on one expert episode (as tests/test_ros_sil.py's)."""
    root = tmp_path_factory.mktemp("runtime_ckpt")
    return train_tiny_checkpoint(root)


def _run(overrides: list[str], tmp_path: Path) -> tuple[list, dict, Path]:
    title, rows, results, notes = bench._runtime(overrides)
    md = tmp_path / "BENCHMARKS.md"
    path = write_results("runtime", title, rows, results, "robot-policy bench runtime ...", notes,
                         out_dir=tmp_path, md_path=md)
    saved = json.loads(path.read_text())
    assert saved["bench"] == "runtime" and "<!-- bench:runtime -->" in md.read_text()
    return rows, saved["results"], md


def test_bench_runtime_loop_and_delay_sweep_tiny(checkpoint: Path, tmp_path: Path) -> None:
    figure = tmp_path / "sweep.png"
    rows, r, md = _run([f"checkpoint={checkpoint}", "parts=[loop,delay]", "loop_seconds=1", "large_model=rdt_tiny",
                        "large_loop_seconds=1", "episodes=1", "delays_ms=[0,300]", "max_steps=30", "rt_priority=null",
                        f"figure={figure}", f"workdir={tmp_path / 'work'}", "progress=false"], tmp_path)
    # loop: timing of every tick that ran, for the checkpoint and the large (here: tiny, untrained) model
    for key in ("checkpoint", "large"):
        m = r["loop"][key]
        assert m["loop"]["ticks"] > 0 and m["loop"]["period_error"]["p50_ms"] >= 0
        assert 0 <= m["periods_met"] <= 1 and m["chunks"] >= 1
        assert m["loop"]["ticks"] == m["tick_compute"]["n"]
        assert sum(e["steps"] for e in m["episodes"]) > 0 and m["controller"]["commands"] > 0  # it moved the robot
        late = m["late_ticks"]
        assert late["after_long_tick"] + late["late_wakeup"] == late["late"] <= m["loop"]["ticks"]
    assert r["loop"]["large"]["untrained"] and r["loop"]["large"]["model"] == "rdt_tiny"
    # delay: every scheme at both delays, one seed each, as success with a Wilson interval
    assert set(r["delay"]) == set(SCHEMES)
    for cells in r["delay"].values():
        assert set(cells) == {"0", "300"}
        for cell in cells.values():
            assert cell["episodes"] == 1 and 0 <= cell["ci95_low"] <= cell["success_rate"] <= cell["ci95_high"] <= 1
            assert cell["per_episode"][0]["seed"] == 1_000_000
    metrics = [row.metric for row in rows]
    assert sum("injected delay: success" in m for m in metrics) == len(SCHEMES) * 2
    assert any(m.startswith("rtc at 300 ms within 10 points") for m in metrics)
    assert any("loop period error" in m for m in metrics) and any("observation to the first command" in m
                                                                   for m in metrics)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(figure) in md.read_text()


def test_bench_runtime_loop_in_the_loops_process(checkpoint: Path, tmp_path: Path) -> None:
    """The env stepped in the loop's thread and the policy on the runner's thread: the placements the
    process ones are measured against."""
    rows, r, md = _run([f"checkpoint={checkpoint}", "parts=[loop]", "loop_seconds=1", "large_model=",
                        "robot=loop", "inference=thread", "gc_control=false", "rt_priority=null",
                        f"workdir={tmp_path / 'work'}", "progress=false"], tmp_path)
    m = r["loop"]["checkpoint"]
    assert "large" not in r["loop"] and m["chunks"] >= 1 and m["gc_collections"] == 0
    assert sum(e["steps"] for e in m["episodes"]) > 0 and m["controller"]["commands"] > 0
    assert any("overruns (tick + env step > period)" in row.metric for row in rows)
    assert "in the loop's thread" in md.read_text() and "on the runner's thread" in md.read_text()


@pytest.mark.ros
def test_bench_runtime_ros_part_tiny(checkpoint: Path, tmp_path: Path) -> None:
    domain = 90 + os.getpid() % 10  # away from tests/test_ros_sil.py's domains
    rows, r, _ = _run([f"checkpoint={checkpoint}", "parts=[ros]", "ros_episodes=1", "ros_max_steps=20",
                       f"ros_domain_id={domain}", f"workdir={tmp_path / 'work'}", "progress=false"], tmp_path)
    assert r["ros"]["episodes"] == 1 and r["ros"]["errored"] == 0, r["ros"]
    assert r["ros"]["loop_timing"]["loop_hz"] == 200.0
    assert r["ros"]["loop_timing"]["loop_period_error"]["p50_ms"] >= 0
    assert any(row.metric.startswith("ROS 2 policy_node") for row in rows)
