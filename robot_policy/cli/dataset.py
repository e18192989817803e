"""robot-policy dataset {info,stats,validate} PATH: inspect and check an episode store;
robot-policy dataset {import,export} FORMAT PATH key=value ...: convert from and to other formats.

  info PATH               episodes, steps, keys, cameras, embodiment, provenance
  stats PATH [--out F]    per-dimension mean/std/min/max/q01/q99 of state, action (and object_state);
                          --out writes them as JSON
  validate PATH [--deep]  check everything the reader relies on (metadata, index, shapes, a chunk file for
                          every committed row, values); exit 1 listing each problem (key and index), 0 when
                          valid (warnings are printed but do not fail). --deep also recomputes each
                          episode's content hash and names the episodes whose rows changed.
  import FORMAT SRC out=STORE mapping=NAME [overwrite=true]
                          a LeRobot v3.0 dataset (lerobot), a rosbag2 bag (rosbag: mcap or sqlite3) or a
                          robomimic HDF5 file (robomimic) into a store, through a mapping (configs/mapping/
                          NAME.yaml or a YAML path) that says which feature or topic fills which native field.
                          Streams episode by episode with a progress bar; an interrupted import leaves a valid
                          store, and rerunning the same command appends the rest. Prints what was mapped,
                          what was dropped and why (rosbag: the alignment skew of each stream).
  view PATH [episode=N] [out=FILE.mp4] [stride=1] [width_px=1280]
                          an mp4 of one episode: its camera frames beside its joint and action curves
                          (measured solid, commanded dashed) with a cursor at the frame's time
  export FORMAT STORE out=DIR [key=value ...]
                          a store as a LeRobot v3.0 dataset (lerobot: vcodec=libsvtav1|h264, crf=30) or a
                          rosbag2 bag (rosbag: storage=mcap|sqlite3, images=raw|png|jpeg). `export FORMAT
                          --help` lists the options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from robot_policy.cli.common import fail

if TYPE_CHECKING:
    from robot_policy.data.store import CameraInfo

SUMMARY = "inspect, summarise and validate episode stores (info, stats, validate); import, export other formats"

#: format -> (module, import function, export function, export config class); imported when used
FORMATS: dict[str, tuple[str, str, str | None, str | None]] = {
    "lerobot": ("robot_policy.data.interop.lerobot", "import_lerobot", "export_lerobot", "LeRobotExportConfig"),
    "rosbag": ("robot_policy.data.interop.rosbag", "import_rosbag", "export_rosbag", "RosbagExportConfig"),
    "robomimic": ("robot_policy.data.interop.robomimic", "import_robomimic", None, None),
}


def main(argv: list[str]) -> int:
    if argv[:1] in (["import"], ["export"]):
        return _convert(argv[0], argv[1:])
    if argv[:1] == ["view"]:
        return _view(argv[1:])
    parser = argparse.ArgumentParser(prog="robot-policy dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("info", "stats", "validate"):
        p = sub.add_parser(name)
        p.add_argument("path", type=Path)
        if name == "stats":
            p.add_argument("--out", type=Path, default=None, help="write the stats as JSON here")
        if name == "validate":
            p.add_argument("--no-values", action="store_true", help="skip the scans of array contents")
            p.add_argument("--deep", action="store_true",
                           help="recompute every episode's content hash (reads all data, images included)")
    args = parser.parse_args(argv)
    if not args.path.exists():
        return fail(f"{args.path}: no such store")
    return {"info": _info, "stats": _stats, "validate": _validate}[args.command](args)


def _info(args: argparse.Namespace) -> int:
    from robot_policy.data.store import EpisodeStore, StoreError

    try:
        store = EpisodeStore.open(args.path)
    except StoreError as e:  # damaged or not a store: exit 1, as `validate` does
        return fail(str(e), code=1)
    console = Console()
    lengths = store.episode_lengths
    meta = store.episode_meta()
    table = Table(title=str(args.path), show_header=False)
    table.add_row("episodes", str(store.n_episodes))
    table.add_row("steps", str(store.n_steps))
    if store.n_episodes:
        table.add_row("episode length", f"min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
        table.add_row("duration", f"{store.n_steps / store.control_hz / 60:.1f} min at {store.control_hz:g} Hz")
        succ = meta["success"]
        known = succ >= 0
        if known.any():
            table.add_row("success", f"{int((succ[known] == 1).sum())}/{int(known.sum())} episodes with a known outcome")
        langs = sorted(set(meta["language"].tolist()))
        table.add_row("instructions", "; ".join(repr(x) for x in langs[:5]) + (" ..." if len(langs) > 5 else ""))
    table.add_row("embodiment", f"{store.embodiment.name}: {store.embodiment.description}")
    for key in store.data_keys:
        arr = store.array(key)
        table.add_row(f"data/{key}", f"{arr.dtype} {tuple(arr.shape)} chunks {tuple(arr.chunks)}")
    for name, cam in store.cameras.items():
        table.add_row(f"camera {name}", _camera_summary(cam))
    b2b = store.attrs.get("base_to_base")
    if b2b:
        t = [row[3] for row in b2b["matrix"][:3]]
        table.add_row(f"T_{b2b['parent']}_{b2b['child']}", f"t = [{', '.join(f'{v:.4f}' for v in t)}] m, "
                      f"{b2b.get('method', '')} {b2b.get('calibrated_at', '')} ({b2b.get('file', '')})")
    for key, value in store.attrs.get("provenance", {}).items():
        table.add_row(f"provenance.{key}", str(value))
    console.print(table)
    return 0


def _camera_summary(cam: CameraInfo) -> str:
    """A camera's size and calibration: fx fy cx cy (px), distortion, where it sits in the rig, serial, date."""
    parts = [f"{cam.height}x{cam.width}"]
    if cam.intrinsics is None:
        parts.append("no intrinsics")
    else:
        K = cam.intrinsics
        parts.append(f"fx {K[0][0]:.2f} fy {K[1][1]:.2f} cx {K[0][2]:.2f} cy {K[1][2]:.2f} px")
    if cam.distortion is not None:
        parts.append(f"{cam.distortion_model} [{', '.join(f'{v:.4g}' for v in cam.distortion)}]")
    if cam.extrinsics is not None:
        t = [row[3] for row in cam.extrinsics[:3]]
        parts.append(f"T_rig_camera t = [{', '.join(f'{v:.4f}' for v in t)}] m")
    else:
        parts.append("no extrinsics")
    parts += [f"{label} {value}" for label, value in (("serial", cam.serial), ("calibrated", cam.calibrated_at))
              if value is not None]
    return ", ".join(parts)


def _stats(args: argparse.Namespace) -> int:
    from robot_policy.data.normalizer import compute_stats, stats_to_json
    from robot_policy.data.store import EpisodeStore, StoreError
    from robot_policy.spaces.unified import describe_index

    try:
        store = EpisodeStore.open(args.path)
    except StoreError as e:  # damaged or not a store: exit 1, as `validate` does
        return fail(str(e), code=1)
    keys: list[str] = [k for k in ("state", "action", "object_state") if k in store.data_keys]
    stats = compute_stats(store.load(keys), keys)
    console = Console()
    for key, s in stats.items():
        table = Table(title=f"{key} ({int(s['mask'].sum())} real dims)")
        for col in ("dim", "mean", "std", "min", "max", "q01", "q99"):
            table.add_column(col, justify="right")
        for i in np.flatnonzero(s["mask"] > 0):
            name = describe_index(int(i)) if s["mask"].shape == (128,) else str(i)
            table.add_row(name, *(f"{s[c][i]:.4g}" for c in ("mean", "std", "min", "max", "q01", "q99")))
        console.print(table)
    if args.out is not None:
        args.out.write_text(json.dumps(stats_to_json(stats), indent=1))
        console.print(f"wrote {args.out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from robot_policy.data.validate import validate_store

    problems = validate_store(args.path, check_values=not args.no_values, deep=args.deep)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(p)
    if errors:
        print(f"{args.path}: INVALID ({len(errors)} error(s), {len(problems) - len(errors)} warning(s))")
        return 1
    print(f"{args.path}: valid" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


def _view(argv: list[str]) -> int:
    """``view PATH key=value ...``: the episode as an mp4 of camera frames and joint/action curves."""
    from robot_policy.configuration import ConfigError, parse_overrides
    from robot_policy.data.store import StoreError
    from robot_policy.eval.episode_view import ViewConfig, write_episode_view

    usage = "robot-policy dataset view PATH [episode=N] [out=FILE.mp4] [stride=1] [width_px=1280]"
    if "-h" in argv or "--help" in argv:
        from robot_policy.cli.common import options_help

        print(f"usage: {usage}\n\n{options_help(ViewConfig)}")
        return 0
    paths = [a for a in argv if "=" not in a]
    if len(paths) != 1:
        return fail(f"usage: {usage} (got {len(paths)} paths: {paths})")
    path = Path(paths[0])
    if not path.exists():
        return fail(f"{path}: no such store")
    try:
        cfg = parse_overrides(ViewConfig, [a for a in argv if "=" in a], where="dataset view")
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    out = Path(cfg.out) if cfg.out else path.parent / f"{path.stem}_ep{cfg.episode}.mp4"
    try:
        written, frames = write_episode_view(path, cfg.episode, out, stride=cfg.stride, width_px=cfg.width_px)
    except (StoreError, IndexError) as e:
        return fail(str(e), code=1)
    print(f"wrote {written} ({frames} frames)")
    return 0


def _convert(direction: str, argv: list[str]) -> int:
    """``import FORMAT SRC key=value ...`` / ``export FORMAT STORE key=value ...``."""
    import importlib

    from robot_policy.configuration import ConfigError, parse_overrides
    from robot_policy.data.interop.importer import ImportConfig
    from robot_policy.data.interop.mapping import MappingError
    from robot_policy.data.store import StoreError

    args = "SRC out=STORE mapping=NAME" if direction == "import" else "STORE out=PATH"
    usage = f"robot-policy dataset {direction} FORMAT {args} [key=value ...]"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {usage}\nformats: {', '.join(FORMATS)}\n\n{__doc__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in FORMATS:
        return fail(f"dataset {direction}: unknown format {name!r}; formats: {', '.join(FORMATS)}")
    module_name, import_fn, export_fn, export_cfg = FORMATS[name]
    if direction == "export" and export_fn is None:
        return fail(f"dataset export: {name} is import-only; export formats: "
                    f"{', '.join(f for f, v in FORMATS.items() if v[2])}")
    module = importlib.import_module(module_name)
    schema = ImportConfig if direction == "import" else getattr(module, str(export_cfg))
    if "-h" in rest or "--help" in rest:
        from robot_policy.cli.common import options_help

        print(f"usage: {usage}\n\n{options_help(schema)}")
        return 0
    paths = [a for a in rest if "=" not in a]
    if len(paths) != 1:
        return fail(f"usage: {usage} (got {len(paths)} paths: {paths})")
    src = Path(paths[0])
    if not src.exists():
        return fail(f"{src}: no such {'file or directory' if direction == 'import' else 'store'}")
    try:
        cfg = parse_overrides(schema, [a for a in rest if "=" in a], where=f"dataset {direction} {name}")
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    try:
        if direction == "import":
            summary = getattr(module, import_fn)(src, cfg.out, cfg.mapping, overwrite=cfg.overwrite)
            print(summary.describe())
        else:
            result = getattr(module, str(export_fn))(src, cfg)
            print(json.dumps(result, indent=1))
    except (MappingError, StoreError) as e:
        return fail(str(e), code=1)
    return 0
