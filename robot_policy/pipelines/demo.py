"""The main job: scripted demos -> train a diffusion policy -> evaluate on held-out seeds -> run report.

Each stage is the same library call as its CLI verb (collect, train, eval) with the same configs, and
each is skipped when its output is already complete, so an interrupted demo continues where it stopped
(collection adds the episodes still missing, training resumes from its latest checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robot_policy.configuration import compose
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.envs.base import TaskConfig
from robot_policy.envs.registry import task_config_from_dict
from robot_policy.eval.harness import EvalConfig, evaluate
from robot_policy.eval.report import write_run_report
from robot_policy.models import checkpoint as ckpt
from robot_policy.pipelines.collect import CollectConfig, collect


@dataclass
class DemoConfig:
    """Options of ``robot-policy demo``."""

    #: the run's directory name: out_root/name
    name: str = "pybullet_lift"
    #: the task (configs/task) demonstrated, trained on and evaluated
    task: str = "pybullet_bimanual_lift"
    #: the policy config (configs/policy) trained
    policy: str = "rdt_small"
    #: parent directory of the run
    out_root: str = "runs"
    #: scripted demonstrations to train on
    episodes: int = 100
    #: training steps (TrainConfig.steps)
    train_steps: int = 3000
    #: evaluation episodes, one per held-out seed
    eval_episodes: int = 100
    #: held out: collection uses seeds 0.., evaluation eval_seed..
    eval_seed: int = 1_000_000
    #: evaluation worker processes; 0 = one per core
    workers: int = 0
    #: evaluation episodes rendered to mp4 for the report
    videos: int = 2
    #: redo every stage even when its output exists (records a new store, deletes the run's training directory)
    fresh: bool = False
    #: extra train overrides, e.g. train_overrides=[batch_size=32,val_every=100]
    train_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from robot_policy.envs.registry import available_tasks
        from robot_policy.models.rdt import available_policy_configs

        if self.task not in available_tasks():
            raise ValueError(f"task: unknown {self.task!r}; available: {', '.join(available_tasks())}")
        if self.policy not in available_policy_configs():
            raise ValueError(f"policy: unknown {self.policy!r}; available: {', '.join(available_policy_configs())}")


def _compose(name: str, overrides: list[str]) -> dict[str, Any]:
    raw = OmegaConf.to_container(compose(name, overrides), resolve=True)
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


def collect_stage(task: TaskConfig, store_path: Path, episodes: int, fresh: bool) -> dict[str, Any] | None:
    """Record the demonstrations into ``store_path`` until it holds ``episodes``; returns collect's summary,
    or None when the store already holds them.

    A store that opens is continued (``append``: seeds after its last recorded one, the episodes it holds
    untouched), so an interrupted collection resumes; only ``fresh`` records a new store over it. Where no
    store opens, one is created: over a crashed writer's leftovers without an episode (nothing is lost),
    never over a damaged store that holds episodes.
    """
    if fresh:
        return collect(task, CollectConfig(episodes=episodes, out=str(store_path), overwrite=True))
    try:
        with EpisodeStore.open(store_path) as store:
            held = store.n_episodes
    except StoreError as damaged:
        if not store_path.exists():
            return collect(task, CollectConfig(episodes=episodes, out=str(store_path)))
        try:
            return collect(task, CollectConfig(episodes=episodes, out=str(store_path)))
        except StoreError:  # create refused to replace it: it holds episodes
            raise StoreError(f"{store_path} cannot be continued ({damaged}): repair or delete it, or pass "
                             "fresh=true to record the demonstrations again") from None
    if held >= episodes:
        return None
    return collect(task, CollectConfig(episodes=episodes, out=str(store_path), append=True))


#: DemoConfig fields that shape what the stages produce (the others only change how they run)
_INPUT_FIELDS = ("task", "policy", "episodes", "train_steps", "eval_episodes", "eval_seed", "train_overrides")


def _check_inputs(root: Path, cfg: DemoConfig) -> None:
    """Refuse to continue a demo made with other inputs (its stages would be silently reused)."""
    inputs = {k: getattr(cfg, k) for k in _INPUT_FIELDS}
    path = root / "demo.json"
    if path.exists() and not cfg.fresh:
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in inputs.items() if before.get(k) != v}
        if changed:
            raise ValueError(f"{root} was made with other inputs ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}); "
                             "pass fresh=true to redo it, or name=<new> for a separate run")
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inputs, indent=2))


def run_demo(cfg: DemoConfig) -> Path:
    """Run the four stages; returns the report path (``out_root/name/report.md``)."""
    from robot_policy.train.config import parse_train_config as parse_train
    from robot_policy.train.loop import train

    root = Path(cfg.out_root) / cfg.name
    store_path, train_dir, eval_dir = root / "demos.zarr", root / "train", root / "eval"
    _check_inputs(root, cfg)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {}
    # The stage-by-stage commands this demo is equivalent to: recorded with each stage's outputs.
    commands = {
        "collect": f"robot-policy collect task={cfg.task} episodes={cfg.episodes} out={store_path}",
        "train": (f"robot-policy train task={cfg.task} policy={cfg.policy} dataset.path={store_path} "
                  f"out={train_dir} steps={cfg.train_steps}" + "".join(f" {o}" for o in cfg.train_overrides)),
        "eval": (f"robot-policy eval task={cfg.task} policy={train_dir}/checkpoints/latest "
                 f"episodes={cfg.eval_episodes} seed={cfg.eval_seed} out={eval_dir}"),
    }

    t0 = time.perf_counter()
    raw = _compose("collect", [f"task={cfg.task}"])
    task = task_config_from_dict(raw["task"], where="task")
    collected_now = collect_stage(task, store_path, cfg.episodes, cfg.fresh)
    if collected_now is not None:
        summary = collected_now
        (root / "collect.json").write_text(json.dumps(summary, indent=2))
    timings["collect demonstrations"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latest = ckpt.latest_checkpoint(train_dir)
    finished = latest is not None and ckpt.load_config(latest)["step"] >= cfg.train_steps and not cfg.fresh
    if not finished:
        if cfg.fresh and train_dir.exists():
            import shutil

            shutil.rmtree(train_dir)
        train_cfg, policy = parse_train([f"task={cfg.task}", f"policy={cfg.policy}", f"dataset.path={store_path}",
                                         f"out={train_dir}", f"steps={cfg.train_steps}",
                                         f"resume={str(latest is not None and not cfg.fresh).lower()}",
                                         *cfg.train_overrides])
        train(train_cfg, policy, command=commands["train"])
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report_json = eval_dir / "eval.json"
    checkpoint = ckpt.latest_checkpoint(train_dir)
    assert checkpoint is not None
    previous = json.loads(report_json.read_text()) if report_json.exists() else {}
    # Re-evaluate unless the existing evaluation is of this very checkpoint with these episodes.
    if cfg.fresh or previous.get("policy") != str(checkpoint) or previous.get("episodes") != cfg.eval_episodes:
        evaluate(task, str(checkpoint),
                 EvalConfig(episodes=cfg.eval_episodes, seed=cfg.eval_seed, out=str(eval_dir), workers=cfg.workers,
                            videos=cfg.videos), policy_name=str(checkpoint), command=commands["eval"])
    result = json.loads(report_json.read_text())
    timings["evaluate"] = time.perf_counter() - t0

    collect_json = root / "collect.json"
    collected = json.loads(collect_json.read_text()) if collect_json.exists() else summary
    # A continued collection's summary counts its own attempts; its store began at the recorded seeds.
    first_seed = (collected.get("recorded_seeds") or [collected.get("first_seed", 0)])[0]
    continued = (f" in the attempts after the {collected['existing_episodes']} episodes already recorded"
                 if collected.get("existing_episodes") else "")
    notes = (f"Task `{cfg.task}`; {cfg.episodes} scripted demonstrations (seeds "
             f"{first_seed}-{collected.get('last_seed', '?')}, expert success "
             f"{collected.get('expert_successes', '?')}/{collected.get('attempts', '?')}{continued}); "
             f"policy `{cfg.policy}` "
             f"trained {cfg.train_steps} steps; evaluated on seeds {cfg.eval_seed}-"
             f"{cfg.eval_seed + cfg.eval_episodes - 1}, never used for collection or training.")
    reproduce = ("```\nrobot-policy demo\n```\nor stage by stage:\n```\n" + "\n".join(commands.values()) + "\n```")
    return write_run_report(root, f"Demo run: {cfg.name}", [result], train_dir,
                            sections={"Setup": notes, "Reproduce": reproduce}, timings=timings)
