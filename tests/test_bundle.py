"""Deploy bundles: export -> load_bundle -> predict_chunk is the checkpoint's DiffusionPolicy.

* on a real ``pybullet_bimanual_lift`` episode (state-only policy), a bundle's chunks equal the checkpoint's
  for the same observations and seed: bit for bit on the torch backend, within 1e-4 on ONNX Runtime, with
  the deterministic default sampler and with DDPM (whose per-step noise comes from the episode's generator);
* the manifest hashes every file; a bundle with a changed or missing file is refused, naming the file;
* loading and predicting imports nothing of ``train``, ``algorithms``, ``envs`` or a simulator (a subprocess);
* ``robot-policy export`` refuses an existing directory, and ``eval``'s ``backend=`` applies to bundles only;
* eval builds a bundle's policy for its env and refuses another robot or instruction; slow: ``robot-policy
  eval policy=BUNDLE backend=onnxruntime`` runs in worker processes with the bundle's sampler and horizon.

The checkpoint is ``rdt_tiny`` trained for 2 steps on one expert episode, then every weight redrawn around
its value, so chunks are far from zero and depend on the observation (the trained head is still ~0).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoint import train_tiny_checkpoint

from robot_policy.cli.common import ConfigError
from robot_policy.cli.eval import parse_eval_config
from robot_policy.cli.main import main
from robot_policy.envs.registry import make_env
from robot_policy.models import checkpoint as ckpt
from robot_policy.policies.base import observe
from robot_policy.policies.diffusion import DiffusionPolicy
from robot_policy.runtime.bundle import BundleError, load_bundle, open_bundle
from robot_policy.runtime.bundle.manifest import MANIFEST, file_sha256

TASK = "pybullet_bimanual_lift"
TOL = 1e-4
SEED = 1_000_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle_ckpt")
    path = train_tiny_checkpoint(root)
    weights = load_file(str(path / ckpt.MODEL))
    g = torch.Generator().manual_seed(0)
    save_file({k: v + 0.2 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in weights.items()}, str(path / ckpt.MODEL))
    return path


@pytest.fixture(scope="module")
def bundle(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "lift"
    assert main(["export", f"checkpoint={checkpoint}", "format=onnx", f"out={out}"]) == 0
    return out


def _episode_chunks(policies: list, steps: int) -> list[list[np.ndarray]]:
    """Run ``policies[0]`` in the env for ``steps`` steps; every policy gets the same observations (predict or
    observe, as the eval harness calls them) and returns its chunk each time the first one re-plans."""
    env = make_env(TASK, max_steps=steps + 1)
    try:
        obs, _ = env.reset(seed=SEED)
        for p in policies:
            p.reset(SEED)
        chunks: list[list[np.ndarray]] = [[] for _ in policies]
        done = 0
        while done < steps:
            got = [p.predict_chunk(obs) for p in policies]
            for out, c in zip(chunks, got):
                out.append(c.unified)
            horizon = got[0].execute_horizon
            for i, action in enumerate(got[0].unified[:horizon]):
                obs, *_ = env.step(action)
                done += 1
                if i < horizon - 1:
                    for p in policies:
                        observe(p, obs)
    finally:
        env.close()
    return chunks


@pytest.mark.parametrize(("sampler", "steps"), [(None, None), ("ddpm", 10)])
def test_a_bundle_acts_as_its_checkpoint_on_a_real_episode(checkpoint: Path, bundle: Path, sampler: str | None,
                                                           steps: int | None) -> None:
    ref = DiffusionPolicy.from_checkpoint(checkpoint, sampler=sampler, num_steps=steps)
    on_torch = load_bundle(bundle, backend="torch", sampler=sampler, num_steps=steps, threads=1)
    on_ort = load_bundle(bundle, backend="onnxruntime", sampler=sampler, num_steps=steps, threads=1)
    want, got_torch, got_ort = _episode_chunks([ref, on_torch, on_ort], steps=3 * ref.execute_horizon)
    assert len(want) == 3
    assert max(np.abs(c).max() for c in want) > 0.1  # real actions, not the untrained head's zeros
    for w, t, o in zip(want, got_torch, got_ort):
        assert np.array_equal(w, t)
        assert np.abs(w - o).max() <= TOL
    assert any(np.abs(a - b).max() > 1e-3 for a, b in itertools.pairwise(want))  # the chunks follow the episode


def test_warmup_leaves_the_episode_alone(bundle: Path) -> None:
    cold, warm = load_bundle(bundle, threads=1), load_bundle(bundle, threads=1)
    obs = {"state": np.full(128, 0.1, np.float32), "object_state": np.full(cold.object_state_dim, 0.2, np.float32)}
    for p in (cold, warm):
        p.reset(3)
    warm.warmup()
    assert np.array_equal(cold.predict_chunk(obs).unified, warm.predict_chunk(obs).unified)


def test_a_bundle_carries_what_it_runs_with(checkpoint: Path, bundle: Path) -> None:
    policy = load_bundle(bundle, backend="onnxruntime")
    ref = DiffusionPolicy.from_checkpoint(checkpoint)
    spec = open_bundle(bundle).spec
    assert spec["sampler"] == {"kind": ref.base.sampler.kind, "num_steps": ref.base.sampler.num_steps, "eta": 0.0,
                               "timesteps": ref.base.sampler.timesteps}
    assert (policy.execute_horizon, policy.horizon, policy.obs_horizon) == (ref.execute_horizon, ref.horizon,
                                                                            ref.obs_horizon)
    assert (policy.object_state_dim, policy.cameras, policy.language) == (ref.object_state_dim, [], ref.language)
    assert policy.embodiment.to_dict() == ref.embodiment.to_dict()
    names = [i["name"] for i in spec["graphs"]["denoiser"]["inputs"]]
    assert names[:2] == ["x_t", "timestep"] and spec["graphs"]["encoder"]["inputs"][0]["name"] == "object_state"
    assert spec["export_check"]["denoiser_max_abs_diff"] <= TOL


def test_the_manifest_hashes_every_file_and_names_the_source(checkpoint: Path, bundle: Path) -> None:
    from robot_policy.models.frozen_base import checkpoint_content_hash

    manifest = json.loads((bundle / MANIFEST).read_text())
    files = sorted(p.name for p in bundle.iterdir() if p.name != MANIFEST)
    assert sorted(manifest["files"]) == files
    assert all(manifest["files"][name] == file_sha256(bundle / name) for name in files)
    assert manifest["source"]["content_hash"] == checkpoint_content_hash(checkpoint)
    assert {"robot_policy", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])


@pytest.mark.parametrize("name", ["denoiser.onnx", "normalizer.json", "model.safetensors", "policy.json"])
def test_a_changed_file_is_refused_naming_it(bundle: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}: content does not match the bundle's manifest"):
        load_bundle(copy, backend="onnxruntime")


def test_a_missing_file_or_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "embodiment.json").unlink()
    with pytest.raises(BundleError, match="embodiment.json: listed in the bundle's manifest but missing"):
        load_bundle(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a deploy bundle"):
        load_bundle(copy)


def test_loading_a_bundle_imports_no_training_or_simulation_code(bundle: Path) -> None:
    code = f"""
import sys
import numpy as np
from robot_policy.runtime.bundle import load_bundle
policy = load_bundle({str(bundle)!r}, backend="onnxruntime", threads=1)
policy.reset(0)
chunk = policy.predict_chunk({{"state": np.zeros(128, np.float32),
                               "object_state": np.zeros(policy.object_state_dim, np.float32)}})
assert chunk.unified.shape == (policy.horizon, 128)
bad = sorted(m for m in sys.modules if m.split(".")[:2] in (["robot_policy", "train"], ["robot_policy", "algorithms"],
             ["robot_policy", "envs"]) or m.split(".")[0] in ("gymnasium", "pybullet", "mujoco", "robosuite"))
print("IMPORTED", bad)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout, result.stdout


def test_export_refuses_an_existing_directory(checkpoint: Path, bundle: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "not_a_bundle"
    other.mkdir()
    assert main(["export", f"checkpoint={checkpoint}", f"out={other}"]) == 2
    assert main(["export", f"checkpoint={checkpoint}", f"out={other}", "overwrite=true"]) == 2
    assert "is not a bundle" in capsys.readouterr().err
    assert main(["export", f"checkpoint={checkpoint}", "format=tflite", f"out={tmp_path / 'b'}"]) == 2
    assert "formats: onnx" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_eval_backend_is_for_bundles(checkpoint: Path, bundle: Path) -> None:
    with pytest.raises(ConfigError, match="not a bundle directory"):
        parse_eval_config([f"policy={checkpoint}", "backend=onnxruntime"])
    with pytest.raises(ConfigError, match="backends: torch, torch.compile, onnxruntime, tensorrt"):
        parse_eval_config([f"policy={bundle}", "backend=onnx"])
    _, policy, cfg = parse_eval_config([f"policy={bundle}"])
    assert policy == str(bundle)
    assert cfg.policy_kwargs["backend"] == "onnxruntime"
    assert (cfg.sampler, cfg.sampler_steps) == ("dpmsolver++", 5)


def test_the_eval_factory_refuses_another_robot_or_instruction(bundle: Path) -> None:
    from types import SimpleNamespace

    from robot_policy.cli.eval import BundleFactory

    policy = load_bundle(bundle)
    env = SimpleNamespace(embodiment=policy.embodiment, task=SimpleNamespace(name=TASK, language=policy.language))
    assert BundleFactory(str(bundle), {"backend": "onnxruntime"})(env).language == policy.language
    other_robot = SimpleNamespace(embodiment=SimpleNamespace(name="aloha_bimanual"), task=env.task)
    with pytest.raises(ValueError, match="drives panda_bimanual_joint"):
        BundleFactory(str(bundle), {"backend": "onnxruntime"})(other_robot)
    other_task = SimpleNamespace(embodiment=policy.embodiment, task=SimpleNamespace(name=TASK, language="stack"))
    with pytest.raises(ValueError, match="export with language="):
        BundleFactory(str(bundle), {"backend": "onnxruntime"})(other_task)


@pytest.mark.slow
def test_eval_of_a_bundle_runs(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``robot-policy eval policy=BUNDLE backend=onnxruntime episodes=2`` in worker processes: the bundle's
    sampler and execute horizon are what ran. (That a bundle's chunks are its checkpoint's is checked above,
    on the same observations: a closed-loop episode of this random-weight policy fails either way.)"""
    out = tmp_path / "eval"
    argv = [f"policy={bundle}", "backend=onnxruntime", "episodes=2", "workers=2", "videos=0", "task.max_steps=20",
            f"seed={SEED}", f"out={out}"]
    assert main(["eval", *argv]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    spec = open_bundle(bundle).spec
    assert (report["episodes"], report["errored"], report["policy"]) == (2, 0, str(bundle))
    assert (report["sampler"], report["sampler_steps"]) == (spec["sampler"]["kind"], spec["sampler"]["num_steps"])
    assert report["executed_horizons"] == [spec["execute_horizon"]]
    assert all(e["inferences"] == -(-20 // spec["execute_horizon"]) for e in report["per_episode"])
    assert "backend=onnxruntime" in report["command"]


def test_a_directory_with_another_manifest_json_is_not_a_bundle(tmp_path: Path) -> None:
    """``is_bundle`` reads the manifest's format: export's overwrite and eval's dispatch trust it."""
    from robot_policy.runtime.bundle.manifest import BUNDLE_FORMAT, MANIFEST, is_bundle

    (tmp_path / MANIFEST).write_text(json.dumps({"name": "my-web-app", "files": {}}))
    assert not is_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("not json {")
    assert not is_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": BUNDLE_FORMAT, "files": {}}))
    assert is_bundle(tmp_path)
