"""robot-policy train task=<task> policy=<config> dataset.path=PATH out=DIR [key=value ...]

Trains an RDT-style diffusion policy on one or more episode stores and writes checkpoint directories
(safetensors + JSON) under DIR/checkpoints, TensorBoard logs under DIR/tb and DIR/metrics.jsonl.
Several stores: dataset.paths=[a.zarr,b.zarr] dataset.weights=[1,1]. Continue a run: resume=true.
Data-parallel: torchrun --nproc_per_node=N -m robot_policy.cli.main train ...
"""

from __future__ import annotations

from robot_policy.cli.common import ConfigError, command_line, fail, verb_help

SUMMARY = "train a diffusion policy on episode stores (checkpoints, TensorBoard, resume, DDP)"


def main(argv: list[str]) -> int:
    from robot_policy.cli.options import train_schema

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", train_schema(), "train"))
        return 0
    from robot_policy.data.store import StoreError
    from robot_policy.train.config import parse_train_config
    from robot_policy.train.loop import TrainingInterrupted, train

    try:
        cfg, policy = parse_train_config(argv, schema=train_schema())  # task keys checked against TaskConfig
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    except StoreError as e:  # task= reads each store's task: a missing or damaged store
        return fail(str(e), code=1)
    try:
        run_dir = train(cfg, policy, command=command_line("train", argv))
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: the last finished step is saved
        return fail(str(e), code=e.exit_code)
    except KeyboardInterrupt as e:  # before the loop, or a second Ctrl-C: nothing written since the last save
        return fail(f"interrupted ({e or 'before training started'}); checkpoints are as the last save left "
                    "them", code=130)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        # RuntimeError: CheckpointError / StoreError, one line naming the damaged file
        return fail(str(e), code=1)
    print(f"trained {cfg.steps} steps; checkpoints in {run_dir / 'checkpoints'}")
    return 0
