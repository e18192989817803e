"""``robot-policy export``: a checkpoint -> a self-contained deploy bundle directory.

    BUNDLE/
      manifest.json          sha256 of every other file; versions; the source checkpoint's content hash
      policy.json            policy config, sampler (kind, steps, timesteps), execute horizon, observation
                             layout (obs horizon, cameras, image size, object-state width), the instruction,
                             each graph's named inputs/outputs with shapes and dtypes, the export check
      denoiser.onnx          one denoiser step (robot_policy.runtime.onnx_graphs)
      encoder.onnx           the observation encoder (only for a policy that sees images or object state)
      normalizer.json        normalisation statistics (state, action, object state)
      embodiment.json        the embodiment spec the policy drives
      language.safetensors   the instruction's precomputed tokens (1, L, lang_dim) and mask (1, L)
      model.safetensors      the checkpoint's weights, byte for byte: the torch backends rebuild the network
                             from them and policy.json (so a bundle can be checked against eager torch on
                             the robot); the ONNX backends never read them

The bundle is written to a temporary sibling directory and renamed into place when complete, so ``out``
never holds half a bundle. After writing, the graphs are run on ONNX Runtime against the torch model on
random inputs; a difference beyond :data:`EXPORT_TOLERANCE` fails the export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from robot_policy import __version__
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.diffusion import SAMPLERS
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.rdt import RDTPolicyModel
from robot_policy.runtime.bundle.layout import (
    EMBODIMENT,
    LANGUAGE,
    NORMALIZER,
    POLICY,
    WEIGHTS,
)
from robot_policy.runtime.bundle.manifest import is_bundle, write_manifest
from robot_policy.runtime.onnx_graphs import (
    DenoiserGraph,
    EncoderGraph,
    ExportedGraphs,
    example_denoiser_inputs,
    example_encoder_inputs,
    export_graphs,
)

FORMATS = ("onnx",)
#: largest |ONNX Runtime - torch| on the export check's random inputs (float32; measured ~1e-6)
EXPORT_TOLERANCE = 1e-4


@dataclass
class ExportConfig:
    """What to export and where."""

    #: checkpoint directory, or a run directory (its latest checkpoint)
    checkpoint: str = "???"
    #: the bundle directory to write
    out: str = "???"
    #: graph format: onnx (TensorRT engines are built from it on the target: backend=tensorrt)
    format: str = "onnx"
    #: sampler the bundle runs: ddpm, ddim or dpmsolver++; None = the checkpoint's own
    sampler: str | None = None
    #: denoising steps of that sampler; None = the checkpoint's own
    sampler_steps: int | None = None
    #: actions executed per chunk; None = the checkpoint's own
    execute_horizon: int | None = None
    #: for a multi-embodiment checkpoint, which embodiment; None = its first
    embodiment: str | None = None
    #: the instruction whose tokens the bundle carries; None = the first one seen in training
    language: str | None = None
    #: ONNX opset; None = the exporter's default
    opset: int | None = None
    #: replace ``out`` if it exists (it must be a bundle: nothing else is deleted)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: unknown {self.format!r}; formats: {', '.join(FORMATS)}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; samplers: {', '.join(SAMPLERS)}")
        for key in ("sampler_steps", "execute_horizon", "opset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}: must be >= 1, got {value}")


def export_bundle(cfg: ExportConfig) -> Path:
    """Write the bundle of ``cfg.checkpoint`` to ``cfg.out`` (see the module docstring); returns its path."""
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    if "policy" not in ckpt.load_config(ckpt.resolve_checkpoint(cfg.checkpoint)):
        raise ValueError(f"checkpoint={cfg.checkpoint}: not a diffusion policy checkpoint (a fine-tuned composite "
                         "has no 'policy' config); export its base, or a distilled student")
    base = FrozenBase.from_checkpoint(cfg.checkpoint, sampler=cfg.sampler, num_steps=cfg.sampler_steps,
                                      embodiment=cfg.embodiment, language=cfg.language)
    execute_horizon = cfg.execute_horizon or base.default_execute_horizon
    if not 1 <= execute_horizon <= base.horizon:
        raise ValueError(f"execute_horizon={execute_horizon} does not fit the policy's chunk of {base.horizon} "
                         f"actions: choose 1..{base.horizon}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(base, tmp, cfg, execute_horizon)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"out={out}: exists; choose another directory, or overwrite=true to replace a bundle")
    if not is_bundle(out):
        raise FileExistsError(f"out={out}: exists and is not a bundle (no manifest.json); overwrite=true only "
                              "replaces a bundle")


def _write(base: FrozenBase, root: Path, cfg: ExportConfig, execute_horizon: int) -> None:
    model, table = base.model, base.language_table
    tokens, mask = table.tokens[:1].cpu(), table.mask[:1].cpu()  # (1, L, lang_dim), (1, L)
    graphs = export_graphs(model, root, lang_len=tokens.shape[1], opset=cfg.opset)
    check = check_graphs(model, graphs, lang_len=tokens.shape[1])
    save_file({"tokens": tokens.contiguous(), "mask": mask.contiguous()}, str(root / LANGUAGE))
    assert base.path is not None
    shutil.copyfile(base.path / ckpt.MODEL, root / WEIGHTS)
    (root / NORMALIZER).write_text(json.dumps(base.normalizer.to_json(), indent=1))
    (root / EMBODIMENT).write_text(json.dumps(base.embodiment.to_dict(), indent=2))
    obs = model.cfg.obs_encoder
    spec = {
        "policy": dataclasses.asdict(model.cfg),
        "language": base.language,
        "sampler": {"kind": base.sampler.kind, "num_steps": base.sampler.num_steps, "eta": base.sampler.eta,
                    "timesteps": base.sampler.timesteps},
        "execute_horizon": execute_horizon,
        "horizon": base.horizon,
        "obs_horizon": base.obs_horizon,
        "cameras": list(obs.cameras),
        "image_size": list(obs.image_size),
        "object_state_dim": obs.object_state_dim,
        "graphs": {"denoiser": graph_signature(graphs.denoiser),
                   "encoder": graph_signature(graphs.encoder) if graphs.encoder is not None else None},
        "export_check": check,
    }
    (root / POLICY).write_text(json.dumps(spec, indent=2))
    write_manifest(root, versions(), {"checkpoint": str(base.path), "content_hash": base.content_hash,
                                      "step": base.meta.get("step")})


def versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import onnxscript

    return {"robot_policy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
            "diffusers": diffusers.__version__, "numpy": np.__version__, "python": platform.python_version()}


def graph_signature(path: Path) -> dict[str, Any]:
    """A graph's file, inputs and outputs: name, shape (a symbolic axis by its name) and element type."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return {"file": path.name, "inputs": describe(graph.input), "outputs": describe(graph.output)}


def check_graphs(model: RDTPolicyModel, graphs: ExportedGraphs, lang_len: int) -> dict[str, float]:
    """max |ONNX Runtime - torch| of each graph on random inputs at batch 1 and 3 (the export axis is 2);
    beyond :data:`EXPORT_TOLERANCE` is an error."""
    import onnxruntime as ort

    found: dict[str, float] = {}
    cases: list[tuple[str, Path, torch.nn.Module, Callable[[int], dict[str, torch.Tensor]]]] = [
        ("denoiser", graphs.denoiser, DenoiserGraph(model.rdt), lambda b: example_denoiser_inputs(model, lang_len, b))]
    if graphs.encoder is not None:
        cases.append(("encoder", graphs.encoder, EncoderGraph(model.obs_encoder),
                      lambda b: example_encoder_inputs(model.cfg.obs_encoder, b)))
    for name, path, module, make_inputs in cases:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 3):
            inputs = make_inputs(batch)
            with torch.no_grad():
                ref = module(**inputs)
            got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
            for r, g in zip(ref if isinstance(ref, tuple) else (ref,), got):
                worst = max(worst, float(np.abs(r.numpy().astype(np.float64) - g.astype(np.float64)).max()))
        if worst > EXPORT_TOLERANCE:
            raise RuntimeError(f"export check: {name}.onnx on ONNX Runtime differs from torch by {worst:.3g} "
                               f"(tolerance {EXPORT_TOLERANCE}); the graph does not reproduce the model")
        found[f"{name}_max_abs_diff"] = worst
    return found
