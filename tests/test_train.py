"""Training end to end on a tiny store: checkpoints, loading the policy, config errors, kill-and-resume,
stop on SIGINT/SIGTERM, extending a run, DDP; and eval's refusals that need a trained checkpoint.

Every run trains ``rdt_tiny`` for STEPS steps on a 3-episode pybullet store with the same config, so the
uninterrupted in-process run is the reference the resumed and the data-parallel runs are compared with.
All runs use one torch thread (tiny tensors on a shared machine; and the same kernels in every run).
"""

from __future__ import annotations

import json
import os
import shutil
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
from robot_policy.train.schedule import cosine_with_warmup, make_scheduler

TASK = "pybullet_bimanual_lift"
STEPS, CKPT_EVERY, BATCH = 30, 5, 8


def train_args(store: Path, out: Path, *extra: str) -> list[str]:
    """The one run configuration of this file (``extra`` may add resume=true)."""
    return ["train", f"dataset.path={store}", f"out={out}", "policy=rdt_tiny", f"steps={STEPS}", f"batch_size={BATCH}",
            "log_every=1", f"ckpt_every={CKPT_EVERY}", f"val_every={CKPT_EVERY}", "val_batches=2",
            "optim.warmup_steps=5", "torch_threads=1", "progress=false", *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_metrics(run: Path, steps: int = STEPS, logged: list[int] | None = None
                 ) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    """Per-step training entries (loss_last, lr, grad_norm, ...) and ``val_loss`` of a run; each step of
    ``logged`` (default: every step 1..``steps``, as with log_every=1) must be logged exactly once."""
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
    assert sorted(train) == (logged or list(range(1, steps + 1))), f"{run}: logged steps {sorted(train)}"
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
    # keep_checkpoints=3 (TrainConfig's default): older ones are pruned, no temporary directories are left
    assert sorted(p.name for p in root.iterdir() if p.name != "latest") == [
        f"step_{s:07d}" for s in (STEPS - 2 * CKPT_EVERY, STEPS - CKPT_EVERY, STEPS)]
    assert {p.name for p in latest.iterdir()} == {ckpt.CONFIG, ckpt.MODEL, ckpt.TRAIN_STATE, ckpt.TRAIN_STATE_JSON}
    meta = ckpt.load_config(latest)
    assert meta["step"] == STEPS and meta["format"] == "robot_policy.checkpoint/1"
    assert meta["policy"]["obs_encoder"]["object_state_dim"] == 12  # filled from the store
    assert meta["tasks"] == [TASK] and "torch" in meta["versions"]
    tensors, plain = ckpt.load_train_state(latest)
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("optim.") for k in tensors)
    # no LR scheduler state: a resume rebuilds the schedule at the saved step
    assert plain["ema_step"] == STEPS and "scheduler" not in plain
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
    assert chunk.execute_horizon == 8  # TrainConfig.execute_horizon=None: the whole chunk
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


def run_cli(args: list[str]) -> int:
    """``cli_main`` in this process, restoring the torch thread count a run sets."""
    threads = torch.get_num_threads()
    try:
        return cli_main(args)
    finally:
        torch.set_num_threads(threads)


def test_resume_with_nothing_to_resume_is_an_error(store: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for out, why in ((empty, f"{empty} has no checkpoints under {empty / 'checkpoints'}"),
                     (tmp_path / "missing", f"{tmp_path / 'missing'} does not exist")):
        assert run_cli(train_args(store, out, "resume=true", "steps=2")) == 1
        err = capsys.readouterr().err
        assert f"resume=true, but there is nothing to resume: {why}" in err and "drop resume=true" in err
        assert ckpt.latest_checkpoint(out) is None


def test_train_refuses_what_does_not_fit_naming_both_sides(store: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "refused"
    args = train_args(store, out, "steps=1")  # steps=1: the old behaviour (training anyway) stays quick
    assert run_cli([*args, "task=robosuite_two_arm_lift"]) == 2
    err = capsys.readouterr().err
    assert f"task=robosuite_two_arm_lift, but {store} records task {TASK}" in err
    assert run_cli([*args, f"dataset.paths=[{store}]"]) == 2
    err = capsys.readouterr().err
    assert f"dataset.path={store} and dataset.paths=['{store}'] are both given" in err
    # an image policy on a state-only store: no silent state-only model
    assert run_cli([*args, "policy=rdt_small_image"]) == 1
    err = capsys.readouterr().err
    assert "camera 'overhead', which no store records" in err and f"{store} records no cameras" in err
    assert run_cli([*args, "policy=rdt_small_image", "cameras=[]"]) == 1
    err = capsys.readouterr().err
    assert "image policy (obs_encoder.cameras=['overhead'])" in err and "cameras=[]" in err
    assert ckpt.latest_checkpoint(out) is None
    # the task the store records, named or left out, trains
    assert run_cli([*args, f"task={TASK}"]) == 0


def test_a_larger_steps_on_resume_extends_the_run(store: Path, reference_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    more = STEPS + 4
    runs = []
    for name in ("extended", "again"):
        out = tmp_path / name
        shutil.copytree(reference_run, out, symlinks=True)  # a finished run of STEPS steps
        assert run_cli([*train_args(store, out), "resume=true", f"steps={more}"]) == 0
        assert f"resuming {out} from step {STEPS}; steps {STEPS} -> {more}" in capsys.readouterr().err
        runs.append(out)
    entries, _ = read_metrics(runs[0], steps=more)
    # the schedule is rebuilt for the new total and continues at the saved step (lr logged after each step)
    peak = ckpt.load_config(ckpt.latest_checkpoint(runs[0]))["train"]["optim"]["lr"]
    for step in range(STEPS + 1, more + 1):
        assert entries[step]["lr"] == pytest.approx(peak * cosine_with_warmup(step, 5, more), rel=1e-12)
    assert ckpt.load_config(ckpt.latest_checkpoint(runs[0]))["lr_schedule"] == [
        {"from_step": 0, "total_steps": STEPS}, {"from_step": STEPS, "total_steps": more}]
    assert_same_weights(runs[0], runs[1], rtol=0, atol=0, step=more)  # deterministic
    # a steps that leaves nothing to train says so
    assert run_cli([*train_args(store, runs[0]), "resume=true", f"steps={more}"]) == 1
    assert f"is at step {more}; steps={more} leaves nothing to train" in capsys.readouterr().err


def test_a_resumed_scheduler_sets_the_rate_of_its_step_for_the_new_total() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = make_scheduler(optimizer, 5, 30)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict()
    for total in (30, 60):
        restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
        restored.load_state_dict(state)
        resumed = make_scheduler(restored, 5, total, last_step=30)
        assert restored.param_groups[0]["lr"] == 1e-3 * cosine_with_warmup(30, 5, total)
        assert resumed.last_epoch == 30


def _signal_once_training(cmd: list[str], out: Path, log: Path, sig: int, timeout: float = 120.0) -> int:
    """Start ``cmd``, send ``sig`` once it has logged anything (a step or a validation); returns its exit
    code."""
    metrics = out / "metrics.jsonl"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env())
    deadline = time.monotonic() + timeout
    try:
        while not (metrics.exists() and '"step"' in metrics.read_text()):
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before logging a step:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no step logged after {timeout} s:\n{log.read_text()}")
            time.sleep(0.01)
        os.kill(proc.pid, sig)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_it_stopped_at_and_resume_continues(store: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "stopped"
    robot_policy = str(Path(sys.executable).with_name("robot-policy"))
    # No periodic checkpoint: the only one is the one the signal writes. No periodic log entry either: the
    # signal comes after the first validation (step 2), and the entry of the steps 1..stop is the one the
    # signal writes before saving (a resume keeps only entries up to the saved step).
    cmd = [robot_policy, *train_args(store, out, "steps=100000", "ckpt_every=100000", "val_every=2",
                                     "log_every=100000")]
    code = _signal_once_training(cmd, out, tmp_path / "stopped.log", sig)
    log = (tmp_path / "stopped.log").read_text()
    assert code == 128 + sig, log
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None, log
    stopped_at = int(ckpt.load_config(latest)["step"])
    entries, val = read_metrics(out, logged=[stopped_at])  # the step in progress finished and was saved
    assert max(val) <= stopped_at  # nothing after it ran
    assert np.isfinite(entries[stopped_at]["loss"]) and entries[stopped_at]["samples_per_s"] > 0
    assert f"interrupted by {signal.Signals(sig).name} after step {stopped_at}: wrote {latest}" in log
    if sig != signal.SIGINT:
        return
    done = subprocess.run([robot_policy, *train_args(store, out, f"steps={stopped_at + 2}", "resume=true")],
                          check=False, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} from step {stopped_at}" in done.stderr
    # each entry once: the stop's (steps 1..stopped_at), then the resumed two steps (log_every=1)
    read_metrics(out, logged=[stopped_at, stopped_at + 1, stopped_at + 2])
    assert ckpt.latest_checkpoint(out) == out / "checkpoints" / f"step_{stopped_at + 2:07d}"


def test_eval_of_a_missing_or_corrupt_checkpoint_fails_once(reference_run: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(reference_run / "checkpoints" / f"step_{STEPS:07d}", corrupt)
    (corrupt / ckpt.CONFIG).write_text('{"format": "robot_policy.checkpoint/1", "pol')  # truncated
    missing = tmp_path / "no_run" / "checkpoints" / "latest"
    for policy, says in ((missing, f"policy {missing}: no such checkpoint directory"), (corrupt, str(corrupt))):
        # two workers: errors used to print one traceback per worker, then "terminated abruptly"
        assert run_cli(["eval", f"task={TASK}", f"policy={policy}", "episodes=2", "workers=2", "videos=0",
                        f"out={tmp_path / 'eval'}"]) != 0
        err = capfd.readouterr().err  # capfd: also what worker processes would write
        assert err.count(says) == 1, err
        assert "Traceback" not in err and "terminated abruptly" not in err, err
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_eval_refuses_an_execute_horizon_beyond_the_checkpoint_chunk(reference_run: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["eval", f"task={TASK}", f"policy={reference_run}", "execute_horizon=64", "episodes=1",
                    "workers=1", "videos=0", f"out={tmp_path / 'eval'}"]) == 1
    err = capsys.readouterr().err
    assert "execute_horizon=64 is beyond the policy's chunk of 8 actions" in err  # rdt_tiny: Ta = 8
    assert not (tmp_path / "eval" / "eval.json").exists()


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


def assert_same_weights(want_run: Path, got_run: Path, rtol: float, atol: float, step: int = STEPS) -> None:
    """Final raw weights (train state) and EMA weights (model.safetensors) of two runs agree."""
    final = f"checkpoints/step_{step:07d}"
    for name in (ckpt.MODEL, ckpt.TRAIN_STATE):
        want, got = load_file(str(want_run / final / name)), load_file(str(got_run / final / name))
        assert want.keys() == got.keys()
        for key in want:
            if not key.startswith("optim."):  # weights; AdamW moments follow from them
                torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=f"{name} {key}")


def test_resume_refuses_a_changed_run(store: Path, reference_run: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli([*train_args(store, reference_run), "resume=true", "optim.lr=0.01", f"steps={STEPS + 1}"])
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
