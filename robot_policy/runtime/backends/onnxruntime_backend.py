"""The ``onnxruntime`` backend: the exported graphs on ONNX Runtime's CPU execution provider, or its CUDA
provider (``onnxruntime-gpu``) with device=cuda, or device=auto where that provider is installed.

Tensors in and out are CPU torch tensors whichever provider runs the graphs (ONNX Runtime copies to the
GPU and back per call), so the sampler's update runs on the CPU, as with the torch backend on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robot_policy.models.rdt import Conditions, ModelInputs, RDTConfig, conditions_from
from robot_policy.runtime.backends.base import (
    BackendOptions,
    BackendSource,
    denoiser_feeds,
    encoder_feeds,
    null_observation,
)
from robot_policy.runtime.onnx_graphs import DENOISER_OUTPUTS, ENCODER_OUTPUTS

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def providers_for(device: str, available: list[str]) -> list[str]:
    """The execution providers for a device option, in ONNX Runtime's order of preference."""
    if device == "cpu" or (device == "auto" and CUDA not in available):
        return [CPU]
    if CUDA not in available:
        raise RuntimeError(f"backend onnxruntime, device=cuda: ONNX Runtime here has no {CUDA} (providers: "
                           f"{', '.join(available)}); install onnxruntime-gpu on a CUDA machine, or use device=cpu")
    return [CUDA, CPU]


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


class OnnxRuntimeBackend:
    """``encode`` runs ``encoder.onnx`` (if any) and assembles the conditions in Python; ``denoise`` runs
    ``denoiser.onnx``. One session per graph, built once."""

    name = "onnxruntime"

    def __init__(self, cfg: RDTConfig, denoiser: Path, encoder: Path | None, options: BackendOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("backend onnxruntime needs the 'onnxruntime' package: pip install onnxruntime") from e
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.providers = providers_for(options.device, ort.get_available_providers())
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1  # the graphs are one chain of ops: nothing to run side by side
        so.log_severity_level = 3  # errors only: ORT warns about every unused initializer it prunes
        self._denoiser: Any = ort.InferenceSession(str(denoiser), so, providers=self.providers)
        self._encoder: Any = (ort.InferenceSession(str(encoder), so, providers=self.providers)
                              if encoder is not None else None)

    def encode(self, inputs: ModelInputs) -> Conditions:
        inputs = inputs.to(self.device)
        if self._encoder is None:
            tokens, mask = null_observation(inputs, self.cfg)
        else:
            feeds = {k: _numpy(v) for k, v in encoder_feeds(inputs, self.cfg).items()}
            tokens_np, mask_np = self._encoder.run(list(ENCODER_OUTPUTS), feeds)
            tokens, mask = torch.from_numpy(tokens_np), torch.from_numpy(mask_np)
        return conditions_from(inputs, tokens, mask, self.cfg.lang_dim)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        feeds = {k: _numpy(v) for k, v in denoiser_feeds(x_t, t, cond).items()}
        (out,) = self._denoiser.run(list(DENOISER_OUTPUTS), feeds)
        return torch.from_numpy(out).to(x_t.device)  # (B, Ta, Da)


def make_onnxruntime(source: BackendSource, options: BackendOptions) -> OnnxRuntimeBackend:
    graphs = source.onnx("onnxruntime")
    return OnnxRuntimeBackend(source.cfg, graphs.denoiser, graphs.encoder, options)
