"""A trained diffusion policy as a frozen, batched map (observation histories, initial noise x_T) -> chunks.

    base = FrozenBase.from_checkpoint("runs/lift/checkpoints/latest")
    hist = [base.new_history() for _ in range(n_envs)]     # one per env; hist[i].add(obs_i) every step
    chunks = base.sample(stack_batches([h.as_batch() for h in hist]), noise)   # (B, Ta, 128) normalised
    unified = base.to_unified(chunks)                                            # (B, Ta, 128) SI units

What fine-tuning needs from the base policy (``robot_policy.algorithms``) and what the one-episode
:class:`~robot_policy.policies.diffusion.DiffusionPolicy` is built on. The sampler is deterministic given
x_T for DDIM with eta = 0 and DPM-Solver++ (the RDT default), so a chunk is a function of (observation,
noise), as latent-noise RL needs. One :meth:`sample` call serves every env due for a chunk.

``content_hash`` identifies the checkpoint's bytes (weights + config): a composite fine-tuned on this base
records it and refuses another base.

The networks run behind :class:`~robot_policy.models.rdt.ChunkNetwork` (``encode`` once per chunk,
``denoise`` per sampler step): the torch model by default; :meth:`FrozenBase.use_network` swaps in another
runner of the same two networks (an ONNX Runtime session from ``robot_policy.runtime``, built by the layer
above), and the sampling loop stays the one of :func:`~robot_policy.models.rdt.sample_with`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.diffusion import Sampler
from robot_policy.models.inputs import LanguageTable, make_model_inputs
from robot_policy.models.observation_history import ObservationHistory
from robot_policy.models.rdt import ChunkNetwork, RDTPolicyModel, policy_config_from_dict, sample_with
from robot_policy.models.text import make_text_encoder
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM


def checkpoint_content_hash(path: str | Path) -> str:
    """sha256 over a checkpoint directory's ``config.json`` and ``model.safetensors`` bytes (hex)."""
    path = ckpt.resolve_checkpoint(path)
    h = hashlib.sha256()
    for name in (ckpt.CONFIG, ckpt.MODEL):
        h.update(name.encode())
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class FrozenBase:
    """See the module docstring. Build with :meth:`from_checkpoint`; parameters never require grad."""

    def __init__(self, model: RDTPolicyModel, normalizer: Normalizer, embodiment: EmbodimentSpec, language: str,
                 language_table: LanguageTable, sampler: str | None = None, num_steps: int | None = None,
                 device: str | torch.device = "cpu", meta: dict[str, Any] | None = None,
                 path: Path | None = None, content_hash: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        #: what runs the encoder and the denoiser step (:meth:`use_network`)
        self.network: ChunkNetwork = self.model
        self.normalizer = normalizer
        self.embodiment = embodiment
        self.language = language
        self.language_table = language_table
        self.device = torch.device(device)
        self.meta = meta or {}
        self.path = path
        self.content_hash = content_hash
        cfg = model.cfg
        self.horizon: int = cfg.horizon
        self.obs_horizon: int = cfg.obs_encoder.n_obs_steps
        self.object_state_dim: int = cfg.obs_encoder.object_state_dim
        self.cameras: list[str] = list(cfg.obs_encoder.cameras)
        self.default_execute_horizon = int(self.meta.get("execute_horizon", cfg.horizon))
        # Built once: a sampler holds the diffusers scheduler and its timestep plan (~1 ms to make).
        self.sampler = Sampler(cfg.diffusion, sampler, num_steps)
        self.action_mask = np.asarray(embodiment.action.mask, np.float32)
        #: (n_used,) indices of the unified action slots the embodiment drives
        self.used_action_slots = np.flatnonzero(self.action_mask > 0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", sampler: str | None = None,
                        num_steps: int | None = None, embodiment: str | None = None,
                        language: str | None = None) -> FrozenBase:
        """Load a checkpoint directory (or a run directory: its latest checkpoint).

        Args:
            sampler, num_steps: inference sampler (``ddpm``, ``ddim``, ``dpmsolver++``) and its steps;
                default the checkpoint's (RDT: DPM-Solver++, 5 steps).
            embodiment: for a multi-embodiment checkpoint, which one this base drives (default: the first).
            language: the instruction; default the first instruction seen in training.
        """
        path = ckpt.resolve_checkpoint(path)
        meta = ckpt.load_config(path)
        policy_cfg = policy_config_from_dict(meta["policy"], where=f"{path}/config.json policy")
        model = RDTPolicyModel(policy_cfg)
        model.load_state_dict(ckpt.load_model_state(path))
        model.to(device)
        normalizer = Normalizer.from_json(meta["normalizer"])
        specs = {name: EmbodimentSpec.from_dict(raw, where=f"{path} embodiment {name}")
                 for name, raw in meta["embodiments"].items()}
        name = embodiment or next(iter(specs))
        if name not in specs:
            raise KeyError(f"{path}: no embodiment {name!r}; the checkpoint has {sorted(specs)}")
        texts = list(meta.get("languages") or [""])
        instruction = texts[0] if language is None else language
        encoder = make_text_encoder(policy_cfg.text_encoder, policy_cfg.lang_dim, policy_cfg.max_lang_tokens)
        table = LanguageTable(encoder, [instruction]).to(device)
        return cls(model, normalizer, specs[name], instruction, table, sampler, num_steps, device, meta,
                   path=path, content_hash=checkpoint_content_hash(path))

    def new_history(self) -> ObservationHistory:
        """An empty observation history shaped for this base's inputs."""
        return ObservationHistory(self.embodiment, self.obs_horizon, self.object_state_dim, self.cameras)

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor], noise: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Chunks (B, Ta, 128) in normalised action space (masked slots 0) from stacked history batches and
        the initial noise x_T (B, Ta, 128). ``generator`` is only drawn from by stochastic samplers."""
        B = batch[fmt.STATE].shape[0]
        if noise.shape != (B, self.horizon, UNIFIED_DIM):
            raise ValueError(f"noise: expected ({B}, {self.horizon}, {UNIFIED_DIM}), got {tuple(noise.shape)}")
        inputs = make_model_inputs(batch, self.normalizer, self.language_table, self.device)
        return sample_with(self.network, self.sampler, inputs, noise.to(self.device, torch.float32), generator)

    def use_network(self, network: ChunkNetwork) -> None:
        """Run the encoder and the denoiser step with ``network`` from now on (the same two networks, e.g. in
        ONNX Runtime); chunks then differ from the torch model's by that runner's numerical error."""
        self.network = network

    def to_unified(self, normalized: Tensor | np.ndarray) -> np.ndarray:
        """Normalised actions (..., 128) -> unified SI actions, float32, masked slots 0."""
        x = torch.as_tensor(normalized, dtype=torch.float32)
        out = self.normalizer.unnormalize(fmt.ACTION, x.to(self.device)).cpu().numpy()
        return (out * self.action_mask).astype(np.float32)

    def to_normalized(self, unified: Tensor | np.ndarray) -> Tensor:
        """Unified SI actions (..., 128) -> normalised actions, masked slots 0 (the inverse of to_unified)."""
        x = torch.as_tensor(np.asarray(unified, np.float32), device=self.device)
        return self.normalizer.normalize(fmt.ACTION, x) * torch.as_tensor(self.action_mask, device=self.device)
