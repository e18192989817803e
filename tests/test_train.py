"""Training end to end on a tiny store: checkpoints, loading the policy, config errors, kill-and-resume, DDP.

Every run trains ``rdt_tiny`` for STEPS steps on a 3-episode pybullet store with the same config, so the
uninterrupted in-process run is the reference the resumed and the data-parallel runs are compared with.
All runs use one torch thread (tiny tensors on a shared machine; and the same kernels in every run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robot_policy.cli.main import main as cli_main
from robot_policy.envs.registry import make_env
from robot_policy.models import checkpoint as ckpt
from robot_policy.policies.diffusion import DiffusionPolicy

TASK = "pybullet_bimanual_lift"
STEPS, CKPT_EVERY, BATCH = 30, 5, 8


def train_args(store: Path, out: Path, *extra: str) -> list[str]:
    """The one run configuration of this file (``extra`` may add resume=true)."""
    return ["train", f"dataset.path={store}", f"out={out}", "policy=rdt_tiny", f"steps={STEPS}", f"batch_size={BATCH}",
            "log_every=1", f"ckpt_every={CKPT_EVERY}", f"val_every={CKPT_EVERY}", "val_batches=2",
            "optim.warmup_steps=5", "torch_threads=1", "progress=false", *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_metrics(run: Path) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    """Per-step training entries (loss_last, lr, grad_norm, ...) and ``val_loss`` of a run; every step must be
    logged exactly once."""
    train: dict[int, dict[str, float]] = {}
    val: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        step = entry.pop("step")
        if "val_loss" in entry:
            assert step not in val, f"step {step} validated twice in {run}"
            val[step] = entry["val_loss"]
        else:
            assert step not in train, f"step {step} logged twice in {run}"
            train[step] = entry
    assert sorted(train) == list(range(1, STEPS + 1)), f"{run}: logged steps {sorted(train)}"
    return train, val


def series(entries: dict[int, dict[str, float]], key: str) -> list[float]:
    return [entries[step][key] for step in sorted(entries)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_store") / "lift.zarr"
    assert cli_main(["collect", f"task={TASK}", "episodes=3", f"out={out}", "seed=0"]) == 0
    return out


@pytest.fixture(scope="module")
def reference_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The uninterrupted single-process run, in this process."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("train_runs") / "reference"
    try:
        assert cli_main(train_args(store, out)) == 0
    finally:
        torch.set_num_threads(threads)  # the run set torch_threads=1
    yield out


@pytest.fixture(scope="module")
def env_obs() -> dict[str, np.ndarray]:
    env = make_env(TASK)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    return obs


def test_run_writes_checkpoints_metrics_and_config(reference_run: Path) -> None:
    root = reference_run / "checkpoints"
    latest = ckpt.latest_checkpoint(reference_run)
    assert latest == root / f"step_{STEPS:07d}"
    assert (root / "latest").resolve() == latest
    # keep_checkpoints=3 (configs/train.yaml): older ones are pruned, no temporary directories are left
    assert sorted(p.name for p in root.iterdir() if p.name != "latest") == [
        f"step_{s:07d}" for s in (STEPS - 2 * CKPT_EVERY, STEPS - CKPT_EVERY, STEPS)]
    assert {p.name for p in latest.iterdir()} == {ckpt.CONFIG, ckpt.MODEL, ckpt.TRAIN_STATE, ckpt.TRAIN_STATE_JSON}
    meta = ckpt.load_config(latest)
    assert meta["step"] == STEPS and meta["format"] == "robot_policy.checkpoint/1"
    assert meta["policy"]["obs_encoder"]["object_state_dim"] == 12  # filled from the store
    assert meta["tasks"] == [TASK] and "torch" in meta["versions"]
    tensors, plain = ckpt.load_train_state(latest)
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("optim.") for k in tensors)
    assert plain["ema_step"] == STEPS and plain["scheduler"]["last_epoch"] == STEPS
    entries, val = read_metrics(reference_run)
    assert np.isfinite(series(entries, "loss_last")).all()
    assert sorted(val) == list(range(CKPT_EVERY, STEPS + 1, CKPT_EVERY))


def test_policy_from_checkpoint_predicts_masked_reproducible_chunks(reference_run: Path,
                                                                   env_obs: dict[str, np.ndarray]) -> None:
    policy = DiffusionPolicy.from_checkpoint(reference_run)  # a run directory: its latest checkpoint
    mask = policy.embodiment.action.mask
    policy.reset(seed=7)
    chunk = policy.predict_chunk(env_obs)
    assert chunk.unified.shape == (8, 128)  # rdt_tiny: Ta = 8
    assert np.isfinite(chunk.unified).all()
    assert np.all(chunk.unified[:, mask == 0] == 0) and np.any(chunk.unified[:, mask == 1] != 0)
    assert chunk.execute_horizon == 8  # configs/train.yaml: the whole chunk
    assert {k: v.shape for k, v in chunk.native.items()} == {
        f.name: (8, f.dim) for f in policy.embodiment.action.fields}  # native fields, converted on demand
    np.testing.assert_allclose(chunk.timestamps, np.arange(8) / 20.0)
    # the same seed and observation give the same chunk, in this policy and in a freshly loaded one
    policy.reset(seed=7)
    np.testing.assert_array_equal(policy.predict_chunk(env_obs).unified, chunk.unified)
    again = DiffusionPolicy.from_checkpoint(reference_run / "checkpoints" / f"step_{STEPS:07d}")
    again.reset(seed=7)
    np.testing.assert_array_equal(again.predict_chunk(env_obs).unified, chunk.unified)
    again.reset(seed=8)
    assert not np.array_equal(again.predict_chunk(env_obs).unified, chunk.unified)


def test_bad_train_configs_fail_with_a_clear_message(store: Path, reference_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", f"out={tmp_path / 'x'}", "steps=1"]) == 2
    assert "dataset.path: give the episode store" in capsys.readouterr().err
    assert cli_main(["train", f"dataset.path={store}", "steps=1"]) == 2
    assert "out: give the run directory" in capsys.readouterr().err
    assert cli_main(["train", f"dataset.path={store}", f"out={tmp_path / 'x'}", "batch_size=0"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err
    # a new (non-resume) run into a directory with checkpoints must not touch it
    before = (reference_run / "metrics.jsonl").read_text()
    assert cli_main(train_args(store, reference_run)) == 1
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "resume=true" in err
    assert (reference_run / "metrics.jsonl").read_text() == before
    assert ckpt.latest_checkpoint(reference_run) == reference_run / "checkpoints" / f"step_{STEPS:07d}"


def test_resume_into_an_empty_directory_starts_a_new_run(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    threads = torch.get_num_threads()
    try:
        assert cli_main(["train", f"dataset.path={store}", f"out={out}", "policy=rdt_tiny", "steps=2",
                         f"batch_size={BATCH}", "resume=true", "torch_threads=1", "progress=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert ckpt.latest_checkpoint(out) == out / "checkpoints" / "step_0000002"


def _kill_after_first_checkpoint(cmd: list[str], out: Path, log: Path, timeout: float = 120.0) -> int:
    """Start ``cmd``, SIGKILL it as soon as a checkpoint is complete; returns the checkpoint's step."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env())
    deadline = time.monotonic() + timeout
    try:
        while (latest := ckpt.latest_checkpoint(out)) is None:
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before its first checkpoint:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after {timeout} s:\n{log.read_text()}")
            time.sleep(0.005)
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed; the test needs a longer run")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(ckpt.load_config(latest)["step"])


def test_killed_run_resumes_to_the_uninterrupted_losses(store: Path, reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "robot_policy.cli.main", *train_args(store, out)]
    killed_at = _kill_after_first_checkpoint(cmd, out, tmp_path / "killed.log")
    assert killed_at < STEPS
    done = subprocess.run([*cmd, "resume=true"], check=False, capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    # The resumed run draws the same batches and randomness from (seed, step) and restores weights, AdamW
    # moments, LR schedule and EMA exactly; with the same kernels in the same order it is bit-identical in
    # practice (the tolerance only allows for nondeterministic kernels elsewhere).
    want, want_val = read_metrics(reference_run)
    got, got_val = read_metrics(out)
    for key in ("loss_last", "grad_norm", "lr", "ema_decay"):
        np.testing.assert_allclose(series(got, key), series(want, key), rtol=1e-6, atol=0, err_msg=key)
    assert got_val.keys() == want_val.keys()
    np.testing.assert_allclose(list(got_val.values()), list(want_val.values()), rtol=1e-6)
    assert_same_weights(reference_run, out, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(store: Path, reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "robot_policy.cli.main", *train_args(store, out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # Each rank computes the mean loss of its 4 rows, DDP averages the two gradients, loss_last is the
    # all-reduced mean: the same global-batch quantities as one process, summed in another order (two
    # half-batch partial sums, GEMMs blocked for 4 rows instead of 8). Each reduction rounds differently at
    # float32's ~1e-7; 30 AdamW steps carry that into the weights without amplifying it much (measured: losses
    # within 2e-7 relative, weights of magnitude ~1 within 1.2e-7). The tolerances leave 10-50x margin; a
    # wrong row split or randomness gives other batches (losses differ by ~10% from batch to batch), and a
    # wrong gradient average, to which AdamW is blind, shows in grad_norm.
    want, want_val = read_metrics(reference_run)
    got, got_val = read_metrics(out)
    for key in ("loss_last", "grad_norm"):
        np.testing.assert_allclose(series(got, key), series(want, key), rtol=1e-5, atol=0, err_msg=key)
    np.testing.assert_allclose(list(got_val.values()), list(want_val.values()), rtol=1e-5)
    assert_same_weights(reference_run, out, rtol=1e-5, atol=1e-6)


def assert_same_weights(want_run: Path, got_run: Path, rtol: float, atol: float) -> None:
    """Final raw weights (train state) and EMA weights (model.safetensors) of two runs agree."""
    final = f"checkpoints/step_{STEPS:07d}"
    for name in (ckpt.MODEL, ckpt.TRAIN_STATE):
        want, got = load_file(str(want_run / final / name)), load_file(str(got_run / final / name))
        assert want.keys() == got.keys()
        for key in want:
            if not key.startswith("optim."):  # weights; AdamW moments follow from them
                torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=f"{name} {key}")


def test_resume_refuses_a_changed_run(store: Path, reference_run: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        code = cli_main([*train_args(store, reference_run), "resume=true", "optim.lr=0.01"])
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "train.optim" in err and "0.01" in err


def test_stochastic_sampler_chunks_depend_only_on_the_episode_seed(reference_run: Path,
                                                                   env_obs: dict[str, np.ndarray]) -> None:
    policy = DiffusionPolicy.from_checkpoint(reference_run, sampler="ddpm", num_steps=5)
    chunks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # must not matter: the policy's own generator drives every draw
        policy.reset(seed=7)
        chunks.append(policy.predict_chunk(env_obs).unified)
    np.testing.assert_array_equal(chunks[0], chunks[1])
