"""Run a frozen base's networks on a deployment backend during fine-tuning (``base_backend=onnxruntime``).

RL rollouts call the base on most env steps, at batch 1-2: the envs end episodes at different times, so their
chunks fall due on different steps. There the torch model's per-op overhead dominates, and ONNX Runtime runs
the same graphs faster (BENCHMARKS.md). The graphs are exported into the run directory once, checked against
the torch model, and the base's sampling loop then calls them through :meth:`FrozenBase.use_network`.
The composites a run writes keep the torch base: evaluation and deployment load the checkpoint as usual,
and their chunks differ from the rollouts' by the export's numerical error (checked here to <= 1e-4).
"""

from __future__ import annotations

from pathlib import Path

from robot_policy.models.frozen_base import FrozenBase
from robot_policy.runtime.backends import BackendOptions, BackendSource, backend_names, make_backend
from robot_policy.runtime.bundle.export import check_graphs
from robot_policy.runtime.onnx_graphs import export_graphs

#: backends that run the base from exported ONNX graphs
ONNX_BACKENDS = ("onnxruntime",)


def check_base_backend(name: str) -> None:
    """``torch`` (the model itself) or an ONNX backend; anything else lists the choices. Not ``torch.compile``:
    it compiles for one batch size (a robot's), and the rollouts call the base at 1..num_envs; not
    ``tensorrt``: it needs a GPU these runs do not have."""
    valid = [b for b in backend_names() if b not in ("tensorrt", "torch.compile")]
    if name not in valid:
        raise ValueError(f"base_backend: unknown or unsupported {name!r}; choose one of {', '.join(valid)}")


def use_base_backend(base: FrozenBase, name: str, work_dir: Path, threads: int = 1) -> dict[str, float]:
    """Swap ``base``'s networks for backend ``name`` (no-op for ``torch``). Returns the export check's max
    abs differences to the torch model (empty for the torch backends)."""
    check_base_backend(name)
    if name == "torch":
        return {}
    lang_len = int(base.language_table.tokens.shape[1])
    found: dict[str, float] = {}
    graphs = None
    if name in ONNX_BACKENDS:
        graphs = export_graphs(base.model, work_dir, lang_len=lang_len)
        found = check_graphs(base.model, graphs, lang_len=lang_len)  # raises past its tolerance
    source = BackendSource(base.model.cfg, load_model=lambda: base.model, graphs=graphs)
    base.use_network(make_backend(name, source, BackendOptions(device="cpu", threads=threads)))
    return found
