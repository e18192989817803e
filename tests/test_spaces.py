"""The unified space, rotation helpers and embodiment specs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robot_policy.spaces import rotation as rot
from robot_policy.spaces.embodiment import EmbodimentSpec, SpecError, available_embodiments, load_embodiment
from robot_policy.spaces.unified import SLOTS, UNIFIED_DIM, describe_index, slot


def test_slot_table_matches_rdt_layout() -> None:
    assert slot("right_arm_joint_pos") == slice(0, 10)
    assert slot("right_gripper_open") == slice(10, 11)
    assert slot("right_arm_joint_vel") == slice(15, 25)
    assert slot("right_eef_pos") == slice(30, 33)
    assert slot("right_eef_rot6d") == slice(33, 39)
    assert slot("right_eef_lin_vel") == slice(39, 42)
    assert slot("right_eef_ang_vel") == slice(42, 45)
    assert slot("left_gripper_open") == slice(60, 61)
    assert slot("left_eef_rot6d") == slice(83, 89)
    assert slot("base_vel") == slice(100, 103)
    assert all(s.stop <= UNIFIED_DIM for s in SLOTS.values())
    assert describe_index(60) == "left_gripper_open[0]"
    assert describe_index(47) == "reserved[47]"
    with pytest.raises(KeyError, match="valid slots"):
        slot("right_wrist")


@given(arrays(np.float64, (5, 4), elements=st.floats(-1, 1)))
def test_quaternion_6d_round_trip(q: np.ndarray) -> None:
    norms = np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(norms > 1e-3, q / np.maximum(norms, 1e-12), np.array([0, 0, 0, 1.0]))
    m = rot.quat_to_matrix(q)
    six = rot.matrix_to_rot6d(m)
    assert six.shape == (5, 6)
    np.testing.assert_allclose(rot.rot6d_to_matrix(six), m, atol=1e-12)
    np.testing.assert_allclose(rot.matrix_to_quat(rot.rot6d_to_matrix(six)), rot.canonical_quat(q), atol=1e-9)


def test_quat_to_matrix_matches_scipy() -> None:
    from scipy.spatial.transform import Rotation

    q = np.random.default_rng(0).standard_normal((50, 4)) * 3
    np.testing.assert_allclose(rot.quat_to_matrix(q), Rotation.from_quat(q).as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match="zero-norm"):
        rot.quat_to_matrix(np.zeros(4))


def test_rot6d_rejects_degenerate_columns() -> None:
    with pytest.raises(ValueError, match="parallel"):
        rot.rot6d_to_matrix(np.array([1.0, 0, 0, 2.0, 0, 0]))


@pytest.mark.parametrize("name", available_embodiments())
def test_every_spec_loads_with_consistent_masks(name: str) -> None:
    spec = load_embodiment(name)
    assert spec.state.mask.shape == (UNIFIED_DIM,)
    assert spec.action.mask.sum() > 0
    lo, hi = spec.joint_position_bounds()
    assert np.all(lo[np.isfinite(lo)] < hi[np.isfinite(hi)])


def _random_native(spec_map, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    out = {}
    for f in spec_map.fields:
        if f.rotation is not None:
            q = rot.matrix_to_quat(rot.rotvec_to_matrix(rng.uniform(-2, 2, (batch, 3))))
            value = {"quat_xyzw": q, "quat_wxyz": rot.xyzw_to_wxyz(q), "rotvec": rot.matrix_to_rotvec(rot.quat_to_matrix(q)),
                     "matrix": rot.quat_to_matrix(q).reshape(batch, 9), "rot6d": rot.matrix_to_rot6d(rot.quat_to_matrix(q))}[f.rotation]
        else:
            value = rng.uniform(-3, 3, (batch, f.dim))
        out[f.name] = value
    return out


@pytest.mark.parametrize("name", available_embodiments())
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_native_unified_native_is_exact_for_every_mapped_field(name: str, seed: int) -> None:
    spec = load_embodiment(name)
    rng = np.random.default_rng(seed)
    for fmap in (spec.state, spec.action):
        native = _random_native(fmap, rng, batch=7)
        unified = fmap.to_unified(native)
        assert unified.shape == (7, UNIFIED_DIM)
        assert np.all(unified[:, fmap.mask == 0] == 0)
        back = fmap.from_unified(unified)
        for f in fmap.fields:
            if f.rotation is None and f.gripper is None:
                assert np.array_equal(back[f.name], native[f.name]), f.name  # plain copies: bit exact
            else:  # affine / rotation maps: exact up to float64 rounding
                np.testing.assert_allclose(back[f.name], native[f.name], atol=1e-9, err_msg=f.name)
        flat = fmap.unified_to_flat(unified)
        np.testing.assert_allclose(fmap.flat_to_unified(flat), unified, atol=1e-12)


def _base_raw() -> dict:
    return copy.deepcopy(load_embodiment("panda_single_joint").raw)


def test_spec_rejects_unknown_field_key() -> None:
    raw = _base_raw()
    raw["state"]["joint_pos"] = {"slot": "right_arm_joint_pos", "dim": 7, "slots": 3}
    with pytest.raises(SpecError, match=r"state\.joint_pos: unknown key\(s\) \['slots'\]"):
        EmbodimentSpec.from_dict(raw)


def test_spec_rejects_slot_used_twice() -> None:
    raw = _base_raw()
    raw["action"]["extra_pos"] = {"slot": "right_arm_joint_pos", "dim": 7}
    with pytest.raises(SpecError, match=r"action\.extra_pos: unified slot 0 .* already used by action\.joint_pos"):
        EmbodimentSpec.from_dict(raw)


@pytest.mark.parametrize("field,bad,message", [
    ("right_joint_pos", {"slot": "right_arm_joint_pos", "dim": 6}, "does not match arms.right.dof = 7"),
    ("right_eef_pos", {"slot": "right_eef_pos", "dim": 4}, "does not fit slot 'right_eef_pos' of width 3"),
    ("right_eef_quat", {"slot": "right_eef_rot6d", "dim": 3, "rotation": "quat_xyzw"}, "has dim 4, spec says 3"),
    ("right_gripper", {"slot": "right_gripper_open", "dim": 2, "gripper": {"closed": 0, "open": 0.08}}, "dim 1"),
    ("right_eef_pos", {"slot": "right_elbow", "dim": 3}, "unknown slot 'right_elbow'"),
])
def test_spec_rejects_shape_mismatch_naming_the_field(field: str, bad: dict, message: str) -> None:
    raw = _base_raw()
    raw["state"][field] = bad
    with pytest.raises(SpecError, match=rf"state\.{field}: .*{message}"):
        EmbodimentSpec.from_dict(raw)


def test_converter_errors_name_the_field() -> None:
    spec = load_embodiment("panda_single_joint")
    good = {"joint_pos": np.zeros(7), "gripper": np.zeros(1)}
    with pytest.raises(SpecError, match="missing field 'gripper'"):
        spec.action.to_unified({"joint_pos": np.zeros(7)})
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['wrist'\]"):
        spec.action.to_unified({**good, "wrist": np.zeros(1)})
    with pytest.raises(SpecError, match=r"action\.joint_pos: expected shape \(\.\.\., 7\)"):
        spec.action.to_unified({**good, "joint_pos": np.zeros(6)})
    with pytest.raises(SpecError, match="unified vector of shape"):
        spec.action.from_unified(np.zeros(127))


def test_gripper_maps_to_opening_in_unit_range() -> None:
    spec = load_embodiment("aloha_bimanual")
    native = {f.name: np.zeros(f.dim) for f in spec.action.fields}
    native["left_gripper_qpos"] = np.array([1.4910])  # fully open
    native["right_gripper_qpos"] = np.array([-0.6213])  # closed
    u = spec.action.to_unified(native)
    assert u[slot("left_gripper_open")][0] == pytest.approx(1.0)
    assert u[slot("right_gripper_open")][0] == pytest.approx(0.0)


def _gripper_fields(fmap) -> dict[str, object]:
    return {f.slot: f for f in fmap.fields if f.slot.endswith("gripper_open")}


@pytest.mark.parametrize("name", available_embodiments())
def test_every_gripper_slot_is_the_opening_fully_open_1_closed_0(name: str) -> None:
    """State and action alike: native fully open -> 1, closed -> 0, and back; the action is a target of the
    very quantity the state measures (same native range), not a command with its own meaning."""
    spec = load_embodiment(name)
    for fmap in (spec.state, spec.action):
        grippers = _gripper_fields(fmap)
        assert grippers, f"{name}.{fmap.kind} has no gripper"
        for slot_name, f in grippers.items():
            closed, open_ = f.gripper
            for native, opening in ((open_, 1.0), (closed, 0.0), ((open_ + closed) / 2, 0.5)):
                values = {g.name: np.zeros(g.dim) if g.rotation is None else _identity(g.rotation)
                          for g in fmap.fields}
                values[f.name] = np.array([native])
                u = fmap.to_unified(values)
                assert u[slot(slot_name)][0] == pytest.approx(opening, abs=1e-12), (fmap.kind, f.name, native)
                assert fmap.from_unified(u)[f.name][0] == pytest.approx(native, abs=1e-12)
    state, action = _gripper_fields(spec.state), _gripper_fields(spec.action)
    for slot_name, f in action.items():
        assert slot_name in state, f"{name}: action {f.name} has no gripper state to be the target of"
        assert f.gripper == state[slot_name].gripper, f"{name}.{f.name}: action range {f.gripper} != state's"


def _identity(representation: str) -> np.ndarray:
    return {"quat_xyzw": np.array([0, 0, 0, 1.0]), "quat_wxyz": np.array([1.0, 0, 0, 0]), "rotvec": np.zeros(3),
            "matrix": np.eye(3).reshape(9), "rot6d": np.array([1.0, 0, 0, 0, 1.0, 0])}[representation]


def test_gripper_slot_without_a_gripper_range_is_refused() -> None:
    raw = _base_raw()
    raw["action"]["gripper"] = {"slot": "right_gripper_open", "dim": 1}
    with pytest.raises(SpecError, match=r"action\.gripper: slot 'right_gripper_open' is the gripper opening"):
        EmbodimentSpec.from_dict(raw)


def test_robosuite_expert_gripper_actions_are_openings(tmp_path) -> None:
    """A real collected robosuite episode: the gripper action slots hold target openings in [0, 1] (the
    expert opens fully and closes on the handles), and the state's opening follows them."""
    pytest.importorskip("robosuite")
    from robot_policy.data.store import EpisodeStore
    from robot_policy.envs.registry import load_task_config
    from robot_policy.pipelines.collect import CollectConfig, collect

    collect(load_task_config("robosuite_two_arm_lift"), CollectConfig(episodes=1, out=str(tmp_path / "rs.zarr")),
            progress=False)
    data = EpisodeStore.open(tmp_path / "rs.zarr").load(["state", "action"])
    for side in ("right", "left"):
        g = slot(f"{side}_gripper_open").start
        action, state = data.data["action"][:, g], data.data["state"][:, g]
        assert action.min() >= 0.0 and action.max() <= 1.0
        assert set(np.unique(action).tolist()) == {0.0, 1.0}  # open, then closed on the handle
        first_close = int(np.argmax(action == 0.0))
        assert state[first_close - 1] > 0.9 and 0.1 < state[-1] < 0.4  # open, then closed on a handle


def test_unknown_embodiment_lists_available() -> None:
    with pytest.raises(SpecError, match="available: .*panda_bimanual_joint"):
        load_embodiment("ur5_dual")
