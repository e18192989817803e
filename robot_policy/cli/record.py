"""robot-policy record config=RIG out=STORE [episodes=N] [append=true] [key=value ...]

Records a rig's episodes over ROS 2 into an episode store: subscribes to the rig config's joint-state,
command and camera topics (configs/rig/RIG.yaml; RealSense cameras are read directly), aligns every stream
to the control rate by timestamp, refuses a step whose stream is missing beyond its tolerance, and writes the
cameras' intrinsics and extrinsics into the store. Episodes start and stop through /record/start,
/record/stop (std_srvs/SetBool: data = success), /record/discard, the marker topic (std_msgs/String
"start[: instruction]", "end[: success|failure]", "discard"), or pauses in the commands (the rig's
episodes.split). Prints one line per episode (steps, refused steps, the largest skew per stream) and the
summary as JSON. Needs the ROS 2 wheels and the colcon-built package: `make ros`.
"""

from __future__ import annotations

import json

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "record a rig's episodes over ROS 2 (and RealSense) into a store, aligned to the control rate"


def main(argv: list[str]) -> int:
    from robot_policy.data.store import StoreError
    from robot_policy.pipelines.record import RecordConfig, run_record

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", RecordConfig))
        return 0
    try:
        cfg = parse_overrides(RecordConfig, argv, "record")
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    try:
        summary = run_record(cfg)
    except ValueError as e:  # a malformed rig config (RigConfigError) or mapping
        return fail(str(e))
    except (StoreError, RuntimeError, TimeoutError, OSError) as e:
        return fail(str(e), code=1)
    for r in summary["episodes"]:
        what = f"episode {r['index']}" if r["index"] is not None else f"discarded ({r['discarded']})"
        skew = ", ".join(f"{k} {v['max']:.1f} ms" for k, v in r["skew_ms"].items())
        print(f"record: {what}: {r['steps']} steps, {r['refused']} refused; max skew {skew or '-'}")
    print(json.dumps(summary))
    return 0
