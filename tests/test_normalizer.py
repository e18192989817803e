"""Normalisation statistics that mix arms: per-slot masks within a store, exact per-slot merges across stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import (
    SAMPLE,
    Normalizer,
    StatsError,
    compute_stats,
    merge_stats,
    stats_from_json,
    stats_to_json,
)
from robot_policy.data.store import EpisodeData, EpisodeStore
from robot_policy.spaces import load_embodiment
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import slot

KEYS = [fmt.STATE, fmt.ACTION]
EXACT = ("mean", "std", "min", "max", "q01", "q99", "count", "mask")
JOINT0 = slot("right_arm_joint_pos").start  # joint slot used by the joint-controlled Pandas' actions only
EEF0 = slot("right_eef_pos").start  # eef slot used by the end-effector Pandas' actions only
GRIP = slot("right_gripper_open").start  # used by both


def _episode(spec: EmbodimentSpec, rng: np.random.Generator, length: int, offset: float) -> dict[str, np.ndarray]:
    """Rows in the embodiment's slots only; the right arm's first joint target ~ N(-1.5, 0.1) (as in issue 7)."""
    state = (offset + rng.standard_normal((length, 128))) * spec.state.mask
    action = (offset + rng.standard_normal((length, 128))) * spec.action.mask
    action[:, JOINT0] = rng.normal(-1.5, 0.1, length) * spec.action.mask[JOINT0]
    action[:, GRIP] = rng.uniform(0.0, 1.0, length)
    return {fmt.STATE: state.astype(np.float32), fmt.ACTION: action.astype(np.float32),
            fmt.TIMESTAMP: np.arange(length) / spec.control_hz}


def _store(path: Path, embodiment: str, lengths: list[int], offset: float, seed: int) -> EpisodeData:
    spec = load_embodiment(embodiment)
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, spec, provenance={"source": "test"}) as store:
        for length in lengths:
            store.add_episode(_episode(spec, rng, length, offset))
    return EpisodeStore.open(path).load(KEYS)


def _concat(parts: list[EpisodeData]) -> EpisodeData:
    """All episodes of ``parts`` as one EpisodeData: the reference the merge must reproduce."""
    lengths = np.concatenate([p.episode_lengths for p in parts])
    return EpisodeData(np.cumsum(lengths), {k: np.concatenate([p.data[k] for p in parts]) for k in KEYS},
                       {m: np.concatenate([p.meta[m] for p in parts]) for m in (fmt.STATE_MASK, fmt.ACTION_MASK)})


@pytest.fixture(scope="module")
def two_embodiments(tmp_path_factory: pytest.TempPathFactory) -> tuple[EpisodeData, EpisodeData]:
    """Joint-controlled Pandas (pybullet's spec) and end-effector Pandas (robosuite's), different offsets."""
    root = tmp_path_factory.mktemp("stats")
    joint = _store(root / "joint.zarr", "panda_bimanual_joint", [30, 45, 25], offset=2.0, seed=0)
    eef = _store(root / "eef.zarr", "robosuite_panda_bimanual_eef", [40, 35], offset=-3.0, seed=1)
    return joint, eef


def test_merged_stats_equal_each_stores_own_on_its_slots(two_embodiments: tuple[EpisodeData, EpisodeData]) -> None:
    joint, eef = two_embodiments
    own = [compute_stats(d, KEYS) for d in (joint, eef)]
    merged = merge_stats([(s, d.n_steps) for s, d in zip(own, two_embodiments)])
    pooled = compute_stats(_concat([joint, eef]), KEYS)  # one store holding every episode
    for key in KEYS:
        masks = [d.meta[fmt.STATE_MASK if key == fmt.STATE else fmt.ACTION_MASK][0] > 0 for d in (joint, eef)]
        only = [masks[0] & ~masks[1], masks[1] & ~masks[0]]
        assert only[0].any() or key == fmt.STATE  # the actions differ: joint targets vs eef poses
        for name in EXACT:
            for i in (0, 1):  # a slot only one store uses has that store's statistics, bit for bit in effect
                np.testing.assert_allclose(merged[key][name][only[i]], own[i][key][name][only[i]], rtol=1e-12,
                                           atol=1e-12, err_msg=f"{key}.{name}, store {i}'s own slots")
            # Every slot, shared ones included: as if all episodes were in one store.
            np.testing.assert_allclose(merged[key][name], pooled[key][name], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{key}.{name}")
        unused = ~(masks[0] | masks[1])
        assert all(np.all(merged[key][name][unused] == 0) for name in EXACT)
    # The example: a joint slot ~N(-1.5, 0.1) used by one store only (the step-weighted merge gave
    # mean -0.75, std 0.76, max 0.0 by counting the other store's zeros).
    a = merged[fmt.ACTION]
    assert a["mean"][JOINT0] == pytest.approx(-1.5, abs=0.03) and a["std"][JOINT0] == pytest.approx(0.1, abs=0.02)
    assert a["max"][JOINT0] < -1.0 and a["count"][JOINT0] == joint.n_steps
    assert a["count"][GRIP] == joint.n_steps + eef.n_steps and a["count"][EEF0] == eef.n_steps


def test_masked_out_slots_normalise_to_zero_and_real_ones_to_unit_scale(
        two_embodiments: tuple[EpisodeData, EpisodeData]) -> None:
    joint, eef = two_embodiments
    merged = merge_stats([(compute_stats(d, KEYS), d.n_steps) for d in (joint, eef)])
    unused = (joint.meta[fmt.ACTION_MASK][0] == 0) & (eef.meta[fmt.ACTION_MASK][0] == 0)
    for mode in ("gaussian", "minmax", "quantile"):
        norm = Normalizer(merged, {fmt.ACTION: mode})
        for d in (joint, eef):
            z = norm.normalize(fmt.ACTION, d.data[fmt.ACTION].astype(np.float64))
            mask = d.meta[fmt.ACTION_MASK][0] > 0
            # Slots no store uses are exactly 0; a slot only the other store uses is zeroed by the row's own
            # mask, which the model applies (actions * action_mask, state * state_mask).
            assert np.all(z[:, unused] == 0) and np.all(z * mask == 0, where=~mask)
            if mode == "gaussian":  # each store's own-only slots are standardised by its own stats
                assert abs(z[:, JOINT0 if d is joint else EEF0].mean()) < 1e-6
            if mode == "minmax":
                assert z[:, mask].min() >= -1 - 1e-9 and z[:, mask].max() <= 1 + 1e-9
    # The row sample is for merging only: neither the Normalizer nor its JSON keeps it.
    norm = Normalizer(merged | {fmt.STATE: compute_stats(joint, [fmt.STATE])[fmt.STATE]}, {fmt.STATE: "gaussian"})
    assert SAMPLE not in norm.stats[fmt.STATE] and SAMPLE not in norm.to_json()["stats"][fmt.STATE]


def test_episodes_with_different_masks_in_one_store(tmp_path: Path) -> None:
    """Within one store, a slot's stats come from the episodes whose mask uses it (right-arm-only episodes
    leave the left arm's slots out, instead of adding zeros)."""
    spec = load_embodiment("panda_bimanual_joint")
    right_only = spec.action.mask.copy()
    right_only[50:100] = 0
    rng = np.random.default_rng(3)
    left0 = slot("left_arm_joint_pos").start
    with EpisodeStore.create(tmp_path / "s.zarr", spec, provenance={"source": "test"}) as store:
        for i, length in enumerate([20, 30, 25, 15]):
            ep = _episode(spec, rng, length, offset=1.0)
            mask = right_only if i % 2 else spec.action.mask
            ep[fmt.ACTION] = (ep[fmt.ACTION] * mask).astype(np.float32)
            store.add_episode(ep, action_mask=mask)
    data = EpisodeStore.open(tmp_path / "s.zarr").load(KEYS)
    stats = compute_stats(data, KEYS)[fmt.ACTION]
    both = np.concatenate([data.data[fmt.ACTION][slice(*data.episode_bounds(i))] for i in (0, 2)])
    assert stats["count"][left0] == 45 and stats["count"][JOINT0] == data.n_steps
    assert stats["mean"][left0] == pytest.approx(both[:, left0].astype(np.float64).mean(), rel=1e-12)
    assert stats["std"][left0] == pytest.approx(both[:, left0].astype(np.float64).std(), rel=1e-12)
    assert stats["max"][left0] == both[:, left0].max() and stats["min"][left0] == both[:, left0].min()
    np.testing.assert_allclose([stats["q01"][left0], stats["q99"][left0]],
                               np.quantile(both[:, left0].astype(np.float64), [0.01, 0.99]), rtol=1e-12)
    assert stats["mask"][left0] == 1 and stats["mask"][47] == 0


def test_subsampled_quantiles_merge_by_weight() -> None:
    """Beyond ``max_rows`` a part keeps a seeded subsample; the merge weighs its rows by count/sampled."""
    rng = np.random.default_rng(5)
    big = rng.normal(0.0, 1.0, (6000, 2))
    small = rng.normal(4.0, 1.0, (500, 2))
    parts = [(compute_stats(EpisodeData(np.array([len(x)]), {"object_state": x}), ["object_state"], max_rows=1000),
              len(x)) for x in (big, small)]
    assert parts[0][0]["object_state"][SAMPLE].shape == (1000, 2)
    merged = merge_stats(parts)["object_state"]
    exact = np.quantile(np.concatenate([big, small]), [0.01, 0.99], axis=0)
    np.testing.assert_allclose([merged["q01"], merged["q99"]], exact, atol=0.1)
    np.testing.assert_allclose(merged["mean"], np.concatenate([big, small]).mean(axis=0), rtol=1e-12)
    # Without the weights the small store's share (1/13 of the rows) would count as 1/3: q99 far too high.
    unweighted = np.quantile(np.concatenate([parts[0][0]["object_state"][SAMPLE], small]), 0.99, axis=0)
    assert np.all(unweighted - exact[1] > 0.5)


def test_merge_refuses_stats_without_a_row_sample(two_embodiments: tuple[EpisodeData, EpisodeData]) -> None:
    joint, _ = two_embodiments
    stats = compute_stats(joint, KEYS)
    restored = stats_from_json(stats_to_json(stats))
    assert SAMPLE not in restored[fmt.ACTION]
    with pytest.raises(StatsError, match=r"part 1 stats\['action'\] has no 'sample'"):
        merge_stats([(stats, joint.n_steps), (restored, joint.n_steps)])
    with pytest.raises(StatsError, match="counts 100 rows in a slot, but the part has 10 steps"):
        merge_stats([(stats, 10)])
    with pytest.raises(StatsError, match="need the episodes' 'action_mask'"):
        compute_stats(EpisodeData(joint.episode_ends, joint.data), [fmt.ACTION])
