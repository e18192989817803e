"""A shallower student (``robot-policy distill student_depth=N``): its denoiser call is cheaper than its teacher's.

* the block rule: each student block copies a teacher block of its own kind (language / observation
  cross-attention), the first stays first, the last of an even depth stays last, equal depths are the identity;
* the warm start copies every parameter outside the blocks and exactly the chosen blocks (tensor by tensor);
* a depth of 0/1 or above the teacher's is an error naming the option, before any rollout is run;
* a short run trains the shallow student (its validation MSE falls), and its checkpoint is an ordinary one:
  its config has the smaller depth and names its teacher's content hash, and the checkpoint loader,
  ``DiffusionPolicy.predict_chunk``, export and ``load_bundle`` take it as they take any other.

The teacher: ``rdt_tiny`` with depth 4 (language, observation, language, observation blocks), 20 BC steps on
one expert episode, so its blocks differ from each other and its chunks depend on the noise.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_checkpoint import train_tiny_checkpoint

from robot_policy.algorithms.distill import (
    BLOCKS,
    DistillConfig,
    student_blocks,
    student_state_dict,
    warm_started_student,
)
from robot_policy.cli.main import main as cli_main
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase, checkpoint_content_hash
from robot_policy.models.rdt import RDTPolicyModel, policy_config_from_dict
from robot_policy.pipelines.distill import DistillRunConfig, distill
from robot_policy.policies.diffusion import DiffusionPolicy

TASK = "pybullet_bimanual_lift"
TEACHER_DEPTH = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rdt_tiny`` at depth 4, 20 BC steps on one expert episode."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("shallow_teacher"), TASK, steps=20,
                                 overrides=[f"policy.depth={TEACHER_DEPTH}", "optim.warmup_steps=1", "optim.lr=1e-3"])


@pytest.fixture(scope="module")
def teacher(teacher_ckpt: Path) -> FrozenBase:
    base = FrozenBase.from_checkpoint(teacher_ckpt)
    assert base.model.cfg.depth == TEACHER_DEPTH
    return base


def quick_run(teacher_ckpt: Path, out: Path, **overrides: Any) -> DistillRunConfig:
    """Demonstration windows only (no env processes), no final evaluation."""
    opts: dict[str, Any] = {"teacher": str(teacher_ckpt), "out": str(out), "rollout_episodes": 0, "train_steps": 3,
                            "batch_size": 8, "eval_episodes": 0, "val_batches": 1, "progress": False, "fsync": False,
                            "device": "cpu", **overrides}
    return DistillRunConfig(**opts)


# --- the block rule and the warm start -----------------------------------------------------------------


def test_student_blocks_keep_each_kind_the_first_and_the_last() -> None:
    assert student_blocks(4, 2) == [0, 3]  # rdt_small's depth-2 student: language block 0, observation block 3
    assert student_blocks(4, 3) == [0, 1, 2]
    assert student_blocks(6, 4) == [0, 1, 4, 5]
    assert student_blocks(14, 2) == [0, 13]
    for teacher_depth in range(2, 29):
        for depth in range(2, teacher_depth + 1):
            blocks = student_blocks(teacher_depth, depth)
            assert len(blocks) == depth and blocks[0] == 0
            assert blocks == sorted(set(blocks)), (teacher_depth, depth, blocks)  # in order, none twice
            # even blocks cross-attend to language, odd ones to observations: the kind is kept
            assert all(i % 2 == j % 2 for j, i in enumerate(blocks)), (teacher_depth, depth, blocks)
            if teacher_depth % 2 == 0 and depth % 2 == 0:
                assert blocks[-1] == teacher_depth - 1
        assert student_blocks(teacher_depth, teacher_depth) == list(range(teacher_depth))


@pytest.mark.parametrize("depth", [0, 1, 5])
def test_a_depth_outside_2_to_the_teachers_is_refused(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"student_depth={depth}: choose 2\.\.4"):
        student_blocks(4, depth)


def test_warm_start_copies_every_non_block_parameter_and_the_chosen_blocks(teacher: FrozenBase) -> None:
    student, blocks = warm_started_student(teacher.model, steps=1, depth=2)
    assert blocks == [0, 3] and student.cfg.depth == 2 and len(student.rdt.blocks) == 2
    assert (student.cfg.diffusion.sampler, student.cfg.diffusion.num_inference_steps) == ("ddim", 1)
    assert all(getattr(student.cfg, f.name) == getattr(teacher.model.cfg, f.name)
               for f in dataclasses.fields(student.cfg) if f.name not in ("depth", "diffusion"))
    want = teacher.model.state_dict()
    got = student.state_dict()
    outside = {k for k in want if not k.startswith(BLOCKS)}
    assert {k for k in got if not k.startswith(BLOCKS)} == outside
    assert {"rdt.head.mlp.fc2.weight", "rdt.state_adaptor.0.weight", "rdt.lang_adaptor.0.weight", "rdt.obs_pos",
            "rdt.t_embedder.fc1.weight"} <= outside
    for key in outside:
        assert torch.equal(got[key], want[key]), key
    per_block = [k[len(f"{BLOCKS}0."):] for k in want if k.startswith(f"{BLOCKS}0.")]
    assert {k for k in got if k.startswith(BLOCKS)} == {f"{BLOCKS}{j}.{k}" for j in range(2) for k in per_block}
    for j, i in enumerate(blocks):
        for k in per_block:
            assert torch.equal(got[f"{BLOCKS}{j}.{k}"], want[f"{BLOCKS}{i}.{k}"]), (j, k)
    # the teacher's blocks differ, so copying block 1 instead of block 3 would have been seen above
    assert not torch.equal(want[f"{BLOCKS}1.mlp.fc1.weight"], want[f"{BLOCKS}3.mlp.fc1.weight"])
    # the student's tensors are its own: training it leaves the teacher alone
    with torch.no_grad():
        student.rdt.head.mlp.fc2.weight.add_(1.0)
    assert torch.equal(teacher.model.state_dict()["rdt.head.mlp.fc2.weight"], want["rdt.head.mlp.fc2.weight"])


def test_the_teachers_depth_is_the_identity(teacher: FrozenBase) -> None:
    """No student_depth: the student is the teacher's network (the behaviour before the option existed)."""
    student, blocks = warm_started_student(teacher.model, steps=2)
    assert blocks == [0, 1, 2, 3] and student.cfg.depth == TEACHER_DEPTH
    want = teacher.model.state_dict()
    got = student.state_dict()
    assert set(got) == set(want) and all(torch.equal(v, want[k]) for k, v in got.items())
    assert student_state_dict(want, [0, 1, 2, 3]).keys() == want.keys()


# --- refusals --------------------------------------------------------------------------------------------


def test_bad_student_depths_fail_before_anything_runs(teacher_ckpt: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """student_depth 0 or 1: the option's own check (exit 2); deeper than the teacher: an error naming both
    depths before the teacher's rollouts (exit 1, nothing written)."""
    with pytest.raises(ValueError, match="student_depth: must be >= 2"):
        DistillConfig(student_depth=0)
    out = tmp_path / "run"
    for depth in (0, 1):
        assert cli_main(["distill", f"teacher={teacher_ckpt}", f"out={out}", f"student_depth={depth}"]) == 2
        assert "student_depth" in capsys.readouterr().err
    assert cli_main(["distill", f"teacher={teacher_ckpt}", f"task={TASK}", f"out={out}", "student_depth=6",
                     "rollout_episodes=2", "num_envs=1", "task.max_steps=40", "eval_episodes=0", "progress=false",
                     "device=cpu"]) == 1
    assert "student_depth=6: choose 2..4" in capsys.readouterr().err
    assert not out.exists()


# --- a short run: training, the checkpoint, its loaders --------------------------------------------------


@pytest.fixture(scope="module")
def shallow_run(teacher_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """30 steps of the depth-2 1-step student (EMA decay capped low, so the saved weights follow the updates)."""
    out = tmp_path_factory.mktemp("shallow_run") / "run"
    algo = DistillConfig(steps=1, student_depth=2, lr=1e-3, warmup_steps=0, ema_max_decay=0.5)
    run = distill(quick_run(teacher_ckpt, out, train_steps=30, batch_size=16, val_batches=2, val_every=30,
                            ckpt_every=30, log_every=10), algo, load_task_config(TASK))
    yield run
    shutil.rmtree(run, ignore_errors=True)


def test_a_short_run_trains_the_shallow_student(shallow_run: Path) -> None:
    rows = [json.loads(line) for line in (shallow_run / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val/mse"]) for r in rows if "val/mse" in r]
    assert [s for s, _ in val] == [0, 30]
    (_, before), (_, after) = val
    print(f"depth-2 student, validation same-noise MSE: {before:.5f} -> {after:.5f}")
    assert after < 0.6 * before


def test_the_shallow_students_checkpoint_is_an_ordinary_policy(shallow_run: Path, teacher_ckpt: Path,
                                                               tmp_path: Path) -> None:
    latest = ckpt.latest_checkpoint(shallow_run)
    assert latest is not None
    meta = ckpt.load_config(latest)
    assert meta["policy"]["depth"] == 2 and meta["policy"]["diffusion"]["sampler"] == "ddim"
    assert meta["distill"]["teacher"]["content_hash"] == checkpoint_content_hash(teacher_ckpt)
    assert (meta["distill"]["teacher_depth"], meta["distill"]["student_blocks"]) == (TEACHER_DEPTH, [0, 3])
    assert meta["distill"]["config"]["student_depth"] == 2
    model = RDTPolicyModel(policy_config_from_dict(meta["policy"]))
    model.load_state_dict(ckpt.load_model_state(latest))  # strict: exactly two blocks' weights are stored
    assert len(model.rdt.blocks) == 2

    env = make_env(TASK, max_steps=5)
    try:
        obs, _ = env.reset(seed=1_000_000)
    finally:
        env.close()
    policy = DiffusionPolicy.from_checkpoint(latest)
    assert policy.model.cfg.depth == 2 and policy.base.sampler.num_steps == 1
    policy.reset(0)
    chunk = policy.predict_chunk(obs)
    assert chunk.unified.shape == (policy.base.horizon, 128) and np.isfinite(chunk.unified).all()

    from robot_policy.runtime.bundle import load_bundle

    bundle = tmp_path / "bundle"
    assert cli_main(["export", f"checkpoint={latest}", "format=onnx", f"out={bundle}"]) == 0
    deployed = load_bundle(bundle, backend="onnxruntime", threads=1)
    deployed.reset(0)
    assert np.abs(deployed.predict_chunk(obs).unified - chunk.unified).max() <= 1e-4
