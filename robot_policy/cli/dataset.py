"""robot-policy dataset {info,stats,validate} PATH: inspect and check an episode store.

  info PATH               episodes, steps, keys, cameras, embodiment, provenance
  stats PATH [--out F]    per-dimension mean/std/min/max/q01/q99 of state, action (and object_state);
                          --out writes them as JSON
  validate PATH [--deep]  check everything the reader relies on (metadata, index, shapes, a chunk file for
                          every committed row, values); exit 1 listing each problem (key and index), 0 when
                          valid (warnings are printed but do not fail). --deep also recomputes each
                          episode's content hash and names the episodes whose rows changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from robot_policy.cli.common import fail

SUMMARY = "inspect, summarise and validate episode stores (info, stats, validate)"


def main(argv: list[str]) -> int:
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
        calib = "calibrated" if cam.intrinsics is not None else "no intrinsics"
        table.add_row(f"camera {name}", f"{cam.height}x{cam.width}, {calib}")
    for key, value in store.attrs.get("provenance", {}).items():
        table.add_row(f"provenance.{key}", str(value))
    console.print(table)
    return 0


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
