"""Rig configs (``configs/rig/<name>.yaml``): what ``robot-policy record`` subscribes to and how it aligns it.

    name: sim_panda_bimanual
    embodiment: panda_bimanual_joint     # configs/embodiment/<name>.yaml
    control_hz: 20                       # the store's rate (Hz); default: the embodiment's
    mapping: rosbag_panda_bimanual_joint # topic/field/joints -> native field: configs/mapping/<name>.yaml, or
                                         # inline (state/action/extras in the mapping syntax); its cameras,
                                         # episodes and unified sections are not used here
    clock: /joint_states                 # tick 0 of an episode is this stream's first sample; default: the
                                         # topic of the first mapped state field
    command_lead_s: null                 # action streams are read at tick + this (s); null = one control period
    tolerance_s: {default: 0.025, /object_state: 0.05}   # per stream (topic or camera name), s
    latency_s: 0.1                       # transport delay a step waits for beyond tick + tolerance (s)
    cameras:                             # store camera name -> a ROS image topic or a RealSense serial
      front: {topic: /camera/front/image_raw, info: /camera/front/camera_info, extrinsics: [[4x4]]}
      wrist: {realsense: "123456789012", width: 640, height: 480, fps: 30, calibration: calib/rig_a.yaml}
    episodes: {split: control, topic: /record/episode, on_gap: discard}
                                         # control: the /record/* services and the marker topic;
                                         # pause: commands flowing = an episode, a pause of pause_s ends it
    instruction: lift the tray with both arms   # language of every episode unless a start marker gives one
    task: pybullet_bimanual_lift         # optional: the simulated task of a sim rig (stored; replay uses it)
    calibration:                         # optional: the rig's calibration files (calib/<RIG>/, calib/README.md)
      base_to_base: calib/rig_a          # the rig directory or its base_to_base.yaml: stored in the store's attrs
      max_age_days: 90                   # a camera or base-to-base file older than this warns (null: no limit)
      required: false                    # true: a missing base-to-base file is an error, not a warning

Every error names the file and the key. ``calibration:`` per camera is a path kept for
:func:`robot_policy.pipelines.record.camera_infos`, where the calibration loader plugs in; the top-level
``calibration:`` (:class:`RigCalibration`) names the base-to-base file and the age limit of every file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from robot_policy.data.interop.mapping import (
    FieldSource,
    MappingError,
    SourceMapping,
    load_mapping,
)
from robot_policy.data.rig_file import DEFAULT_MAX_AGE_DAYS, base_to_base_file
from robot_policy.paths import resolve_config
from robot_policy.spaces.embodiment import EmbodimentSpec, SpecError, load_embodiment
from robot_policy.teleop.rig_recorder import ACTION, EXTRA, STATE, StreamSpec

SPLITS: Final = ("control", "pause")
#: the marker topic's default name (std_msgs/String "start[: instruction]", "end[: success|failure]", "discard")
EPISODE_TOPIC: Final = "/record/episode"
_TOP_KEYS: Final = {"name", "description", "embodiment", "control_hz", "mapping", "clock", "command_lead_s",
                    "tolerance_s", "latency_s", "cameras", "episodes", "instruction", "task", "calibration"}
_CAMERA_KEYS: Final = {"topic", "info", "realsense", "width", "height", "fps", "extrinsics", "calibration"}
_EPISODE_KEYS: Final[set[str]] = {"split", "topic", "pause_s", "on_gap"}
_CALIBRATION_KEYS: Final[set[str]] = {"base_to_base", "max_age_days", "required"}
_TRAJECTORY_FIELDS: Final = ("positions", "velocities", "accelerations")


class RigConfigError(ValueError):
    """A rig config that is malformed; the message names the file and key."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera: a ROS image topic (``topic``, ``info`` its CameraInfo topic) or a RealSense device
    (``realsense`` serial, color ``width`` x ``height`` at ``fps``). ``extrinsics``: 4x4 T_rig_camera (m);
    ``calibration``: a calibration file for this camera (see the module docstring)."""

    name: str
    topic: str | None = None
    info: str | None = None
    realsense: str | None = None
    width: int = 640
    height: int = 480
    fps: int = 30
    extrinsics: tuple[tuple[float, ...], ...] | None = None
    calibration: str | None = None


@dataclass(frozen=True)
class EpisodeControl:
    """How episodes are cut: ``control`` (services and the marker ``topic``) or ``pause`` (commands flowing,
    ``pause_s`` s without one ends it); ``on_gap``: a refused step inside an episode discards it or is left out."""

    split: str = "control"
    topic: str = EPISODE_TOPIC
    pause_s: float = 1.0
    on_gap: str = "discard"


@dataclass(frozen=True)
class RigCalibration:
    """The rig-wide calibration settings: ``base_to_base`` (a rig directory or its base_to_base.yaml, or None),
    ``max_age_days`` (days; None: no age limit) for it and every camera file, ``required`` (a missing
    base-to-base file is an error instead of a warning)."""

    base_to_base: str | None = None
    max_age_days: float | None = DEFAULT_MAX_AGE_DAYS
    required: bool = False


@dataclass(frozen=True)
class RigConfig:
    """A parsed rig config (see the module docstring). Build with :func:`load_rig_config`."""

    name: str
    embodiment: EmbodimentSpec  # with control_hz set to the rig's
    control_hz: float
    mapping: SourceMapping
    clock: str
    command_lead_s: float
    tolerance_s: dict[str, float]
    default_tolerance_s: float
    latency_s: float
    cameras: dict[str, CameraSpec] = field(default_factory=dict)
    episodes: EpisodeControl = field(default_factory=EpisodeControl)
    instruction: str = ""
    task: str | None = None
    description: str = ""
    path: str = ""
    calibration: RigCalibration = field(default_factory=RigCalibration)

    def topic_fields(self) -> dict[str, list[tuple[str, FieldSource]]]:
        """ROS topic -> the (value key, source) pairs its messages fill (keys ``state.<field>``, ...)."""
        out: dict[str, list[tuple[str, FieldSource]]] = {}
        for prefix, fields in ((STATE, self.mapping.state), (ACTION, self.mapping.action),
                               (EXTRA, self.mapping.extras)):
            for name, s in fields.items():
                if s is not None:
                    out.setdefault(s.key, []).append((prefix + name, s))
        return out

    def command_topics(self) -> set[str]:
        """Topics whose sources are trajectory points (JointTrajectory)."""
        return {t for t, pairs in self.topic_fields().items() if any(s.field in _TRAJECTORY_FIELDS for _, s in pairs)}

    def action_topics(self) -> set[str]:
        return {s.key for s in self.mapping.action.values() if s is not None}

    def tolerance(self, stream: str) -> float:
        return self.tolerance_s.get(stream, self.default_tolerance_s)

    def streams(self) -> list[StreamSpec]:
        """Every stream the aligner waits for: the mapped topics, then the cameras (by camera name)."""
        commands, actions = self.command_topics(), self.action_topics()
        out = [StreamSpec(topic, self.tolerance(topic), "command" if topic in commands else "sample",
                          self.command_lead_s if topic in actions else 0.0) for topic in self.topic_fields()]
        return out + [StreamSpec(cam, self.tolerance(cam)) for cam in self.cameras]


def _number(raw: Any, where: str, positive: bool = True) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not np.isfinite(raw):
        raise RigConfigError(f"{where}: expected a number, got {raw!r}")
    if (positive and not raw > 0) or raw < 0:
        raise RigConfigError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {raw!r}")
    return float(raw)


def _camera(name: str, raw: Any, where: str, base: Path) -> CameraSpec:
    if not isinstance(raw, Mapping):
        raise RigConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _CAMERA_KEYS
    if unknown:
        raise RigConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_CAMERA_KEYS)}")
    if ("topic" in raw) == ("realsense" in raw):
        raise RigConfigError(f"{where}: give exactly one of topic (a sensor_msgs/Image topic) or realsense (a serial)")
    ints = {}
    for key in ("width", "height", "fps"):
        if key in raw:
            if "realsense" not in raw:
                raise RigConfigError(f"{where}.{key}: only for a realsense camera (a topic's images carry their size)")
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise RigConfigError(f"{where}.{key}: expected a positive integer, got {v!r}")
            ints[key] = v
    extrinsics = None
    if raw.get("extrinsics") is not None:
        m = np.asarray(raw["extrinsics"], dtype=np.float64) if _is_matrix(raw["extrinsics"]) else None
        if m is None or m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise RigConfigError(f"{where}.extrinsics: expected a finite 4x4 matrix (T_rig_camera, m), got "
                                 f"{raw['extrinsics']!r}")
        extrinsics = tuple(tuple(float(v) for v in row) for row in m)
    calibration = raw.get("calibration")
    if calibration is not None:
        path = Path(str(calibration))
        path = path if path.is_absolute() or path.exists() else base / path
        if not path.is_file():
            raise RigConfigError(f"{where}.calibration: {calibration} is not a file")
        calibration = str(path)
    serial = raw.get("realsense")
    return CameraSpec(name=name, topic=raw.get("topic"), info=raw.get("info"),
                      realsense=None if serial is None else str(serial), extrinsics=extrinsics,
                      calibration=calibration, **ints)


def _is_matrix(raw: Any) -> bool:
    return isinstance(raw, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in raw)


def _section(raw: Any, keys: set[str], where: str) -> Mapping[str, Any] | None:
    """A sub-mapping of the config (None when absent); another type or an unknown key is an error."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RigConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - keys
    if unknown:
        raise RigConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(keys)}")
    return raw


def _episodes(raw: Any, where: str) -> EpisodeControl:
    raw = _section(raw, _EPISODE_KEYS, where)
    if raw is None:
        return EpisodeControl()
    split = raw.get("split", "control")
    if split not in SPLITS:
        raise RigConfigError(f"{where}.split: unknown {split!r}; splits: {', '.join(SPLITS)}")
    on_gap = raw.get("on_gap", "discard")
    if on_gap not in ("discard", "keep"):
        raise RigConfigError(f"{where}.on_gap: unknown {on_gap!r}; policies: discard, keep")
    pause = _number(raw.get("pause_s", 1.0), f"{where}.pause_s")
    return EpisodeControl(split=split, topic=str(raw.get("topic", EPISODE_TOPIC)), pause_s=pause, on_gap=on_gap)


def _calibration(raw: Any, where: str, base: Path) -> RigCalibration:
    raw = _section(raw, _CALIBRATION_KEYS, where)
    if raw is None:
        return RigCalibration()
    b2b = raw.get("base_to_base")
    if b2b is not None:
        path = Path(str(b2b))
        # relative to the working directory, else to the config's; a missing one is the loader's warning
        found = path.is_absolute() or base_to_base_file(path).exists() or not base_to_base_file(base / path).exists()
        b2b = str(path if found else base / path)
    age = raw.get("max_age_days", DEFAULT_MAX_AGE_DAYS)
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise RigConfigError(f"{where}.required: expected true or false, got {required!r}")
    return RigCalibration(base_to_base=b2b, max_age_days=None if age is None else _number(age, f"{where}.max_age_days"),
                          required=required)


def _mapping(raw: Any, spec: EmbodimentSpec, where: str) -> SourceMapping:
    try:
        if isinstance(raw, Mapping):
            # the rosbag mapping syntax; its episode split is the rig's business (``episodes:``), not the mapping's
            m = SourceMapping.from_dict({"source": "rosbag", "embodiment": spec.to_dict(),
                                         "episodes": {"split": "gap", "gap_s": 1.0}, **raw}, where=where, name="inline")
        else:
            m = load_mapping(str(raw))
    except MappingError as e:
        raise RigConfigError(f"{where}: {e}") from None
    if m.source != "rosbag":
        raise RigConfigError(f"{where}: mapping {m.name} is for {m.source} recordings; a rig needs ROS topics (rosbag)")
    if m.embodiment.name != spec.name:
        raise RigConfigError(f"{where}: mapping {m.name} fills embodiment {m.embodiment.name}, the rig is {spec.name}")
    if m.unified is not None:
        raise RigConfigError(f"{where}: mapping {m.name} reads robot_policy's /unified/* export topics; a rig "
                             "publishes native topics")
    return m


def rig_config_from_dict(raw: Any, where: str = "rig", base: Path | None = None) -> RigConfig:
    """Parse a rig config (see the module docstring); ``base``: where relative calibration paths start."""
    if not isinstance(raw, Mapping):
        raise RigConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise RigConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("embodiment", "mapping"):
        if key not in raw:
            raise RigConfigError(f"{where}: missing '{key}'")
    try:
        spec = load_embodiment(str(raw["embodiment"]))
    except (SpecError, KeyError, FileNotFoundError) as e:
        raise RigConfigError(f"{where}.embodiment: {e}") from None
    hz = _number(raw.get("control_hz", spec.control_hz), f"{where}.control_hz")
    if hz != spec.control_hz:
        spec = EmbodimentSpec.from_dict({**spec.to_dict(), "control_hz": hz}, where=f"{where}.embodiment")
    mapping = _mapping(raw["mapping"], spec, f"{where}.mapping")
    topics = {s.key for fields in (mapping.state, mapping.action, mapping.extras) for s in fields.values() if s}
    both = {s.key for s in mapping.state.values() if s} & {s.key for s in mapping.action.values() if s}
    if both:
        raise RigConfigError(f"{where}.mapping: topic(s) {sorted(both)} fill both state and action; a stream is "
                             "either a measurement or a command")
    first_state = next((s.key for s in mapping.state.values() if s is not None), None)
    clock = str(raw.get("clock") or first_state or "")
    if clock not in topics:
        raise RigConfigError(f"{where}.clock: {clock!r} is not a mapped topic ({', '.join(sorted(topics))})")
    lead = raw.get("command_lead_s")
    lead_s = 1.0 / hz if lead is None else _number(lead, f"{where}.command_lead_s", positive=False)
    base = base or Path.cwd()
    cams_raw = raw.get("cameras") or {}
    if not isinstance(cams_raw, Mapping):
        raise RigConfigError(f"{where}.cameras: expected a mapping of camera name -> source")
    cameras = {str(n): _camera(str(n), c, f"{where}.cameras.{n}", base) for n, c in cams_raw.items()}
    clash = set(cameras) & topics
    if clash:
        raise RigConfigError(f"{where}.cameras: camera name(s) {sorted(clash)} are also topics")
    tol_raw = raw.get("tolerance_s", {})
    if not isinstance(tol_raw, Mapping):
        tol_raw = {"default": tol_raw}
    tolerances = {str(k): _number(v, f"{where}.tolerance_s.{k}") for k, v in tol_raw.items()}
    default = tolerances.pop("default", 0.5 / hz)
    stray = set(tolerances) - topics - set(cameras)
    if stray:
        raise RigConfigError(f"{where}.tolerance_s: {sorted(stray)} are not streams of this rig (topics: "
                             f"{', '.join(sorted(topics))}; cameras: {', '.join(cameras) or 'none'})")
    task = raw.get("task")
    return RigConfig(name=str(raw.get("name", "rig")), embodiment=spec, control_hz=hz, mapping=mapping, clock=clock,
                     command_lead_s=lead_s, tolerance_s=tolerances, default_tolerance_s=default,
                     latency_s=_number(raw.get("latency_s", 0.1), f"{where}.latency_s", positive=False),
                     cameras=cameras, episodes=_episodes(raw.get("episodes"), f"{where}.episodes"),
                     instruction=str(raw.get("instruction") or mapping.language or ""),
                     task=None if task is None else str(task), description=str(raw.get("description", "")),
                     path=where, calibration=_calibration(raw.get("calibration"), f"{where}.calibration", base))


def load_rig_config(name_or_path: str | Path) -> RigConfig:
    """``configs/rig/<name>.yaml`` or a YAML path; an unknown name lists the rigs there."""
    path = resolve_config("rig", name_or_path, error=RigConfigError)
    if not path.is_file():
        raise RigConfigError(f"rig config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RigConfigError(f"rig config {path}: not valid YAML ({e})") from None
    return rig_config_from_dict(raw, where=str(path), base=path.parent)


__all__ = ["CameraSpec", "EpisodeControl", "RigCalibration", "RigConfig", "RigConfigError", "load_rig_config",
           "rig_config_from_dict"]
