"""Crash tests that reach the hard states: a child process writes a real store (or checkpoints) and SIGKILLs
itself at one fault point (``ROBOT_POLICY_FAULT``, see ``robot_policy.durability.FAULT_POINTS``). Each test
first checks that the partial state it aims at is on disk, then that reopening repairs it.

The child is this file run as a script: ``python tests/test_faults.py store|checkpoint PATH POINT ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from test_store import CAM, SPEC, assert_episode_equal, make_episode, new_store, stream

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.data.validate import validate_store
from robot_policy.durability import FAULT_ENV, FAULT_POINTS

#: episodes committed before the one the child crashes in
N_BEFORE = 2
#: length of the crashed episode: more than one image block, so the kill lands mid-episode
CRASH_LENGTH = fmt.IMAGE_WRITE_BLOCK + 18


# ---- the child --------------------------------------------------------------------------------------

def _arm(point: str) -> None:
    os.environ[FAULT_ENV] = point  # read by fault_point() from here on


def _child_store(path: Path, point: str, writer: str, n_before: int) -> None:
    """Create the store if there is none, commit ``n_before`` episodes, then crash at ``point`` inside
    the next one."""
    if point == "store_created":
        _arm(point)
    store = EpisodeStore.open(path, mode="a") if path.exists() else new_store(path)
    for seed in range(n_before):
        _write(store, writer, make_episode(seed))
    _arm(point)
    _write(store, writer, make_episode(99, length=CRASH_LENGTH))
    raise SystemExit(f"fault point {point!r} was not reached")


def _write(store: EpisodeStore, writer: str, episode: dict[str, np.ndarray]) -> None:
    if writer == "stream":
        stream(store, episode)
    else:
        store.add_episode(episode)


def _child_checkpoint(run: Path, point: str) -> None:
    from robot_policy.models.checkpoint import save_checkpoint

    for step in (1, 2):
        save_checkpoint(run, step, {"name": "test"}, _weights(step), _weights(step + 100), {"k": step}, keep_last=2)
    _arm(point)
    save_checkpoint(run, 3, {"name": "test"}, _weights(3), _weights(103), {"k": 3}, keep_last=2)
    raise SystemExit(f"fault point {point!r} was not reached")


def _weights(step: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(16, 8, generator=g), "b": torch.randn(8, generator=g)}


def _run_child(*args: str) -> None:
    """Run this file as a child writer; it must die by SIGKILL (its fault point), not exit."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == -9, f"child exited {done.returncode}, not by SIGKILL:\n{done.stdout}{done.stderr}"


# ---- helpers ----------------------------------------------------------------------------------------

def _crash_store(tmp_path: Path, point: str, writer: str = "stream", n_before: int = N_BEFORE) -> Path:
    """A store whose writer committed ``n_before`` episodes and died at ``point`` in the next one."""
    path = tmp_path / "crash.zarr"
    if point == "first_array_created":
        n_before = 0
    _run_child("store", str(path), point, writer, str(n_before))
    return path


def _raw(path: Path, key: str) -> zarr.Array:
    return zarr.open_array(str(path / key), mode="r")


def _chunk_rows(path: Path, key: str) -> list[int]:
    """First-axis chunk indices with a chunk file on disk (zarr leaves emptied directories behind)."""
    c = path / key / "c"
    return sorted({int(f.relative_to(c).parts[0]) for f in c.rglob("*") if f.is_file()})


def _assert_repaired(path: Path, n_committed: int) -> None:
    """Reopening for append repairs the store: it validates with no problem at all, holds exactly the
    committed episodes bit for bit, and no file of the crashed episode is left."""
    EpisodeStore.open(path, mode="a").close()
    assert validate_store(path, deep=True) == []
    store = EpisodeStore.open(path)
    assert store.n_episodes == n_committed
    for i in range(n_committed):
        assert_episode_equal(store, i, make_episode(i))
    for key in store.data_keys:
        rows = _chunk_rows(path, f"data/{key}")
        assert not rows or max(rows) * store.array(key).chunks[0] < max(store.n_steps, 1), key
    assert not list(path.rglob("*.partial"))
    # and the next writer appends as usual
    with EpisodeStore.open(path, mode="a") as store:
        store.add_episode(make_episode(7))
    assert validate_store(path, deep=True) == []


# ---- the store --------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["stream", "whole"])
def test_kill_after_an_image_block_mid_episode(tmp_path: Path, writer: str) -> None:
    path = _crash_store(tmp_path, "image_block_written", writer)
    n_steps = int(_raw(path, "meta/episode_ends")[-1])
    # the partial state: image chunk files beyond episode_ends[-1], the episode not committed
    assert _raw(path, "meta/episode_ends").shape == (N_BEFORE,)
    assert _raw(path, "data/images/front").shape[0] == n_steps + fmt.IMAGE_WRITE_BLOCK
    assert max(_chunk_rows(path, "data/images/front")) == n_steps + fmt.IMAGE_WRITE_BLOCK - 1
    if writer == "stream":  # low-dim rows stay in RAM until the commit
        assert _raw(path, "data/state").shape[0] == n_steps
    _assert_repaired(path, N_BEFORE)


@pytest.mark.parametrize("writer", ["stream", "whole"])
def test_kill_between_data_write_and_commit(tmp_path: Path, writer: str) -> None:
    path = _crash_store(tmp_path, "episode_data_written", writer)
    ends = _raw(path, "meta/episode_ends")
    n_steps = int(ends[-1])
    # the partial state: every row and meta entry written, episode_ends not grown
    assert ends.shape == (N_BEFORE,)
    for key in ("state", "action", "timestamp", "object_state", "images/front"):
        assert _raw(path, f"data/{key}").shape[0] == n_steps + CRASH_LENGTH, key
    for key in (fmt.SEED, fmt.LANGUAGE, fmt.CONTENT_HASH):
        assert _raw(path, f"meta/{key}").shape == (N_BEFORE + 1,), key
    assert EpisodeStore.open(path).n_episodes == N_BEFORE  # readers ignore it before any repair
    _assert_repaired(path, N_BEFORE)


def test_kill_inside_the_commit_write(tmp_path: Path) -> None:
    path = _crash_store(tmp_path, "episode_ends_resized")
    raw = np.asarray(_raw(path, "meta/episode_ends")[:])
    # the partial state: episode_ends grew, its chunk (the commit point) was not written
    assert raw.shape == (N_BEFORE + 1,) and raw[-1] == 0
    problems = validate_store(path)
    assert [p.severity for p in problems] == ["warning"] * len(problems) and problems
    assert any("interrupted commit" in p.message for p in problems)
    assert EpisodeStore.open(path).n_episodes == N_BEFORE
    _assert_repaired(path, N_BEFORE)


@pytest.mark.parametrize("writer", ["stream", "whole"])
def test_kill_inside_the_first_episode_before_the_key_set_exists(tmp_path: Path, writer: str) -> None:
    path = _crash_store(tmp_path, "first_array_created", writer)
    # the partial state: no episode, one data array with rows (streaming: the camera's, at its first block)
    assert _raw(path, "meta/episode_ends").shape == (0,)
    made = sorted(p.name for p in (path / "data").iterdir() if p.is_dir())
    assert made == (["images"] if writer == "stream" else ["state"])
    key = "images/front" if writer == "stream" else "state"
    assert _raw(path, f"data/{key}").shape[0] == (fmt.IMAGE_WRITE_BLOCK if writer == "stream" else CRASH_LENGTH)
    assert _chunk_rows(path, f"data/{key}")
    _assert_repaired(path, 0)
    # the crashed episode fixed nothing: a first episode with another key set is accepted
    path2 = _crash_store(tmp_path / "again", "first_array_created", writer)
    with EpisodeStore.open(path2, mode="a") as store:
        store.add_episode({k: v for k, v in make_episode(3).items() if k != "object_state"})
        assert store.data_keys == ["action", "images/front", "state", "timestamp"]
    assert validate_store(path2, deep=True) == []


def test_kill_after_creating_the_store_does_not_block_the_rerun(tmp_path: Path) -> None:
    path = _crash_store(tmp_path, "store_created")
    assert (path / ".writer.lock").exists() and _raw(path, "meta/episode_ends").shape == (0,)
    assert validate_store(path) == []  # an empty store is a valid store
    EpisodeStore.open(path, mode="a").close()
    # another job's create (here: no camera) does not replace it, crashed or not
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(path, SPEC)
    assert EpisodeStore.open(path).cameras == {"front": CAM}
    # the rerun of the same job creates it again without overwrite=True: nothing is lost
    with EpisodeStore.create(path, SPEC, cameras={"front": CAM}) as store:
        store.add_episode(make_episode(0))
    # but a store holding an episode is never replaced without it
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(path, SPEC)
    # a crash inside create, before the index existed, leaves only create's own files: replaced too
    half = tmp_path / "half.zarr"
    half.mkdir()
    (half / ".writer.lock").touch()
    (half / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(StoreError, match="root attribute 'format' is missing"):
        EpisodeStore.open(half)
    EpisodeStore.create(half, SPEC).close()
    assert validate_store(half) == []


def test_with_repair_disabled_the_validator_reports_the_damage(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A first episode dies after its low-dim rows and one image block; the rerun's first episode has no
    object_state and is shorter. Repaired, the dead episode's arrays are dropped; with repair off, its
    object_state rows are committed as the new episode's, which only its content hash can tell."""

    def rerun(path: Path) -> None:
        with EpisodeStore.open(path, mode="a") as store:
            assert store.n_episodes == 0
            store.add_episode({k: v for k, v in make_episode(3, length=10).items() if k != "object_state"})

    repaired = _crash_store(tmp_path / "repaired", "image_block_written", "whole", n_before=0)
    assert _raw(repaired, "data/object_state").shape[0] == CRASH_LENGTH  # the partial state
    rerun(repaired)
    assert validate_store(repaired, deep=True) == []
    assert "object_state" not in EpisodeStore.open(repaired).data_keys

    damaged = _crash_store(tmp_path / "damaged", "image_block_written", "whole", n_before=0)
    monkeypatch.setattr(EpisodeStore, "_repair", lambda self: None)
    rerun(damaged)
    errors = [p for p in validate_store(damaged, deep=True) if p.severity == "error"]
    assert [(p.key, p.index) for p in errors] == [("meta/content_hash", 0)], errors
    assert "episode 0 (rows 0-9) differs from the content hash" in errors[0].message


# ---- checkpoints ------------------------------------------------------------------------------------

CHECKPOINT_POINTS = [p for p in FAULT_POINTS if p.startswith("checkpoint_")]


def _names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def _partial_checkpoint_state(point: str) -> Callable[[Path], None]:
    def files_partial(root: Path) -> None:
        (tmp,) = root.glob("step_0000003.tmp-*")
        assert _names(tmp) == {"model.safetensors"}

    def tmp_complete(root: Path) -> None:
        (tmp,) = root.glob("step_0000003.tmp-*")
        assert _names(tmp) == {"config.json", "model.safetensors", "train_state.safetensors", "train_state.json"}

    def renamed(root: Path) -> None:
        assert (root / "step_0000003").is_dir() and os.readlink(root / "latest") == "step_0000002"

    def latest_updated(root: Path) -> None:
        assert os.readlink(root / "latest") == "step_0000003" and (root / "step_0000001").is_dir()

    def pruning(root: Path) -> None:
        assert os.readlink(root / "latest") == "step_0000003" and list(root.glob("step_0000001.trash-*"))

    return {"checkpoint_files_partial": files_partial, "checkpoint_tmp_complete": tmp_complete,
            "checkpoint_renamed": renamed, "checkpoint_latest_updated": latest_updated,
            "checkpoint_pruning": pruning}[point]


@pytest.mark.parametrize("point", CHECKPOINT_POINTS)
def test_kill_inside_a_checkpoint_replace_keeps_a_valid_checkpoint(tmp_path: Path, point: str) -> None:
    import torch

    from robot_policy.models import checkpoint as ckpt

    run = tmp_path / "run"
    _run_child("checkpoint", str(run), point)
    root = run / "checkpoints"
    _partial_checkpoint_state(point)(root)
    # the last good checkpoint: the one `latest` points at (the commit point), complete, bit for bit
    want = 3 if point in ("checkpoint_latest_updated", "checkpoint_pruning") else 2
    latest = ckpt.latest_checkpoint(run)
    assert latest == (root / f"step_{want:07d}").resolve()
    assert ckpt.load_config(latest)["step"] == want
    for name, value in _weights(want).items():
        assert torch.equal(ckpt.load_model_state(latest)[name], value)
    assert ckpt.load_train_state(latest)[1] == {"k": want}
    # the next save cleans up what the crash left
    ckpt.save_checkpoint(run, 4, {"name": "test"}, _weights(4), keep_last=2)
    kept = "step_0000002" if point in ("checkpoint_files_partial", "checkpoint_tmp_complete") else "step_0000003"
    assert _names(root) == {"latest", kept, "step_0000004"}
    assert ckpt.latest_checkpoint(run) == (root / "step_0000004").resolve()


def test_resaving_a_step_never_replaces_the_directory_latest_points_at(tmp_path: Path) -> None:
    import torch

    from robot_policy.models import checkpoint as ckpt

    run = tmp_path / "run"
    ckpt.save_checkpoint(run, 2, {"v": 1}, _weights(2))
    again = ckpt.save_checkpoint(run, 2, {"v": 2}, _weights(5))  # e.g. SIGINT right after a periodic save
    assert again.name == "step_0000002.1" and ckpt.latest_checkpoint(run) == again.resolve()
    assert _names(run / "checkpoints") == {"latest", "step_0000002.1"}
    assert ckpt.load_config(again)["v"] == 2 and torch.equal(ckpt.load_model_state(again)["w"], _weights(5)["w"])
    ckpt.save_checkpoint(run, 3, {"v": 3}, _weights(3))
    assert [p.name for p in ckpt._step_dirs(run / "checkpoints")] == ["step_0000002.1", "step_0000003"]


def test_an_incomplete_step_dir_is_skipped(tmp_path: Path) -> None:
    from robot_policy.models import checkpoint as ckpt

    run = tmp_path / "run"
    ckpt.save_checkpoint(run, 1, {}, _weights(1))
    newest = ckpt.save_checkpoint(run, 2, {}, _weights(2))
    (newest / ckpt.MODEL).unlink()  # damage after the fact
    with pytest.warns(UserWarning, match="missing or incomplete; using step_0000001"):
        assert ckpt.latest_checkpoint(run) == (run / "checkpoints" / "step_0000001").resolve()


def test_corrupt_checkpoint_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    from robot_policy.models import checkpoint as ckpt

    path = ckpt.save_checkpoint(tmp_path / "run", 1, {"a": 1}, _weights(1), _weights(101), {"k": 1})
    (path / ckpt.CONFIG).write_text('{"a": 1, "st')
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_config(path)
    assert str(err.value).startswith(f"{path / ckpt.CONFIG}: corrupt checkpoint file") and "\n" not in str(err.value)
    model = path / ckpt.MODEL
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model_state(path)
    assert str(err.value).startswith(f"{model}: corrupt or truncated safetensors file") and "\n" not in str(err.value)


if __name__ == "__main__":  # the child writer
    scenario, target, fault = sys.argv[1:4]
    if scenario == "store":
        _child_store(Path(target), fault, sys.argv[4], int(sys.argv[5]))
    else:
        _child_checkpoint(Path(target), fault)
