"""The RDT-style diffusion transformer and the policy network around it.

Denoised sequence (T = 3 + Ta tokens of width D):
    [diffusion time | control frequency | state (+mask) | Ta noisy actions (+action mask)]
State and action tokens share one input MLP (RDT's ``state_adaptor``): both live in the unified 128-d
space, concatenated with their 128-d 0/1 mask. Each block is RMSNorm -> self-attention (QK-norm) ->
RMSNorm -> cross-attention -> RMSNorm -> MLP; the cross-attention alternates by layer between LANGUAGE
tokens (even layers) and OBSERVATION tokens (odd layers). Final RMSNorm -> MLP head, zero-initialised.

Condition tokens enter at their own width and are projected to D by adaptors that belong to the model
(``lang_adaptor``: lang_dim -> D, ``obs_adaptor``: obs token_dim -> D), as in RDT whose 1.2B count
includes them.

Shape letters: B batch, To obs steps, Ta horizon, Da = 128, L language tokens, N observation tokens,
D width.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from torch import Tensor, nn

from robot_policy.models.diffusion import DiffusionConfig, NoiseSchedule, Sampler, X0Hook
from robot_policy.models.encoders import ObsEncoderConfig, ObservationEncoder
from robot_policy.models.layers import (
    FinalLayer,
    RDTBlock,
    ScalarEmbedder,
    init_position_embedding,
    mlp_adaptor,
)
from robot_policy.models.text import TextEncoderConfig
from robot_policy.paths import CONFIG_DIR, available_configs, resolve_config
from robot_policy.spaces.unified import UNIFIED_DIM

Da = UNIFIED_DIM


@dataclass
class ConditionDropoutConfig:
    """Per-sample probability of dropping each condition in training (RDT: 10% each), so the policy copes
    when one is missing at deployment. Applied by the training step
    (``robot_policy.algorithms.bc.apply_condition_dropout``), never implicitly in forward."""

    lang: float = 0.1  # language -> all tokens masked (cross-attention contributes nothing)
    camera: float = 0.1  # each camera independently -> blank image
    state: float = 0.1  # state and its mask -> zeros
    ctrl_freq: float = 0.1  # control frequency -> 0 Hz
    object_state: float = 0.0  # object state -> 0 (not in RDT; a state-based policy's only view of objects)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"cond_dropout.{f.name}: must be in [0, 1], got {v}")


@dataclass
class RDTConfig:
    """The policy network: transformer sizes (top level) and its encoders / diffusion settings (nested).

    ``configs/policy/<name>.yaml`` sets only the keys where its variant differs from these defaults;
    ``load_policy_config`` reads one.
    """

    hidden_size: int = 256  # D
    depth: int = 6  # blocks; even layers cross-attend to language, odd to observations
    num_heads: int = 8  # D / num_heads = head size
    mlp_ratio: float = 1.0  # MLP hidden = mlp_ratio * D; RDT uses 1 (a ViT's 4 would ~1.7x the block size)
    # 16 = 0.8 s at the Panda embodiments' 20 Hz (Diffusion Policy's horizon). With rdt_small, executing the
    # whole chunk before re-planning measured best on pybullet_bimanual_lift tuning seeds (98% vs 82% executing
    # 8 and 36% executing 4: re-planning often switches between the demonstrations' grasp modes).
    horizon: int = 16  # Ta: actions per predicted chunk (RDT: 64)
    lang_dim: int = 128  # width of language tokens from the text encoder (T5-XXL: 4096)
    max_lang_tokens: int = 64  # L cap; longer instructions are truncated (RDT: 1024)
    adaptor_depth: int = 2  # lang/obs adaptors: RDT's mlp2x_gelu
    state_adaptor_depth: int = 3  # shared state/action input MLP: RDT's mlp3x_gelu
    norm_eps: float = 1e-6
    obs_encoder: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    cond_dropout: ConditionDropoutConfig = field(default_factory=ConditionDropoutConfig)

    def __post_init__(self) -> None:
        nested = {"obs_encoder": ObsEncoderConfig, "text_encoder": TextEncoderConfig,
                  "diffusion": DiffusionConfig, "cond_dropout": ConditionDropoutConfig}
        for key, cls in nested.items():
            if isinstance(getattr(self, key), Mapping):
                setattr(self, key, cls(**getattr(self, key)))
        for key in ("hidden_size", "num_heads", "horizon", "lang_dim", "max_lang_tokens",
                    "adaptor_depth", "state_adaptor_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} must divide hidden_size {self.hidden_size}")
        if self.depth < 2:
            raise ValueError(f"depth: must be >= 2 so both language and observations are attended, got {self.depth}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: must be > 0, got {self.mlp_ratio}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps: must be > 0, got {self.norm_eps}")
        if self.text_encoder.kind == "builtin" and self.lang_dim % self.text_encoder.heads:
            raise ValueError(f"text_encoder.heads: {self.text_encoder.heads} must divide lang_dim {self.lang_dim}")

    @property
    def seq_len(self) -> int:
        """T: denoised tokens = time, frequency, state, Ta actions."""
        return 3 + self.horizon


class RDT(nn.Module):
    """RDT denoiser with its input adaptors. See the module docstring for the token layout."""

    def __init__(self, cfg: RDTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.t_embedder = ScalarEmbedder(D)
        self.freq_embedder = ScalarEmbedder(D)
        self.state_adaptor = mlp_adaptor(2 * Da, D, cfg.state_adaptor_depth)  # shared by state and actions
        self.lang_adaptor = mlp_adaptor(cfg.lang_dim, D, cfg.adaptor_depth)
        self.obs_adaptor = mlp_adaptor(cfg.obs_encoder.token_dim, D, cfg.adaptor_depth)
        # learnable position embeddings, initialised to sin-cos (RDT)
        self.x_pos = nn.Parameter(torch.zeros(cfg.seq_len, D))
        self.lang_pos = nn.Parameter(torch.zeros(cfg.max_lang_tokens, D))
        self.obs_pos = nn.Parameter(torch.zeros(cfg.obs_encoder.num_tokens, D))
        self.blocks = nn.ModuleList([RDTBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth)])
        self.head = FinalLayer(D, Da, cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.x_pos, self.lang_pos, self.obs_pos):
            init_position_embedding(p)
        for emb in (self.t_embedder, self.freq_embedder):
            nn.init.normal_(emb.fc1.weight, std=0.02)
            nn.init.normal_(emb.fc2.weight, std=0.02)
        # Zero head: the untrained model predicts 0 for every target type, and early updates only move the head.
        nn.init.zeros_(self.head.mlp.fc2.weight)
        nn.init.zeros_(self.head.mlp.fc2.bias)

    def forward(self, noisy_action: Tensor, action_mask: Tensor, timestep: Tensor, ctrl_freq: Tensor,
                state: Tensor, state_mask: Tensor, lang_tokens: Tensor, lang_mask: Tensor,
                obs_tokens: Tensor, obs_mask: Tensor) -> Tensor:
        """Predict the denoising target for a noisy chunk.

        Args:
            noisy_action: (B, Ta, Da) x_t in normalised unified action space.
            action_mask: (B, Da) 0/1 float, 1 on the slots the embodiment commands.
            timestep: (B,) diffusion step in [0, T), long or float.
            ctrl_freq: (B,) control frequency in Hz (0 = unknown/dropped).
            state: (B, Da) normalised unified robot state; state_mask: (B, Da) 0/1 float.
            lang_tokens: (B, L, lang_dim), L <= max_lang_tokens; lang_mask: (B, L) bool, True = real token.
            obs_tokens: (B, N, obs token_dim); obs_mask: (B, N) bool, True = attend.
        Returns:
            (B, Ta, Da) model output in the configured prediction type (x0 by default).
        """
        self._check_shapes(noisy_action, lang_tokens, obs_tokens)
        B, Ta, _ = noisy_action.shape
        L = lang_tokens.shape[1]
        mask = action_mask.to(noisy_action.dtype)[:, None].expand(B, Ta, Da)  # (B, Ta, Da)
        actions = self.state_adaptor(torch.cat([noisy_action, mask], dim=-1))  # (B, Ta, D)
        state_tok = self.state_adaptor(torch.cat([state * state_mask, state_mask], dim=-1))[:, None]  # (B, 1, D)
        t_tok = self.t_embedder(timestep)[:, None]  # (B, 1, D)
        f_tok = self.freq_embedder(ctrl_freq)[:, None]  # (B, 1, D)
        x = torch.cat([t_tok, f_tok, state_tok, actions], dim=1) + self.x_pos  # (B, 3 + Ta, D)
        lang = self.lang_adaptor(lang_tokens) + self.lang_pos[:L]  # (B, L, D)
        obs = self.obs_adaptor(obs_tokens) + self.obs_pos  # (B, N, D)
        for i, block in enumerate(self.blocks):
            x = block(x, lang, lang_mask) if i % 2 == 0 else block(x, obs, obs_mask)
        return self.head(x[:, -Ta:])  # (B, Ta, Da)

    def _check_shapes(self, noisy_action: Tensor, lang_tokens: Tensor, obs_tokens: Tensor) -> None:
        # Shape checks only (no tensor values): they constant-fold when traced for export.
        cfg = self.cfg
        if noisy_action.dim() != 3 or noisy_action.shape[1:] != (cfg.horizon, Da):
            raise ValueError(f"noisy_action must be (B, Ta, Da) = (B, {cfg.horizon}, {Da}), "
                             f"got {tuple(noisy_action.shape)}")
        if lang_tokens.dim() != 3 or lang_tokens.shape[2] != cfg.lang_dim or lang_tokens.shape[1] > cfg.max_lang_tokens:
            raise ValueError(f"lang_tokens must be (B, L <= {cfg.max_lang_tokens}, {cfg.lang_dim}), "
                             f"got {tuple(lang_tokens.shape)}")
        want = (cfg.obs_encoder.num_tokens, cfg.obs_encoder.token_dim)
        if obs_tokens.dim() != 3 or tuple(obs_tokens.shape[1:]) != want:
            raise ValueError(f"obs_tokens must be (B, N, token_dim) = (B, {want[0]}, {want[1]}), "
                             f"got {tuple(obs_tokens.shape)}")


@dataclass
class ModelInputs:
    """Everything the policy conditions on, for one batch. Units and normalisation as in the episode store
    after the normaliser: state/action in normalised unified space, images raw."""

    state: Tensor  # (B, Da) normalised unified state
    state_mask: Tensor  # (B, Da) 0/1 float
    action_mask: Tensor  # (B, Da) 0/1 float: slots the embodiment commands
    ctrl_freq: Tensor  # (B,) Hz
    lang_tokens: Tensor | None = None  # (B, L, lang_dim) from a text encoder; None = no instruction
    lang_mask: Tensor | None = None  # (B, L) bool; None with lang_tokens = all real
    images: Tensor | None = None  # (B, To, V, 3, H, W) uint8 or [0, 1] float
    camera_present: Tensor | None = None  # (B, V) bool; None = all present
    object_state: Tensor | None = None  # (B, To, Do)

    def to(self, device: torch.device | str) -> ModelInputs:
        return dataclasses.replace(self, **{f.name: v.to(device) for f in dataclasses.fields(self)
                                            if isinstance(v := getattr(self, f.name), Tensor)})


@dataclass
class Conditions:
    """Encoded conditions, constant over the denoising steps of one chunk (encode once, denoise K times)."""

    state: Tensor  # (B, Da)
    state_mask: Tensor  # (B, Da)
    action_mask: Tensor  # (B, Da)
    ctrl_freq: Tensor  # (B,)
    lang_tokens: Tensor  # (B, L, lang_dim)
    lang_mask: Tensor  # (B, L) bool
    obs_tokens: Tensor  # (B, N, token_dim)
    obs_mask: Tensor  # (B, N) bool


def conditions_from(inputs: ModelInputs, obs_tokens: Tensor, obs_mask: Tensor, lang_dim: int) -> Conditions:
    """Assemble the conditions of one chunk from the inputs and their encoded observation tokens (B, N, token_dim)
    with mask (B, N): no instruction -> one masked language token (its cross-attention contributes nothing).
    Shared by :meth:`RDTPolicyModel.encode` and the deployment backends that run the encoder elsewhere."""
    B, dev = inputs.state.shape[0], inputs.state.device
    if inputs.lang_tokens is None:
        lang = torch.zeros(B, 1, lang_dim, device=dev)
        lang_mask = torch.zeros(B, 1, dtype=torch.bool, device=dev)
    else:
        lang = inputs.lang_tokens
        lang_mask = inputs.lang_mask if inputs.lang_mask is not None else torch.ones(
            lang.shape[:2], dtype=torch.bool, device=dev)
    return Conditions(inputs.state, inputs.state_mask, inputs.action_mask, inputs.ctrl_freq,
                      lang, lang_mask.bool(), obs_tokens, obs_mask)


class ChunkNetwork(Protocol):
    """The two networks of a diffusion policy, however they run: :class:`RDTPolicyModel` itself, or a runtime
    backend (ONNX Runtime, TensorRT) of the same graphs."""

    def encode(self, inputs: ModelInputs) -> Conditions:
        """The conditions of one chunk, computed once before the sampler's steps."""
        ...

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        """One network evaluation: x_t (B, Ta, Da), t (B,) diffusion steps -> model output (B, Ta, Da)."""
        ...


def sample_with(network: ChunkNetwork, sampler: Sampler, inputs: ModelInputs, noise: Tensor,
                generator: torch.Generator | None = None, x0_hook: X0Hook | None = None) -> Tensor:
    """The one sampling loop: encode once, then the sampler's update rule around each denoiser call, from the
    initial noise x_T (B, Ta, Da) to a chunk (B, Ta, Da) in normalised action space with masked slots zero.
    ``generator`` drives the fresh noise of the stochastic samplers (DDPM, DDIM eta > 0); ``x0_hook`` edits
    each step's x0 estimate (B, Ta, Da) before the update (:meth:`Sampler.run`; real-time chunking)."""
    cond = network.encode(inputs)
    x = sampler.run(lambda x_t, t: network.denoise(x_t, t, cond), noise, generator, x0_hook)
    return x * inputs.action_mask[:, None].to(x.dtype)


def _draw_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    # Random draws happen where the generator lives (a CPU generator cannot fill a CUDA tensor).
    return generator.device if generator is not None else fallback


class RDTPolicyModel(nn.Module):
    """Observation encoder + RDT denoiser + diffusion schedule: the trainable network of a diffusion policy.

    Training::

        loss = model.compute_loss(inputs, actions)          # actions (B, Ta, Da), normalised

    Inference (``noise`` fixes the sample; DDIM with eta=0 makes chunk a deterministic function of it)::

        chunk = model.sample(inputs, noise=w, sampler="ddim", num_steps=4)   # (B, Ta, Da)

    A backend that exports only the denoiser calls ``encode`` once per chunk and ``denoise`` per step.
    Language tokens are inputs, computed by a text encoder outside the network (frozen or precomputed).
    """

    def __init__(self, cfg: RDTConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_encoder = ObservationEncoder(cfg.obs_encoder, load_pretrained=load_pretrained)
        self.rdt = RDT(cfg)
        self.schedule = NoiseSchedule(cfg.diffusion)

    def encode(self, inputs: ModelInputs) -> Conditions:
        """Run the observation encoder and fill defaults (no language -> one masked token)."""
        obs, obs_mask = self.obs_encoder(inputs.images, inputs.camera_present, inputs.object_state,
                                         batch_size=inputs.state.shape[0], device=inputs.state.device)
        return conditions_from(inputs, obs, obs_mask, self.cfg.lang_dim)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        """One network evaluation: x_t (B, Ta, Da), t (B,) -> model output (B, Ta, Da)."""
        return self.rdt(x_t, cond.action_mask, t, cond.ctrl_freq, cond.state, cond.state_mask,
                        cond.lang_tokens, cond.lang_mask, cond.obs_tokens, cond.obs_mask)

    def forward(self, x_t: Tensor, t: Tensor, inputs: ModelInputs) -> Tensor:
        return self.denoise(x_t, t, self.encode(inputs))

    def compute_loss(self, inputs: ModelInputs, actions: Tensor, generator: torch.Generator | None = None,
                     noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """Diffusion loss (RDT): MSE over all Ta x 128 values; masked slots are trained towards 0.

        ``generator`` draws t and the noise unless given (tests pass them to pin the loss).
        """
        actions = actions * inputs.action_mask[:, None].to(actions.dtype)  # (B, Ta, Da)
        B = actions.shape[0]
        if t is None:
            t = torch.randint(0, self.schedule.num_train_timesteps, (B,), generator=generator,
                              device=_draw_device(generator, actions.device)).to(actions.device)
        if noise is None:
            noise = torch.randn(actions.shape, generator=generator,
                                device=_draw_device(generator, actions.device)).to(actions)
        x_t = self.schedule.add_noise(actions, noise, t)
        pred = self.denoise(x_t, t, self.encode(inputs))
        return F.mse_loss(pred, self.schedule.training_target(actions, noise, t))

    @torch.no_grad()
    def sample(self, inputs: ModelInputs, noise: Tensor | None = None, sampler: str | Sampler | None = None,
               num_steps: int | None = None, eta: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """A chunk (B, Ta, Da) in normalised action space, masked slots zero. Unset options come from
        ``cfg.diffusion`` (RDT: DPM-Solver++, 5 steps). ``noise`` (B, Ta, Da) is the initial x_T."""
        B = inputs.state.shape[0]
        if noise is None:
            noise = torch.randn(B, self.cfg.horizon, Da, generator=generator,
                                device=_draw_device(generator, inputs.state.device)).to(inputs.state)
        plan = sampler if isinstance(sampler, Sampler) else Sampler(self.cfg.diffusion, sampler, num_steps, eta)
        return sample_with(self, plan, inputs, noise, generator)


def policy_config_from_dict(raw: Mapping[str, Any], where: str = "policy") -> RDTConfig:
    """Plain data (parsed YAML) -> RDTConfig; an unknown key at any level is an error naming it."""
    def build(cls: Any, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            # config errors are ValueError throughout, whatever the cause
            raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")  # noqa: TRY004
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
        kwargs = {key: build(hints[key], value, f"{path}.{key}") if dataclasses.is_dataclass(hints[key]) else value
                  for key, value in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
    return build(RDTConfig, raw, where)


def available_policy_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    return available_configs("policy", config_dir)


def _policy_yaml(name_or_path: str | Path, config_dir: Path) -> tuple[dict[str, Any], Path]:
    """Raw YAML of a policy config with its Hydra ``defaults`` (other policy configs) merged in first, as
    ``robot-policy train policy=<name>`` composes it."""
    path = resolve_config("policy", name_or_path, config_dir)
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    parents = [d for d in raw.pop("defaults", []) if d != "_self_"]
    merged: Any = OmegaConf.create()
    for parent in parents:
        merged = OmegaConf.merge(merged, _policy_yaml(str(parent), config_dir)[0])
    merged = OmegaConf.merge(merged, raw)
    out = OmegaConf.to_container(merged)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}, path


def load_policy_config(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> RDTConfig:
    """``configs/policy/<name>.yaml`` (or a YAML path) -> RDTConfig; an unknown name lists the available ones.

    A config may start from others with a Hydra ``defaults: [other, _self_]`` list.
    """
    raw, path = _policy_yaml(name_or_path, config_dir)
    return policy_config_from_dict(raw, where=str(path))
