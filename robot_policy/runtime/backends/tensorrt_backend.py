"""The ``tensorrt`` backend: FP16 engines built from the exported ONNX graphs with TensorRT's Python API,
run on the CUDA device through torch tensors (no pycuda).

``tensorrt`` is imported only when this backend is built: it exists only on GPU machines, and its PyPI
packages are stubs that download from NVIDIA's index. An engine is specific to the GPU model and the
TensorRT version, so it is built on the target, on first use, and cached on disk under a name that
holds the GPU name, the TensorRT version, the ONNX file's sha256 and the largest batch; a different GPU,
TensorRT or graph builds a new one. Building takes seconds to minutes; loading a cached one, milliseconds.

Precision: TensorRT 10 takes the FP32 graph with the FP16 builder flag and chooses per layer (inputs and
outputs stay FP32). TensorRT 11 removed that flag (networks are strongly typed: the ONNX's own types
rule), so there the same graph builds an FP32 engine and :attr:`TensorRTBackend.precision` says so; an
FP16 engine on TensorRT 11 needs an FP16 graph, which the bundle does not carry yet.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

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
from robot_policy.runtime.onnx_graphs import DENOISER_OUTPUTS, ENCODER_OUTPUTS, ExportedGraphs


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or an ImportError that says where it comes from."""
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError("backend tensorrt needs NVIDIA TensorRT's Python package (import tensorrt), which "
                          "comes with TensorRT on a GPU machine (JetPack, NGC containers, or pip from "
                          "pypi.nvidia.com); use backend=onnxruntime or torch elsewhere") from e
    return tensorrt


def default_engine_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robot_policy" / "tensorrt"


def file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def engine_path(cache_dir: Path, onnx: Path, gpu_name: str, trt_version: str, max_batch: int) -> Path:
    """Where the engine of ``onnx`` for this GPU and TensorRT version is cached."""
    files = [onnx] + ([data] if (data := onnx.with_name(onnx.name + ".data")).exists() else [])
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    return cache_dir / f"{onnx.stem}-{gpu}-trt{trt_version}-{file_sha256(files)[:16]}-b{max_batch}.engine"


def _major(version: str) -> int:
    return int(version.split(".")[0])


def engine_precision(trt: Any) -> str:
    """fp16 where this TensorRT has the FP16 builder flag (up to 10.x), else fp32 (see the module docstring)."""
    return "fp16" if hasattr(trt.BuilderFlag, "FP16") else "fp32"


def build_engine(trt: Any, onnx: Path, max_batch: int) -> bytes:
    """Serialised engine of one ONNX graph (batch axis 1..max_batch, optimised for 1), in
    :func:`engine_precision`."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _major(trt.__version__) < 10:  # explicit batch is the only mode from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"backend tensorrt: cannot parse {onnx}: {errors}")
    config = builder.create_builder_config()
    if engine_precision(trt) == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)  # -1 on the dynamic batch axis
        profile.set_shape(tensor.name, [1 if d < 0 else d for d in dims], [1 if d < 0 else d for d in dims],
                          [max_batch if d < 0 else d for d in dims])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"backend tensorrt: building an engine from {onnx} failed (see TensorRT's log above)")
    return bytes(plan)


class TensorRTEngine:
    """One deserialised engine and its execution context, run on torch's current CUDA stream."""

    def __init__(self, trt: Any, onnx: Path, cache_dir: Path, max_batch: int) -> None:
        self.path = engine_path(cache_dir, onnx, torch.cuda.get_device_name(), trt.__version__, max_batch)
        self.precision = engine_precision(trt)  # the cache key holds the TensorRT version, so also a cached one's
        if not self.path.exists():
            plan = build_engine(trt, onnx, max_batch)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(plan)
            os.replace(tmp, self.path)  # another process building the same engine never sees half a file
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: it must outlive its engines
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"backend tensorrt: cannot load the cached engine {self.path}; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inputs by name (any device/dtype: moved and cast to the engine's) -> outputs by name on CUDA."""
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ValueError(f"backend tensorrt: engine {self.path.name} needs inputs {sorted(missing)}")
        # Kept referenced until the call returns; later torch work on the same stream is ordered after it.
        bound = {n: feeds[n].to("cuda", self._dtypes[n]).contiguous() for n in self.inputs}
        for name, t in bound.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name],
                                     device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"backend tensorrt: engine {self.path.name} failed to run")
        return outs


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bool": torch.bool, "int32": torch.int32,
                 "int64": torch.int64, "int8": torch.int8, "uint8": torch.uint8}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {getattr(trt, name): t for name, t in _TORCH_DTYPES.items() if hasattr(trt, name)}
    if dtype not in table:
        raise TypeError(f"backend tensorrt: no torch dtype for TensorRT's {dtype}")
    return table[dtype]


class TensorRTBackend:
    """``encode``/``denoise`` through TensorRT engines; tensors in and out on the CUDA device."""

    name = "tensorrt"

    def __init__(self, trt: Any, cfg: RDTConfig, graphs: ExportedGraphs, options: BackendOptions) -> None:
        self.cfg = cfg
        self.device = torch.device("cuda")
        cache = Path(options.engine_cache) if options.engine_cache else default_engine_cache()
        self._denoiser = TensorRTEngine(trt, graphs.denoiser, cache, options.max_batch)
        self._encoder = (TensorRTEngine(trt, graphs.encoder, cache, options.max_batch)
                         if graphs.encoder is not None else None)
        self.precision = self._denoiser.precision
        if self.precision != "fp16":
            warnings.warn(f"backend tensorrt: TensorRT {trt.__version__} has no FP16 builder flag; the engine "
                          "is FP32 (see robot_policy.runtime.backends.tensorrt_backend)", stacklevel=2)

    def encode(self, inputs: ModelInputs) -> Conditions:
        inputs = inputs.to(self.device)
        if self._encoder is None:
            tokens, mask = null_observation(inputs, self.cfg)
        else:
            outs = self._encoder.run(encoder_feeds(inputs, self.cfg))
            tokens, mask = (outs[name] for name in ENCODER_OUTPUTS)
        return conditions_from(inputs, tokens.float(), mask.bool(), self.cfg.lang_dim)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        (name,) = DENOISER_OUTPUTS
        return self._denoiser.run(denoiser_feeds(x_t, t, cond))[name].to(x_t.device, x_t.dtype)  # (B, Ta, Da)


def require_tensorrt(options: BackendOptions) -> Any:
    """The ``tensorrt`` module where this backend can run (a CUDA device asked for and present), else the
    error that says why not."""
    if options.device == "cpu":
        raise ValueError("backend tensorrt runs on a CUDA device; device=cpu asks for another backend")
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise RuntimeError("backend tensorrt: no CUDA device here (torch.cuda.is_available() is False)")
    return trt


def make_tensorrt(source: BackendSource, options: BackendOptions) -> TensorRTBackend:
    trt = require_tensorrt(options)  # before the graphs: the first thing to know on a machine without it
    return TensorRTBackend(trt, source.cfg, source.onnx("tensorrt"), options)
