"""EpisodeStore: read and write the zarr v3 episode store described in :mod:`robot_policy.data.format`.

    with EpisodeStore.create("demos.zarr", embodiment=spec, cameras={"front": CameraInfo(224, 224)}) as store:
        store.add_episode({"state": s, "action": a, "timestamp": t, "images/front": frames}, language="lift")
        with store.stream_episode(language="lift") as ep:      # step by step, for recording
            ep.add_step(state=s_t, action=a_t, timestamp=t, images={"front": frame})
            ep.commit(success=True)

    store = EpisodeStore.open("demos.zarr")                      # read-only
    episode = store.get_episode(3)                               # dict of numpy arrays + meta
    ram = store.load()                                           # EpisodeData held in RAM for the sampler

One writer at a time: opening for writing takes an exclusive ``flock`` on ``<store>/.writer.lock``, and
repairs what a crashed writer left (an uncommitted tail, a half-finished commit).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import zarr

from robot_policy import __version__
from robot_policy.data import format as fmt
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM, describe_index

if TYPE_CHECKING:
    from robot_policy.data.streaming import StreamingEpisodeWriter


class StoreError(ValueError):
    """A store that cannot be opened or an episode that cannot be written; the message names key/index."""


@dataclass(frozen=True)
class CameraInfo:
    """A camera recorded in the store.

    Attributes:
        height, width: image size in pixels.
        intrinsics: 3x3 pinhole matrix K (pixels), or None if uncalibrated.
        extrinsics: 4x4 pose of the camera in the rig frame (T_rig_camera, metres), or None.
    """

    height: int
    width: int
    # array-likes are accepted and stored as nested tuples (hashable, JSON-ready)
    intrinsics: Sequence[Sequence[float]] | np.ndarray | None = None
    extrinsics: Sequence[Sequence[float]] | np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise StoreError(f"camera size must be positive, got {self.height}x{self.width}")
        for name, n in (("intrinsics", 3), ("extrinsics", 4)):
            m = getattr(self, name)
            if m is not None:
                arr = np.asarray(m, dtype=np.float64)
                if arr.shape != (n, n) or not np.all(np.isfinite(arr)):
                    raise StoreError(f"camera {name}: expected a finite {n}x{n} matrix, got shape {arr.shape}")
                object.__setattr__(self, name, tuple(tuple(float(v) for v in row) for row in arr))

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width,
                "intrinsics": None if self.intrinsics is None else [list(r) for r in self.intrinsics],
                "extrinsics": None if self.extrinsics is None else [list(r) for r in self.extrinsics]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CameraInfo:
        return cls(int(d["height"]), int(d["width"]), d.get("intrinsics"), d.get("extrinsics"))


class EpisodeIndex:
    """Episode counts and bounds from ``episode_ends`` (E,), shared by the store and in-RAM episode data;
    the class using it provides ``episode_ends`` (a field or a property)."""

    episode_ends: np.ndarray

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if self.n_episodes else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_ends, prepend=0)

    def episode_bounds(self, index: int) -> tuple[int, int]:
        """Rows ``[start, end)`` of episode ``index`` (negative counts from the end)."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range: the store has {self.n_episodes} episodes")
        index %= self.n_episodes
        start = int(self.episode_ends[index - 1]) if index > 0 else 0
        return start, int(self.episode_ends[index])


@dataclass
class EpisodeData(EpisodeIndex):
    """Episodes as arrays: what the sampler reads, either lazily from disk or held in RAM.

    Attributes:
        episode_ends: (E,) int64 cumulative ends.
        data: key -> array-like of shape (T, ...) supporting slicing (numpy, zarr or tensorstore-backed).
        meta: per-episode arrays, key -> (E, ...).
    """

    episode_ends: np.ndarray
    data: dict[str, Any]
    meta: dict[str, np.ndarray] = field(default_factory=dict)


def committed_episode_ends(raw_ends: np.ndarray) -> np.ndarray:
    """Drop a trailing entry left by a commit that was interrupted between its two writes.

    Committed entries are strictly increasing and positive, so an entry that is not greater than its
    predecessor (it reads as the fill value 0) can only be the interrupted one, and only at the end.
    """
    ends = np.asarray(raw_ends, dtype=np.int64)
    if ends.size and ends[-1] <= (ends[-2] if ends.size > 1 else 0):
        return ends[:-1]
    return ends


class EpisodeStore(EpisodeIndex):
    """One zarr v3 episode store on local disk. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, root: zarr.Group, writable: bool, lock_fd: int | None) -> None:
        self.path = path
        self._root = root
        self.writable = writable
        self._lock_fd = lock_fd
        self._arrays: dict[str, zarr.Array] = {}
        # The streaming writer's image thread and the recording thread both look up and create arrays.
        self._cache_lock = threading.RLock()
        # Listing a zarr group costs ~1 ms; the key set only changes when this process creates an array.
        self._data_keys = set(_array_keys(root["data"])) if "data" in root else set()
        attrs: dict[str, Any] = dict(root.attrs)
        for key in fmt.REQUIRED_ATTRS:
            if key not in attrs:
                raise StoreError(f"{path}: root attribute {key!r} is missing (run `robot-policy dataset "
                                 f"validate {path}` for a full report)")
        if attrs["format"] != fmt.FORMAT_NAME or attrs["format_version"] not in fmt.SUPPORTED_VERSIONS:
            raise StoreError(f"{path}: format {attrs['format']!r} v{attrs['format_version']} is not "
                             f"{fmt.FORMAT_NAME} v{fmt.SUPPORTED_VERSIONS}")
        self.attrs = attrs
        self.embodiment = EmbodimentSpec.from_dict(attrs["embodiment"], where=f"{path} attrs.embodiment")
        self.control_hz = float(attrs["control_hz"])
        self.cameras = {name: CameraInfo.from_dict(c) for name, c in attrs["cameras"].items()}
        self._episode_ends = committed_episode_ends(np.asarray(self._meta_array(fmt.EPISODE_ENDS)[:]))

    # ---- open / create ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, embodiment: EmbodimentSpec, *, cameras: Mapping[str, CameraInfo] | None = None,
               provenance: Mapping[str, Any] | None = None, task: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> EpisodeStore:
        """Create an empty store, open for writing. ``overwrite`` replaces an existing store."""
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists (pass overwrite=True to replace it, or open it to append)")
            old_lock = _take_writer_lock(path) if path.is_dir() else None  # never delete under a live writer
            shutil.rmtree(path)
            _release_lock(old_lock)
        path.mkdir(parents=True)
        lock_fd = _take_writer_lock(path)
        root = zarr.open_group(str(path), mode="a", zarr_format=3)  # "w" would delete the lock file
        root.attrs.update({
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "embodiment": embodiment.to_dict(),
            "control_hz": embodiment.control_hz,
            "cameras": {name: cam.to_dict() for name, cam in (cameras or {}).items()},
            "provenance": {
                "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "robot_policy_version": __version__,
                "host": platform.node(),
                **dict(provenance or {}),
            },
            **({"task": dict(task)} if task is not None else {}),
        })
        meta = root.create_group("meta")
        meta.create_array(fmt.EPISODE_ENDS, shape=(0,), chunks=(fmt.META_CHUNK,), dtype="int64", fill_value=0,
                          compressors=fmt.lowdim_codec())
        for key, (dtype, tail) in fmt.EPISODE_META.items():
            meta.create_array(key, shape=(0, *tail), chunks=(min(fmt.META_CHUNK, 4096), *tail), dtype=dtype,
                              compressors=None if dtype is str else fmt.lowdim_codec())
        root.create_group("data")
        return cls(path, root, writable=True, lock_fd=lock_fd)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open an existing store: ``mode="r"`` read-only, ``"a"`` to append (takes the writer lock and
        repairs a crashed writer's leftovers)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a zarr v3 store (no zarr.json)")
        lock_fd = _take_writer_lock(path) if mode == "a" else None
        try:
            root = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
            store = cls(path, root, writable=mode == "a", lock_fd=lock_fd)
            if mode == "a":
                store._repair()
        except BaseException:
            _release_lock(lock_fd)
            raise
        return store

    def close(self) -> None:
        _release_lock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps}, "
                f"embodiment={self.embodiment.name!r}, keys={self.data_keys})")

    # ---- reading ---------------------------------------------------------------------------------
    @property
    def episode_ends(self) -> np.ndarray:  # type: ignore[override]  # read-only: changed only by commits
        return self._episode_ends

    @property
    def data_keys(self) -> list[str]:
        return sorted(self._data_keys)

    def array(self, key: str) -> zarr.Array:
        """The lazy zarr array ``data/<key>``. Its length may exceed ``n_steps`` by an uncommitted tail."""
        return self._cached(f"data/{key}", lambda: KeyError(
            f"{self.path}: no data key {key!r}; keys: {self.data_keys}"))

    def _cached(self, path: str, missing: Callable[[], Exception]) -> zarr.Array:
        # One cached handle per array: zarr re-reads zarr.json on every lookup, and a resize through one
        # handle is not seen by another.
        with self._cache_lock:
            arr = self._arrays.get(path)
            if arr is None:
                try:
                    found = self._root[path]
                except KeyError:
                    raise missing() from None
                assert isinstance(found, zarr.Array)
                arr = self._arrays[path] = found
            return arr

    def get_episode(self, index: int, keys: list[str] | None = None) -> dict[str, Any]:
        """One episode's data arrays (read into numpy) and its meta values."""
        start, end = self.episode_bounds(index)
        index %= max(self.n_episodes, 1)
        out: dict[str, Any] = {k: self.array(k)[start:end] for k in (self.data_keys if keys is None else keys)}
        for key in fmt.EPISODE_META:
            out[key] = self._meta_array(key)[index]
        return out

    def episode_meta(self) -> dict[str, np.ndarray]:
        """Per-episode meta arrays, trimmed to the committed episodes: key -> (E, ...)."""
        return {key: np.asarray(self._meta_array(key)[: self.n_episodes]) for key in fmt.EPISODE_META}

    def load(self, keys: list[str] | None = None) -> EpisodeData:
        """Read ``keys`` (default: every non-image key) of the committed episodes into RAM."""
        if keys is None:
            keys = [k for k in self.data_keys if not fmt.is_image_key(k)]
        n = self.n_steps
        return EpisodeData(self._episode_ends.copy(), {k: np.asarray(self.array(k)[:n]) for k in keys},
                           self.episode_meta())

    def _meta_array(self, key: str) -> zarr.Array:
        return self._cached(f"meta/{key}", lambda: StoreError(f"{self.path}: meta/{key} is missing"))

    # ---- writing ---------------------------------------------------------------------------------
    def add_episode(self, data: Mapping[str, np.ndarray], *, language: str = "", seed: int = -1,
                    success: bool | None = None, state_mask: np.ndarray | None = None,
                    action_mask: np.ndarray | None = None) -> int:
        """Append a whole episode and commit it. Returns its index.

        Args:
            data: key -> (T, ...) arrays; must hold ``state``, ``action``, ``timestamp`` and one
                ``images/<camera>`` per camera of the store; other numeric keys are free-form extras,
                but the first episode fixes the set of keys.
            language: instruction; seed: simulator seed (-1 = none); success: outcome if known.
            state_mask, action_mask: (128,) 0/1, default the embodiment's.
        """
        self._check_writable()
        arrays = {k: np.asarray(v) for k, v in data.items()}
        length = self._check_episode(arrays)
        meta = self.episode_meta_values(language=language, seed=seed, success=success, state_mask=state_mask,
                                        action_mask=action_mask)
        self.check_masked_zero(arrays[fmt.STATE], arrays[fmt.ACTION], meta)
        start = self.n_steps
        try:
            for key, values in arrays.items():
                if fmt.is_image_key(key):
                    for offset in range(0, length, fmt.IMAGE_WRITE_BLOCK):
                        block = values[offset: offset + fmt.IMAGE_WRITE_BLOCK]
                        self.write_rows(key, start + offset, block)
                else:
                    self.write_rows(key, start, values)
            return self.commit_episode(length, meta)
        except BaseException:
            self.discard_tail()  # nothing of a failed episode may reach the next one
            raise

    def stream_episode(self, *, language: str = "", seed: int = -1, state_mask: np.ndarray | None = None,
                       action_mask: np.ndarray | None = None) -> StreamingEpisodeWriter:
        """A writer that takes one step at a time and commits the episode at the end (see
        :class:`~robot_policy.data.streaming.StreamingEpisodeWriter`)."""
        from robot_policy.data.streaming import StreamingEpisodeWriter

        self._check_writable()
        return StreamingEpisodeWriter(self, language=language, seed=seed, state_mask=state_mask,
                                      action_mask=action_mask)

    def expected_keys(self) -> set[str] | None:
        """Data keys every new episode must carry, or None while the store is empty (first episode sets them)."""
        return set(self.data_keys) if self.n_episodes else None

    def check_key_set(self, keys: set[str]) -> None:
        """Raise if ``keys`` is not a valid key set for the next episode."""
        missing = set(fmt.REQUIRED_DATA) - keys
        if missing:
            raise StoreError(f"episode is missing required key(s) {sorted(missing)}")
        cams = {fmt.image_key(c) for c in self.cameras}
        images = {k for k in keys if fmt.is_image_key(k)}
        if images != cams:
            raise StoreError(f"episode image keys {sorted(images)} differ from the store's cameras {sorted(cams)}")
        expected = self.expected_keys()
        if expected is not None and keys != expected:
            raise StoreError(f"episode keys differ from the store's: missing {sorted(expected - keys)}, "
                             f"unexpected {sorted(keys - expected)} (the first episode fixes the keys)")

    def check_rows(self, key: str, values: np.ndarray, first_row: int = 0) -> None:
        """Raise if rows for ``key`` have the wrong dtype/shape or hold NaN/Inf (``first_row`` for messages)."""
        if key in fmt.FIXED_DATA:
            dtype, tail = fmt.FIXED_DATA[key]
            if values.shape[1:] != tail:
                raise StoreError(f"{key}: expected shape (T, {', '.join(map(str, tail))}), got {values.shape}")
            if not np.can_cast(values.dtype, dtype, casting="same_kind"):
                raise StoreError(f"{key}: dtype {values.dtype} cannot be stored as {dtype}")
        elif fmt.is_image_key(key):
            cam = self.cameras[key.split("/", 1)[1]]
            if values.dtype != np.uint8 or values.shape[1:] != (cam.height, cam.width, 3):
                raise StoreError(f"{key}: expected uint8 (T, {cam.height}, {cam.width}, 3), got "
                                 f"{values.dtype} {values.shape}")
        elif values.dtype.kind not in "biuf":
            raise StoreError(f"{key}: only numeric extra keys are supported, got dtype {values.dtype}")
        if key in self._data_keys:
            arr = self.array(key)
            if values.shape[1:] != arr.shape[1:]:
                raise StoreError(f"{key}: row shape {values.shape[1:]} differs from the store's {arr.shape[1:]}")
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                where = np.argwhere(bad)[0]
                col = f", slot {describe_index(int(where[1]))}" if values.ndim == 2 and values.shape[1] == UNIFIED_DIM else ""
                raise StoreError(f"{key}: NaN or Inf at step {first_row + int(where[0])}{col}")

    def _check_episode(self, arrays: Mapping[str, np.ndarray]) -> int:
        self.check_key_set(set(arrays))
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in arrays.items()}
        length = lengths[fmt.STATE]
        if length <= 0:
            raise StoreError("episode has no steps")
        odd = {k: n for k, n in lengths.items() if n != length}
        if odd:
            raise StoreError(f"episode arrays disagree on length: state has {length}, but {odd}")
        for key, values in arrays.items():
            self.check_rows(key, values)
        check_timestamps(arrays[fmt.TIMESTAMP])
        return length

    def write_rows(self, key: str, first_row: int, values: np.ndarray) -> None:
        """Write rows ``[first_row, first_row + len(values))`` of ``data/<key>``, growing the array if needed.

        Rows beyond ``n_steps`` stay invisible until :meth:`commit_episode`.
        """
        self._check_writable()
        values = np.asarray(values)
        with self._cache_lock:
            if key not in self._data_keys:
                data = self._root["data"]
                assert isinstance(data, zarr.Group)
                if self.n_episodes:
                    raise StoreError(f"data key {key!r} is not in this store; keys: {self.data_keys}")
                dtype, _ = fmt.FIXED_DATA.get(key, (values.dtype, ()))
                if fmt.is_image_key(key):
                    chunks, codec = (1, *values.shape[1:]), fmt.image_codec()
                else:
                    chunks, codec = (fmt.LOWDIM_CHUNK_ROWS, *values.shape[1:]), fmt.lowdim_codec()
                data.create_array(key, shape=(0, *values.shape[1:]), chunks=chunks, dtype=dtype,
                                  compressors=codec)
                self._data_keys.add(key)
        arr = self.array(key)
        end = first_row + values.shape[0]
        if arr.shape[0] < end:
            arr.resize((end, *arr.shape[1:]))
        arr[first_row:end] = values

    def episode_meta_values(self, *, language: str = "", seed: int = -1, success: bool | None = None,
                            state_mask: np.ndarray | None = None,
                            action_mask: np.ndarray | None = None) -> dict[str, Any]:
        """Validated per-episode meta for :meth:`commit_episode`; masks default to the embodiment's."""
        defaults = {fmt.STATE_MASK: self.embodiment.state.mask, fmt.ACTION_MASK: self.embodiment.action.mask}
        values: dict[str, Any] = {fmt.LANGUAGE: str(language), fmt.SEED: int(seed),
                                  fmt.SUCCESS: -1 if success is None else int(bool(success))}
        for key, mask in ((fmt.STATE_MASK, state_mask), (fmt.ACTION_MASK, action_mask)):
            m = defaults[key] if mask is None else np.asarray(mask, dtype=np.float32)
            if m.shape != (UNIFIED_DIM,) or not np.all((m == 0) | (m == 1)):
                raise StoreError(f"{key}: expected a (128,) 0/1 mask, got shape {m.shape}")
            extra = np.flatnonzero((m > 0) & (defaults[key] == 0))
            if extra.size:
                raise StoreError(f"{key}: slots {[describe_index(int(i)) for i in extra]} are not written by "
                                 f"embodiment {self.embodiment.name}")
            values[key] = m
        return values

    @staticmethod
    def check_masked_zero(state: np.ndarray, action: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Raise if a (T, 128) state or action row writes a slot its episode's mask marks unused."""
        for key, rows, mask_key in ((fmt.STATE, state, fmt.STATE_MASK), (fmt.ACTION, action, fmt.ACTION_MASK)):
            outside = (rows != 0) & (meta[mask_key][None, :] == 0)
            if outside.any():
                t, i = np.argwhere(outside)[0]
                raise StoreError(f"{key}: step {int(t)} writes slot {describe_index(int(i))}, which its mask "
                                 f"marks unused")

    def commit_episode(self, length: int, meta: Mapping[str, Any]) -> int:
        """Commit the ``length`` rows written after ``n_steps`` as one episode. Returns its index.

        ``meta`` comes from :meth:`episode_meta_values`. Every data array is first cut to exactly the new
        length, then the per-episode meta is written, and last the ``episode_ends`` entry, which makes the
        episode visible.
        """
        self._check_writable()
        end, index = self.n_steps + length, self.n_episodes
        for key in self.data_keys:
            arr = self.array(key)
            if arr.shape[0] < end:
                raise StoreError(f"commit: data/{key} has {arr.shape[0]} rows, the episode needs {end}")
            if arr.shape[0] > end:
                arr.resize((end, *arr.shape[1:]))
        for key, value in meta.items():
            arr = self._meta_array(key)
            if arr.shape[0] != index + 1:
                arr.resize((index + 1, *arr.shape[1:]))
            arr[index] = value
        ends = self._meta_array(fmt.EPISODE_ENDS)
        ends.resize((index + 1,))
        ends[index] = end  # the commit point
        self._episode_ends = np.append(self._episode_ends, np.int64(end))
        return index

    def discard_tail(self) -> None:
        """Cut every array back to the committed episodes (drops an episode in progress)."""
        self._check_writable()
        n, e = self.n_steps, self.n_episodes
        if e == 0 and self._data_keys:
            # No committed episode fixes the keys yet: drop the arrays so the next first episode may differ.
            del self._root["data"]
            self._root.create_group("data")
            self._data_keys.clear()
            self._arrays = {k: v for k, v in self._arrays.items() if k.startswith("meta/")}
        for key in self.data_keys:
            arr = self.array(key)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))
        for key in fmt.EPISODE_META:
            arr = self._meta_array(key)
            if arr.shape[0] != e:
                arr.resize((e, *arr.shape[1:]))

    def _repair(self) -> None:
        if "data" not in self._root:  # a crash inside discard_tail's re-creation of an empty store's data
            self._root.create_group("data")
        ends = self._meta_array(fmt.EPISODE_ENDS)
        if ends.shape[0] != self.n_episodes:
            # An interrupted commit: its chunk was never written, so the region beyond the new shape still
            # holds zeros, which keeps the invariant committed_episode_ends relies on.
            ends.resize((self.n_episodes,))
        self.discard_tail()
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to append")


def check_timestamps(timestamps: np.ndarray, first_row: int = 0) -> None:
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1:
        raise StoreError(f"timestamp: expected shape (T,), got {ts.shape}")
    bad = np.flatnonzero(np.diff(ts) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise StoreError(f"timestamp: not strictly increasing at step {first_row + i} "
                         f"({ts[i - 1]!r} -> {ts[i]!r})")


def _array_keys(group: Any, prefix: str = "") -> Iterator[str]:
    for name, member in group.members():
        if isinstance(member, zarr.Array):
            yield prefix + name
        else:
            yield from _array_keys(member, prefix + name + "/")


def _take_writer_lock(path: Path) -> int:
    fd = os.open(path / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path} is being written by another process (lock {path / '.writer.lock'})") from None
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
