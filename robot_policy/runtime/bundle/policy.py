"""A deploy bundle behind ``predict_chunk``, on any backend::

    policy = load_bundle("bundles/lift", backend="onnxruntime")
    policy.reset(seed=0)                 # clears the observation history, seeds the sampling noise
    chunk = policy.predict_chunk(obs)    # obs: env observation dict; chunk.unified (Ta, 128)

:class:`BundlePolicy` behaves as :class:`~robot_policy.policies.diffusion.DiffusionPolicy` does on the
checkpoint the bundle came from: the same observation history (the first observation repeated To times,
``observe`` for the steps executed from a chunk), the same normalisation, and the same noise: x_T is drawn
from ``torch.Generator().manual_seed(seed)`` per episode, one ``randn(1, Ta, 128)`` per chunk, and the
same generator drives a stochastic sampler's per-step noise. With the torch backend a chunk equals
DiffusionPolicy's bit for bit; with ONNX Runtime within float32 rounding (tests/test_bundle.py).

Loading reads nothing of the training stack: this module imports no ``robot_policy.train``,
``robot_policy.algorithms`` or ``robot_policy.envs`` (checked by a test), and the bundle is verified
against its manifest before anything in it is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.keys import IMAGE_PREFIX, OBS_OBJECT, OBS_STATE
from robot_policy.models.diffusion import Sampler
from robot_policy.models.inputs import LanguageTable, make_model_inputs
from robot_policy.models.observation_history import ObservationHistory
from robot_policy.models.rdt import RDTConfig, RDTPolicyModel, policy_config_from_dict, sample_with
from robot_policy.policies.base import ActionChunk
from robot_policy.policies.diffusion import ActionPrefix, initial_noise
from robot_policy.runtime.backends import Backend, BackendOptions, BackendSource, make_backend
from robot_policy.runtime.bundle.layout import EMBODIMENT, LANGUAGE, NORMALIZER, POLICY, WEIGHTS
from robot_policy.runtime.bundle.manifest import BundleError, bundle_file, read_manifest
from robot_policy.runtime.onnx_graphs import ExportedGraphs
from robot_policy.runtime.sampling import sample_chunk
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM


class _Precomputed:
    """The instruction's tokens as exported, behind the TextEncoder interface LanguageTable takes."""

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        self.tokens, self.mask = tokens, mask  # (1, L, lang_dim), (1, L)
        self.dim = int(tokens.shape[-1])

    def encode(self, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens, self.mask


@dataclass
class Bundle:
    """A verified bundle's content, parsed; backends are built from :meth:`source`."""

    root: Path
    manifest: dict[str, Any]
    spec: dict[str, Any]  # policy.json
    cfg: RDTConfig
    normalizer: Normalizer
    embodiment: EmbodimentSpec
    language_tokens: torch.Tensor  # (1, L, lang_dim)
    language_mask: torch.Tensor  # (1, L) bool

    @property
    def graphs(self) -> ExportedGraphs:
        enc = self.spec["graphs"]["encoder"]
        return ExportedGraphs(bundle_file(self.root, self.manifest, self.spec["graphs"]["denoiser"]["file"]),
                              bundle_file(self.root, self.manifest, enc["file"]) if enc else None)

    def load_model(self) -> RDTPolicyModel:
        """The torch network rebuilt from the bundle's config and weights (for the torch backends)."""
        model = RDTPolicyModel(self.cfg)
        model.load_state_dict(load_file(str(bundle_file(self.root, self.manifest, WEIGHTS))))
        return model.eval()

    def source(self) -> BackendSource:
        return BackendSource(self.cfg, load_model=self.load_model, graphs=self.graphs)

    def sampler(self, kind: str | None = None, num_steps: int | None = None) -> Sampler:
        """The bundle's sampler, or another one over the same denoiser; the bundle's own must reproduce the
        timesteps it was exported with (diffusers computes them)."""
        saved = self.spec["sampler"]
        own = kind in (None, saved["kind"]) and num_steps in (None, saved["num_steps"])
        sampler = Sampler(self.cfg.diffusion, kind or saved["kind"],
                          num_steps or (saved["num_steps"] if own else None), saved["eta"])
        if own and sampler.timesteps != list(saved["timesteps"]):
            raise BundleError(f"{self.root / POLICY}: the sampler here computes timesteps {sampler.timesteps}, the "
                              f"bundle was exported with {saved['timesteps']} (another diffusers version?)")
        return sampler


def open_bundle(path: str | Path) -> Bundle:
    """Verify the bundle at ``path`` against its manifest and parse it (no backend built yet)."""
    root = Path(path)
    manifest = read_manifest(root)
    spec = _read_json(bundle_file(root, manifest, POLICY))
    try:
        cfg = policy_config_from_dict(spec["policy"], where=f"{root / POLICY} policy")
        normalizer = Normalizer.from_json(_read_json(bundle_file(root, manifest, NORMALIZER)))
        embodiment = EmbodimentSpec.from_dict(_read_json(bundle_file(root, manifest, EMBODIMENT)),
                                              where=f"{root / EMBODIMENT}")
    except KeyError as e:
        raise BundleError(f"{root}: incomplete bundle ({e})") from None
    language = load_file(str(bundle_file(root, manifest, LANGUAGE)))
    return Bundle(root, manifest, spec, cfg, normalizer, embodiment, language["tokens"], language["mask"].bool())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


class BundlePolicy:
    """See the module docstring. Build with :func:`load_bundle`."""

    def __init__(self, bundle: Bundle, backend: Backend, sampler: Sampler, execute_horizon: int | None = None) -> None:
        self.bundle = bundle
        self.backend = backend
        self.sampler = sampler
        self.embodiment = bundle.embodiment
        self.normalizer = bundle.normalizer
        self.language: str = bundle.spec["language"]
        self.device = backend.device
        self.horizon: int = bundle.cfg.horizon
        self.obs_horizon: int = bundle.cfg.obs_encoder.n_obs_steps
        self.cameras: list[str] = list(bundle.cfg.obs_encoder.cameras)
        self.object_state_dim: int = bundle.cfg.obs_encoder.object_state_dim
        execute_horizon = execute_horizon or int(bundle.spec["execute_horizon"])
        if not 1 <= execute_horizon <= self.horizon:
            raise ValueError(f"execute_horizon={execute_horizon} does not fit the policy's chunk of {self.horizon} "
                             f"actions (its horizon): choose 1..{self.horizon}")
        self.execute_horizon = execute_horizon
        self.action_mask = np.asarray(self.embodiment.action.mask, np.float32)  # (Da,)
        self._language = LanguageTable(_Precomputed(bundle.language_tokens, bundle.language_mask),
                                       [self.language]).to(self.device)
        self._history = ObservationHistory(self.embodiment, self.obs_horizon, self.object_state_dim, self.cameras)
        self._generator = torch.Generator(device=self.device).manual_seed(0)

    def reset(self, seed: int = 0) -> None:
        """Start an episode: forget the observation history, reseed the sampling noise."""
        self._history.clear()
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add an observation to the history without predicting (steps executed from a chunk)."""
        self._history.add(obs)

    @torch.no_grad()
    def warmup(self, chunks: int = 2) -> None:
        """Run ``chunks`` chunks on a zero observation so that lazy work (torch.compile's compilation, a first
        engine launch, allocator growth) happens before the first real one. Leaves the episode's history
        and noise untouched."""
        history = ObservationHistory(self.embodiment, self.obs_horizon, self.object_state_dim, self.cameras)
        H, W = self.bundle.cfg.obs_encoder.image_size
        history.add({OBS_STATE: np.zeros(UNIFIED_DIM, np.float32), OBS_OBJECT: np.zeros(self.object_state_dim, np.float32),
                     **{IMAGE_PREFIX + cam: np.zeros((H, W, 3), np.uint8) for cam in self.cameras}})
        inputs = make_model_inputs(history.as_batch(), self.normalizer, self._language, self.device)
        generator = torch.Generator(device=self.device).manual_seed(0)
        for _ in range(chunks):
            noise = torch.randn(1, self.horizon, UNIFIED_DIM, generator=generator, device=self.device)
            sample_chunk(self.backend, self.sampler, inputs, noise, generator=generator)

    def draw_noise(self) -> torch.Tensor:
        """The next initial sample x_T (1, Ta, 128) from this episode's generator."""
        return initial_noise(None, self._generator, self.horizon, self.device)

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, np.ndarray], noise: torch.Tensor | np.ndarray | None = None,
                      prefix: ActionPrefix | None = None) -> ActionChunk:
        """Observe ``obs`` and return the next chunk. ``noise`` (Ta, 128): the initial sample x_T; ``prefix``:
        the queued actions to inpaint against (real-time chunking, as DiffusionPolicy.predict_chunk)."""
        self._history.add(obs)
        x_T = initial_noise(noise, self._generator, self.horizon, self.device)
        inputs = make_model_inputs(self._history.as_batch(), self.normalizer, self._language, self.device)
        if prefix is None:
            sample = sample_chunk(self.backend, self.sampler, inputs, x_T, generator=self._generator)  # (1, Ta, Da)
        else:
            hook = prefix.hook(self._normalize_actions, self.horizon, self.device)
            sample = sample_with(self.backend, self.sampler, inputs, x_T.to(self.device, torch.float32),
                                 self._generator, hook)  # (1, Ta, Da)
        unified = self.normalizer.unnormalize(fmt.ACTION, sample[0]).cpu().numpy() * self.action_mask
        return ActionChunk.from_unified(unified.astype(np.float32), self.action_mask, self.embodiment.control_hz,
                                        self.execute_horizon, embodiment=self.embodiment)


    def _normalize_actions(self, unified: np.ndarray) -> torch.Tensor:
        """Unified SI actions (..., 128) -> normalised, masked slots 0 (the inverse of predict_chunk's output)."""
        x = torch.as_tensor(np.asarray(unified, np.float32), device=self.device)
        return self.normalizer.normalize(fmt.ACTION, x) * torch.as_tensor(self.action_mask, device=self.device)


def load_bundle(path: str | Path, backend: str = "onnxruntime", *, device: str = "cpu", threads: int = 0,
                sampler: str | None = None, num_steps: int | None = None, execute_horizon: int | None = None,
                engine_cache: str | None = None) -> BundlePolicy:
    """The bundle at ``path`` (written by ``robot-policy export``) as a policy on ``backend``.

    Args:
        backend: torch, torch.compile, onnxruntime or tensorrt (:func:`robot_policy.runtime.backends.backend_names`).
        device: cpu, cuda or auto; threads: intra-op threads, 0 = the library's default.
        sampler, num_steps: another sampler over the same denoiser; default the bundle's own.
        execute_horizon: actions executed per chunk; default the bundle's.
        engine_cache: tensorrt only: where built engines are cached.
    Raises:
        BundleError: the bundle is missing, damaged (a file does not match its manifest hash) or unreadable.
    """
    bundle = open_bundle(path)
    options = BackendOptions(device=device, threads=threads, engine_cache=engine_cache)
    return BundlePolicy(bundle, make_backend(backend, bundle.source(), options), bundle.sampler(sampler, num_steps),
                        execute_horizon)
