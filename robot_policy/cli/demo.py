"""robot-policy demo [key=value ...]: the main job on the embedded default.

Collects scripted demonstrations of pybullet_bimanual_lift, trains rdt_small on them, evaluates it on
held-out seeds and writes runs/<name>/report.md (success table with a 95% interval, loss curve, rollout
videos). Re-running continues an interrupted demo; fresh=true starts over.
"""

from __future__ import annotations

import time

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "the main job: collect demos -> train -> evaluate on held-out seeds -> report"


def main(argv: list[str]) -> int:
    from robot_policy.pipelines.demo import DemoConfig, run_demo

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", DemoConfig))
        return 0
    try:
        cfg = parse_overrides(DemoConfig, argv, "demo")
    except ConfigError as e:
        return fail(str(e))
    start = time.perf_counter()
    from robot_policy.train.loop import TrainingInterrupted

    try:
        report = run_demo(cfg)
    except TrainingInterrupted as e:  # the last finished training step is saved; rerunning continues it
        return fail(f"{e}; rerun robot-policy demo to continue", code=e.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted; rerun robot-policy demo to continue where it stopped", code=130)
    except ValueError as e:  # inputs that do not fit (another demo's run directory, a bad option)
        return fail(str(e))
    except (KeyError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: a damaged store or checkpoint
        return fail(str(e), code=1)
    text = report.read_text()
    table = text.split("## Success on held-out seeds", 1)[1].split("##", 1)[0].strip()
    print(table)
    print(f"\nreport: {report}  ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0
