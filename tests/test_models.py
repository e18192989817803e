"""RDT network, encoders, configs and parameter counts (robot_policy.models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from robot_policy.models.encoders import ObsEncoderConfig, ObservationEncoder, blank_image
from robot_policy.models.params import count_parameters, parameter_breakdown
from robot_policy.models.rdt import (
    RDT,
    ConditionDropoutConfig,
    ModelInputs,
    RDTConfig,
    RDTPolicyModel,
    available_policy_configs,
    load_policy_config,
    policy_config_from_dict,
)
from robot_policy.models.text import (
    ByteTextEncoder,
    PrecomputedTextEncoder,
    T5TextEncoder,
    TextEncoderConfig,
    make_text_encoder,
    precompute_text_embeddings,
)

Da = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(cameras: tuple[str, ...] = (), object_state_dim: int = 0, backbone: str = "resnet", **kw: object) -> RDTConfig:
    cfg = load_policy_config("rdt_tiny")
    obs = dataclasses.replace(cfg.obs_encoder, cameras=list(cameras), object_state_dim=object_state_dim,
                              image_size=[32, 32], image_backbone=backbone, patch_size=8)
    return dataclasses.replace(cfg, obs_encoder=obs, **kw)


def inputs(cfg: RDTConfig, B: int = 3, seed: int = 0, lang_len: int = 5) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    oc = cfg.obs_encoder
    V, (H, W) = len(oc.cameras), oc.image_size
    lang_mask = torch.ones(B, lang_len, dtype=torch.bool)
    lang_mask[0, 3:] = False
    return ModelInputs(
        state=torch.randn(B, Da, generator=g), state_mask=(torch.rand(B, Da, generator=g) > 0.5).float(),
        action_mask=(torch.rand(B, Da, generator=g) > 0.5).float(), ctrl_freq=torch.full((B,), 20.0),
        lang_tokens=torch.randn(B, lang_len, cfg.lang_dim, generator=g), lang_mask=lang_mask,
        images=torch.rand(B, oc.n_obs_steps, V, 3, H, W, generator=g) if V else None,
        object_state=torch.randn(B, oc.n_obs_steps, oc.object_state_dim, generator=g) if oc.object_state_dim else None,
    )


def randomize_head(model: RDTPolicyModel) -> None:
    """The head starts at zero; give it weights so outputs depend on the inputs."""
    torch.nn.init.normal_(model.rdt.head.mlp.fc2.weight, std=0.5)


# ---- configs and sizes ------------------------------------------------------------------------------------
def test_policy_configs_load() -> None:
    assert {"rdt_tiny", "rdt_small", "rdt_170m", "rdt_1b"} <= set(available_policy_configs())
    small = load_policy_config("rdt_small")
    assert small.mlp_ratio == 1.0 and small.diffusion.sampler == "dpmsolver++"
    assert small.diffusion.num_inference_steps == 5 and small.diffusion.prediction_type == "sample"
    with pytest.raises(KeyError, match="unknown policy 'rdt_huge'; available: .*rdt_small"):
        load_policy_config("rdt_huge")


def test_config_errors_name_the_field_and_value() -> None:
    with pytest.raises(ValueError, match="num_heads: 5 must divide hidden_size 64"):
        RDTConfig(hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="mlp_ratio: must be > 0, got 0"):
        RDTConfig(mlp_ratio=0)
    with pytest.raises(ValueError, match=r"policy.obs_encoder: unknown key\(s\) \['camras'\]"):
        policy_config_from_dict({"obs_encoder": {"camras": ["front"]}})
    with pytest.raises(ValueError, match="obs_encoder.image_backbone: unknown 'vgg'"):
        policy_config_from_dict({"obs_encoder": {"image_backbone": "vgg"}})
    with pytest.raises(ValueError, match="cond_dropout.lang: must be in"):
        ConditionDropoutConfig(lang=1.5)
    with pytest.raises(ValueError, match="text_encoder.kind: unknown 'bert'"):
        TextEncoderConfig(kind="bert")


def test_parameter_counts_match_rdt() -> None:
    # RDT reports 170M and 1.2B for transformer + adaptors (T5-XXL 4096-d language, SigLIP 1152-d images).
    n170, n1b = count_parameters(load_policy_config("rdt_170m")), count_parameters(load_policy_config("rdt_1b"))
    assert abs(n170 / 170e6 - 1) < 0.10, n170
    assert abs(n1b / 1.2e9 - 1) < 0.10, n1b
    assert count_parameters(load_policy_config("rdt_tiny"), include_obs_encoder=True) < 1_000_000
    # rdt_small is sized to train in minutes on 2 CPU cores: several times rdt_tiny, far below rdt_170m
    assert 3 * count_parameters(load_policy_config("rdt_tiny")) < count_parameters(load_policy_config("rdt_small")) < 5e6
    parts = parameter_breakdown(load_policy_config("rdt_1b"))
    assert {"lang_adaptor", "obs_adaptor", "state_adaptor", "blocks", "head"} <= set(parts)


def test_meta_construction_and_count_agree_with_a_real_model() -> None:
    cfg = tiny(("front",), object_state_dim=4)
    with torch.device("meta"):
        meta = RDT(cfg)
    assert all(p.is_meta for p in meta.parameters())
    real = RDTPolicyModel(cfg)
    assert count_parameters(cfg) == sum(p.numel() for p in real.rdt.parameters())
    assert count_parameters(cfg, include_obs_encoder=True) == sum(p.numel() for p in real.parameters())


def test_mlp_ratio_sets_block_mlp_width() -> None:
    assert RDT(tiny()).blocks[0].mlp.fc1.out_features == 64  # RDT: hidden == width
    assert RDT(tiny(mlp_ratio=4.0)).blocks[0].mlp.fc1.out_features == 256


# ---- the denoiser -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cameras,object_dim,backbone", [((), 0, "resnet"), (("front", "wrist"), 6, "resnet"),
                                                          (("front",), 0, "patch")])
def test_output_shapes_and_zero_head(cameras: tuple[str, ...], object_dim: int, backbone: str) -> None:
    cfg = tiny(cameras, object_dim, backbone)
    model = RDTPolicyModel(cfg)
    inp = inputs(cfg)
    cond = model.encode(inp)
    assert cond.obs_tokens.shape == (3, cfg.obs_encoder.num_tokens, cfg.obs_encoder.token_dim)
    out = model(torch.randn(3, cfg.horizon, Da), torch.tensor([0, 500, 999]), inp)
    assert out.shape == (3, cfg.horizon, Da)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised head
    randomize_head(model)
    assert model(torch.randn(3, cfg.horizon, Da), torch.tensor([0.0, 1.5, 999.0]), inp).abs().max() > 0


def test_masked_condition_tokens_do_not_change_the_output() -> None:
    cfg = tiny(("front",))
    model = RDTPolicyModel(cfg)
    randomize_head(model)
    inp = inputs(cfg)
    x, t = torch.randn(3, cfg.horizon, Da), torch.tensor([10, 20, 30])
    cond = model.encode(inp)
    ref = model.denoise(x, t, cond)
    # Garbage in masked language slots (sample 0, tokens 3:) changes nothing...
    lang = cond.lang_tokens.clone()
    lang[0, 3:] = 1e3 * torch.randn_like(lang[0, 3:])
    assert torch.allclose(model.denoise(x, t, dataclasses.replace(cond, lang_tokens=lang)), ref, atol=1e-5)
    # ... and the same for masked observation tokens.
    obs, obs_mask = cond.obs_tokens.clone(), cond.obs_mask.clone()
    obs_mask[1, -2:] = False
    masked = model.denoise(x, t, dataclasses.replace(cond, obs_mask=obs_mask))
    obs[1, -2:] = 1e3
    assert torch.allclose(model.denoise(x, t, dataclasses.replace(cond, obs_tokens=obs, obs_mask=obs_mask)),
                          masked, atol=1e-5)
    # An unmasked token does matter.
    lang[0, 0] += 1.0
    assert not torch.allclose(model.denoise(x, t, dataclasses.replace(cond, lang_tokens=lang))[0], ref[0])


def test_no_language_is_finite_and_equals_fully_masked_language() -> None:
    cfg = tiny()
    model = RDTPolicyModel(cfg)
    randomize_head(model)
    inp = inputs(cfg)
    x, t = torch.randn(3, cfg.horizon, Da), torch.tensor([1, 2, 3])
    none = model(x, t, dataclasses.replace(inp, lang_tokens=None, lang_mask=None))
    all_masked = model(x, t, dataclasses.replace(inp, lang_mask=torch.zeros(3, 5, dtype=torch.bool)))
    assert torch.isfinite(none).all()
    assert torch.allclose(none, all_masked, atol=1e-6)


def test_layers_alternate_language_and_observation_tokens() -> None:
    cfg = tiny(("front",), depth=4)
    model = RDTPolicyModel(cfg)
    seen: list[int] = []
    for block in model.rdt.blocks:
        block.cross_attn.register_forward_hook(lambda mod, args, out: seen.append(args[1].shape[1]))
    model(torch.randn(3, cfg.horizon, Da), torch.tensor([1, 2, 3]), inputs(cfg, lang_len=5))
    N = cfg.obs_encoder.num_tokens
    assert seen == [5, N, 5, N]


def test_shape_errors_are_loud() -> None:
    cfg = tiny(("front",))
    model = RDTPolicyModel(cfg)
    inp = inputs(cfg)
    with pytest.raises(ValueError, match=r"noisy_action must be \(B, Ta, Da\) = \(B, 8, 128\)"):
        model(torch.randn(3, 4, Da), torch.tensor([1, 2, 3]), inp)
    with pytest.raises(ValueError, match="images for cameras .*front.* are required"):
        model.encode(dataclasses.replace(inp, images=None))
    with pytest.raises(ValueError, match="object_state was given but obs_encoder.object_state_dim is 0"):
        model.encode(dataclasses.replace(inp, object_state=torch.zeros(3, 2, 4)))


# ---- observation encoders ---------------------------------------------------------------------------------
def test_missing_camera_is_a_blank_image() -> None:
    cfg = ObsEncoderConfig(cameras=["front", "wrist"], image_size=[32, 32], resnet_widths=[8, 16], resnet_grid=2,
                           token_dim=16, image_mean=[0.4, 0.5, 0.6])
    enc = ObservationEncoder(cfg)
    images = torch.rand(2, 2, 2, 3, 32, 32)
    present = torch.tensor([[True, False], [True, True]])
    blanked = images.clone()
    blanked[0, :, 1] = blank_image(cfg)
    assert torch.allclose(enc.normalize_images(blanked)[0, :, 1], torch.zeros(2, 3, 32, 32), atol=1e-6)
    tok_present, mask = enc(images, present)
    tok_blank, _ = enc(blanked)
    assert torch.allclose(tok_present, tok_blank, atol=1e-5)
    assert mask.all() and tok_present.shape == (2, cfg.num_tokens, 16)
    # uint8 input is scaled to [0, 1] first.
    u8 = (images * 255).round().to(torch.uint8)
    assert torch.allclose(enc(u8)[0], enc(u8.float() / 255)[0], atol=1e-5)


def test_object_state_tokens_and_empty_encoder() -> None:
    cfg = ObsEncoderConfig(object_state_dim=7, object_state_tokens=3, token_dim=16)
    enc = ObservationEncoder(cfg)
    tokens, mask = enc(object_state=torch.randn(4, 2, 7))
    assert tokens.shape == (4, 6, 16) and cfg.num_tokens == 6 and mask.all()
    empty = ObservationEncoder(ObsEncoderConfig(token_dim=16))
    tokens, mask = empty(batch_size=4)
    assert tokens.shape == (4, 1, 16) and not mask.any()


def test_siglip_needs_a_local_path() -> None:
    cfg = ObsEncoderConfig(cameras=["front"], image_backbone="siglip", token_dim=1152, siglip_path=None)
    with pytest.raises(ValueError, match="obs_encoder.siglip_path: a local checkpoint directory is required"):
        ObservationEncoder(cfg)
    with pytest.raises(FileNotFoundError, match="obs_encoder.siglip_path: '/nonexistent/siglip' is not a directory"):
        ObservationEncoder(dataclasses.replace(cfg, siglip_path="/nonexistent/siglip"))
    with pytest.raises(ValueError, match="SigLIP was trained on 0.5/0.5"):
        dataclasses.replace(cfg, image_mean=[0.485, 0.456, 0.406])


# ---- language -------------------------------------------------------------------------------------------
def test_builtin_text_encoder_is_deterministic() -> None:
    a, b = ByteTextEncoder(32, 16, seed=0), ByteTextEncoder(32, 16, seed=0)
    texts = ["lift the box", "", "push the red block as far as it goes"]
    ta, ma = a.encode(texts)
    tb, mb = b.encode(texts)
    assert torch.equal(ta, tb) and torch.equal(ma, mb)
    assert ta.shape == (3, 16, 32) and ma.sum(1).tolist() == [12, 0, 16]  # bytes, truncated at 16
    assert torch.isfinite(ta).all() and (ta[1] == 0).all()
    other, _ = ByteTextEncoder(32, 16, seed=1).encode(texts)
    assert not torch.allclose(ta[0], other[0])
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_precomputed_text_embeddings_round_trip(tmp_path: Path) -> None:
    builtin = ByteTextEncoder(32, 16)
    path = tmp_path / "lang.safetensors"
    precompute_text_embeddings(builtin, ["lift the box", "push"], path)
    enc = make_text_encoder(TextEncoderConfig(kind="file", path=str(path)), dim=32, max_tokens=16)
    tokens, mask = enc.encode(["push", "lift the box"])
    want, want_mask = builtin.encode(["push", "lift the box"])
    assert torch.allclose(tokens, want, atol=1e-5) and torch.equal(mask, want_mask)
    with pytest.raises(KeyError, match="instruction 'open the door' is not in"):
        enc.encode(["open the door"])
    with pytest.raises(ValueError, match="gives width 32, but the policy's lang_dim is 64"):
        make_text_encoder(TextEncoderConfig(kind="file", path=str(path)), dim=64, max_tokens=16)
    with pytest.raises(FileNotFoundError, match="no embeddings file"):
        PrecomputedTextEncoder(tmp_path / "missing.safetensors", 16)


def test_t5_needs_a_local_path_and_transformers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="text_encoder.path: a local checkpoint directory is required"):
        T5TextEncoder(None, 32)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        T5TextEncoder(str(tmp_path / "t5-missing"), 32)
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs the 'transformers' package"):
            T5TextEncoder(str(tmp_path), 32)


# ---- condition dropout, loss, sampling ------------------------------------------------------------------
def _dropout(inp, p: ConditionDropoutConfig):
    """Condition dropout as the training step applies it (decisions drawn for the whole batch)."""
    from robot_policy.algorithms.bc import StepRandomness, apply_condition_dropout

    B, V = inp.state.shape[0], (inp.images.shape[2] if inp.images is not None else 1)
    r = StepRandomness.draw(0, 0, B, 1, V, 1000, p)
    return apply_condition_dropout(inp, r)


def test_condition_dropout() -> None:
    cfg = tiny(("front", "wrist"), object_state_dim=3)
    inp = inputs(cfg, B=4)
    none = _dropout(inp, ConditionDropoutConfig(0, 0, 0, 0, 0))
    assert torch.equal(none.state, inp.state) and none.camera_present is not None and none.camera_present.all()
    assert none.lang_mask is not None and torch.equal(none.lang_mask, inp.lang_mask)
    every = _dropout(inp, ConditionDropoutConfig(1, 1, 1, 1, 1))
    assert (every.ctrl_freq == 0).all() and (every.state_mask == 0).all() and (every.state == 0).all()
    assert every.lang_mask is not None and not every.lang_mask.any()
    assert every.camera_present is not None and not every.camera_present.any()
    assert every.object_state is not None and (every.object_state == 0).all()
    big = inputs(cfg, B=2000)
    dropped = _dropout(big, ConditionDropoutConfig()).camera_present
    assert dropped is not None
    rate = 1 - dropped.float().mean()
    assert 0.08 < rate < 0.12
    # The model runs on dropped inputs (all-masked language, blank cameras).
    model = RDTPolicyModel(cfg)
    randomize_head(model)
    assert torch.isfinite(model(torch.randn(4, cfg.horizon, Da), torch.tensor([1, 2, 3, 4]), every)).all()


def test_loss_targets_masked_slots_as_zero() -> None:
    cfg = tiny()
    model = RDTPolicyModel(cfg)
    inp = inputs(cfg)
    actions = torch.randn(3, cfg.horizon, Da)
    g = torch.Generator().manual_seed(0)
    # The zero head predicts 0, so with x0-prediction the loss is the mean square of the masked-in actions.
    loss = model.compute_loss(inp, actions, generator=g)
    assert loss.item() == pytest.approx((actions * inp.action_mask[:, None]).pow(2).mean().item(), rel=1e-5)
    loss.backward()
    assert model.rdt.head.mlp.fc2.weight.grad is not None


def test_sample_is_a_deterministic_map_with_ddim_eta0() -> None:
    cfg = tiny(("front",))
    model = RDTPolicyModel(cfg).eval()
    randomize_head(model)
    inp = inputs(cfg)
    w = torch.randn(3, cfg.horizon, Da)
    a = model.sample(inp, noise=w, sampler="ddim", num_steps=4, eta=0.0)
    b = model.sample(inp, noise=w.clone(), sampler="ddim", num_steps=4, eta=0.0)
    c = model.sample(inp, noise=torch.randn(3, cfg.horizon, Da), sampler="ddim", num_steps=4, eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (3, cfg.horizon, Da) and (a[inp.action_mask[:, None].expand_as(a) == 0] == 0).all()


def test_tiny_model_overfits_one_chunk() -> None:
    """200 Adam steps teach the tiny model to produce one fixed chunk from any noise (a few s on one core)."""
    torch.manual_seed(0)
    cfg = tiny()
    model = RDTPolicyModel(cfg)
    B = 8
    amask = torch.zeros(Da)
    amask[:14] = 1  # two 7-DoF arms' joint slots
    chunk = torch.sin(torch.linspace(0, 3, cfg.horizon))[:, None] * torch.linspace(-1, 1, Da)[None] * amask
    inp = ModelInputs(state=torch.zeros(B, Da), state_mask=torch.zeros(B, Da), action_mask=amask.expand(B, Da),
                      ctrl_freq=torch.full((B,), 20.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = model.compute_loss(inp, chunk.expand(B, -1, -1), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.eval().sample(inp, generator=g)  # DPM-Solver++, 5 steps
    assert (out - chunk).abs().max() < 0.05, (out - chunk).abs().max()


@pytest.mark.slow
def test_denoiser_exports_with_torch_export() -> None:
    """No Python control flow on tensor values: torch.export traces the denoiser whole and matches eager."""
    cfg = tiny(("front",))
    model = RDTPolicyModel(cfg).eval()
    randomize_head(model)
    cond = model.encode(inputs(cfg))
    args = (torch.randn(3, cfg.horizon, Da), cond.action_mask, torch.tensor([1, 500, 999]), cond.ctrl_freq,
            cond.state, cond.state_mask, cond.lang_tokens, cond.lang_mask, cond.obs_tokens, cond.obs_mask)
    exported = torch.export.export(model.rdt, args)
    assert torch.allclose(exported.module()(*args), model.rdt(*args), atol=1e-5)
