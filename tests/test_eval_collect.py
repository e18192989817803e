"""Collection into the store, replay from the store, the evaluation harness and vector envs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from robot_policy.cli.main import main as cli_main
from robot_policy.data.store import EpisodeStore
from robot_policy.data.validate import validate_store
from robot_policy.envs.base import ManipulationEnv
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.eval import policies
from robot_policy.eval.harness import EvalConfig, evaluate
from robot_policy.eval.stats import wilson_interval
from robot_policy.eval.video import read_mp4
from robot_policy.policies.base import ActionChunk

TASK = "pybullet_bimanual_lift"


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634),
                                          (95, 100, 0.8883, 0.9785)])
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "lift.zarr"
    assert cli_main(["collect", f"task={TASK}", "episodes=2", f"out={out}", "seed=10"]) == 0
    return out


def test_collect_writes_a_valid_store_with_task_metadata(collected: Path) -> None:
    assert validate_store(collected) == []
    store = EpisodeStore.open(collected)
    assert store.n_episodes == 2
    meta = store.episode_meta()
    assert meta["success"].tolist() == [1, 1]
    assert meta["language"].tolist() == [load_task_config(TASK).language] * 2
    assert {"object_state", "sim_state"} <= set(store.data_keys)
    assert store.attrs["task"]["name"] == TASK
    assert store.attrs["provenance"]["source"] == "scripted"


def test_replaying_recorded_actions_from_the_seed_reproduces_success(collected: Path) -> None:
    store = EpisodeStore.open(collected)
    env = make_env(TASK)
    for index in range(store.n_episodes):
        episode = store.get_episode(index)
        obs, _ = env.reset(seed=int(episode["seed"]))
        np.testing.assert_array_equal(obs["state"], episode["state"][0])
        info = {"success": False}
        for action in episode["action"]:
            obs, _, terminated, _, info = env.step(action)
        assert info["success"] and terminated
        # any recorded frame can be restored from its sim_state
        mid = episode["state"].shape[0] // 2
        obs = env.reset_to(episode["sim_state"][mid])
        np.testing.assert_allclose(obs["state"], episode["state"][mid], atol=1e-6)


def test_collect_records_camera_calibration(tmp_path: Path) -> None:
    out = tmp_path / "cams.zarr"
    assert cli_main(["collect", f"task={TASK}", "episodes=1", f"out={out}", "task.cameras=[front]",
                     "task.image_height=32", "task.image_width=48", "record_sim_state=false"]) == 0
    cam = EpisodeStore.open(out).cameras["front"]
    assert (cam.height, cam.width) == (32, 48)
    K = np.array(cam.intrinsics)
    assert K[0, 2] == 24 and K[1, 2] == 16 and K[0, 0] > 0  # principal point at the image centre
    pose = np.array(cam.extrinsics)
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)  # a rotation


def test_collect_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["collect", f"task={TASK}", "episodes=1"]) == 2
    assert "out: give the store path" in capsys.readouterr().err
    assert cli_main(["collect", "task=no_such_task", f"out={tmp_path / 'x.zarr'}"]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert cli_main(["collect", f"task={TASK}", "source=teleop_glove", f"out={tmp_path / 'x.zarr'}"]) == 2
    assert "source: unknown 'teleop_glove'" in capsys.readouterr().err


def test_collect_append_continues_the_seeds_up_to_the_episodes_asked_for(
        collected: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = tmp_path / "more.zarr"
    shutil.copytree(collected, store_path)  # seeds 10, 11
    args = ["collect", f"task={TASK}", f"out={store_path}", "append=true", "seed=10"]
    # episodes=N is the size the store ends with; the new episode continues after the last recorded seed
    assert cli_main([*args, "episodes=3"]) == 0
    assert "held 2 episodes (seeds 10-11); added 1 to reach 3" in capsys.readouterr().out
    store = EpisodeStore.open(store_path)
    assert store.episode_meta()["seed"].tolist() == [10, 11, 12]
    assert validate_store(store_path) == []
    for n in (3, 2):  # already there: nothing is recorded
        assert cli_main([*args, f"episodes={n}"]) == 0
        assert f"holds 3 episodes (seeds 10-12), episodes={n}: nothing to do" in capsys.readouterr().out
    assert EpisodeStore.open(store_path).n_episodes == 3


def test_eval_scripted_writes_report_and_video(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert cli_main(["eval", f"task={TASK}", "policy=scripted", "episodes=2", "seed=500", f"out={out}",
                     "workers=1", "videos=1", "video_size=64"]) == 0
    report = json.loads((out / "eval.json").read_text())
    for key in ("task", "episodes", "seed", "success_rate", "ci95_low", "ci95_high", "mean_episode_length",
                "per_episode"):
        assert key in report
    assert report["episodes"] == 2 and report["seed"] == 500 and report["success_rate"] == 1.0
    assert [e["seed"] for e in report["per_episode"]] == [500, 501]
    frames = read_mp4(report["per_episode"][0]["video"])
    assert frames.shape == (report["per_episode"][0]["length"] + 1, 64, 64, 3)
    assert frames.std() > 5  # a rendered scene, not a blank
    assert report["per_episode"][1]["video"] is None


class HoldStill:
    """Any object with predict_chunk works: this one holds the arms where they are (and fails)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        self.calls += 1
        mask = np.zeros(128, np.float32)
        mask[:7], mask[10], mask[50:57], mask[60] = 1, 1, 1, 1
        action = obs["state"] * mask
        return ActionChunk.from_unified(np.repeat(action[None], 20, axis=0), mask, 20.0, execute_horizon=10)


def test_eval_accepts_any_predict_chunk_object_and_execute_horizon(tmp_path: Path) -> None:
    task = load_task_config(TASK, max_steps=30)
    policy = HoldStill()
    report = evaluate(task, policy, EvalConfig(episodes=1, seed=3, out=str(tmp_path), workers=1, videos=0,
                                               execute_horizon=5), progress=False)
    assert report["success_rate"] == 0.0 and report["per_episode"][0]["length"] == 30
    assert policy.calls == 6  # 30 steps / 5 executed per chunk


def test_eval_refuses_an_execute_horizon_beyond_the_chunk(tmp_path: Path) -> None:
    task = load_task_config(TASK, max_steps=30)
    report = evaluate(task, HoldStill(), EvalConfig(episodes=2, seed=3, out=str(tmp_path), workers=1, videos=0,
                                                    execute_horizon=64), progress=False)
    # the object's chunk length is known only from a chunk: every episode fails on it, none runs capped
    assert report["errored"] == 2 and report["success_rate"] == 0.0
    want = ("ValueError: execute_horizon=64 is beyond the policy's chunk of 20 actions: choose 1..20 "
            "(or leave it unset for the policy's own)")
    assert {e["error"] for e in report["errors"]} == {want}
    assert all(e["length"] == 0 for e in report["per_episode"])


class RaisesOnSeed(HoldStill):
    """HoldStill, except that the episode of ``bad_seed`` raises on its second chunk."""

    def __init__(self, bad_seed: int, env: ManipulationEnv | None = None) -> None:
        super().__init__()
        self.bad_seed = bad_seed
        self.seed = -1

    def reset(self, seed: int) -> None:
        self.seed, self.calls = seed, 0

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        if self.seed == self.bad_seed and self.calls == 1:
            raise RuntimeError(f"policy blew up on seed {self.seed}")
        return super().predict_chunk(obs)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_episode_that_raises_is_recorded_and_the_other_seeds_run(tmp_path: Path, workers: int) -> None:
    task = load_task_config(TASK, max_steps=25)
    report = evaluate(task, RaisesOnSeed(bad_seed=4), EvalConfig(episodes=3, seed=3, out=str(tmp_path),
                                                                 workers=workers, videos=0), progress=False)
    assert json.loads((tmp_path / "eval.json").read_text())["errored"] == 1
    assert report["errors"] == [{"seed": 4, "error": "RuntimeError: policy blew up on seed 4"}]
    by_seed = {e["seed"]: e for e in report["per_episode"]}
    assert sorted(by_seed) == [3, 4, 5] and report["episodes"] == 3 and report["successes"] == 0
    assert by_seed[4]["success"] is False and by_seed[4]["length"] == 10  # one chunk ran before the error
    assert "policy blew up on seed 4" in by_seed[4]["traceback"]
    assert by_seed[3]["error"] is None and by_seed[3]["length"] == by_seed[5]["length"] == 25


def test_eval_cli_exits_nonzero_naming_each_error_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(policies._BUILTIN, "raises_on_seed_1", lambda env: RaisesOnSeed(1, env))
    out = tmp_path / "eval"
    code = cli_main(["eval", f"task={TASK}", "task.max_steps=25", "policy=raises_on_seed_1", "episodes=3",
                     "seed=0", "workers=1", "videos=0", f"out={out}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 of 3 episodes raised an error" in captured.err
    assert captured.err.count("policy blew up on seed 1") == 1 and "seed 1: RuntimeError" in captured.err
    assert "success 0/3" in captured.out  # the report is still written and summarised
    assert json.loads((out / "eval.json").read_text())["errored"] == 1


@pytest.mark.slow
def test_eval_results_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    task = load_task_config(TASK)
    # The noisy expert's episodes differ by seed (its jitter is seeded by the episode), so equal results
    # mean each seed ran the same episode in both runs.
    runs = [evaluate(task, "scripted", EvalConfig(episodes=4, seed=7, out=str(tmp_path / str(w)), workers=w,
                                                  videos=0, policy_kwargs={"noise": 0.02}), progress=False)
            for w in (1, 2)]
    one, two = ([(e["seed"], e["success"], e["length"], e["episode_return"]) for e in r["per_episode"]] for r in runs)
    assert len({length for _, _, length, _ in one}) > 1, "episodes did not differ by seed: the test would be vacuous"
    assert one == two


@pytest.mark.slow
def test_vector_env_seeds_match_single_envs() -> None:
    from robot_policy.envs.vector import make_vector_env

    task = load_task_config(TASK)
    venv = make_vector_env(task, 2)
    try:
        obs, _ = venv.reset(seed=[3, 4])
        env = make_env(task)
        for i, seed in enumerate((3, 4)):
            single, _ = env.reset(seed=seed)
            np.testing.assert_array_equal(single["object_state"], obs["object_state"][i])
        obs, _ = venv.reset(seed=[9, 0], options={"reset_mask": np.array([True, False])})
        single, _ = env.reset(seed=9)
        np.testing.assert_array_equal(single["object_state"], obs["object_state"][0])
    finally:
        venv.close()
