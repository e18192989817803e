"""The rig's base-to-base calibration in its consumers: the loader's warnings (missing, too old, another
camera's), the recorder writing it into the store's attrs, replay comparing it with a rig's, the runtime's
safety filter bounding both arms in one rig frame (box and end-effector separation), and the serving
process's parameters."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_policy.data.rig_file import (
    BASE_TO_BASE_FORMAT,
    CalibrationMismatchWarning,
    FrameTransform,
    MissingCalibrationWarning,
    RigFileError,
    StaleCalibrationWarning,
    load_rig_base_to_base,
    save_transform,
    transform_mismatch,
)
from robot_policy.data.store import EpisodeStore
from robot_policy.runtime.safety import Intervention, JointLimits, SafetyFilter, WorkspaceBox
from robot_policy.spaces.embodiment import load_embodiment
from tests.test_safety_filter import assert_safe

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def _rot_z(angle: float, t: tuple[float, float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


#: the left arm's base 0.82 m along -y of the right one's, facing it (turned 180 deg about z)
T_RIGHT_LEFT = _rot_z(np.pi, (0.0, -0.82, 0.0))


def _write_b2b(path: Path, T: np.ndarray = T_RIGHT_LEFT, when: str = "2025-05-20T10:00:00+00:00",
               cameras: dict[str, str] | None = None) -> Path:
    tf = FrameTransform(T, "right_base", "left_base", "touch", when, {"rms_residual_mm": 0.4})
    return save_transform(path, BASE_TO_BASE_FORMAT, tf, {"cameras": cameras} if cameras else None)


# ---- the loader ----------------------------------------------------------------------------------------

def test_a_fresh_file_loads_from_the_rig_directory_without_a_warning(tmp_path: Path) -> None:
    _write_b2b(tmp_path / "rig_a" / "base_to_base.yaml", cameras={"front": "111"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf = load_rig_base_to_base(tmp_path / "rig_a", max_age_days=90, expected_serials={"front": "111"}, now=NOW)
    assert tf is not None and (tf.parent, tf.child) == ("right_base", "left_base")
    np.testing.assert_allclose(tf.T, T_RIGHT_LEFT, atol=1e-12)
    right, left = tf.base_poses(["right", "left"])
    np.testing.assert_allclose(right, np.eye(4))
    np.testing.assert_allclose(left, T_RIGHT_LEFT, atol=1e-12)
    with pytest.raises(RigFileError, match="does not name arm 'third'"):
        tf.base_poses(["right", "third"])


def test_an_old_file_or_another_cameras_warns_naming_file_date_and_serials(tmp_path: Path) -> None:
    path = _write_b2b(tmp_path / "base_to_base.yaml", when="2025-01-01T00:00:00+00:00", cameras={"front": "111"})
    with pytest.warns(StaleCalibrationWarning,
                      match=r"base_to_base.yaml: T_right_base_left_base calibrated 151 days ago "
                            r"\(2025-01-01T00:00:00\+00:00\), more than the allowed 90 days"):
        tf = load_rig_base_to_base(path, max_age_days=90, now=NOW)
    assert tf is not None  # still used
    with pytest.warns(StaleCalibrationWarning, match=r"camera 'front' serial '111', but the connected camera is '222'"):
        load_rig_base_to_base(path, max_age_days=None, expected_serials={"front": "222"}, now=NOW)


def test_a_missing_file_warns_or_with_required_fails(tmp_path: Path) -> None:
    with pytest.warns(MissingCalibrationWarning, match=r"rig_b/base_to_base.yaml: no base-to-base calibration"):
        assert load_rig_base_to_base(tmp_path / "rig_b") is None
    with pytest.raises(RigFileError, match="no base-to-base calibration"):
        load_rig_base_to_base(tmp_path / "rig_b", required=True)


def test_a_mismatch_beyond_the_tolerance_names_both_translations() -> None:
    rec = FrameTransform(T_RIGHT_LEFT, "right_base", "left_base", "touch", "2025-05-20T10:00:00+00:00")
    near = FrameTransform(T_RIGHT_LEFT @ _rot_z(np.radians(0.3), (0.003, 0, 0)), "right_base", "left_base", "board")
    assert transform_mismatch(rec, near) is None
    moved = FrameTransform(_rot_z(np.pi, (0.0, -0.88, 0.0)), "right_base", "left_base", "board", "2025-05-30T00:00:00+00:00")
    message = transform_mismatch(rec, moved)
    assert message is not None
    assert "60.0 mm and 0.00 deg (tolerance 5 mm, 0.5 deg)" in message
    assert "recorded t = [0.0000, -0.8200, 0.0000] m" in message and "this rig t = [0.0000, -0.8800, 0.0000] m" in message
    turned = FrameTransform(T_RIGHT_LEFT @ _rot_z(np.radians(1.0), (0, 0, 0)), "right_base", "left_base", "board")
    assert "1.00 deg" in (transform_mismatch(rec, turned) or "")
    # the same calibration written the other way round (T_left_base_right_base) is the same rig
    inverse = FrameTransform(np.linalg.inv(T_RIGHT_LEFT), "left_base", "right_base", "touch")
    assert transform_mismatch(inverse, rec) is None
    other = FrameTransform(np.eye(4), "right_base", "table", "touch")
    assert "other frames" in (transform_mismatch(rec, other) or "")


# ---- record: the store's attrs ---------------------------------------------------------------------------

def _rig(tmp_path: Path, calibration: dict | None) -> object:
    from robot_policy.teleop.rig_config import rig_config_from_dict
    from tests.test_rig_recorder import rig_raw

    raw = {**rig_raw(cameras=False), **({"calibration": calibration} if calibration is not None else {})}
    return rig_config_from_dict(raw, where="test rig", base=tmp_path)


def test_record_stores_the_rig_base_to_base_and_dataset_info_shows_it(tmp_path: Path, capsys) -> None:
    from robot_policy.cli.main import main
    from robot_policy.pipelines.record import open_record_store

    _write_b2b(tmp_path / "calib" / "base_to_base.yaml", when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    # relative to the rig config's directory (base)
    rig = _rig(tmp_path, {"base_to_base": "calib", "max_age_days": 30})
    open_record_store(rig, tmp_path / "s.zarr", {}).close()  # type: ignore[arg-type]
    attrs = EpisodeStore.open(tmp_path / "s.zarr").attrs["base_to_base"]
    assert (attrs["parent"], attrs["child"], attrs["method"]) == ("right_base", "left_base", "touch")
    np.testing.assert_allclose(attrs["matrix"], T_RIGHT_LEFT, atol=1e-12)
    assert attrs["file"] == str(tmp_path / "calib" / "base_to_base.yaml")
    assert FrameTransform.from_attrs(attrs, "attrs").T.shape == (4, 4)
    assert main(["dataset", "info", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "T_right_base_left_base" in out and "-0.8200" in out
    # appending with another calibration is refused: its end-effector frames would differ
    _write_b2b(tmp_path / "calib" / "base_to_base.yaml", _rot_z(np.pi, (0, -0.9, 0)),
               when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    with pytest.raises(Exception, match="base_to_base"):
        open_record_store(rig, tmp_path / "s.zarr", {}, append=True)  # type: ignore[arg-type]


def test_record_without_the_file_warns_or_with_required_fails(tmp_path: Path) -> None:
    from robot_policy.pipelines.record import open_record_store
    from robot_policy.teleop.rig_config import RigConfigError

    rig = _rig(tmp_path, {"base_to_base": "calib/none"})
    with pytest.warns(MissingCalibrationWarning, match="calib/none/base_to_base.yaml"):
        open_record_store(rig, tmp_path / "s.zarr", {}).close()  # type: ignore[arg-type]
    assert "base_to_base" not in EpisodeStore.open(tmp_path / "s.zarr").attrs
    with pytest.raises(RigFileError, match="no base-to-base calibration"):
        open_record_store(_rig(tmp_path, {"base_to_base": "calib/none", "required": True}),  # type: ignore[arg-type]
                          tmp_path / "t.zarr", {})
    with pytest.raises(RigConfigError, match=r"calibration: unknown key\(s\) \['max_age'\]"):
        _rig(tmp_path, {"max_age": 3})


# ---- replay: the rig's calibration against the recorded one -----------------------------------------------

def _store(path: Path, T: np.ndarray | None) -> EpisodeStore:
    b2b = None if T is None else FrameTransform(T, "right_base", "left_base", "touch",
                                                "2025-05-20T10:00:00+00:00").to_attrs("calib/rig_a/base_to_base.yaml")
    EpisodeStore.create(path, load_embodiment("panda_bimanual_joint"), base_to_base=b2b, fsync=False).close()
    return EpisodeStore.open(path)


def test_replay_warns_when_the_rig_is_calibrated_otherwise_than_the_recording(tmp_path: Path) -> None:
    from robot_policy.pipelines.replay import ReplayConfig, check_calibration

    rig = tmp_path / "rig_b"
    _write_b2b(rig / "base_to_base.yaml", _rot_z(np.pi, (0.0, -0.82, 0.0)) @ _rot_z(0.0, (0.002, 0, 0)),
               when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    cfg = ReplayConfig(store=str(tmp_path / "s.zarr"), calibration=str(rig))
    store = _store(tmp_path / "s.zarr", T_RIGHT_LEFT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = check_calibration(cfg, store)
    assert found is not None and found["matches"] and found["difference_mm"] == pytest.approx(2.0, abs=1e-6)
    _write_b2b(rig / "base_to_base.yaml", _rot_z(np.pi, (0.0, -0.90, 0.0)),
               when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    with pytest.warns(CalibrationMismatchWarning, match=r"rig_b/base_to_base.yaml against .*s.zarr: "
                      r"T_right_base_left_base differs .* by 80.0 mm.*recorded t = \[0.0000, -0.8200.*"
                      r"this rig t = \[0.0000, -0.9000"):
        found = check_calibration(cfg, store)
    assert found is not None and not found["matches"]
    bare = _store(tmp_path / "bare.zarr", None)
    with pytest.warns(MissingCalibrationWarning, match=r"bare.zarr: records no base-to-base transform"):
        check_calibration(cfg, bare)
    assert check_calibration(ReplayConfig(store=str(tmp_path / "s.zarr")), store) is None


def test_replay_verb_takes_the_calibration_and_reports_it(tmp_path: Path) -> None:
    from robot_policy.cli.main import main
    from tests.interop_data import collect_store

    store = collect_store(tmp_path / "s.zarr", episodes=1, cameras=())  # scripted: no base-to-base recorded
    out = tmp_path / "r"
    with pytest.warns(MissingCalibrationWarning, match="records no base-to-base transform"):
        assert main(["replay", f"store={store}", f"out={out}", "video=false",
                     f"calibration={_write_b2b(tmp_path / 'rig' / 'base_to_base.yaml').parent}",
                     "calibration_max_age_days=null"]) == 0
    summary = json.loads((out / "replay.json").read_text())
    assert summary["calibration"] == {"file": str(tmp_path / "rig" / "base_to_base.yaml"), "found": True,
                                      "recorded": False}
    assert main(["replay", f"store={store}", "video=false", f"calibration={tmp_path / 'none'}",
                 "calibration_required=true"]) == 1


# ---- runtime: both arms in one rig frame through the safety filter ----------------------------------------

#: a toy bimanual Cartesian robot: joints 0-2 are the right end effector's x y z in the right base, 3-5 the
#: left one's in the left base (m)
LIM = JointLimits(("rx", "ry", "rz", "lx", "ly", "lz"), np.full(6, -1.0), np.full(6, 1.0), vel_max=np.full(6, 0.5),
                  acc_max=np.full(6, 5.0), jerk_max=np.full(6, 200.0))
DT = 0.05
BASES = [np.eye(4), T_RIGHT_LEFT]


def cartesian_fk(c: np.ndarray) -> np.ndarray:
    return np.asarray(c, np.float64).reshape(2, 3)


def in_rig(c: np.ndarray) -> np.ndarray:
    """(2, 3) both end effectors in the right arm's base frame."""
    p = cartesian_fk(c)
    return np.stack([p[0], T_RIGHT_LEFT[:3, :3] @ p[1] + T_RIGHT_LEFT[:3, 3]])


def test_the_separation_is_measured_in_the_rig_frame_and_cuts_the_chunk() -> None:
    f = SafetyFilter(LIM, DT, 0.3, fk=cartesian_fk, base_poses=BASES, min_separation=0.2)
    # the left arm holds at y = -0.2 in its own base, i.e. y = -0.62 in the right's; the right arm reaches
    # toward it along -y: 0.2 m apart at y = -0.42
    q, dq = np.array([0.0, -0.2, 0.0, 0.0, -0.2, 0.0]), np.zeros(6)
    targets = q + np.arange(1, 21)[:, None] * np.array([0.0, -0.015, 0.0, 0.0, 0.0, 0.0])
    r = f.filter(q, dq, targets)
    assert r.intervention == Intervention.TRUNCATED_WORKSPACE and r.braking
    assert "apart, closer than 0.2 m" in r.detail
    gaps = [np.linalg.norm(np.subtract(*in_rig(c))) for c in r.commands]
    assert min(gaps) >= 0.2 and np.array_equal(r.commands[-1], r.commands[-2])
    assert_safe(LIM, DT, q, dq, r, check_acc=True)
    # in their own base frames the two end effectors sit at the same point: only the rig frame makes sense
    assert np.allclose(cartesian_fk(q)[0], cartesian_fk(q)[1])
    with pytest.raises(ValueError, match="needs two or more arms with base_poses"):
        SafetyFilter(LIM, DT, 0.3, fk=cartesian_fk, min_separation=0.2)
    with pytest.raises(ValueError, match="min_separation and fk"):
        SafetyFilter(LIM, DT, 0.3, base_poses=BASES, min_separation=0.2)


def test_one_box_in_the_rig_frame_bounds_both_arms() -> None:
    box = WorkspaceBox(np.array([-0.5, -0.7, -0.5]), np.array([0.5, 0.3, 0.5]))  # rig frame (right base)
    f = SafetyFilter(LIM, DT, 0.3, workspace=[box], fk=cartesian_fk, base_poses=BASES)
    # the left arm moves +y in its own base, which is -y in the rig frame: out of the box past own y = -0.12,
    # although its own coordinates stay inside the box's numbers
    q, dq = np.array([0.0, 0.0, 0.0, 0.0, -0.3, 0.0]), np.zeros(6)
    targets = q + np.arange(1, 21)[:, None] * np.array([0.0, 0.0, 0.0, 0.0, 0.015, 0.0])
    assert all(((cartesian_fk(c) >= box.lower) & (cartesian_fk(c) <= box.upper)).all() for c in targets)
    r = f.filter(q, dq, targets)
    assert r.intervention == Intervention.TRUNCATED_WORKSPACE and "end effector 1 at" in r.detail
    assert all(((in_rig(c) >= box.lower) & (in_rig(c) <= box.upper)).all() for c in r.commands)
    assert_safe(LIM, DT, q, dq, r, check_acc=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(-0.04, 0.04), min_size=6, max_size=6), st.integers(1, 24), st.integers(0, 2**31 - 1))
def test_filtered_chunks_keep_the_arms_apart_and_in_the_box(step: list[float], n: int, seed: int) -> None:
    box = WorkspaceBox(np.array([-0.6, -0.9, -0.3]), np.array([0.6, 0.2, 0.3]))
    f = SafetyFilter(LIM, DT, 0.3, workspace=[box], fk=cartesian_fk, base_poses=BASES, min_separation=0.15)
    rng = np.random.default_rng(seed)
    q, dq = np.array([0.0, -0.2, 0.0, 0.0, -0.2, 0.0]), np.zeros(6)  # 0.42 m apart, inside, at rest
    targets = q + np.cumsum(np.tile(step, (n, 1)) + rng.normal(0, 0.005, (n, 6)), axis=0)
    r = f.filter(q, dq, targets)
    assert_safe(LIM, DT, q, dq, r, check_acc=True)
    if "best effort" not in r.detail:  # a stop from q itself stays inside here: always the guaranteed case
        for c in r.commands:
            p = in_rig(c)
            assert ((p >= box.lower) & (p <= box.upper)).all() and np.linalg.norm(p[0] - p[1]) >= 0.15


def test_the_controller_builds_the_rig_frame_check_from_its_config() -> None:
    from robot_policy.runtime.controller import ControllerConfig, PolicyController, workspace_options
    from robot_policy.runtime.robot_io import RobotInterface
    from robot_policy.runtime.runner import SimulatedLatencyRunner

    itf = RobotInterface.from_embodiment(load_embodiment("panda_bimanual_joint"))
    rig = FrameTransform(T_RIGHT_LEFT, "right_base", "left_base", "touch")

    def fk(c: np.ndarray) -> np.ndarray:  # pretend joints 0-2 and 8-10 are the end effectors' x y z
        return np.stack([c[0:3], c[8:11]])

    assert workspace_options(ControllerConfig(), itf, None, rig) == {}
    with pytest.raises(ValueError, match="need an fk"):
        workspace_options(ControllerConfig(min_arm_separation=0.1), itf, None, rig)
    with pytest.raises(ValueError, match="needs the rig's base-to-base calibration"):
        workspace_options(ControllerConfig(min_arm_separation=0.1), itf, fk, None)
    with pytest.raises(ValueError, match="go together"):
        ControllerConfig(workspace_lower=[0.0, 0.0, 0.0])

    class Still:
        horizon, execute_horizon = 8, 4

        def predict_chunk(self, obs: dict) -> None:
            raise AssertionError("not called")

    cfg = ControllerConfig(min_arm_separation=0.15, workspace_lower=[-1, -1, -1], workspace_upper=[1, 1, 1])
    controller = PolicyController(Still(), itf, cfg, runner=SimulatedLatencyRunner(Still(), 0.0, lambda: 0.0),
                                  fk=fk, rig=rig)
    ws = controller.filter.workspace
    assert ws is not None and ws.min_separation == 0.15 and len(ws.boxes) == 1
    np.testing.assert_allclose(ws.base_poses[1], T_RIGHT_LEFT)  # type: ignore[index]
    q = np.zeros(16)
    q[3], q[[1, 9]] = -1.5, -0.4  # both end effectors at y = -0.4 in their own base: 0.02 m apart in the rig
    assert "apart" in ws.violation(q)
    own = PolicyController(Still(), itf, ControllerConfig(workspace_lower=[-1, -1, -1], workspace_upper=[1, 1, 1]),
                           runner=SimulatedLatencyRunner(Still(), 0.0, lambda: 0.0), fk=fk)
    assert own.filter.workspace is not None and len(own.filter.workspace.boxes) == 2  # one per arm, own frames


# ---- serving: the node's parameters -----------------------------------------------------------------------

def test_serving_loads_the_calibration_and_reports_its_problems(tmp_path: Path) -> None:
    from robot_policy.cli.main import main
    from robot_policy.cli.serve import ServeConfig, node_calibration_args
    from robot_policy.runtime.rig import load_rig_calibration

    _write_b2b(tmp_path / "rig" / "base_to_base.yaml", when="2020-01-01T00:00:00+00:00")
    with pytest.warns(StaleCalibrationWarning, match="more than the allowed 90 days"):
        status = load_rig_calibration(str(tmp_path / "rig"), max_age_days=90)
    assert status.transform is not None and len(status.problems) == 1 and "2020-01-01" in status.problems[0]
    assert status.summary()["frames"] == "T_right_base_left_base"
    with pytest.warns(MissingCalibrationWarning):
        missing = load_rig_calibration(str(tmp_path / "none"), max_age_days=90)
    assert missing.transform is None and "no base-to-base calibration" in missing.problems[0]
    cfg = ServeConfig(bundle=str(tmp_path), calibration=str(tmp_path / "rig"), calibration_max_age_days=None)
    assert node_calibration_args(cfg) == ["-p", f"rig_calibration:={tmp_path / 'rig'}", "-p",
                                          "calibration_max_age_days:=0.0", "-p", "calibration_required:=false"]
    # a required calibration that is missing stops serve before any node starts
    assert main(["serve", f"bundle={tmp_path}", f"calibration={tmp_path / 'none'}", "calibration_required=true"]) == 2


@pytest.mark.ros
def test_the_policy_node_warns_of_a_stale_calibration_and_fails_a_required_missing_one(tmp_path: Path) -> None:
    import sys

    from robot_policy.pipelines.sil import ROS_INSTALL

    sys.path.insert(0, str(ROS_INSTALL))
    try:
        import rclpy
        from rclpy.parameter import Parameter
        from robot_policy_ros.policy_node import PolicyNode
    finally:
        sys.path.remove(str(ROS_INSTALL))
    _write_b2b(tmp_path / "rig" / "base_to_base.yaml", when="2020-01-01T00:00:00+00:00")
    rclpy.init(args=["test"])
    node = PolicyNode()  # unconfigured: parameters only, no topics
    try:
        node.set_parameters([Parameter("rig_calibration", value=str(tmp_path / "rig"))])
        with pytest.warns(StaleCalibrationWarning):
            status = node._load_calibration()
        assert status is not None and status.transform is not None and "2020-01-01" in status.problems[0]
        node.set_parameters([Parameter("rig_calibration", value=str(tmp_path / "none")),
                             Parameter("calibration_required", value=True)])
        with pytest.raises(RigFileError, match="none/base_to_base.yaml: no base-to-base calibration"):
            node._load_calibration()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
