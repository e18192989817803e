"""The one import loop every reader shares: source episodes -> the streaming episode writer.

A reader (LeRobot, rosbag2, robomimic) turns its recording into :class:`SourceEpisode` objects, one at a
time, with the native fields a mapping selected; :func:`run_import` converts each to the unified space
and streams it into the store step by step, committing it at its end. So an interrupted import leaves a
valid store holding the episodes committed so far, and running the same import again (same source, same
mapping) appends the rest: the store records what it was imported from, and which source episodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_policy.data import format as fmt
from robot_policy.data.interop.mapping import MappingError, SourceMapping, native_to_unified
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError


@dataclass
class ImportConfig:
    """Options of ``robot-policy dataset import FORMAT SRC``."""

    #: the store to write (required); an existing one is resumed when it is an earlier run of this import
    out: str = ""
    #: configs/mapping/<name>.yaml or a YAML path (a LeRobot export of ours carries its own: the default there)
    mapping: str | None = None
    #: replace an existing store at out instead of resuming it
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out: give the store to write, e.g. out=datasets/imported.zarr")


@dataclass
class SourceEpisode:
    """One episode of a recording, resolved by a mapping.

    Attributes:
        name: the source's own name for it (``episode 3``, ``demo_7``, ``bag t=12.0-19.5 s``), for messages.
        timestamp: (T,) float64 seconds (strictly increasing).
        state, action: native field -> (T, dim) values (the mapped fields; the null ones are absent).
        extras: store data key -> (T, ...) values.
        frames: per step, camera -> (H, W, 3) uint8 (None without cameras); consumed once, in order.
        state_unified, action_unified: (T, 128) float32 when the source carries the unified vectors (a
            robot_policy export): taken as they are; the native fields, if any, are checked against them.
        state_mask, action_mask: (128,) per-episode masks when the source records them.
    """

    name: str
    timestamp: np.ndarray
    state: dict[str, np.ndarray] = field(default_factory=dict)
    action: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    frames: Iterator[Mapping[str, np.ndarray]] | None = None
    language: str = ""
    seed: int = -1
    success: bool | None = None
    state_unified: np.ndarray | None = None
    action_unified: np.ndarray | None = None
    state_mask: np.ndarray | None = None
    action_mask: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(self.timestamp.shape[0])


@dataclass
class ImportSummary:
    """What an import did: episodes and steps written, what filled what, what was left out and why."""

    source: str
    src: str
    out: str
    episodes_total: int = 0
    episodes_written: int = 0
    #: committed by an earlier, interrupted run of the same import
    episodes_resumed: int = 0
    steps: int = 0
    #: store target ("state.right_joint_pos", "images/front", "object_state") -> its source
    mapped: dict[str, str] = field(default_factory=dict)
    #: what was left out ("feature observation.velocity", "state.right_joint_vel") -> why
    dropped: dict[str, str] = field(default_factory=dict)
    #: rosbag: stream -> {"mean_ms", "max_ms", "samples"} of |header stamp - control tick|
    skew: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def describe(self) -> str:
        lines = [f"imported {self.episodes_written} episode(s), {self.steps} steps, from {self.source} {self.src} "
                 f"into {self.out} in {self.elapsed_s:.1f} s"
                 + (f" ({self.episodes_resumed} already there from an interrupted run)" if self.episodes_resumed
                    else "")]
        lines.append("mapped:")
        lines += [f"  {target:<28} <- {src}" for target, src in self.mapped.items()]
        if self.dropped:
            lines.append("dropped:")
            lines += [f"  {what:<28} {why}" for what, why in self.dropped.items()]
        if self.skew:
            lines.append("alignment skew (|header stamp - control tick|):")
            lines += [f"  {name:<28} mean {s['mean_ms']:.2f} ms, max {s['max_ms']:.2f} ms over {int(s['samples'])} "
                      "ticks" for name, s in self.skew.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def describe_mapping(mapping: SourceMapping) -> dict[str, str]:
    """Store target -> the source that fills it, as the summary lists them."""
    out: dict[str, str] = {}
    if mapping.unified is not None:
        out["state (128-d)"] = mapping.unified.state
        out["action (128-d)"] = mapping.unified.action
    for kind, fields in (("state", mapping.state), ("action", mapping.action)):
        for name, s in fields.items():
            if s is not None:
                out[f"{kind}.{name}"] = s.describe() + (" (checked against the 128-d vector)" if mapping.unified
                                                        else "")
    out.update({fmt.image_key(cam): c.key for cam, c in mapping.cameras.items()})
    out.update({key: s.describe() for key, s in mapping.extras.items()})
    return out


def open_import_store(out: str | Path, mapping: SourceMapping, src: str | Path, *, control_hz: float,
                      cameras: Mapping[str, CameraInfo], provenance: Mapping[str, Any] | None = None,
                      task: Mapping[str, Any] | None = None, overwrite: bool = False) -> EpisodeStore:
    """The store an import writes into: created, or, when it exists and records this very import (same
    source file, same mapping), opened to append the episodes an interrupted run did not commit."""
    out = Path(out)
    spec = mapping.embodiment
    if control_hz != spec.control_hz:
        spec = type(spec).from_dict({**spec.to_dict(), "control_hz": control_hz}, where=f"mapping {mapping.name}")
    record = {"source": mapping.source, "src": str(Path(src).resolve()), "mapping": mapping.name,
              "mapping_sha256": mapping.digest}
    if out.exists() and not overwrite:
        try:
            store = EpisodeStore.open(out, mode="a")
        except StoreError as e:
            raise StoreError(f"{out} exists and cannot be resumed ({e}); pass overwrite=true to replace it") from None
        recorded = store.attrs.get("provenance", {}).get("import")
        if recorded != record:
            store.close()
            raise StoreError(f"{out} exists and is not an earlier run of this import (it records "
                             f"{recorded or 'no import'}, this import is {record}); pass overwrite=true to "
                             "replace it, or choose another out=")
        return store
    return EpisodeStore.create(out, spec, cameras=cameras, overwrite=overwrite, task=task,
                               provenance={"source": f"import:{mapping.source}", "import": record,
                                           **dict(provenance or {})})


def run_import(store: EpisodeStore, mapping: SourceMapping, episodes: Callable[[int], Iterator[SourceEpisode]],
               total: int, summary: ImportSummary, progress: bool = True) -> ImportSummary:
    """Stream the source episodes from number ``store.n_episodes`` on into ``store`` (earlier ones were
    committed by an interrupted run); ``episodes(skip)`` yields them from index ``skip``. Fills ``summary``."""
    start = time.perf_counter()
    summary.episodes_total = total
    summary.episodes_resumed = store.n_episodes
    if store.n_episodes > total:
        raise StoreError(f"{store.path} holds {store.n_episodes} episodes, the source only {total}")
    state_mask, action_mask = mapping.masks()
    with tqdm(total=total, initial=store.n_episodes, desc=f"import {mapping.source}", unit="ep",
              disable=not progress) as bar:
        for ep in episodes(store.n_episodes):
            summary.steps += write_episode(store, mapping, ep, state_mask, action_mask)
            summary.episodes_written += 1
            bar.update(1)
    summary.elapsed_s = time.perf_counter() - start
    return summary


def write_episode(store: EpisodeStore, mapping: SourceMapping, ep: SourceEpisode, state_mask: np.ndarray,
                  action_mask: np.ndarray) -> int:
    """Convert one source episode to the unified space and stream it into ``store``. Returns its length."""
    where = f"{mapping.source} {ep.name}"
    n = ep.length
    if n == 0:
        raise MappingError(f"{where}: no steps")
    state = _unified(mapping, "state", ep.state, ep.state_unified, n, where)
    action = _unified(mapping, "action", ep.action, ep.action_unified, n, where)
    s_mask = state_mask if ep.state_mask is None else np.asarray(ep.state_mask, np.float32)
    a_mask = action_mask if ep.action_mask is None else np.asarray(ep.action_mask, np.float32)
    for key, rows in ep.extras.items():
        if rows.shape[0] != n:
            raise MappingError(f"{where}: extra {key} has {rows.shape[0]} rows, the episode {n} steps")
    frames = ep.frames if mapping.cameras else None
    with store.stream_episode(language=ep.language, seed=ep.seed, state_mask=s_mask, action_mask=a_mask) as w:
        for t in range(n):
            images = None
            if frames is not None:
                try:
                    images = next(frames)
                except StopIteration:
                    raise MappingError(f"{where}: the camera streams end at step {t} of {n}") from None
            w.add_step(state=state[t], action=action[t], timestamp=float(ep.timestamp[t]), images=images,
                       **{k: v[t] for k, v in ep.extras.items()})
        w.commit(success=ep.success)
    return n


#: largest difference allowed between a native field and the unified vector it is checked against
#: (float32 rounding of a quaternion/gripper conversion is ~1e-7)
CROSS_CHECK_TOL = 1e-5


def _unified(mapping: SourceMapping, kind: str, native: dict[str, np.ndarray], exact: np.ndarray | None,
             n: int, where: str) -> np.ndarray:
    fmap = getattr(mapping.embodiment, kind)
    from_native = native_to_unified(fmap, native, n, f"{where} {kind}") if native or exact is None else None
    if exact is None:
        assert from_native is not None
        return from_native
    exact = np.asarray(exact, dtype=np.float32)
    if exact.shape != (n, 128):
        raise MappingError(f"{where}: unified {kind} has shape {exact.shape}, expected ({n}, 128)")
    if from_native is not None:
        for f in fmap.fields:
            if f.name in native:
                d = np.abs(from_native[:, f.unified_slice] - exact[:, f.unified_slice]).max()
                if not d <= CROSS_CHECK_TOL:
                    raise MappingError(f"{where}: {kind}.{f.name} from {getattr(mapping, kind)[f.name].describe()} "
                                       f"differs from the unified {kind} vector by {d:.3g} (the mapping does not "
                                       "describe this recording)")
    return exact
