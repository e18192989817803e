"""The last To observations of one episode, laid out as a batch of one for :func:`make_model_inputs`.

Shared by :class:`robot_policy.policies.diffusion.DiffusionPolicy` (one episode) and
:class:`robot_policy.models.frozen_base.FrozenBase` (one history per vectorised env, stacked), so a policy
sees the same inputs whether it runs alone or batched with others.

An episode's first observation is repeated To times, as the training windows are padded at an episode start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from robot_policy.data import format as fmt
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
from robot_policy.spaces.embodiment import EmbodimentSpec


class ObservationHistory:
    """Frames of ``state`` (128,), ``object_state`` (object_state_dim,) zero-padded, and camera images
    (H, W, 3) uint8, for the last ``obs_horizon`` control steps of one episode."""

    def __init__(self, embodiment: EmbodimentSpec, obs_horizon: int, object_state_dim: int,
                 cameras: Sequence[str]) -> None:
        self.embodiment = embodiment
        self.obs_horizon = obs_horizon
        self.object_state_dim = object_state_dim
        self.cameras = list(cameras)
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=obs_horizon)
        self.state_mask = np.asarray(embodiment.state.mask, np.float32)

    def clear(self) -> None:
        """Forget the episode (the next :meth:`add` starts a new one)."""
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, obs: dict[str, np.ndarray]) -> None:
        """Append one env observation (unbatched). Raises KeyError/ValueError naming what does not fit."""
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
        if not self._frames:
            self._frames.extend([frame] * self.obs_horizon)  # pad like the training windows
        else:
            self._frames.append(frame)
        self.state_mask = np.asarray(obs.get(OBS_STATE_MASK, self.embodiment.state.mask), np.float32)

    def as_batch(self) -> dict[str, torch.Tensor]:
        """The history as a batch of one: ``state`` (1, To, 128), masks (1, 128), ``ctrl_freq`` (1,),
        ``language_id`` (1,) = 0, ``object_state`` (1, To, Do), ``images`` (1, To, V, H, W, 3)."""
        if not self._frames:
            raise RuntimeError("the observation history is empty: add an observation first")
        frames = list(self._frames)
        batch: dict[str, torch.Tensor] = {
            fmt.STATE: torch.from_numpy(np.stack([f[OBS_STATE] for f in frames]))[None],
            OBS_STATE_MASK: torch.from_numpy(self.state_mask)[None],
            ACTION_MASK: torch.from_numpy(np.asarray(self.embodiment.action.mask, np.float32))[None],
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


def stack_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate batches of one (from :meth:`ObservationHistory.as_batch`) along axis 0."""
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
