"""What every backend is and is built from, and the Python glue the graph backends share.

A backend runs the two networks of a diffusion policy: ``encode(inputs) -> Conditions`` once per chunk
(observation encoder + condition assembly) and ``denoise(x_t, t, cond) -> model_out`` once per sampler
step. It takes and returns torch tensors on :attr:`Backend.device`, whatever runs inside, so the one
sampling loop (:func:`robot_policy.runtime.sampling.sample_chunk`, diffusers' update rules through
:class:`~robot_policy.models.diffusion.Sampler`) drives every backend unchanged.

Shapes: B batch, Ta horizon, Da = 128, L language tokens, N observation tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from robot_policy.models.rdt import ChunkNetwork, Conditions, ModelInputs, RDTConfig, RDTPolicyModel
from robot_policy.runtime.onnx_graphs import ExportedGraphs, encoder_inputs

DEVICES = ("cpu", "cuda", "auto")


@runtime_checkable
class Backend(ChunkNetwork, Protocol):
    """One way to run the encoder and the denoiser step (see the module docstring): ``encode(inputs)`` with
    ``inputs`` as :func:`~robot_policy.models.inputs.make_model_inputs` makes them (normalised state, uint8
    images (B, To, V, 3, H, W), ...) and ``denoise(x_t, t, cond)``, as every
    :class:`~robot_policy.models.rdt.ChunkNetwork`, plus its name and device."""

    #: the registry name (``torch``, ``onnxruntime``, ...)
    name: str
    #: where the tensors it takes and returns live (an engine may compute elsewhere)
    device: torch.device


@dataclass(frozen=True)
class BackendOptions:
    """How a backend runs, whatever it is built from."""

    #: cpu, cuda, or auto (cuda where the backend can use it, else cpu)
    device: str = "cpu"
    #: intra-op threads; 0 = the library's default. ONNX Runtime: per session; torch: process-wide
    #: (torch.set_num_threads when the backend is built)
    threads: int = 0
    #: tensorrt: where built engines are cached; None = $XDG_CACHE_HOME/robot_policy/tensorrt
    engine_cache: str | None = None
    #: tensorrt: the largest batch the engine's optimisation profile accepts
    max_batch: int = 64

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device: unknown {self.device!r}; valid: {', '.join(DEVICES)}")
        if self.threads < 0:
            raise ValueError(f"threads: must be >= 0, got {self.threads}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {self.max_batch}")


@dataclass(frozen=True)
class BackendSource:
    """What a backend may be built from; each uses its part. ``cfg`` always (shapes, what is observed);
    ``load_model`` for the torch backends (called once, it builds the network with its weights);
    ``graphs`` for the engines that run ONNX."""

    cfg: RDTConfig
    load_model: Callable[[], RDTPolicyModel] | None = None
    graphs: ExportedGraphs | None = None

    def model(self, backend: str) -> RDTPolicyModel:
        if self.load_model is None:
            raise ValueError(f"backend {backend}: needs the torch model's weights, and this source has none")
        return self.load_model()

    def onnx(self, backend: str) -> ExportedGraphs:
        if self.graphs is None:
            raise ValueError(f"backend {backend}: needs the exported ONNX graphs, and this source has none")
        want_encoder = bool(encoder_inputs(self.cfg.obs_encoder))
        if want_encoder != (self.graphs.encoder is not None):
            raise ValueError(f"backend {backend}: the policy {'observes' if want_encoder else 'does not observe'} "
                             f"images or object state, but the graphs {'lack' if want_encoder else 'have'} an encoder")
        for path in (self.graphs.denoiser, self.graphs.encoder):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"backend {backend}: no ONNX graph at {path}")
        return self.graphs


def resolve_device(option: str, cuda_usable: bool) -> torch.device:
    """``auto`` -> cuda where usable, else cpu; ``cuda`` where it is not usable is an error."""
    if option == "auto":
        return torch.device("cuda" if cuda_usable else "cpu")
    if option == "cuda" and not cuda_usable:
        raise RuntimeError("device=cuda: no usable CUDA device for this backend here")
    return torch.device(option)


def encoder_feeds(inputs: ModelInputs, cfg: RDTConfig) -> dict[str, Tensor]:
    """The encoder graph's inputs from model inputs (names and dtypes in :mod:`~robot_policy.runtime.onnx_graphs`).
    uint8 images become [0, 1] floats here, as the torch encoder's first step does."""
    obs = cfg.obs_encoder
    feeds: dict[str, Tensor] = {}
    if obs.cameras:
        if inputs.images is None:
            raise ValueError(f"encode: images for cameras {obs.cameras} are required")
        images = inputs.images
        feeds["images"] = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        B, V = images.shape[0], len(obs.cameras)
        present = inputs.camera_present
        feeds["camera_present"] = (torch.ones(B, V, dtype=torch.bool, device=images.device) if present is None
                                   else present.bool())
    if obs.object_state_dim > 0:
        if inputs.object_state is None:
            raise ValueError(f"encode: object_state (B, To, {obs.object_state_dim}) is required by this policy")
        feeds["object_state"] = inputs.object_state.float()
    return feeds


def null_observation(inputs: ModelInputs, cfg: RDTConfig) -> tuple[Tensor, Tensor]:
    """A policy that observes only its state: one masked zero token (B, 1, token_dim), as
    ObservationEncoder makes it; the observation cross-attention then contributes exactly nothing."""
    B, dev = inputs.state.shape[0], inputs.state.device
    return (torch.zeros(B, 1, cfg.obs_encoder.token_dim, device=dev),
            torch.zeros(B, 1, dtype=torch.bool, device=dev))


def denoiser_feeds(x_t: Tensor, t: Tensor, cond: Conditions) -> dict[str, Tensor]:
    """The denoiser graph's inputs, by name, in its dtypes (float32, bool masks)."""
    return {
        "x_t": x_t.float(), "timestep": t.float(), "action_mask": cond.action_mask.float(),
        "ctrl_freq": cond.ctrl_freq.float(), "state": cond.state.float(), "state_mask": cond.state_mask.float(),
        "lang_tokens": cond.lang_tokens.float(), "lang_mask": cond.lang_mask.bool(),
        "obs_tokens": cond.obs_tokens.float(), "obs_mask": cond.obs_mask.bool(),
    }
