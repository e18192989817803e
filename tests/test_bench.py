"""Smoke tests of the benchmark verbs at toy sizes (the real runs are in BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_policy.bench import runner as bench
from robot_policy.cli.common import ConfigError


def _numbers(rows: list) -> list[float]:
    return [float(r.value.replace(",", "").split()[0].rstrip("%")) for r in rows]


def test_bench_data_small(tmp_path: Path) -> None:
    _, rows, results, _ = bench._data([f"workdir={tmp_path}", "n_steps=3000", "episode_length=300",
                                           "seconds=0.2", "writer_steps=40", "writer_episode_length=20",
                                           "image_size=32"])
    assert results["store_steps"] == 3000
    assert all(v > 0 for v in _numbers(rows))
    assert rows[0].status in ("pass", "FAIL")


def test_bench_sim_small(tmp_path: Path) -> None:
    _, rows, results, _ = bench._sim(["tasks=[pybullet_bimanual_lift]", "seconds=0.3", "image_size=32",
                                      "collect_tasks=[pybullet_bimanual_lift]", "collect_episodes=1",
                                      f"workdir={tmp_path}"])
    assert results["pybullet_bimanual_lift"]["state_steps_per_s"] > 0
    assert len(rows) == 3 and results["pybullet_bimanual_lift"]["collect"]["episodes"] == 1


def test_bench_infer_small() -> None:
    # the torch backend only: torch.compile and the export for ONNX Runtime are test_bench_infer.py's (slow)
    _, rows, results, _ = bench._infer(["models=[rdt_tiny]", "samplers=[ddim:2]", "repeats=2", "call_repeats=2",
                                        "train_models=[rdt_tiny]", "train_steps=1", "train_batch_size=4",
                                        "torch_threads=1", "backends=[torch]", "batches=[]"])
    assert rows and results


def test_bench_rejects_unknown_options() -> None:
    with pytest.raises(ConfigError, match="seconds_per_task"):
        bench._sim(["seconds_per_task=3"])
    from robot_policy.cli import bench as bench_cli

    assert bench_cli.main(["nonsense"]) == 2


def test_a_bench_section_label_gets_its_own_output_name() -> None:
    from robot_policy.bench.runner import split_section

    assert split_section("runtime", ["parts=[delay]"]) == ("runtime", None, ["parts=[delay]"])
    assert split_section("runtime", ["section=rtc_h32", "parts=[delay]"]) == ("runtime_rtc_h32", "rtc_h32",
                                                                               ["parts=[delay]"])
    with pytest.raises(ConfigError, match="section="):
        split_section("runtime", ["section=../x"])


def test_the_delay_sweep_plot_takes_rates_of_0_and_100_percent(tmp_path: Path) -> None:
    from robot_policy.bench.runtime import plot_delay_sweep
    from robot_policy.eval.stats import wilson_interval

    def cell(k: int, n: int) -> dict[str, float]:
        low, high = wilson_interval(k, n)
        return {"success_rate": k / n, "ci95_low": low, "ci95_high": high}

    sweep = {"rtc": {"0.0": cell(30, 30), "300.0": cell(29, 30)}, "sync": {"0.0": cell(3, 30), "300.0": cell(0, 30)}}
    out = plot_delay_sweep(sweep, tmp_path / "sweep.png", "test")
    assert Path(out).stat().st_size > 1000
