"""robomimic HDF5 files: import their demonstrations into a store through a mapping, with h5py.

robomimic's layout::

    data                    attrs: total (steps), env_args (JSON: env_name, type, env_kwargs)
    data/demo_<i>           attrs: num_samples; demos in the order of <i>
    data/demo_<i>/obs/<key>         (N, ...) observations (images: (N, H, W, 3) uint8, named <camera>_image)
    data/demo_<i>/actions           (N, A)
    data/demo_<i>/states            (N, S) simulator states, what robomimic's env.reset_to replays from
    data/demo_<i>/rewards, dones    (N,)
    mask/<split>            demo names of a filter key (train, valid, ...)

A mapping names datasets relative to the demo group (``obs/robot0_joint_pos``, ``actions``, ``states``).
Map ``states`` to the ``sim_state`` extra to keep the simulator states: a store imported from a file whose
``env_args.env_name`` is one of our tasks records that task, and its episodes replay by states
(:func:`robot_policy.pipelines.replay.replay_by_states`). robomimic has no clock: step ``t`` is at ``t /
control_hz`` s, the rate being the mapping's, else ``env_kwargs.control_freq``, else the embodiment's.
``env_args`` are kept in the store's provenance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robot_policy.data.interop.importer import (
    ImportSummary,
    SourceEpisode,
    describe_mapping,
    open_import_store,
    run_import,
)
from robot_policy.data.interop.mapping import FieldSource, MappingError, SourceMapping, load_mapping
from robot_policy.data.store import CameraInfo
from robot_policy.paths import CONFIG_DIR, available_configs


def _demo_number(name: str) -> int:
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise MappingError(f"data/{name}: not a robomimic demo group (expected demo_<i>)") from None


@dataclass
class RobomimicSource:
    """A robomimic HDF5 file opened for import with a mapping (datasets and shapes checked against it).

    ``filter_key``: import only the demos of ``mask/<filter_key>`` (robomimic's train/valid splits).
    """

    path: Path
    mapping: SourceMapping
    filter_key: str | None = None
    demos: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        import h5py

        self.file = h5py.File(self.path, "r")
        if "data" not in self.file:
            self.close()
            raise MappingError(f"{self.path}: not a robomimic file (no 'data' group)")
        data = self.file["data"]
        self.env_args: dict[str, Any] = json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
        names = sorted((k for k in data if k.startswith("demo")), key=_demo_number)
        if self.filter_key is not None:
            mask = self.file.get(f"mask/{self.filter_key}")
            if mask is None:
                keys = sorted(self.file["mask"]) if "mask" in self.file else []
                raise MappingError(f"{self.path}: no filter key mask/{self.filter_key}; filter keys: {keys}")
            chosen = {m.decode() if isinstance(m, bytes) else str(m) for m in mask[:]}
            names = [n for n in names if n in chosen]
        if not names:
            raise MappingError(f"{self.path}: no demos in data/")
        self.demos = names
        self._check_mapping()

    def close(self) -> None:
        self.file.close()

    @property
    def control_hz(self) -> float:
        hz = self.mapping.control_hz or self.env_args.get("env_kwargs", {}).get("control_freq")
        return float(hz or self.mapping.embodiment.control_hz)

    def _dataset(self, demo: str, key: str, where: str) -> Any:
        group = self.file["data"][demo]
        if key not in group:
            present = sorted(group) + [f"obs/{k}" for k in group.get("obs", {})]
            raise MappingError(f"mapping {self.mapping.name} on {self.path}: {where}: data/{demo}/{key} is not in "
                               f"the file; data/{demo} holds {', '.join(present)}")
        return group[key]

    def _check_mapping(self) -> None:
        """Every mapped dataset exists in the first demo, with rows that fit its field."""
        m, demo = self.mapping, self.demos[0]
        for kind in ("state", "action"):
            fmap = getattr(m.embodiment, kind)
            for name, s in getattr(m, kind).items():
                if s is None:
                    continue
                ds = self._dataset(demo, s.key, f"{kind}.{name}")
                width = _width(ds.shape, s, f"{kind}.{name}: data/{demo}/{s.key}")
                if width != fmap.get(name).dim:
                    raise MappingError(f"mapping {m.name}: {kind}.{name} takes {s.describe()}, {width} values per "
                                       f"step, but the field has dim {fmap.get(name).dim}")
        for key, s in m.extras.items():
            self._dataset(demo, s.key, f"extras.{key}")
        for cam, c in m.cameras.items():
            ds = self._dataset(demo, c.key, f"cameras.{cam}")
            if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[-1] != 3:
                raise MappingError(f"mapping {m.name}: cameras.{cam}: data/{demo}/{c.key} is {ds.dtype} "
                                   f"{ds.shape}, expected (N, H, W, 3) uint8 frames")

    def cameras(self) -> dict[str, CameraInfo]:
        demo = self.file["data"][self.demos[0]]
        return {cam: CameraInfo(int(demo[c.key].shape[1]), int(demo[c.key].shape[2]))
                for cam, c in self.mapping.cameras.items()}

    def dropped(self) -> dict[str, str]:
        demo = self.file["data"][self.demos[0]]
        present = [k for k in demo if k not in ("obs", "next_obs")] + [f"obs/{k}" for k in demo.get("obs", {})]
        used = self.mapping.used_keys()
        return {f"dataset {k}": "not in the mapping" for k in present if k not in used}

    def task(self) -> dict[str, Any] | None:
        """Our task config when ``env_args.env_name`` names one (its env_kwargs override it), else None."""
        name = self.env_args.get("env_name")
        if name not in available_configs("task"):
            return None
        raw = yaml.safe_load((CONFIG_DIR / "task" / f"{name}.yaml").read_text())
        kwargs = self.env_args.get("env_kwargs", {})
        return {**raw, **{k: v for k, v in kwargs.items() if k in raw}}

    def iter_episodes(self, skip: int) -> Iterator[SourceEpisode]:
        for demo in self.demos[skip:]:
            yield self.episode(demo)

    def episode(self, demo: str) -> SourceEpisode:
        m = self.mapping
        group = self.file["data"][demo]
        n = int(group.attrs.get("num_samples", group["actions"].shape[0] if "actions" in group else 0))
        where = f"data/{demo}"
        ep = SourceEpisode(name=demo, timestamp=np.arange(n, dtype=np.float64) / self.control_hz)

        def read(s: FieldSource, what: str) -> np.ndarray:
            values = np.asarray(self._dataset(demo, s.key, what)[:])
            if values.shape[0] != n:
                raise MappingError(f"{where}/{s.key}: {values.shape[0]} rows, the demo has {n} steps")
            return s.pick(values, f"{where} {what}")

        ep.state = {k: read(s, f"state.{k}") for k, s in m.state.items() if s is not None}
        ep.action = {k: read(s, f"action.{k}") for k, s in m.action.items() if s is not None}
        ep.extras = {}
        for key, s in m.extras.items():
            raw = np.asarray(self._dataset(demo, s.key, f"extras.{key}")[:])
            exact = s.index is None and s.scale == 1.0 and s.offset == 0.0
            ep.extras[key] = raw if exact else read(s, f"extras.{key}")  # states kept in their own dtype
        ep.language = m.language or ""
        if "rewards" in group:
            rewards = np.asarray(group["rewards"][:])
            ep.success = bool(rewards.size and rewards.max() > 0)
        ep.frames = self._frames(group, n) if m.cameras else None
        return ep

    def _frames(self, group: Any, n: int) -> Iterator[dict[str, np.ndarray]]:
        datasets = {cam: group[c.key] for cam, c in self.mapping.cameras.items()}
        block = 32  # frames read per h5py call
        for lo in range(0, n, block):
            chunk = {cam: np.asarray(ds[lo: lo + block]) for cam, ds in datasets.items()}
            for i in range(min(block, n - lo)):
                yield {cam: frames[i] for cam, frames in chunk.items()}


def _width(shape: tuple[int, ...], s: FieldSource, where: str) -> int:
    if len(shape) > 2:
        raise MappingError(f"{where}: rows of shape {shape[1:]}; a field takes a vector")
    width = 1 if len(shape) == 1 else int(shape[1])
    if s.index is not None:
        bad = [i for i in s.index if i >= width]
        if bad:
            raise MappingError(f"{where}: {s.describe()} indexes {bad}, but the rows have {width} values")
        return len(s.index)
    return width


def import_robomimic(src: str | Path, out: str | Path, mapping: SourceMapping | str | Path | None = None, *,
                     overwrite: bool = False, filter_key: str | None = None, progress: bool = True) -> ImportSummary:
    """Import the robomimic HDF5 file ``src`` into the store ``out`` with ``mapping`` (a mapping, its name or
    path). Resumes an interrupted run of the same import."""
    if mapping is None:
        raise MappingError(f"{src}: give mapping= (configs/mapping/<name>.yaml)")
    m = mapping if isinstance(mapping, SourceMapping) else load_mapping(mapping)
    if m.source != "robomimic":
        raise MappingError(f"mapping {m.name} is for {m.source} recordings, not robomimic")
    source = RobomimicSource(Path(src), m, filter_key)
    try:
        summary = ImportSummary(source="robomimic", src=str(src), out=str(out), mapped=describe_mapping(m),
                                dropped={**m.dropped_fields(), **source.dropped()})
        task = source.task()
        if task is None:
            summary.notes.append(f"env_args.env_name {source.env_args.get('env_name')!r} is not a task of ours: "
                                 "the states are kept, replay needs a matching env")
        store = open_import_store(out, m, src, control_hz=source.control_hz, cameras=source.cameras(), task=task,
                                  overwrite=overwrite, provenance={"robomimic_env_args": source.env_args})
        with store:
            return run_import(store, m, source.iter_episodes, len(source.demos), summary, progress=progress)
    finally:
        source.close()


__all__ = ["RobomimicSource", "import_robomimic"]
