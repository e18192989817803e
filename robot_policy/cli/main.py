"""``robot-policy VERB [args] [hydra overrides...]``: the one console script.

Each verb lives in its own module ``robot_policy.cli.<verb>`` exposing ``main(argv) -> int`` and a one-line
``SUMMARY``; modules are imported only when their verb runs, so ``robot-policy dataset`` does not load
torch or a simulator.
"""

from __future__ import annotations

import importlib
import sys

VERBS: dict[str, str] = {
    "dataset": "robot_policy.cli.dataset",
    "collect": "robot_policy.cli.collect",
    "train": "robot_policy.cli.train",
    "eval": "robot_policy.cli.eval",
    "finetune": "robot_policy.cli.finetune",
    "distill": "robot_policy.cli.distill",
    "export": "robot_policy.cli.export",
    "sil": "robot_policy.cli.sil",
    "serve": "robot_policy.cli.serve",
    "bench": "robot_policy.cli.bench",
    "demo": "robot_policy.cli.demo",
    "replay": "robot_policy.cli.replay",
    "calibrate": "robot_policy.cli.calibrate",
    "record": "robot_policy.cli.record",
    "teleop": "robot_policy.cli.teleop",
}


def _usage() -> str:
    lines = ["usage: robot-policy VERB [args] [key=value ...]", "", "verbs:"]
    for verb, module in VERBS.items():
        try:
            summary = importlib.import_module(module).SUMMARY
        except ModuleNotFoundError:
            continue
        lines.append(f"  {verb:<10} {summary}")
    lines.append("")
    lines.append("robot-policy VERB --help shows a verb's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"robot-policy: unknown verb {verb!r}; verbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
