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
repairs what a crashed writer left (an uncommitted tail, a half-finished commit). Opening in either mode
checks that every zarr.json parses and that every chunk file of the committed rows exists (format v2
writes all of them), so damage is an error naming the file, never rows of zeros.

Crash tests reach exact partial states through :func:`robot_policy.durability.fault_point` (the writer
SIGKILLs itself at the point named by ``ROBOT_POLICY_FAULT``; :data:`robot_policy.durability.FAULT_POINTS`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import itertools
import json
import os
import platform
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from robot_policy import __version__
from robot_policy.data import format as fmt
from robot_policy.durability import fault_point, fsync_files
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM, describe_index

if TYPE_CHECKING:
    from robot_policy.data.streaming import StreamingEpisodeWriter


class StoreError(RuntimeError):
    """A store that cannot be opened or used (damaged, locked, already there) or an episode that cannot be
    written; the message names file, key or index, on one line. A RuntimeError like
    :class:`~robot_policy.models.checkpoint.CheckpointError`: the CLI exits 1 for either."""


# ---- chunk files and metadata on disk ------------------------------------------------------------

def chunk_files(array_dir: Path, arr: zarr.Array, lo: int, hi: int) -> Iterator[tuple[Path, int, int]]:
    """The chunk files holding rows ``[lo, hi)`` of ``arr`` (stored in ``array_dir``), with the row range
    ``[first, end)`` each covers (clipped to ``hi``)."""
    if arr.ndim == 0 or hi <= lo:
        return
    c0 = arr.chunks[0]
    tails = list(itertools.product(*(range(-(-n // c)) for n, c in zip(arr.shape[1:], arr.chunks[1:]))))
    for i in range(lo // c0, (hi - 1) // c0 + 1):
        for tail in tails:
            yield array_dir / arr.metadata.encode_chunk_key((i, *tail)), i * c0, min((i + 1) * c0, hi)


def missing_chunks(array_dir: Path, arr: zarr.Array, n_rows: int) -> list[tuple[str, int, int]]:
    """Chunks of rows ``[0, n_rows)`` of ``arr`` that have no file: (chunk key, first row, end row).

    One ``stat`` per chunk (~4 us): an image store of 100k frames is checked in ~0.4 s.
    """
    return [(str(f.relative_to(array_dir)), a, b) for f, a, b in chunk_files(array_dir, arr, 0, n_rows)
            if not f.exists()]


def corrupt_metadata(path: Path) -> list[tuple[Path, str]]:
    """``zarr.json`` files of the store at ``path`` that do not parse as zarr v3 metadata: (file, why).

    Walks groups only (an array's directory holds chunks, not nodes), so it reads a handful of files.
    """
    bad: list[tuple[Path, str]] = []

    def visit(d: Path) -> None:
        f = d / "zarr.json"
        try:
            doc = json.loads(f.read_text())
        except FileNotFoundError:
            return  # not a node (zarr v3 has no implicit groups)
        except (OSError, ValueError) as e:
            bad.append((f, f"{type(e).__name__}: {e}"))
            return
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") not in ("group", "array"):
            bad.append((f, "not zarr v3 metadata (no zarr_format 3 / node_type)"))
        elif doc["node_type"] == "group":
            for child in sorted(d.iterdir()):
                if child.is_dir():
                    visit(child)

    visit(path)
    return bad


@dataclass(frozen=True)
class CameraInfo:
    """A camera recorded in the store.

    Attributes:
        height, width: image size in pixels.
        intrinsics: 3x3 pinhole matrix K (pixels), or None if uncalibrated.
        extrinsics: 4x4 pose of the camera in the rig frame (T_rig_camera, metres), or None.
        distortion: lens distortion coefficients of ``distortion_model`` (OpenCV order, e.g. k1, k2, p1, p2,
            k3 for ``plumb_bob``), or None (unknown; not the same as zeros).
        distortion_model: the model's ROS name (``plumb_bob``, ``rational_polynomial``, ...), or None.
        serial: the camera's serial number, or None.
        calibrated_at: when the intrinsics were measured, ISO 8601 UTC, or None.

    The last four are optional: stores written before they existed open with them None, and ``to_dict``
    leaves out the ones that are None, so such a store's attributes read back unchanged.
    """

    height: int
    width: int
    # array-likes are accepted and stored as nested tuples (hashable, JSON-ready)
    intrinsics: Sequence[Sequence[float]] | np.ndarray | None = None
    extrinsics: Sequence[Sequence[float]] | np.ndarray | None = None
    distortion: Sequence[float] | np.ndarray | None = None
    distortion_model: str | None = None
    serial: str | None = None
    calibrated_at: str | None = None

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
        if self.distortion is not None:
            d = np.asarray(self.distortion, dtype=np.float64)
            if d.ndim != 1 or not 1 <= d.size <= 14 or not np.all(np.isfinite(d)):
                raise StoreError(f"camera distortion: expected 1-14 finite coefficients, got shape {d.shape}")
            if not self.distortion_model:
                raise StoreError("camera distortion: coefficients without a distortion_model (e.g. plumb_bob)")
            object.__setattr__(self, "distortion", tuple(float(v) for v in d))
        for name in ("distortion_model", "serial", "calibrated_at"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise StoreError(f"camera {name}: expected a string, got {type(v).__name__} {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "height": self.height, "width": self.width,
            "intrinsics": None if self.intrinsics is None else [list(r) for r in self.intrinsics],
            "extrinsics": None if self.extrinsics is None else [list(r) for r in self.extrinsics]}
        if self.distortion is not None:
            d["distortion"] = list(self.distortion)
        d.update({k: getattr(self, k) for k in ("distortion_model", "serial", "calibrated_at")
                  if getattr(self, k) is not None})
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CameraInfo:
        return cls(int(d["height"]), int(d["width"]), d.get("intrinsics"), d.get("extrinsics"), d.get("distortion"),
                   d.get("distortion_model"), d.get("serial"), d.get("calibrated_at"))


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

    def __init__(self, path: Path, root: zarr.Group, writable: bool, lock_fd: int | None, fsync: bool = True) -> None:
        self.path = path
        self._root = root
        self.writable = writable
        self._lock_fd = lock_fd
        #: fsync each episode's files and directories before its commit (see the format's commit protocol)
        self.fsync = fsync
        self._arrays: dict[str, zarr.Array] = {}
        # Files written since the last fsync, per array path ("data/state"): the commit makes them durable
        # before it writes episode_ends; the image thread syncs its own blocks as it goes.
        self._unsynced: dict[str, set[Path]] = {}
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
        self.format_version = int(attrs["format_version"])
        self._episode_ends = committed_episode_ends(np.asarray(self._meta_array(fmt.EPISODE_ENDS)[:]))

    # ---- open / create ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, embodiment: EmbodimentSpec, *, cameras: Mapping[str, CameraInfo] | None = None,
               provenance: Mapping[str, Any] | None = None, task: Mapping[str, Any] | None = None,
               base_to_base: Mapping[str, Any] | None = None, overwrite: bool = False,
               fsync: bool = True) -> EpisodeStore:
        """Create an empty store, open for writing. ``overwrite`` replaces an existing store. Without it,
        an existing store is replaced only when it holds no committed episode and records the same
        embodiment, cameras, task and base-to-base: the attempt of the same job whose writer crashed before its
        first commit, so nothing is lost. ``fsync``: make each commit durable (see :attr:`fsync`).
        ``base_to_base``: the rig's calibrated transform between its arms' bases
        (:meth:`robot_policy.data.rig_file.FrameTransform.to_attrs`), the root attr of that name."""
        path = Path(path)
        identity = {"embodiment": embodiment.to_dict(),
                    "cameras": {name: cam.to_dict() for name, cam in (cameras or {}).items()},
                    **({"task": dict(task)} if task is not None else {}),
                    **({"base_to_base": dict(base_to_base)} if base_to_base is not None else {})}
        if path.exists():
            if not overwrite and not _is_crashed_attempt(path, identity):
                raise StoreError(f"{path} already exists (pass overwrite=true to replace it, or append=true to "
                                 "add to it)")
            old_lock = _take_writer_lock(path) if path.is_dir() else None  # never delete under a live writer
            shutil.rmtree(path)
            _release_lock(old_lock)
        path.mkdir(parents=True)
        lock_fd = _take_writer_lock(path)
        root = zarr.open_group(str(path), mode="a", zarr_format=3)  # "w" would delete the lock file
        root.attrs.update({
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "control_hz": embodiment.control_hz,
            "provenance": {
                "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "robot_policy_version": __version__,
                "host": platform.node(),
                **dict(provenance or {}),
            },
            **identity,
        })
        meta = root.create_group("meta")
        meta.create_array(fmt.EPISODE_ENDS, shape=(0,), chunks=(fmt.META_CHUNK,), dtype="int64", fill_value=0,
                          compressors=fmt.lowdim_codec(), config=_ARRAY_CONFIG)
        for key in {**fmt.EPISODE_META, **fmt.OPTIONAL_META}:
            _create_meta_array(meta, key, 0)
        root.create_group("data")
        store = cls(path, root, writable=True, lock_fd=lock_fd, fsync=fsync)
        if fsync:
            fsync_files([f for f in path.rglob("*") if f.is_file()], path.parent)
        fault_point("store_created")
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", fsync: bool = True) -> EpisodeStore:
        """Open an existing store: ``mode="r"`` read-only, ``"a"`` to append (takes the writer lock and
        repairs a crashed writer's leftovers; ``fsync`` as in :meth:`create`).

        Raises StoreError naming the file for a corrupt zarr.json, and naming key and rows for a missing
        chunk file of a committed episode (v2 stores).
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a zarr v3 store (no zarr.json)")
        lock_fd = _take_writer_lock(path) if mode == "a" else None
        try:
            bad = corrupt_metadata(path)
            if bad:
                raise StoreError(f"{bad[0][0]}: corrupt zarr metadata ({bad[0][1]})"
                                 + (f"; and {len(bad) - 1} more file(s)" if len(bad) > 1 else ""))
            try:
                root = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
                store = cls(path, root, writable=mode == "a", lock_fd=lock_fd, fsync=fsync)
                store._check_chunks()
                if mode == "a":
                    store._repair()
            except StoreError:
                raise
            except Exception as e:  # zarr raises many types for damaged metadata; name the store
                raise StoreError(f"{path}: cannot read the store ({type(e).__name__}: {e}); run `robot-policy "
                                 f"dataset validate {path}`") from e
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
                # write_empty_chunks is a runtime setting, not stored: set it on every handle, so a
                # fill-valued chunk is written like any other and a missing file always means damage.
                arr = self._arrays[path] = found.with_config(_ARRAY_CONFIG)
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

    def content_hashes(self) -> np.ndarray:
        """(E,) str: each committed episode's content hash (:class:`~robot_policy.data.format.ContentHasher`),
        "" for episodes written before stores recorded them."""
        if not self._has_meta(fmt.CONTENT_HASH):
            return np.full(self.n_episodes, "", dtype=object)
        return np.asarray(self._meta_array(fmt.CONTENT_HASH)[: self.n_episodes], dtype=object)

    def load(self, keys: list[str] | None = None) -> EpisodeData:
        """Read ``keys`` (default: every non-image key) of the committed episodes into RAM."""
        if keys is None:
            keys = [k for k in self.data_keys if not fmt.is_image_key(k)]
        n = self.n_steps
        return EpisodeData(self._episode_ends.copy(), {k: np.asarray(self.array(k)[:n]) for k in keys},
                           self.episode_meta())

    def _meta_array(self, key: str) -> zarr.Array:
        return self._cached(f"meta/{key}", lambda: StoreError(f"{self.path}: meta/{key} is missing"))

    def _has_meta(self, key: str) -> bool:
        try:
            self._meta_array(key)
        except StoreError:
            return False
        return True

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
        hasher = fmt.ContentHasher()
        for key, values in arrays.items():
            hasher.update(key, values, self.stored_dtype(key, values))
        meta[fmt.CONTENT_HASH] = hasher.hexdigest()
        start = self.n_steps
        try:
            for key, values in arrays.items():
                if fmt.is_image_key(key):
                    for offset in range(0, length, fmt.IMAGE_WRITE_BLOCK):
                        block = values[offset: offset + fmt.IMAGE_WRITE_BLOCK]
                        self.write_rows(key, start + offset, block)
                        self.sync_written([key])
                        fault_point("image_block_written")
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

    def stored_dtype(self, key: str, values: np.ndarray) -> np.dtype:
        """The dtype rows of ``key`` have on disk: the array's, or for a new array the format's (else the
        values'). Content hashes are computed over rows in this dtype."""
        if key in self._data_keys:
            return np.dtype(self.array(key).dtype)
        return fmt.FIXED_DATA.get(key, (values.dtype, ()))[0]

    def write_rows(self, key: str, first_row: int, values: np.ndarray) -> None:
        """Write rows ``[first_row, first_row + len(values))`` of ``data/<key>``, growing the array if needed.

        Rows beyond ``n_steps`` stay invisible until :meth:`commit_episode`; their files are fsynced by
        :meth:`sync_written` (the commit calls it).
        """
        self._check_writable()
        values = np.asarray(values)
        created = False
        with self._cache_lock:
            if key not in self._data_keys:
                data = self._root["data"]
                assert isinstance(data, zarr.Group)
                if self.n_episodes:
                    raise StoreError(f"data key {key!r} is not in this store; keys: {self.data_keys}")
                dtype = self.stored_dtype(key, values)
                if fmt.is_image_key(key):
                    chunks, codec = (1, *values.shape[1:]), fmt.image_codec()
                else:
                    chunks, codec = (fmt.LOWDIM_CHUNK_ROWS, *values.shape[1:]), fmt.lowdim_codec()
                data.create_array(key, shape=(0, *values.shape[1:]), chunks=chunks, dtype=dtype,
                                  compressors=codec, config=_ARRAY_CONFIG)
                self._data_keys.add(key)
                created = True
        arr = self.array(key)
        end = first_row + values.shape[0]
        resized = arr.shape[0] < end
        if resized:
            arr.resize((end, *arr.shape[1:]))
        arr[first_row:end] = values
        self._note_written(f"data/{key}", arr, first_row, end, metadata=resized or created, new=created)
        if created:
            fault_point("first_array_created")

    def _note_written(self, array_path: str, arr: zarr.Array, lo: int, hi: int, metadata: bool,
                      new: bool = False) -> None:
        """Remember the files a write changed, for :meth:`sync_written`: the chunks of rows ``[lo, hi)``,
        the array's zarr.json if its shape changed, and for a ``new`` array its groups' zarr.json too
        (``data/images/zarr.json`` appears with the first camera)."""
        if not self.fsync:
            return
        array_dir = self.path / array_path
        files = {f for f, _, _ in chunk_files(array_dir, arr, lo, hi)}
        if metadata:
            files.add(array_dir / "zarr.json")
        if new:
            files |= {d / "zarr.json" for d in array_dir.parents if self.path in d.parents}
        with self._cache_lock:
            self._unsynced.setdefault(array_path, set()).update(files)

    def sync_written(self, keys: Iterable[str] | None = None) -> None:
        """fsync the files written so far (of data ``keys`` only, if given) and their directories."""
        with self._cache_lock:
            paths = list(self._unsynced) if keys is None else [f"data/{k}" for k in keys]
            files = set().union(*(self._unsynced.pop(p, set()) for p in paths))
        if files:
            fsync_files(sorted(files), self.path)

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
        missing = set(fmt.EPISODE_META) - set(meta)
        if missing:
            raise StoreError(f"commit: meta is missing {sorted(missing)} (build it with episode_meta_values)")
        for key in self.data_keys:
            arr = self.array(key)
            if arr.shape[0] < end:
                raise StoreError(f"commit: data/{key} has {arr.shape[0]} rows, the episode needs {end}")
            if arr.shape[0] > end:
                arr.resize((end, *arr.shape[1:]))
                self._note_written(f"data/{key}", arr, end, end, metadata=True)
        # every meta array grows with the episodes; a store that records hashes gets "" when none is given
        values = {**{k: "" for k in fmt.OPTIONAL_META if self._has_meta(k)}, **meta}
        for key, value in values.items():
            arr = self._meta_array(key)
            resized = arr.shape[0] != index + 1
            if resized:
                arr.resize((index + 1, *arr.shape[1:]))
            arr[index] = value
            self._note_written(f"meta/{key}", arr, index, index + 1, metadata=resized)
        self.sync_written()  # the episode's rows and meta are durable before the commit point
        fault_point("episode_data_written")
        ends = self._meta_array(fmt.EPISODE_ENDS)
        ends.resize((index + 1,))
        fault_point("episode_ends_resized")
        ends[index] = end  # the commit point
        if self.fsync:
            ends_dir = self.path / "meta" / fmt.EPISODE_ENDS
            fsync_files([ends_dir / "zarr.json", *(f for f, _, _ in chunk_files(ends_dir, ends, index, index + 1))],
                        ends_dir)
        self._episode_ends = np.append(self._episode_ends, np.int64(end))
        return index

    def discard_tail(self) -> None:
        """Cut every array back to the committed episodes (drops an episode in progress)."""
        self._check_writable()
        with self._cache_lock:
            self._unsynced.clear()  # what they hold is being cut away
        n, e = self.n_steps, self.n_episodes
        if e == 0 and self._data_keys:
            self._reset_data()  # no committed episode fixes the keys yet: the next first episode may differ
        for key in self.data_keys:
            arr = self.array(key)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))
        for key in [*fmt.EPISODE_META, *(k for k in fmt.OPTIONAL_META if self._has_meta(k))]:
            arr = self._meta_array(key)
            if arr.shape[0] != e:
                arr.resize((e, *arr.shape[1:]))

    def _reset_data(self) -> None:
        """Replace ``data/`` by an empty group (only while no episode is committed: it drops every row).

        Removed as files, not through zarr: zarr deletes the arrays it lists, and a crash inside an earlier
        delete (or inside create) can leave a partial tree; ``rmtree`` takes whatever is there.
        """
        assert self.n_episodes == 0, "data/ holds committed episodes"
        data = self.path / "data"
        if data.exists():
            shutil.rmtree(data)
        self._root.create_group("data")
        if self.fsync:
            fsync_files([data / "zarr.json"], self.path)
        with self._cache_lock:
            self._data_keys.clear()
            self._arrays = {k: v for k, v in self._arrays.items() if k.startswith("meta/")}

    def _check_chunks(self) -> None:
        """Raise if a chunk file of a committed row is missing (v2 stores write every chunk; in v1 an
        all-zero chunk may legitimately be absent, so only the validator's warning applies there)."""
        if self.format_version < fmt.COMPLETE_CHUNKS_VERSION:
            return
        gone: list[str] = []
        arrays = [(f"data/{k}", self.array(k), self.n_steps) for k in self.data_keys]
        arrays += [(f"meta/{k}", self._meta_array(k), self.n_episodes)
                   for k in [fmt.EPISODE_ENDS, *fmt.EPISODE_META, *fmt.OPTIONAL_META] if self._has_meta(k)]
        for name, arr, n in arrays:
            gone += [f"{name}/{key} (rows {a}-{b - 1})" for key, a, b in missing_chunks(self.path / name, arr, n)]
        if gone:
            raise StoreError(f"{self.path}: {len(gone)} chunk file(s) of committed episodes are missing: "
                             f"{', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}; the store is damaged "
                             f"(`robot-policy dataset validate {self.path}` lists every problem)")

    def _repair(self) -> None:
        """Undo what a crashed writer left (the lock is held): an uncommitted tail, a half-written commit,
        the arrays of a first episode that never committed, zarr's temp files; add v2's hash array."""
        if self.n_episodes == 0:
            self._reset_data()  # nothing is committed, so nothing under data/ is kept
        for key in fmt.OPTIONAL_META:
            if not self._has_meta(key):  # a v1 store: the episodes written from now on get hashes
                meta = self._root["meta"]
                assert isinstance(meta, zarr.Group)
                _create_meta_array(meta, key, self.n_episodes)
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


_ARRAY_CONFIG: Final[ArrayConfigParams] = {"write_empty_chunks": True}


def _create_meta_array(meta: zarr.Group, key: str, n_episodes: int) -> None:
    """Create ``meta/<key>`` with ``n_episodes`` entries of its fill value ("" / 0)."""
    dtype, tail = {**fmt.EPISODE_META, **fmt.OPTIONAL_META}[key]
    arr = meta.create_array(key, shape=(0, *tail), chunks=(min(fmt.META_CHUNK, 4096), *tail), dtype=dtype,
                            compressors=None if dtype is str else fmt.lowdim_codec(), config=_ARRAY_CONFIG)
    if n_episodes:
        arr.resize((n_episodes, *tail))
        arr[:] = "" if dtype is str else 0  # written, so the chunks exist


#: root attributes that say which job a store belongs to (see EpisodeStore.create)
_IDENTITY_ATTRS: Final = ("embodiment", "cameras", "task", "base_to_base")


def _is_crashed_attempt(path: Path, identity: Mapping[str, Any]) -> bool:
    """True for a directory EpisodeStore created that holds no committed episode and whose root attrs
    record ``identity`` (embodiment, cameras, task; or none yet: the writer died inside create): the same
    job's attempt that crashed before its first commit, which a rerun may replace. Any other store, even an
    empty one (its attrs hold camera intrinsics, embodiment, task, provenance), is not replaced."""
    if not path.is_dir() or not (path / ".writer.lock").exists():
        return False  # not made by EpisodeStore
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except FileNotFoundError:
        attrs = {}  # the writer died before create wrote the root group
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: not provably this job's, so it is not replaced
    if not isinstance(attrs, dict):
        return False
    if attrs:
        # compared as JSON, which is how the attrs were stored (tuples read back as lists)
        recorded = {k: attrs[k] for k in _IDENTITY_ATTRS if k in attrs}
        if recorded != json.loads(json.dumps(dict(identity))):
            return False
    ends = path / "meta" / fmt.EPISODE_ENDS
    if not (ends / "zarr.json").exists():  # crashed inside create: only create's own entries may be there
        return {p.name for p in path.iterdir()} <= {".writer.lock", "zarr.json", "meta", "data"}
    try:
        return committed_episode_ends(np.asarray(zarr.open_array(str(ends), mode="r")[:])).size == 0
    except Exception:  # noqa: BLE001  # unreadable: not provably empty, so it is not replaced
        return False


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
