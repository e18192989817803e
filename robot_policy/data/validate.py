"""Check an episode store against everything the reader relies on, and list every problem found.

Independent of :class:`EpisodeStore` (which refuses to open a broken store): it opens the zarr arrays
directly and keeps going after a problem, so one run reports all of them, each naming the key and, where
there is one, the index. Errors make the store unreadable or its data wrong; warnings are leftovers of an
interrupted writer that readers ignore and the next writer repairs, things a v1 store cannot prove
(missing hashes, absent chunks that may be all zeros), and duplicated seeds.

Always checked: metadata that parses, attrs, the index, array shapes and dtypes, a chunk file for every
committed row, and (unless ``check_values=False``) NaN/Inf, masks and timestamps. ``deep=True`` also
recomputes every episode's content hash from its rows (reads everything, images included).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robot_policy.data import format as fmt
from robot_policy.data.store import committed_episode_ends, corrupt_metadata, missing_chunks
from robot_policy.spaces.embodiment import EmbodimentSpec, SpecError
from robot_policy.spaces.unified import UNIFIED_DIM, describe_index

#: rows scanned per read when checking values (bounded memory on large stores)
_SCAN_ROWS = 65536
#: rows read per call when hashing an episode (bounds memory on image keys: 256 x 224x224x3 ~ 38 MB)
_HASH_ROWS = 256
#: problems of one kind listed per array before the rest are counted in one line
_MAX_LISTED = 10


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    key: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        where = self.key if self.index is None else f"{self.key}[{self.index}]"
        return f"{self.severity}: {where}: {self.message}"


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, key: str, message: str, index: int | None = None) -> None:
        self.problems.append(Problem("error", key, message, index))

    def warning(self, key: str, message: str, index: int | None = None) -> None:
        self.problems.append(Problem("warning", key, message, index))


def validate_store(path: str | Path, check_values: bool = True, deep: bool = False) -> list[Problem]:
    """Every problem in the store at ``path``; an empty list means valid.

    ``check_values=False`` skips the scans of array contents (NaN/Inf, masks, timestamps); ``deep=True``
    recomputes each episode's content hash and reports the episodes whose rows differ from it.
    """
    path = Path(path)
    report = _Report()
    bad_metadata = corrupt_metadata(path) if path.is_dir() else []
    for file, why in bad_metadata:
        report.error(str(file.relative_to(path)), f"corrupt zarr metadata: {why}")
    if bad_metadata:
        return report.problems  # zarr cannot list a group holding a node it cannot parse
    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001  # zarr raises several types for a missing or foreign store
        report.error("/", f"cannot open as a zarr v3 group: {e}")
        return report.problems
    attrs = dict(root.attrs)
    spec, cameras = _check_attrs(attrs, report)
    ends = _check_episode_ends(root, report)
    if ends is None:
        return report.problems
    n_steps, n_episodes = (int(ends[-1]) if ends.size else 0), int(ends.size)
    data = _get(root, "data")
    if not isinstance(data, zarr.Group):
        report.error("data", "group is missing")
        return report.problems
    arrays = dict(_arrays(data))
    _check_data_arrays(arrays, cameras, n_steps, n_episodes, report)
    masks = _check_meta_arrays(root, n_episodes, spec, report)
    version = attrs.get("format_version")
    complete = isinstance(version, int) and version >= fmt.COMPLETE_CHUNKS_VERSION
    _check_chunks(path, root, arrays, ends, complete, report)
    _check_seeds(root, n_episodes, report)
    hashes = _check_hashes_present(root, n_episodes, report)
    if check_values:
        _check_values(arrays, ends, masks, report)
    if deep and hashes is not None:
        _check_hashes(arrays, ends, hashes, report)
    return report.problems


def _get(group: zarr.Group, key: str) -> Any:
    try:
        return group[key]
    except KeyError:
        return None


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, member in group.members():
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        elif isinstance(member, zarr.Group):
            yield from _arrays(member, prefix + name + "/")


def _check_attrs(attrs: dict[str, Any], report: _Report) -> tuple[EmbodimentSpec | None, dict[str, Any]]:
    for key in fmt.REQUIRED_ATTRS:
        if key not in attrs:
            report.error(f"attrs.{key}", "missing root attribute")
    if "format" in attrs and attrs["format"] != fmt.FORMAT_NAME:
        report.error("attrs.format", f"is {attrs['format']!r}, expected {fmt.FORMAT_NAME!r}")
    if "format_version" in attrs and attrs["format_version"] not in fmt.SUPPORTED_VERSIONS:
        report.error("attrs.format_version", f"{attrs['format_version']!r} is not one of {fmt.SUPPORTED_VERSIONS}")
    spec = None
    if "embodiment" in attrs:
        try:
            spec = EmbodimentSpec.from_dict(attrs["embodiment"], where="attrs.embodiment")
        except SpecError as e:
            report.error("attrs.embodiment", str(e))
    hz = attrs.get("control_hz")
    if "control_hz" in attrs and not (isinstance(hz, (int, float)) and hz > 0):
        report.error("attrs.control_hz", f"must be a positive number, got {hz!r}")
    if spec is not None and isinstance(hz, (int, float)) and abs(spec.control_hz - hz) > 1e-9:
        report.error("attrs.control_hz", f"{hz} differs from the embodiment's {spec.control_hz}")
    cameras = attrs.get("cameras", {})
    if not isinstance(cameras, dict):
        report.error("attrs.cameras", f"expected a mapping, got {type(cameras).__name__}")
        cameras = {}
    for name, cam in cameras.items():
        if not isinstance(cam, dict) or not {"height", "width"} <= set(cam):
            report.error(f"attrs.cameras.{name}", "needs 'height' and 'width'")
    return spec, cameras


def _check_episode_ends(root: zarr.Group, report: _Report) -> np.ndarray | None:
    arr = _get(root, f"meta/{fmt.EPISODE_ENDS}")
    key = f"meta/{fmt.EPISODE_ENDS}"
    if not isinstance(arr, zarr.Array):
        report.error(key, "array is missing")
        return None
    if arr.dtype != np.int64 or arr.ndim != 1:
        report.error(key, f"expected int64 (E,), got {arr.dtype} {arr.shape}")
        return None
    raw = np.asarray(arr[:])
    ends = committed_episode_ends(raw)
    if ends.size < raw.size:
        report.warning(key, "trailing entry of an interrupted commit (ignored by readers, repaired on append)",
                       int(raw.size - 1))
    if ends.size and ends[0] <= 0:
        report.error(key, f"first episode ends at {int(ends[0])}; episodes must be non-empty", 0)
    bad = np.flatnonzero(np.diff(ends) <= 0)
    for i in bad[:10]:
        report.error(key, f"not increasing: {int(ends[i])} then {int(ends[i + 1])}", int(i + 1))
    if bad.size:
        return None
    return ends


def _check_data_arrays(arrays: dict[str, zarr.Array], cameras: dict[str, Any], n_steps: int, n_episodes: int,
                       report: _Report) -> None:
    for key in fmt.REQUIRED_DATA:
        # an empty store has no arrays yet: its first episode creates them
        if key not in arrays and n_episodes:
            report.error(f"data/{key}", "required array is missing")
    for key, (dtype, tail) in fmt.FIXED_DATA.items():
        arr = arrays.get(key)
        if arr is not None and (arr.dtype != dtype or arr.shape[1:] != tail):
            report.error(f"data/{key}", f"expected {dtype} (T{''.join(', ' + str(t) for t in tail)}), "
                         f"got {arr.dtype} {arr.shape}")
    image_keys = {k for k in arrays if fmt.is_image_key(k)}
    for name, cam in cameras.items():
        key = fmt.image_key(name)
        if key not in arrays:
            if n_episodes:  # an empty store gets its image arrays with its first episode
                report.error(f"data/{key}", f"camera {name!r} is in attrs.cameras but has no array")
            continue
        arr = arrays[key]
        want = (int(cam.get("height", -1)), int(cam.get("width", -1)), 3)
        if arr.dtype != np.uint8 or arr.shape[1:] != want:
            report.error(f"data/{key}", f"expected uint8 (T, {want[0]}, {want[1]}, 3), got {arr.dtype} {arr.shape}")
        if arr.chunks[0] != 1:
            report.warning(f"data/{key}", f"chunked {arr.chunks[0]} frames per chunk, expected 1")
    for key in sorted(image_keys - {fmt.image_key(n) for n in cameras}):
        report.error(f"data/{key}", "image array for a camera not listed in attrs.cameras")
    for key, arr in sorted(arrays.items()):
        if arr.ndim == 0:
            report.error(f"data/{key}", "is a scalar; data arrays have a time axis")
        elif arr.shape[0] < n_steps:
            report.error(f"data/{key}", f"truncated: {arr.shape[0]} rows, meta/episode_ends says {n_steps}")
        elif arr.shape[0] > n_steps:
            report.warning(f"data/{key}", f"{arr.shape[0] - n_steps} uncommitted rows after the last episode "
                           "(an interrupted writer; ignored by readers, repaired on append)")


def _check_meta_arrays(root: zarr.Group, n_episodes: int, spec: EmbodimentSpec | None,
                       report: _Report) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for key, (dtype, tail) in fmt.EPISODE_META.items():
        name = f"meta/{key}"
        arr = _get(root, name)
        if not isinstance(arr, zarr.Array):
            report.error(name, "array is missing")
            continue
        if arr.shape[0] < n_episodes:
            report.error(name, f"has {arr.shape[0]} entries for {n_episodes} episodes")
            continue
        if dtype is not str and (arr.dtype != dtype or arr.shape[1:] != tail):
            report.error(name, f"expected {dtype} (E{''.join(', ' + str(t) for t in tail)}), got {arr.dtype} {arr.shape}")
            continue
        if key in (fmt.STATE_MASK, fmt.ACTION_MASK):
            values = np.asarray(arr[:n_episodes])
            not_binary = np.argwhere((values != 0) & (values != 1))
            if not_binary.size:
                e, i = not_binary[0]
                report.error(name, f"mask value {values[e, i]} at slot {describe_index(int(i))} is not 0/1", int(e))
                continue
            if spec is not None:
                allowed = (spec.state if key == fmt.STATE_MASK else spec.action).mask
                beyond = np.argwhere((values > 0) & (allowed[None] == 0))
                if beyond.size:
                    e, i = beyond[0]
                    report.error(name, f"marks slot {describe_index(int(i))} used, but embodiment {spec.name} "
                                 "does not write it", int(e))
            masks[key] = values
    return masks


def _check_values(arrays: dict[str, zarr.Array], ends: np.ndarray, masks: dict[str, np.ndarray],
                  report: _Report) -> None:
    n_steps = int(ends[-1]) if ends.size else 0
    episode_of_row = np.repeat(np.arange(ends.size), np.diff(ends, prepend=0))
    for key, arr in sorted(arrays.items()):
        if arr.dtype.kind != "f" or arr.shape[0] < n_steps:
            continue
        mask_key = {fmt.STATE: fmt.STATE_MASK, fmt.ACTION: fmt.ACTION_MASK}.get(key)
        nonfinite_reported = outside_reported = False
        for lo in range(0, n_steps, _SCAN_ROWS):
            rows = np.asarray(arr[lo: min(lo + _SCAN_ROWS, n_steps)])
            bad = ~np.isfinite(rows)
            if bad.any() and not nonfinite_reported:
                where = np.argwhere(bad)[0]
                row = lo + int(where[0])
                slot = f" slot {describe_index(int(where[1]))}" if rows.ndim == 2 and rows.shape[1] == UNIFIED_DIM else ""
                report.error(f"data/{key}", f"{int(bad.sum())}+ NaN/Inf values, first at row {row}{slot} "
                             f"(episode {int(episode_of_row[row])})", row)
                nonfinite_reported = True
            if mask_key in masks and not outside_reported:
                mask_rows = masks[mask_key][episode_of_row[lo: lo + rows.shape[0]]]
                outside = (rows != 0) & (mask_rows == 0) & np.isfinite(rows)
                if outside.any():
                    t, i = np.argwhere(outside)[0]
                    row = lo + int(t)
                    report.error(f"data/{key}", f"non-zero value in slot {describe_index(int(i))}, which the "
                                 f"episode's mask marks unused (episode {int(episode_of_row[row])})", row)
                    outside_reported = True
        if key == fmt.TIMESTAMP:
            ts = np.asarray(arr[:n_steps], dtype=np.float64)
            step_ok = np.diff(ts) > 0
            # the first step of each episode may go back in time (a new episode)
            step_ok[ends[:-1] - 1] = True
            bad = np.flatnonzero(~step_ok)
            if bad.size:
                row = int(bad[0]) + 1
                report.error("data/timestamp", f"not strictly increasing within episode "
                             f"{int(episode_of_row[row])}: {ts[row - 1]!r} -> {ts[row]!r}", row)


def _check_chunks(path: Path, root: zarr.Group, arrays: dict[str, zarr.Array], ends: np.ndarray, complete: bool,
                  report: _Report) -> None:
    """A chunk file for every committed row of every array: an absent chunk reads as the fill value."""
    n_steps, n_episodes = (int(ends[-1]) if ends.size else 0), int(ends.size)
    targets: list[tuple[str, zarr.Array, int]] = [(f"data/{k}", a, n_steps) for k, a in sorted(arrays.items())]
    for key in [fmt.EPISODE_ENDS, *fmt.EPISODE_META, *fmt.OPTIONAL_META]:
        arr = _get(root, f"meta/{key}")
        if isinstance(arr, zarr.Array):
            targets.append((f"meta/{key}", arr, n_episodes))
    for name, arr, n in targets:
        if arr.ndim == 0 or arr.shape[0] < n:
            continue  # reported as truncated
        gone = missing_chunks(path / name, arr, n)
        for chunk, a, b in gone[:_MAX_LISTED]:
            where = f"rows {a}-{b - 1}"
            if name.startswith("data/"):
                first, last = np.searchsorted(ends, [a, b - 1], side="right")
                where += f", episode {first}" if first == last else f", episodes {first}-{last}"
            else:
                where = f"episodes {a}-{b - 1}"
            if complete:
                report.error(name, f"chunk file {chunk} is missing ({where}): readers would see zeros", a)
            else:
                report.warning(name, f"chunk file {chunk} is absent ({where}): a format v1 store skips chunks "
                               "that are all zeros, so this is either zeros or lost data", a)
        if len(gone) > _MAX_LISTED:
            (report.error if complete else report.warning)(name, f"{len(gone) - _MAX_LISTED} more chunk files "
                                                                 "are missing")


def _check_seeds(root: zarr.Group, n_episodes: int, report: _Report) -> None:
    """Warn on a seed recorded by several episodes (a resumed collect that restarted its seeds)."""
    arr = _get(root, f"meta/{fmt.SEED}")
    if not isinstance(arr, zarr.Array) or arr.shape[0] < n_episodes or arr.dtype.kind not in "iu":
        return
    seeds = np.asarray(arr[:n_episodes])
    values, counts = np.unique(seeds[seeds != -1], return_counts=True)
    dups = values[counts > 1]
    for seed in dups[:_MAX_LISTED]:
        episodes = np.flatnonzero(seeds == seed).tolist()
        report.warning(f"meta/{fmt.SEED}", f"seed {int(seed)} is recorded by episodes {episodes} "
                       "(duplicated demonstrations?)", episodes[0])
    if dups.size > _MAX_LISTED:
        report.warning(f"meta/{fmt.SEED}", f"{dups.size - _MAX_LISTED} more seeds are duplicated")


def _check_hashes_present(root: zarr.Group, n_episodes: int, report: _Report) -> np.ndarray | None:
    """The (E,) content hashes, warning on episodes without one; None if the store records none."""
    key = f"meta/{fmt.CONTENT_HASH}"
    arr = _get(root, key)
    if not isinstance(arr, zarr.Array):
        if n_episodes:
            report.warning(key, "missing: the store was written before content hashes (--deep cannot check it)")
        return None
    if arr.shape[0] < n_episodes:
        report.error(key, f"has {arr.shape[0]} entries for {n_episodes} episodes")
        return None
    hashes = np.asarray(arr[:n_episodes], dtype=object)
    unhashed = [i for i, h in enumerate(hashes) if not h]
    if unhashed:
        report.warning(key, f"{len(unhashed)} episode(s) have no content hash (written before hashes): "
                       f"{unhashed[:_MAX_LISTED]}{' ...' if len(unhashed) > _MAX_LISTED else ''}", unhashed[0])
    return hashes


def _check_hashes(arrays: dict[str, zarr.Array], ends: np.ndarray, hashes: np.ndarray, report: _Report) -> None:
    """Recompute each hashed episode's content hash from its rows (every data key, images included)."""
    key = f"meta/{fmt.CONTENT_HASH}"
    n_steps = int(ends[-1]) if ends.size else 0
    if any(a.ndim == 0 or a.shape[0] < n_steps for a in arrays.values()):
        return  # truncated arrays are reported already; their episodes cannot be read
    start = 0
    for index, end in enumerate(ends.tolist()):
        if hashes[index]:
            hasher = fmt.ContentHasher()
            for name, arr in sorted(arrays.items()):
                for lo in range(start, end, _HASH_ROWS):
                    hasher.update(name, np.asarray(arr[lo: min(lo + _HASH_ROWS, end)]), np.dtype(arr.dtype))
            got = hasher.hexdigest()
            if got != hashes[index]:
                report.error(key, f"episode {index} (rows {start}-{end - 1}) differs from the content hash "
                             f"written at its commit: stored {str(hashes[index])[:12]}..., rows hash to "
                             f"{got[:12]}...", index)
        start = end
