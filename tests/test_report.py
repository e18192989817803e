"""Run reports and the BENCHMARKS.md writer."""

from __future__ import annotations

import json
from pathlib import Path

from robot_policy.bench.report import Row, write_results
from robot_policy.eval.report import plot_loss_curve, success_table, write_run_report


def _eval(task: str, successes: int, n: int = 10) -> dict:
    return {"task": task, "policy": "runs/x/checkpoints/latest", "episodes": n, "seed": 100, "success_rate": successes / n,
            "ci95_low": 0.5, "ci95_high": 0.9, "mean_episode_length": 101.5,
            "per_episode": [{"seed": 100 + i, "success": i < successes, "video": None} for i in range(n)]}


def test_run_report_has_table_curve_and_timings(tmp_path: Path) -> None:
    run = tmp_path / "train"
    run.mkdir()
    lines = [{"step": s, "loss": 1.0 / s} for s in range(10, 200, 10)] + [{"step": 100, "val_loss": 0.02}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    report = write_run_report(tmp_path / "report", "Demo", [_eval("lift", 7)], run, timings={"train": 12.0})
    text = report.read_text()
    assert "| lift | latest | 10 | 100-109 | 70.0% | 50.0%-90.0% | 101.5 |" in text
    assert "![loss curve](loss_curve.png)" in text and "| train | 12 |" in text
    png = (tmp_path / "report" / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_success_table_lists_every_eval() -> None:
    table = success_table([_eval("a", 1), _eval("b", 9)])
    assert table.count("\n") == 3 and "| a |" in table and "| b |" in table


def test_loss_curve_needs_a_loss(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="no training loss"):
        plot_loss_curve([{"step": 1, "val_loss": 0.1}], tmp_path / "x.png")


def test_benchmarks_md_sections_are_replaced_not_duplicated(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    for value in ("1", "2"):
        write_results("demo", "Demo bench", [Row("metric", value, ">= 1", "pass")], {"v": value}, "robot-policy bench demo",
                      out_dir=tmp_path / "out", md_path=md, device="test machine")
    write_results("other", "Other", [Row("m", "3")], {}, "cmd", out_dir=tmp_path / "out", md_path=md, device="x")
    text = md.read_text()
    assert text.count("<!-- bench:demo -->") == 1 and "| metric | 2 | >= 1 | pass |" in text
    assert "| metric | 1 |" not in text and "<!-- bench:other -->" in text
    assert json.loads((tmp_path / "out" / "bench_demo.json").read_text())["results"] == {"v": "2"}
