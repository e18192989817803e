"""The zarr episode store: round trips, input checks, commit protocol, crash safety, validation, integrity
(chunk files, content hashes, corrupt metadata). Crashes at exact fault points are in test_faults.py."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from robot_policy.cli.main import main as cli_main
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.data.validate import validate_store
from robot_policy.spaces import load_embodiment

SPEC = load_embodiment("panda_bimanual_joint")
CAM = CameraInfo(24, 32)


def make_episode(seed: int, length: int | None = None) -> dict[str, np.ndarray]:
    """A deterministic episode: same seed, same bytes."""
    rng = np.random.default_rng(seed)
    T = length if length is not None else 20 + seed % 23
    return {
        "state": (rng.standard_normal((T, 128)) * SPEC.state.mask).astype(np.float32),
        "action": (rng.standard_normal((T, 128)) * SPEC.action.mask).astype(np.float32),
        "timestamp": 100.0 * seed + np.arange(T) / 20.0,
        "object_state": rng.standard_normal((T, 9)).astype(np.float32),
        "images/front": rng.integers(0, 256, (T, CAM.height, CAM.width, 3), dtype=np.uint8),
    }


def assert_episode_equal(store: EpisodeStore, index: int, expected: dict[str, np.ndarray]) -> None:
    got = store.get_episode(index)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert np.array_equal(got[key], value), f"episode {index} key {key} differs"


def new_store(path: Path) -> EpisodeStore:
    return EpisodeStore.create(path, SPEC, cameras={"front": CAM}, provenance={"source": "test"})


def stream(store: EpisodeStore, episode: dict[str, np.ndarray], **meta) -> int:
    with store.stream_episode(language=meta.get("language", "")) as writer:
        for t in range(episode["state"].shape[0]):
            writer.add_step(state=episode["state"][t], action=episode["action"][t],
                            timestamp=float(episode["timestamp"][t]), images={"front": episode["images/front"][t]},
                            object_state=episode["object_state"][t])
        return writer.commit(success=meta.get("success"))


def test_whole_and_streamed_episodes_read_back_bit_for_bit(tmp_path: Path) -> None:
    with new_store(tmp_path / "s.zarr") as store:
        store.add_episode(make_episode(0), language="lift", seed=7, success=True)
        stream(store, make_episode(1), language="hand over", success=False)
        store.add_episode(make_episode(2, length=1))
    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 3
    for i in range(3):
        assert_episode_equal(store, i, make_episode(i, length=1 if i == 2 else None))
    meta = store.episode_meta()
    assert meta["language"].tolist() == ["lift", "hand over", ""]
    assert meta["seed"].tolist() == [7, -1, -1]
    assert meta["success"].tolist() == [1, 0, -1]
    assert np.array_equal(meta["action_mask"][0], SPEC.action.mask)
    ram = store.load()
    assert set(ram.data) == {"state", "action", "timestamp", "object_state"}
    assert ram.episode_bounds(1) == (int(store.episode_ends[0]), int(store.episode_ends[1]))
    assert validate_store(tmp_path / "s.zarr") == []


def test_bad_episodes_are_rejected_naming_key_and_step(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    ep = make_episode(0)
    bad = {**ep, "action": ep["action"].copy()}
    bad["action"][5, 52] = np.nan
    with pytest.raises(StoreError, match=r"action: NaN or Inf at step 5, slot left_arm_joint_pos\[2\]"):
        store.add_episode(bad)
    with pytest.raises(StoreError, match=r"missing required key\(s\) \['timestamp'\]"):
        store.add_episode({k: v for k, v in ep.items() if k != "timestamp"})
    with pytest.raises(StoreError, match="images/front: expected uint8"):
        store.add_episode({**ep, "images/front": ep["images/front"][:, :10]})
    with pytest.raises(StoreError, match="disagree on length"):
        store.add_episode({**ep, "action": ep["action"][:-1]})
    ts = ep["timestamp"].copy()
    ts[3] = ts[2]
    with pytest.raises(StoreError, match="timestamp: not strictly increasing at step 3"):
        store.add_episode({**ep, "timestamp": ts})
    outside = {**ep, "state": ep["state"].copy()}
    outside["state"][2, 47] = 1.0  # a reserved slot
    with pytest.raises(StoreError, match=r"state: step 2 writes slot reserved\[47\]"):
        store.add_episode(outside)
    assert store.n_episodes == 0
    store.add_episode(ep)
    with pytest.raises(StoreError, match=r"unexpected \['reward'\]"):
        store.add_episode({**make_episode(1), "reward": np.zeros(make_episode(1)["state"].shape[0])})
    store.close()
    # Nothing of the rejected episodes is visible, and the store is clean.
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1
    assert validate_store(tmp_path / "s.zarr") == []


def test_rejected_episode_leaves_no_rows_or_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    ep = make_episode(0)
    bad = {**ep, "reward": np.arange(ep["state"].shape[0], dtype=np.float32), "state": ep["state"].copy()}
    bad["state"][1, 99] = 1.0  # a reserved slot: rejected by the mask check
    with pytest.raises(StoreError, match="writes slot reserved"):
        store.add_episode(bad)
    assert store.data_keys == [] and store.n_steps == 0
    store.add_episode(make_episode(1))  # without 'reward': the rejected episode fixed nothing
    assert "reward" not in store.data_keys
    assert_episode_equal(store, 0, make_episode(1))
    store.close()
    assert validate_store(tmp_path / "s.zarr") == []


def test_stream_without_commit_leaves_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    store.add_episode(make_episode(0))
    ep = make_episode(1, length=40)
    with pytest.raises(RuntimeError, match="operator stopped"), store.stream_episode() as writer:
        for t in range(30):
            writer.add_step(state=ep["state"][t], action=ep["action"][t], timestamp=float(ep["timestamp"][t]),
                            images={"front": ep["images/front"][t]}, object_state=ep["object_state"][t])
        raise RuntimeError("operator stopped")
    assert store.n_episodes == 1
    assert store.array("images/front").shape[0] == store.n_steps
    store.close()
    assert validate_store(tmp_path / "s.zarr") == []


def test_discarded_first_episode_does_not_fix_the_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    ep = make_episode(0)
    with store.stream_episode() as writer:
        writer.add_step(state=ep["state"][0], action=ep["action"][0], timestamp=0.0,
                        images={"front": ep["images/front"][0]}, object_state=ep["object_state"][0])
    store.add_episode({k: v for k, v in ep.items() if k != "object_state"})
    assert store.data_keys == ["action", "images/front", "state", "timestamp"]
    store.close()
    assert validate_store(tmp_path / "s.zarr") == []


def test_create_replaces_an_empty_store_only_for_the_job_that_made_it(tmp_path: Path) -> None:
    """Without overwrite, an empty store is replaced only by a store of the same embodiment, cameras and
    task (that job's writer crashed before its first commit); any other keeps its root attrs."""
    path = tmp_path / "s.zarr"
    task = {"name": "lift", "horizon": 100, "cameras": ["front"]}
    cam = CameraInfo(24, 32, intrinsics=np.diag([30.0, 30.0, 1.0]))
    EpisodeStore.create(path, SPEC, cameras={"front": cam}, task=task, provenance={"source": "first"}).close()
    before = (path / "zarr.json").read_bytes()
    other_jobs = {
        "task": {"embodiment": SPEC, "cameras": {"front": cam}, "task": {**task, "name": "handover"}},
        "no task": {"embodiment": SPEC, "cameras": {"front": cam}},
        "cameras": {"embodiment": SPEC, "task": task},
        "intrinsics": {"embodiment": SPEC, "cameras": {"front": CameraInfo(24, 32)}, "task": task},
        "embodiment": {"embodiment": load_embodiment("aloha_bimanual"), "cameras": {"front": cam}, "task": task},
    }
    for what, kwargs in other_jobs.items():
        with pytest.raises(StoreError) as err:
            EpisodeStore.create(path, **kwargs)
        assert str(err.value) == f"{path} already exists (pass overwrite=true to replace it, or append=true to " \
                                 "add to it)", what
        assert (path / "zarr.json").read_bytes() == before, what
    assert validate_store(path) == []
    # the same job again (equal values, new objects) replaces it: nothing is lost
    same = {"front": CameraInfo(24, 32, intrinsics=[[30, 0, 0], [0, 30, 0], [0, 0, 1]])}
    with EpisodeStore.create(path, load_embodiment(SPEC.name), cameras=same, task=dict(task),
                             provenance={"source": "rerun"}) as store:
        store.add_episode(make_episode(0))
    assert EpisodeStore.open(path).attrs["provenance"]["source"] == "rerun"
    # and overwrite=True replaces any store
    EpisodeStore.create(path, load_embodiment("aloha_bimanual"), overwrite=True).close()
    assert EpisodeStore.open(path).embodiment.name == "aloha_bimanual"


def test_single_writer_lock(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="being written by another process"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    store.close()
    EpisodeStore.open(tmp_path / "s.zarr", mode="a").close()


def test_interrupted_commit_is_ignored_then_repaired(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with new_store(path) as store:
        for i in range(2):
            store.add_episode(make_episode(i))
    # Simulate a crash between the two writes of a commit: the shape grew, the chunk was not rewritten.
    ends = zarr.open_array(str(path / "meta/episode_ends"), mode="r+")
    ends.resize((3,))
    problems = validate_store(path)
    assert [p.severity for p in problems] == ["warning"]
    assert "interrupted commit" in problems[0].message
    assert EpisodeStore.open(path).n_episodes == 2
    with EpisodeStore.open(path, mode="a") as store:
        assert store.n_episodes == 2
        store.add_episode(make_episode(5))
    store = EpisodeStore.open(path)
    assert store.n_episodes == 3
    assert_episode_equal(store, 2, make_episode(5))
    assert validate_store(path) == []


# ---- crash test -----------------------------------------------------------------------------------

def _child_writer(path: str, first_seed: int, n_episodes: int, events: mp.Queue) -> None:
    """Streams episodes first_seed.. into the store, reporting progress, until killed."""
    store = EpisodeStore.open(path, mode="a")
    for seed in range(first_seed, first_seed + n_episodes):
        ep = make_episode(seed)
        with store.stream_episode(language=f"episode {seed}") as writer:
            for t in range(ep["state"].shape[0]):
                writer.add_step(state=ep["state"][t], action=ep["action"][t], timestamp=float(ep["timestamp"][t]),
                                images={"front": ep["images/front"][t]}, object_state=ep["object_state"][t])
                if t == 18:
                    events.put(("mid", seed))
                time.sleep(0.002)
            writer.commit()
        events.put(("committed", seed))


def _kill_child(path: Path, first_seed: int, kill_at_mid_of: int | None, delay: float) -> int:
    """Run a child writer and SIGKILL it; return the number of commits it reported."""
    ctx = mp.get_context("spawn")
    events: mp.Queue = ctx.Queue()
    child = ctx.Process(target=_child_writer, args=(str(path), first_seed, 50, events))
    child.start()
    committed = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            kind, seed = events.get(timeout=60)
            committed += kind == "committed"
            if kill_at_mid_of is not None and kind == "mid" and seed == first_seed + kill_at_mid_of:
                break
            if kill_at_mid_of is None and committed >= 1:
                time.sleep(delay)
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(10)
    assert child.exitcode == -signal.SIGKILL
    while not events.empty():
        kind, _ = events.get()
        committed += kind == "committed"
    return committed


def test_sigkill_mid_episode_keeps_every_committed_episode(tmp_path: Path) -> None:
    path = tmp_path / "crash.zarr"
    new_store(path).close()
    seeds: list[int] = []
    # First a kill in the middle of an episode (before its first image block), then kills at arbitrary
    # moments. Timing cannot aim at the hard states; test_faults.py kills at each of them.
    rng = np.random.default_rng(0)
    for trial, kill_mid in enumerate([3, None, None, None]):
        first_seed = 1000 * (trial + 1)
        reported = _kill_child(path, first_seed, kill_mid, delay=float(rng.uniform(0.0, 0.3)))
        problems = validate_store(path)
        assert not [p for p in problems if p.severity == "error"], problems
        store = EpisodeStore.open(path)
        new = store.n_episodes - len(seeds)
        assert new >= reported, "an episode whose commit was reported is missing"
        seeds += [first_seed + i for i in range(new)]
        for index, seed in enumerate(seeds):
            assert_episode_equal(store, index, make_episode(seed))
        assert store.episode_meta()["language"].tolist() == [f"episode {s}" for s in seeds]
    assert len(seeds) >= 3
    # The next writer repairs the leftovers and appends.
    with EpisodeStore.open(path, mode="a") as store:
        store.add_episode(make_episode(7))
    assert validate_store(path) == []
    assert not list(path.rglob("*.partial"))


# ---- validate -------------------------------------------------------------------------------------

def _valid_store(path: Path) -> Path:
    with new_store(path) as store:
        for i in range(3):
            store.add_episode(make_episode(i))
    return path


def _validate_cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(["dataset", "validate", str(path)])
    return code, capsys.readouterr().out


def test_validate_passes_a_valid_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _validate_cli(_valid_store(tmp_path / "ok.zarr"), capsys)
    assert code == 0 and "valid" in out


def test_validate_reports_truncated_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    arr = zarr.open_array(str(path / "data/action"), mode="r+")
    arr.resize((arr.shape[0] - 5, 128))
    code, out = _validate_cli(path, capsys)
    assert code == 1
    assert "data/action: truncated" in out


def test_validate_reports_non_monotone_episode_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    ends = zarr.open_array(str(path / "meta/episode_ends"), mode="r+")
    values = ends[:]
    ends[1] = values[0] - 1
    code, out = _validate_cli(path, capsys)
    assert code == 1
    assert "meta/episode_ends[1]: not increasing" in out


def test_validate_reports_nan_in_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    arr = zarr.open_array(str(path / "data/action"), mode="r+")
    row = int(zarr.open_array(str(path / "meta/episode_ends"))[0]) + 4
    arr[row, 3] = np.nan
    code, out = _validate_cli(path, capsys)
    assert code == 1
    assert f"data/action[{row}]: 1+ NaN/Inf values, first at row {row} slot right_arm_joint_pos[3] (episode 1)" in out


def test_validate_reports_missing_root_attribute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    root = zarr.open_group(str(path), mode="r+")
    attrs = dict(root.attrs)
    del attrs["control_hz"]
    root.attrs.clear()
    root.attrs.update(attrs)
    code, out = _validate_cli(path, capsys)
    assert code == 1
    assert "attrs.control_hz: missing root attribute" in out
    with pytest.raises(StoreError, match="'control_hz' is missing"):
        EpisodeStore.open(path)


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    zarr.open_array(str(path / "data/state"), mode="r+")[2, 0] = np.inf
    zarr.open_array(str(path / "data/action"), mode="r+")[1, 100] = 0.5  # base_vel: not in the action mask
    keys = {p.key for p in validate_store(path) if p.severity == "error"}
    assert keys == {"data/state", "data/action"}


# ---- integrity: chunk files, content hashes, corrupt metadata ---------------------------------------

def _long_store(path: Path) -> Path:
    """Three 100-step episodes: data/action has chunks c/0/0 (rows 0-255) and c/1/0 (rows 256-299)."""
    with new_store(path) as store:
        for i in range(3):
            store.add_episode(make_episode(i, length=100), seed=i)
    return path


def test_every_chunk_is_written_even_all_zero_ones(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    zero = {k: np.zeros_like(v) for k, v in make_episode(0, length=30).items()}
    zero["timestamp"] = np.arange(30) / 20.0
    with new_store(path) as store:
        store.add_episode(zero)
    with EpisodeStore.open(path, mode="a") as store:  # handles opened later write empty chunks too
        stream(store, {**zero, "timestamp": zero["timestamp"] + 10})
    for key in ("state", "object_state"):
        assert (path / f"data/{key}/c/0/0").is_file()
    assert all((path / f"data/images/front/c/{i}/0/0/0").is_file() for i in range(60))
    assert validate_store(path, deep=True) == []


def test_missing_chunk_is_reported_with_key_and_rows_and_refused_by_readers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _long_store(tmp_path / "s.zarr")
    (path / "data/action/c/1/0").unlink()
    (path / "data/images/front/c/5/0/0/0").unlink()
    code, out = _validate_cli(path, capsys)
    assert code == 1
    assert "error: data/action[256]: chunk file c/1/0 is missing (rows 256-299, episode 2): readers would see " \
           "zeros" in out
    assert "error: data/images/front[5]: chunk file c/5/0/0/0 is missing (rows 5-5, episode 0)" in out
    with pytest.raises(StoreError, match=r"2 chunk file\(s\) of committed episodes are missing: "
                       r"data/action/c/1/0 \(rows 256-299\), data/images/front/c/5/0/0/0 \(rows 5-5\)"):
        EpisodeStore.open(path)
    assert cli_main(["dataset", "info", str(path)]) == 1  # damaged: exit 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data/action/c/1/0" in err
    # train reads the store's task while parsing its options: the same one line, exit 1 (not a bad option)
    assert cli_main(["train", f"dataset.path={path}", f"out={tmp_path / 'run'}", "task=pybullet_bimanual_lift"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data/action/c/1/0" in err


def test_deep_validate_names_the_episode_whose_rows_changed(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _long_store(tmp_path / "s.zarr")
    arr = zarr.open_array(str(path / "data/object_state"), mode="r+")
    arr[150, 2] += 1e-3  # finite, in a free-form key: no other check can see it
    assert validate_store(path) == []
    assert cli_main(["dataset", "validate", "--deep", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error: meta/content_hash[1]: episode 1 (rows 100-199) differs from the content hash written at " \
           "its commit" in out


def test_streamed_and_whole_episodes_hash_alike(tmp_path: Path) -> None:
    with new_store(tmp_path / "s.zarr") as store:
        store.add_episode(make_episode(4))
        stream(store, {**make_episode(4), "timestamp": make_episode(4)["timestamp"]})
        hashes = store.content_hashes()
    assert len(hashes) == 2 and hashes[0] == hashes[1] and len(hashes[0]) == 64


@pytest.mark.parametrize("node", ["zarr.json", "data/state/zarr.json", "meta/episode_ends/zarr.json"])
def test_truncated_zarr_json_is_one_line_naming_the_file(tmp_path: Path, node: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    f = path / node
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(StoreError, match=f"^{f}: corrupt zarr metadata \\(JSONDecodeError: "):
        EpisodeStore.open(path)
    code, out = _validate_cli(path, capsys)
    assert code == 1 and f"error: {node}: corrupt zarr metadata: JSONDecodeError" in out
    assert cli_main(["dataset", "info", str(path)]) == 1  # damaged: exit 1
    err = capsys.readouterr().err
    assert err.startswith(f"robot-policy: {f}: corrupt zarr metadata") and err.count("\n") == 1


def test_v1_store_warns_and_gets_hashes_from_now_on(tmp_path: Path) -> None:
    path = _valid_store(tmp_path / "s.zarr")
    zarr.open_group(str(path), mode="r+").attrs["format_version"] = 1  # as written before v2
    shutil.rmtree(path / "meta/content_hash")
    (path / "data/object_state/c/0/0").unlink()  # v1 skipped all-zero chunks: absent may mean zeros
    problems = validate_store(path, deep=True)
    assert [p.severity for p in problems] == ["warning", "warning"], problems
    assert "a format v1 store skips chunks that are all zeros" in problems[0].message
    assert "written before content hashes" in problems[1].message
    EpisodeStore.open(path).close()  # readers cannot tell either: no refusal
    with EpisodeStore.open(path, mode="a") as store:
        store.add_episode(make_episode(8))
        assert store.content_hashes().tolist()[:3] == ["", "", ""] and store.content_hashes()[3]
    problems = validate_store(path, deep=True)
    assert [(p.severity, p.index) for p in problems] == [("warning", 0)], problems
    assert "3 episode(s) have no content hash" in problems[0].message


def test_duplicate_seeds_are_a_warning_naming_the_episodes(tmp_path: Path) -> None:
    with new_store(tmp_path / "s.zarr") as store:
        for i, seed in enumerate([0, 1, 0, -1, -1, 1, 2]):
            store.add_episode(make_episode(i), seed=seed)
    problems = validate_store(tmp_path / "s.zarr")
    assert [str(p) for p in problems] == [
        "warning: meta/seed[0]: seed 0 is recorded by episodes [0, 2] (duplicated demonstrations?)",
        "warning: meta/seed[1]: seed 1 is recorded by episodes [1, 5] (duplicated demonstrations?)"]


def test_an_empty_store_is_valid_and_opens_for_append(tmp_path: Path) -> None:
    new_store(tmp_path / "s.zarr").close()
    assert validate_store(tmp_path / "s.zarr") == []
    EpisodeStore.open(tmp_path / "s.zarr", mode="a").close()
