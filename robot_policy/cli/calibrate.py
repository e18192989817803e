"""robot-policy calibrate SUB key=value ...: camera and robot calibration for a rig (results in calib/RIG/).

  board       board=NAME out=board.png dpi=300     a printable board at true scale (print at 100%)
  intrinsics  images=DIR board=NAME out=calib/RIG/CAMERA.yaml [model=plumb_bob] [drop_outliers=true]
              K and distortion, per-image reprojection error, outlier images, fx/fy/cx/cy std devs, and a
              coverage heat map of where the corners fell (CAMERA_coverage.png)
  handeye     images=DIR poses=POSES.json|.csv|STORE intrinsics=calib/RIG/CAMERA.yaml board=NAME
              mode=eye_in_hand|eye_to_hand: every OpenCV solver (tsai, park, horaud, andreff, daniilidis), their
              spread, per-view residuals, a check for degenerate pose sets; X written with its frame names
  base2base   method=board handeye_a=... handeye_b=... images_a=... images_b=... out=calib/RIG/base_to_base.yaml
              or method=touch points=touch.json out=...: T_right_base_left_base between the arms' bases
  realsense   out=calib/RIG/CAMERA.yaml [serial=...] [width=1280 height=720]: a RealSense's factory intrinsics
  synth       out=DIR [n=20] [mode=eye_in_hand]: rendered views of a known camera and X, to try the tools

`robot-policy calibrate SUB --help` lists a subcommand's options. Boards: calib/boards/*.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from robot_policy.cli.common import ConfigError, fail, parse_overrides

SUMMARY = "calibrate cameras and arms: boards, intrinsics, hand-eye, base-to-base, RealSense, synthetic views"

#: subcommand -> (config class, job function) in robot_policy.calib.jobs
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "board": ("BoardJob", "make_board"),
    "intrinsics": ("IntrinsicsJob", "run_intrinsics"),
    "handeye": ("HandEyeJob", "run_hand_eye"),
    "base2base": ("BaseToBaseJob", "run_base_to_base"),
    "realsense": ("RealSenseJob", "run_realsense"),
    "synth": ("SynthJob", "run_synth"),
}


def _print_summary(sub: str, summary: dict[str, Any]) -> None:
    """The headline numbers first, then everything as JSON."""
    if sub == "intrinsics":
        print(f"intrinsics: {summary['n_views']} views, {summary['n_corners']} corners, RMS "
              f"{summary['rms_reprojection_px']:.3f} px, coverage {100 * summary['coverage']:.0f}%")
        std = summary["std_px"]
        print("  fx {:.2f} ± {:.2f}  fy {:.2f} ± {:.2f}  cx {:.2f} ± {:.2f}  cy {:.2f} ± {:.2f} px".format(
            summary["K"][0][0], std["fx"], summary["K"][1][1], std["fy"], summary["K"][0][2], std["cx"],
            summary["K"][1][2], std["cy"]))
        for key, label in (("outliers", "outlier views"), ("dropped", "dropped"), ("no_board", "no board found"),
                           ("too_few_corners", "too few corners")):
            if summary[key]:
                print(f"  {label}: {', '.join(summary[key])}")
    elif sub == "handeye":
        print(f"hand-eye ({summary['mode']}, {summary['n_views']} views): {summary['frames']} by {summary['method']}")
        for name, s in summary["solvers"].items():
            print(f"  {name:<11} residual {s['rms_rotation_residual_deg']:.4f} deg {s['rms_translation_residual_mm']:.3f}"
                  f" mm; vs chosen {s['vs_chosen_deg']:.4f} deg {s['vs_chosen_mm']:.3f} mm")
        print(f"  solver spread {summary['solver_spread_deg']:.4f} deg, {summary['solver_spread_mm']:.3f} mm")
    for key, value in summary.items():
        if key not in ("per_view_rms_px", "solvers", "out"):
            print(f"  {key}: {json.dumps(value)}")
    print(f"wrote {summary['out']}")


def main(argv: list[str]) -> int:
    import importlib

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        return fail(f"calibrate: unknown subcommand {sub!r}; subcommands: {', '.join(SUBCOMMANDS)}")
    jobs = importlib.import_module("robot_policy.calib.jobs")
    cls_name, fn_name = SUBCOMMANDS[sub]
    cls = getattr(jobs, cls_name)
    if "-h" in rest or "--help" in rest:
        from robot_policy.cli.common import options_help

        print(f"usage: robot-policy calibrate {sub} key=value ...\n\n{cls.__doc__}\n\n{options_help(cls)}")
        return 0
    try:
        cfg = parse_overrides(cls, rest, f"calibrate {sub}")
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    from robot_policy.calib.boards import BoardError
    from robot_policy.calib.intrinsics import CalibrationError
    from robot_policy.data.rig_file import RigFileError

    job: Callable[[Any], dict[str, Any]] = getattr(jobs, fn_name)
    try:
        summary = job(cfg)
    except (BoardError, CalibrationError, RigFileError, OSError) as e:
        return fail(f"calibrate {sub}: {e}", code=1)
    _print_summary(sub, summary)
    return 0
