"""Mappings as data: which feature, topic or dataset of a foreign recording fills which native field.

A mapping is YAML in ``configs/mapping/<name>.yaml`` (next to the embodiment specs), one per kind of
source recording::

    source: lerobot                  # lerobot | rosbag | robomimic
    embodiment: panda_bimanual_joint # configs/embodiment/<name>.yaml: the native fields filled below
    control_hz: null                 # the store's rate; null = the source's (LeRobot fps) or the embodiment's
    state:                           # EVERY native state field of the embodiment: a source, or null
      right_joint_pos: {key: observation.state, slice: [0, 7]}
      right_gripper: {key: observation.state, index: 7, scale: 1.0, offset: 0.0}
      right_joint_vel: null          # not recorded: its slots are masked off in every episode
    action:
      right_joint_pos: {key: action, slice: [0, 7]}
    cameras:                         # store camera name: source image stream
      front: {key: observation.images.front}
    extras:                          # store data key (object_state, sim_state, ...): source
      object_state: {key: observation.environment_state}
    language: null                   # a fixed instruction; null = the source's (LeRobot task strings)
    episodes: {split: source}        # source | marker (rosbag: topic) | gap (rosbag: gap_s)
    unified: null                    # robot_policy exports: the 128-d vectors they carry (exact round trip)

A field source picks values from the last axis of a source array: ``index`` (one int or a list) or
``slice: [start, stop)``, none = the whole axis; then ``native = value * scale + offset``. rosbag sources
name a ``topic``, the message ``field`` (JointState position/velocity/effort, JointTrajectory
positions/velocities/accelerations/effort, PoseStamped pose.position / pose.orientation (x, y, z, w),
Float32/64MultiArray data) and, for joint messages, the
``joints`` to take by name, in order. Loading checks everything that does not need the recording: an
unmapped native field, an unknown field name, a width that does not fit the field; the readers check the
rest against the recording (a missing feature or topic, a shape that does not fit), naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from robot_policy.paths import CONFIG_DIR, available_configs, resolve_config
from robot_policy.spaces.embodiment import EmbodimentSpec, FieldMap, SpecError, load_embodiment
from robot_policy.spaces.unified import UNIFIED_DIM


class MappingError(ValueError):
    """A mapping that is malformed, or that does not fit the recording it is applied to."""


SOURCES: Final = ("lerobot", "rosbag", "robomimic")
SPLITS: Final = {"lerobot": ("source",), "robomimic": ("source",), "rosbag": ("marker", "gap")}
#: message fields a rosbag source reads: JointState, JointTrajectory (joints by name), PoseStamped, MultiArray
JOINT_FIELDS: Final = ("position", "velocity", "effort", "positions", "velocities", "accelerations")
ROS_FIELDS: Final = (*JOINT_FIELDS, "pose.position", "pose.orientation", "data")

_TOP_KEYS = {"name", "description", "source", "embodiment", "control_hz", "state", "action", "cameras", "extras",
             "language", "episodes", "unified"}
_SOURCE_KEYS = {"key", "topic", "index", "slice", "field", "joints", "scale", "offset"}
_CAMERA_KEYS = {"key", "topic", "info"}
_SPLIT_KEYS = {"split", "topic", "gap_s"}
_UNIFIED_KEYS = {"state", "action", "timestamp", "meta"}


@dataclass(frozen=True)
class FieldSource:
    """Where one native field (or extra) comes from.

    Attributes:
        key: LeRobot feature, robomimic dataset path under ``data/demo_*``, or rosbag topic.
        index: element indices taken from the source's last axis, in order; None = all of it.
        field: rosbag only: the message field holding the values.
        joints: rosbag joint messages only: joint names picked from the message's name list, in order.
        scale, offset: native = source value * scale + offset (e.g. 2.0 for one finger joint -> gap).
    """

    key: str
    index: tuple[int, ...] | None = None
    field: str | None = None
    joints: tuple[str, ...] | None = None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int | None:
        """The number of values this source yields, if the mapping fixes it."""
        if self.joints is not None:
            return len(self.joints)
        return None if self.index is None else len(self.index)

    def describe(self) -> str:
        where = self.key + (f".{self.field}" if self.field else "")
        if self.joints is not None:
            where += f"[{', '.join(self.joints)}]"
        elif self.index is not None:
            idx = self.index
            contiguous = len(idx) > 1 and list(idx) == list(range(idx[0], idx[0] + len(idx)))
            where += f"[{idx[0]}:{idx[-1] + 1}]" if contiguous else f"[{', '.join(map(str, idx))}]"
        if self.scale != 1.0 or self.offset != 0.0:
            where += f" * {self.scale:g} + {self.offset:g}"
        return where

    def pick(self, values: np.ndarray, where: str) -> np.ndarray:
        """(T, ...) source rows -> (T, width) native float64 values (the ``index`` selection, scaled)."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 1:
            v = v[:, None]
        if v.ndim != 2:
            raise MappingError(f"{where}: {self.key} has rows of shape {v.shape[1:]}; a field takes a vector")
        if self.index is not None:
            bad = [i for i in self.index if not -v.shape[1] <= i < v.shape[1]]
            if bad:
                raise MappingError(f"{where}: {self.describe()} indexes {bad}, but {self.key} has "
                                   f"{v.shape[1]} values per row")
            v = v[:, list(self.index)]
        return v * self.scale + self.offset


@dataclass(frozen=True)
class CameraSource:
    """An image stream: a LeRobot video/image feature, a robomimic obs key, or a rosbag Image /
    CompressedImage topic (``info``: its CameraInfo topic, for the intrinsics)."""

    key: str
    info: str | None = None


@dataclass(frozen=True)
class EpisodeSplit:
    """How a recording is cut into episodes.

    ``source``: the source's own episodes (LeRobot episode_index, robomimic demo groups). rosbag:
    ``marker``: a std_msgs/String or Bool ``topic`` (see :mod:`robot_policy.data.interop.rosbag`);
    ``gap``: a pause longer than ``gap_s`` seconds in the clock stream (the first state topic) ends one.
    """

    split: str = "source"
    topic: str | None = None
    gap_s: float | None = None


@dataclass(frozen=True)
class UnifiedSource:
    """The 128-d vectors a robot_policy export carries next to its native columns (an exact round trip):
    per-step ``state``, ``action`` and ``timestamp`` (float64 seconds) sources, and ``meta``, where the
    per-episode masks, seed and success are (rosbag: a topic; LeRobot: the episodes' ``unified/*`` columns)."""

    state: str
    action: str
    timestamp: str | None = None
    meta: str | None = None


@dataclass(frozen=True)
class SourceMapping:
    """A parsed mapping (see the module docstring). Build with :func:`load_mapping` or :meth:`from_dict`.

    ``state`` / ``action``: native field -> its source, or None for a field the source does not record.
    """

    name: str
    source: str
    embodiment: EmbodimentSpec
    state: dict[str, FieldSource | None]
    action: dict[str, FieldSource | None]
    cameras: dict[str, CameraSource] = field(default_factory=dict)
    extras: dict[str, FieldSource] = field(default_factory=dict)
    language: str | None = None
    episodes: EpisodeSplit = field(default_factory=EpisodeSplit)
    unified: UnifiedSource | None = None
    control_hz: float | None = None
    description: str = ""
    #: sha256 of the mapping as data (what an import records, so a resumed import uses the same one)
    digest: str = ""

    @classmethod
    def from_dict(cls, raw: Any, where: str = "mapping", name: str = "") -> SourceMapping:
        if not isinstance(raw, MappingABC):
            raise MappingError(f"{where}: expected a mapping, got {type(raw).__name__}")
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise MappingError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        for key in ("source", "embodiment"):
            if key not in raw:
                raise MappingError(f"{where}: missing '{key}'")
        source = raw["source"]
        if source not in SOURCES:
            raise MappingError(f"{where}.source: unknown {source!r}; sources: {', '.join(SOURCES)}")
        try:
            spec = (EmbodimentSpec.from_dict(raw["embodiment"], where=f"{where}.embodiment")
                    if isinstance(raw["embodiment"], MappingABC) else load_embodiment(str(raw["embodiment"])))
        except SpecError as e:
            raise MappingError(f"{where}.embodiment: {e}") from None
        unified = _parse_unified(raw.get("unified"), f"{where}.unified")
        # With the unified vectors as the source, native sections are optional cross-checks.
        state = _parse_fields(raw.get("state"), spec.state, source, f"{where}.state", complete=unified is None)
        action = _parse_fields(raw.get("action"), spec.action, source, f"{where}.action", complete=unified is None)
        cameras = {str(cam): _parse_camera(c, source, f"{where}.cameras.{cam}")
                   for cam, c in (raw.get("cameras") or {}).items()}
        extras: dict[str, FieldSource] = {}
        for key, s in (raw.get("extras") or {}).items():
            if key in ("state", "action", "timestamp") or str(key).startswith("images/"):
                raise MappingError(f"{where}.extras.{key}: not an extra data key (state, action, timestamp and "
                                   "images are mapped by their own sections)")
            parsed = _parse_source(s, source, f"{where}.extras.{key}")
            if parsed is None:
                raise MappingError(f"{where}.extras.{key}: give a source (leave an unrecorded extra out)")
            extras[str(key)] = parsed
        hz = raw.get("control_hz")
        if hz is not None and (not isinstance(hz, (int, float)) or isinstance(hz, bool) or not hz > 0):
            raise MappingError(f"{where}.control_hz: must be > 0 or null, got {hz!r}")
        language = raw.get("language")
        if language is not None and not isinstance(language, str):
            raise MappingError(f"{where}.language: expected a string or null, got {language!r}")
        digest = hashlib.sha256(yaml.safe_dump(_plain(raw), sort_keys=True).encode()).hexdigest()
        return cls(name=str(raw.get("name") or name or source), source=source, embodiment=spec, state=state,
                   action=action, cameras=cameras, extras=extras, language=language,
                   episodes=_parse_split(raw.get("episodes"), source, f"{where}.episodes"), unified=unified,
                   control_hz=None if hz is None else float(hz), description=str(raw.get("description", "")),
                   digest=digest)

    # ---- what the mapping does to a recording -------------------------------------------------------
    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(128,) float32 state and action masks: the embodiment's, less the fields mapped to null."""
        return (_mask(self.embodiment.state, self.state), _mask(self.embodiment.action, self.action))

    def dropped_fields(self) -> dict[str, str]:
        """Native fields the source does not record (mapped to null), with why."""
        return {f"{kind}.{name}": "mapped to null: not in the source, slots masked off"
                for kind, fields in (("state", self.state), ("action", self.action))
                for name, s in fields.items() if s is None}

    def used_keys(self) -> set[str]:
        """Every source key (feature, topic, dataset) the mapping reads."""
        keys = {s.key for s in (*self.state.values(), *self.action.values(), *self.extras.values()) if s}
        keys |= {c.key for c in self.cameras.values()} | {c.info for c in self.cameras.values() if c.info}
        if self.unified is not None:
            keys |= {k for k in (self.unified.state, self.unified.action, self.unified.timestamp,
                                 self.unified.meta) if k}
        if self.episodes.topic:
            keys.add(self.episodes.topic)
        return keys


def _plain(x: Any) -> Any:
    if isinstance(x, MappingABC):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _mask(fmap: FieldMap, sources: MappingABC[str, FieldSource | None]) -> np.ndarray:
    m = fmap.mask.copy()
    for f in fmap.fields:
        if f.name in sources and sources[f.name] is None:
            m[f.unified_slice] = 0.0
    return m


def _parse_fields(raw: Any, fmap: FieldMap, source: str, where: str,
                  complete: bool) -> dict[str, FieldSource | None]:
    raw = raw or {}
    if not isinstance(raw, MappingABC):
        raise MappingError(f"{where}: expected a mapping of native field -> source")
    unknown = set(raw) - set(fmap.names)
    if unknown:
        raise MappingError(f"{where}: {sorted(unknown)} not a field of the embodiment; its {fmap.kind} fields: "
                           f"{', '.join(fmap.names)}")
    missing = [n for n in fmap.names if n not in raw]
    if complete and missing:
        raise MappingError(f"{where}: native field(s) {missing} are not mapped; give each a source, or null "
                           "if the recording does not have it (its slots are then masked off)")
    out: dict[str, FieldSource | None] = {}
    for f in fmap.fields:
        if f.name not in raw:
            continue
        s = _parse_source(raw[f.name], source, f"{where}.{f.name}")
        if s is not None and s.width is not None and s.width != f.dim:
            raise MappingError(f"{where}.{f.name}: {s.describe()} gives {s.width} values, the field has dim {f.dim}")
        out[f.name] = s
    return out


def _parse_source(raw: Any, source: str, where: str) -> FieldSource | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"topic" if source == "rosbag" else "key": raw}
    if not isinstance(raw, MappingABC):
        raise MappingError(f"{where}: expected {{key: ...}} (rosbag: {{topic: ..., field: ...}}) or null, got {raw!r}")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}")
    name_key = "topic" if source == "rosbag" else "key"
    other = "key" if source == "rosbag" else "topic"
    if other in raw:
        raise MappingError(f"{where}: a {source} source is named by '{name_key}', not '{other}'")
    if name_key not in raw or not isinstance(raw[name_key], str) or not raw[name_key]:
        raise MappingError(f"{where}: missing '{name_key}'")
    if "index" in raw and "slice" in raw:
        raise MappingError(f"{where}: give 'index' or 'slice', not both")
    index = _parse_index(raw, where)
    joints = raw.get("joints")
    ros_field = raw.get("field")
    if source == "rosbag":
        if ros_field not in ROS_FIELDS:
            raise MappingError(f"{where}.field: expected one of {', '.join(ROS_FIELDS)}, got {ros_field!r}")
        if joints is not None:
            if not isinstance(joints, list) or not joints or not all(isinstance(j, str) for j in joints):
                raise MappingError(f"{where}.joints: expected a non-empty list of joint names, got {joints!r}")
            if index is not None or ros_field not in JOINT_FIELDS:
                raise MappingError(f"{where}: 'joints' picks from a joint message field, and not with 'index'/'slice'")
        elif ros_field in JOINT_FIELDS:
            raise MappingError(f"{where}: a joint message field needs 'joints' (the names to take, in order)")
    elif ros_field is not None or joints is not None:
        raise MappingError(f"{where}: 'field' and 'joints' are for rosbag sources only")
    for key in ("scale", "offset"):
        v = raw.get(key, 1.0 if key == "scale" else 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
            raise MappingError(f"{where}.{key}: expected a finite number, got {v!r}")
    if float(raw.get("scale", 1.0)) == 0.0:
        raise MappingError(f"{where}.scale: must not be 0")
    return FieldSource(key=raw[name_key], index=index, field=ros_field,
                       joints=None if joints is None else tuple(joints),
                       scale=float(raw.get("scale", 1.0)), offset=float(raw.get("offset", 0.0)))


def _parse_index(raw: MappingABC[str, Any], where: str) -> tuple[int, ...] | None:
    if "slice" in raw:
        s = raw["slice"]
        if (not isinstance(s, list) or len(s) != 2 or not all(isinstance(v, int) for v in s)
                or not 0 <= s[0] < s[1]):
            raise MappingError(f"{where}.slice: expected [start, stop) with 0 <= start < stop, got {s!r}")
        return tuple(range(s[0], s[1]))
    if "index" in raw:
        i = raw["index"]
        items = [i] if isinstance(i, int) and not isinstance(i, bool) else i
        if not isinstance(items, list) or not items or not all(isinstance(v, int) and v >= 0 for v in items):
            raise MappingError(f"{where}.index: expected an index >= 0 or a non-empty list of them, got {i!r}")
        return tuple(items)
    return None


def _parse_camera(raw: Any, source: str, where: str) -> CameraSource:
    if isinstance(raw, str):
        return CameraSource(key=raw)
    if not isinstance(raw, MappingABC):
        raise MappingError(f"{where}: expected a source name or {{key: ...}}, got {raw!r}")
    unknown = set(raw) - _CAMERA_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_CAMERA_KEYS)}")
    name_key = "topic" if source == "rosbag" else "key"
    if name_key not in raw or not isinstance(raw[name_key], str):
        raise MappingError(f"{where}: missing '{name_key}'")
    if "info" in raw and source != "rosbag":
        raise MappingError(f"{where}.info: a CameraInfo topic is for rosbag sources only")
    return CameraSource(key=raw[name_key], info=raw.get("info"))


def _parse_split(raw: Any, source: str, where: str) -> EpisodeSplit:
    allowed = SPLITS[source]
    if raw is None:
        if source == "rosbag":
            raise MappingError(f"{where}: a rosbag mapping says how episodes are split: "
                               "{split: marker, topic: /episode} or {split: gap, gap_s: 1.0}")
        return EpisodeSplit()
    if not isinstance(raw, MappingABC) or set(raw) - _SPLIT_KEYS:
        raise MappingError(f"{where}: expected {{split: {'|'.join(allowed)}, ...}} with keys from "
                           f"{sorted(_SPLIT_KEYS)}, got {raw!r}")
    split = raw.get("split")
    if split not in allowed:
        raise MappingError(f"{where}.split: {source} episodes split by {' or '.join(allowed)}, got {split!r}")
    topic, gap = raw.get("topic"), raw.get("gap_s")
    if split == "marker" and not isinstance(topic, str):
        raise MappingError(f"{where}.topic: the marker split needs the marker topic")
    if split == "gap" and (not isinstance(gap, (int, float)) or isinstance(gap, bool) or not gap > 0):
        raise MappingError(f"{where}.gap_s: the gap split needs a gap in seconds > 0, got {gap!r}")
    return EpisodeSplit(split=split, topic=topic, gap_s=None if gap is None else float(gap))


def _parse_unified(raw: Any, where: str) -> UnifiedSource | None:
    if raw is None:
        return None
    if not isinstance(raw, MappingABC) or set(raw) - _UNIFIED_KEYS or not {"state", "action"} <= set(raw):
        raise MappingError(f"{where}: expected {{state: ..., action: ..., timestamp: ..., meta: ...}} "
                           f"(state and action required), got {raw!r}")
    return UnifiedSource(state=str(raw["state"]), action=str(raw["action"]),
                         timestamp=None if raw.get("timestamp") is None else str(raw["timestamp"]),
                         meta=None if raw.get("meta") is None else str(raw["meta"]))


def available_mappings(config_dir: Path = CONFIG_DIR) -> list[str]:
    return available_configs("mapping", config_dir)


def load_mapping(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> SourceMapping:
    """Load ``configs/mapping/<name>.yaml``, or a YAML file path. An unknown name lists the valid ones."""
    path = resolve_config("mapping", name_or_path, config_dir, error=MappingError)
    if not path.exists():
        raise MappingError(f"mapping {path}: no such file")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise MappingError(f"mapping {path}: not valid YAML ({e})") from None
    return SourceMapping.from_dict(raw, where=str(path), name=path.stem)


def native_to_unified(fmap: FieldMap, native: MappingABC[str, np.ndarray], length: int,
                      where: str) -> np.ndarray:
    """Native fields ``{name: (T, dim)}`` (a subset of ``fmap``: the rest are masked off) -> (T, 128) float32.

    Unlike :meth:`FieldMap.to_unified`, a field may be absent: its slots stay 0 (the episode's mask says so).
    """
    out = np.zeros((length, UNIFIED_DIM), dtype=np.float64)
    for f in fmap.fields:
        if f.name not in native:
            continue
        v = np.asarray(native[f.name], dtype=np.float64)
        if v.shape != (length, f.dim):
            raise MappingError(f"{where}.{f.name}: expected ({length}, {f.dim}) values, got {v.shape}")
        out[:, f.unified_slice] = f.to_unified(v)
    return out.astype(np.float32)
