"""The environment every ROS 2 process of this stack starts with on a development or CI machine: DDS on
loopback only (``../shared/ROS2.md``). No ROS import here: the variables must be set before rclpy loads.

Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` at participant creation; a wrong path only logs an XML
error and silently falls back to multicast discovery on every interface, so the file is checked here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from robot_policy.paths import CONFIG_DIR

#: the loopback-only participant profile (every socket on 127.0.0.1)
LOOPBACK_PROFILE = CONFIG_DIR / "dds" / "fastdds_loopback.xml"


def loopback_env(domain_id: int, log_dir: str | Path | None = None,
                 base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus the loopback DDS settings for ROS domain
    ``domain_id`` (0-101 on Linux: Fast DDS maps it to UDP ports), with ROS logs under ``log_dir``."""
    if not LOOPBACK_PROFILE.is_file():
        raise FileNotFoundError(f"the loopback DDS profile {LOOPBACK_PROFILE} is missing: refusing to start "
                                "ROS 2 with Fast DDS's default (multicast, every interface)")
    if not 0 <= domain_id <= 101:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
    env = dict(os.environ if base is None else base)
    env.update({
        "FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
        "ROS_DOMAIN_ID": str(domain_id),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    })
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    return env


def require_loopback(env: Mapping[str, str] | None = None) -> None:
    """Raise unless ``env`` (default: os.environ) names the loopback profile, existing: the check a ROS
    process runs on itself before ``rclpy.init``. On a real robot, whose DDS configuration is the user's,
    ``robot-policy serve`` sets ``ROBOT_POLICY_DDS=external`` and this check stands aside."""
    env = os.environ if env is None else env
    if env.get("ROBOT_POLICY_DDS") == "external":
        return
    path = env.get("FASTDDS_DEFAULT_PROFILES_FILE")
    if not path or not Path(path).is_file():
        raise RuntimeError(f"FASTDDS_DEFAULT_PROFILES_FILE={path!r} is not a file: start ROS 2 processes with "
                           f"robot_policy.runtime.dds.loopback_env() (profile {LOOPBACK_PROFILE})")
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "SYSTEM_DEFAULT":
        raise RuntimeError("ROS_AUTOMATIC_DISCOVERY_RANGE must be SYSTEM_DEFAULT with the loopback profile")
