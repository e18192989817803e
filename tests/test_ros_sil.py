"""The ROS 2 nodes for real: rclpy over Fast DDS on loopback, separate processes, no mocks.

* ``robot-policy sil`` runs the simulated robot and the policy node as two processes, drives the policy
  node's lifecycle, finishes every episode and writes eval.json and a rosbag2 (mcap) bag that ``rosbags``
  opens, holding joint states and per-arm trajectories;
* the policy node, driven through its lifecycle from another process, sends nothing while inactive, and a
  latched e-stop survives deactivate / activate;
* malformed joint states (unknown names, wrong lengths, NaN) are rejected with a diagnostic and nothing is
  sent because of them.

Needs ``make ros`` (the ROS 2 wheels and the colcon build); skips without rclpy. Every process gets the
loopback DDS profile and a domain id of its own (robot_policy.runtime.dds.loopback_env).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoint import train_tiny_checkpoint

from robot_policy.pipelines.sil import ROS_INSTALL
from robot_policy.runtime.dds import LOOPBACK_PROFILE, loopback_env

TASK = "pybullet_bimanual_lift"

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _domain() -> int:
    # one domain per xdist worker and per test module run: parallel DDS participants never meet
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 60 + int(worker.removeprefix("gw") or 0) * 10 + os.getpid() % 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rdt_tiny`` trained 2 steps on one expert episode: its chunks are near the demonstrations' mean."""
    root = tmp_path_factory.mktemp("sil_ckpt")
    return train_tiny_checkpoint(root)


def test_ros_install_is_built() -> None:
    assert ROS_INSTALL.is_dir(), "run `make ros`: the colcon install of robot_policy_ros is missing"
    assert LOOPBACK_PROFILE.is_file()


def test_sil_runs_episodes_over_ros_and_records_a_bag(checkpoint: Path, tmp_path: Path) -> None:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    out = tmp_path / "sil"
    rc = subprocess.run(
        [sys.executable, "-m", "robot_policy.cli.main", "sil", f"task={TASK}", f"policy={checkpoint}", "episodes=2",
         "seed=1000000", f"out={out}", "max_steps=30", f"domain_id={_domain()}"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240, capture_output=True, text=True, check=False)
    logs = "".join((out / n).read_text() for n in ("policy_node.log", "sim_robot.log") if (out / n).exists())
    assert rc.returncode == 0, rc.stdout + rc.stderr + logs
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 2 and summary["errored"] == 0, summary
    assert [e["seed"] for e in summary["per_episode"]] == [1000000, 1000001]
    # each episode ran to the 30-step limit and the sim followed trajectories the policy node sent
    assert all(e["length"] == 30 for e in summary["per_episode"]), summary["per_episode"]
    assert all(e["commands"] > 0 and e["rejected"] == 0 for e in summary["per_episode"]), summary["per_episode"]
    assert summary["loop_timing"]["loop_period_error"]["p50_ms"] >= 0
    typestore = get_typestore(Stores.ROS2_KILTED)
    counts: dict[str, int] = {}
    positions = []
    assert (out / "bag" / "bag.mcap").is_file()
    with Reader(out / "bag") as reader:
        for conn, _t, raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/right_controller/joint_trajectory":
                assert msg.joint_names == [f"right_joint_pos_{i}" for i in range(1, 8)] + ["right_gripper"]
                positions.append(np.array([p.positions for p in msg.points]))
    # 2 x 30 steps at 20 Hz were published (best effort: a loaded machine may drop some on the way)
    assert counts.get("/joint_states", 0) >= 30, counts
    assert counts.get("/right_controller/joint_trajectory", 0) > 0 and counts.get("/left_controller/joint_trajectory", 0) > 0
    assert all(np.isfinite(p).all() for p in positions)


def _udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket process ``pid`` holds (Linux /proc): its socket inodes from
    /proc/PID/fd, looked up in /proc/PID/net/udp and udp6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # IPv4 in little-endian hex; an IPv6 socket is reported as its hex (the profile opens none)
                addr = ".".join(str(b) for b in raw[::-1]) if table == "udp" else raw.hex()
                found.append((addr, int(hex_port, 16)))
    return found


def _start(module: str, params: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", module, "--ros-args"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_lifecycle_from_another_process_estop_latched_and_malformed_rejected(checkpoint: Path,
                                                                            tmp_path: Path) -> None:
    env = loopback_env(_domain() + 5, log_dir=tmp_path / "ros_logs")
    env["PYTHONPATH"] = os.pathsep.join([str(ROS_INSTALL), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    script = Path(__file__).with_name("ros_lifecycle_driver.py")
    node = _start("robot_policy_ros.policy_node", [f"policy:={checkpoint}", "object_state_dim:=12",
                                                    "diagnostics_period_s:=0.2"], env, tmp_path / "policy_node.log")
    try:
        driver = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while "configured:" not in (tmp_path / "policy_node.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        # while both talk over DDS: every UDP socket of either process is bound to 127.0.0.1
        sockets = _udp_sockets(node.pid) + _udp_sockets(driver.pid)
        out, err = driver.communicate(timeout=180)
        rc = subprocess.CompletedProcess(driver.args, driver.returncode, out, err)
    finally:
        node.send_signal(2)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
    log = (tmp_path / "policy_node.log").read_text()
    assert rc.returncode == 0, rc.stdout + rc.stderr + log
    assert len(sockets) >= 2, sockets  # DDS participants were up when looked at
    assert all(addr == "127.0.0.1" for addr, _port in sockets), sockets
    report = json.loads(rc.stdout.strip().splitlines()[-1])
    # inactive: nothing sent, although observations flowed
    assert report["sent_while_inactive"] == 0
    # active with fresh observations: trajectories went out
    assert report["sent_while_active"] > 0
    # the e-stop latched: after it, through deactivate and activate, the only command is the one stop
    assert report["mode_after_estop_reactivate"] == "estop"
    assert report["sent_after_estop"] <= 1
    # a malformed joint state is counted and named in diagnostics
    assert report["malformed_messages"] >= 3, report
    assert "missing joint" in report["last_malformed"] or "NaN" in report["last_malformed"], report
