"""Residual PPO on a frozen diffusion policy (ResiP, "From Imitation to Refinement"), CleanRL style.

The base is sampled with a deterministic sampler; its chunk is queued and executed step by step. Every
env step a Gaussian residual policy sees [normalised observation clipped to +-3, current base action] and
adds ``a = a_base + scale * r`` in normalised action space (used slots only). Its last layer starts at zero,
so before any update the composite is the base. PPO's ratio is on the pre-scale residual ``r``; the critic
is a separate network on the same input plus the episode's elapsed fraction (``critic_time``). Reward: the
env's sparse success (1 on the success step, which ends the episode), divided by a running std of the
discounted return. A time-out ends the episode with no bootstrap: the task is "succeed within max_steps",
so running out of time is failure, not a cut.

Read top to bottom: config, the rollout (``collect``), GAE, the update, the step the composite takes.
Hyper-parameters are METHODS.md's (gamma 0.999, lambda 0.95, clip 0.2, no entropy bonus, value coef 1, grad
norm 1, target-KL early stop, actor lr 3e-4, critic lr 5e-3, residual scale 0.1, log-std -1), with the
batch scaled from ResiP's GPU thousands of envs to this machine's few (``rollout_steps`` x envs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robot_policy.algorithms.running_stats import RewardScaler
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.rl_heads import ObservationFeatures, ResidualActor, ValueCritic


@dataclass
class ResidualPPOConfig:
    """Residual PPO's hyper-parameters (``rl=residual_ppo``)."""

    #: env steps per env per update (the batch is this x num_envs)
    rollout_steps: int = 256
    #: executed action = a_base + residual_scale * r, in normalised action units (minmax: [-1, 1] = data range)
    residual_scale: float = 0.1
    #: log-std of the residual Gaussian (pre-scale); fixed unless ``log_std_final`` is set
    log_std: float = -1.0
    #: if set, the log-std moves linearly from ``log_std`` to this over the env-step budget (null: fixed, as in
    #: ResiP). Why: evaluation uses the mean residual, but PPO optimises the noisy policy; with the weak BC the
    #: exploration noise itself breaks stalls (the noisy rollouts succeed more often than the mean), so
    #: shrinking it makes the mean carry what the noise did
    log_std_final: float | None = None
    #: hidden widths of the residual actor and of the critic
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 1.0
    max_grad_norm: float = 1.0
    #: stop an update's epochs once the approximate KL to the rollout policy exceeds this (null: never)
    target_kl: float | None = 0.1
    actor_lr: float = 3e-4
    critic_lr: float = 5e-3
    update_epochs: int = 8
    num_minibatches: int = 4
    #: normalise advantages per minibatch
    norm_adv: bool = True
    #: clip of the normalised observation features (ResiP: 3)
    obs_clip: float = 3.0
    #: learning-rate schedule over the run's env-step budget (``total_env_steps``): constant, linear or cosine
    #: decay to 0 (ResiP: cosine). Only env steps drive it, so a seeded run is reproducible; a run stopped by
    #: ``max_wall_minutes`` first ends part-way along it
    lr_schedule: str = "cosine"
    #: the critic also sees the episode's elapsed fraction (control steps / the task's max_steps). A time-out is
    #: a failure here (no bootstrap), so a state's value depends on the time left: a stall at step 190 of 200
    #: is lost, the same stall at step 60 is not, and a critic blind to time averages the two (Pardo et al.,
    #: "Time Limits in Reinforcement Learning", 2018). Only the critic sees it: the actor, and so the deployed
    #: composite, needs no episode clock
    critic_time: bool = True

    def __post_init__(self) -> None:
        if self.rollout_steps < 1 or self.update_epochs < 1 or self.num_minibatches < 1:
            raise ValueError("rollout_steps, update_epochs and num_minibatches must be >= 1")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1]; got {self.gamma}, {self.gae_lambda}")
        if self.residual_scale <= 0:
            raise ValueError(f"residual_scale must be > 0, got {self.residual_scale}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")


#: learning-rate multiplier as a function of the fraction of the budget used, in [0, 1]
LR_SCHEDULES = {
    "constant": lambda frac: 1.0,
    "linear": lambda frac: 1.0 - frac,
    "cosine": lambda frac: 0.5 * (1.0 + math.cos(math.pi * frac)),
}


def compute_gae(rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float,
                lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a rollout of T steps of N envs.

    Args:
        rewards, values, dones: (T, N); ``dones[t]`` = the episode ended with step t (no bootstrap past it).
        last_value: (N,) V of the observation after the last step.
    Returns:
        advantages and returns (= advantages + values), (T, N).
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(T)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        next_adv = delta + gamma * lam * not_done * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


class ResidualPPO:
    """The residual actor, the critic, their optimisers and the reward scaler. See the module docstring."""

    name = "residual_ppo"

    def __init__(self, cfg: ResidualPPOConfig, base: FrozenBase, num_envs: int, seed: int = 0,
                 execute_horizon: int | None = None) -> None:
        self.cfg = cfg
        self.base = base
        self.features = ObservationFeatures(base.normalizer, base.embodiment.state.mask, base.object_state_dim,
                                            cfg.obs_clip)
        self.used = torch.as_tensor(base.used_action_slots)
        act_dim = int(self.used.numel())
        torch.manual_seed(seed)  # network initialisation; every later draw uses self.generator
        self.actor = ResidualActor(self.features.dim, act_dim, cfg.hidden, cfg.log_std)
        self.critic = ValueCritic(self.features.dim + int(cfg.critic_time), act_dim, cfg.hidden)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
        self.reward_scaler = RewardScaler(num_envs, cfg.gamma)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.updates = 0
        self.lr_multiplier = 1.0

    def set_progress(self, fraction: float) -> None:
        """Set the learning rates (``lr_schedule``) and, with ``log_std_final``, the exploration log-std for
        ``fraction`` (in [0, 1]) of the run's env-step budget used."""
        fraction = min(max(fraction, 0.0), 1.0)
        self.lr_multiplier = max(0.0, LR_SCHEDULES[self.cfg.lr_schedule](fraction))
        if self.cfg.log_std_final is not None:
            log_std = self.cfg.log_std + fraction * (self.cfg.log_std_final - self.cfg.log_std)
            self.actor.log_std.fill_(log_std)  # type: ignore[operator]
        for opt, lr in ((self.actor_opt, self.cfg.actor_lr), (self.critic_opt, self.cfg.critic_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * self.lr_multiplier

    # ---- acting ---------------------------------------------------------------------------------
    def _inputs(self, rollout: VectorRollout) -> tuple[Tensor, Tensor, Tensor]:
        """Plan the due envs (one base call), then (features (N, F), base action (N, A), full base (N, 128))."""
        due = rollout.due()
        if due.any():
            rollout.plan(rollout.draw_noise(due), due)
        a_base_full = rollout.base_actions()
        state, obj = rollout.features_state()
        return self.features(state, obj), a_base_full[:, self.used], a_base_full

    def _critic_features(self, feats: Tensor, rollout: VectorRollout) -> Tensor:
        """The critic's input features: the actor's, plus the elapsed fraction with ``critic_time``, (N, F[+1])."""
        if not self.cfg.critic_time:
            return feats
        return torch.cat([feats, rollout.elapsed_fraction()[:, None]], dim=1)

    def _execute(self, a_base_full: Tensor, residual: Tensor) -> np.ndarray:
        """Unified (N, 128) actions of ``a_base + scale * residual`` (normalised, used slots)."""
        a = a_base_full.clone()
        a[:, self.used] = a[:, self.used] + self.cfg.residual_scale * residual
        return self.base.to_unified(a)

    @torch.no_grad()
    def policy_step(self, rollout: VectorRollout) -> np.ndarray:
        """The composite's deterministic action (mean residual) for every env, (N, 128) unified."""
        feats, a_base, a_full = self._inputs(rollout)
        return self._execute(a_full, self.actor(feats, a_base))

    # ---- rollout --------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, rollout: VectorRollout) -> tuple[dict[str, Tensor], list[tuple[int, bool, int]]]:
        """``rollout_steps`` lockstep steps with sampled residuals. Returns the batch (T, N, ...) and the
        (seed, success, length) of every episode that ended."""
        T = self.cfg.rollout_steps
        buf: dict[str, list[Tensor]] = {k: [] for k in ("feats", "critic_feats", "a_base", "residual", "logp",
                                                         "value", "reward", "done")}
        episodes: list[tuple[int, bool, int]] = []
        for _ in range(T):
            feats, a_base, a_full = self._inputs(rollout)
            dist = self.actor.distribution(feats, a_base)
            residual = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=self.generator)
            critic_feats = self._critic_features(feats, rollout)  # before the step: it resets finished envs
            step = rollout.step(self._execute(a_full, residual))
            done = step.done
            reward = self.reward_scaler(step.reward, done)
            for key, value in (("feats", feats), ("critic_feats", critic_feats), ("a_base", a_base),
                               ("residual", residual), ("logp", dist.log_prob(residual).sum(-1)),
                               ("value", self.critic(critic_feats, a_base)),
                               ("reward", torch.as_tensor(reward, dtype=torch.float32)),
                               ("done", torch.as_tensor(done, dtype=torch.float32))):
                buf[key].append(value)
            for i in np.flatnonzero(done):
                episodes.append((int(step.finished_seed[i]), bool(step.success[i]), int(step.finished_length[i])))
        batch = {k: torch.stack(v) for k, v in buf.items()}
        feats, a_base, _ = self._inputs(rollout)
        last_value = self.critic(self._critic_features(feats, rollout), a_base)
        batch["advantages"], batch["returns"] = compute_gae(batch["reward"], batch["value"], batch["done"],
                                                            last_value, self.cfg.gamma, self.cfg.gae_lambda)
        return batch, episodes

    # ---- update ---------------------------------------------------------------------------------
    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """PPO's clipped-surrogate update of the residual and a value regression of the critic."""
        cfg = self.cfg
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
        n = flat["reward"].shape[0]
        mb = max(1, n // cfg.num_minibatches)
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clip_frac": []}
        epochs_run = 0
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.generator)
            kl_exceeded = False
            for start in range(0, n, mb):
                idx = perm[start:start + mb]
                dist = self.actor.distribution(flat["feats"][idx], flat["a_base"][idx])
                logp = dist.log_prob(flat["residual"][idx]).sum(-1)
                log_ratio = logp - flat["logp"][idx]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # the unbiased k3 estimator (CleanRL)
                    stats["approx_kl"].append(float(approx_kl))
                    stats["clip_frac"].append(float(((ratio - 1).abs() > cfg.clip_coef).float().mean()))
                adv = flat["advantages"][idx]
                if cfg.norm_adv and adv.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                entropy = dist.entropy().sum(-1).mean()
                value = self.critic(flat["critic_feats"][idx], flat["a_base"][idx])
                v_loss = 0.5 * (value - flat["returns"][idx]).pow(2).mean()
                loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
                self.actor_opt.zero_grad()
                self.critic_opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
                nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.actor_opt.step()
                self.critic_opt.step()
                stats["policy_loss"].append(float(pg_loss.detach()))
                stats["value_loss"].append(float(v_loss.detach()))
                if cfg.target_kl is not None and float(approx_kl) > cfg.target_kl:
                    kl_exceeded = True
                    break
            epochs_run += 1
            if kl_exceeded:
                break
        self.updates += 1
        values, returns = flat["value"], flat["returns"]
        explained = 1 - float((returns - values).var() / (returns.var() + 1e-8))
        return {**{k: float(np.mean(v)) for k, v in stats.items() if v}, "epochs": float(epochs_run),
                "lr_multiplier": self.lr_multiplier,
                "explained_variance": explained, "reward_std": float(np.sqrt(self.reward_scaler.rms.var))}

    def train_iteration(self, rollout: VectorRollout) -> tuple[dict[str, float], list[tuple[int, bool, int]]]:
        """One rollout and one update. Returns the update's metrics and the episodes that ended."""
        batch, episodes = self.collect(rollout)
        return self.update(batch), episodes

    # ---- checkpoints ----------------------------------------------------------------------------
    def policy_state(self) -> dict[str, Tensor]:
        """What the composite needs at inference: the residual actor's weights."""
        return {f"actor.{k}": v for k, v in self.actor.state_dict().items()}

    def policy_config(self) -> dict[str, Any]:
        return {"residual_scale": self.cfg.residual_scale, "hidden": list(self.cfg.hidden),
                "log_std": self.cfg.log_std, "obs_clip": self.cfg.obs_clip,
                "obs_dim": self.features.dim, "action_dim": int(self.used.numel())}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def train_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Critic, optimiser moments (tensors) and scalar state (JSON) for resume."""
        tensors, plain = ckpt.modules_to_flat({"critic": self.critic}, self._optimizers())
        plain.update({"updates": self.updates, "reward_scaler": self.reward_scaler.state_dict(),
                      "generator": self.generator.get_state().tolist()})
        return tensors, plain

    def load(self, policy: dict[str, Tensor], tensors: dict[str, Tensor], plain: dict[str, Any]) -> None:
        self.actor.load_state_dict(ckpt.strip_prefix(policy, "actor."))
        ckpt.load_modules_from_flat({"critic": self.critic}, self._optimizers(), tensors, plain)
        self.updates = int(plain["updates"])
        self.reward_scaler.load_state_dict(plain["reward_scaler"])
        self.generator.set_state(torch.tensor(plain["generator"], dtype=torch.uint8))
