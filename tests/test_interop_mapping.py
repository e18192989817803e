"""Mappings as data: every shipped mapping loads, and a mapping that cannot work fails naming what."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import yaml

from robot_policy.data.interop.mapping import (
    MappingError,
    SourceMapping,
    available_mappings,
    load_mapping,
    native_to_unified,
)
from robot_policy.paths import CONFIG_DIR


def _raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / "mapping" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", available_mappings())
def test_every_shipped_mapping_loads(name: str) -> None:
    m = load_mapping(name)
    assert m.name == name and m.source in ("lerobot", "rosbag", "robomimic")
    state_mask, action_mask = m.masks()
    assert np.all(state_mask <= m.embodiment.state.mask) and state_mask.sum() > 0 and action_mask.sum() > 0


def test_shipped_mappings_cover_the_three_sources() -> None:
    assert {load_mapping(n).source for n in available_mappings()} == {"lerobot", "rosbag", "robomimic"}


def test_unmapped_native_field_is_an_error_naming_it() -> None:
    raw = _raw("lerobot_aloha_sim")
    del raw["state"]["right_arm_qvel"]
    with pytest.raises(MappingError, match=r"state: native field\(s\) \['right_arm_qvel'\] are not mapped"):
        SourceMapping.from_dict(raw)


def test_null_field_is_dropped_and_masked() -> None:
    m = load_mapping("lerobot_aloha_sim")
    state_mask, _ = m.masks()
    assert state_mask[m.embodiment.state.get("left_arm_qvel").unified_slice].sum() == 0
    assert "state.left_arm_qvel" in m.dropped_fields()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["state"].update(elbow={"key": "observation.state"}), r"\['elbow'\] not a field of the embodiment"),
    (lambda r: r["state"].update(left_arm_qpos={"key": "observation.state", "slice": [0, 5]}),
     r"left_arm_qpos: observation.state\[0:5\] gives 5 values, the field has dim 6"),
    (lambda r: r.update(source="hdf5"), r"source: unknown 'hdf5'"),
    (lambda r: r.update(embodiment="ur5"), r"embodiment: unknown embodiment 'ur5'"),
    (lambda r: r["action"].update(left_arm_qpos={"topic": "/x"}), r"a lerobot source is named by 'key'"),
    (lambda r: r["action"].update(left_arm_qpos={"key": "action", "slice": [3, 1]}), r"slice: expected \[start, stop\)"),
    (lambda r: r["action"].update(left_arm_qpos={"key": "action", "scale": 0}), r"scale: must not be 0"),
    (lambda r: r.update(episodes={"split": "gap", "gap_s": 1.0}), r"lerobot episodes split by source"),
    (lambda r: r.update(colour="red"), r"unknown key\(s\) \['colour'\]"),
    (lambda r: r.update(extras={"state": {"key": "x"}}), r"extras.state: not an extra data key"),
])
def test_malformed_mapping_names_the_problem(edit: Any, message: str) -> None:
    raw = copy.deepcopy(_raw("lerobot_aloha_sim"))
    edit(raw)
    with pytest.raises(MappingError, match=message):
        SourceMapping.from_dict(raw)


def test_rosbag_mapping_needs_fields_joints_and_a_split() -> None:
    raw = _raw("rosbag_panda_bimanual_joint")
    m = SourceMapping.from_dict(raw)
    assert m.episodes.split in ("marker", "gap")
    no_split = {k: v for k, v in raw.items() if k != "episodes"}
    with pytest.raises(MappingError, match="says how episodes are split"):
        SourceMapping.from_dict(no_split)
    bad = copy.deepcopy(raw)
    bad["state"]["right_joint_pos"] = {"topic": "/joint_states", "field": "position"}
    with pytest.raises(MappingError, match=r"right_joint_pos: a joint message field needs 'joints'"):
        SourceMapping.from_dict(bad)
    bad["state"]["right_joint_pos"] = {"topic": "/joint_states", "field": "positon", "joints": ["a"]}
    with pytest.raises(MappingError, match=r"right_joint_pos.field: expected one of"):
        SourceMapping.from_dict(bad)


def test_digest_changes_with_the_mapping() -> None:
    raw = _raw("lerobot_aloha_sim")
    a = SourceMapping.from_dict(raw)
    raw["state"]["left_arm_qpos"]["scale"] = 2.0
    assert SourceMapping.from_dict(raw).digest != a.digest == SourceMapping.from_dict(_raw("lerobot_aloha_sim")).digest


def test_native_to_unified_leaves_absent_fields_zero() -> None:
    m = load_mapping("lerobot_aloha_sim")
    native = {"left_arm_qpos": np.ones((3, 6)), "left_gripper_qpos": np.full((3, 1), 1.491)}
    u = native_to_unified(m.embodiment.state, native, 3, "test")
    assert u.dtype == np.float32 and u.shape == (3, 128)
    assert u[:, m.embodiment.state.get("left_gripper_qpos").unified_slice].tolist() == [[1.0]] * 3
    assert np.count_nonzero(u) == 3 * 7
    with pytest.raises(MappingError, match=r"test.left_arm_qpos: expected \(3, 6\) values, got \(3, 5\)"):
        native_to_unified(m.embodiment.state, {"left_arm_qpos": np.ones((3, 5))}, 3, "test")
