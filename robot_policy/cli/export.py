"""robot-policy export checkpoint=CKPT format=onnx out=BUNDLE [key=value ...]

Writes a self-contained deploy bundle: the observation encoder and one denoiser step as ONNX graphs (named
inputs, dynamic batch axis), normaliser statistics, embodiment spec, sampler with its timesteps, execute
horizon, the instruction's precomputed tokens, the weights for the torch backends, and manifest.json with
the sha256 of every file and the versions that wrote it. Run it with
`robot-policy eval policy=BUNDLE backend=onnxruntime|torch|torch.compile|tensorrt`, or from Python with
`robot_policy.runtime.bundle.load_bundle(BUNDLE, backend=...)`.
"""

from __future__ import annotations

from pathlib import Path

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "write a deploy bundle (ONNX graphs, normaliser, sampler, manifest) from a checkpoint"


def main(argv: list[str]) -> int:
    from robot_policy.runtime.bundle.export import ExportConfig, export_bundle

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", ExportConfig))
        return 0
    try:
        cfg = parse_overrides(ExportConfig, argv, "export")
    except ConfigError as e:
        return fail(str(e))
    try:
        out = export_bundle(cfg)
    except (ValueError, KeyError, FileExistsError, FileNotFoundError) as e:
        return fail(str(e))
    except RuntimeError as e:  # CheckpointError, a failed export check
        return fail(str(e), code=1)
    files = sorted(p for p in out.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"wrote bundle {out}: {', '.join(p.name for p in files)} ({size:.1f} MiB)")
    print(f"run it: robot-policy eval policy={Path(out)} backend=onnxruntime")
    return 0
