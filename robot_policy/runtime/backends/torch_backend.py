"""The torch backends: ``torch`` (eager, the reference every other backend is checked against) and
``torch.compile`` (the denoiser step compiled by inductor; the encoder, run once per chunk, stays eager)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robot_policy.models.rdt import Conditions, ModelInputs, RDTPolicyModel
from robot_policy.runtime.backends.base import BackendOptions, BackendSource, resolve_device


class TorchBackend:
    """The policy network itself: ``encode`` and ``denoise`` are :class:`RDTPolicyModel`'s."""

    def __init__(self, model: RDTPolicyModel, options: BackendOptions, compile: bool = False) -> None:
        self.name = "torch.compile" if compile else "torch"
        self.device = resolve_device(options.device, torch.cuda.is_available())
        if options.threads:
            torch.set_num_threads(options.threads)
        self.model = model.to(self.device).eval().requires_grad_(False)
        rdt = self.model.rdt
        # Static shapes: one graph per batch size, specialised; a robot runs one batch size.
        self._rdt: Callable[..., Tensor] = torch.compile(rdt, dynamic=False) if compile else rdt

    @torch.no_grad()
    def encode(self, inputs: ModelInputs) -> Conditions:
        return self.model.encode(inputs.to(self.device))

    @torch.no_grad()
    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        return self._rdt(x_t, cond.action_mask, t, cond.ctrl_freq, cond.state, cond.state_mask,
                         cond.lang_tokens, cond.lang_mask, cond.obs_tokens, cond.obs_mask)  # (B, Ta, Da)


def make_torch(source: BackendSource, options: BackendOptions) -> TorchBackend:
    return TorchBackend(source.model("torch"), options)


def make_torch_compile(source: BackendSource, options: BackendOptions) -> TorchBackend:
    return TorchBackend(source.model("torch.compile"), options, compile=True)
