"""The two networks a deployment backend runs, exported to ONNX: the observation encoder (once per chunk)
and one denoiser step (K times per chunk). The sampling loop, normalisation and all other glue stay in
Python (:mod:`robot_policy.runtime.sampling`), so one loop drives torch, ONNX Runtime and TensorRT alike.

``denoiser.onnx`` (B is a dynamic axis; every other size is fixed at export)::

    x_t          (B, Ta, Da)        float32  noisy chunk, normalised unified action space
    timestep     (B,)               float32  diffusion step in [0, T), integer-valued
    action_mask  (B, Da)            float32  0/1
    ctrl_freq    (B,)               float32  Hz
    state        (B, Da)            float32  normalised unified state
    state_mask   (B, Da)            float32  0/1
    lang_tokens  (B, L, lang_dim)   float32  L = the exported instruction's token count
    lang_mask    (B, L)             bool     True = real token
    obs_tokens   (B, N, token_dim)  float32
    obs_mask     (B, N)             bool     True = attend
    -> model_out (B, Ta, Da)        float32  in the policy's prediction type (x0 by default)

``encoder.onnx``, only for a policy that observes images or object state (otherwise the observation
condition is one masked null token, made in Python as :class:`~robot_policy.models.encoders.ObservationEncoder`
makes it)::

    images          (B, To, V, 3, H, W)  float32 in [0, 1]   when the policy has cameras
    camera_present  (B, V)               bool                when the policy has cameras
    object_state    (B, To, Do)          float32 normalised  when object_state_dim > 0
    -> obs_tokens (B, N, token_dim) float32, obs_mask (B, N) bool

The timestep and the images are float inputs (the torch model casts them to float first thing: the
sinusoid takes ``t.float()``, the encoder ``uint8 / 255``), because float32 I/O is what every engine takes;
TensorRT's ONNX parser handles neither int64 nor uint8 inputs everywhere.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), not the TorchScript tracer. The
tracer is deprecated since torch 2.9 and, as run on this model with torch 2.13, bakes Python-level
branches on tensor values into the graph with only a TracerWarning; torch.export refuses data-dependent
control flow instead, and marks the batch axis symbolic so a graph exported at B = 2 runs at any B.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from robot_policy.models.encoders import ObsEncoderConfig, ObservationEncoder
from robot_policy.models.rdt import RDT, Da, RDTPolicyModel

DENOISER_FILE = "denoiser.onnx"
ENCODER_FILE = "encoder.onnx"
DENOISER_INPUTS = ("x_t", "timestep", "action_mask", "ctrl_freq", "state", "state_mask", "lang_tokens",
                   "lang_mask", "obs_tokens", "obs_mask")
DENOISER_OUTPUTS = ("model_out",)
ENCODER_OUTPUTS = ("obs_tokens", "obs_mask")
#: protobuf's 2 GiB cap on one file: larger models keep their weights in an external ``<file>.data``
_PROTOBUF_LIMIT = 2**31 - 2**26
#: the batch size of the example inputs; not 1, which torch.export would specialise the axis to
_EXAMPLE_BATCH = 2


def encoder_inputs(cfg: ObsEncoderConfig) -> tuple[str, ...]:
    """The encoder graph's input names for this observation config; () = no encoder graph."""
    names: tuple[str, ...] = ("images", "camera_present") if cfg.cameras else ()
    return names + (("object_state",) if cfg.object_state_dim > 0 else ())


@dataclass(frozen=True)
class ExportedGraphs:
    """Paths of the exported ONNX files (``encoder`` is None for a policy that observes only its state)."""

    denoiser: Path
    encoder: Path | None = None

    def files(self) -> list[Path]:
        """Every file of the graphs, external weight files included."""
        found = []
        for graph in (self.denoiser, self.encoder):
            if graph is not None:
                found.append(graph)
                data = graph.with_name(graph.name + ".data")
                if data.exists():
                    found.append(data)
        return found


class DenoiserGraph(nn.Module):
    """The RDT denoiser with the graph's input order and names (see the module docstring)."""

    def __init__(self, rdt: RDT) -> None:
        super().__init__()
        self.rdt = rdt

    def forward(self, x_t: Tensor, timestep: Tensor, action_mask: Tensor, ctrl_freq: Tensor, state: Tensor,
                state_mask: Tensor, lang_tokens: Tensor, lang_mask: Tensor, obs_tokens: Tensor,
                obs_mask: Tensor) -> Tensor:
        return self.rdt(x_t, action_mask, timestep, ctrl_freq, state, state_mask, lang_tokens, lang_mask,
                        obs_tokens, obs_mask)  # (B, Ta, Da)


class EncoderGraph(nn.Module):
    """The observation encoder with named optional inputs (each given exactly when the config uses it)."""

    def __init__(self, encoder: ObservationEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor | None = None, camera_present: Tensor | None = None,
                object_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.encoder(images, camera_present, object_state)  # (B, N, token_dim), (B, N)


def example_denoiser_inputs(model: RDTPolicyModel, lang_len: int, batch: int = _EXAMPLE_BATCH,
                            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random inputs of the denoiser graph's shapes and dtypes (export examples, parity checks)."""
    cfg = model.cfg
    B, Ta, N = batch, cfg.horizon, cfg.obs_encoder.num_tokens
    g = generator or torch.Generator().manual_seed(0)
    return {
        "x_t": torch.randn(B, Ta, Da, generator=g),
        "timestep": torch.randint(0, cfg.diffusion.num_train_timesteps, (B,), generator=g).float(),
        "action_mask": (torch.rand(B, Da, generator=g) < 0.5).float(),
        "ctrl_freq": torch.full((B,), 20.0),
        "state": torch.randn(B, Da, generator=g),
        "state_mask": (torch.rand(B, Da, generator=g) < 0.5).float(),
        "lang_tokens": torch.randn(B, lang_len, cfg.lang_dim, generator=g),
        "lang_mask": torch.ones(B, lang_len, dtype=torch.bool),
        "obs_tokens": torch.randn(B, N, cfg.obs_encoder.token_dim, generator=g),
        "obs_mask": torch.ones(B, N, dtype=torch.bool),
    }


def example_encoder_inputs(cfg: ObsEncoderConfig, batch: int = _EXAMPLE_BATCH,
                           generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random inputs of the encoder graph's shapes and dtypes; {} when there is no encoder graph."""
    g = generator or torch.Generator().manual_seed(0)
    B, To, V = batch, cfg.n_obs_steps, len(cfg.cameras)
    out: dict[str, Tensor] = {}
    if cfg.cameras:
        H, W = cfg.image_size
        out["images"] = torch.rand(B, To, V, 3, H, W, generator=g)
        out["camera_present"] = torch.ones(B, V, dtype=torch.bool)
    if cfg.object_state_dim > 0:
        out["object_state"] = torch.randn(B, To, cfg.object_state_dim, generator=g)
    return out


def export_graphs(model: RDTPolicyModel, out_dir: str | Path, lang_len: int, opset: int | None = None) -> ExportedGraphs:
    """Write ``denoiser.onnx`` (and ``encoder.onnx`` when the policy observes more than its state) into
    ``out_dir``. ``lang_len``: L, the token count of the instruction the graphs will be fed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    denoiser = out_dir / DENOISER_FILE
    _export(DenoiserGraph(model.rdt), example_denoiser_inputs(model, lang_len), DENOISER_OUTPUTS, denoiser, opset)
    encoder = None
    enc_inputs = example_encoder_inputs(model.cfg.obs_encoder)
    if enc_inputs:
        encoder = out_dir / ENCODER_FILE
        _export(EncoderGraph(model.obs_encoder), enc_inputs, ENCODER_OUTPUTS, encoder, opset)
    return ExportedGraphs(denoiser, encoder)


def _export(module: nn.Module, inputs: dict[str, Tensor], outputs: tuple[str, ...], path: Path,
            opset: int | None) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, (), kwargs=inputs, input_names=list(inputs), output_names=list(outputs),
            dynamic_shapes={name: {0: batch} for name in inputs}, opset_version=opset, dynamo=True,
            optimize=True, verbose=False)
    assert program is not None
    program.save(str(path), external_data=size >= _PROTOBUF_LIMIT)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter warns about renamed axes and deprecations of its own internals; a bundle export
    reports its own result."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
