"""Few-step distillation (issue 9, item 1): the losses, the student's sampler, and ``robot-policy distill``.

* a student equal to its teacher, the teacher sampling DDIM-1, has zero same-noise loss and zero gradient
  (and a DPM-Solver++-5 teacher does not: the loss reads the teacher);
* the student's training forward pass (gradient through every DDIM step) is the chunk inference computes;
* the executed-part MSE counts only the executed actions and the used slots;
* the DDIM jump behind the ctm loss is diffusers' DDIM step; the ctm loss trains the student only;
* a student's checkpoint records ddim / K and ``DiffusionPolicy.from_checkpoint`` samples it so;
* a few updates on the tiny base reduce the same-noise loss on a held batch;
* ``slow``: ``robot-policy distill`` end to end (teacher rollouts, checkpoints, metrics, final evaluation,
  resume, refusals), and the composite teachers (DSRL: the actor on the student; residual: one student).

The teacher is the tiny base of test_rl_components.py (``rdt_tiny``, 40 BC steps on one expert episode):
far from a good policy, which does not matter here, only that its chunks depend on the noise.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from signals import interrupt_once_logged
from test_rl_components import tiny_base_checkpoint, write_composite

from robot_policy.algorithms.distill import (
    DistillBatch,
    DistillConfig,
    DistillModels,
    ctm_loss,
    ddim_jump,
    executed_mse,
    run_sampler,
    same_noise_loss,
    same_noise_mse,
    student_sampler,
)
from robot_policy.algorithms.distill_states import NOISE, TARGET, StoreWindows, WindowBank
from robot_policy.cli.main import main as cli_main
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.diffusion import Sampler
from robot_policy.models.frozen_base import FrozenBase, checkpoint_content_hash
from robot_policy.models.inputs import make_model_inputs
from robot_policy.models.rdt import ModelInputs, RDTPolicyModel
from robot_policy.pipelines.distill import DistillRunConfig, distill
from robot_policy.policies.composite import NoiseActorComposite, is_composite, load_composite
from robot_policy.policies.diffusion import DiffusionPolicy
from robot_policy.spaces.unified import UNIFIED_DIM

TASK = "pybullet_bimanual_lift"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base_checkpoint(tmp_path_factory)


def teacher_of(base_ckpt: Path, sampler: str | None = None, num_steps: int | None = None) -> FrozenBase:
    return FrozenBase.from_checkpoint(base_ckpt, sampler=sampler, num_steps=num_steps)


def copy_of(model: RDTPolicyModel) -> RDTPolicyModel:
    """A trainable copy of ``model`` (the warm start)."""
    return copy.deepcopy(model).requires_grad_(True).train()


def windows(base: FrozenBase) -> StoreWindows:
    """Every window of the store the base was trained on."""
    return StoreWindows(base.meta["datasets"], base.obs_horizon, base.horizon, base.object_state_dim, base.cameras,
                        tuple(base.model.cfg.obs_encoder.image_size))  # type: ignore[arg-type]


def batch_of(base: FrozenBase, source: StoreWindows, rows: np.ndarray, seed: int) -> tuple[ModelInputs, torch.Tensor]:
    """Model inputs of windows ``rows`` and a seeded initial noise (B, Ta, 128)."""
    inputs = make_model_inputs(source[rows], base.normalizer, base.language_table)
    noise = torch.randn(len(rows), base.horizon, UNIFIED_DIM, generator=torch.Generator().manual_seed(seed))
    return inputs, noise


def models_for(base: FrozenBase, student: RDTPolicyModel, steps: int, target: RDTPolicyModel | None = None
               ) -> DistillModels:
    return DistillModels(student, base.model, base.sampler, student_sampler(base.model.cfg.diffusion, steps), target)


# --- the losses ---------------------------------------------------------------------------------------


def test_student_equal_to_a_ddim1_teacher_has_zero_loss_and_zero_gradient(base_ckpt: Path) -> None:
    """Same network, same one DDIM step, same noise: the loss is exactly 0 and so is every gradient. With the
    teacher sampling DPM-Solver++-5 from the same noise the loss is positive: it does read the teacher."""
    ddim1 = teacher_of(base_ckpt, "ddim", 1)
    source = windows(ddim1)
    inputs, noise = batch_of(ddim1, source, np.arange(0, 64, 4), seed=1)
    student = copy_of(ddim1.model)
    batch = DistillBatch(inputs, noise, torch.Generator().manual_seed(0), execute_horizon=ddim1.horizon)
    loss, _ = same_noise_loss(models_for(ddim1, student, 1), batch, DistillConfig(steps=1))
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)

    dpm5 = teacher_of(base_ckpt)
    assert (dpm5.sampler.kind, dpm5.sampler.num_steps) == ("dpmsolver++", 5)
    loss5, _ = same_noise_loss(models_for(dpm5, copy_of(dpm5.model), 1), batch, DistillConfig(steps=1))
    assert loss5.item() > 1e-6


@pytest.mark.parametrize("steps", [1, 2])
def test_student_forward_pass_is_the_inference_chunk_with_gradient_through_every_step(base_ckpt: Path,
                                                                                     steps: int) -> None:
    """``run_sampler`` (training) equals ``model.sample`` with ddim / K (inference) bit for bit, and its
    gradient reaches the network through every step: with 2 steps, the second call's input depends on the
    first call's output, so d chunk / d (the first call's input) is not the 1-step gradient."""
    base = teacher_of(base_ckpt)
    inputs, noise = batch_of(base, windows(base), np.arange(8), seed=2)
    student = copy_of(base.model)
    sampler = student_sampler(base.model.cfg.diffusion, steps)
    chunk = run_sampler(student, student.encode(inputs), noise, sampler)
    with torch.no_grad():
        expected = student.sample(inputs, noise=noise, sampler="ddim", num_steps=steps, eta=0.0)
    assert torch.equal(chunk.detach(), expected)
    w = noise.clone().requires_grad_(True)
    run_sampler(student, student.encode(inputs), w, sampler).square().sum().backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    chunk.square().sum().backward()
    assert all(p.grad is not None for p in student.rdt.blocks.parameters())


def test_executed_mse_counts_only_the_executed_actions_and_the_used_slots() -> None:
    B, Ta, He = 2, 6, 4
    mask = torch.zeros(B, UNIFIED_DIM)
    mask[:, [0, 5, 9]] = 1.0  # 3 used slots
    target = torch.randn(B, Ta, UNIFIED_DIM)
    pred = target.clone()
    pred[:, He:] += 5.0  # not executed
    pred[:, :, 1] += 5.0  # unused slot
    assert executed_mse(pred, target, mask, He).item() == 0.0
    pred[1, He - 1, 9] += 2.0  # one executed, used entry off by 2
    assert executed_mse(pred, target, mask, He).item() == pytest.approx(4.0 / (B * He * 3))
    with pytest.raises(ValueError, match="execute_horizon=7"):
        executed_mse(pred, target, mask, 7)


@pytest.mark.parametrize("steps", [1, 2])
def test_ddim_jump_is_diffusers_ddim_step(base_ckpt: Path, steps: int) -> None:
    """The jump the ctm loss is built on, from each of the student's timesteps to the next (or to the clean
    sample), is the update the student's DDIM sampler makes."""
    base = teacher_of(base_ckpt)
    sampler = Sampler(base.model.cfg.diffusion, "ddim", steps, eta=0.0)
    timesteps = sampler.start()
    x = torch.randn(3, base.horizon, UNIFIED_DIM, generator=torch.Generator().manual_seed(3))
    for i, t in enumerate(timesteps):
        x0 = torch.randn_like(x)  # any clean estimate ("sample" prediction: the model output is x0)
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tb, sb = torch.full((3,), t), torch.full((3,), s)
        jumped = ddim_jump(base.model.schedule, x, x0, tb, sb)
        torch.testing.assert_close(jumped, sampler.step(x0, t, x), rtol=1e-5, atol=1e-5)
        x = jumped


def test_ctm_loss_trains_the_student_only(base_ckpt: Path) -> None:
    """The consistency-trajectory + denoising loss is finite and positive, its gradient reaches the student
    and neither the teacher nor the EMA target (the stop-gradient side), and it is a function of the
    generator's draws."""
    base = teacher_of(base_ckpt)
    inputs, noise = batch_of(base, windows(base), np.arange(16), seed=4)
    student = copy_of(base.model)
    target = copy.deepcopy(base.model).eval().requires_grad_(False)
    models = models_for(base, student, 1, target)
    # the teacher's parameters made trainable here, so only the loss's own no-grad use of it keeps them clean
    # (the EMA target stays frozen: its stop-gradient is its frozen parameters, by design)
    base.model.requires_grad_(True)
    try:
        cfg = DistillConfig(steps=1, loss="ctm")
        loss, parts = ctm_loss(models, DistillBatch(inputs, noise, torch.Generator().manual_seed(5), base.horizon),
                               cfg)
        assert np.isfinite(loss.item()) and loss.item() > 0 and set(parts) == {"ctm", "dsm"}
        loss.backward()
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
        assert all(p.grad is None for p in (*base.model.parameters(), *target.parameters()))
    finally:
        base.model.requires_grad_(False)
    again, _ = ctm_loss(models, DistillBatch(inputs, noise, torch.Generator().manual_seed(5), base.horizon), cfg)
    other, _ = ctm_loss(models, DistillBatch(inputs, noise, torch.Generator().manual_seed(6), base.horizon), cfg)
    assert again.item() == loss.item() and other.item() != loss.item()


def test_a_few_updates_reduce_the_same_noise_loss_on_a_held_batch(base_ckpt: Path) -> None:
    """30 Adam steps of the 1-step student against the DPM-Solver++-5 teacher, on batches of windows other
    than the held one (and other noise), cut the held batch's same-noise MSE."""
    base = teacher_of(base_ckpt)
    source = windows(base)
    n = len(source)
    held_inputs, held_noise = batch_of(base, source, np.arange(0, n, 2), seed=10**6)  # even windows
    student = copy_of(base.model)
    models = models_for(base, student, 1)
    before = same_noise_mse(models, student, held_inputs, held_noise, base.horizon)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for step in range(30):
        rows = rng.choice(np.arange(1, n, 2), size=16)  # odd windows
        inputs, noise = batch_of(base, source, rows, seed=step)
        loss, _ = same_noise_loss(models, DistillBatch(inputs, noise, torch.Generator(), base.horizon),
                                  DistillConfig(steps=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = same_noise_mse(models, student, held_inputs, held_noise, base.horizon)
    print(f"held-batch same-noise MSE: {before:.5f} -> {after:.5f}")
    assert after < 0.6 * before


# --- the student's checkpoint ---------------------------------------------------------------------------


def quick_run(base_ckpt: Path, out: Path, **overrides: Any) -> DistillRunConfig:
    """A run on the base's demonstrations only (no env processes), no final evaluation."""
    opts: dict[str, Any] = {"teacher": str(base_ckpt), "out": str(out), "rollout_episodes": 0, "train_steps": 3,
                            "batch_size": 8, "eval_episodes": 0, "val_batches": 1, "progress": False, "fsync": False,
                            "device": "cpu", **overrides}
    return DistillRunConfig(**opts)


@pytest.mark.parametrize("steps", [1, 2])
def test_student_checkpoint_records_ddim_k_and_loads_sampling_so(base_ckpt: Path, tmp_path: Path, steps: int) -> None:
    """The student's config.json says ddim / K (eta 0) and names its teacher; ``DiffusionPolicy`` loads it
    sampling ddim with K steps, and its chunk is the EMA student's K-step DDIM sample of the same noise."""
    task = load_task_config(TASK)
    run = distill(quick_run(base_ckpt, tmp_path / "run"), DistillConfig(steps=steps), task)
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_0000003"
    meta = ckpt.load_config(latest)
    diffusion = meta["policy"]["diffusion"]
    assert (diffusion["sampler"], diffusion["num_inference_steps"], diffusion["eta"]) == ("ddim", steps, 0.0)
    assert meta["distill"]["teacher"]["content_hash"] == checkpoint_content_hash(base_ckpt)
    assert meta["distill"]["config"]["loss"] == "same_noise"
    assert not is_composite(meta)
    policy = DiffusionPolicy.from_checkpoint(latest)
    assert (policy.base.sampler.kind, policy.base.sampler.num_steps, policy.base.sampler.eta) == ("ddim", steps, 0.0)
    teacher = teacher_of(base_ckpt)
    source = windows(teacher)
    inputs, noise = batch_of(teacher, source, np.arange(2), seed=7)
    got = policy.base.sample(source[np.arange(2)], noise)
    with torch.no_grad():
        want = policy.model.sample(inputs, noise=noise, sampler="ddim", num_steps=steps, eta=0.0)
    assert torch.equal(got, want)
    assert (run / "metrics.jsonl").exists() and (run / "distill_config.json").exists()


def test_ctm_run_trains_against_the_ema_target(base_ckpt: Path, tmp_path: Path) -> None:
    """loss=ctm through the pipeline: both terms are logged, and the validation metric stays the same-noise MSE."""
    task = load_task_config(TASK)
    run = distill(quick_run(base_ckpt, tmp_path / "run", log_every=3), DistillConfig(steps=2, loss="ctm"), task)
    rows = metrics(run)
    assert {"loss/ctm", "loss/dsm"} <= set(rows[-2]) and "val/mse" in rows[-1]
    assert ckpt.load_config(ckpt.latest_checkpoint(run))["distill"]["config"]["loss"] == "ctm"  # type: ignore[arg-type]


def test_distill_help_lists_every_option_and_bad_values_fail_before_anything_runs(
        capsys: pytest.CaptureFixture[str], base_ckpt: Path, tmp_path: Path) -> None:
    """``--help`` lists each option of DistillConfig and DistillRunConfig with its doc; the YAML only
    chooses the task; a bad value is a one-line error naming the key, and nothing is written."""
    import yaml

    from robot_policy.cli.distill import distill_schema
    from robot_policy.configuration import options
    from robot_policy.paths import CONFIG_DIR

    assert set(yaml.safe_load((CONFIG_DIR / "distill.yaml").read_text())) == {"defaults"}
    assert cli_main(["distill", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for opt in options(distill_schema()):
        assert opt.doc, f"{opt.name} has no #: doc"
        if opt.name != "task":
            assert any(line.startswith(f"  {opt.name} ") and opt.doc in line for line in lines), opt.name
    out = tmp_path / "run"
    for bad, says in ((["steps=0"], "steps"), (["loss=l2"], "loss"), (["teacher_sampler=ddpm"], "teacher_sampler"),
                      (["stepz=1"], "did you mean")):
        assert cli_main(["distill", f"teacher={base_ckpt}", f"out={out}", *bad]) == 2
        assert says in capsys.readouterr().err
    assert cli_main(["distill", f"teacher={tmp_path / 'nothing'}", f"out={out}"]) == 2
    assert not out.exists()


# --- end to end -----------------------------------------------------------------------------------------


def distill_args(base: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", f"teacher={base}", f"task={TASK}", f"out={out}", "steps=1", "train_steps=6", "batch_size=8",
            "rollout_episodes=2", "num_envs=2", "task.max_steps=40", "eval_episodes=2", "eval_workers=1",
            "log_every=2", "val_every=3", "ckpt_every=3", "torch_threads=1", "progress=false", "fsync=false",
            "device=cpu", *extra]


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_distill_cli_end_to_end_writes_a_loadable_student_and_resumes(base_ckpt: Path, tmp_path: Path) -> None:
    """``robot-policy distill``: teacher rollouts (saved), checkpoints at 3 and 6, metrics (validation at 0, 3,
    6), the final evaluation of student and teacher on the same tuning seeds; ``robot-policy eval`` runs the
    student as it is. A second run into the same directory is refused, a resume with another objective too;
    resume=true train_steps=9 continues at 6 without rolling out again or repeating a metrics step."""
    run = tmp_path / "run"
    assert cli_main(distill_args(base_ckpt, run)) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_0000003", "step_0000006"]
    rows = metrics(run)
    assert [r["step"] for r in rows if "val/mse" in r] == [0, 3, 6]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    summary = json.loads((run / "distill_summary.json").read_text())
    assert summary["student"]["episodes"] == summary["teacher"]["episodes"] == 2
    assert summary["seeds"] == [200_000, 200_001]
    teacher_eval = json.loads((run / "eval_teacher" / "eval.json").read_text())
    assert (teacher_eval["sampler"], teacher_eval["sampler_steps"]) == ("dpmsolver++", 5)  # the targets' sampler
    meta = ckpt.load_config(ckpt.latest_checkpoint(run))  # type: ignore[arg-type]
    states = meta["distill"]["states"]
    assert states["rollout_episodes"] == 2 and states["rollout_windows"] == 80  # 2 time-outs of 40 steps
    assert states["demo_windows"] > 0
    assert cli_main(["eval", f"task={TASK}", f"policy={run / 'checkpoints' / 'latest'}", "episodes=1",
                     "workers=1", "videos=0", "task.max_steps=20", f"out={tmp_path / 'eval'}"]) == 0
    eval_json = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (eval_json["sampler"], eval_json["sampler_steps"]) == ("ddim", 1)

    assert cli_main(distill_args(base_ckpt, run)) == 1  # holds a run, no resume=true
    assert cli_main(distill_args(base_ckpt, run, "resume=true", "train_steps=9", "lr=3e-4")) == 1
    bank_mtime = (run / "rollout_states.safetensors").stat().st_mtime_ns
    assert cli_main(distill_args(base_ckpt, run, "resume=true", "train_steps=9")) == 0
    assert (run / "rollout_states.safetensors").stat().st_mtime_ns == bank_mtime  # reused, not rolled out again
    rows2 = metrics(run)
    assert rows2[:len(rows)] == rows
    assert [r["step"] for r in rows2 if "val/mse" in r] == [0, 3, 6, 9]
    assert ckpt.load_config(ckpt.latest_checkpoint(run))["step"] == 9  # type: ignore[arg-type]


@pytest.mark.slow
def test_resumed_run_equals_the_uninterrupted_run(base_ckpt: Path, tmp_path: Path) -> None:
    """6 steps at once and 3 + resume 3 give the same student, bit for bit: every draw is a function of
    (seed, step) and the optimiser state and EMA travel in the checkpoint."""
    task = load_task_config(TASK)
    whole = distill(quick_run(base_ckpt, tmp_path / "whole", train_steps=6), DistillConfig(steps=2), task)
    part = distill(quick_run(base_ckpt, tmp_path / "part", train_steps=3), DistillConfig(steps=2), task)
    distill(quick_run(base_ckpt, part, train_steps=6, resume=True), DistillConfig(steps=2), task)
    a = ckpt.load_model_state(ckpt.latest_checkpoint(whole))  # type: ignore[arg-type]
    b = ckpt.load_model_state(ckpt.latest_checkpoint(part))  # type: ignore[arg-type]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_dsrl_teacher_keeps_its_noise_actor_on_the_student(base_ckpt: Path, tmp_path: Path) -> None:
    """A DSRL composite teacher: its base is distilled (with the base's recorded sampler), and
    ``out/composite`` pairs the same actor with the student, recording the student's content hash and the
    original base; loaded, it decodes the actor's w with the student's 1-step DDIM."""
    from robot_policy.algorithms.dsrl import DSRLSAC, DSRLConfig

    base = teacher_of(base_ckpt)
    teacher = write_composite(tmp_path / "dsrl", "dsrl_sac", DSRLSAC(DSRLConfig(), base, num_envs=1, seed=3), base)
    run = tmp_path / "run"
    assert cli_main(distill_args(teacher, run, "eval_episodes=1")) == 0
    comp_ckpt = ckpt.latest_checkpoint(run / "composite")
    student_ckpt = ckpt.latest_checkpoint(run)
    assert comp_ckpt is not None and student_ckpt is not None
    meta = ckpt.load_config(comp_ckpt)
    assert meta["base"]["content_hash"] == checkpoint_content_hash(student_ckpt)
    assert (meta["base"]["sampler"], meta["base"]["num_steps"]) == ("ddim", 1)
    assert meta["distilled_from"]["base"]["content_hash"] == base.content_hash
    composite = load_composite(comp_ckpt)
    assert isinstance(composite, NoiseActorComposite) and composite.base.sampler.num_steps == 1
    original = load_composite(teacher)
    assert all(torch.equal(a, b) for a, b in zip(composite.actor.state_dict().values(),
                                                 original.actor.state_dict().values()))
    summary = json.loads((run / "distill_summary.json").read_text())
    assert summary["student"]["policy"] == str(comp_ckpt)
    # its chunk is the student's chunk decoded from the actor's w
    env = make_env(TASK, max_steps=40)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    composite.reset(0)
    got = composite.predict_chunk(obs).unified
    obj = torch.as_tensor(obs[OBS_OBJECT], dtype=torch.float32)[None]
    w = composite.actor.deterministic(composite.features(torch.as_tensor(obs[OBS_STATE], dtype=torch.float32)[None],
                                                         obj))
    student = DiffusionPolicy.from_checkpoint(student_ckpt)
    want = student.predict_chunk(obs, noise=composite.noise.full_noise(w.detach())[0]).unified
    assert np.array_equal(got, want)


@pytest.mark.slow
def test_residual_teacher_is_distilled_into_one_student(base_ckpt: Path, tmp_path: Path) -> None:
    """A residual composite teacher: the student regresses the actions the composite executed (here every
    episode: the tiny base never succeeds) and is a plain diffusion checkpoint, no residual."""
    from robot_policy.algorithms.residual_ppo import ResidualPPO, ResidualPPOConfig

    base = teacher_of(base_ckpt)
    algo = ResidualPPO(ResidualPPOConfig(), base, num_envs=1, seed=0)
    teacher = write_composite(tmp_path / "ppo", "residual_ppo", algo, base)
    run = tmp_path / "run"
    assert cli_main(distill_args(teacher, run, "successes_only=false", "residual_same_noise=false",
                                 "eval_episodes=0")) == 0
    meta = ckpt.load_config(ckpt.latest_checkpoint(run))  # type: ignore[arg-type]
    assert not is_composite(meta) and meta["distill"]["config"]["loss"] == "regress_actions"
    assert meta["distill"]["teacher"]["kind"] == "residual"
    assert "demo_windows" not in meta["distill"]["states"]  # the composite's rollouts only
    # the targets: from each window on, the normalised actions the composite executed (edge-padded at the end)
    bank, bank_meta = WindowBank.load(run / "rollout_states.safetensors")
    assert [r[2] for r in bank_meta["results"]] == [40, 40] and len(bank) == 80
    target = bank.tensors[TARGET][:40]  # the first episode, (40, Ta, 128)
    assert torch.equal(target[1:, 0], target[:-1, 1]) and torch.equal(target[-1, -1], target[-1, 0])
    composite = load_composite(teacher)
    env = make_env(TASK, max_steps=40)
    try:
        obs, _ = env.reset(seed=30_000_000)
        composite.reset(30_000_000)
        first = composite.base.to_normalized(composite.predict_chunk(obs).unified[0])
        first_noise = composite.planned_noise  # the noise of the chunk planned on the first step
    finally:
        env.close()
    torch.testing.assert_close(target[0, 0], first)
    # same_noise (the default): only the steps where the base planned a chunk, each with the noise it planned
    # from (the composite's seeded draw), and the same targets as the every-step bank's rows at those steps
    from robot_policy.envs.registry import load_task_config
    from robot_policy.pipelines.distill_teacher import load_teacher, residual_rollout_windows

    task40 = load_task_config(TASK, max_steps=40)
    chunked, _ = residual_rollout_windows(load_teacher(teacher, task40, None, None), task40, [30_000_000],
                                          successes_only=False)
    assert chunked is not None
    E = composite.execute_horizon
    starts = list(range(0, 40, E))
    assert len(chunked) == len(starts) and chunked.tensors[NOISE].shape == (len(starts), *target.shape[1:])
    torch.testing.assert_close(chunked.tensors[TARGET], target[starts])
    assert first_noise is not None
    torch.testing.assert_close(chunked.tensors[NOISE][:1], first_noise)
    assert cli_main(distill_args(teacher, tmp_path / "refused", "eval_episodes=0")) == 1  # no success: refused
    assert not ckpt.latest_checkpoint(tmp_path / "refused")
    shutil.rmtree(tmp_path / "refused", ignore_errors=True)


@pytest.mark.slow
def test_sigint_saves_the_finished_step_and_resume_continues(base_ckpt: Path, tmp_path: Path) -> None:
    """SIGINT during a long run: the step in progress finishes, a checkpoint of it is written (every step
    before it logged), the process exits 130; resume=true with two more steps continues from there."""
    out = tmp_path / "stopped"
    args = ["distill", f"teacher={base_ckpt}", f"out={out}", "rollout_episodes=0", "train_steps=100000",
            "batch_size=4", "log_every=1", "val_batches=0", "ckpt_every=100000", "eval_episodes=0", "progress=false",
            "fsync=false", "device=cpu", "torch_threads=1"]
    log = tmp_path / "stopped.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("robot-policy")), *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    code = interrupt_once_logged(proc, log, out / "metrics.jsonl", '"loss"', "a step")
    text = log.read_text()
    assert code == 130, text
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None, text
    stopped_at = int(ckpt.load_config(latest)["step"])
    assert [r["step"] for r in metrics(out)] == list(range(1, stopped_at + 1))  # nothing ran after the save
    assert f"after step {stopped_at}" in text
    resumed = args[:4] + [f"train_steps={stopped_at + 2}"] + args[5:] + ["resume=true"]
    assert cli_main(resumed) == 0
    assert [r["step"] for r in metrics(out)] == list(range(1, stopped_at + 3))


def test_resume_takes_an_option_added_since_the_checkpoint_as_its_default() -> None:
    """A checkpoint written before an option existed ran with that option's default: resuming with the
    default is allowed, with another value refused (naming the option)."""
    import dataclasses as dc

    from robot_policy.pipelines.distill import DistillRunConfig, _check_resumable

    run = dc.asdict(DistillRunConfig(teacher="t", out="o"))
    current = {"distill": {"teacher": {"content_hash": "h"}, "config": {}, "states": {}, "task": {}, "run": run}}
    older = {"distill": {**current["distill"], "run": {k: v for k, v in run.items() if k != "residual_same_noise"}}}
    _check_resumable(older, current)
    changed = {"distill": {**current["distill"], "run": {**run, "residual_same_noise": False}}}
    with pytest.raises(ValueError, match="residual_same_noise: checkpoint True, now False"):
        _check_resumable(older, changed)
