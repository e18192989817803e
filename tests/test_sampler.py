"""Sequence sampler windows, RAM vs disk reads, the torch DataLoader and the normalizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store import make_episode, new_store

from robot_policy.data.disk_reader import TensorstoreReader
from robot_policy.data.normalizer import Normalizer, StatsError, compute_stats, merge_stats, stats_from_json
from robot_policy.data.sampler import SequenceSampler, gather_windows, split_episodes
from robot_policy.data.store import EpisodeData, EpisodeStore
from robot_policy.data.torch_dataset import WindowBatchDataset, make_dataloader
from robot_policy.spaces import load_embodiment


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=8), obs_h=st.integers(1, 4),
       act_h=st.integers(1, 40), data=st.data())
def test_windows_never_cross_an_episode_boundary(lengths: list[int], obs_h: int, act_h: int, data) -> None:
    ends = np.cumsum(lengths)
    episodes = np.array(sorted(data.draw(st.sets(st.integers(0, len(lengths) - 1), min_size=1))))
    sampler = SequenceSampler(ends, obs_h, act_h, episodes=episodes)
    assert len(sampler) == sum(lengths[e] for e in episodes)
    rows = sampler.rows(np.arange(len(sampler)))
    starts = np.concatenate([[0], ends[:-1]])
    lo, hi = starts[rows.episode][:, None], ends[rows.episode][:, None]
    for r in (rows.obs, rows.action):
        assert np.all((r >= lo) & (r < hi)), "a window reads outside its episode"
    assert set(rows.episode.tolist()) == set(episodes.tolist())
    anchor = sampler.anchor
    # The observation window ends at the anchor; the action window starts there.
    assert np.array_equal(rows.obs[:, -1], anchor) and np.array_equal(rows.action[:, 0], anchor)
    # Padding repeats edge frames: past the episode end every action row is the episode's last.
    unclipped = anchor[:, None] + np.arange(act_h)
    assert np.array_equal(rows.action, np.minimum(unclipped, hi - 1))
    assert np.all(np.diff(rows.obs, axis=1) >= 0) and np.all(np.diff(rows.action, axis=1) >= 0)


def test_split_is_seeded_and_disjoint() -> None:
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16 and not set(train) & set(val)
    assert np.array_equal(split_episodes(20, 0.2, seed=3)[1], val)
    assert not np.array_equal(split_episodes(20, 0.2, seed=4)[1], val)
    assert len(split_episodes(3, 0.01, seed=0)[1]) == 1


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sampler") / "s.zarr"
    with new_store(path) as store:
        for i in range(6):
            store.add_episode(make_episode(i), language=f"task {i % 2}")
    return path


def test_disk_reads_equal_ram_reads(store_path: Path) -> None:
    store = EpisodeStore.open(store_path)
    sampler = SequenceSampler(store.episode_ends, 2, 16)
    windows = np.random.default_rng(0).integers(0, len(sampler), 64)
    keys = ("state", "object_state", "images/front")
    in_ram = EpisodeData(store.episode_ends, {k: np.asarray(store.array(k)[:]) for k in (*keys, "action")})
    ram = gather_windows(in_ram, sampler, windows, keys, ("action",))
    disk = TensorstoreReader(store_path, [*keys, "action"]).gather(sampler, windows, keys, ("action",))
    for key in (*keys, "action", "episode"):
        assert np.array_equal(ram[key], disk[key]), key
    assert ram["images/front"].shape == (64, 2, 24, 32, 3)


@pytest.mark.parametrize("in_memory,workers", [(True, 0), (False, 1)])
def test_dataloader_batches(store_path: Path, in_memory: bool, workers: int) -> None:
    store = EpisodeStore.open(store_path)
    train, _ = split_episodes(store.n_episodes, 0.34, seed=0)
    ds = WindowBatchDataset(store, SequenceSampler(store.episode_ends, 2, 8, episodes=train),
                            obs_keys=("state", "images/front"), in_memory=in_memory)
    loader = make_dataloader(ds, batch_size=16, seed=1, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(ds) // 16
    b = batches[0]
    assert b["state"].shape == (16, 2, 128) and b["state"].dtype == torch.float32
    assert b["images/front"].dtype == torch.uint8 and b["images/front"].shape == (16, 2, 24, 32, 3)
    assert b["action"].shape == (16, 8, 128)
    assert b["action_mask"].shape == (16, 128)
    assert set(torch.cat([x["episode"] for x in batches]).tolist()) <= set(train.tolist())
    # Same seed, same order.
    again = next(iter(make_dataloader(ds, batch_size=16, seed=1)))
    assert torch.equal(again["episode"], b["episode"]) and torch.equal(again["action"], b["action"])


def test_normalizer_round_trip_masks_and_missing_stats(store_path: Path) -> None:
    store = EpisodeStore.open(store_path)
    data = store.load(["state", "action", "object_state"])
    stats = compute_stats(data, ["state", "action", "object_state"])
    mask = stats["action"]["mask"]
    assert np.array_equal(mask, store.embodiment.action.mask)
    norm = Normalizer(stats, {"state": "gaussian", "action": "minmax", "object_state": "quantile"})
    action = data.data["action"][:50]
    z = norm.normalize("action", action)
    assert np.all(z[:, mask == 0] == 0)
    assert z[:, mask > 0].min() >= -1 - 1e-6 and z[:, mask > 0].max() <= 1 + 1e-6
    np.testing.assert_allclose(norm.unnormalize("action", z), action, atol=1e-5)
    zt = norm.normalize("state", torch.from_numpy(data.data["state"][:10]))
    np.testing.assert_allclose(zt.numpy(), norm.normalize("state", data.data["state"][:10]), atol=1e-6)
    restored = Normalizer.from_json(norm.to_json())
    np.testing.assert_allclose(restored.normalize("action", action), z, atol=1e-6)
    with pytest.raises(StatsError, match="no stats for key 'timestamp'"):
        norm.normalize("timestamp", data.data["state"][:1])
    broken = {k: dict(v) for k, v in stats.items()}
    del broken["action"]["max"]
    with pytest.raises(StatsError, match=r"stats\['action'\] has no 'max'"):
        Normalizer(broken, {"action": "minmax"})
    with pytest.raises(StatsError, match="no normalisation stats for key 'object_state'"):
        Normalizer({"action": stats["action"]}, {"object_state": "gaussian"})


def test_constant_dims_normalise_to_zero_and_merge_is_exact() -> None:
    x = np.random.default_rng(0).standard_normal((100, 3))
    x[:, 1] = 4.0
    a = EpisodeData(np.array([60, 100]), {"object_state": x})
    stats = compute_stats(a, ["object_state"])
    z = Normalizer(stats, {"object_state": "gaussian"}).normalize("object_state", x)
    assert np.all(z[:, 1] == 0)
    halves = [(compute_stats(EpisodeData(np.array([n]), {"object_state": part}), ["object_state"]), n)
              for part, n in ((x[:60], 60), (x[60:], 40))]
    merged = merge_stats(halves)
    for s in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged["object_state"][s], stats["object_state"][s], atol=1e-12)
    assert stats_from_json({"k": {"mean": [1.0]}})["k"]["mean"].dtype == np.float64


def test_mixture_of_stores_with_different_object_states_and_cameras(tmp_path: Path) -> None:
    from robot_policy.models.inputs import make_model_inputs
    from robot_policy.train.loop import DatasetEntry, TrainConfig, build_data

    with new_store(tmp_path / "a.zarr") as store:  # object state (9-d) and a 24x32 camera
        for i in range(3):
            store.add_episode(make_episode(i))
    with EpisodeStore.create(tmp_path / "b.zarr", load_embodiment("panda_bimanual_joint")) as store:  # neither
        for i in range(3):
            ep = make_episode(10 + i)
            store.add_episode({k: ep[k] for k in ("state", "action", "timestamp")}, language="other task")
    cfg = TrainConfig(out=str(tmp_path / "run"), datasets=[DatasetEntry(str(tmp_path / "a.zarr")),
                                                           DatasetEntry(str(tmp_path / "b.zarr"))],
                      cameras=["front"], val_fraction=0.0)
    data = build_data(cfg, obs_horizon=2, horizon=8, image_size=(24, 32))
    assert data.train.object_state_dim == 9 and data.train.languages == ["", "other task"]
    stats = data.normalizer.stats["object_state"]
    assert stats["mean"].shape == (9,)
    batch = data.train[np.array([[0, 0], [1, 0], [1, 5], [0, 7]])]
    assert batch["images"].shape == (4, 2, 1, 24, 32, 3)
    assert batch["camera_present"][:, 0].tolist() == [True, False, False, True]
    assert torch.all(batch["object_state"][1:3] == 0)
    inputs = make_model_inputs(batch, data.normalizer, None)
    assert inputs.object_state is not None and torch.isfinite(inputs.object_state).all()
    with pytest.raises(ValueError, match="records 24x32 images, the policy's obs_encoder.image_size is \\[64, 64\\]"):
        build_data(cfg, obs_horizon=2, horizon=8, image_size=(64, 64))
