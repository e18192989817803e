"""rosbag2 recordings (mcap or sqlite3): import into a store through a mapping, and export a store, with
``rosbags`` (no ROS install).

Import. Every stream the mapping names is read by its header stamp (messages without a header, such as
MultiArrays and markers, by their bag time), the recording is cut into episodes (a marker topic, or pauses in
the clock stream, the topic of the first mapped state field), and every stream is aligned to the control
rate: ticks ``t0 + k / control_hz`` from the clock stream's first stamp in the episode to its last, each
stream contributing its sample nearest the tick. The import summary reports, per stream, the skew
``|stamp - tick|`` (mean and max). JointTrajectory commands contribute every point, at ``stamp +
time_from_start``, a newer message replacing the points of older ones from its first point on, as
joint_trajectory_controller replaces a trajectory. Two passes: one over the low-dim streams and image
stamps (episodes, ticks, the frame each tick takes), then per episode one over its image messages, so
memory holds one episode's low-dim rows and a few frames.

Markers: ``std_msgs/String`` ``start`` / ``start: <instruction>`` begins an episode, ``end`` / ``end: success``
/ ``end: failure`` ends it; ``std_msgs/Bool`` True begins, False ends.

Export writes the wire layout of the project's ROS 2 driver (ros_ws/src/robot_policy_ros, DESIGN.md topics):
``/joint_states`` (arm joints and grippers named as :mod:`robot_policy.runtime.robot_io` names them, with
velocities), ``/<arm>/eef_pose`` (PoseStamped), ``/<arm>_controller/joint_trajectory`` (the commanded joint
targets, one point at time_from_start 0 per step), ``/object_state``, ``/camera/<cam>/image_raw`` (Image rgb8,
or ``.../compressed`` png/jpeg) with ``/camera/<cam>/camera_info``, the ``/episode`` markers, and, for an exact
round trip, ``/unified/{state,action,timestamp}`` and ``/unified/episode_meta`` (masks, seed, success, extra
dtypes, as JSON), ``/unified/<extra>`` for the other extras. Every message of step ``t`` is stamped at the same
time, so the import aligns them with zero skew. ``unified_mapping.yaml`` beside the bag imports it back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml
from tqdm import tqdm

from robot_policy.data import format as fmt
from robot_policy.data.interop.importer import (
    ImportSummary,
    SourceEpisode,
    describe_mapping,
    open_import_store,
    run_import,
)
from robot_policy.data.interop.mapping import (
    JOINT_FIELDS,
    FieldSource,
    MappingError,
    SourceMapping,
    load_mapping,
)
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.spaces.embodiment import EmbodimentSpec, FieldSpec

JOINT_STATES: Final = "/joint_states"
TRAJECTORY: Final = "/{arm}_controller/joint_trajectory"
EEF_POSE: Final = "/{arm}/eef_pose"
OBJECT_STATE: Final = "/object_state"
IMAGE: Final = "/camera/{camera}/image_raw"
CAMERA_INFO: Final = "/camera/{camera}/camera_info"
EPISODE: Final = "/episode"
UNIFIED_STATE: Final = "/unified/state"
UNIFIED_ACTION: Final = "/unified/action"
UNIFIED_TIMESTAMP: Final = "/unified/timestamp"
UNIFIED_META: Final = "/unified/episode_meta"
MAPPING_FILE: Final = "unified_mapping.yaml"
STORAGES: Final = ("mcap", "sqlite3")
IMAGE_FORMATS: Final = ("raw", "png", "jpeg")
#: bag time of the first exported episode (2001-09-09), and the pause between episodes (s): a gap split works too
EXPORT_BASE_NS: Final = 1_000_000_000 * 1_000_000_000
EXPORT_GAP_NS: Final = 2_000_000_000

_JOINT_MSG: Final = {"position": "sensor_msgs/msg/JointState", "velocity": "sensor_msgs/msg/JointState",
                     "effort": "sensor_msgs/msg/JointState", "positions": "trajectory_msgs/msg/JointTrajectory",
                     "velocities": "trajectory_msgs/msg/JointTrajectory",
                     "accelerations": "trajectory_msgs/msg/JointTrajectory"}
_MULTIARRAY: Final = ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray")
_IMAGE_TYPES: Final = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def wire_joint_names(spec: EmbodimentSpec) -> dict[str, tuple[str, ...]]:
    """Native field -> its joints' names on the wire, for the joint-position and gripper fields of state and
    action: named after the action field in that slot (``right_joint_pos_1`` .. ``_7``, ``right_gripper``),
    as :mod:`robot_policy.runtime.robot_io` names them, else after the state field."""
    by_slot: dict[str, str] = {}
    for f in (*spec.action.fields, *spec.state.fields):
        if f.slot.endswith(("_arm_joint_pos", "_gripper_open")):
            by_slot.setdefault(f.slot, f.name)
    names = {slot: (n,) if _dim(spec, n) == 1 else tuple(f"{n}_{i + 1}" for i in range(_dim(spec, n)))
             for slot, n in by_slot.items()}
    out: dict[str, tuple[str, ...]] = {}
    for f in (*spec.state.fields, *spec.action.fields):
        slot = f.slot.replace("_arm_joint_vel", "_arm_joint_pos").replace("_gripper_joint_vel", "_gripper_open")
        if slot in names and len(names[slot]) == f.dim:
            out[f.name] = names[slot]
    return out


def _dim(spec: EmbodimentSpec, name: str) -> int:
    for fmap in (spec.action, spec.state):
        if name in fmap.names:
            return fmap.get(name).dim
    raise KeyError(name)


def _side(f: FieldSpec) -> str:
    return f.slot.split("_", 1)[0]


def export_mapping(spec: EmbodimentSpec, cameras: Sequence[str], extras: Mapping[str, str], images: str,
                   unified: bool = True) -> dict[str, Any]:
    """The mapping that imports a bag :func:`export_rosbag` writes for a store of ``spec`` (as data)."""
    names = wire_joint_names(spec)

    def source(f: FieldSpec, kind: str) -> dict[str, Any] | None:
        if kind == "action":
            if f.name in names and f.slot.endswith(("_arm_joint_pos", "_gripper_open")):
                return {"topic": TRAJECTORY.format(arm=_side(f)), "field": "positions", "joints": list(names[f.name])}
            return None
        if f.name in names:
            vel = f.slot.endswith(("_arm_joint_vel", "_gripper_joint_vel"))
            return {"topic": JOINT_STATES, "field": "velocity" if vel else "position", "joints": list(names[f.name])}
        if f.slot.endswith("_eef_pos"):
            return {"topic": EEF_POSE.format(arm=_side(f)), "field": "pose.position"}
        if f.slot.endswith("_eef_rot6d") and f.rotation == "quat_xyzw":
            return {"topic": EEF_POSE.format(arm=_side(f)), "field": "pose.orientation"}
        return None

    image_topic = IMAGE + ("" if images == "raw" else "/compressed")
    out: dict[str, Any] = {
        "name": f"rosbag_export_{spec.name}",
        "description": "imports a bag written by robot-policy dataset export rosbag back exactly",
        "source": "rosbag", "embodiment": spec.to_dict(),
        "state": {f.name: source(f, "state") for f in spec.state.fields},
        "action": {f.name: source(f, "action") for f in spec.action.fields},
        "cameras": {c: {"topic": image_topic.format(camera=c), "info": CAMERA_INFO.format(camera=c)} for c in cameras},
        "extras": {k: {"topic": t, "field": "data"} for k, t in extras.items()},
        "episodes": {"split": "marker", "topic": EPISODE},
    }
    if unified:
        out["unified"] = {"state": UNIFIED_STATE, "action": UNIFIED_ACTION, "timestamp": UNIFIED_TIMESTAMP,
                          "meta": UNIFIED_META}
        out["state"] = {k: v for k, v in out["state"].items() if v is not None}
        out["action"] = {k: v for k, v in out["action"].items() if v is not None}
    return out


# ---- export -----------------------------------------------------------------------------------------

@dataclass
class RosbagExportConfig:
    """Options of ``robot-policy dataset export rosbag``."""

    #: the bag directory to write (must not exist unless overwrite)
    out: str = ""
    #: rosbag2 storage: mcap or sqlite3
    storage: str = "mcap"
    #: camera frames as sensor_msgs/Image rgb8 (raw, exact) or CompressedImage (png exact, jpeg lossy)
    images: str = "raw"
    #: JPEG quality when images=jpeg
    jpeg_quality: int = 95
    #: also write the /unified/* topics that make the round trip exact (the native topics are always written)
    unified: bool = True
    #: replace an existing directory at out
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out: give the bag directory, e.g. out=exports/lift_bag")
        if self.storage not in STORAGES:
            raise ValueError(f"storage: unknown {self.storage!r}; storages: {', '.join(STORAGES)}")
        if self.images not in IMAGE_FORMATS:
            raise ValueError(f"images: unknown {self.images!r}; formats: {', '.join(IMAGE_FORMATS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


class _BagWriter:
    def __init__(self, path: Path, storage: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.ts = _typestore()
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, msg: Any, t_ns: int) -> None:
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(conn, t_ns, self.ts.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        self.writer.close()

    # message builders
    def header(self, t_ns: int, frame: str = "") -> Any:
        t = self.ts.types
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=t_ns // 1_000_000_000,
                                                                               nanosec=t_ns % 1_000_000_000),
                                        frame_id=frame)

    def string(self, text: str) -> Any:
        return self.ts.types["std_msgs/msg/String"](data=text)

    def multiarray(self, values: np.ndarray, msgtype: str) -> Any:
        t = self.ts.types
        layout = t["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        dtype = np.float32 if msgtype.endswith("Float32MultiArray") else np.float64
        return t[msgtype](layout=layout, data=np.ascontiguousarray(values, dtype=dtype).reshape(-1))


def export_rosbag(store_path: str | Path, cfg: RosbagExportConfig, progress: bool = True) -> dict[str, Any]:
    """Write the store at ``store_path`` as a rosbag2 bag at ``cfg.out`` (see the module docstring).
    Returns the topics and message counts written."""
    store = EpisodeStore.open(store_path)
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise StoreError(f"{out} already exists (pass overwrite=true to replace it)")
        shutil.rmtree(out)
    spec = store.embodiment
    extras = {k: (OBJECT_STATE if k == fmt.OBJECT_STATE else f"/unified/{k}") for k in store.data_keys
              if k not in fmt.REQUIRED_DATA and not fmt.is_image_key(k)}
    mapping = export_mapping(spec, list(store.cameras), extras, cfg.images, unified=cfg.unified)
    bag = _BagWriter(out, cfg.storage)
    meta = store.episode_meta()
    t_episode = EXPORT_BASE_NS
    try:
        for e in tqdm(range(store.n_episodes), desc="export rosbag", unit="ep", disable=not progress):
            start, end = store.episode_bounds(e)
            t_episode = _export_episode(bag, store, cfg, mapping, extras, e, start, end, meta, t_episode)
    finally:
        bag.close()
        store.close()
    (out / MAPPING_FILE).write_text(yaml.safe_dump(mapping, sort_keys=False))
    return {"out": str(out), "storage": cfg.storage, "episodes": store.n_episodes, "topics": dict(bag.counts)}


def _export_episode(bag: _BagWriter, store: EpisodeStore, cfg: RosbagExportConfig, mapping: Mapping[str, Any],
                    extras: Mapping[str, str], e: int, start: int, end: int, meta: Mapping[str, np.ndarray],
                    t0: int) -> int:
    """Write episode ``e`` (rows ``[start, end)``) from bag time ``t0``; returns where the next one starts."""
    spec = store.embodiment
    state = np.asarray(store.array(fmt.STATE)[start:end])
    action = np.asarray(store.array(fmt.ACTION)[start:end])
    ts = np.asarray(store.array(fmt.TIMESTAMP)[start:end])
    stamps = t0 + np.round((ts - ts[0]) * 1e9).astype(np.int64)
    if np.any(np.diff(stamps) <= 0):
        raise StoreError(f"{store.path}: episode {e} has steps closer than 1 ns; a bag cannot order them")
    native_s, native_a = spec.state.from_unified(state), spec.action.from_unified(action)
    extra_rows = {k: np.asarray(store.array(k)[start:end]) for k in extras}
    success = int(meta[fmt.SUCCESS][e])
    language = str(meta[fmt.LANGUAGE][e])
    bag.write(EPISODE, "std_msgs/msg/String", bag.string(f"start: {language}" if language else "start"), int(stamps[0]))
    if cfg.unified:
        info = {"state_mask": meta[fmt.STATE_MASK][e].tolist(), "action_mask": meta[fmt.ACTION_MASK][e].tolist(),
                "seed": int(meta[fmt.SEED][e]), "success": success, "language": language,
                "extras_dtype": {k: str(v.dtype) for k, v in extra_rows.items()},
                # what the store records beyond the messages: its task, and camera poses (CameraInfo has none)
                "task": store.attrs.get("task"),
                "camera_extrinsics": {c: None if i.extrinsics is None else [list(r) for r in i.extrinsics]
                                      for c, i in store.cameras.items()}}
        bag.write(UNIFIED_META, "std_msgs/msg/String", bag.string(json.dumps(info)), int(stamps[0]))
    frames = {cam: _frames(store, cam, start, end) for cam in store.cameras}
    for t, stamp in enumerate(stamps.tolist()):
        _export_step(bag, store, cfg, mapping, {k: v[t] for k, v in native_s.items()},
                     {k: v[t] for k, v in native_a.items()}, stamp)
        for key, topic in extras.items():
            bag.write(topic, "std_msgs/msg/Float64MultiArray",
                      bag.multiarray(extra_rows[key][t], "std_msgs/msg/Float64MultiArray"), stamp)
        if cfg.unified:
            bag.write(UNIFIED_STATE, "std_msgs/msg/Float32MultiArray",
                      bag.multiarray(state[t], "std_msgs/msg/Float32MultiArray"), stamp)
            bag.write(UNIFIED_ACTION, "std_msgs/msg/Float32MultiArray",
                      bag.multiarray(action[t], "std_msgs/msg/Float32MultiArray"), stamp)
            bag.write(UNIFIED_TIMESTAMP, "std_msgs/msg/Float64MultiArray",
                      bag.multiarray(ts[t:t + 1], "std_msgs/msg/Float64MultiArray"), stamp)
        for cam, it in frames.items():
            _export_frame(bag, cam, next(it), store.cameras[cam], cfg, stamp)
    ending = {1: "end: success", 0: "end: failure"}.get(success, "end")
    last = int(stamps[-1]) + 1
    bag.write(EPISODE, "std_msgs/msg/String", bag.string(ending), last)
    return last + EXPORT_GAP_NS


def _frames(store: EpisodeStore, camera: str, start: int, end: int) -> Iterator[np.ndarray]:
    arr = store.array(fmt.image_key(camera))
    for lo in range(start, end, fmt.IMAGE_WRITE_BLOCK):
        yield from np.asarray(arr[lo: min(end, lo + fmt.IMAGE_WRITE_BLOCK)])


def _export_step(bag: _BagWriter, store: EpisodeStore, cfg: RosbagExportConfig, mapping: Mapping[str, Any],
                 state: Mapping[str, np.ndarray], action: Mapping[str, np.ndarray], stamp: int) -> None:
    t = bag.ts.types
    joint: dict[str, dict[str, float]] = {"position": {}, "velocity": {}}
    poses: dict[str, dict[str, np.ndarray]] = {}
    for name, src in mapping["state"].items():
        if src is None:
            continue
        if src["topic"] == JOINT_STATES:
            joint[src["field"]].update(zip(src["joints"], np.ravel(state[name]).tolist()))
        else:
            poses.setdefault(src["topic"], {})[src["field"]] = np.ravel(state[name])
    if joint["position"]:
        names = list(joint["position"])
        vel = [joint["velocity"].get(n, 0.0) for n in names] if joint["velocity"] else []
        bag.write(JOINT_STATES, "sensor_msgs/msg/JointState", t["sensor_msgs/msg/JointState"](
            header=bag.header(stamp), name=names, position=np.array([joint["position"][n] for n in names]),
            velocity=np.array(vel, dtype=np.float64), effort=np.zeros(0)), stamp)
    for topic, p in poses.items():
        pos = p.get("pose.position", np.zeros(3))
        quat = p.get("pose.orientation", np.array([0.0, 0.0, 0.0, 1.0]))
        pose = t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=pos[0], y=pos[1], z=pos[2]),
                                           orientation=t["geometry_msgs/msg/Quaternion"](
                                               x=quat[0], y=quat[1], z=quat[2], w=quat[3]))
        bag.write(topic, "geometry_msgs/msg/PoseStamped",
                  t["geometry_msgs/msg/PoseStamped"](header=bag.header(stamp, "base"), pose=pose), stamp)
    commands: dict[str, dict[str, float]] = {}
    for name, src in mapping["action"].items():
        if src is not None:
            commands.setdefault(src["topic"], {}).update(zip(src["joints"], np.ravel(action[name]).tolist()))
    for topic, cmd in commands.items():
        point = t["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.array(list(cmd.values())), velocities=np.zeros(0), accelerations=np.zeros(0),
            effort=np.zeros(0), time_from_start=t["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
        bag.write(topic, "trajectory_msgs/msg/JointTrajectory", t["trajectory_msgs/msg/JointTrajectory"](
            header=bag.header(stamp), joint_names=list(cmd), points=[point]), stamp)


def _export_frame(bag: _BagWriter, camera: str, frame: np.ndarray, info: CameraInfo, cfg: RosbagExportConfig,
                  stamp: int) -> None:
    t = bag.ts.types
    header = bag.header(stamp, camera)
    h, w = frame.shape[:2]
    if cfg.images == "raw":
        bag.write(IMAGE.format(camera=camera), "sensor_msgs/msg/Image", t["sensor_msgs/msg/Image"](
            header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
            data=np.ascontiguousarray(frame).reshape(-1)), stamp)
    else:
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality] if cfg.images == "jpeg" else []
        ok, data = cv2.imencode("." + ("jpg" if cfg.images == "jpeg" else "png"), frame[..., ::-1], params)
        if not ok:
            raise StoreError(f"camera {camera}: {cfg.images} encoding failed")
        bag.write(IMAGE.format(camera=camera) + "/compressed", "sensor_msgs/msg/CompressedImage",
                  t["sensor_msgs/msg/CompressedImage"](header=header, format=cfg.images, data=data.reshape(-1)), stamp)
    k = np.asarray(info.intrinsics if info.intrinsics is not None else np.zeros((3, 3)), np.float64)
    p = np.concatenate([k, np.zeros((3, 1))], axis=1)
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    bag.write(CAMERA_INFO.format(camera=camera), "sensor_msgs/msg/CameraInfo", t["sensor_msgs/msg/CameraInfo"](
        header=header, height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5), k=k.reshape(-1),
        r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi), stamp)


# ---- import -----------------------------------------------------------------------------------------

@dataclass
class _Stream:
    """The samples of one topic: (N,) stamps (ns) and the messages."""

    topic: str
    msgtype: str
    stamps: np.ndarray
    msgs: list[Any]


@dataclass
class _Episode:
    name: str
    start: int  # ns, inclusive
    stop: int   # ns, exclusive
    language: str | None = None
    success: bool | None = None


@dataclass
class RosbagSource:
    """A rosbag2 bag opened for import with a mapping (topics and message types checked against it)."""

    path: Path
    mapping: SourceMapping
    streams: dict[str, _Stream] = field(init=False, default_factory=dict)
    skew: dict[str, list[float]] = field(init=False, default_factory=dict)
    _skew_seen: set[tuple[str, str]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        from rosbags.rosbag2 import Reader

        self.ts = _typestore()
        self.reader = Reader(self.path)
        self.reader.open()
        self.topics = {c.topic: c for c in self.reader.connections}
        self._check_topics()
        self.hz = self.mapping.control_hz or self.mapping.embodiment.control_hz
        self._read_lowdim()
        self.episodes = self._split()

    def close(self) -> None:
        self.reader.close()

    # -- checks ------------------------------------------------------------------------------------
    def _need(self, topic: str, types: Sequence[str], what: str) -> None:
        where = f"mapping {self.mapping.name} on {self.path}: {what}"
        if topic not in self.topics:
            raise MappingError(f"{where}: topic {topic} is not in the bag; its topics: {', '.join(sorted(self.topics))}")
        msgtype = self.topics[topic].msgtype
        if msgtype not in types:
            raise MappingError(f"{where}: topic {topic} carries {msgtype}, expected {' or '.join(types)}")

    def _check_topics(self) -> None:
        m = self.mapping
        for kind in ("state", "action"):
            for name, s in getattr(m, kind).items():
                if s is not None:
                    self._need(s.key, _types_for(s), f"{kind}.{name}")
        for key, s in m.extras.items():
            self._need(s.key, _types_for(s), f"extras.{key}")
        for cam, c in m.cameras.items():
            self._need(c.key, _IMAGE_TYPES, f"cameras.{cam}")
            if c.info:
                self._need(c.info, ("sensor_msgs/msg/CameraInfo",), f"cameras.{cam}.info")
        if m.episodes.topic:
            self._need(m.episodes.topic, ("std_msgs/msg/String", "std_msgs/msg/Bool"), "episodes.topic")
        if m.unified is not None:
            for topic in (m.unified.state, m.unified.action):
                self._need(topic, _MULTIARRAY, "unified")
            if m.unified.timestamp:
                self._need(m.unified.timestamp, _MULTIARRAY, "unified.timestamp")
            if m.unified.meta:
                self._need(m.unified.meta, ("std_msgs/msg/String",), "unified.meta")
        if self.clock_topic() is None:
            raise MappingError(f"mapping {m.name}: map at least one state field (its topic is the clock)")

    def clock_topic(self) -> str | None:
        m = self.mapping
        first = next((s for s in m.state.values() if s is not None), None)
        if first is not None:
            return first.key
        return m.unified.state if m.unified is not None else None

    # -- pass 1 ------------------------------------------------------------------------------------
    def _lowdim_topics(self) -> set[str]:
        m = self.mapping
        topics = {s.key for s in (*m.state.values(), *m.action.values(), *m.extras.values()) if s is not None}
        topics |= {c.info for c in m.cameras.values() if c.info}
        if m.episodes.topic:
            topics.add(m.episodes.topic)
        if m.unified is not None:
            topics |= {t for t in (m.unified.state, m.unified.action, m.unified.timestamp, m.unified.meta) if t}
        return topics

    def _read_lowdim(self) -> None:
        wanted = self._lowdim_topics() | {c.key for c in self.mapping.cameras.values()}
        conns = [self.topics[t] for t in sorted(wanted)]
        data: dict[str, tuple[list[int], list[Any]]] = {t: ([], []) for t in wanted}
        for conn, t_bag, raw in self.reader.messages(connections=conns):
            msg = self.ts.deserialize_cdr(raw, conn.msgtype)
            stamp = _stamp_ns(msg) if hasattr(msg, "header") else int(t_bag)
            if conn.msgtype in _IMAGE_TYPES:
                msg = (int(t_bag), _image_size(msg))  # frames are read again per episode
            stamps, msgs = data[conn.topic]
            stamps.append(stamp)
            msgs.append(msg)
        for topic, (stamps, msgs) in data.items():
            order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
            self.streams[topic] = _Stream(topic, self.topics[topic].msgtype, np.asarray(stamps, np.int64)[order],
                                          [msgs[i] for i in order])
            if not msgs:
                raise MappingError(f"{self.path}: topic {topic} has no messages")

    def _split(self) -> list[_Episode]:
        split = self.mapping.episodes
        clock = self.streams[str(self.clock_topic())].stamps
        if split.split == "gap":
            assert split.gap_s is not None
            cuts = np.flatnonzero(np.diff(clock) > split.gap_s * 1e9) + 1
            bounds = np.split(clock, cuts)
            return [_Episode(f"episode {i} (bag t={b[0] / 1e9:.3f}-{b[-1] / 1e9:.3f} s)", int(b[0]), int(b[-1]) + 1)
                    for i, b in enumerate(bounds)]
        assert split.topic is not None
        marks = self.streams[split.topic]
        episodes: list[_Episode] = []
        current: _Episode | None = None
        for stamp, msg in zip(marks.stamps.tolist(), marks.msgs):
            start, text, success = _marker(msg)
            if start:
                if current is not None:
                    current.stop = stamp
                    episodes.append(current)
                current = _Episode("", stamp, 0, language=text or None)
            elif current is not None:
                current.stop, current.success = stamp + 1, success
                episodes.append(current)
                current = None
        if current is not None:
            current.stop = int(clock[-1]) + 1
            episodes.append(current)
        for i, ep in enumerate(episodes):
            ep.name = f"episode {i} (bag t={ep.start / 1e9:.3f}-{ep.stop / 1e9:.3f} s)"
        return [ep for ep in episodes if np.any((clock >= ep.start) & (clock < ep.stop))]

    # -- per episode -------------------------------------------------------------------------------
    def ticks(self, ep: _Episode) -> np.ndarray:
        """Control ticks (ns) of an episode: from the clock stream's first stamp in it to its last."""
        clock = self.streams[str(self.clock_topic())].stamps
        inside = clock[(clock >= ep.start) & (clock < ep.stop)]
        period = 1e9 / self.hz
        n = int(np.floor((inside[-1] - inside[0]) / period + 1e-6)) + 1
        return inside[0] + np.round(np.arange(n) * period).astype(np.int64)

    def _nearest(self, stamps: np.ndarray, ticks: np.ndarray, ep: _Episode, what: str) -> np.ndarray:
        """Index of the sample nearest each tick, among the samples inside the episode; skew recorded."""
        inside = np.flatnonzero((stamps >= ep.start - 1e9 / self.hz) & (stamps < ep.stop + 1e9 / self.hz))
        if inside.size == 0:
            raise MappingError(f"{self.path}: {ep.name}: {what} has no messages in the episode")
        s = stamps[inside]
        j = np.clip(np.searchsorted(s, ticks), 1, max(1, s.size - 1)) if s.size > 1 else np.zeros_like(ticks)
        if s.size > 1:
            j = np.where(np.abs(s[j - 1] - ticks) <= np.abs(s[j] - ticks), j - 1, j)
        if (what, ep.name) not in self._skew_seen:  # a topic several fields read counts once per episode
            self._skew_seen.add((what, ep.name))
            self.skew.setdefault(what, []).extend((np.abs(s[j] - ticks) / 1e6).tolist())
        return inside[j]

    def _values(self, s: FieldSource, ticks: np.ndarray, ep: _Episode, where: str) -> np.ndarray:
        stream = self.streams[s.key]
        label = s.key  # the skew is the topic's: every field of a message shares its stamp
        if stream.msgtype == "trajectory_msgs/msg/JointTrajectory":
            stamps, rows = _trajectory_samples(stream, s, f"{where}: {ep.name}")
            return rows[self._nearest(stamps, ticks, ep, label)] * s.scale + s.offset
        idx = self._nearest(stream.stamps, ticks, ep, label)
        return np.stack([_message_values(stream.msgs[i], s, f"{where}: {ep.name}") for i in idx]) * s.scale + s.offset

    def episode(self, ep: _Episode) -> SourceEpisode:
        m = self.mapping
        ticks = self.ticks(ep)
        out = SourceEpisode(name=ep.name, timestamp=(ticks - ticks[0]) / 1e9)
        out.state = {n: self._values(s, ticks, ep, f"state.{n}") for n, s in m.state.items() if s is not None}
        out.action = {n: self._values(s, ticks, ep, f"action.{n}") for n, s in m.action.items() if s is not None}
        dtypes: dict[str, str] = {}
        if m.unified is not None:
            out.state_unified = self._multiarray(m.unified.state, ticks, ep).astype(np.float32)
            out.action_unified = self._multiarray(m.unified.action, ticks, ep).astype(np.float32)
            if m.unified.timestamp:
                out.timestamp = self._multiarray(m.unified.timestamp, ticks, ep).reshape(-1)
            if m.unified.meta:
                dtypes = self._meta(m.unified.meta, ep, out)
        out.extras = {k: self._values(s, ticks, ep, f"extras.{k}").astype(dtypes.get(k, "float64"))
                      for k, s in m.extras.items()}
        if ep.language is not None and not out.language:
            out.language = ep.language
        if not out.language:
            out.language = m.language or ""
        if out.success is None:
            out.success = ep.success
        out.frames = self._frames(ep, ticks) if m.cameras else None
        return out

    def _multiarray(self, topic: str, ticks: np.ndarray, ep: _Episode) -> np.ndarray:
        stream = self.streams[topic]
        idx = self._nearest(stream.stamps, ticks, ep, topic)
        return np.stack([np.asarray(stream.msgs[i].data, np.float64) for i in idx])

    def _meta(self, topic: str, ep: _Episode, out: SourceEpisode) -> dict[str, str]:
        stream = self.streams[topic]
        inside = [msg for st, msg in zip(stream.stamps.tolist(), stream.msgs) if ep.start <= st < ep.stop]
        if not inside:
            return {}
        info = json.loads(inside[0].data)
        out.state_mask = np.asarray(info["state_mask"], np.float32)
        out.action_mask = np.asarray(info["action_mask"], np.float32)
        out.seed, out.language = int(info["seed"]), str(info.get("language", ""))
        out.success = None if int(info["success"]) < 0 else bool(info["success"])
        return dict(info.get("extras_dtype", {}))

    def export_info(self) -> dict[str, Any]:
        """The first episode meta message of a robot_policy export (task, camera poses), or {}."""
        m = self.mapping
        if m.unified is None or not m.unified.meta or not self.streams[m.unified.meta].msgs:
            return {}
        return dict(json.loads(self.streams[m.unified.meta].msgs[0].data))

    def cameras(self) -> dict[str, CameraInfo]:
        out = {}
        poses = self.export_info().get("camera_extrinsics") or {}
        for cam, c in self.mapping.cameras.items():
            h, w = self.streams[c.key].msgs[0][1]
            k = None
            if c.info:
                msg = self.streams[c.info].msgs[0]
                kk = np.asarray(msg.k, np.float64).reshape(3, 3)
                k = kk if np.any(kk) else None
            out[cam] = CameraInfo(h, w, k, poses.get(cam))
        return out

    def _frames(self, ep: _Episode, ticks: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Per tick, each camera's nearest frame; decoded from the bag in one pass over the episode."""
        chosen: dict[str, np.ndarray] = {}
        wanted: dict[str, dict[int, int]] = {}  # topic -> bag time -> how many ticks still need it
        window = [np.iinfo(np.int64).max, 0]
        for cam, c in self.mapping.cameras.items():
            stream = self.streams[c.key]
            idx = self._nearest(stream.stamps, ticks, ep, c.key)
            bag_times = np.array([stream.msgs[i][0] for i in idx], np.int64)
            chosen[cam] = bag_times
            wanted[c.key] = {}
            for t in bag_times.tolist():
                wanted[c.key][t] = wanted[c.key].get(t, 0) + 1
            window = [min(window[0], int(bag_times.min())), max(window[1], int(bag_times.max()))]
        conns = [self.topics[c.key] for c in self.mapping.cameras.values()]
        decoded: dict[tuple[str, int], np.ndarray] = {}
        messages = self.reader.messages(connections=conns, start=window[0], stop=window[1] + 1)
        for k in range(ticks.shape[0]):
            step: dict[str, np.ndarray] = {}
            for cam, c in self.mapping.cameras.items():
                key = (c.key, int(chosen[cam][k]))
                while key not in decoded:
                    item = next(messages, None)
                    if item is None:
                        raise MappingError(f"{self.path}: {ep.name}: {c.key} ends before the frame at bag time "
                                           f"{key[1] / 1e9:.3f} s")
                    conn, t_bag, raw = item
                    if int(t_bag) in wanted[conn.topic] and (conn.topic, int(t_bag)) not in decoded:
                        decoded[(conn.topic, int(t_bag))] = _decode_image(
                            self.ts.deserialize_cdr(raw, conn.msgtype), f"{conn.topic} in {ep.name}")
                step[cam] = decoded[key]
                wanted[c.key][key[1]] -= 1
                if wanted[c.key][key[1]] == 0:
                    del decoded[key]
            yield step


def _types_for(s: FieldSource) -> tuple[str, ...]:
    if s.field in JOINT_FIELDS:
        return (_JOINT_MSG[str(s.field)],)
    if s.field in ("pose.position", "pose.orientation"):
        return ("geometry_msgs/msg/PoseStamped",)
    return _MULTIARRAY


def _marker(msg: Any) -> tuple[bool, str, bool | None]:
    """(starts an episode, instruction, success) of a marker message."""
    if isinstance(msg.data, bool):
        return bool(msg.data), "", None
    text = str(msg.data).strip()
    head, _, rest = text.partition(":")
    head, rest = head.strip().lower(), rest.strip()
    if head == "start":
        return True, rest, None
    if head == "end":
        return False, "", {"success": True, "failure": False}.get(rest.lower())
    raise MappingError(f"marker {text!r}: expected 'start[: instruction]' or 'end[: success|failure]'")


def _message_values(msg: Any, s: FieldSource, where: str) -> np.ndarray:
    if s.field in ("position", "velocity", "effort"):
        values = np.asarray(getattr(msg, s.field), np.float64)
        return _by_joint(list(msg.name), values, s, where)
    if s.field == "pose.position":
        p = msg.pose.position
        return _pick(np.array([p.x, p.y, p.z]), s, where)
    if s.field == "pose.orientation":
        q = msg.pose.orientation
        return _pick(np.array([q.x, q.y, q.z, q.w]), s, where)
    return _pick(np.asarray(msg.data, np.float64), s, where)


def _pick(values: np.ndarray, s: FieldSource, where: str) -> np.ndarray:
    if s.index is None:
        return values
    if max(s.index) >= values.shape[0]:
        raise MappingError(f"{where}: {s.describe()} indexes {list(s.index)}, but {s.key} has {values.shape[0]} values")
    return values[list(s.index)]


def _by_joint(names: list[str], values: np.ndarray, s: FieldSource, where: str) -> np.ndarray:
    assert s.joints is not None
    if values.shape[0] != len(names):
        raise MappingError(f"{where}: {s.key} has {len(names)} joint names but {values.shape[0]} {s.field} values")
    at = {n: i for i, n in enumerate(names)}
    missing = [j for j in s.joints if j not in at]
    if missing:
        raise MappingError(f"{where}: joint(s) {missing} are not in {s.key} (its joints: {', '.join(names)})")
    return values[[at[j] for j in s.joints]]


def _trajectory_samples(stream: _Stream, s: FieldSource, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every point of the commands as (stamp + time_from_start, values); a newer message replaces the points
    of older ones from its first point on (joint_trajectory_controller's replacement)."""
    stamps: list[int] = []
    rows: list[np.ndarray] = []
    for base, msg in zip(stream.stamps.tolist(), stream.msgs):
        names = list(msg.joint_names)
        points = [(base + int(p.time_from_start.sec) * 1_000_000_000 + int(p.time_from_start.nanosec),
                   _by_joint(names, np.asarray(getattr(p, str(s.field)), np.float64), s, where)) for p in msg.points]
        if not points:
            continue
        while stamps and stamps[-1] >= points[0][0]:
            stamps.pop()
            rows.pop()
        for t, v in points:
            stamps.append(t)
            rows.append(v)
    if not rows:
        raise MappingError(f"{where}: {s.key} has no trajectory points")
    return np.asarray(stamps, np.int64), np.stack(rows)


def _image_size(msg: Any) -> tuple[int, int]:
    if msg.__msgtype__ == "sensor_msgs/msg/Image":
        return int(msg.height), int(msg.width)
    frame = _decode_image(msg, "first frame")
    return int(frame.shape[0]), int(frame.shape[1])


def _decode_image(msg: Any, where: str) -> np.ndarray:
    """An Image (rgb8, bgr8, rgba8, bgra8, mono8) or CompressedImage (jpeg, png) -> (H, W, 3) uint8 RGB."""
    if msg.__msgtype__ == "sensor_msgs/msg/CompressedImage":
        import cv2

        frame = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise MappingError(f"{where}: cannot decode the compressed image (format {msg.format!r})")
        return np.ascontiguousarray(frame[..., ::-1])
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
    enc = str(msg.encoding)
    if enc not in channels:
        raise MappingError(f"{where}: image encoding {enc!r} is not supported ({', '.join(channels)})")
    h, w, c = int(msg.height), int(msg.width), channels[enc]
    data = np.asarray(msg.data, np.uint8).reshape(h, int(msg.step))[:, : w * c].reshape(h, w, c)
    if enc == "mono8":
        return np.repeat(data, 3, axis=2)
    rgb = data[..., :3] if enc.startswith("rgb") else data[..., 2::-1]
    return np.ascontiguousarray(rgb)


def import_rosbag(src: str | Path, out: str | Path, mapping: SourceMapping | str | Path | None = None, *,
                  overwrite: bool = False, progress: bool = True) -> ImportSummary:
    """Import the rosbag2 bag (directory, mcap or sqlite3) at ``src`` into the store ``out`` with ``mapping``
    (a mapping, its name or path; default the ``unified_mapping.yaml`` an export of ours writes beside the bag).
    Resumes an interrupted run of the same import."""
    path = Path(src)
    if mapping is None:
        if not (path / MAPPING_FILE).exists():
            raise MappingError(f"{path}: give mapping= (configs/mapping/<name>.yaml); only robot_policy exports "
                               f"carry their own ({MAPPING_FILE})")
        mapping = path / MAPPING_FILE
    m = mapping if isinstance(mapping, SourceMapping) else load_mapping(mapping)
    if m.source != "rosbag":
        raise MappingError(f"mapping {m.name} is for {m.source} recordings, not rosbag")
    source = RosbagSource(path, m)
    try:
        used = m.used_keys()
        dropped = {**m.dropped_fields(), **{f"topic {t}": "not in the mapping" for t in sorted(source.topics)
                                            if t not in used}}
        summary = ImportSummary(source="rosbag", src=str(path), out=str(out), mapped=describe_mapping(m),
                                dropped=dropped)
        storage = str(getattr(source.reader, "metadata", {}).get("storage_identifier", ""))
        store = open_import_store(out, m, path, control_hz=float(source.hz), cameras=source.cameras(),
                                  task=source.export_info().get("task"), overwrite=overwrite,
                                  provenance={"rosbag_storage": storage})

        def episodes(skip: int) -> Iterator[SourceEpisode]:
            for ep in source.episodes[skip:]:
                yield source.episode(ep)

        with store:
            run_import(store, m, episodes, len(source.episodes), summary, progress=progress)
        summary.skew = {k: {"mean_ms": float(np.mean(v)), "max_ms": float(np.max(v)), "samples": float(len(v))}
                        for k, v in source.skew.items()}
        return summary
    finally:
        source.close()


__all__ = ["RosbagExportConfig", "RosbagSource", "export_mapping", "export_rosbag", "import_rosbag",
           "wire_joint_names"]
