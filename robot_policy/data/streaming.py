"""StreamingEpisodeWriter: record an episode step by step, commit it atomically at the end.

Camera frames go to disk while recording, in blocks of ``IMAGE_WRITE_BLOCK`` frames written by a
background thread (a recording loop must not stall on compression, hashing or fsync); low-dim rows are
small and stay in RAM until ``commit``. The thread also feeds the frames to the episode's content hash
and fsyncs each block (when the store fsyncs), so the commit only syncs the low-dim rows. Until the
commit, everything written is an uncommitted tail that readers never see; a crash loses only the episode
in flight.

    with store.stream_episode(language="lift the bar") as ep:
        for t in range(T):
            ep.add_step(state=s, action=a, timestamp=t / hz, images={"front": frame}, object_state=o)
        ep.commit(success=True)      # leaving the block without commit discards the episode
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.durability import fault_point

if TYPE_CHECKING:
    from robot_policy.data.store import EpisodeStore


class StreamingEpisodeWriter:
    """Append steps to one episode of ``store``; see the module docstring.

    Args:
        store: an EpisodeStore open for writing.
        language, seed, state_mask, action_mask: per-episode meta (see ``EpisodeStore.add_episode``).
        max_pending_blocks: image blocks queued for the writer thread before ``add_step`` blocks
            (bounds RAM: 4 blocks of 32 frames of a 224x224 camera is ~19 MB).
    """

    def __init__(self, store: EpisodeStore, *, language: str = "", seed: int = -1,
                 state_mask: np.ndarray | None = None, action_mask: np.ndarray | None = None,
                 max_pending_blocks: int = 4) -> None:
        self.store = store
        # validated now, so a bad mask fails before anything is recorded
        self._meta: dict[str, Any] = store.episode_meta_values(language=language, seed=seed, state_mask=state_mask,
                                                               action_mask=action_mask)
        self._start = store.n_steps
        self._lowdim: dict[str, list[np.ndarray]] = {}
        self._image_block: dict[str, list[np.ndarray]] = {}
        self._keys: set[str] | None = None
        self._steps = 0
        # images are hashed by the writer thread, low-dim rows at commit: disjoint keys, never concurrent
        self._hasher = fmt.ContentHasher()
        self._last_timestamp = -np.inf
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, int, np.ndarray] | None] = queue.Queue(max_pending_blocks)
        self._thread = threading.Thread(target=self._write_images, name="episode-image-writer", daemon=True)
        self._thread.start()

    @property
    def n_steps(self) -> int:
        return self._steps

    def add_step(self, *, state: np.ndarray, action: np.ndarray, timestamp: float,
                 images: Mapping[str, np.ndarray] | None = None, **extras: np.ndarray) -> None:
        """Append one control step.

        Args:
            state, action: (128,) unified vectors (SI units).
            timestamp: seconds; strictly increasing within the episode.
            images: camera name -> (H, W, 3) uint8 frame, one per camera of the store.
            extras: other per-step arrays (``object_state``, ``sim_state``...), fixed shape per key.
        """
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("this episode was already committed or discarded")
        row: dict[str, np.ndarray] = {fmt.STATE: np.asarray(state), fmt.ACTION: np.asarray(action),
                                      fmt.TIMESTAMP: np.asarray(timestamp, dtype=np.float64)}
        row.update({k: np.asarray(v) for k, v in extras.items()})
        frames = {fmt.image_key(cam): np.asarray(f) for cam, f in (images or {}).items()}
        keys = set(row) | set(frames)
        if self._keys is None:
            self.store.check_key_set(keys)
            self._keys = keys
        elif keys != self._keys:
            raise ValueError(f"step {self._steps}: keys {sorted(keys)} differ from the first step's {sorted(self._keys)}")
        if not float(timestamp) > self._last_timestamp:
            raise ValueError(f"step {self._steps}: timestamp {timestamp!r} is not after {self._last_timestamp!r}")
        for key, value in {**row, **frames}.items():
            self.store.check_rows(key, value[None], first_row=self._steps)
        self._last_timestamp = float(timestamp)
        for key, value in row.items():
            self._lowdim.setdefault(key, []).append(value)
        for key, frame in frames.items():
            self._image_block.setdefault(key, []).append(frame)
        self._steps += 1
        for key, block in list(self._image_block.items()):
            if len(block) == fmt.IMAGE_WRITE_BLOCK:
                self._flush_images(key)

    def commit(self, success: bool | None = None) -> int:
        """Write the buffered rows, wait for the image writer, and commit. Returns the episode index."""
        if self._closed:
            raise RuntimeError("this episode was already committed or discarded")
        if self._steps == 0:
            raise ValueError("cannot commit an episode with no steps")
        for key in list(self._image_block):
            self._flush_images(key)
        self._stop_writer()
        self._raise_if_failed()
        try:
            lowdim = {key: np.stack(rows) for key, rows in self._lowdim.items()}
            meta = {**self._meta, fmt.SUCCESS: -1 if success is None else int(bool(success))}
            self.store.check_masked_zero(lowdim[fmt.STATE], lowdim[fmt.ACTION], meta)
            for key, rows in lowdim.items():
                self._hasher.update(key, rows, self.store.stored_dtype(key, rows))
                self.store.write_rows(key, self._start, rows)
            meta[fmt.CONTENT_HASH] = self._hasher.hexdigest()
            index = self.store.commit_episode(self._steps, meta)
        except BaseException:
            self.store.discard_tail()
            raise
        finally:
            self._closed = True
        return index

    def discard(self) -> None:
        """Drop the episode: nothing of it becomes visible."""
        if self._closed:
            return
        self._closed = True
        self._stop_writer()
        self.store.discard_tail()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # no-op after commit

    # ---- image writer thread ---------------------------------------------------------------------
    def _flush_images(self, key: str) -> None:
        """Hand the buffered frames of ``key`` (the last ``len(block)`` steps) to the writer thread."""
        block = self._image_block.pop(key, [])
        if block:
            self._put((key, self._start + self._steps - len(block), np.stack(block)))

    def _put(self, item: tuple[str, int, np.ndarray] | None) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _write_images(self) -> None:
        # Arrays grow exactly with each block (one zarr.json rewrite per block) and are never reserved
        # ahead: cutting reserved rows back at commit costs zarr time proportional to the whole array
        # (it lists every chunk, and images have one chunk per frame).
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain after a failure; the error surfaces in the recording thread
            key, first, frames = item
            try:
                self.store.write_rows(key, first, frames)
                self._hasher.update(key, frames, np.dtype(np.uint8))
                self.store.sync_written([key])
                fault_point("image_block_written")
            except BaseException as e:  # noqa: BLE001  # any failure is surfaced to the recording thread
                self._error = e

    def _stop_writer(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing camera frames failed: {self._error!r}") from self._error
