"""Backends by name: one interface (:class:`Backend`: ``encode`` once per chunk, ``denoise`` per step), four
ways to run it, and one sampling loop for all (:func:`robot_policy.runtime.sampling.sample_chunk`)::

    source = BackendSource(cfg, load_model=lambda: model, graphs=export_graphs(model, out_dir, lang_len))
    backend = make_backend("onnxruntime", source, BackendOptions(device="cpu", threads=1))
    chunk = sample_chunk(backend, Sampler(cfg.diffusion), inputs, noise)

| name            | runs                                                  | built from           |
|-----------------|-------------------------------------------------------|----------------------|
| `torch`         | the torch model, eager (the reference)                | weights              |
| `torch.compile` | the denoiser step compiled by inductor                | weights              |
| `onnxruntime`   | the ONNX graphs, CPU or CUDA execution provider       | ONNX                 |
| `tensorrt`      | FP16 engines built from the ONNX graphs, cached       | ONNX (+ a CUDA GPU)  |

Each backend imports its engine (onnxruntime, tensorrt) only when it is built.
"""

from __future__ import annotations

from collections.abc import Callable

from robot_policy.runtime.backends.base import Backend, BackendOptions, BackendSource
from robot_policy.runtime.backends.onnxruntime_backend import make_onnxruntime
from robot_policy.runtime.backends.tensorrt_backend import make_tensorrt
from robot_policy.runtime.backends.torch_backend import make_torch, make_torch_compile

BackendFactory = Callable[[BackendSource, BackendOptions], Backend]

_REGISTRY: dict[str, BackendFactory] = {
    "torch": make_torch,
    "torch.compile": make_torch_compile,
    "onnxruntime": make_onnxruntime,
    "tensorrt": make_tensorrt,
}


def backend_names() -> list[str]:
    """The registered backend names, in registration order."""
    return list(_REGISTRY)


def register_backend(name: str, factory: BackendFactory) -> None:
    """Add a backend; a name that exists is an error (no silent replacement)."""
    if name in _REGISTRY:
        raise KeyError(f"backend {name!r} is already registered")
    _REGISTRY[name] = factory


def make_backend(name: str, source: BackendSource, options: BackendOptions | None = None) -> Backend:
    """Build backend ``name`` from ``source``; an unknown name lists the registered ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backend {name!r}; backends: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](source, options or BackendOptions())


__all__ = ["Backend", "BackendOptions", "BackendSource", "backend_names", "make_backend", "register_backend"]
