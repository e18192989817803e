"""Few-step distillation of a diffusion policy: the losses that train a 1- or 2-step student.

The student is the teacher's own network (an :class:`~robot_policy.models.rdt.RDTPolicyModel`, warm-started
from the teacher's weights) run as DDIM with eta 0 for K = ``steps`` denoiser calls. Because it is the same
architecture and an ordinary sampler, its checkpoint is an ordinary diffusion checkpoint whose
``diffusion.sampler`` / ``num_inference_steps`` say ddim / K (:func:`student_diffusion_config`), and the map
initial noise w -> chunk is kept: a latent-noise (DSRL) actor trained on the teacher applies to the student.

A shallower student (``student_depth`` < the teacher's depth) makes each denoiser call cheaper, which a
1-step student needs to be more than ``teacher steps`` times faster per chunk (the per-chunk glue is not
free). Its config is the teacher's with ``depth`` replaced; every parameter outside the transformer blocks
(embedders, adaptors, position embeddings, observation encoder, final layer) is the teacher's, and its blocks
are teacher blocks chosen by :func:`student_blocks`.

Losses (``DistillConfig.loss``, registry :data:`LOSSES`), all on normalised actions:

* ``same_noise`` (RL-100's consistency distillation by regression): w ~ N(0, I) (B, Ta, 128); the target is
  the teacher's deterministic K_T-step sample from w (no gradient); the student runs its K DDIM steps from
  the same w with the gradient through every step; MSE over the executed part of the chunk (the first
  ``execute_horizon`` actions) and the used action slots.
* ``ctm`` (Consistency Policy): a consistency-trajectory loss plus the denoising loss, 1:1, with an EMA copy
  of the student as the target network. With the DDIM parametrisation the network's x0 estimate at
  (x_t, t) defines the jump G(x_t, t, s) to any earlier time s. Points x_t are noised teacher samples
  (so the loss needs no demonstration actions and works on rollout states); the teacher advances x_t to u by
  one DDIM step of at most its own sampler's stride; the prediction G_theta(x_t, t, s) and the target
  G_ema(x_u, u, s) are compared after both are mapped to the clean sample by the EMA network.
* ``regress_actions`` (ResiP's teacher-student, for a residual composite teacher): the student's K-step
  chunk from w regresses given target chunks (the composite's executed actions), executed part, used slots.

Shape letters: B batch, Ta horizon, Da = 128, He executed actions per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robot_policy.models.diffusion import DiffusionConfig, NoiseSchedule, Sampler
from robot_policy.models.rdt import Conditions, ModelInputs, RDTPolicyModel


@dataclass
class DistillConfig:
    """The distillation objective and its optimisation (``robot-policy distill``'s top-level options)."""

    #: student denoiser calls per chunk (DDIM, eta 0); 1 or 2 is what distillation is for
    steps: int = 1
    #: transformer blocks of the student (>= 2, at most the teacher's depth); null = the teacher's depth. A
    #: shallower student's denoiser call is cheaper; its blocks are the teacher's, chosen so that the first and
    #: (for an even depth) the last stay and each keeps its kind of cross-attention (language / observations)
    student_depth: int | None = None
    #: loss: same_noise (regress the teacher's chunk from the same noise), ctm (consistency-trajectory +
    #: denoising, EMA target) or regress_actions (given target chunks: a residual composite's executed
    #: actions); null = regress_actions for a residual composite teacher, else same_noise
    loss: str | None = None
    #: teacher's sampler: ddim or dpmsolver++ (deterministic ones); null = the teacher checkpoint's own
    teacher_sampler: str | None = None
    #: teacher's denoising steps; null = the teacher checkpoint's own
    teacher_steps: int | None = None
    #: ctm only: weight of the denoising loss against the consistency-trajectory loss (Consistency Policy: 1)
    dsm_weight: float = 1.0
    #: peak learning rate of AdamW (warm start: lower than BC's 3e-4)
    lr: float = 1e-4
    #: AdamW's (beta1, beta2)
    betas: tuple[float, float] = (0.95, 0.999)
    #: AdamW's decoupled weight decay
    weight_decay: float = 1e-6
    #: global L2 norm of gradients is clipped to this
    grad_clip: float = 1.0
    #: steps of linear learning-rate warm-up from 0, then cosine decay
    warmup_steps: int = 100
    #: final learning rate as a fraction of lr
    min_lr_ratio: float = 0.0
    #: upper bound of the EMA decay of the saved (and, for ctm, target) weights
    ema_max_decay: float = 0.999
    #: exponent of the EMA decay warm-up, 1 - (1 + step)^-ema_power
    ema_power: float = 0.75

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.steps < 1:
            raise ValueError(f"steps: the student's denoiser calls must be >= 1, got {self.steps}")
        if self.student_depth is not None and self.student_depth < 2:
            raise ValueError(f"student_depth: must be >= 2 (one language and one observation cross-attention "
                             f"block) or null for the teacher's depth, got {self.student_depth}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"loss: unknown {self.loss!r}; losses: {', '.join(LOSSES)}")
        if self.teacher_sampler is not None and self.teacher_sampler not in ("ddim", "dpmsolver++"):
            raise ValueError(f"teacher_sampler: {self.teacher_sampler!r} is not a deterministic sampler; "
                             "use ddim (eta 0) or dpmsolver++")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ValueError(f"teacher_steps: must be >= 1, got {self.teacher_steps}")
        if self.dsm_weight < 0:
            raise ValueError(f"dsm_weight: must be >= 0, got {self.dsm_weight}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.warmup_steps < 0:
            raise ValueError(f"lr and grad_clip must be > 0 and warmup_steps >= 0, got {self.lr}, "
                             f"{self.grad_clip}, {self.warmup_steps}")
        if not 0 < self.ema_max_decay < 1:
            raise ValueError(f"ema_max_decay: must be in (0, 1), got {self.ema_max_decay}")


def student_diffusion_config(teacher: DiffusionConfig, steps: int) -> DiffusionConfig:
    """The student's diffusion settings: the teacher's schedule and prediction type, sampling DDIM (eta 0)
    with ``steps`` calls. What its checkpoint records, so every loader samples it as it was trained."""
    return dataclasses.replace(teacher, sampler="ddim", num_inference_steps=steps, eta=0.0)


def student_sampler(teacher: DiffusionConfig, steps: int) -> Sampler:
    return Sampler(student_diffusion_config(teacher, steps))


#: state-dict prefix of the transformer blocks (``RDT.blocks``): the only parameters a shallow student drops
BLOCKS = "rdt.blocks."


def student_blocks(teacher_depth: int, student_depth: int) -> list[int]:
    """Which teacher block each student block copies: ``out[j]`` is the teacher's block index for student block j.

    Block j cross-attends to language for even j and to observations for odd j (:class:`RDT`), so student block
    j takes the teacher block of the same parity nearest to the evenly spaced position j (Mt - 1) / (Ms - 1)
    (ties to the earlier block). The first block is the teacher's first (it reads the embeddings the copied
    adaptors make), for an even depth of an even-depth teacher the last is the teacher's last (the copied final
    layer reads it), the rest spread over the depth in order; equal depths give the identity. Depth 2 of 4:
    [0, 3] (language block 0, observation block 3); 3 of 4: [0, 1, 2]; 4 of 6: [0, 1, 4, 5].

    Raises:
        ValueError: ``student_depth`` is below 2 or above ``teacher_depth``.
    """
    if not 2 <= student_depth <= teacher_depth:
        raise ValueError(f"student_depth={student_depth}: choose 2..{teacher_depth} (the teacher's depth; 2 keeps "
                         "one language and one observation cross-attention block)")
    out = []
    for j in range(student_depth):
        target = j * (teacher_depth - 1) / (student_depth - 1)
        same_kind = range(j % 2, teacher_depth, 2)
        out.append(min(same_kind, key=lambda i: (abs(i - target), i)))
    if out != sorted(set(out)):  # cannot happen for Ms <= Mt (tests check every pair to 28); guards the rule
        raise AssertionError(f"student_blocks({teacher_depth}, {student_depth}) = {out} is not increasing")
    return out


def student_state_dict(teacher_state: Mapping[str, Tensor], blocks: Sequence[int]) -> dict[str, Tensor]:
    """The shallow student's weights from the teacher's state dict: every entry outside ``rdt.blocks.`` as it
    is, and student block j = teacher block ``blocks[j]`` (:func:`student_blocks`). Tensors are cloned."""
    out = {k: v.clone() for k, v in teacher_state.items() if not k.startswith(BLOCKS)}
    for j, i in enumerate(blocks):
        src = f"{BLOCKS}{i}."
        out.update({f"{BLOCKS}{j}.{k[len(src):]}": v.clone() for k, v in teacher_state.items() if k.startswith(src)})
    return out


def warm_started_student(teacher: RDTPolicyModel, steps: int, depth: int | None = None
                         ) -> tuple[RDTPolicyModel, list[int]]:
    """The student network warm-started from ``teacher``: its config is the teacher's with the student's
    sampler (ddim / ``steps``) and ``depth`` blocks (None = the teacher's), its weights are
    :func:`student_state_dict`'s (loaded strictly). Returns it (on the teacher's device) and its block map."""
    cfg = teacher.cfg
    blocks = student_blocks(cfg.depth, cfg.depth if depth is None else depth)
    student_cfg = dataclasses.replace(cfg, depth=len(blocks), diffusion=student_diffusion_config(cfg.diffusion, steps))
    device = next(teacher.parameters()).device
    student = RDTPolicyModel(student_cfg).to(device)
    student.load_state_dict(student_state_dict(teacher.state_dict(), blocks))
    return student, blocks


def run_sampler(model: RDTPolicyModel, cond: Conditions, noise: Tensor, sampler: Sampler) -> Tensor:
    """The chunk (B, Ta, Da) that ``sampler`` draws from ``noise`` (B, Ta, Da), masked slots zero, with the
    gradient through every step: the student's forward pass in training. The same updates as
    :meth:`RDTPolicyModel.sample` (one :class:`Sampler`), so training and inference compute the same chunk."""
    if not sampler.deterministic:
        raise ValueError(f"the student's sampler ({sampler.kind}, eta {sampler.eta}) must be deterministic")
    x = noise
    for t in sampler.start():
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
        x = sampler.step(model.denoise(x, t_batch, cond), t, x)
    return x * cond.action_mask[:, None].to(x.dtype)


def executed_mse(pred: Tensor, target: Tensor, action_mask: Tensor, execute_horizon: int) -> Tensor:
    """Mean squared error over the first ``execute_horizon`` actions and the used slots.

    Args:
        pred, target: (B, Ta, Da) normalised chunks.
        action_mask: (B, Da) 0/1, 1 on the slots the embodiment commands.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if not 1 <= execute_horizon <= pred.shape[1]:
        raise ValueError(f"execute_horizon={execute_horizon}: choose 1..{pred.shape[1]} (the chunk)")
    diff = (pred - target)[:, :execute_horizon]  # (B, He, Da)
    mask = action_mask[:, None].to(diff.dtype)  # (B, 1, Da)
    count = (mask.sum() * execute_horizon).clamp(min=1.0)
    return (diff.square() * mask).sum() / count


@dataclass
class DistillModels:
    """The networks a loss may read: the student (trained), the frozen teacher with its sampler, the EMA
    target (ctm), and the student's sampler."""

    student: RDTPolicyModel
    teacher: RDTPolicyModel
    teacher_sampler: Sampler
    student_sampler: Sampler
    target: RDTPolicyModel | None = None


@dataclass
class DistillBatch:
    """One step's inputs: conditions (normalised), the initial noise w (B, Ta, Da), a generator for the
    loss's own draws, and target chunks (B, Ta, Da) where the loss regresses given actions."""

    inputs: ModelInputs
    noise: Tensor
    generator: torch.Generator
    execute_horizon: int
    targets: Tensor | None = None


LossFn = Callable[[DistillModels, DistillBatch, DistillConfig], tuple[Tensor, dict[str, float]]]


@torch.no_grad()
def teacher_chunk(models: DistillModels, inputs: ModelInputs, noise: Tensor) -> Tensor:
    """The teacher's deterministic sample from ``noise``: (B, Ta, Da), masked slots zero."""
    return models.teacher.sample(inputs, noise=noise, sampler=models.teacher_sampler)


def same_noise_loss(models: DistillModels, batch: DistillBatch, cfg: DistillConfig) -> tuple[Tensor, dict[str, float]]:
    """Student K-step chunk vs teacher chunk from the same w (see the module docstring)."""
    target = teacher_chunk(models, batch.inputs, batch.noise)
    pred = run_sampler(models.student, models.student.encode(batch.inputs), batch.noise, models.student_sampler)
    loss = executed_mse(pred, target, batch.inputs.action_mask, batch.execute_horizon)
    return loss, {"same_noise_mse": float(loss.detach())}


def regress_actions_loss(models: DistillModels, batch: DistillBatch,
                         cfg: DistillConfig) -> tuple[Tensor, dict[str, float]]:
    """Student K-step chunk from w vs the given target chunks (executed part, used slots)."""
    if batch.targets is None:
        raise ValueError("loss=regress_actions needs target chunks (a residual teacher's executed actions)")
    pred = run_sampler(models.student, models.student.encode(batch.inputs), batch.noise, models.student_sampler)
    loss = executed_mse(pred, batch.targets, batch.inputs.action_mask, batch.execute_horizon)
    return loss, {"action_mse": float(loss.detach())}


def ddim_jump(schedule: NoiseSchedule, x_t: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """DDIM (eta 0) from time t to an earlier time s given the clean estimate x0: the noise implied at t is
    kept. ``t`` (B,) in [0, T); ``s`` (B,) in [-1, T), -1 = the clean sample (alpha_bar 1)."""
    ab = schedule.alphas_cumprod.to(x_t.device, x_t.dtype)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    ab_t = ab[t].reshape(shape)
    ab_s = torch.where(s >= 0, ab[s.clamp(min=0)], torch.ones_like(ab[0])).reshape(shape)
    eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps


def _x0(model: RDTPolicyModel, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
    """The model's clean-sample estimate at (x_t, t), whatever its prediction type."""
    return model.schedule.predict_x0(model.denoise(x_t, t, cond), x_t, t)


def _to_clean(model: RDTPolicyModel, x_s: Tensor, s: Tensor, cond: Conditions) -> Tensor:
    """G(x_s, s, 0): x_s itself where s = -1 (already clean), else the model's x0 estimate at s."""
    x0 = _x0(model, x_s, s.clamp(min=0), cond)
    return torch.where((s >= 0).reshape(-1, 1, 1), x0, x_s)


def ctm_loss(models: DistillModels, batch: DistillBatch, cfg: DistillConfig) -> tuple[Tensor, dict[str, float]]:
    """Consistency-trajectory loss + ``dsm_weight`` x denoising loss (see the module docstring).

    Draws, per sample: t in [1, T); u in [max(0, t - stride), t) with stride the teacher sampler's step
    (T / its steps), so the teacher's one DDIM step t -> u is no longer than its own; s in [-1, u].
    """
    if models.target is None:
        raise ValueError("loss=ctm needs the EMA target network")
    student, teacher, target = models.student, models.teacher, models.target
    schedule = student.schedule
    inputs, g = batch.inputs, batch.generator
    T = schedule.num_train_timesteps
    x0_data = teacher_chunk(models, inputs, batch.noise)  # (B, Ta, Da): the teacher's samples are the data
    B, dev = x0_data.shape[0], x0_data.device
    stride = max(1, T // models.teacher_sampler.num_steps)
    t = torch.randint(1, T, (B,), generator=g).to(dev)
    u = (t - 1 - (torch.rand(B, generator=g).to(dev) * torch.clamp(t, max=stride)).long()).clamp(min=0)
    s = (torch.rand(B, generator=g).to(dev) * (u + 2).float()).long() - 1  # in [-1, u]
    eps = torch.randn(x0_data.shape, generator=g).to(x0_data)
    x_t = schedule.add_noise(x0_data, eps, t)
    cond = student.encode(inputs)
    pred_s = ddim_jump(schedule, x_t, _x0(student, x_t, t, cond), t, s)
    with torch.no_grad():
        cond_teacher, cond_target = teacher.encode(inputs), target.encode(inputs)
        x_u = ddim_jump(schedule, x_t, _x0(teacher, x_t, t, cond_teacher), t, u)
        target_s = ddim_jump(schedule, x_u, _x0(target, x_u, u, cond_target), u, s)
        target_0 = _to_clean(target, target_s, s, cond_target)
    pred_0 = _to_clean(target, pred_s, s, cond_target)  # gradient through the frozen target's input
    ctm = executed_mse(pred_0, target_0, inputs.action_mask, batch.execute_horizon)
    t_dsm = torch.randint(0, T, (B,), generator=g).to(dev)
    dsm = student.compute_loss(inputs, x0_data, noise=torch.randn(x0_data.shape, generator=g).to(x0_data), t=t_dsm)
    return ctm + cfg.dsm_weight * dsm, {"ctm": float(ctm.detach()), "dsm": float(dsm.detach())}


#: loss name -> function (``DistillConfig.loss``)
LOSSES: dict[str, LossFn] = {
    "same_noise": same_noise_loss,
    "ctm": ctm_loss,
    "regress_actions": regress_actions_loss,
}


def distill_loss(models: DistillModels, batch: DistillBatch, cfg: DistillConfig) -> tuple[Tensor, dict[str, float]]:
    """The configured loss and its parts (floats, for logging)."""
    if cfg.loss is None:
        raise ValueError("loss: not resolved (null means the teacher's default; the pipeline chooses it)")
    return LOSSES[cfg.loss](models, batch, cfg)


@torch.no_grad()
def same_noise_mse(models: DistillModels, student: RDTPolicyModel, inputs: ModelInputs, noise: Tensor,
                   execute_horizon: int, targets: Tensor | None = None) -> float:
    """The validation metric of every loss: ``student``'s K-step chunk vs the teacher's from the same noise
    (or vs ``targets`` when given), executed part, used slots."""
    target = teacher_chunk(models, inputs, noise) if targets is None else targets
    pred = student.sample(inputs, noise=noise, sampler=models.student_sampler)
    return float(executed_mse(pred, target, inputs.action_mask, execute_horizon))
