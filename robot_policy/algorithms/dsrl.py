"""Latent-noise RL on a frozen diffusion policy (DSRL, "Steering Your Diffusion Policy with Latent Space RL").

The base is a black box: a deterministic map (observation, initial noise w) -> action chunk (DPM-Solver++ or
DDIM with eta = 0). The RL agent acts in w-space once per chunk; the decoded chunk's first
``execute_horizon`` actions are executed; the chunk's reward is the mean of (env reward - 1) over the steps
it ran (DSRL's sparse "reward - 1", scaled by 1/execute_horizon so a chunk's reward lies in [-1, 0]).

w is restricted to the embodiment's used action slots over the executed horizon, (execute_horizon x n_used);
the other entries of x_T (unused slots, rows past the executed horizon) are one fixed draw from
``noise_seed``, so the base sees in-distribution noise everywhere and a chunk is a function of (s, w) only.
A time-out ends the episode with no bootstrap, as in residual PPO (succeed within max_steps).

* :class:`DSRLSAC`: tanh-Gaussian SAC on w in a box of +-``w_max``, twin LayerNorm critics with a min
  backup, entropy temperature tuned to a target entropy of 0, ``utd`` gradient steps per chunk collected,
  the first ``warmup_chunks`` chunks with w ~ N(0, I) (clipped to the box).
* :class:`DSRLNA` (noise aliasing): Q^A(s, a) on the real executed actions (normalised, used slots), trained
  by TD with the next action decoded from the actor's w; Q^W(s, w) regressed to Q^A(s, base(s, w)) for
  w ~ N(0, I) and the actor's w; the actor maximises Q^W. The replay holds real actions and the base's
  inputs, so chunks from demonstrations could join it (their w is never needed).
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robot_policy.algorithms.replay import ReplayBuffer
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.data import format as fmt
from robot_policy.keys import ACTION_MASK, CTRL_FREQ, LANGUAGE_ID, OBS_STATE_MASK
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.rl_heads import NoiseSpace, ObservationFeatures, QNetwork, TanhGaussianActor
from robot_policy.spaces.unified import UNIFIED_DIM


@dataclass
class DSRLConfig:
    """DSRL's hyper-parameters (``rl=dsrl_sac`` / ``rl=dsrl_na``)."""

    #: half-width of the box w lives in (DSRL: 1.5)
    w_max: float = 1.5
    #: gradient steps per chunk transition collected (update-to-data ratio; DSRL: 20 on a GPU). On these
    #: CPUs an update of the critics and actor at batch 256 took 125-175 ms with two RL runs sharing the 2
    #: cores (BENCHMARKS.md); with 4, the learner starved the envs (24 env steps/s), so 1
    utd: int = 1
    batch_size: int = 256
    #: discount per chunk
    gamma: float = 0.99
    #: Polyak rate of the target critics
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    #: initial entropy temperature
    init_alpha: float = 0.05
    #: SAC's target entropy, per dimension of w (DSRL: 0). Entropies and log-probabilities enter the losses
    #: divided by w's dimension (hundreds here), which keeps the bonus on the scale of a chunk's reward
    target_entropy: float = 0.0
    #: chunk transitions collected with w ~ N(0, I) before the actor acts and updates start
    warmup_chunks: int = 500
    replay_capacity: int = 100_000
    #: hidden widths of the actor and critics (LayerNorm ReLU MLPs)
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    #: clip of the normalised observation features
    obs_clip: float = 3.0
    #: seed of the fixed draw filling x_T outside w
    noise_seed: int = 0
    #: env steps (over all envs) per logged iteration
    iteration_env_steps: int = 512
    #: DSRL-NA: states decoded through the base per gradient step (half w ~ N(0, I), half the actor's w) to
    #: regress Q^W to Q^A there. The replay's own (s, w, executed actions) triples, decoded when the chunk ran,
    #: join every Q^W step for free; a fresh decode costs a base call (~0.1 s at 64 rows on these CPUs)
    na_decode_batch: int = 16

    def __post_init__(self) -> None:
        if self.w_max <= 0 or self.utd < 1 or self.batch_size < 1:
            raise ValueError("w_max must be > 0, utd and batch_size >= 1")
        if self.na_decode_batch < 0:
            raise ValueError(f"na_decode_batch must be >= 0, got {self.na_decode_batch}")
        if not 0 < self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"gamma and tau must be in (0, 1]; got {self.gamma}, {self.tau}")


class _DSRLBase(abc.ABC):
    """What both variants share: the w space, features, the actor, chunk bookkeeping, the replay. A variant
    adds its critics (:meth:`_modules`, :meth:`_optimizers`) and their :meth:`update`."""

    name = "dsrl"

    def __init__(self, cfg: DSRLConfig, base: FrozenBase, num_envs: int, seed: int = 0,
                 execute_horizon: int | None = None) -> None:
        self.cfg = cfg
        self.base = base
        self.execute_horizon = execute_horizon or base.default_execute_horizon
        self.noise = NoiseSpace(base, self.execute_horizon, cfg.noise_seed)
        self.features = ObservationFeatures(base.normalizer, base.embodiment.state.mask, base.object_state_dim,
                                            cfg.obs_clip)
        torch.manual_seed(seed)
        self.actor = TanhGaussianActor(self.features.dim, self.noise.dim, cfg.hidden, cfg.w_max)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.log_alpha = torch.tensor(float(np.log(cfg.init_alpha)), requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.num_envs = num_envs
        self.chunks_seen = 0
        self.updates = 0
        self.replay = ReplayBuffer(cfg.replay_capacity, self._replay_fields())
        self._pending: dict[int, dict[str, Any]] = {}

    def _replay_fields(self) -> dict[str, tuple[int, ...]]:
        F, W = self.features.dim, self.noise.dim
        return {"feats": (F,), "w": (W,), "reward": (), "next_feats": (F,), "done": ()}

    # ---- acting ---------------------------------------------------------------------------------
    def _feats(self, rollout: VectorRollout) -> Tensor:
        state, obj = rollout.features_state()
        return self.features(state, obj)

    @torch.no_grad()
    def _choose_w(self, feats: Tensor, explore: bool) -> Tensor:
        if not explore:
            return self.actor.deterministic(feats)
        if self.chunks_seen < self.cfg.warmup_chunks:
            w = torch.randn(feats.shape[0], self.noise.dim, generator=self.generator)
            return w.clamp(-self.cfg.w_max, self.cfg.w_max)
        return self.actor.sample(feats, self.generator)[0]

    def _plan_due(self, rollout: VectorRollout, explore: bool) -> tuple[np.ndarray, Tensor, Tensor, Tensor]:
        """Choose w for the due envs and decode it (one base call). Returns (due, feats, w, chunks)."""
        due = rollout.due()
        feats = self._feats(rollout)
        if not due.any():
            return due, feats, torch.zeros(0), torch.zeros(0)
        w = self._choose_w(feats[torch.as_tensor(due)], explore)
        chunks = rollout.plan(self.noise.full_noise(w), due)
        return due, feats, w, chunks

    @torch.no_grad()
    def policy_step(self, rollout: VectorRollout) -> np.ndarray:
        """The composite's deterministic action for every env, (N, 128) unified."""
        self._plan_due(rollout, explore=False)
        return self.base.to_unified(rollout.base_actions())

    # ---- rollout --------------------------------------------------------------------------------
    def _pending_extra(self, rollout: VectorRollout, i: int, chunk: Tensor) -> dict[str, Any]:
        return {}

    def collect_step(self, rollout: VectorRollout) -> tuple[int, list[tuple[int, bool, int]]]:
        """One lockstep env step; transitions of finished chunks go to the replay. Returns (chunk
        transitions added, episodes ended)."""
        due, feats, w, chunks = self._plan_due(rollout, explore=True)
        for j, i in enumerate(np.flatnonzero(due)):
            self._pending[int(i)] = {"feats": feats[i].numpy(), "w": w[j].numpy(), "reward": 0.0, "steps": 0,
                                     **self._pending_extra(rollout, int(i), chunks[j])}
        step = rollout.step(self.base.to_unified(rollout.base_actions()))
        next_feats = self._feats(rollout)
        rows: list[dict[str, Any]] = []
        episodes = []
        for env in range(rollout.n):
            p = self._pending.get(env)
            if p is None:
                continue
            p["reward"] += (step.reward[env] - 1.0) / self.execute_horizon
            p["steps"] += 1
            if step.done[env] or p["steps"] >= self.execute_horizon:
                # a done env was reset: its observation is the next episode's, masked out by done
                rows.append({**p, "next_feats": next_feats[env].numpy(), "done": float(step.done[env])})
                del self._pending[env]
        for i in np.flatnonzero(step.done):
            episodes.append((int(step.finished_seed[i]), bool(step.success[i]), int(step.finished_length[i])))
        if rows:
            fields = self.replay.data.keys()
            self.replay.add(**{k: np.stack([np.asarray(r[k], np.float32) for r in rows]) for k in fields})
            self.chunks_seen += len(rows)
        return len(rows), episodes

    def train_iteration(self, rollout: VectorRollout) -> tuple[dict[str, float], list[tuple[int, bool, int]]]:
        """``iteration_env_steps`` // N lockstep steps, each followed by ``utd`` updates per chunk transition
        it added. Returns the mean update metrics and the episodes that ended."""
        episodes: list[tuple[int, bool, int]] = []
        metrics: dict[str, list[float]] = {}
        for _ in range(max(1, self.cfg.iteration_env_steps // rollout.n)):
            added, ended = self.collect_step(rollout)
            episodes += ended
            if self.chunks_seen < self.cfg.warmup_chunks or len(self.replay) < self.cfg.batch_size:
                continue
            for _ in range(added * self.cfg.utd):
                for k, v in self.update().items():
                    metrics.setdefault(k, []).append(v)
        out = {k: float(np.mean(v)) for k, v in metrics.items()}
        out["replay_size"] = float(len(self.replay))
        return out, episodes

    def _sample_w(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised w and its log-probability per dimension of w (see ``target_entropy``)."""
        w, logp = self.actor.sample(feats, self.generator)
        return w, logp / self.noise.dim

    def _update_alpha(self, log_prob: Tensor) -> float:
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.cfg.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        return float(self.log_alpha.exp().detach())

    @abc.abstractmethod
    def update(self) -> dict[str, float]:
        """One gradient step on a replay batch; returns its losses and statistics."""

    # ---- checkpoints ----------------------------------------------------------------------------
    def policy_state(self) -> dict[str, Tensor]:
        return {f"actor.{k}": v for k, v in self.actor.state_dict().items()}

    def policy_config(self) -> dict[str, Any]:
        return {"w_max": self.cfg.w_max, "hidden": list(self.cfg.hidden), "obs_clip": self.cfg.obs_clip,
                "noise_seed": self.cfg.noise_seed, "obs_dim": self.features.dim, "w_dim": self.noise.dim,
                "execute_horizon": self.execute_horizon}

    @abc.abstractmethod
    def _modules(self) -> dict[str, nn.Module]:
        """The variant's networks by name (what the train state saves besides the actor)."""

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "alpha_opt": self.alpha_opt}

    def train_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, plain = ckpt.modules_to_flat(self._modules(), self._optimizers())
        tensors["log_alpha"] = self.log_alpha.detach().clone()
        tensors.update(self.replay.state_tensors())
        plain.update({"updates": self.updates, "chunks_seen": self.chunks_seen, "replay_size": self.replay.size,
                      "replay_pos": self.replay.pos, "generator": self.generator.get_state().tolist()})
        return tensors, plain

    def load(self, policy: dict[str, Tensor], tensors: dict[str, Tensor], plain: dict[str, Any]) -> None:
        self.actor.load_state_dict(ckpt.strip_prefix(policy, "actor."))
        with torch.no_grad():
            self.log_alpha.copy_(tensors["log_alpha"])
        ckpt.load_modules_from_flat(self._modules(), self._optimizers(), tensors, plain)
        self.updates, self.chunks_seen = int(plain["updates"]), int(plain["chunks_seen"])
        self.replay.load_tensors(tensors, int(plain["replay_size"]), int(plain["replay_pos"]))
        self.generator.set_state(torch.tensor(plain["generator"], dtype=torch.uint8))


class DSRLSAC(_DSRLBase):
    """DSRL-SAC: SAC in w-space. See the module docstring."""

    name = "dsrl_sac"

    def __init__(self, cfg: DSRLConfig, base: FrozenBase, num_envs: int, seed: int = 0,
                 execute_horizon: int | None = None) -> None:
        super().__init__(cfg, base, num_envs, seed, execute_horizon)
        F, W = self.features.dim, self.noise.dim
        self.q1, self.q2 = QNetwork(F, W, cfg.hidden), QNetwork(F, W, cfg.hidden)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        b = self.replay.sample(cfg.batch_size, self.generator)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_w, next_logp = self._sample_w(b["next_feats"])
            q_next = torch.min(self.q1_target(b["next_feats"], next_w), self.q2_target(b["next_feats"], next_w))
            target = b["reward"] + cfg.gamma * (1 - b["done"]) * (q_next - alpha * next_logp)
        q1_data, q2_data = self.q1(b["feats"], b["w"]), self.q2(b["feats"], b["w"])
        q_loss = (q1_data - target).pow(2).mean() + (q2_data - target).pow(2).mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        w, logp = self._sample_w(b["feats"])
        q = torch.min(self.q1(b["feats"], w), self.q2(b["feats"], w))
        actor_loss = (alpha * logp - q).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_value = self._update_alpha(logp)
        _polyak(self.q1, self.q1_target, cfg.tau)
        _polyak(self.q2, self.q2_target, cfg.tau)
        self.updates += 1
        # q_mean (at the actor's w) far above q_data_mean (at the replay's w) is the critic being exploited
        return {"q_loss": float(q_loss.detach()), "actor_loss": float(actor_loss.detach()), "alpha": alpha_value,
                "q_mean": float(q.detach().mean()),
                "q_data_mean": float(torch.min(q1_data, q2_data).detach().mean()),
                "target_mean": float(target.mean()), "entropy": float(-logp.detach().mean())}

    def _modules(self) -> dict[str, nn.Module]:
        return {"q1": self.q1, "q2": self.q2, "q1_target": self.q1_target, "q2_target": self.q2_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super()._optimizers(), "q_opt": self.q_opt}


class DSRLNA(_DSRLBase):
    """DSRL-NA (noise aliasing): Q^A on real actions, Q^W distilled from it through the base."""

    name = "dsrl_na"

    def __init__(self, cfg: DSRLConfig, base: FrozenBase, num_envs: int, seed: int = 0,
                 execute_horizon: int | None = None) -> None:
        if base.cameras:
            raise ValueError(f"dsrl_na keeps the base's inputs in its replay; a base with cameras "
                             f"({base.cameras}) would fill it with images: use dsrl_sac")
        super().__init__(cfg, base, num_envs, seed, execute_horizon)
        F, W = self.features.dim, self.noise.dim
        A = W  # the executed, used actions have the shape of w by construction
        self.qa1, self.qa2 = QNetwork(F, A, cfg.hidden), QNetwork(F, A, cfg.hidden)
        self.qa1_target, self.qa2_target = copy.deepcopy(self.qa1), copy.deepcopy(self.qa2)
        self.qw = QNetwork(F, W, cfg.hidden)
        self.qa_opt = torch.optim.Adam([*self.qa1.parameters(), *self.qa2.parameters()], lr=cfg.critic_lr)
        self.qw_opt = torch.optim.Adam(self.qw.parameters(), lr=cfg.critic_lr)
        self._template: dict[str, Tensor] | None = None

    def _replay_fields(self) -> dict[str, tuple[int, ...]]:
        To, Do = self.base.obs_horizon, self.base.object_state_dim
        fields = {**super()._replay_fields(), "action": (self.noise.dim,), "state_hist": (To, UNIFIED_DIM)}
        if Do:
            fields["object_hist"] = (To, Do)
        return fields

    def _history_arrays(self, rollout: VectorRollout, i: int) -> dict[str, np.ndarray]:
        batch = rollout.histories[i].as_batch()
        if self._template is None:
            self._template = {k: batch[k] for k in (OBS_STATE_MASK, ACTION_MASK, CTRL_FREQ, LANGUAGE_ID)}
        out = {"state_hist": batch[fmt.STATE][0].numpy()}
        if self.base.object_state_dim:
            out["object_hist"] = batch[fmt.OBJECT_STATE][0].numpy()
        return out

    def _pending_extra(self, rollout: VectorRollout, i: int, chunk: Tensor) -> dict[str, Any]:
        return {"action": self.noise.executed_actions(chunk[None])[0].numpy(), **self._history_arrays(rollout, i)}

    def _decode(self, state_hist: Tensor, object_hist: Tensor | None, w: Tensor) -> Tensor:
        """Executed actions (B, W) of the base at stored histories for noise w (B, W): one base call."""
        assert self._template is not None
        B = state_hist.shape[0]
        batch = {k: v.expand(B, *v.shape[1:]) for k, v in self._template.items()}
        batch[fmt.STATE] = state_hist
        if object_hist is not None:
            batch[fmt.OBJECT_STATE] = object_hist
        return self.noise.executed_actions(self.base.sample(batch, self.noise.full_noise(w)))

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        b = self.replay.sample(cfg.batch_size, self.generator)
        alpha = self.log_alpha.exp().detach()
        has_obj = "object_hist" in b
        with torch.no_grad():
            # TD target of Q^A: the next chunk is what the base decodes from the actor's w. Q^W stands in for
            # Q^A at the next state (it is regressed to it), which saves a base call per sample here.
            next_w, next_logp = self._sample_w(b["next_feats"])
            q_next = self.qw(b["next_feats"], next_w)
            target = b["reward"] + cfg.gamma * (1 - b["done"]) * (q_next - alpha * next_logp)
        qa1_data, qa2_data = self.qa1(b["feats"], b["action"]), self.qa2(b["feats"], b["action"])
        qa_loss = (qa1_data - target).pow(2).mean() + (qa2_data - target).pow(2).mean()
        self.qa_opt.zero_grad()
        qa_loss.backward()
        self.qa_opt.step()
        # Q^W(s, w) -> Q^A(s, base(s, w)): on the replay's triples (the chunk that ran was base(s, w) for its w)
        # and on a fresh sub-batch decoded now, half w ~ N(0, I), half the actor's current w
        n = min(cfg.na_decode_batch, cfg.batch_size)
        with torch.no_grad():
            feats_w, w, actions = b["feats"], b["w"], b["action"]
            if n > 0:
                half = n // 2
                w_rand = torch.randn(half, self.noise.dim, generator=self.generator).clamp(-cfg.w_max, cfg.w_max)
                w_actor = self.actor.sample(b["feats"][half:n], self.generator)[0]
                w_fresh = torch.cat([w_rand, w_actor])
                decoded = self._decode(b["state_hist"][:n], b["object_hist"][:n] if has_obj else None, w_fresh)
                feats_w, w = torch.cat([feats_w, b["feats"][:n]]), torch.cat([w, w_fresh])
                actions = torch.cat([actions, decoded])
            qa = torch.min(self.qa1(feats_w, actions), self.qa2(feats_w, actions))
        qw_loss = (self.qw(feats_w, w) - qa).pow(2).mean()
        self.qw_opt.zero_grad()
        qw_loss.backward()
        self.qw_opt.step()
        w_pi, logp = self._sample_w(b["feats"])
        qw_pi = self.qw(b["feats"], w_pi)
        actor_loss = (alpha * logp - qw_pi).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_value = self._update_alpha(logp)
        _polyak(self.qa1, self.qa1_target, cfg.tau)
        _polyak(self.qa2, self.qa2_target, cfg.tau)
        self.updates += 1
        return {"qa_loss": float(qa_loss.detach()), "qw_loss": float(qw_loss.detach()),
                "actor_loss": float(actor_loss.detach()), "alpha": alpha_value, "entropy": float(-logp.detach().mean()),
                "qw_mean": float(qw_pi.detach().mean()),
                "qa_data_mean": float(torch.min(qa1_data, qa2_data).detach().mean()),
                "target_mean": float(target.mean())}

    def _modules(self) -> dict[str, nn.Module]:
        return {"qa1": self.qa1, "qa2": self.qa2, "qa1_target": self.qa1_target, "qa2_target": self.qa2_target,
                "qw": self.qw}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super()._optimizers(), "qa_opt": self.qa_opt, "qw_opt": self.qw_opt}


def _polyak(net: nn.Module, target: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p, tp in zip(net.parameters(), target.parameters(), strict=True):
            tp.mul_(1 - tau).add_(p, alpha=tau)
