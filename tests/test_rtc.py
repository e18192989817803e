"""Real-time chunking (robot_policy.runtime.rtc): the guidance weights, the x0 hook in the one sampling loop
(DDPM, DDIM, DPM-Solver++ on a tiny untrained RDT), and the policies' ``prefix`` entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_models import inputs, randomize_head, tiny

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.keys import OBS_STATE
from robot_policy.models.diffusion import DiffusionConfig, Sampler, x0_inpainting
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.inputs import LanguageTable
from robot_policy.models.rdt import Conditions, ModelInputs, RDTPolicyModel, sample_with
from robot_policy.models.text import make_text_encoder
from robot_policy.policies.diffusion import ActionPrefix, DiffusionPolicy
from robot_policy.runtime.backends import BackendOptions, BackendSource, make_backend
from robot_policy.runtime.bundle.policy import Bundle, BundlePolicy
from robot_policy.runtime.rtc import rtc_weights, sample_chunk_rtc
from robot_policy.spaces import load_embodiment

Da = 128
Ta = 8  # rdt_tiny
SAMPLERS = [("ddim", 4), ("dpmsolver++", 5), ("ddpm", 4)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- weights ----------------------------------------------------------------------------------------------
def test_weights_follow_the_paper() -> None:
    # PI's reference example: frozen 2, overlap 6, horizon 10 -> linear 1 1 4/5 3/5 2/5 1/5 0 0 0 0
    lin = rtc_weights(10, 2, 6, "linear")
    assert np.allclose(lin, [1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0])
    c = lin[2:6].astype(np.float64)
    exp = rtc_weights(10, 2, 6)  # default: the paper's exponential decay, c (e^c - 1) / (e - 1)
    assert np.allclose(exp[2:6], c * np.expm1(c) / (math.e - 1)) and np.all(exp[:2] == 1) and np.all(exp[6:] == 0)
    assert np.all(np.diff(exp) <= 0) and np.all(exp[2:6] < lin[2:6])
    assert np.array_equal(rtc_weights(10, 2, 6, "ones"), [1] * 6 + [0] * 4)
    assert np.array_equal(rtc_weights(10, 2, 6, "zeros"), [1] * 2 + [0] * 8)
    assert np.array_equal(rtc_weights(4, 0, 0), np.zeros(4)) and rtc_weights(4, 4, 4).tolist() == [1] * 4
    with pytest.raises(ValueError, match="frozen <= overlap <= horizon, got frozen=3, overlap=2"):
        rtc_weights(8, 3, 2)
    with pytest.raises(ValueError, match="unknown 'cosine'; valid: exp, linear, ones, zeros"):
        rtc_weights(8, 1, 2, "cosine")


# ---- the x0 hook in the sampling loop ---------------------------------------------------------------------
def tiny_model() -> RDTPolicyModel:
    torch.manual_seed(0)
    m = RDTPolicyModel(tiny(), load_pretrained=False).eval()
    randomize_head(m)  # the zero head would predict x0 = 0 whatever the inputs
    return m


def tiny_base(model: RDTPolicyModel) -> FrozenBase:
    """A policy base around ``model`` for the bimanual Panda (16 joint targets at 20 Hz), DDIM 4 steps, with
    made-up normalisation statistics (no checkpoint needed)."""
    emb = load_embodiment("panda_bimanual_joint")
    used = emb.action.mask.astype(np.float64)
    stat = {"mean": np.full(Da, 0.1) * used, "std": np.where(used > 0, 0.5, 1.0), "mask": used}
    normalizer = Normalizer({fmt.STATE: {**stat, "mask": emb.state.mask.astype(np.float64)}, fmt.ACTION: stat},
                            {fmt.STATE: "gaussian", fmt.ACTION: "gaussian"})
    cfg = model.cfg
    table = LanguageTable(make_text_encoder(cfg.text_encoder, cfg.lang_dim, cfg.max_lang_tokens), ["lift"])
    return FrozenBase(model, normalizer, emb, "lift", table, "ddim", 4)


@pytest.fixture(scope="module")
def model() -> RDTPolicyModel:
    return tiny_model()


def _case(seed: int = 1) -> tuple[ModelInputs, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = inputs(tiny(), B=2, seed=seed)
    return x, torch.randn(2, Ta, Da, generator=g), torch.randn(2, Ta, Da, generator=g)  # inputs, noise, prefix


@pytest.mark.parametrize("kind,steps", SAMPLERS)
def test_zero_weights_are_the_plain_loop_bit_for_bit(model: RDTPolicyModel, kind: str, steps: int) -> None:
    x, noise, prefix = _case()
    sampler = Sampler(model.cfg.diffusion, kind, steps)
    plain = sample_with(model, sampler, x, noise, torch.Generator().manual_seed(3))
    rtc = sample_chunk_rtc(model, sampler, x, noise, prefix, np.zeros(Ta), torch.Generator().manual_seed(3))
    assert torch.equal(plain, rtc)


@pytest.mark.parametrize("kind,steps", SAMPLERS)
def test_unit_weights_end_on_the_prefix(model: RDTPolicyModel, kind: str, steps: int) -> None:
    x, noise, prefix = _case()
    sampler = Sampler(model.cfg.diffusion, kind, steps)
    out = sample_chunk_rtc(model, sampler, x, noise, prefix, np.ones(Ta), torch.Generator().manual_seed(3))
    # DDIM and DPM-Solver++ return the last x0 estimate exactly; DDPM adds its 1e-10 minimum std
    assert torch.allclose(out, prefix * x.action_mask[:, None], atol=1e-6, rtol=0)


class _Recording:
    """The model, keeping its last raw x0 prediction: what it wants before any guidance."""

    def __init__(self, model: RDTPolicyModel) -> None:
        self.model = model
        self.last: torch.Tensor | None = None

    def encode(self, x: ModelInputs) -> Conditions:
        return self.model.encode(x)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        self.last = self.model.denoise(x_t, t, cond)
        return self.last


@pytest.mark.parametrize("kind,steps", SAMPLERS[:2])
def test_frozen_part_follows_the_prefix_and_the_tail_the_model(model: RDTPolicyModel, kind: str, steps: int) -> None:
    x, noise, prefix = _case()
    frozen, overlap = 2, 5
    w = rtc_weights(Ta, frozen, overlap)
    net = _Recording(model)
    sampler = Sampler(model.cfg.diffusion, kind, steps)
    out = sample_chunk_rtc(net, sampler, x, noise, prefix, w)
    mask = x.action_mask[:, None]  # (B, 1, Da)
    target = prefix * mask
    assert torch.allclose(out[:, :frozen], target[:, :frozen], atol=1e-6, rtol=0)
    # Past the overlap the chunk is the model's own last x0 estimate, untouched by the guidance.
    assert net.last is not None
    assert torch.allclose(out[:, overlap:], (net.last * mask)[:, overlap:], atol=1e-6, rtol=0)
    assert (out[:, overlap:] - target[:, overlap:]).abs().mean() > 0.3
    # Everywhere the last update returns the last blended estimate: W * prefix + (1 - W) * x0_hat.
    W = torch.as_tensor(w)[None, :, None]
    assert torch.allclose(out, W * target + (1 - W) * net.last * mask, atol=1e-6, rtol=0)
    # In between, the decaying guidance pulls towards the prefix: closer than the unguided chunk is.
    plain = sample_with(model, sampler, x, noise)
    gap = (out - target).abs().mean(dim=(0, 2))  # (Ta,)
    plain_gap = (plain - target).abs().mean(dim=(0, 2))
    assert torch.all(gap[frozen:overlap] < plain_gap[frozen:overlap])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_hook_edits_x0_for_any_prediction_type(prediction_type: str) -> None:
    # An analytic denoiser (x0 = 0.5 everywhere, given in the configured output type): W = 1 ends on the
    # target, W = 0 on the model's 0.5, through the x0 <-> output conversion.
    from robot_policy.models.diffusion import NoiseSchedule

    cfg = DiffusionConfig(prediction_type=prediction_type)
    schedule = NoiseSchedule(cfg)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule.output_from_x0(torch.full_like(x_t, 0.5), x_t, t)

    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    target = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    for kind in ("ddim", "dpmsolver++"):
        out = Sampler(cfg, kind, 5).run(model_fn, noise, x0_hook=x0_inpainting(target, w))
        assert torch.allclose(out[:, :2], target[:, :2], atol=1e-4), kind
        assert torch.allclose(out[:, 2:], torch.full_like(out[:, 2:], 0.5), atol=1e-4), kind


def test_hook_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"weights \(Ta,\), got \(1, 4, 3\) and \(3,\)"):
        x0_inpainting(torch.zeros(1, 4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="weights must be in"):
        x0_inpainting(torch.zeros(1, 2, 3), torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        x0_inpainting(torch.full((1, 2, 3), float("nan")), torch.zeros(2))


# ---- policies -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(model: RDTPolicyModel) -> FrozenBase:
    return tiny_base(model)


def obs_of(seed: int) -> dict[str, np.ndarray]:
    return {OBS_STATE: np.random.default_rng(seed).normal(size=Da).astype(np.float32)}


def _bundle_policy(base: FrozenBase) -> BundlePolicy:
    """The bundle policy over the same network in memory (no export): the torch backend of the model."""
    m = base.model
    bundle = Bundle(root=None, manifest={}, spec={"language": base.language, "execute_horizon": Ta},  # type: ignore[arg-type]
                    cfg=m.cfg, normalizer=base.normalizer, embodiment=base.embodiment,
                    language_tokens=base.language_table.tokens, language_mask=base.language_table.mask)
    backend = make_backend("torch", BackendSource(m.cfg, load_model=lambda: m), BackendOptions())
    return BundlePolicy(bundle, backend, base.sampler)


def test_policies_inpaint_a_native_prefix(base: FrozenBase) -> None:
    emb = base.embodiment
    queued = np.random.default_rng(5).normal(size=(Ta, emb.action.native_dim))  # (Ta, 16) native joint targets
    prefix = ActionPrefix.from_native(queued, rtc_weights(Ta, 3, 6), emb)
    chunks = {}
    for name, policy in (("diffusion", DiffusionPolicy(base)), ("bundle", _bundle_policy(base))):
        policy.reset(seed=7)
        plain = policy.predict_chunk(obs_of(0))
        policy.reset(seed=7)
        rtc = policy.predict_chunk(obs_of(0), prefix=prefix)
        native = emb.action.unified_to_flat(rtc.unified)  # (Ta, 16)
        assert np.allclose(native[:3], queued[:3], atol=1e-5), name  # frozen rows: the queue's, in SI units
        assert not np.allclose(native[3:], queued[3:], atol=0.1), name
        assert np.abs(emb.action.unified_to_flat(plain.unified)[:3] - queued[:3]).max() > 0.5, name
        chunks[name] = rtc.unified
    assert np.array_equal(chunks["diffusion"], chunks["bundle"])  # the torch backend is the model, bit for bit


def test_a_prefix_of_the_wrong_length_is_refused(base: FrozenBase) -> None:
    with pytest.raises(ValueError, match=r"ActionPrefix.weights: expected \(4,\), got \(3,\)"):
        ActionPrefix(np.zeros((4, Da), np.float32), np.zeros(3, np.float32))
    short = ActionPrefix(np.zeros((4, Da), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="4 rows for a policy chunk of 8"):
        DiffusionPolicy(base).predict_chunk(obs_of(0), prefix=short)


def test_sample_with_hook_default_is_unchanged(model: RDTPolicyModel) -> None:
    # sample_with without a hook equals the model's own sample: the pre-RTC loop
    x, noise, _ = _case()
    sampler = Sampler(model.cfg.diffusion, "dpmsolver++", 5)
    assert torch.equal(sample_with(model, sampler, x, noise), model.sample(x, noise=noise, sampler="dpmsolver++",
                                                                           num_steps=5))
