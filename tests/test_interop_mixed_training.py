"""A policy trains on a mixture of an imported store and a collected one of another embodiment, with the
per-slot statistics of the episode store: a slot's statistics come only from the episodes whose mask uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robot_policy.data.interop.lerobot import import_lerobot
from robot_policy.data.normalizer import compute_stats, stats_from_json
from robot_policy.data.store import EpisodeStore
from robot_policy.spaces.unified import slot
from tests.interop_data import collect_store
from tests.test_interop_lerobot import _aloha_dataset


@pytest.mark.slow
def test_policy_trains_on_an_imported_and_a_collected_store(tmp_path: Path, one_torch_thread: None) -> None:
    from robot_policy.cli.main import main

    collected = collect_store(tmp_path / "lift.zarr", cameras=())  # panda_bimanual_joint, 20 Hz
    _aloha_dataset(tmp_path / "aloha_lerobot")
    import_lerobot(tmp_path / "aloha_lerobot", tmp_path / "aloha.zarr", "lerobot_aloha_sim", progress=False)
    imported = tmp_path / "aloha.zarr"  # aloha_bimanual, 50 Hz, joint velocities masked off
    run = tmp_path / "run"
    assert main(["train", f"dataset.paths=[{collected},{imported}]", f"out={run}", "policy=rdt_tiny", "steps=2",
                 "batch_size=4", "val_fraction=0", "torch_threads=1", "progress=false", "cameras=[]"]) == 0
    config = json.loads((run / "checkpoints" / "latest" / "config.json").read_text())
    assert set(config["embodiments"]) == {"panda_bimanual_joint", "aloha_bimanual"}
    assert config["dataset_episodes"] == [2, 2]
    stats = stats_from_json(config["normalizer"]["stats"])
    panda = compute_stats(EpisodeStore.open(collected).load(["state", "action"]), ["state", "action"])
    aloha = compute_stats(EpisodeStore.open(imported).load(["state", "action"]), ["state", "action"])
    s, p, a = stats["state"], panda["state"], aloha["state"]
    # slots only the collected Pandas use: their joint 7 (ALOHA arms have 6) and joint velocities (masked off
    # in the import): statistics of the Panda episodes alone, not pulled toward the ALOHA rows' zeros
    for i in [slot("right_arm_joint_pos").start + 6, *range(slot("right_arm_joint_vel").start,
                                                            slot("right_arm_joint_vel").start + 7)]:
        assert s["count"][i] == p["count"][i] == 204 and a["count"][i] == 0
        np.testing.assert_allclose([s["mean"][i], s["std"][i]], [p["mean"][i], p["std"][i]], rtol=1e-6)
    # slots both use: all rows of both stores
    i = slot("left_arm_joint_pos").start
    assert s["count"][i] == p["count"][i] + a["count"][i] == 204 + 60
    pooled = (p["mean"][i] * 204 + a["mean"][i] * 60) / 264
    np.testing.assert_allclose(s["mean"][i], pooled, rtol=1e-6)
    # the ALOHA gripper joint, mapped from the normalised opening, lands in the same [0, 1] opening slot
    g = slot("left_gripper_open").start
    assert 0.0 <= s["min"][g] and s["max"][g] <= 1.0 + 1e-6
    assert s["mask"][slot("base_vel").start] == 0  # no store uses it
