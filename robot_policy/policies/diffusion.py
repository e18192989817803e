"""DiffusionPolicy: a trained RDT-style policy behind ``predict_chunk(obs) -> ActionChunk``.

    policy = DiffusionPolicy.from_checkpoint("runs/lift/checkpoints/latest")
    policy.reset(seed=0)                 # clears the observation history, seeds the sampling noise
    chunk = policy.predict_chunk(obs)    # obs: env observation dict; chunk.unified (Ta, 128)

The policy keeps the last To observations (the first one repeated at an episode start, as the training
windows are padded): ``predict_chunk`` adds its observation, and ``observe(obs)`` must be called for every
other control step's observation so the history holds consecutive steps, as in training. It normalises them with the statistics stored in the checkpoint. The sampler (DDPM,
DDIM, DPM-Solver++) and its step count can be changed at load time without retraining; ``noise`` (Ta, 128)
can be given to make a chunk a deterministic function of it (DDIM with eta=0), as latent-noise RL needs.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.keys import (
    ACTION_MASK,
    CAMERA_PRESENT,
    CTRL_FREQ,
    IMAGE_PREFIX,
    IMAGES,
    LANGUAGE_ID,
    OBS_OBJECT,
    OBS_STATE,
    OBS_STATE_MASK,
)
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.diffusion import Sampler
from robot_policy.models.inputs import LanguageTable, make_model_inputs
from robot_policy.models.rdt import RDTPolicyModel, policy_config_from_dict
from robot_policy.models.text import make_text_encoder
from robot_policy.policies.base import ActionChunk
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM


class DiffusionPolicy:
    """See the module docstring. Build with :meth:`from_checkpoint`."""

    def __init__(self, model: RDTPolicyModel, normalizer: Normalizer, embodiment: EmbodimentSpec, language: str,
                 language_table: LanguageTable, execute_horizon: int, sampler: str | None = None,
                 num_steps: int | None = None, device: str | torch.device = "cpu",
                 meta: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.normalizer = normalizer
        self.embodiment = embodiment
        self.language = language
        self.language_table = language_table
        self.device = torch.device(device)
        cfg = model.cfg
        if not 1 <= execute_horizon <= cfg.horizon:
            raise ValueError(f"execute_horizon={execute_horizon} does not fit the policy's chunk of {cfg.horizon} "
                             f"actions (its horizon): choose 1..{cfg.horizon}")
        self.execute_horizon = execute_horizon
        self.cameras = list(cfg.obs_encoder.cameras)
        self.object_state_dim = cfg.obs_encoder.object_state_dim
        self.obs_horizon = cfg.obs_encoder.n_obs_steps
        self.horizon = cfg.horizon
        self.meta = meta or {}
        # Built once: a sampler holds the diffusers scheduler and its timestep plan (~1 ms to make).
        self._sampler = Sampler(cfg.diffusion, sampler, num_steps)
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=self.obs_horizon)
        self._generator = torch.Generator(device=self.device).manual_seed(0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", sampler: str | None = None,
                        num_steps: int | None = None, execute_horizon: int | None = None,
                        embodiment: str | None = None, language: str | None = None) -> DiffusionPolicy:
        """Load a checkpoint directory (or a run directory: its latest checkpoint).

        Args:
            sampler, num_steps: inference sampler (``ddpm``, ``ddim``, ``dpmsolver++``) and its steps;
                default the checkpoint's (RDT: DPM-Solver++, 5 steps).
            execute_horizon: actions executed per chunk; default the checkpoint's.
            embodiment: for a multi-embodiment checkpoint, which one this policy drives (default: the first).
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
        return cls(model, normalizer, specs[name], instruction, table,
                   execute_horizon or int(meta.get("execute_horizon", policy_cfg.horizon)),
                   sampler, num_steps, device, meta)

    def reset(self, seed: int = 0) -> None:
        """Start an episode: forget the observation history, reseed the sampling noise."""
        self._history.clear()
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add an observation to the history without predicting (steps executed from a chunk)."""
        self._remember(obs)

    def _remember(self, obs: dict[str, np.ndarray]) -> None:
        frame = {OBS_STATE: np.asarray(obs[OBS_STATE], np.float32)}
        if self.object_state_dim:
            if OBS_OBJECT not in obs:
                raise KeyError(f"the policy was trained with object_state ({self.object_state_dim}-d); "
                               f"the observation has only {sorted(obs)}")
            width = obs[OBS_OBJECT].shape[-1]
            if width > self.object_state_dim:
                raise ValueError(f"object_state has {width} values; the policy was trained on at most "
                                 f"{self.object_state_dim} (is this the task it was trained for?)")
            o = np.zeros(self.object_state_dim, np.float32)
            o[:width] = obs[OBS_OBJECT]
            frame[OBS_OBJECT] = o
        for cam in self.cameras:
            key = IMAGE_PREFIX + cam
            if key not in obs:
                raise KeyError(f"the policy sees camera {cam!r}; the observation has no {key!r}")
            frame[key] = np.asarray(obs[key])
        if not self._history:
            self._history.extend([frame] * self.obs_horizon)  # pad like the training windows
        else:
            self._history.append(frame)
        self._state_mask = np.asarray(obs.get(OBS_STATE_MASK, self.embodiment.state.mask), np.float32)

    def _batch(self) -> dict[str, torch.Tensor]:
        frames = list(self._history)
        batch: dict[str, torch.Tensor] = {
            fmt.STATE: torch.from_numpy(np.stack([f[OBS_STATE] for f in frames]))[None],
            OBS_STATE_MASK: torch.from_numpy(self._state_mask)[None],
            ACTION_MASK: torch.from_numpy(self.embodiment.action.mask)[None],
            CTRL_FREQ: torch.tensor([self.embodiment.control_hz], dtype=torch.float32),
            LANGUAGE_ID: torch.zeros(1, dtype=torch.int64),
        }
        if self.object_state_dim:
            batch[fmt.OBJECT_STATE] = torch.from_numpy(np.stack([f[OBS_OBJECT] for f in frames]))[None]
        if self.cameras:
            imgs = np.stack([np.stack([f[IMAGE_PREFIX + c] for c in self.cameras]) for f in frames])  # (To, V, H, W, 3)
            batch[IMAGES] = torch.from_numpy(imgs)[None]
            batch[CAMERA_PRESENT] = torch.ones(1, len(self.cameras), dtype=torch.bool)
        return batch

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, np.ndarray], noise: torch.Tensor | np.ndarray | None = None) -> ActionChunk:
        """Observe ``obs`` and return the next chunk. ``noise`` (Ta, 128): the initial sample x_T."""
        self._remember(obs)
        inputs = make_model_inputs(self._batch(), self.normalizer, self.language_table, self.device)
        if noise is None:
            x_T = torch.randn(1, self.horizon, UNIFIED_DIM, generator=self._generator, device=self.device)
        else:
            x_T = torch.as_tensor(noise, dtype=torch.float32, device=self.device).reshape(1, self.horizon, UNIFIED_DIM)
        # The generator also drives the stochastic samplers' per-step noise (DDPM, DDIM with eta > 0), so a
        # chunk depends only on the episode seed, never on torch's global RNG.
        sample = self.model.sample(inputs, noise=x_T, sampler=self._sampler, generator=self._generator)
        actions = self.normalizer.unnormalize(fmt.ACTION, sample[0]).cpu().numpy()
        mask = self.embodiment.action.mask
        actions = actions * mask
        return ActionChunk.from_unified(actions, mask, self.embodiment.control_hz, self.execute_horizon,
                                        embodiment=self.embodiment)
