"""``robot-policy sil``: software in the loop over real ROS 2 (the simulated robot and the policy node as
separate processes on loopback DDS), N held-out episodes, eval.json like ``robot-policy eval`` plus loop
timing and filter interventions, and the run as a rosbag2 (mcap) bag.

The ROS side is the colcon-built package ``robot_policy_ros`` (``make ros`` builds it into
``ros_ws/install``); its orchestrator (:mod:`robot_policy_ros.sil`) runs in this process.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.envs.registry import env_class, load_task_config
from robot_policy.eval.stats import wilson_interval
from robot_policy.paths import REPO_ROOT
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.spaces.embodiment import load_embodiment

#: where ``make ros`` installs the ament package's Python modules
ROS_INSTALL = REPO_ROOT / "ros_ws" / "install" / "robot_policy_ros" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@dataclass
class SilConfig:
    """Options of ``robot-policy sil``."""

    #: task the simulated robot runs (configs/task/)
    task: str = "pybullet_bimanual_lift"
    #: a checkpoint directory (robot-policy train / finetune / distill) or a deploy bundle (robot-policy export)
    policy: str = ""
    #: a bundle's backend (torch | torch.compile | onnxruntime | tensorrt); empty: the bundle's default
    backend: str = ""
    #: episodes, one per seed S..S+N-1 (held out: far from the collection seeds)
    episodes: int = 5
    seed: int = 1_000_000
    #: output directory: eval.json, bag/, the nodes' logs
    out: str = "runs/sil"
    #: ROS_DOMAIN_ID (0-101); -1: derived from the process id, so parallel runs do not meet
    domain_id: int = -1
    #: chunk blending of the runtime: none | temporal_ensemble | rtc
    scheduler: str = "none"
    #: the policy node's control-loop rate (Hz); 0: the embodiment's control rate
    loop_hz: float = 0.0
    #: record the run as a rosbag2 (mcap) bag
    bag: bool = True
    #: replace an earlier run in ``out`` (its eval.json and bag)
    overwrite: bool = False
    #: the episode's time limit in control steps; 0: the task's own
    max_steps: int = 0
    #: wall seconds an episode may take before it counts as failed; 0: 3x the task's time limit + 10 s
    episode_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("policy=: a checkpoint directory or a deploy bundle is required")
        if not Path(self.policy).exists():
            raise FileNotFoundError(f"policy={self.policy}: no such checkpoint or bundle")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not -1 <= self.domain_id <= 101:
            raise ValueError(f"domain_id must be -1 (automatic) or 0..101, got {self.domain_id}")
        if self.scheduler not in ("none", "temporal_ensemble", "rtc"):
            raise ValueError(f"scheduler must be none, temporal_ensemble or rtc, got {self.scheduler!r}")


def _import_ros_package() -> Any:
    if ROS_INSTALL.is_dir() and str(ROS_INSTALL) not in sys.path:
        sys.path.insert(0, str(ROS_INSTALL))
    try:
        from robot_policy_ros import sil
    except ImportError as e:
        raise RuntimeError(f"the ROS 2 package is not built or rclpy is missing ({e}): run `make ros`") from e
    return sil


def run_sil(cfg: SilConfig) -> dict[str, Any]:
    """Run the episodes, write ``out/eval.json`` and return its content."""
    sil = _import_ros_package()
    overrides: dict[str, Any] = {"max_steps": cfg.max_steps} if cfg.max_steps > 0 else {}
    task = load_task_config(cfg.task, **overrides)
    embodiment = load_embodiment(task.embodiment)
    object_dim = env_class(task.env).object_state_dim
    interface = RobotInterface.from_embodiment(embodiment, object_dim)
    out = Path(cfg.out)
    earlier = [p for p in (out / "eval.json", out / "bag") if p.exists()]
    if earlier and not cfg.overwrite:
        raise FileExistsError(f"out={out} holds an earlier run ({', '.join(p.name for p in earlier)}); "
                              "choose another out= or pass overwrite=true")
    if (out / "bag").exists():
        shutil.rmtree(out / "bag")
    (out / "eval.json").unlink(missing_ok=True)
    # the nodes are python -m modules: they need the ament package on their path too
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROS_INSTALL), os.environ.get("PYTHONPATH", "")) if p)
    domain = cfg.domain_id if cfg.domain_id >= 0 else 1 + os.getpid() % 100
    params: dict[str, Any] = {"embodiment": embodiment.name, "language": task.language,
                              "object_state_dim": object_dim, "scheduler": cfg.scheduler, "loop_hz": cfg.loop_hz}
    if cfg.backend:
        params["backend"] = cfg.backend
    timeout = cfg.episode_timeout_s or 3.0 * task.max_steps / task.control_hz + 10.0
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    from tqdm import tqdm

    bar = tqdm(total=len(seeds), desc=f"sil {task.name}", unit="ep")
    done: list[Any] = []

    def on_episode(ep: Any) -> None:
        done.append(ep)
        bar.update(1)
        bar.set_postfix(success=f"{sum(e.success for e in done)}/{len(done)}")

    t0 = _dt.datetime.now(_dt.UTC)
    run = sil.run_sil(task.name, cfg.max_steps, str(Path(cfg.policy).resolve()), seeds, out, domain_id=domain,
                      policy_params=params, arms=list(interface.arm_joints), episode_timeout_s=timeout,
                      record_bag=cfg.bag, on_episode=on_episode)
    bar.close()
    episodes = run.episodes
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    last = episodes[-1].diagnostics if episodes else {}
    summary = {
        "task": task.name, "policy": cfg.policy, "transport": "ros2 (rclpy, Fast DDS on loopback)",
        "episodes": len(episodes), "seed": cfg.seed, "successes": successes,
        "success_rate": successes / len(episodes), "ci95_low": low, "ci95_high": high,
        "errored": sum(e.error is not None for e in episodes),
        "mean_episode_length": float(np.mean([e.length for e in episodes])),
        "scheduler": cfg.scheduler, "domain_id": domain,
        "loop_timing": {k: v for k, v in last.items() if k.startswith("loop_")},
        "filter_interventions": {k: v for k, v in last.items() if k.startswith("filter_")},
        "bag": str(run.bag) if run.bag else None, "bag_messages": run.bag_counts,
        "elapsed_s": (_dt.datetime.now(_dt.UTC) - t0).total_seconds(),
        "date": t0.isoformat(timespec="seconds"), "config": asdict(cfg),
        "per_episode": [asdict(e) for e in episodes],
    }
    (out / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary
