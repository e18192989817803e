"""robot-policy eval task=<task> policy=<name or checkpoint dir> episodes=N seed=S out=DIR [key=value ...]

Runs the policy on seeds S..S+N-1 in parallel worker processes, executing each chunk for
`execute_horizon` steps, and writes DIR/eval.json (success rate with a 95% Wilson interval, mean episode
length, per-episode results) and mp4 videos of the first `videos` episodes. Policies: `scripted`,
`random`, a checkpoint directory written by `robot-policy train`, or a deploy bundle written by
`robot-policy export`, run on `backend=onnxruntime|torch|torch.compile|tensorrt` (default onnxruntime). A
checkpoint or bundle samples with its own sampler unless `sampler=ddpm|ddim|dpmsolver++` and
`sampler_steps=K` say otherwise (eval.json records both).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from robot_policy.cli.common import (
    ConfigError,
    command_line,
    compose,
    fail,
    pop_override,
    to_dataclass,
    verb_help,
)

if TYPE_CHECKING:
    from robot_policy.envs.base import ManipulationEnv, TaskConfig
    from robot_policy.eval.harness import EvalConfig, PolicySource
    from robot_policy.policies.base import Policy

SUMMARY = "evaluate a policy on held-out seeds: eval.json with a 95% interval, videos"


def main(argv: list[str]) -> int:
    from robot_policy.cli.options import eval_schema

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", eval_schema(), "eval"))
        return 0
    from robot_policy.eval.harness import error_message, evaluate

    try:
        task, policy, cfg = parse_eval_config(argv)
    except (ConfigError, ValueError, KeyError, RuntimeError) as e:  # CheckpointError is a RuntimeError
        return fail(str(e))
    try:
        report = evaluate(task, policy_source(policy, cfg), cfg, policy_name=str(policy),
                          command=command_line("eval", argv))
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:  # EvalSetupError is a RuntimeError
        return fail(error_message(e), code=1)
    print(f"{report['task']} / {report['policy']}: success {report['successes']}/{report['episodes']} = "
          f"{report['success_rate']:.1%} (95% CI {report['ci95_low']:.1%}-{report['ci95_high']:.1%}), "
          f"mean episode length {report['mean_episode_length']:.1f}, seeds {report['seed']}-"
          f"{report['seed'] + report['episodes'] - 1}")
    print(f"wrote {Path(cfg.out) / 'eval.json'}" + (f" and {cfg.videos} videos" if cfg.videos else ""))
    if report["errored"]:
        return fail(_errors(report), code=1)
    return 0


def _errors(report: dict[str, Any]) -> str:
    """The episodes that raised, each distinct error once with the seeds it hit."""
    seeds: dict[str, list[int]] = {}
    for e in report["errors"]:
        seeds.setdefault(e["error"], []).append(e["seed"])
    head = (f"{report['errored']} of {report['episodes']} episodes raised an error (counted as failed; "
            "tracebacks in eval.json per_episode):")
    lines = [head]
    for error, hit in seeds.items():
        lines.append(f"  seed{'s' if len(hit) > 1 else ''} {', '.join(map(str, hit))}: {error}")
    return "\n".join(lines)


def parse_eval_config(argv: list[str]) -> tuple[TaskConfig, str, EvalConfig]:
    """``configs/eval.yaml`` + overrides -> (task, policy, EvalConfig). A checkpoint is pinned to the step
    directory it means now, and its sampler options are resolved, so eval.json records what ran."""
    from robot_policy.cli.options import eval_schema
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.eval.harness import EvalConfig

    overrides, policy = pop_override(argv, "policy")  # policy=<dir> is not the policy config group
    raw = OmegaConf.to_container(compose("eval", overrides, schema=eval_schema()), resolve=True)
    assert isinstance(raw, dict)
    policy = policy or str(raw["policy"])
    raw.pop("policy")
    backend = raw.pop("backend")
    bundle = is_bundle(policy)
    if backend is not None and not bundle:
        raise ConfigError(f"backend={backend}: chooses how a deploy bundle (robot-policy export) runs; {policy!r} "
                          "is not a bundle directory (no manifest.json)")
    if Path(policy).exists() and not bundle:  # a checkpoint or run directory: pin the step directory it means now
        from robot_policy.models.checkpoint import resolve_checkpoint

        policy = str(resolve_checkpoint(policy))
    task = task_config_from_dict(raw.pop("task"), where="task")
    if not raw.get("out"):
        raw["out"] = str(Path("runs/eval") / f"{task.name}-{Path(policy).name}")
    cfg = to_dataclass(EvalConfig, raw, "eval")
    if bundle:
        return task, policy, _resolve_bundle(cfg, policy, backend)
    return task, policy, _resolve_sampler(cfg, policy)


def is_bundle(policy: str) -> bool:
    from robot_policy.runtime.bundle.manifest import is_bundle as has_manifest

    return has_manifest(policy)


def _resolve_bundle(cfg: EvalConfig, policy: str, backend: str | None) -> EvalConfig:
    """A bundle is verified against its manifest here, before any worker starts (each worker's loader checks
    it again as it opens it); its backend goes to the loader as ``policy_kwargs.backend`` and its sampler
    options, left null, become the bundle's own."""
    from robot_policy.runtime.backends import backend_names
    from robot_policy.runtime.bundle import open_bundle

    if backend is not None and "backend" in cfg.policy_kwargs:
        raise ConfigError(f"backend={backend} and policy_kwargs.backend={cfg.policy_kwargs['backend']} are both "
                          "given: use backend")
    backend = backend or cfg.policy_kwargs.get("backend") or "onnxruntime"
    if backend not in backend_names():
        raise ConfigError(f"backend={backend}: unknown; backends: {', '.join(backend_names())}")
    saved = open_bundle(policy).spec["sampler"]  # a damaged bundle fails here, before any worker starts
    kind = cfg.sampler or str(saved["kind"])
    steps = cfg.sampler_steps or int(saved["num_steps"])
    return dataclasses.replace(cfg, sampler=kind, sampler_steps=steps,
                               policy_kwargs={**cfg.policy_kwargs, "backend": backend})


def policy_source(policy: str, cfg: EvalConfig) -> PolicySource:
    """What the harness builds the policy from: the name or checkpoint path, or a bundle's factory."""
    if is_bundle(policy):
        return BundleFactory(policy, cfg.policy_loader_kwargs(), threads=cfg.torch_threads)
    return policy


@dataclass(frozen=True)
class BundleFactory:
    """A deploy bundle's policy, built for an eval worker's env (eval does not import the runtime layer: the
    CLI hands the harness this factory). Picklable, so spawned workers build their own."""

    path: str
    #: load_bundle's keyword arguments: backend, sampler, num_steps, and any +policy_kwargs
    kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    def __call__(self, env: ManipulationEnv) -> Policy:
        from robot_policy.runtime.bundle import load_bundle

        policy = load_bundle(self.path, **{"threads": self.threads, **self.kwargs})
        if policy.embodiment.name != env.embodiment.name:
            raise ValueError(f"bundle {self.path} drives {policy.embodiment.name}; task {env.task.name} is "
                             f"{env.embodiment.name}")
        if policy.language != env.task.language:
            raise ValueError(f"bundle {self.path} was exported for the instruction {policy.language!r}; task "
                             f"{env.task.name} gives {env.task.language!r} (export with language=...)")
        return policy


def _resolve_sampler(cfg: EvalConfig, policy: str) -> EvalConfig:
    """``sampler``/``sampler_steps`` left null become the checkpoint's own; on a built-in they are an error."""
    from robot_policy.eval.policies import is_checkpoint

    if not is_checkpoint(policy):
        if cfg.sampler is not None or cfg.sampler_steps is not None:
            raise ConfigError(f"sampler={_null(cfg.sampler)} sampler_steps={_null(cfg.sampler_steps)}: they choose "
                              f"how a diffusion checkpoint samples; {policy!r} is not a checkpoint directory")
        return cfg
    from robot_policy.models.checkpoint import load_config, resolve_checkpoint
    from robot_policy.policies.composite import is_composite

    meta = load_config(resolve_checkpoint(policy))
    if is_composite(meta):  # fine-tuned on its base's sampler: that one is part of the policy
        if cfg.sampler is not None or cfg.sampler_steps is not None:
            raise ConfigError(f"sampler={_null(cfg.sampler)} sampler_steps={_null(cfg.sampler_steps)}: {policy} is a "
                              f"fine-tuned composite; its base samples with {meta['base']['sampler']} "
                              f"({meta['base']['num_steps']} steps), as it was fine-tuned")
        return cfg
    diffusion = meta["policy"]["diffusion"]
    steps = cfg.sampler_steps or int(diffusion["num_inference_steps"])
    total = int(diffusion["num_train_timesteps"])
    if not 1 <= steps <= total:
        raise ConfigError(f"sampler_steps={steps}: the checkpoint was trained with {total} diffusion steps; "
                          f"choose 1..{total}")
    return dataclasses.replace(cfg, sampler=cfg.sampler or str(diffusion["sampler"]), sampler_steps=steps)


def _null(value: object) -> str:
    return "null" if value is None else str(value)
