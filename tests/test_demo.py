"""The main job end to end at toy size: collect -> train -> evaluate -> report, and its resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robot_policy.cli.main import main as cli_main
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.envs.registry import load_task_config
from robot_policy.pipelines.collect import CollectConfig, collect
from robot_policy.pipelines.demo import collect_stage


def test_demo_pipeline_end_to_end_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [f"out_root={tmp_path}", "name=toy", "policy=rdt_tiny", "episodes=3", "train_steps=10",
            "eval_episodes=2", "workers=1", "videos=1", "train_overrides=[batch_size=8,val_every=5,ckpt_every=5]"]
    assert cli_main(["demo", *args]) == 0
    out = capsys.readouterr().out
    assert "| pybullet_bimanual_lift |" in out and "report:" in out
    root = tmp_path / "toy"
    report = (root / "report.md").read_text()
    assert "## Success on held-out seeds" in report and "(videos/episode_1000000.mp4)" in report
    assert (root / "loss_curve.png").stat().st_size > 5000
    assert (root / "videos" / "episode_1000000.mp4").exists()
    ev = json.loads((root / "eval" / "eval.json").read_text())
    assert ev["episodes"] == 2 and ev["seed"] == 1_000_000
    # A re-run reuses every finished stage (same checkpoint, same evaluation).
    before = (root / "eval" / "eval.json").stat().st_mtime
    assert cli_main(["demo", *args]) == 0
    assert (root / "eval" / "eval.json").stat().st_mtime == before
    # Other inputs into the same run directory are refused rather than mixed with the old stages.
    assert cli_main(["demo", *[a for a in args if not a.startswith("episodes=")], "episodes=4"]) == 2
    assert "was made with other inputs (episodes: 3 -> 4)" in capsys.readouterr().err


def test_an_interrupted_collection_continues_and_keeps_its_episodes(tmp_path: Path) -> None:
    task = load_task_config("pybullet_bimanual_lift")
    store_path = tmp_path / "demos.zarr"
    collect(task, CollectConfig(episodes=1, out=str(store_path)), progress=False)  # stopped after one of two
    before = EpisodeStore.open(store_path).get_episode(0)
    summary = collect_stage(task, store_path, episodes=2, fresh=False)
    assert summary is not None and summary["existing_episodes"] == 1 and summary["episodes_written"] == 1
    store = EpisodeStore.open(store_path)
    assert store.episode_meta()["seed"].tolist() == [0, 1]  # continued after the recorded seed
    after = store.get_episode(0)
    assert before.keys() == after.keys()
    for key in before:  # the recorded episode is untouched, bit for bit
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]), err_msg=key)
    assert collect_stage(task, store_path, episodes=2, fresh=False) is None  # complete: nothing to do
    # what does not open as a store is not replaced unless asked
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a store")
    with pytest.raises(StoreError, match=r"junk.zarr cannot be continued .*pass fresh=true"):
        collect_stage(task, junk, episodes=1, fresh=False)
    assert (junk / "notes.txt").exists()
