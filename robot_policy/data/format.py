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

Commit protocol: an episode's data and per-episode meta are written first; appending its entry to
``meta/episode_ends`` commits it. Every file write in zarr's LocalStore is atomic (temp file + rename),
so a crash leaves either the old or the new version of each chunk. The commit itself is two writes
(the array's shape in zarr.json, then the chunk): a crash between them leaves a trailing entry that
reads as the fill value 0, which readers recognise (committed entries are strictly increasing and
positive) and ignore. Data beyond ``episode_ends[-1]`` is an uncommitted tail: invisible to readers,
truncated by the next writer.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from zarr.codecs import BloscCodec

FORMAT_NAME: Final = "robot_policy.episode_store"
FORMAT_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

STATE: Final = "state"
ACTION: Final = "action"
TIMESTAMP: Final = "timestamp"
OBJECT_STATE: Final = "object_state"
SIM_STATE: Final = "sim_state"
IMAGES: Final = "images"

REQUIRED_DATA: Final = (STATE, ACTION, TIMESTAMP)
EPISODE_ENDS: Final = "episode_ends"
STATE_MASK: Final = "state_mask"
ACTION_MASK: Final = "action_mask"
LANGUAGE: Final = "language"
SEED: Final = "seed"
SUCCESS: Final = "success"
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
