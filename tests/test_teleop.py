"""Teleoperation without hardware: the terminal reader on a real pty, the key map, recorded streams, the
action mapping through the embodiment spec (with the real Panda IK), SpaceMouse HID reports, the leader
joint mapping, and sessions in the pybullet sim driven by recorded streams (discard leaves nothing)."""

from __future__ import annotations

import json
import os
import struct
import termios
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_policy.cli.main import main
from robot_policy.data.store import EpisodeStore
from robot_policy.envs.registry import make_env
from robot_policy.keys import OBS_STATE
from robot_policy.spaces import rotation as rot
from robot_policy.spaces.embodiment import EmbodimentSpec, load_embodiment
from robot_policy.spaces.unified import slot
from robot_policy.teleop.device import ArmCommand, Event, TeleopCommand, merge_commands
from robot_policy.teleop.event_log import StreamError, StreamWriter, read_stream
from robot_policy.teleop.keyboard import KeyboardConfig, KeyboardTeleop, RecordedKeys
from robot_policy.teleop.kinematics import make_kinematics
from robot_policy.teleop.leader import LeaderConfig, LeaderMapping, MalformedJointState
from robot_policy.teleop.mapping import ActionMapper
from robot_policy.teleop.spacemouse import (
    MouseState,
    ReportError,
    SpaceMouseConfig,
    SpaceMouseTeleop,
    axis_matrix,
    parse_report,
)
from robot_policy.teleop.terminal import TerminalKeys, decode_keys
from robot_policy.teleop.viewer import wants_viewer

HZ = 20.0
TASK = "pybullet_bimanual_lift"


def write_keys(path: Path, events: list[tuple[float, str]]) -> Path:
    with StreamWriter(path, "keyboard") as out:
        for t, key in events:
            out.write(t, key=key)
    return path


# ---- terminal ---------------------------------------------------------------------------------------
def test_decode_keys_names_specials_and_drops_unknown_sequences() -> None:
    data = b"w\x1b[A\x1b[B\r\x7f\t \x1b[3~\x1b[15~q\x1b\x03\xc3\xa9"
    assert decode_keys(data) == ["w", "up", "down", "enter", "backspace", "tab", "space", "delete", "q", "esc", "é"]


def test_terminal_reader_reads_keys_from_a_pty_without_blocking_and_restores_it() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "rb", buffering=0) as tty:
        before = termios.tcgetattr(slave)
        with TerminalKeys(tty) as keys:
            assert keys.read() == []  # nothing typed: returns at once
            mode = termios.tcgetattr(slave)
            assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO  # cbreak
            assert mode[3] & termios.ISIG  # Ctrl-C still interrupts
            os.write(master, b"ww\x1b[A\r")  # typed without a newline: cbreak hands it over at once
            assert keys.read() == ["w", "w", "up", "enter"]
        assert termios.tcgetattr(slave) == before
    os.close(master)


def test_terminal_reader_refuses_a_non_tty(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w+") as fh, pytest.raises(RuntimeError, match="not a tty.*events=FILE"):
        TerminalKeys(fh).__enter__()


# ---- key map ----------------------------------------------------------------------------------------
def test_presses_move_the_active_arm_and_carry_over_the_speed_limit() -> None:
    kb = KeyboardTeleop(("right", "left"), HZ, KeyboardConfig(translation_step=0.005, max_speed=0.2))  # 10 mm/tick
    cmd = kb.feed(["w"] * 5 + ["a"])
    np.testing.assert_allclose(cmd.arms["right"].twist, [0.01, 0.005, 0, 0, 0, 0])
    assert "left" not in cmd.arms
    np.testing.assert_allclose(kb.feed([]).arms["right"].twist, [0.01, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(kb.feed([]).arms["right"].twist, [0.005, 0, 0, 0, 0, 0])  # 5 presses = 25 mm
    assert kb.feed([]).arms == {}


def test_arm_switch_both_mode_gripper_toggle_speed_and_events_in_order() -> None:
    kb = KeyboardTeleop(("right", "left"), HZ)
    cmd = kb.feed(["n", "2", "r", "space", "enter"])
    assert cmd.events == (Event.START, Event.SAVE)
    assert cmd.arms["left"].gripper == 0.0 and cmd.arms["left"].twist[2] == pytest.approx(0.005)
    assert "right" not in cmd.arms
    cmd = kb.feed(["3", "space", "j"])  # left closed, right open: both close
    assert cmd.arms["right"].gripper == 0.0 and "left" in cmd.arms and cmd.arms["left"].gripper == 0.0
    assert cmd.arms["right"].twist[5] == pytest.approx(0.05) == cmd.arms["left"].twist[5]
    assert kb.feed(["space"]).arms["right"].gripper == 1.0  # both closed: both open
    kb.feed(["tab"])  # both -> right
    assert kb.active == "right"
    cmd = kb.feed(["+", "s", "backspace", "q", "x"])  # x is unbound
    assert cmd.arms["right"].twist[0] == pytest.approx(-0.01) and cmd.events == (Event.DISCARD, Event.QUIT)
    kb.reset()
    assert kb.gripper_open == {"right": True, "left": True}


def test_merged_commands_add_twists_and_keep_events_in_device_order() -> None:
    a = TeleopCommand({"right": ArmCommand(twist=np.ones(6))}, (Event.START,))
    b = TeleopCommand({"right": ArmCommand(twist=np.ones(6), gripper=0.0)}, (Event.SAVE,))
    m = merge_commands([a, b])
    np.testing.assert_allclose(m.arms["right"].twist, 2 * np.ones(6))
    assert m.arms["right"].gripper == 0.0 and m.events == (Event.START, Event.SAVE)
    assert a.arms["right"].twist[0] == 1.0  # the parts are not changed


# ---- recorded streams -------------------------------------------------------------------------------
@pytest.mark.parametrize("lines, match", [
    (['{"stream": "spacemouse", "version": 1}'], r":1: header must be"),
    (['{"stream": "keyboard", "version": 2}'], r":1: stream version 2"),
    (['{"stream": "keyboard", "version": 1}', '{"t": 1.0, "key": "w"}', '{"t": 0.5, "key": "w"}'],
     r":3: t = 0.5 goes back in time"),
    (['{"stream": "keyboard", "version": 1}', '{"t": 0.1}'], r":2: expected 'key' \(str\)"),
    (['{"stream": "keyboard", "version": 1}', '{"t": -1, "key": "w"}'], r":2: 't' must be"),
    (['{"stream": "keyboard", "version": 1}', 'w'], r":2: not JSON"),
    (['{"stream": "keyboard", "version": 1}', '{"t": 0, "key": "w", "x": 1}'], r":2: unknown key\(s\) \['x'\]"),
])
def test_a_bad_stream_names_file_and_line(tmp_path: Path, lines: list[str], match: str) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StreamError, match=match):
        read_stream(path, "keyboard", {"key": str})


def test_recorded_keys_arrive_by_session_time(tmp_path: Path) -> None:
    keys = RecordedKeys(write_keys(tmp_path / "k.jsonl", [(0.0, "n"), (0.05, "w"), (0.05, "a"), (0.15, "q")]))
    assert keys.read(0.0) == ["n"] and keys.read(1 / HZ) == ["w", "a"] and keys.read(2 / HZ) == []
    assert not keys.finished and keys.read(3 / HZ) == ["q"] and keys.finished


# ---- mapping ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lift_state() -> np.ndarray:
    env = make_env(TASK)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    return obs[OBS_STATE].astype(np.float64)


def test_an_ee_delta_moves_the_joint_targets_through_the_ik(lift_state: np.ndarray) -> None:
    spec = load_embodiment("panda_bimanual_joint")
    mapper = ActionMapper(spec, HZ, make_kinematics)
    mapper.reset(lift_state)
    hold = mapper(TeleopCommand())
    np.testing.assert_allclose(hold[slot("right_arm_joint_pos")][:7], lift_state[slot("right_arm_joint_pos")][:7])
    assert hold[slot("right_gripper_open")][0] == pytest.approx(1.0, abs=1e-3)
    start = lift_state[slot("right_eef_pos")].copy()
    twist = np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.1])  # 1 cm up, 0.1 rad about base z
    action = mapper(TeleopCommand({"right": ArmCommand(twist=twist, gripper=0.0)}))
    assert mapper._kin is not None
    start_rot = rot.rot6d_to_matrix(lift_state[slot("right_eef_rot6d")])

    def reached(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert mapper._kin is not None
        pos, quat = mapper._kin.forward("right", act[slot("right_arm_joint_pos")][:7].astype(np.float64))
        return pos, rot.matrix_to_rotvec(rot.quat_to_matrix(quat) @ start_rot.T)

    # 0.1 rad of wrist turn is more than one tick at half the joint speed limit (0.065 rad): part of it now
    step = np.abs(action[slot("right_arm_joint_pos")][:7] - lift_state[slot("right_arm_joint_pos")][:7])
    assert np.all(step <= np.array(spec.arms["right"].joint_vel_max) * 0.5 / HZ + 1e-6)
    assert 0.03 < reached(action)[1][2] < 0.09
    for _ in range(3):  # no command: the arm keeps closing the gap to the held target
        action = mapper(TeleopCommand())
    pos, turned = reached(action)
    np.testing.assert_allclose(pos, start + [0, 0, 0.01], atol=1e-3)
    np.testing.assert_allclose(turned, [0, 0, 0.1], atol=5e-3)
    assert action[slot("right_gripper_open")][0] == 0.0
    # the left arm was not commanded: it holds
    np.testing.assert_allclose(action[slot("left_arm_joint_pos")][:7], lift_state[slot("left_arm_joint_pos")][:7],
                               atol=1e-6)
    assert np.all(action[spec.action.mask == 0] == 0)
    mapper.close()


def test_joint_targets_stay_inside_the_limits_and_move_at_most_the_speed_limit(lift_state: np.ndarray) -> None:
    spec = load_embodiment("panda_bimanual_joint")
    mapper = ActionMapper(spec, HZ, None)
    mapper.reset(lift_state)
    hi = np.array(spec.arms["right"].joint_pos_max)
    far = hi + 1.0  # a leader beyond every limit
    step = np.array(spec.arms["right"].joint_vel_max) * mapper.cfg.joint_speed_fraction / HZ
    q0 = lift_state[slot("right_arm_joint_pos")][:7]
    first = mapper(TeleopCommand({"right": ArmCommand(joints=far)}))[slot("right_arm_joint_pos")][:7]
    np.testing.assert_allclose(first, np.minimum(q0 + step, hi), atol=1e-6)
    for _ in range(200):
        last = mapper(TeleopCommand({"right": ArmCommand(joints=far)}))[slot("right_arm_joint_pos")][:7]
    np.testing.assert_allclose(last, hi, atol=1e-6)
    with pytest.raises(ValueError, match="needs the embodiment's kinematics"):
        mapper(TeleopCommand({"right": ArmCommand(twist=np.ones(6) * 0.001)}))
    with pytest.raises(ValueError, match="expected 7 values"):
        mapper(TeleopCommand({"right": ArmCommand(joints=np.zeros(3))}))


def test_an_ee_pose_embodiment_gets_the_pose_target_itself(lift_state: np.ndarray) -> None:
    spec = load_embodiment("panda_bimanual_eef")
    mapper = ActionMapper(spec, HZ, make_kinematics)  # needs no kinematics: never built
    mapper.reset(lift_state)
    action = mapper(TeleopCommand({"left": ArmCommand(twist=np.array([0.02, 0, 0, 0, 0, 0]))}))
    native = spec.action.from_unified(action.astype(np.float64))
    np.testing.assert_allclose(native["left_eef_pos"], lift_state[slot("left_eef_pos")] + [0.02, 0, 0], atol=1e-6)
    np.testing.assert_allclose(native["right_eef_pos"], lift_state[slot("right_eef_pos")], atol=1e-6)
    assert mapper._kin is None
    with pytest.raises(ValueError, match="needs a joint-position embodiment"):
        mapper(TeleopCommand({"left": ArmCommand(joints=np.zeros(7))}))


def test_an_action_teleop_cannot_drive_is_refused_naming_the_field() -> None:
    raw: dict[str, Any] = dict(load_embodiment("panda_single_joint").raw)
    raw["action"] = {**raw["action"], "base": {"slot": "base_vel", "dim": 3}}
    with pytest.raises(ValueError, match=r"action field 'base' \(slot base_vel\) cannot be teleoperated"):
        ActionMapper(EmbodimentSpec.from_dict(raw), HZ)


# ---- SpaceMouse -------------------------------------------------------------------------------------
def report(rid: int, *values: int) -> bytes:
    return bytes([rid]) + struct.pack(f"<{len(values)}h", *values)


def test_hid_reports_parse_translation_rotation_six_axes_and_buttons() -> None:
    state = MouseState(np.zeros(6))
    assert parse_report(report(1, 100, -200, 350), state)
    assert parse_report(report(2, -1, 2, -32768), state)
    np.testing.assert_array_equal(state.axes, [100, -200, 350, -1, 2, -32768])
    assert parse_report(report(1, 1, 2, 3, 4, 5, 6), state)  # SpaceMouse Wireless: all six in report 1
    np.testing.assert_array_equal(state.axes, [1, 2, 3, 4, 5, 6])
    assert not parse_report(bytes([3, 0b10, 0]), state) and state.buttons == 2
    assert not parse_report(bytes([0x17, 100]), state)  # battery: no motion
    with pytest.raises(ReportError, match="report id 2: 4 data bytes"):
        parse_report(bytes([2, 1, 2, 3, 4]), state)


def test_axis_map_must_be_a_rotation() -> None:
    np.testing.assert_array_equal(axis_matrix(("-y", "-x", "-z")), [[0, -1, 0], [-1, 0, 0], [0, 0, -1]])
    with pytest.raises(ValueError, match="not a rotation"):
        SpaceMouseConfig(axes=("y", "x", "z"))
    with pytest.raises(ValueError, match="'w' is not one of"):
        axis_matrix(("w", "x", "z"))


def test_spacemouse_deflection_becomes_a_velocity_buttons_toggle_and_switch_and_silence_stops() -> None:
    cfg = SpaceMouseConfig(max_speed=0.2, max_angular_speed=1.0, deadzone=0.1)
    sm = SpaceMouseTeleop(("right", "left"), HZ, n_devices=1, config=cfg)
    # full push away from the operator (-y on the device) = +x of the arm; a twist under the dead zone
    cmd = sm.feed([(0, report(1, 0, -350, 0)), (0, report(2, 0, 0, 20))], t=0.0)
    np.testing.assert_allclose(cmd.arms["right"].twist, [0.2 / HZ, 0, 0, 0, 0, 0])
    cmd = sm.feed([(0, bytes([3, 1])), (0, bytes([3, 0]))], t=0.05)  # left button: gripper
    assert cmd.arms["right"].gripper == 0.0
    cmd = sm.feed([(0, bytes([3, 2])), (0, report(1, 0, 0, -175))], t=0.1)  # right button: now the left arm
    assert "right" not in cmd.arms or cmd.arms["right"].twist is None
    expected_z = (0.5 - 0.1) / 0.9 * 0.2 / HZ  # half deflection up (-z on the device), dead zone removed
    np.testing.assert_allclose(cmd.arms["left"].twist, [0, 0, expected_z, 0, 0, 0])
    assert sm.feed([], t=0.1 + cfg.stale_s + 0.01).arms == {}  # no reports for stale_s: no motion
    with pytest.raises(ValueError, match="3 devices for 2 arms"):
        SpaceMouseTeleop(("right", "left"), HZ, n_devices=3)


def test_spacemouse_reports_read_are_recorded_as_a_replayable_stream(tmp_path: Path) -> None:
    from robot_policy.teleop.spacemouse import RecordedReports, SpaceMouseDevice

    reports = [(0.0, 0, report(1, 0, 0, -350)), (0.05, 0, bytes([3, 1])), (0.1, 0, report(1, 0, 0, 0))]
    with StreamWriter(tmp_path / "in.jsonl", "spacemouse") as out:
        for t, dev, rep in reports:
            out.write(t, device=dev, report=rep.hex())
    rec = tmp_path / "rec.jsonl"
    with SpaceMouseDevice(RecordedReports(tmp_path / "in.jsonl"), ("right", "left"), HZ, record_to=rec) as sm:
        first = [sm.poll(k / HZ) for k in range(3)]
    replayed = RecordedReports(rec)
    assert [replayed.read(k / HZ) for k in range(3)] == [[(0, rep)] for _, _, rep in reports]
    with SpaceMouseDevice(RecordedReports(rec), ("right", "left"), HZ) as sm:
        again = [sm.poll(k / HZ) for k in range(3)]
    for a, b in zip(first, again, strict=True):
        assert a.arms.keys() == b.arms.keys() and a.status == b.status


def test_one_spacemouse_per_arm() -> None:
    sm = SpaceMouseTeleop(("right", "left"), HZ, n_devices=2, config=SpaceMouseConfig(deadzone=0.0))
    cmd = sm.feed([(1, report(1, 350, 0, 0)), (0, report(2, 0, 0, -350)), (1, bytes([3, 1]))], t=0.0)
    np.testing.assert_allclose(cmd.arms["left"].twist, [0, -0.15 / HZ, 0, 0, 0, 0])  # cap right = -y
    np.testing.assert_allclose(cmd.arms["right"].twist, [0, 0, 0, 0, 0, 0.8 / HZ])  # twist about -z_dev = +z
    assert cmd.arms["left"].gripper == 0.0 and cmd.arms["right"].gripper is None
    cmd = sm.feed([(0, bytes([3, 2]))], t=0.05)  # the right button switches nothing with one device per arm
    assert "spacemouse -> right, left" in cmd.status
    with pytest.raises(ValueError, match="report from device 2; 2 device"):
        sm.feed([(2, report(1, 0, 0, 0))], t=0.1)


# ---- leader -----------------------------------------------------------------------------------------
def test_leader_joints_map_by_name_with_sign_offset_limits_and_gripper_range() -> None:
    spec = load_embodiment("panda_bimanual_joint")
    cfg = LeaderConfig(joint_map={"gello_r_j1": "right_joint_pos_1", "gello_r_grip": "right_gripper"},
                       signs={"right_joint_pos_2": -1}, offsets={"right_joint_pos_3": 0.5},
                       gripper_range={"right_gripper": [0.8, 0.0]})  # a trigger: 0.8 rad squeezed = closed
    lead = LeaderMapping(spec, cfg)
    names = ["gello_r_j1", "right_joint_pos_2", "right_joint_pos_3", "right_joint_pos_4", "right_joint_pos_5",
             "right_joint_pos_6", "gello_r_grip", "extra_sensor"]
    assert lead.update(names, [0.1, 0.2, 0.3, 0.0, 9.0, 1.0, 0.2, 5.0]) == 7
    arms = lead.commands()
    assert arms["right"].joints is None and arms["right"].gripper == pytest.approx(0.75)  # joint 7 not heard yet
    lead.update(["right_joint_pos_7"], [0.0])
    q = lead.commands()["right"].joints
    assert q is not None
    lim = spec.arms["right"]
    np.testing.assert_allclose(q, [0.1, -0.2, 0.8, lim.joint_pos_max[3], lim.joint_pos_max[4], 1.0, 0.0])
    assert "left" not in lead.commands()
    with pytest.raises(MalformedJointState, match="reads nan"):
        lead.update(["gello_r_j1"], [float("nan")])
    with pytest.raises(MalformedJointState, match="2 names but 1 positions"):
        lead.update(["a", "b"], [0.0])
    with pytest.raises(ValueError, match=r"unknown follower joint\(s\) \['right_joint_8'\]; follower joints: "):
        LeaderMapping(spec, LeaderConfig(joint_map={"x": "right_joint_8"}))


# ---- sessions in the sim ----------------------------------------------------------------------------
def test_a_discarded_episode_leaves_nothing_and_the_next_start_takes_the_next_seed(tmp_path: Path) -> None:
    keys = [(0.0, "n"), *[(0.05 * k, "r") for k in range(1, 6)], (0.3, "backspace"),
            (0.5, "n"), *[(0.5 + 0.05 * k, "f") for k in range(1, 4)], (0.9, "enter"),
            (1.0, "n"), (1.05, "w"), (1.1, "q")]  # the third episode is in flight at quit: not saved
    stream = write_keys(tmp_path / "k.jsonl", keys)
    out = tmp_path / "s.zarr"
    assert main(["teleop", f"task={TASK}", "device=keyboard", f"events={stream}", f"out={out}", "seed=7",
                 "viewer=auto"]) == 0
    store = EpisodeStore.open(out)
    assert store.n_episodes == 1 and store.attrs["provenance"]["source"] == "teleop"
    ep = store.get_episode(0)
    assert int(store.episode_meta()["seed"][0]) == 8  # seed 7 was the discarded one
    assert len(ep["action"]) == store.n_steps == 8  # ticks 0.5 .. 0.85 (enter ends it): nothing of the others
    assert all(store.array(k).shape[0] == 8 for k in store.data_keys)  # not even uncommitted rows on disk
    assert store.episode_meta()["language"][0] == make_env(TASK).task.language
    z = ep["state"][:, slot("right_eef_pos")][:, 2]
    assert z[-1] < z[0] - 0.01  # three presses of f: 15 mm down, reached within the episode
    np.testing.assert_allclose(np.diff(ep["timestamp"]), 1 / HZ)
    assert "sim_state" in ep and "object_state" in ep


def test_a_spacemouse_stream_and_recorded_episode_keys_drive_the_sim(tmp_path: Path) -> None:
    with StreamWriter(tmp_path / "sm.jsonl", "spacemouse") as out:
        for k in range(1, 21):  # 1 s of full lift on the right arm's cap, reports at the control rate
            out.write(k / HZ, device=0, report=report(1, 0, 0, -350).hex())
        out.write(21 / HZ, device=0, report=report(1, 0, 0, 0).hex())
        out.write(22 / HZ, device=0, report=bytes([3, 1]).hex())
    keys = write_keys(tmp_path / "k.jsonl", [(0.0, "n"), (1.5, "enter"), (1.6, "q")])
    store = tmp_path / "s.zarr"
    assert main(["teleop", "device=spacemouse", f"events={tmp_path / 'sm.jsonl'}", f"keys={keys}", f"out={store}",
                 "spacemouse.max_speed=0.1"]) == 0
    ep = EpisodeStore.open(store).get_episode(0)
    z = ep["state"][:, slot("right_eef_pos")][:, 2]
    assert z[-1] - z[0] == pytest.approx(0.1 * 20 / HZ, abs=0.01)  # 0.1 m/s for 1 s
    left = ep["state"][:, slot("left_eef_pos")]
    assert np.abs(left - left[0]).max() < 2e-3  # the other arm held
    grip = ep["action"][:, slot("right_gripper_open")][:, 0]
    assert grip[0] == pytest.approx(1.0, abs=1e-3) and grip[-1] == 0.0  # the left button closed it


def test_teleop_cli_refuses_bad_options_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teleop", "device=joystick", f"out={tmp_path / 's'}"]) == 2
    assert "device: unknown 'joystick'; devices: keyboard, spacemouse, leader" in capsys.readouterr().err
    assert main(["teleop", "device=leader", "events=x.jsonl", f"out={tmp_path / 's'}"]) == 2
    assert "leader arms are read live" in capsys.readouterr().err
    assert main(["teleop", "device=leader", "record_events=x.jsonl", f"out={tmp_path / 's'}"]) == 2
    assert "record them as a bag" in capsys.readouterr().err
    assert main(["teleop", f"events={tmp_path / 'missing.jsonl'}", f"out={tmp_path / 's'}"]) == 1
    assert "no such keyboard stream file" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["teleop", "--help"]) == 0
    text = capsys.readouterr().out
    assert "keyboard.translation_step" in text and "leader.joint_map" in text


def test_viewer_runs_headless_without_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert wants_viewer("auto") is False and wants_viewer("off") is False
    with pytest.raises(RuntimeError, match="no display"):
        wants_viewer("on")
    monkeypatch.setenv("DISPLAY", ":0")
    assert wants_viewer("auto") is True


def test_the_viewer_shows_the_camera_image_of_the_scene() -> None:
    """Drawn into matplotlib's Agg backend (no display here); with a display the same code runs in Tk."""
    from robot_policy.teleop.session import SessionStatus
    from robot_policy.teleop.viewer import SceneViewer

    env = make_env(TASK)
    try:
        env.reset(seed=0)
        with SceneViewer("front", height=60, width=80, fps=1000.0, backend="Agg") as viewer:
            viewer(SessionStatus(state="recording", seed=0, step=3), env)
            shown = np.asarray(viewer._image.get_array())
            np.testing.assert_array_equal(shown, env.render("front", 60, 80))
            assert shown.std() > 10  # a scene, not a blank frame
            assert "seed 0 step 3" in viewer._fig.axes[0].get_title()
    finally:
        env.close()


def test_status_line_text_and_messages_off_a_terminal() -> None:
    import io

    from rich.console import Console

    from robot_policy.teleop.session import SessionStatus
    from robot_policy.teleop.status import StatusLine, render_status

    status = SessionStatus(state="recording", seed=3, step=10, max_steps=200, success=True, saved=1, discarded=2,
                           device="arm right | grip R:open L:open", message="recording seed 3")
    assert render_status(status).plain == ("REC  seed 3 step 10/200 success | saved 1 discarded 2 | arm right | "
                                           "grip R:open L:open | recording seed 3")
    out = io.StringIO()
    with StatusLine(Console(file=out, force_terminal=False)) as line:
        for _ in range(3):
            line(status, None)  # type: ignore[arg-type]  # the status line does not look at the env
        status.message = "saved episode 0"
        line(status, None)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == ["recording seed 3", "saved episode 0"]  # each message once


def test_a_live_session_can_record_the_keys_it_read(tmp_path: Path) -> None:
    """record_events= writes the keys as read; the file replays to the same store content."""
    src = write_keys(tmp_path / "k.jsonl", [(0.0, "n"), (0.05, "a"), (0.1, "a"), (0.2, "enter"), (0.25, "q")])
    from robot_policy.teleop.keyboard import KeyboardDevice

    rec = tmp_path / "rec.jsonl"
    with KeyboardDevice(RecordedKeys(src), KeyboardTeleop(("right", "left"), HZ), record_to=rec) as dev:
        for k in range(6):
            dev.poll(k / HZ)
    lines = [json.loads(line) for line in rec.read_text().splitlines()]
    assert lines[0]["stream"] == "keyboard"
    assert [(e["t"], e["key"]) for e in lines[1:]] == [(0.0, "n"), (0.05, "a"), (0.1, "a"), (0.2, "enter"),
                                                         (0.25, "q")]
