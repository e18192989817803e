"""LeRobot v3.0 datasets: export a store to one, import one into a store, with pyarrow and PyAV.

``lerobot`` itself is not a dependency (it pins an older torch); this module writes and reads the layout
its ``LeRobotDataset`` (codebase_version "v3.0") uses, field by field::

    meta/info.json                              codebase_version, robot_type, totals, chunks_size, file size
                                                limits, fps, splits, data_path / video_path templates, features
    meta/stats.json                             per feature: min, max, mean, std, count, q01 q10 q50 q90 q99
                                                (images per channel, (3, 1, 1), in [0, 1])
    meta/tasks.parquet                          task strings (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: episode_index, tasks, length,
                                                data/{chunk,file}_index, dataset_{from,to}_index,
                                                videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                                                stats/<feature>/<stat>, meta/episodes/{chunk,file}_index
    data/chunk-000/file-000.parquet             frames of many episodes; the features plus timestamp
                                                (float32 s, frame_index / fps), frame_index, episode_index,
                                                index, task_index
    videos/<key>/chunk-000/file-000.mp4         per camera, the episodes one after the other (AV1 by default:
                                                libsvtav1, yuv420p, g=2, crf=30, preset 12; H.264 on request)

What an export adds for robot_policy (ignored by LeRobot, whose policies read ``observation.*`` and
``action`` only): ``unified.state`` / ``unified.action`` (128-d float32), ``unified.timestamp`` (float64, only
when the store's timestamps are not ``frame_index / fps``), episode columns ``unified/state_mask``,
``unified/action_mask``, ``unified/seed``, ``unified/success``, ``meta/unified.json`` (embodiment, cameras
with calibration, task, provenance) and ``meta/unified_mapping.yaml``, the mapping that imports it back
exactly. Native columns: ``observation.state`` and ``action`` are the embodiment's native fields in spec
order (names ``<field>.<i>``), ``observation.environment_state`` the store's ``object_state``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import yaml
from tqdm import tqdm

from robot_policy import __version__
from robot_policy.data import format as fmt
from robot_policy.data.interop.importer import (
    ImportSummary,
    SourceEpisode,
    describe_mapping,
    open_import_store,
    run_import,
)
from robot_policy.data.interop.mapping import FieldSource, MappingError, SourceMapping, load_mapping
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.spaces.embodiment import FieldMap
from robot_policy.spaces.unified import UNIFIED_DIM, describe_index

if TYPE_CHECKING:
    import av.container
    import pyarrow as pa

CODEBASE_VERSION: Final = "v3.0"
DEFAULT_CHUNK_SIZE: Final = 1000  # files per chunk directory
DEFAULT_DATA_FILE_SIZE_IN_MB: Final = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB: Final = 200
DATA_PATH: Final = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH: Final = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH: Final = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH: Final = "meta/info.json"
STATS_PATH: Final = "meta/stats.json"
TASKS_PATH: Final = "meta/tasks.parquet"
UNIFIED_INFO_PATH: Final = "meta/unified.json"
UNIFIED_MAPPING_PATH: Final = "meta/unified_mapping.yaml"
#: the per-frame columns every LeRobot dataset has, after its own features
DEFAULT_FEATURES: Final[dict[str, dict[str, Any]]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES: Final = (0.01, 0.10, 0.50, 0.90, 0.99)
#: LeRobot's codec names (its ``vcodec``) -> PyAV encoder; the default is LeRobot's
VCODECS: Final = {"libsvtav1": "libsvtav1", "h264": "libx264"}
#: frames of an episode image stats are computed from (LeRobot samples too)
STATS_MAX_FRAMES: Final = 100
#: LeRobot's default tolerance between a frame's timestamp and its video frame's (``tolerance_s``)
TOLERANCE_S: Final = 1e-4

STATE_FEATURE: Final = "observation.state"
ACTION_FEATURE: Final = "action"
ENV_STATE_FEATURE: Final = "observation.environment_state"
UNIFIED_STATE: Final = "unified.state"
UNIFIED_ACTION: Final = "unified.action"
UNIFIED_TIMESTAMP: Final = "unified.timestamp"
UNIFIED_META: Final = "unified/"  # prefix of the per-episode columns in meta/episodes


def image_feature(camera: str) -> str:
    return f"observation.images.{camera}"


@dataclass
class LeRobotExportConfig:
    """Options of ``robot-policy dataset export lerobot``."""

    #: output directory (the dataset root; must not exist unless overwrite)
    out: str = ""
    #: video codec: libsvtav1 (AV1, LeRobot's default) or h264
    vcodec: str = "libsvtav1"
    #: constant rate factor (LeRobot: 30); lower = better images, bigger files
    crf: int = 30
    #: keyframe interval in frames (LeRobot: 2, for fast random access)
    g: int = 2
    #: replace an existing directory at out
    overwrite: bool = False
    chunks_size: int = DEFAULT_CHUNK_SIZE
    data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB
    video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out: give the dataset directory, e.g. out=exports/lift_lerobot")
        if self.vcodec not in VCODECS:
            raise ValueError(f"vcodec: unknown {self.vcodec!r}; codecs: {', '.join(VCODECS)}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in [0, 63], got {self.crf}")
        for name in ("g", "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ---- statistics (LeRobot's compute_episode_stats / aggregate_stats) ---------------------------------

def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """(N, D) rows -> min, max, mean, std, count (1,), q01..q99, each (D,)."""
    v = np.asarray(values, dtype=np.float64)
    stats = {"min": v.min(axis=0), "max": v.max(axis=0), "mean": v.mean(axis=0), "std": v.std(axis=0),
             "count": np.array([v.shape[0]], dtype=np.int64)}
    for q, value in zip(QUANTILES, np.quantile(v, QUANTILES, axis=0)):
        stats[f"q{round(q * 100):02d}"] = value
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 -> per-channel stats in [0, 1], each (3, 1, 1); count = N frames."""
    per_channel = feature_stats(frames.reshape(-1, 3) / 255.0)
    return {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in per_channel.items()} | {
        "count": np.array([frames.shape[0]], dtype=np.int64)}


def aggregate_stats(episodes: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset stats from per-episode ones, as LeRobot aggregates them: count-weighted mean, pooled
    variance, min of mins, max of maxes, count-weighted quantiles."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in episodes[0]:
        eps = [e[key] for e in episodes]
        counts = np.array([float(e["count"][0]) for e in eps])  # (E,)
        total = counts.sum()
        w = counts.reshape(-1, *([1] * eps[0]["mean"].ndim))  # (E, 1, ...) against (E, *stat shape)

        def weighted(stat: str, eps: list[Mapping[str, np.ndarray]] = eps, w: np.ndarray = w,
                     total: float = total) -> np.ndarray:
            return (np.stack([e[stat] for e in eps]) * w).sum(axis=0) / total

        mean = weighted("mean")
        means, stds = np.stack([e["mean"] for e in eps]), np.stack([e["std"] for e in eps])
        agg = {"min": np.min(np.stack([e["min"] for e in eps]), axis=0),
               "max": np.max(np.stack([e["max"] for e in eps]), axis=0), "mean": mean,
               "std": np.sqrt(((stds ** 2 + (means - mean) ** 2) * w).sum(axis=0) / total),
               "count": np.array([int(total)], dtype=np.int64)}
        agg.update({q: weighted(q) for q in eps[0] if q.startswith("q")})
        out[key] = agg
    return out


def _stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()}


# ---- export -----------------------------------------------------------------------------------------

def native_names(fmap: FieldMap) -> list[str]:
    """Names of the native vector's components: ``<field>`` for a 1-d field, else ``<field>.<i>``."""
    return [f.name if f.dim == 1 else f"{f.name}.{i}" for f in fmap.fields for i in range(f.dim)]


def _export_features(store: EpisodeStore, exact_timestamps: bool) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The LeRobot features of a store's export, and store data key -> feature for the low-dim columns."""
    spec = store.embodiment
    features: dict[str, dict[str, Any]] = {
        STATE_FEATURE: {"dtype": "float32", "shape": [spec.state.native_dim], "names": native_names(spec.state)},
        ACTION_FEATURE: {"dtype": "float32", "shape": [spec.action.native_dim], "names": native_names(spec.action)},
    }
    columns: dict[str, str] = {}
    for key in store.data_keys:
        if key in fmt.REQUIRED_DATA or fmt.is_image_key(key):
            continue
        arr = store.array(key)
        if arr.ndim > 2:
            raise StoreError(f"{store.path}: data/{key} has rows of shape {arr.shape[1:]}; LeRobot export takes "
                             "vectors and scalars")
        name = ENV_STATE_FEATURE if key == fmt.OBJECT_STATE else key
        width = int(arr.shape[1]) if arr.ndim == 2 else 1
        features[name] = {"dtype": str(arr.dtype), "shape": [width], "names": [f"{key}.{i}" for i in range(width)]}
        columns[key] = name
    for cam, info in store.cameras.items():
        features[image_feature(cam)] = {"dtype": "video", "shape": [info.height, info.width, 3],
                                        "names": ["height", "width", "channels"], "info": None}
    unified_names = [describe_index(i) for i in range(UNIFIED_DIM)]
    features[UNIFIED_STATE] = {"dtype": "float32", "shape": [UNIFIED_DIM], "names": unified_names}
    features[UNIFIED_ACTION] = {"dtype": "float32", "shape": [UNIFIED_DIM], "names": unified_names}
    if exact_timestamps:
        features[UNIFIED_TIMESTAMP] = {"dtype": "float64", "shape": [1], "names": None}
    return {**features, **DEFAULT_FEATURES}, columns


def lerobot_timestamps(timestamps: np.ndarray, fps: int) -> tuple[np.ndarray, bool]:
    """LeRobot's float32 timestamp column for one episode's (T,) float64 store timestamps, and whether the
    store's are exactly ``frame_index / fps`` (then float32 loses nothing an import cannot restore)."""
    grid = np.arange(timestamps.shape[0], dtype=np.float64) / fps
    on_grid = bool(np.array_equal(timestamps, grid))
    return (grid if on_grid else timestamps - timestamps[0]).astype(np.float32), on_grid


def export_lerobot(store_path: str | Path, cfg: LeRobotExportConfig, progress: bool = True) -> dict[str, Any]:
    """Write the store at ``store_path`` as a LeRobot v3.0 dataset in ``cfg.out``. Returns a summary with
    the files written and each camera's PSNR of its video against the store's frames (dB)."""
    import av  # noqa: F401  # fail before writing anything when PyAV is missing

    store = EpisodeStore.open(store_path)
    fps = store.control_hz
    if fps != int(fps):
        raise StoreError(f"{store_path}: control rate {fps} Hz is not a whole number; LeRobot's fps is an integer")
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise StoreError(f"{out} already exists (pass overwrite=true to replace it)")
        shutil.rmtree(out)
    if store.n_episodes == 0:
        raise StoreError(f"{store_path}: no episodes to export")
    ts_all = np.asarray(store.array(fmt.TIMESTAMP)[: store.n_steps])
    exact_ts = not all(lerobot_timestamps(ts_all[a:b], int(fps))[1] for a, b in
                       (store.episode_bounds(i) for i in range(store.n_episodes)))
    odd = [f"{cam} ({c.height}x{c.width})" for cam, c in store.cameras.items() if c.height % 2 or c.width % 2]
    if odd:
        raise StoreError(f"{store_path}: camera(s) {', '.join(odd)} have an odd size; yuv420p video (what LeRobot "
                         "writes) needs even heights and widths")
    features, columns = _export_features(store, exact_ts)
    writer = _DatasetWriter(out, int(fps), features, cfg, robot_type=store.embodiment.name)
    meta = store.episode_meta()
    tasks: dict[str, int] = {}
    for e in tqdm(range(store.n_episodes), desc="export lerobot", unit="ep", disable=not progress):
        start, end = store.episode_bounds(e)
        language = str(meta[fmt.LANGUAGE][e])
        task_index = tasks.setdefault(language, len(tasks))
        rows = _episode_columns(store, start, end, columns, exact_ts, int(fps))
        extra = {f"{UNIFIED_META}state_mask": meta[fmt.STATE_MASK][e].tolist(),
                 f"{UNIFIED_META}action_mask": meta[fmt.ACTION_MASK][e].tolist(),
                 f"{UNIFIED_META}seed": int(meta[fmt.SEED][e]), f"{UNIFIED_META}success": int(meta[fmt.SUCCESS][e])}
        frames = {image_feature(cam): _frame_blocks(store, cam, start, end) for cam in store.cameras}
        writer.add_episode(rows, frames, task_index, [language], extra)
    writer.finish(tasks)
    _write_unified_meta(out, store, features)
    psnr = {cam: video_psnr(out, store, cam, writer.episodes) for cam in store.cameras}
    store.close()
    return {"out": str(out), "episodes": store.n_episodes, "frames": store.n_steps, "vcodec": cfg.vcodec,
            "crf": cfg.crf, "psnr_db": {cam: float(np.mean(v)) for cam, v in psnr.items()},
            "psnr_min_db": {cam: float(np.min(v)) for cam, v in psnr.items()}}


def video_psnr(root: Path, store: EpisodeStore, camera: str, episodes: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per-episode PSNR (dB) of ``camera``'s frames decoded from the export at ``root`` (as LeRobot looks them
    up: from_timestamp + timestamp) against the store's frames."""
    key = image_feature(camera)
    reader = _VideoReader(root, VIDEO_PATH, key, int(store.control_hz))
    out = []
    try:
        for e, row in enumerate(episodes):
            start, end = store.episode_bounds(e)
            ts32 = lerobot_timestamps(np.asarray(store.array(fmt.TIMESTAMP)[start:end]), int(store.control_hz))[0]
            decoded = np.stack(list(reader.frames(row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"],
                                                  row[f"videos/{key}/from_timestamp"], ts32.astype(np.float64),
                                                  f"episode {e}")))
            out.append(psnr(np.asarray(store.array(fmt.image_key(camera))[start:end]), decoded))
    finally:
        reader.close()
    return out


def _episode_columns(store: EpisodeStore, start: int, end: int, columns: Mapping[str, str], exact_ts: bool,
                     fps: int) -> dict[str, np.ndarray]:
    """The low-dim feature columns of rows ``[start, end)``, without the index columns."""
    spec = store.embodiment
    state = np.asarray(store.array(fmt.STATE)[start:end])
    action = np.asarray(store.array(fmt.ACTION)[start:end])
    ts = np.asarray(store.array(fmt.TIMESTAMP)[start:end])
    rows = {STATE_FEATURE: spec.state.unified_to_flat(state).astype(np.float32),
            ACTION_FEATURE: spec.action.unified_to_flat(action).astype(np.float32)}
    for key, name in columns.items():
        rows[name] = np.asarray(store.array(key)[start:end])
    rows[UNIFIED_STATE], rows[UNIFIED_ACTION] = state, action
    if exact_ts:
        rows[UNIFIED_TIMESTAMP] = ts
    rows["timestamp"] = lerobot_timestamps(ts, fps)[0]
    return rows


def _frame_blocks(store: EpisodeStore, camera: str, start: int, end: int) -> Iterator[np.ndarray]:
    arr = store.array(fmt.image_key(camera))
    for lo in range(start, end, fmt.IMAGE_WRITE_BLOCK):
        yield np.asarray(arr[lo: min(end, lo + fmt.IMAGE_WRITE_BLOCK)])


def _write_unified_meta(out: Path, store: EpisodeStore, features: Mapping[str, Any]) -> None:
    """meta/unified.json (what the store records that LeRobot has no place for) and the mapping that
    imports the export back exactly."""
    info = {"format": "robot_policy.lerobot_export", "robot_policy_version": __version__,
            "embodiment": store.embodiment.to_dict(), "control_hz": store.control_hz,
            "cameras": {cam: {"feature": image_feature(cam), **c.to_dict()} for cam, c in store.cameras.items()},
            "task": store.attrs.get("task"), "provenance": store.attrs.get("provenance", {}),
            "store": str(store.path)}
    (out / UNIFIED_INFO_PATH).write_text(json.dumps(info, indent=2) + "\n")
    spec = store.embodiment
    mapping: dict[str, Any] = {
        "name": f"lerobot_export_{spec.name}",
        "description": f"imports this robot_policy export of {store.path} back exactly (written by the export)",
        "source": "lerobot", "embodiment": spec.to_dict(),
        "state": _slices(spec.state, STATE_FEATURE), "action": _slices(spec.action, ACTION_FEATURE),
        "cameras": {cam: {"key": image_feature(cam)} for cam in store.cameras},
        "extras": {key: {"key": ENV_STATE_FEATURE if key == fmt.OBJECT_STATE else key}
                   for key in store.data_keys if key not in fmt.REQUIRED_DATA and not fmt.is_image_key(key)},
        "episodes": {"split": "source"},
        "unified": {"state": UNIFIED_STATE, "action": UNIFIED_ACTION, "meta": UNIFIED_META,
                    "timestamp": UNIFIED_TIMESTAMP if UNIFIED_TIMESTAMP in features else None},
    }
    (out / UNIFIED_MAPPING_PATH).write_text(yaml.safe_dump(mapping, sort_keys=False))


def _slices(fmap: FieldMap, feature: str) -> dict[str, dict[str, Any]]:
    out, at = {}, 0
    for f in fmap.fields:
        out[f.name] = {"key": feature, "slice": [at, at + f.dim]}
        at += f.dim
    return out


class _VideoFile:
    """One camera's current mp4 file: frames of consecutive episodes in one stream at ``fps``."""

    def __init__(self, path: Path, fps: int, height: int, width: int, cfg: LeRobotExportConfig) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.frames, self.bytes = path, 0, 0
        self.container: av.container.OutputContainer = av.open(str(path), "w")
        options = {"g": str(cfg.g), "crf": str(cfg.crf)}
        if cfg.vcodec == "libsvtav1":
            options["preset"] = "12"
        stream = self.container.add_stream(VCODECS[cfg.vcodec], rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        self.stream: av.VideoStream = stream

    def encode(self, frame: np.ndarray) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self._mux(self.stream.encode(vf))
        self.frames += 1

    def _mux(self, packets: Sequence[Any]) -> None:
        for p in packets:
            self.bytes += p.size
            self.container.mux(p)

    def close(self) -> None:
        self._mux(self.stream.encode(None))
        self.container.close()


class _DatasetWriter:
    """Writes frames, videos and episode rows in LeRobot's v3.0 layout, rolling files at the size limits."""

    def __init__(self, root: Path, fps: int, features: dict[str, dict[str, Any]], cfg: LeRobotExportConfig,
                 robot_type: str | None = None) -> None:
        import pyarrow as pa

        self.root, self.fps, self.features, self.cfg, self.robot_type = root, fps, features, cfg, robot_type
        self.video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
        self.columns = [k for k, f in features.items() if f["dtype"] != "video"]
        self.schema = pa.schema([(k, _arrow_type(features[k])) for k in self.columns],
                                metadata={"huggingface": json.dumps({"info": {"features": {
                                    k: _hf_feature(features[k]) for k in self.columns}}})})
        self.data_file: tuple[int, int] = (0, 0)
        self.data_writer: Any = None
        self.videos: dict[str, tuple[tuple[int, int], _VideoFile]] = {}
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.total_frames = 0
        root.mkdir(parents=True)

    def add_episode(self, rows: dict[str, np.ndarray], frames: Mapping[str, Iterator[np.ndarray]], task_index: int,
                    tasks: list[str], extra: Mapping[str, Any]) -> None:
        """Write one episode: its rows, its frames per video key, its episodes row and stats."""
        n = rows["timestamp"].shape[0]
        index = len(self.episodes)
        rows = {**rows, "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, index, dtype=np.int64),
                "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
                "task_index": np.full(n, task_index, dtype=np.int64)}
        stats = {k: feature_stats(rows[k].reshape(n, -1)) for k in self.columns}
        ep: dict[str, Any] = {"episode_index": index, "tasks": tasks, "length": n}
        ep.update(self._write_data(rows, n))
        for key in self.video_keys:
            meta, stats[key] = self._write_video(key, frames[key], n)
            ep.update(meta)
        ep.update({f"stats/{k}/{s}": v.tolist() for k, st in stats.items() for s, v in st.items()})
        ep.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        ep.update(extra)
        self.episodes.append(ep)
        self.episode_stats.append(stats)
        self.total_frames += n

    def _write_data(self, rows: Mapping[str, np.ndarray], n: int) -> dict[str, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        limit = self.cfg.data_files_size_in_mb * 1024 ** 2
        if self.data_writer is not None and self._data_path().stat().st_size >= limit:
            self.data_writer.close()
            self.data_writer, self.data_file = None, _next_file(self.data_file, self.cfg.chunks_size)
        if self.data_writer is None:
            self._data_path().parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(self._data_path(), self.schema, compression="snappy",
                                                use_dictionary=True)
        arrays = [_arrow_column(rows[k], self.schema.field(k).type) for k in self.columns]
        self.data_writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        return {"data/chunk_index": self.data_file[0], "data/file_index": self.data_file[1],
                "dataset_from_index": self.total_frames, "dataset_to_index": self.total_frames + n}

    def _data_path(self) -> Path:
        return self.root / DATA_PATH.format(chunk_index=self.data_file[0], file_index=self.data_file[1])

    def _write_video(self, key: str, blocks: Iterator[np.ndarray], n: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        height, width = self.features[key]["shape"][:2]
        limit = self.cfg.video_files_size_in_mb * 1024 ** 2
        where, video = self.videos.get(key, ((0, 0), None))
        if video is not None and video.bytes >= limit:
            video.close()
            where, video = _next_file(where, self.cfg.chunks_size), None
        if video is None:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=where[0], file_index=where[1])
            video = _VideoFile(path, self.fps, height, width, self.cfg)
        self.videos[key] = (where, video)
        first = video.frames
        keep = set(np.linspace(0, n - 1, min(n, STATS_MAX_FRAMES)).round().astype(int).tolist())
        sampled, t = [], 0
        for block in blocks:
            for frame in block:
                video.encode(frame)
                if t in keep:
                    sampled.append(frame)
                t += 1
        if t != n:
            raise StoreError(f"{key}: {t} frames for an episode of {n} steps")
        meta = {f"videos/{key}/chunk_index": where[0], f"videos/{key}/file_index": where[1],
                f"videos/{key}/from_timestamp": first / self.fps, f"videos/{key}/to_timestamp": (first + n) / self.fps}
        return meta, image_stats(np.stack(sampled))

    def finish(self, tasks: Mapping[str, int]) -> None:
        """Close the files; write the episodes, tasks, stats and info."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.data_writer is not None:
            self.data_writer.close()
        for _, video in self.videos.values():
            video.close()
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self.episodes)
        pq.write_table(table, path, compression="snappy", use_dictionary=True)
        write_tasks(self.root / TASKS_PATH, list(tasks))
        (self.root / STATS_PATH).write_text(json.dumps(_stats_to_json(aggregate_stats(self.episode_stats)), indent=4))
        for key in self.video_keys:
            first = self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self.features[key]["info"] = video_info(first)
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type, "total_episodes": len(self.episodes),
                "total_frames": self.total_frames, "total_tasks": len(tasks), "chunks_size": self.cfg.chunks_size,
                "data_files_size_in_mb": self.cfg.data_files_size_in_mb,
                "video_files_size_in_mb": self.cfg.video_files_size_in_mb, "fps": self.fps,
                "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.video_keys else None, "features": self.features}
        (self.root / INFO_PATH).write_text(json.dumps(info, indent=4, ensure_ascii=False))


def _next_file(where: tuple[int, int], chunks_size: int) -> tuple[int, int]:
    chunk, file = where
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _arrow_type(feature: Mapping[str, Any]) -> pa.DataType:
    import pyarrow as pa

    value = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = list(feature["shape"])
    # the child field is named "item", as `datasets` writes it (pyarrow 26 would name it "element")
    return value if shape == [1] else pa.list_(pa.field("item", value), shape[0])


def _hf_feature(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The ``datasets`` (4.x) feature a LeRobot parquet file's schema metadata records for a column."""
    value = {"dtype": feature["dtype"], "_type": "Value"}
    return value if list(feature["shape"]) == [1] else {"feature": value, "length": feature["shape"][0],
                                                          "_type": "List"}


def _arrow_column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if isinstance(type_, pa.FixedSizeListType):
        flat = np.ascontiguousarray(values, dtype=type_.value_type.to_pandas_dtype()).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=type_.value_type), type_.list_size)
    return pa.array(np.asarray(values).reshape(-1), type=type_)


def write_tasks(path: Path, tasks: Sequence[str]) -> None:
    """meta/tasks.parquet as LeRobot writes it with pandas: a ``task_index`` column indexed by the task
    strings (stored as ``__index_level_0__``, with the pandas metadata that makes it the index again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.string())],
                       metadata={"pandas": json.dumps(pandas_meta)})
    table = pa.Table.from_arrays([pa.array(range(len(tasks)), pa.int64()), pa.array(list(tasks), pa.string())],
                                 schema=schema)
    pq.write_table(table, path)


def read_tasks(path: Path) -> dict[int, str]:
    """task_index -> task string, from a tasks.parquet written by pandas (the index) or with a ``task`` column."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = table.column_names
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    text_col = "task" if "task" in names else (index_cols[0] if index_cols else None)
    if text_col is None or "task_index" not in names:
        raise MappingError(f"{path}: expected task strings and a task_index column, found {names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text_col).to_pylist()))


def video_info(path: Path) -> dict[str, Any]:
    """The ``info`` of a video feature as LeRobot's get_video_info reads it from the first file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"video.height": stream.height, "video.width": stream.width,
                "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
                "video.is_depth_map": False, "video.fps": int(stream.base_rate or 0),
                "video.channels": 3, "has_audio": bool(container.streams.audio)}
    return info


# ---- import -----------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of uint8 images ``b`` against ``a``; inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json of a LeRobot dataset; only codebase_version v3.0 is read."""
    path = root / INFO_PATH
    if not path.exists():
        raise MappingError(f"{root}: not a LeRobot dataset (no {INFO_PATH})")
    info = json.loads(path.read_text())
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise MappingError(f"{path}: codebase_version {version!r}; this reader follows LeRobot's {CODEBASE_VERSION} "
                           "layout (convert older datasets with lerobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path", "total_episodes"):
        if key not in info:
            raise MappingError(f"{path}: missing {key!r}")
    return info


@dataclass
class LeRobotSource:
    """A LeRobot v3.0 dataset opened for import with a mapping (checked against its features)."""

    root: Path
    mapping: SourceMapping
    info: dict[str, Any] = field(init=False)
    episodes: list[dict[str, Any]] = field(init=False)
    tasks: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.info = read_info(self.root)
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.episodes = _read_episodes(self.root)
        self.tasks = read_tasks(self.root / TASKS_PATH) if (self.root / TASKS_PATH).exists() else {}
        if self.mapping.control_hz is not None and self.mapping.control_hz != self.fps:
            raise MappingError(f"mapping {self.mapping.name}: control_hz {self.mapping.control_hz:g}, but {self.root} "
                               f"is recorded at fps {self.fps} (imports do not resample)")
        self._check_mapping()

    def _check_mapping(self) -> None:
        m, where = self.mapping, f"mapping {self.mapping.name} on {self.root}"
        for kind in ("state", "action"):
            fmap: FieldMap = getattr(m.embodiment, kind)
            for name, s in getattr(m, kind).items():
                if s is not None:
                    width = self._width(s, f"{where}: {kind}.{name}")
                    if width != fmap.get(name).dim:
                        raise MappingError(f"{where}: {kind}.{name} takes {s.describe()}, {width} values, but the "
                                           f"field has dim {fmap.get(name).dim}")
        for key, s in m.extras.items():
            self._width(s, f"{where}: extras.{key}")
        for cam, c in m.cameras.items():
            ft = self._feature(c.key, f"{where}: cameras.{cam}")
            if ft["dtype"] not in ("video", "image"):
                raise MappingError(f"{where}: cameras.{cam} is {c.key}, a {ft['dtype']} feature, not a video or image")
        if m.unified is not None:
            for key in (m.unified.state, m.unified.action):
                if self._width(FieldSource(key), f"{where}: unified") != UNIFIED_DIM:
                    raise MappingError(f"{where}: unified {key} is not a {UNIFIED_DIM}-d vector")
            if m.unified.timestamp is not None:
                self._feature(m.unified.timestamp, f"{where}: unified.timestamp")

    def _feature(self, key: str, where: str) -> dict[str, Any]:
        if key not in self.features:
            raise MappingError(f"{where}: feature {key!r} is not in the dataset; its features: "
                               f"{', '.join(self.features)}")
        return self.features[key]

    def _width(self, s: FieldSource, where: str) -> int:
        ft = self._feature(s.key, where)
        if ft["dtype"] in ("video", "image", "string"):
            raise MappingError(f"{where}: feature {s.key!r} is a {ft['dtype']} feature, not numbers")
        shape = list(ft["shape"])
        if len(shape) != 1:
            raise MappingError(f"{where}: feature {s.key!r} has shape {shape}; a field takes a vector")
        if s.index is not None:
            bad = [i for i in s.index if i >= shape[0]]
            if bad:
                raise MappingError(f"{where}: {s.describe()} indexes {bad}, but {s.key} has shape {shape}")
            return len(s.index)
        return int(shape[0])

    def cameras(self) -> dict[str, CameraInfo]:
        """Store camera name -> CameraInfo, sizes from the features, calibration from meta/unified.json."""
        calib = self.unified_info().get("cameras", {})
        out = {}
        for cam, c in self.mapping.cameras.items():
            ft = self.features[c.key]
            names, shape = list(ft.get("names") or ["height", "width", "channels"]), list(ft["shape"])
            h, w = (shape[1], shape[2]) if names and names[0] in ("channel", "channels") else (shape[0], shape[1])
            known: dict[str, Any] = next((v for v in calib.values() if v.get("feature") == c.key), {})
            out[cam] = CameraInfo(int(h), int(w), known.get("intrinsics"), known.get("extrinsics"))
        return out

    def unified_info(self) -> dict[str, Any]:
        path = self.root / UNIFIED_INFO_PATH
        return json.loads(path.read_text()) if path.exists() else {}

    def dropped(self) -> dict[str, str]:
        used = self.mapping.used_keys()
        return {f"feature {k}": "not in the mapping" for k in self.features
                if k not in used and k not in DEFAULT_FEATURES}

    def iter_episodes(self, skip: int) -> Iterator[SourceEpisode]:
        data = _ParquetCache(self.root, self.info["data_path"])
        videos = {cam: _VideoReader(self.root, self.info.get("video_path") or "", c.key, self.fps)
                  for cam, c in self.mapping.cameras.items() if self.features[c.key]["dtype"] == "video"}
        try:
            for row in self.episodes[skip:]:
                yield self._episode(row, data, videos)
        finally:
            for v in videos.values():
                v.close()

    def _episode(self, row: dict[str, Any], data: _ParquetCache, videos: dict[str, _VideoReader]) -> SourceEpisode:
        m, e = self.mapping, int(row["episode_index"])
        table = data.episode(int(row["data/chunk_index"]), int(row["data/file_index"]), e)
        cols = {k: _to_numpy(table.column(k)) for k in table.column_names if self.features.get(k, {}).get("dtype")
                not in ("video", "image")}
        name = f"episode {e}"
        if len(cols["timestamp"]) != int(row["length"]):
            raise MappingError(f"{self.root}: {name} has {len(cols['timestamp'])} frames in its data file, its "
                               f"episodes row says length {row['length']}")
        ep = SourceEpisode(name=name, timestamp=self._timestamps(cols))
        ep.state = {n: s.pick(cols[s.key], f"{name} state.{n}") for n, s in m.state.items() if s is not None}
        ep.action = {n: s.pick(cols[s.key], f"{name} action.{n}") for n, s in m.action.items() if s is not None}
        ep.extras = {k: _extra(cols[s.key], s) for k, s in m.extras.items()}
        if m.unified is not None:
            ep.state_unified, ep.action_unified = cols[m.unified.state], cols[m.unified.action]
        meta = m.unified.meta if m.unified is not None and m.unified.meta else UNIFIED_META
        if f"{meta}state_mask" in row:
            ep.state_mask = np.asarray(row[f"{meta}state_mask"], np.float32)
            ep.action_mask = np.asarray(row[f"{meta}action_mask"], np.float32)
            ep.seed = int(row[f"{meta}seed"])
            ep.success = None if int(row[f"{meta}success"]) < 0 else bool(row[f"{meta}success"])
        first_task = int(cols["task_index"][0]) if "task_index" in cols else None
        tasks = row.get("tasks") or []
        ep.language = m.language if m.language is not None else (
            self.tasks.get(first_task, tasks[0] if tasks else "") if first_task is not None else
            (tasks[0] if tasks else ""))
        ep.frames = self._frames(row, table, videos, ep.timestamp.shape[0], cols["timestamp"])
        return ep

    def _timestamps(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        """float64 seconds: the exact column a robot_policy export carries; else frame_index / fps where the
        float32 column is exactly what LeRobot writes for it, else the float32 values."""
        m = self.mapping
        if m.unified is not None and m.unified.timestamp is not None:
            return np.asarray(cols[m.unified.timestamp], np.float64).reshape(-1)
        ts32 = np.asarray(cols["timestamp"]).reshape(-1)
        grid = np.asarray(cols["frame_index"], np.float64).reshape(-1) / self.fps
        return grid if np.array_equal(grid.astype(np.float32), ts32) else ts32.astype(np.float64)

    def _frames(self, row: Mapping[str, Any], table: Any, videos: Mapping[str, _VideoReader], n: int,
                ts32: np.ndarray) -> Iterator[dict[str, np.ndarray]] | None:
        if not self.mapping.cameras:
            return None
        e = int(row["episode_index"])
        streams: dict[str, Iterator[np.ndarray]] = {}
        for cam, c in self.mapping.cameras.items():
            if cam in videos:
                key = c.key
                streams[cam] = videos[cam].frames(int(row[f"videos/{key}/chunk_index"]),
                                                  int(row[f"videos/{key}/file_index"]),
                                                  float(row[f"videos/{key}/from_timestamp"]),
                                                  np.asarray(ts32, np.float64).reshape(-1), f"episode {e}")
            else:
                streams[cam] = _png_frames(table.column(c.key))
        return ({cam: next(it) for cam, it in streams.items()} for _ in range(n))


def _extra(values: np.ndarray, s: FieldSource) -> np.ndarray:
    v = np.asarray(values)
    if s.index is None and s.scale == 1.0 and s.offset == 0.0:
        return v  # kept in its own dtype: an exact copy
    return s.pick(v, s.key)


def _read_episodes(root: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise MappingError(f"{root}: no meta/episodes/chunk-*/file-*.parquet")
    rows: list[dict[str, Any]] = []
    for f in files:
        table = pq.read_table(f)
        table = table.select([c for c in table.column_names if not c.startswith("stats/")])
        rows += table.to_pylist()
    rows.sort(key=lambda r: int(r["episode_index"]))
    return rows


class _ParquetCache:
    """The data file of the episode being read (episodes follow each other in files, so one is held)."""

    def __init__(self, root: Path, template: str) -> None:
        self.root, self.template = root, template
        self.key: tuple[int, int] | None = None
        self.table: Any = None
        self.episode_index: np.ndarray = np.zeros(0, np.int64)

    def episode(self, chunk: int, file: int, episode: int) -> Any:
        import pyarrow.parquet as pq

        if self.key != (chunk, file):
            path = self.root / self.template.format(chunk_index=chunk, file_index=file)
            if not path.exists():
                raise MappingError(f"{path}: data file of episode {episode} is missing")
            self.table, self.key = pq.read_table(path), (chunk, file)
            self.episode_index = _to_numpy(self.table.column("episode_index")).reshape(-1)
        rows = np.flatnonzero(self.episode_index == episode)
        if rows.size == 0 or rows[-1] - rows[0] + 1 != rows.size:
            raise MappingError(f"{self.root}: episode {episode} has no contiguous rows in data file {self.key}")
        return self.table.slice(int(rows[0]), int(rows.size))


def _to_numpy(column: Any) -> np.ndarray:
    """An arrow column -> numpy: scalars (T,), fixed or variable lists (T, D)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr.type, pa.FixedSizeListType):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
    if isinstance(arr.type, (pa.ListType, pa.LargeListType)):
        return np.asarray(arr.to_pylist())
    return arr.to_numpy(zero_copy_only=False)


def _png_frames(column: Any) -> Iterator[np.ndarray]:
    """Frames of an ``image`` feature (structs of encoded bytes, as ``datasets.Image`` stores them)."""
    import io

    from PIL import Image

    for item in column.to_pylist():
        with Image.open(io.BytesIO(item["bytes"])) as im:
            yield np.asarray(im.convert("RGB"))


class _VideoReader:
    """Decodes one camera's mp4 files in order; an episode's frames are those at from_timestamp + t."""

    def __init__(self, root: Path, template: str, key: str, fps: int) -> None:
        self.root, self.template, self.key, self.fps = root, template, key, fps
        self.where: tuple[int, int] | None = None
        self.container: Any = None
        self.decoded: Iterator[tuple[float, Any]] = iter(())
        self.current: tuple[float, Any] | None = None

    def _open(self, chunk: int, file: int) -> None:
        import av

        self.close()
        path = self.root / self.template.format(video_key=self.key, chunk_index=chunk, file_index=file)
        if not path.exists():
            raise MappingError(f"{path}: video file of {self.key} is missing")
        self.container, self.where = av.open(str(path)), (chunk, file)
        stream = self.container.streams.video[0]
        self.decoded = ((float(f.pts * stream.time_base), f) for f in self.container.decode(stream))
        self.current = None

    def frames(self, chunk: int, file: int, from_ts: float, timestamps: np.ndarray, where: str) -> Iterator[np.ndarray]:
        """The frames at ``from_ts + timestamps`` (seconds), each within LeRobot's tolerance of its time."""
        if self.where != (chunk, file) or (self.current is not None and self.current[0] > from_ts + TOLERANCE_S):
            self._open(chunk, file)
        for t in from_ts + timestamps:
            while self.current is None or self.current[0] < t - TOLERANCE_S:
                nxt = next(self.decoded, None)
                if nxt is None:
                    raise MappingError(f"{self.key}: {where}: the video ends before the frame at {t:.4f} s")
                self.current = nxt
            if abs(self.current[0] - t) > TOLERANCE_S:
                raise MappingError(f"{self.key}: {where}: no video frame at {t:.4f} s (nearest {self.current[0]:.4f} s)")
            yield self.current[1].to_ndarray(format="rgb24")

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def import_lerobot(src: str | Path, out: str | Path, mapping: SourceMapping | str | Path | None = None, *,
                   overwrite: bool = False, progress: bool = True) -> ImportSummary:
    """Import the LeRobot v3.0 dataset at ``src`` into the store ``out`` with ``mapping`` (a mapping, its
    name or path; default the ``meta/unified_mapping.yaml`` a robot_policy export carries). Resumes an
    interrupted run of the same import."""
    root = Path(src)
    if mapping is None:
        if not (root / UNIFIED_MAPPING_PATH).exists():
            raise MappingError(f"{root}: give mapping= (configs/mapping/<name>.yaml); only robot_policy exports carry "
                               f"their own ({UNIFIED_MAPPING_PATH})")
        mapping = root / UNIFIED_MAPPING_PATH
    m = mapping if isinstance(mapping, SourceMapping) else load_mapping(mapping)
    if m.source != "lerobot":
        raise MappingError(f"mapping {m.name} is for {m.source} recordings, not lerobot")
    source = LeRobotSource(root, m)
    summary = ImportSummary(source="lerobot", src=str(root), out=str(out), mapped=describe_mapping(m),
                            dropped={**m.dropped_fields(), **source.dropped()})
    unified = source.unified_info()
    store = open_import_store(out, m, root, control_hz=float(source.fps), cameras=source.cameras(),
                              task=unified.get("task"), overwrite=overwrite,
                              provenance={"lerobot_codebase_version": source.info["codebase_version"]})
    with store:
        return run_import(store, m, source.iter_episodes, len(source.episodes), summary, progress=progress)


def episode_psnr(store_a: EpisodeStore, store_b: EpisodeStore, camera: str) -> list[float]:
    """Per-episode PSNR (dB) of ``camera`` in ``store_b`` against ``store_a`` (same episodes)."""
    out = []
    for e in range(store_a.n_episodes):
        a0, a1 = store_a.episode_bounds(e)
        b0, b1 = store_b.episode_bounds(e)
        out.append(psnr(np.asarray(store_a.array(fmt.image_key(camera))[a0:a1]),
                        np.asarray(store_b.array(fmt.image_key(camera))[b0:b1])))
    return out


__all__ = ["CODEBASE_VERSION", "LeRobotExportConfig", "LeRobotSource", "aggregate_stats",
           "episode_psnr", "export_lerobot", "feature_stats", "import_lerobot", "psnr", "read_info", "read_tasks",
           "write_tasks"]
