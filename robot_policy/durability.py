"""Durability for every writer that must survive a crash (the episode store, checkpoints): fsync helpers, and
fault points at which crash tests kill the writer. Bottom layer: imports nothing from ``robot_policy``.

With ``ROBOT_POLICY_FAULT=<point>`` in its environment, a writer SIGKILLs itself on reaching that
:func:`fault_point`, so a test can reach an exact partial state on disk (:data:`FAULT_POINTS` lists them).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

FAULT_ENV: Final = "ROBOT_POLICY_FAULT"
#: every fault point: where it fires, and what is on disk when the writer is killed there
FAULT_POINTS: Final[dict[str, str]] = {
    # robot_policy.data.store / robot_policy.data.streaming
    "store_created": "end of EpisodeStore.create: an empty store is on disk; no episode was started",
    "first_array_created": "EpisodeStore.write_rows, after creating the first episode's first data array and "
                           "writing rows to it; its other arrays do not exist (no committed episode fixes the keys)",
    "image_block_written": "after an image block of the episode in progress is written and fsynced (add_episode, "
                           "or the streaming writer's image thread); nothing committed",
    "episode_data_written": "EpisodeStore.commit_episode, after the rows and meta are fsynced; episode_ends not grown",
    "episode_ends_resized": "EpisodeStore.commit_episode, after episode_ends' shape grew; its chunk (the commit "
                            "point) is not written",
    # robot_policy.models.checkpoint.save_checkpoint
    "checkpoint_files_partial": "after model.safetensors is written to the temp dir; config.json is not",
    "checkpoint_tmp_complete": "after the temp dir is complete and fsynced; not renamed yet",
    "checkpoint_renamed": "after the temp dir is renamed to its step dir; `latest` still points at the previous one",
    "checkpoint_latest_updated": "after `latest` is replaced to point at the new step dir; old ones not pruned yet",
    "checkpoint_pruning": "after an old step dir is renamed to *.trash-<pid>; it is not deleted yet",
}


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``$ROBOT_POLICY_FAULT`` is ``name`` (crash tests); else one dict lookup."""
    want = os.environ.get(FAULT_ENV)
    if want is None:
        return
    if want not in FAULT_POINTS:  # a typo would make a crash test pass without crashing
        raise ValueError(f"${FAULT_ENV}={want!r} is not a fault point; points: {sorted(FAULT_POINTS)}")
    if want == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory's fsync makes the names created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: fsyncs in flight at once: ext4 commits concurrent fsyncs in one journal transaction (measured: 64 image
#: chunks with their directories, 890 ms one after another, 36 ms from 8 threads)
FSYNC_THREADS: Final = 8


def fsync_files(files: Iterable[Path], root: Path) -> None:
    """fsync ``files`` and every directory from theirs up to ``root`` (inclusive), each once: a new file
    may live in directories just created, whose own entries must be durable too. Returns when all are
    durable (the order among them does not matter: the caller's next write waits for all)."""
    files = list(files)
    dirs: set[Path] = set()
    for f in files:
        d = f.parent
        while d not in dirs and (d == root or root in d.parents):
            dirs.add(d)
            d = d.parent
    paths = files + sorted(dirs)
    if len(paths) <= 2:
        for path in paths:
            fsync_path(path)
        return
    with ThreadPoolExecutor(min(FSYNC_THREADS, len(paths)), thread_name_prefix="fsync") as pool:
        list(pool.map(fsync_path, paths))  # list(): re-raises the first error
