"""Diffusion schedule and samplers against cases with a known answer.

Gaussian data x0 ~ N(mu, s^2 I) has everything in closed form: with a_t = sqrt(ab_t), sig_t = sqrt(1 - ab_t),
  the exact denoiser      E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sig^2) (x_t - a mu),
  the probability-flow ODE keeps (x_t - a_t mu) / sqrt(a_t^2 s^2 + sig_t^2) constant, so it maps x_T to
                          x0 = mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + sig_T^2).
A point mass is the s = 0 case: every sampler must land exactly on mu.
"""

from __future__ import annotations

import math

import pytest
import torch

from robot_policy.models.diffusion import (
    PREDICTION_TYPES,
    SAMPLERS,
    DiffusionConfig,
    NoiseSchedule,
    Sampler,
    make_betas,
    sample,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_denoiser(schedule: NoiseSchedule, mu: float, s: float):
    """model_fn(x_t, t) returning the exact E[x0 | x_t] in the schedule's prediction type."""
    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t].double().reshape(-1, *[1] * (x.dim() - 1))
        a, sig2 = ab.sqrt(), 1 - ab
        x0 = mu + a * s * s / (a * a * s * s + sig2) * (x.double() - a * mu)
        return schedule.output_from_x0(x0, x.double(), t).float()
    return model_fn


def exact_ode(schedule: NoiseSchedule, x_T: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    ab = schedule.alphas_cumprod[-1].double()
    a = ab.sqrt()
    return (mu + s * (x_T.double() - a * mu) / (a * a * s * s + 1 - ab).sqrt()).float()


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- schedule -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_schedule_matches_diffusers(beta_schedule: str) -> None:
    import diffusers  # a required dependency of the samplers: missing it is a setup error, not a skip
    ours = NoiseSchedule(DiffusionConfig(beta_schedule=beta_schedule)).alphas_cumprod
    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule).alphas_cumprod
    assert torch.equal(ours, theirs)


def test_cosine_schedule_closed_form() -> None:
    # Before the 0.999 cap bites (last steps), ab_t = f((t + 1) / T) / f(0), f(u) = cos((u + .008) / 1.008 pi/2)^2.
    T = 1000
    ab = NoiseSchedule(DiffusionConfig()).alphas_cumprod.double()
    f = [math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 for u in (0.0, 0.5, 0.9)]
    for u, fu in zip((0.5, 0.9), f[1:]):
        assert ab[round(u * T) - 1].item() == pytest.approx(fu / f[0], rel=1e-4)
    assert make_betas(DiffusionConfig()).max().item() == pytest.approx(0.999)
    assert ab[-1].item() < 1e-8  # x_{T-1} is pure noise for all practical purposes


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_targets_and_conversions_are_consistent(prediction_type: str) -> None:
    sched = NoiseSchedule(DiffusionConfig(prediction_type=prediction_type))
    x0, eps = noise(6, 4, 3, seed=1), noise(6, 4, 3, seed=2)
    t = torch.tensor([0, 1, 10, 500, 900, 990])
    x_t = sched.add_noise(x0, eps, t)
    ab = sched.alphas_cumprod[t][:, None, None]
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    target = sched.training_target(x0, eps, t)
    # The exact target, converted back, recovers both x0 and the noise.
    assert torch.allclose(sched.predict_x0(target, x_t, t), x0, atol=1e-3)
    assert torch.allclose(sched.predict_epsilon(target, x_t, t), eps, atol=1e-3)
    assert torch.allclose(sched.output_from_x0(x0, x_t, t), target, atol=1e-4)
    ts = sched.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert ts.dtype == torch.long and ts.min() >= 0 and ts.max() < 1000


# ---- samplers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("kind,steps", [("ddpm", 10), ("ddim", 1), ("ddim", 4), ("dpmsolver++", 1), ("dpmsolver++", 5)])
def test_point_mass_is_recovered_exactly(prediction_type: str, kind: str, steps: int) -> None:
    cfg = DiffusionConfig(prediction_type=prediction_type)
    out = sample(gaussian_denoiser(NoiseSchedule(cfg), 0.7, 0.0), noise(8, 4, 5), cfg, sampler=kind, num_steps=steps,
                 generator=torch.Generator().manual_seed(0))
    # Epsilon prediction at t = T-1 recovers x0 by dividing by sqrt(ab) ~ 5e-5: float32 rounding of the
    # output is amplified ~2e4 times (one reason RDT predicts x0).
    tol = 1e-2 if prediction_type == "epsilon" else 1e-3
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=tol)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_converges_to_the_exact_ode_solution(prediction_type: str) -> None:
    cfg = DiffusionConfig(prediction_type=prediction_type)
    sched = NoiseSchedule(cfg)
    fn, x_T = gaussian_denoiser(sched, 0.5, 1.0), noise(64, 16)
    want = exact_ode(sched, x_T, 0.5, 1.0)
    errs = [(sample(fn, x_T, cfg, sampler="ddim", num_steps=n) - want).abs().max().item() for n in (5, 20, 100, 1000)]
    assert errs == sorted(errs, reverse=True)  # more steps, closer
    assert errs[-1] < 0.01
    assert errs[2] < errs[1] / 3  # first order: error ~ 1 / steps


@pytest.mark.parametrize("mu,s", [(0.5, 1.0), (0.7, 0.3)])
def test_dpmsolver_matches_the_exact_ode_and_beats_ddim(mu: float, s: float) -> None:
    cfg = DiffusionConfig()
    sched = NoiseSchedule(cfg)
    fn, x_T = gaussian_denoiser(sched, mu, s), noise(256, 16)
    want = exact_ode(sched, x_T, mu, s)
    err = {(k, n): (sample(fn, x_T, cfg, sampler=k, num_steps=n) - want).abs().max().item()
           for k in ("ddim", "dpmsolver++") for n in (20, 50)}
    assert err[("dpmsolver++", 50)] < 0.005
    assert err[("dpmsolver++", 20)] < err[("ddim", 20)] / 3  # second order vs first order
    assert err[("dpmsolver++", 50)] < err[("dpmsolver++", 20)] / 4


def test_ddpm_samples_the_target_distribution() -> None:
    cfg = DiffusionConfig()
    fn = gaussian_denoiser(NoiseSchedule(cfg), 0.5, 0.8)
    out = sample(fn, noise(512, 32), cfg, sampler="ddpm", num_steps=1000, generator=torch.Generator().manual_seed(1))
    assert out.mean().item() == pytest.approx(0.5, abs=0.02)  # se of the mean ~ 0.005
    assert out.std().item() == pytest.approx(0.8, abs=0.02)
    again = sample(fn, noise(512, 32), cfg, sampler="ddpm", num_steps=50, generator=torch.Generator().manual_seed(1))
    other = sample(fn, noise(512, 32), cfg, sampler="ddpm", num_steps=50, generator=torch.Generator().manual_seed(2))
    same = sample(fn, noise(512, 32), cfg, sampler="ddpm", num_steps=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, same) and not torch.allclose(again, other)


def test_ddim_eta0_is_a_deterministic_map_of_the_noise() -> None:
    cfg = DiffusionConfig()
    fn = gaussian_denoiser(NoiseSchedule(cfg), 0.2, 0.5)
    s = Sampler(cfg, "ddim", 4, eta=0.0)
    assert s.deterministic
    w = noise(4, 8, 3)
    a = s.run(fn, w, torch.Generator().manual_seed(0))
    b = s.run(fn, w.clone(), torch.Generator().manual_seed(99))  # the generator must not matter
    assert torch.equal(a, b)
    c = s.run(fn, noise(4, 8, 3, seed=1))
    assert (a - c).abs().min() > 0  # every element moves with the noise
    # eta > 0 injects fresh noise: the generator changes the result.
    s1 = Sampler(cfg, "ddim", 4, eta=1.0)
    assert not s1.deterministic
    g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    assert not torch.allclose(s1.run(fn, w, g0), s1.run(fn, w, g1))


@pytest.mark.parametrize("kind", SAMPLERS)
def test_step_api_equals_the_loop(kind: str) -> None:
    cfg = DiffusionConfig(prediction_type="epsilon")
    fn = gaussian_denoiser(NoiseSchedule(cfg), 0.3, 0.6)
    w = noise(3, 8, 2)
    want = sample(fn, w, cfg, sampler=kind, num_steps=6, generator=torch.Generator().manual_seed(5))
    s = Sampler(cfg, kind, 6)
    for _ in range(2):  # a reused sampler restarts cleanly (DPM-Solver++ keeps history between steps)
        g = torch.Generator().manual_seed(5)
        x = w
        ts = s.start()
        assert ts == s.timesteps and ts[0] == 999 and len(ts) == 6
        for t in ts:  # what a deployment backend does: the network call happens outside
            x = s.step(fn(x, torch.full((3,), t)), t, x, generator=g)
        assert torch.equal(x, want)


def test_sampler_and_config_validation() -> None:
    cfg = DiffusionConfig()
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*ddpm, ddim, dpmsolver"):
        Sampler(cfg, "euler")
    with pytest.raises(ValueError, match=r"num_steps: must be in \[1, 1000\], got 0"):
        Sampler(cfg, "ddim", 0)
    with pytest.raises(ValueError, match="repeat a timestep"):
        Sampler(cfg, "dpmsolver++", 1000)
    with pytest.raises(ValueError, match="diffusion.prediction_type: unknown 'noise'"):
        DiffusionConfig(prediction_type="noise")
    with pytest.raises(ValueError, match="diffusion.beta_schedule"):
        DiffusionConfig(beta_schedule="cosine")
    assert Sampler(cfg).kind == "dpmsolver++" and Sampler(cfg).timesteps == [999, 799, 599, 400, 200]
    assert Sampler(cfg, "ddim", 4).timesteps == [999, 749, 499, 249]
