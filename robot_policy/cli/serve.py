"""robot-policy serve bundle=BUNDLE [params=FILE] [backend=onnxruntime] [dds=external|loopback] [calibration=calib/RIG]

Runs the policy node (`robot_policy_ros.policy_node`, an rclpy LifecycleNode) on a robot's topics: joint
states, end-effector poses and (if the policy observes one) the object state in; one JointTrajectory per arm
out, for ros2_control's joint_trajectory_controller; `/policy/estop` (latched) in; `/diagnostics` out.
Parameters come from FILE (default: the package's `config/policy_node.yaml`, documented in the README:
joint names, limits margin, scheduler, timeouts); `bundle=` and `backend=` override it. The node starts
unconfigured: drive it with `ros2 lifecycle set /policy_node configure`, then `activate` (`deactivate`
holds the arms). `calibration=calib/RIG` gives the node the rig's base-to-base transform (both end effectors
in one frame); a missing or stale one warns. `dds=external` (default) leaves DDS to your configuration; `dds=loopback` confines it to
this machine (tests, bench). Needs the ROS 2 wheels and the colcon build: `make ros`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "run the policy node (ROS 2 LifecycleNode) on a robot's topics"


@dataclass
class ServeConfig:
    #: deploy bundle (robot-policy export) or checkpoint directory
    bundle: str = ""
    #: the node's parameters file; empty: ros_ws/src/robot_policy_ros/config/policy_node.yaml
    params: str = ""
    #: the bundle's backend (torch | torch.compile | onnxruntime | tensorrt); empty: the params file's
    backend: str = ""
    #: external: your DDS configuration (a robot); loopback: this machine only (robot_policy.runtime.dds)
    dds: str = "external"
    #: ROS_DOMAIN_ID with dds=loopback
    domain_id: int = 0
    #: the rig's calibration (calib/RIG or its base_to_base.yaml) for the node's rig_calibration; empty: the
    #: params file's. Missing or stale (older than calibration_max_age_days): a warning, here and in the node
    calibration: str = ""
    #: a calibration older than this (days) warns; null: no age limit
    calibration_max_age_days: float | None = 90.0
    #: a missing base-to-base file is an error (here, and the node's configure fails)
    calibration_required: bool = False

    def __post_init__(self) -> None:
        if not self.bundle:
            raise ValueError("bundle=: a deploy bundle (robot-policy export) or checkpoint directory is required")
        if not Path(self.bundle).exists():
            raise FileNotFoundError(f"bundle={self.bundle}: no such directory")
        if self.dds not in ("external", "loopback"):
            raise ValueError(f"dds must be external or loopback, got {self.dds!r}")


def node_calibration_args(cfg: ServeConfig) -> list[str]:
    """The policy node's ``rig_calibration`` parameters for ``cfg.calibration`` (the node's 0 days: no limit)."""
    return ["-p", f"rig_calibration:={Path(cfg.calibration).resolve()}",
            "-p", f"calibration_max_age_days:={float(cfg.calibration_max_age_days or 0.0)}",
            "-p", f"calibration_required:={str(cfg.calibration_required).lower()}"]


def main(argv: list[str]) -> int:
    from robot_policy.data.rig_file import RigFileError
    from robot_policy.paths import REPO_ROOT
    from robot_policy.pipelines.sil import ROS_INSTALL
    from robot_policy.runtime.dds import loopback_env
    from robot_policy.runtime.rig import load_rig_calibration

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", ServeConfig))
        return 0
    try:
        cfg = parse_overrides(ServeConfig, argv, "serve")
    except (ConfigError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    if cfg.calibration:
        try:  # checked here too, so a missing or stale calibration shows before the node starts
            load_rig_calibration(cfg.calibration, max_age_days=cfg.calibration_max_age_days,
                                 required=cfg.calibration_required)
        except RigFileError as e:
            return fail(str(e))
    if not ROS_INSTALL.is_dir():
        return fail(f"the ROS 2 package is not built ({ROS_INSTALL} is missing): run `make ros`", code=1)
    params = Path(cfg.params) if cfg.params else REPO_ROOT / "ros_ws/src/robot_policy_ros/config/policy_node.yaml"
    if not params.is_file():
        return fail(f"params={params}: no such file")
    env = loopback_env(cfg.domain_id) if cfg.dds == "loopback" else {**os.environ, "ROBOT_POLICY_DDS": "external"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROS_INSTALL), env.get("PYTHONPATH", "")) if p)
    args = [sys.executable, "-m", "robot_policy_ros.policy_node", "--ros-args", "--params-file", str(params),
            "-p", f"policy:={Path(cfg.bundle).resolve()}"]
    if cfg.backend:
        args += ["-p", f"backend:={cfg.backend}"]
    if cfg.calibration:
        args += node_calibration_args(cfg)
    print(f"policy_node: {cfg.bundle} (params {params}); configure and activate it with `ros2 lifecycle set "
          "/policy_node configure|activate`", flush=True)
    try:
        return subprocess.call(args, env=env)
    except KeyboardInterrupt:
        return 130
