"""Parameter counts from a config alone: modules are built on the meta device (shapes, no memory)."""

from __future__ import annotations

import torch
from torch import nn

from robot_policy.models.encoders import ObservationEncoder
from robot_policy.models.rdt import RDT, RDTConfig


def _numel(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_parameters(config: RDTConfig, include_obs_encoder: bool = False) -> int:
    """Parameters of the RDT denoiser with its state/language/observation adaptors, counted as RDT reports
    its 170M / 1.2B. ``include_obs_encoder`` adds the trainable observation encoder (a from-scratch image
    backbone, camera/time embeddings, the object-state MLP; never a frozen SigLIP tower)."""
    return sum(parameter_breakdown(config, include_obs_encoder).values())


def parameter_breakdown(config: RDTConfig, include_obs_encoder: bool = False) -> dict[str, int]:
    """Counts per top-level part: embedders, adaptors, position tables, blocks, head (and obs_encoder)."""
    with torch.device("meta"):
        rdt = RDT(config)
        enc = ObservationEncoder(config.obs_encoder, load_pretrained=False) if include_obs_encoder else None
    parts: dict[str, int] = {}
    for name, child in rdt.named_children():
        parts[name] = _numel(child)
    for name, p in rdt.named_parameters(recurse=False):
        parts[name] = p.numel()
    if enc is not None:
        parts["obs_encoder"] = _numel(enc)
    return parts
