"""``record_node``: record a rig's episodes from its ROS 2 topics (and RealSense cameras) into an episode store.

A thin node over :mod:`robot_policy.teleop.rig_recorder` (the aligner and episode recorder, ROS-free): it
subscribes to every topic the rig config maps (``/joint_states``, per-arm ``JointTrajectory`` commands or a
leader arm's joint states, ``PoseStamped`` poses, ``Float64MultiArray`` vectors stamped on arrival, camera
``Image`` + ``CameraInfo``), reads the config's RealSense cameras in threads of their own, feeds every sample
with its stamp to the aligner and writes the aligned control-rate steps through the store's streaming writer.

QoS: measurements and images best effort with a deep queue (a recorder wants every sample, not the newest;
best effort matches any publisher); commands and episode markers reliable, as they are published.

Episodes: services ``/record/start`` (Trigger), ``/record/stop`` (SetBool: ``data`` = the episode succeeded),
``/record/discard`` (Trigger), ``/record/status`` (Trigger; JSON); the marker topic (std_msgs/String:
``start[: instruction]``, ``end[: success|failure]``, ``discard``); or, with ``episodes.split: pause``, the
commands themselves. A stopped episode is committed once its last steps are aligned (tolerance + latency
later); its report (JSON: steps, refused steps, skew per stream in ms) is published on ``/record/report``
(reliable, transient local) and is the ``last`` entry of the status. The ``seed`` parameter is recorded with
each episode.

Run: ``robot-policy record config=RIG out=STORE`` (this node, in that process), or
``python -m robot_policy_ros.record_node --ros-args -p config:=RIG -p out:=STORE [-p episodes:=N]``.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo as CameraInfoMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from robot_policy.data.interop.mapping import FieldSource, MappingError
from robot_policy.data.interop.rosbag import (
    _message_values,  # the importer's field picking, for the same mapping
)
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.runtime.dds import require_loopback
from robot_policy.teleop.rig_config import RigConfig
from robot_policy.teleop.rig_recorder import EpisodeReport, PauseSegmenter, RigRecorder
from robot_policy_ros import messages

START, STOP, DISCARD, STATUS, REPORT = "/record/start", "/record/stop", "/record/discard", "/record/status", "/record/report"
SENSOR_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
IMAGE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
MARKER_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
REPORT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)

_JOINT_STATE_FIELDS = ("position", "velocity", "effort")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_array(msg: Image) -> np.ndarray:
    """A sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 RGB; ValueError otherwise."""
    enc = str(msg.encoding)
    if enc not in _CHANNELS:
        raise ValueError(f"image encoding {enc!r} is not supported ({', '.join(_CHANNELS)})")
    h, w, c = int(msg.height), int(msg.width), _CHANNELS[enc]
    if int(msg.step) < w * c or len(msg.data) < h * int(msg.step):
        raise ValueError(f"image {w}x{h} {enc}: step {msg.step} and {len(msg.data)} bytes do not hold it")
    data = np.frombuffer(bytes(msg.data), np.uint8)[: h * int(msg.step)].reshape(h, int(msg.step))[:, : w * c]
    data = data.reshape(h, w, c)
    if enc == "mono8":
        return np.repeat(data, 3, axis=2)
    return np.ascontiguousarray(data[..., :3] if enc.startswith("rgb") else data[..., 2::-1])


def _message_type(topic: str, sources: list[tuple[str, FieldSource]], where: str) -> type:
    fields = {s.field for _, s in sources}
    if fields <= set(_JOINT_STATE_FIELDS):
        return JointState
    if fields == {"positions"}:
        return JointTrajectory
    if fields <= {"pose.position", "pose.orientation"}:
        from geometry_msgs.msg import PoseStamped

        return PoseStamped
    if fields == {"data"}:
        return Float64MultiArray
    raise ValueError(f"{where}: topic {topic} mixes or uses fields {sorted(map(str, fields))} the recorder does not "
                     "read (JointState position/velocity/effort, JointTrajectory positions, PoseStamped, "
                     "Float64MultiArray data)")


def _pick(names: list[str], values: np.ndarray, s: FieldSource, where: str) -> np.ndarray:
    assert s.joints is not None
    at = {n: i for i, n in enumerate(names)}
    missing = [j for j in s.joints if j not in at]
    if missing:
        raise MappingError(f"{where}: joint(s) {missing} are not in {s.key} (its joints: {', '.join(names)})")
    return values[[at[j] for j in s.joints]] * s.scale + s.offset


class RecordNode(Node):
    """See the module docstring. ``open_store(cameras)`` makes the store at the first episode's start."""

    def __init__(self, rig: RigConfig, open_store: Callable[[Mapping[str, CameraInfo]], EpisodeStore], *,
                 episodes: int = 0, seed: int = -1) -> None:
        super().__init__("record")
        self.rig = rig
        self._open_store = open_store
        self.max_episodes = episodes
        self.declare_parameter("seed", seed)
        self.store: EpisodeStore | None = None
        self.recorder: RigRecorder | None = None
        self.reports: list[dict[str, Any]] = []
        self.malformed: dict[str, int] = {}
        self.last_malformed = ""
        self._language = ""
        self._measured: dict[str, tuple[int, int, np.ndarray | None]] = {}
        self._camera_k: dict[str, np.ndarray | None] = {}
        self._frames: queue.SimpleQueue[tuple[str, float, np.ndarray]] = queue.SimpleQueue()
        # the aligner takes samples from the start; the recorder (and the store) come with the first episode
        from robot_policy.pipelines.record import make_aligner

        self.aligner = make_aligner(rig)
        self._segmenter = PauseSegmenter(rig.episodes.pause_s) if rig.episodes.split == "pause" else None
        self._stop_threads = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cameras: list[Any] = []
        self.finished = False

        commands = rig.command_topics()
        for topic, sources in rig.topic_fields().items():
            msg_type = _message_type(topic, sources, rig.path)
            qos = COMMAND_QOS if topic in commands else SENSOR_QOS
            self.create_subscription(msg_type, topic, lambda m, t=topic, s=sources: self._on_message(t, s, m), qos)
        for name, cam in rig.cameras.items():
            if cam.topic is not None:
                self.create_subscription(Image, cam.topic, lambda m, n=name: self._on_image(n, m), IMAGE_QOS)
                if cam.info is not None:
                    self.create_subscription(CameraInfoMsg, cam.info, lambda m, n=name: self._on_info(n, m), SENSOR_QOS)
                else:
                    self._camera_k[name] = None
        self.create_subscription(String, rig.episodes.topic, self._on_marker, MARKER_QOS)
        self.create_service(Trigger, START, self._srv_start)
        self.create_service(SetBool, STOP, self._srv_stop)
        self.create_service(Trigger, DISCARD, self._srv_discard)
        self.create_service(Trigger, STATUS, self._srv_status)
        self._pub_report = self.create_publisher(String, REPORT, REPORT_QOS)
        self._open_realsense()
        self.create_timer(min(0.5 / rig.control_hz, 0.02), self._tick)

    # ---- samples ------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _bad(self, topic: str, why: str) -> None:
        self.malformed[topic] = self.malformed.get(topic, 0) + 1
        self.last_malformed = f"{topic}: {why}"
        self.get_logger().warning(f"malformed message: {self.last_malformed}", throttle_duration_sec=2.0)

    def _feed(self, stream: str, stamp: float, value: Any) -> None:
        self.aligner.add(stream, stamp, value)

    def _on_message(self, topic: str, sources: list[tuple[str, FieldSource]], msg: Any) -> None:
        now = self._now()
        where = f"{topic}"
        try:
            if isinstance(msg, JointTrajectory):
                names, times, positions = messages.trajectory_arrays(msg, now)
                values = [{key: _pick(names, row, s, where) for key, s in sources} for row in positions]
                self.aligner.add_points(topic, list(times), values)
                if self._segmenter is not None:
                    self._activity(now)
                return
            stamp = messages.to_seconds(msg.header.stamp) if hasattr(msg, "header") else now
            stamp = stamp or now  # an unstamped header: its arrival
            value = {key: np.asarray(_message_values(msg, s, where), np.float64) for key, s in sources}
        except (MappingError, ValueError) as e:
            self._bad(topic, str(e))
            return
        if not all(np.all(np.isfinite(v)) for v in value.values()):
            self._bad(topic, "NaN or Inf")
            return
        self._feed(topic, stamp, value)
        if self._segmenter is not None and topic in self.rig.action_topics():
            self._activity(now)

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            frame = image_array(msg)
        except ValueError as e:
            self._bad(self.rig.cameras[camera].topic or camera, str(e))
            return
        size = self._measured.get(camera)
        if size is not None and size[:2] != frame.shape[:2]:
            self._bad(camera, f"frame {frame.shape[1]}x{frame.shape[0]}, the camera records {size[1]}x{size[0]}")
            return
        if size is None and camera in self._camera_k:
            self._measured[camera] = (frame.shape[0], frame.shape[1], self._camera_k[camera])
        stamp = messages.to_seconds(msg.header.stamp) or self._now()
        self._feed(camera, stamp, frame)

    def _on_info(self, camera: str, msg: CameraInfoMsg) -> None:
        if camera in self._camera_k:
            return
        k = np.asarray(msg.k, np.float64).reshape(3, 3)
        self._camera_k[camera] = k if np.any(k) and np.all(np.isfinite(k)) else None

    # ---- RealSense cameras --------------------------------------------------------------------------
    def _open_realsense(self) -> None:
        from robot_policy.teleop.realsense_source import RealSenseCamera

        for name, cam in self.rig.cameras.items():
            if cam.realsense is None:
                continue
            rs_cam = RealSenseCamera.open(cam.realsense, cam.width, cam.height, cam.fps)
            self._cameras.append(rs_cam)
            self._measured[name] = (cam.height, cam.width, rs_cam.intrinsics.k)
            thread = threading.Thread(target=self._read_camera, args=(name, rs_cam), name=f"realsense-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read_camera(self, name: str, cam: Any) -> None:
        while not self._stop_threads.is_set():
            frame = cam.read(0.2)
            if frame is not None:
                self._frames.put((name, frame.stamp, frame.data))

    # ---- episodes -----------------------------------------------------------------------------------
    def start_episode(self, language: str = "") -> str:
        """Begin an episode now; returns what happened (raises RuntimeError with the reason to refuse)."""
        if self.recorder is None:
            waiting = [n for n in self.rig.cameras if n not in self._measured]
            if waiting:
                raise RuntimeError(f"camera(s) {', '.join(waiting)} have sent no image (and camera info) yet")
            from robot_policy.pipelines.record import camera_infos, make_recorder

            self.store = self._open_store(camera_infos(self.rig, self._measured))
            self.recorder = make_recorder(self.rig, self.store, self.aligner)
        if self.recorder.recording:
            raise RuntimeError("an episode is already being recorded")
        seed = int(self.get_parameter("seed").value)
        self._language = language or self.rig.instruction
        self.recorder.start(self._now(), language=self._language, seed=seed)
        return f"recording episode {len(self.reports)} (seed {seed}): {self._language!r}"

    def stop_episode(self, success: bool | None) -> str:
        if self.recorder is None or not self.recorder.recording:
            raise RuntimeError("no episode is being recorded")
        if self.aligner.t_stop is not None:
            raise RuntimeError("the episode is already stopping")
        self.recorder.stop(self._now(), success)
        return "stopping: the episode is committed once its last steps are aligned (see /record/report)"

    def discard_episode(self) -> str:
        if self.recorder is None or not self.recorder.recording:
            raise RuntimeError("no episode is being recorded")
        self._finish(self.recorder.discard())
        return "discarded"

    def _finish(self, report: EpisodeReport) -> None:
        entry = {"episode": len(self.reports), **report.to_dict(), "language": self._language}
        self.reports.append(entry)
        self._pub_report.publish(String(data=json.dumps(entry)))
        what = f"committed as episode {report.index}" if report.index is not None else f"discarded ({report.discarded})"
        skew = ", ".join(f"{k} {v['max']:.1f}" for k, v in report.skew_ms.items())
        self.get_logger().info(f"episode {entry['episode']}: {report.steps} steps, {report.refused} refused, {what}; "
                               f"max skew ms: {skew}")
        if self.max_episodes and sum(r["index"] is not None for r in self.reports) >= self.max_episodes:
            self.finished = True

    def _activity(self, now: float) -> None:
        assert self._segmenter is not None
        if self._segmenter.activity(now) is not None:
            try:
                self.get_logger().info(self.start_episode())
            except (RuntimeError, StoreError, ValueError) as e:
                self._segmenter.in_episode = False
                self.get_logger().warning(f"pause segmentation: cannot start an episode: {e}",
                                          throttle_duration_sec=2.0)

    def _tick(self) -> None:
        while True:
            try:
                name, stamp, frame = self._frames.get_nowait()
            except queue.Empty:
                break
            self._feed(name, stamp, frame)
        now = self._now()
        stop = self._segmenter.poll(now) if self._segmenter is not None else None
        if stop is not None and self.recorder is not None and self.recorder.recording:
            self.recorder.stop(stop, None)
        if self.recorder is None:
            self.aligner.poll(now)  # idle: keeps the buffers short
        else:
            try:
                report = self.recorder.poll(now)
            except (StoreError, MappingError, ValueError) as e:  # a bad step: lose this episode, keep recording
                self.get_logger().error(f"episode lost: {e}")
                report = self.recorder.discard(f"write failed: {e}")
            if report is not None:
                self._finish(report)

    # ---- services and markers -----------------------------------------------------------------------
    def _answer(self, response: Any, action: Callable[[], str]) -> Any:
        try:
            response.message, response.success = action(), True
        except (RuntimeError, StoreError, ValueError) as e:
            response.message, response.success = str(e), False
            self.get_logger().warning(f"refused: {e}")
        return response

    def _srv_start(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._answer(response, self.start_episode)

    def _srv_stop(self, req: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        return self._answer(response, lambda: self.stop_episode(bool(req.data)))

    def _srv_discard(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._answer(response, self.discard_episode)

    def _srv_status(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        rec = self.recorder
        status = {"recording": bool(rec and rec.recording), "episodes": len(self.reports),
                  "committed": sum(r["index"] is not None for r in self.reports),
                  "last": self.reports[-1] if self.reports else None, "malformed": self.malformed,
                  "last_malformed": self.last_malformed,
                  "received": {n: b.received for n, b in self.aligner.buffers.items()}}
        response.success, response.message = True, json.dumps(status)
        return response

    def _on_marker(self, msg: String) -> None:
        text = str(msg.data).strip()
        head, _, rest = text.partition(":")
        head, rest = head.strip().lower(), rest.strip()
        try:
            if head == "start":
                self.get_logger().info(self.start_episode(rest))
            elif head == "end":
                outcome = {"success": True, "failure": False, "": None}.get(rest.lower(), "bad")
                if outcome == "bad":
                    raise ValueError(f"marker {text!r}: the outcome must be success or failure")
                self.get_logger().info(self.stop_episode(outcome))  # type: ignore[arg-type]
            elif head == "discard":
                self.get_logger().info(self.discard_episode())
            else:
                raise ValueError(f"marker {text!r}: expected 'start[: instruction]', 'end[: success|failure]' or "
                                 "'discard'")
        except (RuntimeError, StoreError, ValueError) as e:
            self.get_logger().warning(f"{self.rig.episodes.topic}: {e}")

    # ---- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Drop an episode in flight, stop the cameras (before exit: librealsense), release the store."""
        if self.recorder is not None and self.recorder.recording:
            self.get_logger().warning("shutting down during an episode: it is discarded")
            self.recorder.close()
        self._stop_threads.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for cam in self._cameras:
            cam.close()
        if self.store is not None:
            self.store.close()


def record(rig: RigConfig, open_store: Callable[[Mapping[str, CameraInfo]], EpisodeStore], *, episodes: int = 0,
           seed: int = -1, idle_timeout_s: float = 0.0) -> list[dict[str, Any]]:
    """Run the node in this process until ``episodes`` are committed (0: until Ctrl-C); the reports."""
    require_loopback()
    rclpy.init(args=[])
    node = RecordNode(rig, open_store, episodes=episodes, seed=seed)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    t0 = time.monotonic()
    try:
        while rclpy.ok() and not node.finished:
            executor.spin_once(timeout_sec=0.05)
            if idle_timeout_s and not node.reports and node.recorder is None and time.monotonic() - t0 > idle_timeout_s:
                raise TimeoutError(f"no episode started within {idle_timeout_s:.0f} s")
    except (KeyboardInterrupt, ExternalShutdownException, RCLError):  # ROS2.md pitfall 3
        pass
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return node.reports


def main(argv: list[str] | None = None) -> None:
    """``python -m robot_policy_ros.record_node config=RIG out=STORE [key=value ...]``: ``robot-policy record``."""
    from robot_policy.cli.main import main as cli

    sys.exit(cli(["record", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
