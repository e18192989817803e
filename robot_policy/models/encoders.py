"""Observation encoders: images and low-dim object state -> the OBSERVATION condition tokens (B, N, token_dim).

Images arrive as (B, To, V, 3, H, W): To frames of history (RDT: 2) from V cameras in the order of
``ObsEncoderConfig.cameras``; uint8 in [0, 255] or float in [0, 1]. They are normalised per channel with
``image_mean``/``image_std``. A missing camera is a blank image, as in RDT: after normalisation it is all
zeros, i.e. a frame filled with the mean colour (``blank_image``). Pass ``camera_present`` (B, V) bool and
the encoder blanks the absent cameras itself, whatever their pixels hold; condition dropout of a camera is
the same operation. Blank-camera tokens stay visible to the policy (it learns that blank means missing).

Token order: image tokens time-major, then camera, then patch ((To, V, P) flattened), then object-state
tokens ((To, K) flattened). With neither images nor object state configured, the encoder emits one
masked-out null token so the observation cross-attention contributes exactly nothing.

Backbones: ``resnet`` (small GroupNorm ResNet from scratch, pooled to grid x grid tokens), ``patch`` (ViT
patchifier: one linear map per patch, the RDT transformer does the mixing), ``siglip`` (frozen SigLIP vision
tower from a local directory; its weights are not part of the state dict and never fetched from a hub).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot_policy.models.pretrained import require_local_dir, require_transformers

IMAGE_BACKBONES = ("resnet", "patch", "siglip")


@dataclass
class ObsEncoderConfig:
    """What the policy observes besides the unified robot state, and how it becomes tokens."""

    cameras: list[str] = field(default_factory=list)  # camera names in token order; [] = no images
    n_obs_steps: int = 2  # To: frames of history per camera and object-state steps (RDT: 2)
    # 128 x 128: the tasks' default render size
    image_size: list[int] = field(default_factory=lambda: [128, 128])  # (H, W) px the backbone receives
    image_backbone: str = "resnet"  # "resnet" | "patch" | "siglip"
    token_dim: int = 256  # width of every observation token (input of the RDT's obs adaptor)
    # per-channel normalisation of [0, 1] pixels; a blank camera is exactly this colour. SigLIP uses 0.5/0.5.
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # 4 stages: 128 px -> 8 x 8 feature map
    resnet_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one block per stage, /2 each
    resnet_grid: int = 4  # resnet: final feature map average-pooled to grid x grid tokens per image
    patch_size: int = 16  # patch: square patches; tokens per image = (H / p) * (W / p)
    siglip_path: str | None = None  # siglip: local directory of a SigLIP vision checkpoint (transformers format)
    siglip_tokens: int = 729  # siglip: tokens per image of that checkpoint (so400m-patch14-384: 27 x 27)
    object_state_dim: int = 0  # Do: width of ``object_state``; 0 = the policy gets none
    object_state_tokens: int = 2  # K: tokens per observation step made from ``object_state``

    def __post_init__(self) -> None:
        self.cameras = list(self.cameras)
        self.image_size = list(self.image_size)
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]
        self.resnet_widths = list(self.resnet_widths)
        w = "obs_encoder"
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"{w}.cameras: duplicate names in {self.cameras}")
        if self.n_obs_steps < 1:
            raise ValueError(f"{w}.n_obs_steps: must be >= 1, got {self.n_obs_steps}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"{w}.image_size: expected [H, W] with positive sizes, got {self.image_size}")
        if self.image_backbone not in IMAGE_BACKBONES:
            raise ValueError(f"{w}.image_backbone: unknown {self.image_backbone!r}; "
                             f"valid: {', '.join(IMAGE_BACKBONES)}")
        if self.token_dim < 1:
            raise ValueError(f"{w}.token_dim: must be >= 1, got {self.token_dim}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"{w}.image_mean/image_std: expected 3 values each, std > 0, got "
                             f"{self.image_mean}, {self.image_std}")
        if not self.resnet_widths or min(self.resnet_widths) < 1:
            raise ValueError(f"{w}.resnet_widths: expected positive channel counts, got {self.resnet_widths}")
        if self.resnet_grid < 1:
            raise ValueError(f"{w}.resnet_grid: must be >= 1, got {self.resnet_grid}")
        if self.image_backbone == "patch" and any(s % self.patch_size for s in self.image_size):
            raise ValueError(f"{w}.patch_size: {self.patch_size} must divide image_size {self.image_size}")
        if self.image_backbone == "siglip" and (self.image_mean != [0.5] * 3 or self.image_std != [0.5] * 3):
            raise ValueError(f"{w}.image_mean/image_std: SigLIP was trained on 0.5/0.5 normalisation, got "
                             f"{self.image_mean}, {self.image_std}")
        if self.siglip_tokens < 1:
            raise ValueError(f"{w}.siglip_tokens: must be >= 1, got {self.siglip_tokens}")
        if self.object_state_dim < 0:
            raise ValueError(f"{w}.object_state_dim: must be >= 0, got {self.object_state_dim}")
        if self.object_state_tokens < 1:
            raise ValueError(f"{w}.object_state_tokens: must be >= 1, got {self.object_state_tokens}")

    @property
    def tokens_per_image(self) -> int:
        """P: tokens each camera frame contributes."""
        if self.image_backbone == "resnet":
            return self.resnet_grid**2
        if self.image_backbone == "patch":
            return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        return self.siglip_tokens

    @property
    def num_image_tokens(self) -> int:
        return self.n_obs_steps * len(self.cameras) * self.tokens_per_image

    @property
    def num_object_tokens(self) -> int:
        return self.n_obs_steps * self.object_state_tokens if self.object_state_dim > 0 else 0

    @property
    def num_tokens(self) -> int:
        """N: observation tokens per sample (1 null token when nothing is configured)."""
        return max(1, self.num_image_tokens + self.num_object_tokens)


def blank_image(cfg: ObsEncoderConfig) -> Tensor:
    """(3, H, W) float image in [0, 1] that normalises to all zeros: how a missing camera is represented."""
    H, W = cfg.image_size
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    return mean.expand(3, H, W).clone()  # (3, H, W)


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: batch statistics misbehave with small batches and EMA weights
    # (Diffusion Policy's finding).
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _group_norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(y)))


class ResNetBackbone(nn.Module):
    """Small ResNet from scratch: stem (/2) then one residual block per width (/2 each), average-pooled to
    grid x grid. (M, 3, H, W) normalised -> (M, grid^2, token_dim)."""

    def __init__(self, widths: list[int], grid: int, token_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), _group_norm(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(*[_ResBlock(a, b, 2) for a, b in itertools.pairwise(widths)])
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(widths[-1], token_dim)

    def forward(self, x: Tensor) -> Tensor:
        f = self.pool(self.stages(self.stem(x)))  # (M, C, grid, grid)
        return self.proj(f.flatten(2).transpose(1, 2))  # (M, grid^2, token_dim)


class PatchBackbone(nn.Module):
    """ViT patchifier: each p x p patch -> one token by a shared linear map. (M, 3, H, W) -> (M, P, token_dim)."""

    def __init__(self, patch_size: int, token_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, token_dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (M, P, token_dim)


class SiglipBackbone(nn.Module):
    """Frozen SigLIP vision tower: (M, 3, H, W) normalised with 0.5/0.5 -> (M, P, C) last hidden states.

    The tower is held outside the module tree: its weights stay out of ``state_dict()`` and ``parameters()``
    (checkpoints carry only trainable weights; the tower is reloaded from ``path``), but ``.to()`` and
    ``.half()`` still reach it. Inputs are resized to the tower's resolution.
    """

    tower: Any  # transformers.SiglipVisionModel, deliberately unregistered

    def __init__(self, path: str | None, tokens: int, token_dim: int) -> None:
        super().__init__()
        local = require_local_dir(path, "obs_encoder.siglip_path")
        transformers = require_transformers("obs_encoder.image_backbone=siglip")
        model = transformers.SiglipVisionModel.from_pretrained(str(local), local_files_only=True)
        model.requires_grad_(False).eval()
        conf = model.config
        got_tokens = (conf.image_size // conf.patch_size) ** 2
        if got_tokens != tokens or conf.hidden_size != token_dim:
            raise ValueError(f"obs_encoder: SigLIP at {local} gives {got_tokens} tokens of width {conf.hidden_size}; "
                             f"config says siglip_tokens={tokens}, token_dim={token_dim}")
        self.image_size = int(conf.image_size)
        self.__dict__["tower"] = model  # not registered: frozen, not checkpointed

    def _apply(self, fn: Any, recurse: bool = True) -> SiglipBackbone:
        super()._apply(fn, recurse)
        self.tower._apply(fn)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.tower(pixel_values=x.to(self.tower.dtype)).last_hidden_state  # (M, P, C)


class ObjectStateEncoder(nn.Module):
    """(B, To, Do) object state -> (B, To * K, token_dim): an MLP per step emits K tokens, plus a time embedding."""

    def __init__(self, dim_in: int, n_steps: int, tokens: int, token_dim: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.mlp = nn.Sequential(nn.Linear(dim_in, token_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(token_dim, tokens * token_dim))
        self.time_embed = nn.Parameter(torch.randn(n_steps, token_dim) * 0.02)

    def forward(self, object_state: Tensor) -> Tensor:
        B, To, _ = object_state.shape
        x = self.mlp(object_state).reshape(B, To, self.tokens, -1)  # (B, To, K, token_dim)
        x = x + self.time_embed[:, None]
        return x.reshape(B, To * self.tokens, -1)  # (B, To * K, token_dim)


class ObservationEncoder(nn.Module):
    """Every configured observation input -> tokens (B, N, token_dim) and a key mask (B, N) bool.

    ``load_pretrained=False`` skips loading a frozen SigLIP tower (for counting parameters only; forward then
    fails for image inputs).
    """

    mean: Tensor  # (1, 1, 1, 3, 1, 1) buffers, present when cameras are configured
    std: Tensor

    def __init__(self, cfg: ObsEncoderConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        V, To, P, C = len(cfg.cameras), cfg.n_obs_steps, cfg.tokens_per_image, cfg.token_dim
        self.backbone: nn.Module | None = None
        if V > 0:
            if cfg.image_backbone == "resnet":
                self.backbone = ResNetBackbone(cfg.resnet_widths, cfg.resnet_grid, C)
            elif cfg.image_backbone == "patch":
                self.backbone = PatchBackbone(cfg.patch_size, C)
            elif load_pretrained:
                self.backbone = SiglipBackbone(cfg.siglip_path, cfg.siglip_tokens, C)
            # learnable camera / frame / patch-position embeddings: tell the policy where a token comes from
            self.camera_embed = nn.Parameter(torch.randn(V, C) * 0.02)
            self.time_embed = nn.Parameter(torch.randn(To, C) * 0.02)
            self.patch_embed = nn.Parameter(torch.randn(P, C) * 0.02)
            # (1, 1, 1, 3, 1, 1): broadcast over (B, To, V, 3, H, W)
            self.register_buffer("mean", torch.tensor(cfg.image_mean).reshape(1, 1, 1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(cfg.image_std).reshape(1, 1, 1, 3, 1, 1), persistent=False)
        self.object_encoder = (ObjectStateEncoder(cfg.object_state_dim, To, cfg.object_state_tokens, C)
                               if cfg.object_state_dim > 0 else None)

    def normalize_images(self, images: Tensor, camera_present: Tensor | None = None) -> Tensor:
        """(B, To, V, 3, H, W) uint8 or [0, 1] float -> normalised float; absent cameras become zeros (blank)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if camera_present is not None:
            x = x * camera_present[:, None, :, None, None, None].to(x.dtype)  # (B, 1, V, 1, 1, 1) broadcast
        return x

    def encode_images(self, images: Tensor, camera_present: Tensor | None = None) -> Tensor:
        """(B, To, V, 3, H, W) -> (B, To * V * P, token_dim)."""
        if self.backbone is None:
            raise RuntimeError("obs_encoder: the SigLIP tower was not loaded (built with load_pretrained=False)")
        B, To, V = images.shape[:3]
        x = self.normalize_images(images, camera_present)
        feats = self.backbone(x.reshape(B * To * V, *x.shape[3:]))  # (B * To * V, P, C)
        feats = feats.reshape(B, To, V, feats.shape[1], feats.shape[2])  # (B, To, V, P, C)
        feats = feats + self.time_embed[:, None, None] + self.camera_embed[:, None] + self.patch_embed
        return feats.reshape(B, To * V * feats.shape[3], feats.shape[4])  # (B, To * V * P, C)

    def forward(self, images: Tensor | None = None, camera_present: Tensor | None = None,
                object_state: Tensor | None = None, batch_size: int | None = None,
                device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Tokens (B, N, token_dim) and mask (B, N) bool (True = attend). ``batch_size`` and ``device`` are
        only needed when nothing is configured (the null token still needs a batch dimension and a device)."""
        cfg = self.cfg
        self._check_inputs(images, camera_present, object_state)
        parts: list[Tensor] = []
        if images is not None:
            parts.append(self.encode_images(images, camera_present))
        if self.object_encoder is not None and object_state is not None:
            parts.append(self.object_encoder(object_state))
        if not parts:
            if batch_size is None:
                raise ValueError("obs_encoder: no observation inputs are configured; pass batch_size")
            null = torch.zeros(batch_size, 1, cfg.token_dim, device=device)
            return null, torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
        tokens = torch.cat(parts, dim=1)  # (B, N, token_dim)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def _check_inputs(self, images: Tensor | None, camera_present: Tensor | None,
                      object_state: Tensor | None) -> None:
        cfg = self.cfg
        V, To = len(cfg.cameras), cfg.n_obs_steps
        if V == 0 and images is not None:
            raise ValueError("obs_encoder: images were given but obs_encoder.cameras is empty")
        if V > 0:
            if images is None:
                raise ValueError(f"obs_encoder: images for cameras {cfg.cameras} are required "
                                 f"(mark missing ones with camera_present=False)")
            H, W = cfg.image_size
            want = (To, V, 3, H, W)
            if images.dim() != 6 or tuple(images.shape[1:]) != want:
                raise ValueError(f"obs_encoder: images must be (B, To, V, 3, H, W) = (B, {', '.join(map(str, want))}), "
                                 f"got {tuple(images.shape)}")
            if camera_present is not None and tuple(camera_present.shape) != (images.shape[0], V):
                raise ValueError(f"obs_encoder: camera_present must be (B, V) = ({images.shape[0]}, {V}), "
                                 f"got {tuple(camera_present.shape)}")
        if cfg.object_state_dim == 0 and object_state is not None:
            raise ValueError("obs_encoder: object_state was given but obs_encoder.object_state_dim is 0")
        if cfg.object_state_dim > 0:
            want_o = (To, cfg.object_state_dim)
            if object_state is None or object_state.dim() != 3 or tuple(object_state.shape[1:]) != want_o:
                got = None if object_state is None else tuple(object_state.shape)
                raise ValueError(f"obs_encoder: object_state must be (B, To, Do) = (B, {To}, {cfg.object_state_dim}), "
                                 f"got {got}")
