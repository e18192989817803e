"""``robot-policy record config=RIG out=STORE``: record a rig's episodes over ROS 2 into an episode store.

The recording node (``robot_policy_ros.record_node``, the colcon-built package: ``make ros``) runs in this
process: it subscribes to the rig config's joint-state, command and camera topics (and reads its RealSense
cameras directly), aligns every stream to the control rate (:mod:`robot_policy.teleop.rig_recorder`) and writes
each episode through the store's streaming writer. Episodes are started and stopped through its services
(``/record/start``, ``/record/stop`` with the outcome, ``/record/discard``, ``/record/status``), the marker
topic, or by pauses in the commands (the rig config's ``episodes``); every finished episode's report (steps,
refused steps, skew per stream) is published on ``/record/report`` and collected in the returned summary.

The store is created at the first episode's start, when every camera has shown its size and intrinsics.
What is ROS-free and shared with any source lives here: the store's cameras (with their calibration files) and
opening the store.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.data.rig_file import (
    DEFAULT_MAX_AGE_DAYS,
    base_to_base_file,
    load_camera_calibration,
    load_rig_base_to_base,
)
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.envs.registry import load_task_config
from robot_policy.runtime.dds import loopback_env
from robot_policy.teleop.rig_config import CameraSpec, RigConfig, load_rig_config
from robot_policy.teleop.rig_recorder import Aligner, EpisodeAssembler, RigRecorder

DDS_MODES: tuple[str, ...] = ("loopback", "external")


@dataclass
class RecordConfig:
    """Options of ``robot-policy record``."""

    #: rig config: configs/rig/NAME.yaml or a YAML path
    config: str = ""
    #: episode store to write (zarr directory)
    out: str = ""
    #: stop after this many committed episodes; 0 = until Ctrl-C
    episodes: int = 0
    #: add to an existing store of the same rig (embodiment, rate and cameras must match)
    append: bool = False
    #: replace an existing store at out
    overwrite: bool = False
    #: seed recorded with each episode (a sim rig's reset seed); the node's `seed` parameter changes it live
    seed: int = -1
    #: loopback: DDS on this machine only (configs/dds, ROS2.md); external: the environment's DDS configuration
    dds: str = "loopback"
    #: ROS_DOMAIN_ID (0-101); -1 = the environment's (0 when unset)
    domain_id: int = -1
    #: give up when the first episode has not started after this many seconds; 0 = wait forever
    idle_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.config:
            raise ValueError("record: config= is required (a rig config, configs/rig/NAME.yaml)")
        if not self.out:
            raise ValueError("record: out= is required (the episode store to write)")
        if self.episodes < 0:
            raise ValueError(f"record: episodes={self.episodes} must be >= 0")
        if self.dds not in DDS_MODES:
            raise ValueError(f"record: dds={self.dds!r}; modes: {', '.join(DDS_MODES)}")
        if not -1 <= self.domain_id <= 101:
            raise ValueError(f"record: domain_id={self.domain_id} must be -1 (the environment's) or 0..101")
        if self.append and self.overwrite:
            raise ValueError("record: append=true and overwrite=true contradict each other")


# ---- cameras and the store ---------------------------------------------------------------------------------

def calibrated_camera(camera: CameraSpec, height: int, width: int, k: np.ndarray | None,
                      extrinsics: np.ndarray | None, max_age_days: float | None = DEFAULT_MAX_AGE_DAYS) -> CameraInfo:
    """The store's record of one rig camera: what the camera reported (size, factory / CameraInfo-topic K) and
    the rig config's extrinsics, replaced by its ``calibration:`` file where it has one.

    The calibration file (``robot_policy.data.rig_file``, written by ``robot-policy calibrate``) gives K,
    distortion, serial, calibrated_at and, after hand-eye, T_rig_camera (which wins over the config's
    ``extrinsics``). A stale file (older than ``max_age_days``, or another camera's serial) warns and is used;
    one made for another image size is an error, since its K would be wrong in every pixel.
    """
    if camera.calibration is None:
        return CameraInfo(int(height), int(width), k, extrinsics)
    calib = load_camera_calibration(camera.calibration, max_age_days=max_age_days, expected_serial=camera.realsense)
    if (calib.height, calib.width) != (int(height), int(width)):
        raise ValueError(f"camera {camera.name}: calibration {camera.calibration} is for {calib.width}x"
                         f"{calib.height} images, the camera streams {int(width)}x{int(height)}")
    info = calib.to_camera_info()
    if info.extrinsics is None and extrinsics is not None:
        info = dataclasses.replace(info, extrinsics=extrinsics)
    return info


def camera_infos(rig: RigConfig, measured: Mapping[str, tuple[int, int, np.ndarray | None]]) -> dict[str, CameraInfo]:
    """The store's cameras: per rig camera its (height, width, K or None) as measured (a RealSense's factory
    intrinsics, a CameraInfo topic's K), then the rig config's extrinsics and calibration file."""
    missing = set(rig.cameras) - set(measured)
    if missing:
        raise ValueError(f"{rig.path}: camera(s) {sorted(missing)} have not shown their image size yet")
    out = {}
    for name, cam in rig.cameras.items():
        h, w, k = measured[name]
        extr = None if cam.extrinsics is None else np.asarray(cam.extrinsics, np.float64)
        out[name] = calibrated_camera(cam, h, w, k, extr, rig.calibration.max_age_days)
    return out


def rig_base_to_base(rig: RigConfig) -> dict[str, Any] | None:
    """The rig config's base-to-base transform as the store's ``base_to_base`` attr (None when the config names
    none, or the file is missing: a :class:`~robot_policy.data.rig_file.MissingCalibrationWarning`, an error
    with ``calibration.required``). Stale (too old, or measured through another camera than the rig's):
    a warning, and it is stored."""
    cal = rig.calibration
    if cal.base_to_base is None:
        if cal.required:
            raise ValueError(f"{rig.path}: calibration.required is true but calibration.base_to_base names no file")
        return None
    serials = {name: c.realsense for name, c in rig.cameras.items() if c.realsense is not None}
    tf = load_rig_base_to_base(cal.base_to_base, max_age_days=cal.max_age_days, expected_serials=serials,
                               required=cal.required)
    return None if tf is None else tf.to_attrs(str(base_to_base_file(cal.base_to_base)))


def _task_attrs(rig: RigConfig) -> dict[str, Any] | None:
    if rig.task is None:
        return None
    task = load_task_config(rig.task)
    if task.embodiment != rig.embodiment.name:
        raise ValueError(f"{rig.path}: task {rig.task} runs embodiment {task.embodiment}, the rig {rig.embodiment.name}")
    return dataclasses.asdict(task)


def open_record_store(rig: RigConfig, out: str | Path, cameras: Mapping[str, CameraInfo], *, append: bool = False,
                      overwrite: bool = False) -> EpisodeStore:
    """A new store for ``rig`` at ``out`` (or, with ``append``, the existing one, when it records the same
    embodiment, control rate and cameras), with the rig's base-to-base transform in its attrs."""
    out = Path(out)
    base_to_base = rig_base_to_base(rig)
    if append and out.exists():
        store = EpisodeStore.open(out, mode="a")
        problems = []
        if store.embodiment.to_dict() != rig.embodiment.to_dict():
            problems.append(f"embodiment {store.embodiment.name} at {store.control_hz:g} Hz is not the rig's "
                            f"{rig.embodiment.name} at {rig.control_hz:g} Hz")
        if store.cameras != dict(cameras):
            problems.append(f"cameras {store.attrs['cameras']} differ from the rig's "
                            f"{ {n: c.to_dict() for n, c in cameras.items()} }")
        if store.attrs.get("base_to_base") != base_to_base:
            problems.append(f"base_to_base {store.attrs.get('base_to_base')} differs from the rig's {base_to_base}")
        if problems:
            store.close()
            raise StoreError(f"{out}: cannot append: {'; '.join(problems)}")
        return store
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists (append=true adds to it, overwrite=true replaces it)")
    return EpisodeStore.create(out, rig.embodiment, cameras=cameras, task=_task_attrs(rig), overwrite=overwrite,
                               base_to_base=base_to_base,
                               provenance={"source": "record", "rig": rig.name, "rig_config": rig.path})


def make_aligner(rig: RigConfig) -> Aligner:
    """The aligner of ``rig``'s streams (mapped topics and cameras) at its control rate."""
    return Aligner(rig.streams(), rig.control_hz, rig.clock, rig.latency_s)


def make_recorder(rig: RigConfig, store: EpisodeStore, aligner: Aligner | None = None) -> RigRecorder:
    """The episode recorder of ``rig`` writing into ``store``, on ``aligner`` (default: a new one)."""
    aligner = aligner or make_aligner(rig)
    state_mask, action_mask = rig.mapping.masks()
    return RigRecorder(store, aligner, EpisodeAssembler(rig.embodiment, {c: c for c in rig.cameras}),
                       state_mask=state_mask, action_mask=action_mask, on_gap=rig.episodes.on_gap)


# ---- robot-policy record -------------------------------------------------------------------------------------

def _ros_env(cfg: RecordConfig, out: Path) -> dict[str, str]:
    if cfg.dds == "external":
        return {"ROBOT_POLICY_DDS": "external",
                **({"ROS_DOMAIN_ID": str(cfg.domain_id)} if cfg.domain_id >= 0 else {})}
    domain = cfg.domain_id if cfg.domain_id >= 0 else int(os.environ.get("ROS_DOMAIN_ID", "0"))
    env = loopback_env(domain, log_dir=out.parent / f"{out.name}.ros_logs")
    keys = ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION",
            "ROS_LOG_DIR")
    return {k: env[k] for k in keys}


def run_record(cfg: RecordConfig) -> dict[str, Any]:
    """Record until ``cfg.episodes`` are committed (or Ctrl-C); returns the per-episode reports."""
    from robot_policy.pipelines.sil import ROS_INSTALL

    rig = load_rig_config(cfg.config)
    out = Path(cfg.out)
    if out.exists() and not (cfg.append or cfg.overwrite):
        raise StoreError(f"{out} already exists (append=true adds to it, overwrite=true replaces it)")
    # before rclpy loads: the DDS settings are read when the first participant starts
    os.environ.update(_ros_env(cfg, out))
    if ROS_INSTALL.is_dir() and str(ROS_INSTALL) not in sys.path:
        sys.path.insert(0, str(ROS_INSTALL))
    try:
        from robot_policy_ros import record_node
    except ImportError as e:
        raise RuntimeError(f"the ROS 2 package is not built or rclpy is missing ({e}): run `make ros`") from e

    def open_store(cameras: Mapping[str, CameraInfo]) -> EpisodeStore:
        return open_record_store(rig, out, cameras, append=cfg.append, overwrite=cfg.overwrite)

    reports = record_node.record(rig, open_store, episodes=cfg.episodes, seed=cfg.seed,
                                 idle_timeout_s=cfg.idle_timeout_s)
    committed = [r for r in reports if r["index"] is not None]
    skew: dict[str, float] = {}
    for r in committed:
        for stream, s in r["skew_ms"].items():
            skew[stream] = max(skew.get(stream, 0.0), s["max"])
    return {"rig": rig.name, "out": str(out), "control_period_ms": 1e3 / rig.control_hz,
            "episodes": reports, "committed": len(committed), "max_skew_ms": skew}


__all__ = ["RecordConfig", "calibrated_camera", "camera_infos", "make_aligner", "make_recorder", "open_record_store",
           "rig_base_to_base", "run_record"]
