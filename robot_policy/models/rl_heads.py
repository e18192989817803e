"""The small networks RL fine-tuning adds on a frozen base, and the observation features they read.

Shared by the algorithms that train them (``robot_policy.algorithms``) and the composite policies that run
them (``robot_policy.policies.composite``), so a checkpoint's weights load into the same modules.

* :class:`NoiseSpace` (DSRL): the latent action w <-> the base's full initial noise x_T.
* :class:`ObservationFeatures`: the latest observation, normalised with the base's statistics, restricted to
  the slots the embodiment uses, clipped to +-3 (ResiP's input), (B, F).
* :class:`ResidualActor` (ResiP): Gaussian MLP, last layer zero-initialised (the composite starts equal to the
  base), fixed log-std; input [features, current base action (used slots, normalised)].
* :class:`ValueCritic`: PPO's separate critic.
* :class:`TanhGaussianActor` (DSRL): a tanh-squashed Gaussian on the latent noise w in a box of +-``w_max``.
* :class:`QNetwork`: LayerNorm MLP critic Q(s, x) (x: w for SAC's and NA's Q^W, real actions for NA's Q^A).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.spaces.unified import UNIFIED_DIM


class NoiseSpace:
    """w (B, execute_horizon * n_used) <-> the base's full initial noise x_T (B, Ta, 128)."""

    def __init__(self, base: FrozenBase, execute_horizon: int, seed: int) -> None:
        self.base = base
        self.execute_horizon = execute_horizon
        self.used = torch.as_tensor(base.used_action_slots)
        self.dim = execute_horizon * int(self.used.numel())
        self.fixed = torch.randn(base.horizon, UNIFIED_DIM, generator=torch.Generator().manual_seed(seed))

    def full_noise(self, w: Tensor) -> Tensor:
        x = self.fixed.expand(w.shape[0], -1, -1).clone()
        x[:, :self.execute_horizon, self.used] = w.reshape(w.shape[0], self.execute_horizon, -1)
        return x

    def executed_actions(self, chunks: Tensor) -> Tensor:
        """Normalised chunks (B, Ta, 128) -> the executed, used part flattened (B, execute_horizon * n_used)."""
        return chunks[:, :self.execute_horizon][:, :, self.used].reshape(chunks.shape[0], -1)


class ObservationFeatures:
    """Latest ``state`` (B, 128) and ``object_state`` (B, <=Do) -> (B, F) features; F = used state slots + Do."""

    def __init__(self, normalizer: Normalizer, state_mask: np.ndarray, object_state_dim: int,
                 clip: float = 3.0) -> None:
        self.normalizer = normalizer
        self.state_slots = torch.as_tensor(np.flatnonzero(np.asarray(state_mask) > 0))
        self.object_state_dim = object_state_dim if fmt.OBJECT_STATE in normalizer.modes else 0
        self.clip = clip
        self.dim = int(self.state_slots.numel()) + self.object_state_dim

    def __call__(self, state: Tensor, object_state: Tensor | None = None) -> Tensor:
        parts = [self.normalizer.normalize(fmt.STATE, state.float())[:, self.state_slots]]
        if self.object_state_dim:
            if object_state is None:
                raise KeyError(f"the base was trained with object_state ({self.object_state_dim}-d); "
                               "the observation has none")
            obj = torch.zeros(state.shape[0], self.object_state_dim)
            obj[:, :object_state.shape[1]] = object_state.float()
            parts.append(self.normalizer.normalize(fmt.OBJECT_STATE, obj))
        return torch.cat(parts, dim=1).clamp(-self.clip, self.clip)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.Tanh,
        layer_norm: bool = False) -> nn.Sequential:
    """Linear-[LayerNorm]-activation blocks, then a linear output layer."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(activation())
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def _orthogonal(net: nn.Sequential, gain: float, last_gain: float) -> None:
    """CleanRL's PPO init: orthogonal weights, zero biases; ``last_gain`` for the output layer."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for m in linears:
        nn.init.orthogonal_(m.weight, gain if m is not linears[-1] else last_gain)
        nn.init.zeros_(m.bias)


class ResidualActor(nn.Module):
    """Gaussian residual policy pi(r | features, a_base). ``forward`` gives the mean (B, A); the std is fixed.

    The output layer's weights and bias are zero, so the mean residual is exactly 0 before training and
    the composite ``a_base + scale * r_mean`` equals the base bit for bit.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256),
                 log_std: float = -1.0) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.net = mlp(obs_dim + action_dim, hidden, action_dim)
        _orthogonal(self.net, math.sqrt(2), 0.0)
        self.register_buffer("log_std", torch.full((action_dim,), float(log_std)))

    def forward(self, features: Tensor, base_action: Tensor) -> Tensor:
        return self.net(torch.cat([features, base_action], dim=1))  # type: ignore[no-any-return]

    def distribution(self, features: Tensor, base_action: Tensor) -> torch.distributions.Normal:
        mean = self(features, base_action)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))  # type: ignore[operator]


class ValueCritic(nn.Module):
    """V(features, a_base) -> (B,)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden, 1)
        _orthogonal(self.net, math.sqrt(2), 1.0)

    def forward(self, features: Tensor, base_action: Tensor) -> Tensor:
        return self.net(torch.cat([features, base_action], dim=1)).squeeze(-1)  # type: ignore[no-any-return]


class TanhGaussianActor(nn.Module):
    """SAC actor on the latent noise: w = w_max * tanh(u), u ~ N(mu(s), sigma(s)). Shapes: (B, F) -> (B, W)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, w_dim: int, hidden: Sequence[int] = (256, 256, 256), w_max: float = 1.5) -> None:
        super().__init__()
        self.obs_dim, self.w_dim, self.w_max = obs_dim, w_dim, float(w_max)
        self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1], nn.ReLU, layer_norm=True)
        self.head = nn.Sequential(nn.LayerNorm(hidden[-1]), nn.ReLU(), nn.Linear(hidden[-1], 2 * w_dim))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.trunk(features)).chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A reparameterised w (B, W) and its log-probability (B,) under the squashed Gaussian."""
        mean, log_std = self(features)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator)
        u = mean + std * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # change of variables for w = w_max * tanh(u), in the numerically stable form of log(1 - tanh^2)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        log_prob = log_prob - w_dim_log(self.w_max, self.w_dim)
        return self.w_max * torch.tanh(u), log_prob

    def deterministic(self, features: Tensor) -> Tensor:
        """The squashed mean: the action evaluation and deployment use."""
        return self.w_max * torch.tanh(self(features)[0])


def w_dim_log(w_max: float, w_dim: int) -> float:
    """log |d w / d tanh(u)| summed over the W dims (the box scaling's share of the log-density)."""
    return w_dim * math.log(w_max)


class QNetwork(nn.Module):
    """Q(features (B, F), x (B, X)) -> (B,), a LayerNorm ReLU MLP (DSRL's critics)."""

    def __init__(self, obs_dim: int, x_dim: int, hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim + x_dim, hidden, 1, nn.ReLU, layer_norm=True)

    def forward(self, features: Tensor, x: Tensor) -> Tensor:
        return self.net(torch.cat([features, x], dim=1)).squeeze(-1)  # type: ignore[no-any-return]
