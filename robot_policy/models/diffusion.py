"""Diffusion math: the DDPM training schedule and the samplers, behind one interface.

Training (pure torch, no extra dependency)::

    schedule = NoiseSchedule(cfg)                      # 1000 steps, squaredcos_cap_v2, predicts x0 (RDT)
    t = schedule.sample_timesteps(B, device)           # (B,) long in [0, T)
    x_t = schedule.add_noise(x0, noise, t)
    loss = F.mse_loss(model(x_t, t), schedule.training_target(x0, noise, t))

Sampling: every sampler takes the initial noise as an argument, so the map noise -> sample is a
function the caller controls (latent-noise RL acts on that noise; distillation regresses on it)::

    x0 = sample(model_fn, noise, cfg, sampler="ddim", num_steps=4, eta=0.0)   # deterministic map

``model_fn(x_t, t)`` takes x_t (B, Ta, Da) and t (B,) long and returns the model output in the
configured prediction type. A deployment backend that runs the network outside Python drives the same
update with the step API::

    s = Sampler(cfg, "dpmsolver++", 5)
    x = noise
    for t in s.start():                 # a new trajectory: clears the multistep history
        x = s.step(backend(x, t), t, x)

The update rules are diffusers' DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler (imported
lazily, on the first Sampler), configured so few-step sampling starts at the last training step (t = T-1,
pure noise) and ends on the clean sample: "trailing" spacing for DDPM/DDIM, "linspace" for DPM-Solver++,
whose last step is first order down to sigma 0. No sample clipping: normalised actions may leave [-1, 1].
diffusers' DDIM steps from t to t - T // S, so when S does not divide T the update can land one training
step away from the next evaluated timestep (exact for S in 1, 2, 4, 5, 8, 10, 20, 25, 40, 50, ...).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
SAMPLERS = ("ddpm", "ddim", "dpmsolver++")

ModelFn = Callable[[Tensor, Tensor], Tensor]
#: ``hook(x0_hat, t) -> x0``: edits the clean-sample estimate (B, ...) at diffusion step ``t`` before the update
X0Hook = Callable[[Tensor, int], Tensor]


@dataclass
class DiffusionConfig:
    """Noise schedule, prediction target and default sampler. Defaults are RDT's."""

    num_train_timesteps: int = 1000  # T: discrete diffusion steps used in training
    beta_schedule: str = "squaredcos_cap_v2"  # "squaredcos_cap_v2" (cosine, RDT) or "linear" (DDPM paper)
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    prediction_type: str = "sample"  # what the network predicts: "sample" (x0, RDT), "epsilon", "v_prediction"
    sampler: str = "dpmsolver++"  # default inference sampler: "ddpm", "ddim", "dpmsolver++"
    num_inference_steps: int = 5  # RDT: DPM-Solver++ with 5 steps
    eta: float = 0.0  # DDIM only: 0 = deterministic (noise -> sample is a function), 1 = DDPM-like

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"diffusion.num_train_timesteps: must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"diffusion.beta_schedule: unknown {self.beta_schedule!r}; "
                             f"valid: {', '.join(BETA_SCHEDULES)}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"diffusion.beta_start/beta_end: need 0 < start < end < 1, got "
                             f"{self.beta_start}, {self.beta_end}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"diffusion.prediction_type: unknown {self.prediction_type!r}; "
                             f"valid: {', '.join(PREDICTION_TYPES)}")
        _check_sampler(self.sampler, "diffusion.sampler")
        _check_steps(self.num_inference_steps, self.num_train_timesteps, "diffusion.num_inference_steps")
        if self.eta < 0:
            raise ValueError(f"diffusion.eta: must be >= 0, got {self.eta}")


def _check_sampler(kind: str, where: str) -> None:
    if kind not in SAMPLERS:
        raise ValueError(f"{where}: unknown sampler {kind!r}; valid: {', '.join(SAMPLERS)}")


def _check_steps(steps: int, total: int, where: str) -> None:
    if not 1 <= steps <= total:
        raise ValueError(f"{where}: must be in [1, {total}], got {steps}")


def make_betas(cfg: DiffusionConfig) -> Tensor:
    """(T,) float32 betas. squaredcos_cap_v2: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi/2)^2 with each
    beta capped at 0.999 (Nichol & Dhariwal); computed exactly as diffusers does so the training schedule and
    the samplers agree to the last bit."""
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


class NoiseSchedule:
    """The forward process q(x_t | x0) = N(sqrt(ab_t) x0, (1 - ab_t) I) and conversions between the
    prediction types. ``t`` is always a (B,) integer tensor in [0, T); shapes broadcast over x's trailing dims.
    """

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.betas = make_betas(cfg)  # (T,)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) ab_t

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    def _coefs(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(ab_t), sqrt(1 - ab_t) shaped (B, 1, ..., 1) to broadcast against ``like``."""
        ab = self.alphas_cumprod.to(like.device)[t.long()].to(like.dtype)  # (B,)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return ab.sqrt().reshape(shape), (1 - ab).sqrt().reshape(shape)  # (B, 1, ..., 1) each

    def sample_timesteps(self, batch: int, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> Tensor:
        """(B,) long training timesteps, uniform over [0, T)."""
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network regresses: x0, the noise, or v = sqrt(ab) noise - sqrt(1 - ab) x0."""
        if self.cfg.prediction_type == "sample":
            return x0
        if self.cfg.prediction_type == "epsilon":
            return noise
        a, s = self._coefs(t, x0)
        return a * noise - s * x0

    def predict_x0(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The clean-sample estimate implied by a model output of the configured type."""
        if self.cfg.prediction_type == "sample":
            return model_out
        a, s = self._coefs(t, x_t)
        if self.cfg.prediction_type == "epsilon":
            return (x_t - s * model_out) / a
        return a * x_t - s * model_out

    def predict_epsilon(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise estimate implied by a model output of the configured type."""
        if self.cfg.prediction_type == "epsilon":
            return model_out
        a, s = self._coefs(t, x_t)
        if self.cfg.prediction_type == "sample":
            return (x_t - a * model_out) / s
        return s * x_t + a * model_out

    def output_from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Inverse of ``predict_x0``: the model output of the configured type that corresponds to ``x0``
        (e.g. a teacher's x0 as a target for a student, or an analytic denoiser in tests)."""
        if self.cfg.prediction_type == "sample":
            return x0
        a, s = self._coefs(t, x_t)
        eps = (x_t - a * x0) / s
        if self.cfg.prediction_type == "epsilon":
            return eps
        return a * eps - s * x0


def _make_scheduler(cfg: DiffusionConfig, kind: str) -> Any:
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("sampling needs the 'diffusers' package (pure Python, does not pull torch): "
                          "pip install diffusers") from e
    common: dict[str, Any] = {
        "num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
        "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "prediction_type": cfg.prediction_type,
    }
    if kind == "ddpm":
        return diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small",
                                       timestep_spacing="trailing")
    if kind == "ddim":
        return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True,
                                       timestep_spacing="trailing")
    return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                 lower_order_final=True, final_sigmas_type="zero",
                                                 timestep_spacing="linspace")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' NumPy-2 ``__array__(copy=...)`` DeprecationWarning, raised on every set_timesteps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="diffusers")
        yield


class Sampler:
    """One sampling plan: which update rule, how many network calls, which timesteps.

    Not thread-safe (DPM-Solver++ keeps the previous model output between steps): use one Sampler per
    concurrent trajectory. Construction costs a few ms; reuse it across chunks.
    """

    def __init__(self, cfg: DiffusionConfig, kind: str | None = None, num_steps: int | None = None,
                 eta: float | None = None) -> None:
        self.cfg = cfg
        self.kind = kind if kind is not None else cfg.sampler
        self.num_steps = num_steps if num_steps is not None else cfg.num_inference_steps
        self.eta = eta if eta is not None else cfg.eta
        _check_sampler(self.kind, "sampler")
        _check_steps(self.num_steps, cfg.num_train_timesteps, "num_steps")
        if self.eta < 0:
            raise ValueError(f"eta: must be >= 0, got {self.eta}")
        with _quiet():
            self._scheduler = _make_scheduler(cfg, self.kind)
        self._schedule: NoiseSchedule | None = None  # x0 <-> model output, built on a first x0_hook
        self.timesteps: list[int] = self.start()
        # DPM-Solver++'s linspace spacing repeats a timestep when num_steps == T; a zero-length step
        # divides by zero in the second-order update.
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"num_steps: {self.num_steps} {self.kind} steps over {cfg.num_train_timesteps} "
                             f"training steps repeat a timestep; use fewer steps")

    @property
    def deterministic(self) -> bool:
        """Whether the sample is a deterministic function of the initial noise."""
        return self.kind == "dpmsolver++" or (self.kind == "ddim" and self.eta == 0)

    def start(self) -> list[int]:
        """Begin a new trajectory (clears multistep history); returns the timesteps, first = noisiest."""
        with _quiet():
            self._scheduler.set_timesteps(self.num_steps)
        return [int(t) for t in self._scheduler.timesteps]

    def step(self, model_out: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One update x_t -> x_{t_prev}, t_prev being the next entry of ``timesteps`` (after the last: the
        clean sample). Call with the timesteps in order after ``start()``. ``generator`` drives the fresh
        noise of DDPM and of DDIM with eta > 0; deterministic samplers ignore it."""
        if self.kind == "ddim":
            out = self._scheduler.step(model_out, t, x_t, eta=self.eta, generator=generator)
        else:
            out = self._scheduler.step(model_out, t, x_t, generator=generator)
        return out.prev_sample.to(x_t.dtype)

    def run(self, model_fn: ModelFn, noise: Tensor, generator: torch.Generator | None = None,
            x0_hook: X0Hook | None = None) -> Tensor:
        """Integrate from ``noise`` (B, ...) at t = T-1 down to a clean sample (B, ...).

        ``x0_hook(x0_hat, t)``, if given, edits the clean-sample estimate of every step before the update
        (inpainting, real-time chunking): with ``prediction_type="sample"`` (RDT) the model output is x0_hat
        and is edited directly; other types go through x0 and back (:meth:`NoiseSchedule.predict_x0`,
        :meth:`NoiseSchedule.output_from_x0`). All three update rules then proceed from the edited x0, and
        DPM-Solver++ keeps it as its multistep history. Without a hook the loop is unchanged, bit for bit."""
        x = noise
        for t in self.start():
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
            out = model_fn(x, t_batch)
            if x0_hook is not None:
                out = self._edit_x0(out, x, t, t_batch, x0_hook)
            x = self.step(out, t, x, generator)
        return x

    def _edit_x0(self, out: Tensor, x_t: Tensor, t: int, t_batch: Tensor, hook: X0Hook) -> Tensor:
        if self.cfg.prediction_type == "sample":
            return hook(out, t)
        if self._schedule is None:
            self._schedule = NoiseSchedule(self.cfg)
        x0 = hook(self._schedule.predict_x0(out, x_t, t_batch), t)
        return self._schedule.output_from_x0(x0, x_t, t_batch)


def x0_inpainting(target: Tensor, weights: Tensor) -> X0Hook:
    """The hook that pulls each step's x0 estimate towards ``target``: x0 <- W * target + (1 - W) * x0_hat.

    Args:
        target: (B, Ta, Da) the known part of the sample, in the sampler's (normalised) space.
        weights: (Ta,) in [0, 1] per time step, 1 = replace by the target, 0 = leave the model's estimate.
    Weight 0 returns x0_hat exactly (0 * target + 1 * x0_hat), so an all-zero W is the plain loop bit for bit.
    """
    if target.dim() != 3 or weights.shape != (target.shape[1],):
        raise ValueError(f"x0_inpainting: target must be (B, Ta, Da) and weights (Ta,), got "
                         f"{tuple(target.shape)} and {tuple(weights.shape)}")
    if not bool(torch.isfinite(target).all()):
        raise ValueError("x0_inpainting: target has NaN/Inf (0 * NaN would leak into every unguided step)")
    if bool(((weights < 0) | (weights > 1)).any()):
        raise ValueError(f"x0_inpainting: weights must be in [0, 1], got {weights.tolist()}")
    w = weights.to(target)[None, :, None]  # (1, Ta, 1)

    def hook(x0_hat: Tensor, t: int) -> Tensor:
        return w * target.to(x0_hat) + (1 - w) * x0_hat  # (B, Ta, Da)

    return hook


def sample(model_fn: ModelFn, noise: Tensor, cfg: DiffusionConfig, *, sampler: str | None = None,
           num_steps: int | None = None, eta: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Draw x0 starting from ``noise`` (the initial x_T, (B, ...)); unset options come from ``cfg``."""
    return Sampler(cfg, sampler, num_steps, eta).run(model_fn, noise, generator)
