"""The episode store's on-disk format (zarr v3): names, dtypes, chunking and codecs in one place.

Layout (Diffusion Policy's ReplayBuffer, extended)::

    store.zarr/
      zarr.json                       root attrs: format, format_version, embodiment, control_hz,
                                      cameras, provenance (and optional task)
      data/state        (T, 128) float32   unified state, all episodes concatenated on the time axis
      data/action       (T, 128) float32   unified action
      data/timestamp    (T,)     float64   seconds, strictly increasing within an episode
      data/images/<cam> (T, H, W, 3) uint8 one frame per chunk
      data/<extra>      (T, ...)           optional: object_state, sim_state, reward, ...
      meta/episode_ends (E,)     int64     cumulative end index of each episode: the only index
      meta/state_mask   (E, 128) float32   per episode
      meta/action_mask  (E, 128) float32   per episode
      meta/language     (E,)     str       per episode instruction ("" if none)
      meta/seed         (E,)     int64     simulator seed, -1 if none
      meta/success      (E,)     int8      1 / 0, -1 if unknown
      meta/content_hash (E,)     str       sha256 of the episode's rows (:class:`ContentHasher`); "" if none

Format versions: v2 writes every chunk of every array, fill-valued ones included (zarr's
``write_empty_chunks``), so a missing chunk file is damage, not zeros; and it records ``content_hash``.
v1 stores (no hashes; all-zero chunks may legitimately be absent) are still read, and appending to one
keeps it v1 but hashes the new episodes.

Commit protocol: an episode's data and per-episode meta are written first; appending its entry to
``meta/episode_ends`` commits it. Every file write in zarr's LocalStore is atomic (temp file + rename),
so a crash leaves either the old or the new version of each chunk; zarr does not fsync, so the writer
fsyncs the episode's chunk files and their directories before the ``episode_ends`` write, and
``episode_ends`` after it (a store option, default on). The commit itself is two writes (the array's
shape in zarr.json, then the chunk): a crash between them leaves a trailing entry that reads as the fill
value 0, which readers recognise (committed entries are strictly increasing and positive) and ignore.
Data beyond ``episode_ends[-1]`` is an uncommitted tail: invisible to readers, truncated by the next
writer.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
from zarr.codecs import BloscCodec

from robot_policy import keys

FORMAT_NAME: Final = "robot_policy.episode_store"
FORMAT_VERSION: Final = 2
SUPPORTED_VERSIONS: Final = (1, 2)
#: first version that writes every chunk and records content hashes
COMPLETE_CHUNKS_VERSION: Final = 2

# The data keys a training batch and an observation share are the ones of robot_policy.keys.
STATE: Final = keys.OBS_STATE
ACTION: Final = keys.ACTION
TIMESTAMP: Final = "timestamp"
OBJECT_STATE: Final = keys.OBS_OBJECT
SIM_STATE: Final = "sim_state"
IMAGES: Final = "images"

REQUIRED_DATA: Final = (STATE, ACTION, TIMESTAMP)
EPISODE_ENDS: Final = "episode_ends"
STATE_MASK: Final = keys.OBS_STATE_MASK
ACTION_MASK: Final = keys.ACTION_MASK
LANGUAGE: Final = "language"
SEED: Final = "seed"
SUCCESS: Final = "success"
CONTENT_HASH: Final = "content_hash"
REQUIRED_ATTRS: Final = ("format", "format_version", "embodiment", "control_hz", "cameras", "provenance")

#: dtype and trailing shape of the keys whose layout is fixed; other data keys are free-form numeric.
FIXED_DATA: Final[dict[str, tuple[np.dtype, tuple[int, ...]]]] = {
    STATE: (np.dtype(np.float32), (128,)),
    ACTION: (np.dtype(np.float32), (128,)),
    TIMESTAMP: (np.dtype(np.float64), ()),
}

#: per-episode meta arrays: dtype, trailing shape, value written when the caller gives none
EPISODE_META: Final[dict[str, tuple[np.dtype | type, tuple[int, ...]]]] = {
    STATE_MASK: (np.dtype(np.float32), (128,)),
    ACTION_MASK: (np.dtype(np.float32), (128,)),
    LANGUAGE: (str, ()),
    SEED: (np.dtype(np.int64), ()),
    SUCCESS: (np.dtype(np.int8), ()),
}
#: per-episode meta that v1 stores lack; created when such a store is opened for appending
OPTIONAL_META: Final[dict[str, tuple[np.dtype | type, tuple[int, ...]]]] = {
    CONTENT_HASH: (str, ()),
}

#: rows per chunk of low-dim arrays: small enough that a random 64-step window decodes ~1.25 chunks
#: (measured with tensorstore's concurrent reads: ~1.9x the windows/s of 1024-row chunks), large enough to
#: keep file counts sane.
LOWDIM_CHUNK_ROWS: Final = 256
#: episodes per chunk of meta arrays; episode_ends' chunk holds zeros beyond its shape (see above).
META_CHUNK: Final = 65536
#: frames written per zarr call when streaming images; amortises zarr's per-call cost (~3 ms per call;
#: measured 16 -> 32 frames per call: ~+30% frames/s).
IMAGE_WRITE_BLOCK: Final = 32


def lowdim_codec() -> BloscCodec:
    # lz4 + byte shuffle: float rows decode at several GB/s, which is what random-window sampling needs.
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def image_codec() -> BloscCodec:
    # lz4 level 1 with bit shuffle: measured on noisy 224x224 frames, the fastest writer of the Blosc
    # options tried (lz4/zstd, byte/bit/no shuffle) and the smallest files (~115 KB of 147 KB raw).
    return BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")


def image_key(camera: str) -> str:
    return f"{IMAGES}/{camera}"


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGES + "/")


class ContentHasher:
    """The content hash of one episode, fed its rows key by key, in row order, possibly in pieces.

    Definition (what ``meta/content_hash`` holds and ``dataset validate --deep`` recomputes): for each data
    key, sha256 over the C-order little-endian bytes of its rows in the store's dtype; then sha256 over one
    line ``key|dtype|row shape|rows|key digest`` per key, keys sorted. Row pieces may be of any size: the
    concatenated bytes are the same, so a streaming writer and a whole-episode writer agree.
    """

    def __init__(self) -> None:
        self._keys: dict[str, tuple[hashlib._Hash, np.dtype, tuple[int, ...], int]] = {}

    def update(self, key: str, rows: np.ndarray, dtype: np.dtype) -> None:
        """Add ``rows`` (n, ...) of ``key``, cast to ``dtype`` (the array's dtype on disk)."""
        le = np.dtype(dtype).newbyteorder("<")
        data = np.ascontiguousarray(rows, dtype=le)
        entry = self._keys.get(key)
        if entry is None:
            entry = (hashlib.sha256(), le, tuple(data.shape[1:]), 0)
        digest, d, tail, n = entry
        if tuple(data.shape[1:]) != tail or d != le:
            raise ValueError(f"content hash: {key} rows {data.dtype} {data.shape[1:]} after {d} {tail}")
        digest.update(data.tobytes())  # a copy: cheap next to the hash (and typed, unlike the raw buffer)
        self._keys[key] = (digest, d, tail, n + data.shape[0])

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for key in sorted(self._keys):
            digest, d, tail, n = self._keys[key]
            total.update(f"{key}|{d.str}|{tail}|{n}|{digest.hexdigest()}\n".encode())
        return total.hexdigest()
