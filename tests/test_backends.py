"""Backends against eager torch, on a tiny random-weight RDT (exported once per config, seconds):

* ONNX Runtime's denoiser and encoder outputs and whole chunks (the same inputs and noise, the one
  sampling loop) within 1e-4 of torch in float32, at the export batch and others; the torch backend is
  ``RDTPolicyModel.sample`` bit for bit; a model with other weights is far outside that tolerance (so the
  check can fail);
* ``torch.compile`` within 1e-4 of eager (slow: inductor compiles for tens of seconds on CPU);
* TensorRT FP16 chunks at cosine >= 0.99 to torch's (gpu: skips without CUDA or tensorrt);
* the registry lists its names on an unknown one; a CUDA request without the CUDA provider is an error.

Every weight is redrawn (the zero-initialised output head would make every backend agree on 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from robot_policy.models.diffusion import Sampler
from robot_policy.models.rdt import Da, ModelInputs, RDTPolicyModel, load_policy_config
from robot_policy.runtime.backends import BackendOptions, BackendSource, backend_names, make_backend
from robot_policy.runtime.backends.onnxruntime_backend import providers_for
from robot_policy.runtime.onnx_graphs import (
    DenoiserGraph,
    ExportedGraphs,
    example_denoiser_inputs,
    export_graphs,
)
from robot_policy.runtime.sampling import sample_chunk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4  # max |action difference| in float32 (issue 9)
LANG_LEN = 5
#: "state": the policy observes only its state (no encoder graph: a masked null token);
#: "images+object": one 32 px camera and a 6-d object state (encoder graph)
CONFIGS = {"state": {}, "images+object": {"cameras": ["front"], "image_size": [32, 32], "object_state_dim": 6}}


def random_model(obs: dict[str, object], seed: int = 0) -> RDTPolicyModel:
    """``rdt_tiny`` with every weight drawn from N(0, 0.2^2) around its init (the head included)."""
    cfg = load_policy_config("rdt_tiny")
    cfg = dataclasses.replace(cfg, obs_encoder=dataclasses.replace(cfg.obs_encoder, **obs))  # type: ignore[arg-type]
    torch.manual_seed(seed)
    model = RDTPolicyModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def model_inputs(model: RDTPolicyModel, batch: int, seed: int = 1) -> ModelInputs:
    """Inputs as make_model_inputs gives them: normalised state, masks, uint8 images, language tokens."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    obs = cfg.obs_encoder
    mask = torch.zeros(batch, Da)
    mask[:, :20] = 1.0
    inputs = ModelInputs(state=torch.randn(batch, Da, generator=g) * mask, state_mask=mask, action_mask=mask,
                         ctrl_freq=torch.full((batch,), 20.0),
                         lang_tokens=torch.randn(batch, LANG_LEN, cfg.lang_dim, generator=g),
                         lang_mask=torch.tensor([[True] * (LANG_LEN - 1) + [False]] * batch))
    if obs.cameras:
        H, W = obs.image_size
        inputs.images = torch.randint(0, 256, (batch, obs.n_obs_steps, len(obs.cameras), 3, H, W), generator=g,
                                      dtype=torch.uint8)
        inputs.camera_present = torch.ones(batch, len(obs.cameras), dtype=torch.bool)
    if obs.object_state_dim:
        inputs.object_state = torch.randn(batch, obs.n_obs_steps, obs.object_state_dim, generator=g)
    return inputs


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[RDTPolicyModel, ExportedGraphs]:
    model = random_model(CONFIGS[request.param])
    return model, export_graphs(model, tmp_path_factory.mktemp(f"onnx-{request.param}"), LANG_LEN)


def backend(name: str, model: RDTPolicyModel, graphs: ExportedGraphs | None):
    return make_backend(name, BackendSource(model.cfg, load_model=lambda: model, graphs=graphs),
                        BackendOptions(threads=1))


def chunk(b, model: RDTPolicyModel, batch: int, sampler: str = "dpmsolver++", steps: int = 5) -> torch.Tensor:
    noise = torch.randn(batch, model.cfg.horizon, Da, generator=torch.Generator().manual_seed(7))
    return sample_chunk(b, Sampler(model.cfg.diffusion, sampler, steps), model_inputs(model, batch), noise)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_onnxruntime_denoiser_step_matches_torch(exported: tuple[RDTPolicyModel, ExportedGraphs], batch: int) -> None:
    model, graphs = exported
    ort_backend, torch_backend = backend("onnxruntime", model, graphs), backend("torch", model, None)
    inputs = model_inputs(model, batch)
    x_t = torch.randn(batch, model.cfg.horizon, Da)
    t = torch.tensor([999, 500, 3][:batch] + [10] * max(0, batch - 3))
    ref = torch_backend.denoise(x_t, t, torch_backend.encode(inputs))
    got = ort_backend.denoise(x_t, t, ort_backend.encode(inputs))
    assert ref.abs().max() > 0.1  # a real output, not the zero head's
    assert (got - ref).abs().max() <= TOL


@pytest.mark.parametrize(("sampler", "steps"), [("dpmsolver++", 5), ("ddim", 10)])
def test_onnxruntime_chunks_match_torch_for_the_same_noise(exported: tuple[RDTPolicyModel, ExportedGraphs],
                                                           sampler: str, steps: int) -> None:
    model, graphs = exported
    ref = chunk(backend("torch", model, None), model, 2, sampler, steps)
    got = chunk(backend("onnxruntime", model, graphs), model, 2, sampler, steps)
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max() <= TOL


def test_torch_backend_is_the_model_bit_for_bit(exported: tuple[RDTPolicyModel, ExportedGraphs]) -> None:
    model, _ = exported
    noise = torch.randn(2, model.cfg.horizon, Da, generator=torch.Generator().manual_seed(7))
    want = model.sample(model_inputs(model, 2), noise=noise, sampler="dpmsolver++", num_steps=5)
    assert torch.equal(chunk(backend("torch", model, None), model, 2), want)


def test_the_tolerance_tells_other_weights_apart(exported: tuple[RDTPolicyModel, ExportedGraphs]) -> None:
    """The parity check can fail: graphs of this model against a model with other weights."""
    model, graphs = exported
    other = random_model(dataclasses.asdict(model.cfg.obs_encoder), seed=1)
    diff = (chunk(backend("onnxruntime", model, graphs), model, 2) - chunk(backend("torch", other, None), other, 2))
    assert diff.abs().max() > 100 * TOL


def test_the_graph_has_named_inputs_and_a_dynamic_batch(exported: tuple[RDTPolicyModel, ExportedGraphs]) -> None:
    import onnxruntime as ort

    model, graphs = exported
    session = ort.InferenceSession(str(graphs.denoiser), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == list(example_denoiser_inputs(model, LANG_LEN))
    assert all(shape[0] == "batch" for shape in inputs.values())
    assert [o.name for o in session.get_outputs()] == ["model_out"]
    assert (graphs.encoder is not None) == bool(model.cfg.obs_encoder.object_state_dim)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's own
def test_torch_compile_matches_eager() -> None:
    model = random_model(CONFIGS["state"])
    ref = chunk(backend("torch", model, None), model, 1)
    got = chunk(backend("torch.compile", model, None), model, 1)
    assert (got - ref).abs().max() <= TOL


@pytest.mark.gpu
def test_tensorrt_fp16_chunks_match_torch_by_cosine(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT's Python package is not installed here")
    model = random_model(CONFIGS["images+object"])
    graphs = export_graphs(model, tmp_path, LANG_LEN)
    trt = make_backend("tensorrt", BackendSource(model.cfg, graphs=graphs),
                       BackendOptions(device="cuda", engine_cache=str(tmp_path / "engines")))
    ref = chunk(backend("torch", model, None), model, 2).flatten().double()
    got = chunk(trt, model, 2).cpu().flatten().double()
    cosine = float(torch.dot(ref, got) / (ref.norm() * got.norm()))
    assert cosine >= 0.99, f"TensorRT FP16 vs torch cosine {cosine:.4f}"
    assert list((tmp_path / "engines").glob("denoiser-*.engine"))  # cached, keyed by GPU, TensorRT, ONNX hash


def test_an_unknown_backend_lists_the_registered_ones() -> None:
    model = random_model(CONFIGS["state"])
    with pytest.raises(KeyError, match="backends: torch, torch.compile, onnxruntime, tensorrt"):
        make_backend("onnx", BackendSource(model.cfg))
    assert backend_names() == ["torch", "torch.compile", "onnxruntime", "tensorrt"]


def test_a_backend_without_what_it_runs_says_so() -> None:
    model = random_model(CONFIGS["state"])
    with pytest.raises(ValueError, match="needs the exported ONNX graphs"):
        make_backend("onnxruntime", BackendSource(model.cfg, load_model=lambda: model))
    with pytest.raises(ValueError, match="needs the torch model's weights"):
        make_backend("torch", BackendSource(model.cfg))


def test_cuda_without_the_cuda_provider_is_an_error() -> None:
    assert providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])


def test_denoiser_graph_is_the_rdt() -> None:
    model = random_model(CONFIGS["state"])
    inputs = example_denoiser_inputs(model, LANG_LEN)
    rdt_args = [inputs[k] for k in ("x_t", "action_mask", "timestep", "ctrl_freq", "state", "state_mask",
                                    "lang_tokens", "lang_mask", "obs_tokens", "obs_mask")]
    with torch.no_grad():
        assert torch.equal(DenoiserGraph(model.rdt)(**inputs), model.rdt(*rdt_args))


def test_tensorrt_engines_are_keyed_by_gpu_version_and_graph(tmp_path: Path) -> None:
    from robot_policy.runtime.backends.tensorrt_backend import engine_path

    onnx = tmp_path / "denoiser.onnx"
    onnx.write_bytes(b"graph one")
    key = engine_path(tmp_path, onnx, "NVIDIA H200", "10.13.0", 64)
    assert key == engine_path(tmp_path, onnx, "NVIDIA H200", "10.13.0", 64)
    assert key.name.startswith("denoiser-NVIDIA-H200-trt10.13.0-") and key.suffix == ".engine"
    others = {engine_path(tmp_path, onnx, "Orin", "10.13.0", 64), engine_path(tmp_path, onnx, "NVIDIA H200", "10.3.0", 64),
              engine_path(tmp_path, onnx, "NVIDIA H200", "10.13.0", 8)}
    onnx.write_bytes(b"graph two")
    others.add(engine_path(tmp_path, onnx, "NVIDIA H200", "10.13.0", 64))
    assert key not in others and len(others) == 4


def test_tensorrt_is_imported_only_when_built_and_says_where_it_comes_from() -> None:
    import importlib.util
    import sys

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the gpu test builds an engine instead")
    assert "tensorrt" not in sys.modules  # importing the backends did not import it
    model = random_model(CONFIGS["state"])
    graphs = ExportedGraphs(Path("unused.onnx"))
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        make_backend("tensorrt", BackendSource(model.cfg, graphs=graphs), BackendOptions(device="cpu"))
    with pytest.raises(ImportError, match="TensorRT's Python package"):
        make_backend("tensorrt", BackendSource(model.cfg, graphs=graphs), BackendOptions(device="cuda"))
