"""Runtime benchmark (``robot-policy bench runtime``): the control loop's timing, in process and over ROS 2,
and task success against injected inference delay per execution scheme.

Parts (``parts=``):

``loop``   in process, real time: :class:`~robot_policy.runtime.loop.RealTimeLoop` at ``loop_hz`` ticks a
           :class:`~robot_policy.runtime.controller.PolicyController`. The simulated robot
           (:mod:`robot_policy.bench.sim_robot`) runs in a process of its own stepping the task's env at its
           control rate, as the arm is a device of its own (``robot=process``; ``robot=loop`` steps it in the
           loop's thread after the controller's tick): it follows the controller's commands
           (joint_trajectory_controller semantics) and its states, stamped when read, are what the controller
           assembles; episodes reset between loop runs, outside the timed loop. The policy infers in a process
           of its own, loaded from the checkpoint (``inference=process``,
           :class:`~robot_policy.runtime.process_runner.ProcessInferenceRunner`; ``inference=thread``: the
           runner's thread in the loop's process, sharing its GIL). The loop collects garbage between ticks
           only (``gc_control``) and runs under SCHED_FIFO (``rt_priority``), spinning the last ``spin_s``
           before each deadline. Measured: period error (tick start minus its absolute deadline), the late
           ticks by cause, the controller tick's compute against the period, overall and while an inference is
           in flight, and observation-to-command latency (an observation's stamp to the first tick whose
           command holds its chunk). Once with the checkpoint (``checkpoint=``), once with ``large_model``
           built from its config with random weights (timing only: :class:`StandStill`).
``ros``    the same controller in the ROS 2 ``policy_node`` (an rclpy timer at ``loop_hz``) against the
           ``sim_robot_node``: :func:`robot_policy.pipelines.sil.run_sil`, in a process of its own, and the
           node's ``loop_timing`` from its eval.json (|interval between ticks - period|, the node's only view;
           the in-process run reports the same measure next to it).
``delay``  success on held-out seeds against an injected inference delay, per scheme (sync, async,
           temporal_ensemble, rtc), in process on simulated time
           (:func:`robot_policy.pipelines.runtime_sim.run_runtime_episode`): the latency is exactly the injected
           delay whatever this machine's speed, so the table measures the schemes, not the cores. A PNG of
           success against delay goes to ``figure``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_policy.bench.report import Row, check
from robot_policy.bench.sim_robot import LoopRobot, SimRobotProcess, State
from robot_policy.envs.base import ManipulationEnv
from robot_policy.envs.registry import available_tasks, load_task_config, make_env
from robot_policy.eval.stats import wilson_interval
from robot_policy.keys import OBS_STATE
from robot_policy.paths import REPO_ROOT
from robot_policy.pipelines.runtime_sim import SCHEMES, run_runtime_episode, scheme_config
from robot_policy.policies.base import ActionChunk, Policy, observe, reset_policy
from robot_policy.policies.diffusion import DiffusionPolicy
from robot_policy.runtime.controller import ControllerConfig, PolicyController
from robot_policy.runtime.loop import LoopTiming, RealTimeLoop
from robot_policy.runtime.process_runner import ProcessInferenceRunner, serving_policy
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.runner import AsyncInferenceRunner, InferenceResult

PARTS = ("loop", "ros", "delay")
ROBOTS = ("process", "loop")
INFERENCE = ("process", "thread")


@dataclass
class RuntimeBenchConfig:
    """Options of ``robot-policy bench runtime`` (module docstring)."""

    #: a trained checkpoint directory of the task (for ``delay`` one that succeeds at it)
    checkpoint: str = ""
    #: the task: its env, control rate, instruction and time limit
    task: str = "pybullet_bimanual_lift"
    #: which measurements to run: loop, ros, delay
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    #: control-loop rate of the loop and ros parts (Hz)
    loop_hz: float = 200.0
    #: loop: real seconds of control with the checkpoint (episodes of up to the task's time limit)
    loop_seconds: float = 20.0
    #: loop: a larger policy config timed with random weights; empty: skip
    large_model: str = "rdt_170m"
    #: loop: real seconds of control with ``large_model``
    large_loop_seconds: float = 20.0
    #: loop: the last part of each wait spent spinning on the clock (s): under SCHED_FIFO the thread is then
    #: already running at its deadline, however late the OS would have woken it
    spin_s: float = 1e-3
    #: loop: the interpreter's GIL switch interval while the loop runs (s); null: CPython's 5 ms
    switch_interval_s: float | None = 5e-4
    #: loop: where the simulated robot runs: process (its own, on its own clock) | loop (stepped in the loop's
    #: thread after the controller's tick)
    robot: str = "process"
    #: loop: where the policy infers: process (its own, loaded from the checkpoint) | thread (of the loop's)
    inference: str = "process"
    #: loop: garbage collection between ticks only (RealTimeLoop's gc_control)
    gc_control: bool = True
    #: loop: SCHED_FIFO priority of the loop's thread (1-99, as ros2_control's; needs CAP_SYS_NICE or an rtprio
    #: limit, else the run fails saying so); null: the OS's default scheduling
    rt_priority: int | None = 50
    #: torch intra-op threads of this process's inference (and OMP_NUM_THREADS of the ROS nodes if unset)
    torch_threads: int = 1
    #: ros: episodes over ROS 2
    ros_episodes: int = 2
    #: ros: episode time limit in control steps; 0: the task's
    ros_max_steps: int = 0
    #: ros: ROS_DOMAIN_ID (0-101); -1: derived from the process id (parallel runs do not meet)
    ros_domain_id: int = -1
    #: delay: injected inference delays (ms)
    delays_ms: list[float] = field(default_factory=lambda: [0.0, 100.0, 200.0, 300.0, 500.0])
    #: delay: execution schemes (pipelines.runtime_sim.SCHEMES)
    schemes: list[str] = field(default_factory=lambda: list(SCHEMES))
    #: delay: episodes per (scheme, delay), seeds ``seed``..``seed + episodes - 1`` (held out)
    episodes: int = 30
    seed: int = 1_000_000
    #: delay: actions of a chunk executed before rtc infers the next (sync / async: the policy's own, its
    #: whole chunk; temporal_ensemble: 1, it infers as often as it can)
    rtc_execute_horizon: int = 8
    #: delay: episode time limit in control steps; 0: the task's
    max_steps: int = 0
    #: delay: the success-against-delay plot (relative paths: from the repository root)
    figure: str = "docs/figures/issue10_delay_sweep.png"
    #: scratch: the ros part's run, the large model's checkpoint
    workdir: str = "bench_out/runtime"
    #: progress bars
    progress: bool = True

    def __post_init__(self) -> None:
        self.parts, self.schemes = list(self.parts), list(self.schemes)
        self.delays_ms = [float(d) for d in self.delays_ms]
        if not self.checkpoint:
            raise ValueError("checkpoint: a trained checkpoint directory of the task is required")
        if not Path(self.checkpoint).exists():
            raise FileNotFoundError(f"checkpoint={self.checkpoint}: no such checkpoint directory")
        if self.task not in available_tasks():
            raise ValueError(f"task: unknown {self.task!r}; available: {', '.join(available_tasks())}")
        for name in self.parts:
            if name not in PARTS:
                raise ValueError(f"parts: unknown {name!r}; valid: {', '.join(PARTS)}")
        if self.robot not in ROBOTS:
            raise ValueError(f"robot: unknown {self.robot!r}; valid: {', '.join(ROBOTS)}")
        if self.inference not in INFERENCE:
            raise ValueError(f"inference: unknown {self.inference!r}; valid: {', '.join(INFERENCE)}")
        if self.rt_priority is not None and not 1 <= self.rt_priority <= 99:
            raise ValueError(f"rt_priority: must be in 1..99 or null, got {self.rt_priority}")
        for name in self.schemes:
            if name not in SCHEMES:
                raise ValueError(f"schemes: unknown {name!r}; valid: {', '.join(SCHEMES)}")
        if not self.loop_hz > 0:
            raise ValueError(f"loop_hz: must be > 0, got {self.loop_hz}")
        for name in ("loop_seconds", "large_loop_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("episodes", "ros_episodes", "rtc_execute_horizon", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if any(d < 0 for d in self.delays_ms):
            raise ValueError(f"delays_ms: must be >= 0, got {self.delays_ms}")
        if self.large_model:
            from robot_policy.models.rdt import available_policy_configs

            if self.large_model not in available_policy_configs():
                raise ValueError(f"large_model: unknown policy config {self.large_model!r}; available: "
                                 f"{', '.join(available_policy_configs())}")


def _ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(seconds, np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "n": int(a.size)}


# --- loop: in process, real time ----------------------------------------------------------------------


class _RecordingRunner:
    """The controller's runner, remembering each result it hands over (observation-to-command latency)."""

    def __init__(self, runner: AsyncInferenceRunner | ProcessInferenceRunner) -> None:
        self.runner = runner
        self.delivered: list[InferenceResult] = []

    @property
    def busy(self) -> bool:
        return self.runner.busy

    def submit(self, obs: Any, obs_time: float, **kwargs: Any) -> bool:
        return self.runner.submit(obs, obs_time, **kwargs)

    def poll(self) -> InferenceResult | None:
        result = self.runner.poll()
        if result is not None:
            self.delivered.append(result)
        return result

    def wait(self, timeout: float | None = None) -> InferenceResult | None:
        return self.runner.wait(timeout)

    def wait_idle(self, timeout: float | None = None) -> InferenceResult | None:
        return self.runner.wait_idle(timeout)

    def close(self, timeout: float | None = None) -> None:
        self.runner.close(timeout)


Robot = LoopRobot | SimRobotProcess


class _RealTimeEpisode:
    """``fn(now)`` of the loop for one episode: the robot's new states to the controller's assembler, the
    controller's tick, its command to the robot (and, for a :class:`LoopRobot`, the env's step when one is
    due). Per tick it records the tick's compute and whether an inference was in flight; per delivered
    chunk, the observation-to-command latency.
    """

    def __init__(self, robot: Robot, controller: PolicyController, runner: _RecordingRunner, itf: RobotInterface,
                 first: State, stop: threading.Event) -> None:
        self.robot, self.controller, self.runner, self.itf, self.stop = robot, controller, runner, itf, stop
        self._feed(first)
        self.tick_compute: list[float] = []
        self.busy: list[bool] = []
        self.obs_to_command: list[float] = []
        self._pending: InferenceResult | None = None
        self._seen = 0

    def _feed(self, state: State) -> None:
        unified, obj, stamp = state
        self.controller.assembler.update_wire(self.itf.wire_state(unified), obj, stamp)

    def __call__(self, now: float) -> None:
        for state in self.robot.states():
            self._feed(state)
        busy = self.runner.busy
        t0 = time.perf_counter()
        command = self.controller.tick(now)
        self.tick_compute.append(time.perf_counter() - t0)
        self.busy.append(busy)
        if len(self.runner.delivered) > self._seen:
            self._seen = len(self.runner.delivered)
            self._pending = self.runner.delivered[-1]
        if command is not None:
            self.robot.follow(command.times, command.positions)
            if self._pending is not None and not command.braking:
                self.obs_to_command.append(now - self._pending.obs_time)
                self._pending = None
        self.robot.after_tick(now)
        if self.robot.done:
            self.stop.set()


def _runner(load: Callable[[], Any], cfg: RuntimeBenchConfig) -> tuple[Any, AsyncInferenceRunner | ProcessInferenceRunner]:
    """``load()``'s policy (or its stand-in) and its runner: on a thread of this process or in a process of its
    own (``cfg.inference``)."""
    if cfg.inference == "process":
        runner = ProcessInferenceRunner(load, torch_threads=cfg.torch_threads)
        return runner.policy, runner
    policy = load()
    return policy, AsyncInferenceRunner(policy, torch_threads=cfg.torch_threads)


def make_loop(cfg: RuntimeBenchConfig) -> RealTimeLoop:
    """The loop part's :class:`RealTimeLoop`, as ``cfg`` sets it up."""
    return RealTimeLoop(cfg.loop_hz, spin_s=cfg.spin_s, switch_interval_s=cfg.switch_interval_s,
                        gc_control=cfg.gc_control, rt_priority=cfg.rt_priority)


def realtime_control(robot: Robot, load: Callable[[], Any], cfg: RuntimeBenchConfig, seconds: float,
                     label: str) -> dict[str, Any]:
    """``seconds`` of real-time control of ``robot`` by ``load()``'s policy through the controller at
    ``cfg.loop_hz`` (episodes from seed ``cfg.seed`` on, each a loop run; resets between runs are not
    timed). ``load`` is called here (``cfg.inference=thread``) or in the inference process (``process``), so
    it must pickle (a module-level function, or a partial of one)."""
    itf = RobotInterface.from_embodiment(robot.embodiment, robot.object_state_dim)
    policy, inner = _runner(load, cfg)
    runner = _RecordingRunner(inner)
    controller = PolicyController(policy, itf, ControllerConfig(loop_hz=cfg.loop_hz), runner=runner)
    loop = make_loop(cfg)
    timings: list[LoopTiming] = []
    episodes: list[dict[str, Any]] = []
    tick_compute: list[float] = []
    busy: list[bool] = []
    obs_to_command: list[float] = []
    intervals: list[np.ndarray] = []  # |tick interval - period| within each run: the ROS node's measure
    collections = 0
    from tqdm import tqdm

    bar = tqdm(total=seconds, desc=f"runtime loop {label}", unit="s", disable=not cfg.progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")
    try:
        controller.warm()
        done = 0.0
        while done < seconds - 1e-9:
            seed = cfg.seed + len(episodes)
            stop = threading.Event()
            episode = _RealTimeEpisode(robot, controller, runner, itf, robot.reset(seed), stop)
            now = time.monotonic()
            controller.start(seed, now)
            robot.start(now)
            run_s = min(seconds - done, robot.max_steps / robot.control_hz)
            timing = loop.run(episode, duration_s=run_s, stop_event=stop)
            outcome = robot.stop()
            controller.stop(time.monotonic())
            runner.wait_idle()  # the next episode's reset must not meet this one's inference
            collections += loop.collections
            ran = max(len(timing.index), 1) / cfg.loop_hz
            done += ran
            bar.update(min(ran, seconds - bar.n))
            timings.append(timing)
            intervals.append(np.abs(timing.interval_errors))
            tick_compute += episode.tick_compute
            busy += episode.busy
            obs_to_command += episode.obs_to_command
            episodes.append({"seed": seed, "steps": outcome.steps, "success": outcome.success,
                             "ticks": len(timing.index)})
        stats = controller.stats()
    finally:
        bar.close()
        controller.close()
    timing = LoopTiming.concat(timings)
    period = 1.0 / cfg.loop_hz
    compute, inflight = np.asarray(tick_compute), np.asarray(busy, bool)
    results = list(runner.delivered)
    return {
        "loop": timing.summary(),
        "late_ticks": late_tick_causes(timing),
        "gc_collections": collections,
        "interval_error": _ms(np.concatenate(intervals)),
        "tick_compute": _ms(compute),
        "periods_met": float(np.mean(compute < period)),
        "periods_met_inferring": float(np.mean(compute[inflight] < period)) if inflight.any() else None,
        "ticks_inferring": int(inflight.sum()),
        "obs_to_command": _ms(obs_to_command),
        "obs_to_chunk": _ms([r.latency_s for r in results]),
        "inference": _ms([r.inference_s for r in results]),
        "chunks": len(results),
        "controller": {k: v for k, v in stats.items() if k.startswith(("loop_", "filter_", "watchdog_", "hold"))
                       or k in ("commands", "holds", "late_chunks")},
        "episodes": episodes, "seconds": seconds, "execute_horizon": controller.execute_horizon,
        "horizon": controller.horizon,
    }


def late_tick_causes(timing: LoopTiming, late_s: float = 1e-3) -> dict[str, int]:
    """Ticks that started more than ``late_s`` after their deadline, by cause: ``after_long_tick`` (the
    previous tick, with what ran in it, ended within 50 us of this deadline or after it: the loop was busy)
    or ``late_wakeup`` (the loop was waiting and woke late: the OS, the GIL, a collection)."""
    late = np.nonzero(timing.period_errors > late_s)[0]
    previous_end = np.r_[-np.inf, (timing.starts + timing.compute)[:-1]]
    busy = int(np.sum(previous_end[late] > timing.deadlines[late] - 5e-5))
    return {"late": len(late), "after_long_tick": busy, "late_wakeup": len(late) - busy}


def large_checkpoint(name: str, task: str, out: Path, seed: int = 0) -> Path:
    """Policy config ``name`` with random weights, conditioned as on ``task``, written as a checkpoint under
    ``out`` (a T5 text encoder is stood in for by fixed tokens: bench infer's choice)."""
    from robot_policy.bench import infer
    from robot_policy.keys import OBS_STATE_MASK
    from robot_policy.models.rdt import RDTPolicyModel

    ti = infer.task_inputs(task, seed)
    config = infer.policy_for_task(name, ti.object_state_dim)
    torch.manual_seed(seed)
    model = RDTPolicyModel(config).eval()
    normalizer = infer.unit_normalizer(ti.object_state_dim, ti.obs[OBS_STATE_MASK], ti.action_mask)
    return Path(infer.write_checkpoint(model, normalizer, ti, infer.language_table(config, ti.instruction, seed),
                                       out))


def standstill_policy(checkpoint: str) -> StandStill:
    """The checkpoint's policy under :class:`StandStill` (module level: the inference process calls it)."""
    policy = DiffusionPolicy.from_checkpoint(checkpoint)
    return StandStill(policy, RobotInterface.from_embodiment(policy.embodiment))


class StandStill:
    """``policy``'s inference, every call of it, with the chunk's actions replaced by the observed joint
    positions: for timing a policy with random weights, whose own actions the safety filter would refuse
    (first point too far), after which the controller only holds and does less per tick than when it follows
    a chunk. The controller then runs the path of a real chunk (scheduler, filter over the whole plan)."""

    def __init__(self, policy: DiffusionPolicy, interface: RobotInterface) -> None:
        self.policy, self.interface = policy, interface
        self.horizon, self.execute_horizon, self.embodiment = policy.horizon, policy.execute_horizon, policy.embodiment

    def reset(self, seed: int = 0) -> None:
        reset_policy(self.policy, seed)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        observe(self.policy, obs)

    def predict_chunk(self, obs: dict[str, np.ndarray], **kwargs: Any) -> ActionChunk:
        chunk = self.policy.predict_chunk(obs, **kwargs)
        spec, state = self.interface.embodiment, np.asarray(obs[OBS_STATE], np.float64)
        # the state's fields named like the action's are the joint positions and finger gaps; only those are
        # read (the end-effector rotation of controller.warm's zero observation has no meaning)
        by_name = {f.name: f for f in spec.state.fields}
        q = np.concatenate([by_name[f.name].from_unified(state[by_name[f.name].unified_slice])
                            for f in spec.action.fields])  # (n,) in the order of the command rows
        still = spec.action.flat_to_unified(np.repeat(q[None], len(chunk.unified), axis=0))
        return dataclasses.replace(chunk, unified=still.astype(np.float32))  # (Ta, 128)


# --- ros: the policy node over rclpy ----------------------------------------------------------------------


#: run_sil in a process of its own: it sets the DDS environment and starts rclpy in the calling process
_SIL_CHILD = ("import json, sys; from robot_policy.pipelines.sil import SilConfig, run_sil; "
              "run_sil(SilConfig(**json.loads(sys.argv[1])))")


def ros_control(cfg: RuntimeBenchConfig) -> dict[str, Any]:
    """``robot-policy sil`` with the policy node's loop at ``cfg.loop_hz``; its eval.json's loop timing."""
    out = Path(cfg.workdir) / "sil"
    options: dict[str, Any] = {"task": cfg.task, "policy": cfg.checkpoint, "episodes": cfg.ros_episodes,
                               "seed": cfg.seed, "out": str(out), "loop_hz": cfg.loop_hz, "bag": False,
                               "overwrite": True, "max_steps": cfg.ros_max_steps, "domain_id": cfg.ros_domain_id}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cfg.torch_threads))}
    done = subprocess.run([sys.executable, "-c", _SIL_CHILD, json.dumps(options)], env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench runtime: the ros part's run_sil exited with {done.returncode}; see {out}/*.log")
    summary = json.loads((out / "eval.json").read_text())
    return {"loop_timing": summary["loop_timing"], "episodes": summary["episodes"],
            "successes": summary["successes"], "errored": summary["errored"],
            "filter_interventions": summary["filter_interventions"], "eval_json": str(out / "eval.json")}


# --- delay: success against injected inference delay ------------------------------------------------------


def scheme_settings(scheme: str, rtc_execute_horizon: int) -> ControllerConfig:
    """The controller of ``scheme`` in the delay sweep: rtc executes ``rtc_execute_horizon`` actions per
    chunk; the others keep :func:`~robot_policy.pipelines.runtime_sim.scheme_config`'s (the policy's own)."""
    return scheme_config(scheme, execute_horizon=rtc_execute_horizon if scheme == "rtc" else None)


def success_cell(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "episodes": n, "success_rate": successes / n, "ci95_low": low, "ci95_high": high}


def delay_sweep(env: ManipulationEnv, policy: Policy, cfg: RuntimeBenchConfig) -> dict[str, Any]:
    """``{scheme: {delay_ms: success_cell + per-episode records}}`` over seeds seed..seed+episodes-1."""
    from tqdm import tqdm

    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    out: dict[str, Any] = {s: {} for s in cfg.schemes}
    bar = tqdm(total=len(cfg.schemes) * len(cfg.delays_ms) * len(seeds), desc="runtime delay sweep", unit="ep",
               disable=not cfg.progress)
    try:
        for delay in cfg.delays_ms:
            for scheme in cfg.schemes:
                controller = scheme_settings(scheme, cfg.rtc_execute_horizon)
                bar.set_postfix(scheme=scheme, delay_ms=f"{delay:g}")
                records = []
                for seed in seeds:
                    ep = run_runtime_episode(env, policy, seed, controller, latency_s=delay / 1e3)
                    records.append({"seed": seed, "success": ep.success, "length": ep.length,
                                    "late_chunks": ep.stats.get("late_chunks", 0),
                                    "holds": ep.stats.get("holds", 0)})
                    bar.update(1)
                wins = sum(r["success"] for r in records)
                out[scheme][f"{delay:g}"] = {**success_cell(wins, len(records)), "per_episode": records}
    finally:
        bar.close()
    return out


def plot_delay_sweep(sweep: dict[str, Any], path: Path, title: str) -> Path:
    """Success (%) against injected delay (ms), one line per scheme with its 95% Wilson interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    schemes = list(sweep)
    for i, scheme in enumerate(schemes):
        cells = sweep[scheme]
        delays = np.array([float(d) for d in cells])
        rate = np.array([100 * c["success_rate"] for c in cells.values()])
        err = np.array([[100 * (c["success_rate"] - c["ci95_low"]), 100 * (c["ci95_high"] - c["success_rate"])]
                        for c in cells.values()]).T  # (2, delays): below, above
        err = np.clip(err, 0.0, None)  # at 0% or 100% the Wilson bound equals the rate up to rounding (1 - 1e-16)
        shift = (i - (len(schemes) - 1) / 2) * 4.0  # ms: side by side, so the bars do not cover each other
        ax.errorbar(delays + shift, rate, yerr=err, fmt="o-", capsize=3, label=scheme)
    ax.set_xlabel("injected inference delay (ms)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 103)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the bench --------------------------------------------------------------------------------------------


def make_robot(cfg: RuntimeBenchConfig) -> Robot:
    """The loop part's simulated robot, where ``cfg.robot`` puts it."""
    if cfg.robot == "process":
        return SimRobotProcess(cfg.task)
    return LoopRobot(make_env(load_task_config(cfg.task)))


def loop_part(cfg: RuntimeBenchConfig) -> dict[str, Any]:
    """Real-time control with the checkpoint, then with ``cfg.large_model`` (random weights, StandStill)."""
    robot = make_robot(cfg)
    try:
        out = {"checkpoint": realtime_control(robot, functools.partial(serving_policy, cfg.checkpoint), cfg,
                                              cfg.loop_seconds, "checkpoint")}
        if cfg.large_model:
            Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f"bench-runtime-{cfg.large_model}-", dir=cfg.workdir) as tmp:
                path = large_checkpoint(cfg.large_model, cfg.task, Path(tmp))
                out["large"] = {"model": cfg.large_model, "untrained": True,
                                **realtime_control(robot, functools.partial(standstill_policy, str(path)), cfg,
                                                   cfg.large_loop_seconds, cfg.large_model)}
        return out
    finally:
        robot.close()


def run_runtime_bench(cfg: RuntimeBenchConfig) -> dict[str, Any]:
    """Every part of ``cfg.parts``; torch's thread count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    overrides: dict[str, Any] = {"max_steps": cfg.max_steps} if cfg.max_steps > 0 else {}
    results: dict[str, Any] = {"task": cfg.task, "checkpoint": cfg.checkpoint, "cpu_count": os.cpu_count(),
                               "torch_threads": cfg.torch_threads, "torch": torch.__version__,
                               "load_average_1min_before": os.getloadavg()[0], "config": dataclasses.asdict(cfg)}
    try:
        policy = DiffusionPolicy.from_checkpoint(cfg.checkpoint)
        results["policy"] = {"horizon": policy.horizon, "execute_horizon": policy.execute_horizon}
        if "loop" in cfg.parts:
            results["loop"] = loop_part(cfg)
        if "ros" in cfg.parts:
            results["ros"] = ros_control(cfg)
        if "delay" in cfg.parts:
            env = make_env(load_task_config(cfg.task, **overrides))
            try:
                t0 = time.perf_counter()
                results["delay"] = delay_sweep(env, policy, cfg)
                results["delay_seconds"] = time.perf_counter() - t0
                results["max_steps"] = env.task.max_steps
            finally:
                env.close()
            figure = Path(cfg.figure) if Path(cfg.figure).is_absolute() else REPO_ROOT / cfg.figure
            title = f"{cfg.task}: {_run_name(cfg.checkpoint)}, {cfg.episodes} held-out seeds per point, 95% Wilson intervals"
            results["figure"] = str(plot_delay_sweep(results["delay"], figure, title))
        results["load_average_1min_after"] = os.getloadavg()[0]
        return results
    finally:
        torch.set_num_threads(previous)


# --- rows and notes -----------------------------------------------------------------------------------------


def _pct(cell: dict[str, Any]) -> str:
    return (f"{100 * cell['success_rate']:.1f}% [{100 * cell['ci95_low']:.1f}, {100 * cell['ci95_high']:.1f}] "
            f"({cell['successes']}/{cell['episodes']})")


def _p(stats: dict[str, Any]) -> str:
    return f"{stats['p50_ms']:.2f} / {stats['p99_ms']:.2f}" if stats.get("n", 1) and "p50_ms" in stats else "n/a"


def runtime_rows(r: dict[str, Any], cfg: RuntimeBenchConfig) -> list[Row]:
    """The table of ``bench runtime`` from its results."""
    hz = f"{cfg.loop_hz:g} Hz"
    period_ms = 1e3 / cfg.loop_hz
    rows: list[Row] = []
    loop = r.get("loop", {})
    for key in ("checkpoint", "large"):
        if key not in loop:
            continue
        m = loop[key]
        name = f"{_run_name(cfg.checkpoint)} checkpoint" if key == "checkpoint" else f"{m['model']} (untrained)"
        err = m["loop"]["period_error"]
        rows.append(Row(f"in process, {name} inferring: loop period error p50 / p99 (ms, {hz}, tick start - "
                        f"deadline, n={err['n']})", _p(err), "p99 <= 1 ms (idle core)",
                        check(err["p99_ms"], 1.0, higher_is_better=False)))
        met = m["periods_met_inferring"]
        rows.append(Row(f"in process, {name}: control periods met (controller tick < {period_ms:g} ms) while "
                        f"inferring (n={m['ticks_inferring']} ticks) / all ticks",
                        (f"{100 * met:.2f}%" if met is not None else "n/a") + f" / {100 * m['periods_met']:.2f}%"))
        work = "tick + env step" if cfg.robot == "loop" else "tick"
        rows.append(Row(f"in process, {name}: overruns ({work} > period) / missed deadlines, of "
                        f"{m['loop']['ticks']} ticks", f"{m['loop']['overruns']} / {m['loop']['missed_deadlines']}"))
        late = m["late_ticks"]
        rows.append(Row(f"in process, {name}: ticks > 1 ms late: after a long tick / woken late",
                        f"{late['after_long_tick']} / {late['late_wakeup']}"))
        if key == "checkpoint":
            rows.append(Row(f"in process, {name}: observation to the first command with its chunk p50 / p99 (ms, "
                            f"n={m['obs_to_command']['n']})", _p(m["obs_to_command"])))
            rows.append(Row(f"in process, {name}: observation to chunk available (inference) p50 / p99 (ms)",
                            _p(m["obs_to_chunk"])))
    if "ros" in r:
        ros = r["ros"]["loop_timing"]
        inproc = loop.get("checkpoint", {}).get("interval_error")
        value = _p(ros.get("loop_period_error", {}))
        if inproc:
            value += f" (in process: {_p(inproc)})"
        # no "|" in a metric: it is a markdown table cell
        rows.append(Row(f"ROS 2 policy_node (rclpy timer, {hz}): loop period error p50 / p99 (ms, abs(tick interval "
                        "- period))", value))
        met = ros.get("loop_periods_met")
        rows.append(Row("ROS 2 policy_node: control periods met (controller tick < period)",
                        f"{100 * met:.2f}%" if met is not None else "n/a"))
    if "delay" in r:
        for scheme, cells in r["delay"].items():
            for delay, cell in cells.items():
                rows.append(Row(f"{scheme}, {delay} ms injected delay: success [95% CI]", _pct(cell)))
        rtc = r["delay"].get("rtc", {})
        if "0" in rtc and "300" in rtc:
            drop = 100 * (rtc["0"]["success_rate"] - rtc["300"]["success_rate"])
            rows.append(Row("rtc at 300 ms within 10 points of no delay (rtc at 0 ms)",
                            f"{100 * rtc['300']['success_rate']:.1f}% vs {100 * rtc['0']['success_rate']:.1f}% "
                            f"({-drop:+.1f} points)", "within 10 points", check(drop, 10.0, higher_is_better=False)))
    return rows


def runtime_notes(r: dict[str, Any], cfg: RuntimeBenchConfig) -> str:
    """The prose above the table: how each part was measured, on what."""
    parts = [(f"CPU, torch {r['torch']}, {r['torch_threads']} torch thread(s) on {r['cpu_count']} cores, shared "
              f"with other jobs (1-min load average {r['load_average_1min_before']:.1f} before, "
              f"{r['load_average_1min_after']:.1f} after): period errors and compute shares are this machine's "
              "under that load, not an idle core's.")]
    if "loop" in r:
        ck = r["loop"]["checkpoint"]
        robot = ("in a process of its own, stepping on its own clock at its control rate" if cfg.robot == "process"
                 else "in the loop's thread at its control rate after the controller's tick")
        inference = ("in a process of its own (ProcessInferenceRunner, loaded from the checkpoint)"
                     if cfg.inference == "process" else "on the runner's thread in the loop's process")
        scheduling = f"SCHED_FIFO priority {cfg.rt_priority}" if cfg.rt_priority is not None else "default scheduling"
        parts.append(
            f"**In process**: `RealTimeLoop({cfg.loop_hz:g})` (absolute deadlines, sleep then spin the last "
            f"{1e3 * cfg.spin_s:g} ms, {scheduling}, garbage collected "
            f"{'between ticks only' if cfg.gc_control else 'automatically'}, GIL switch interval "
            f"{'%g ms' % (1e3 * cfg.switch_interval_s) if cfg.switch_interval_s else 'CPython default'}) ticking "
            f"`PolicyController(ControllerConfig(loop_hz={cfg.loop_hz:g}))` with `{cfg.checkpoint}` inferring "
            f"{inference} (chunk of {ck['horizon']}, execute {ck['execute_horizon']}, {ck['chunks']} chunks "
            f"in {cfg.loop_seconds:g} s); the `{cfg.task}` env runs {robot}, following the commands, and its "
            "state stamped when read is the observation. A late tick (> 1 ms) came after a long tick if the one "
            "before it ran to within 50 us of its deadline, else the loop was woken late. "
            "Observation to command: the observation's stamp to the first tick whose (non-braking) command holds "
            "the chunk inferred from it; inference = the same stamp to the chunk being available.")
        if "large" in r["loop"]:
            lg = r["loop"]["large"]
            parts.append(f"`{lg['model']}` is built from configs/policy/{lg['model']}.yaml with random weights "
                         f"(timing only; inference {_p(lg['inference'])} ms p50 / p99 over {lg['chunks']} chunks, "
                         f"chunk of {lg['horizon']}, execute {lg['execute_horizon']}); its actions are replaced by "
                         "the observed joint positions after each inference (`StandStill`: the filter would refuse "
                         "random actions, and a controller that only holds does less per tick), so the controller "
                         "follows chunks of its length as it would a trained one's.")
    if "ros" in r:
        parts.append(f"**ROS 2**: `robot-policy sil` ({r['ros']['episodes']} episodes, "
                     f"{r['ros']['successes']} succeeded) with the policy node's `loop_hz:={cfg.loop_hz:g}`; its "
                     "controller measures abs(interval between ticks - period), not deadlines (the number in "
                     "brackets is that measure of the in-process run).")
    if "delay" in r:
        parts.append(f"**Delay sweep**: `run_runtime_episode` on simulated time (latency = the injected delay "
                     f"exactly), {cfg.episodes} held-out seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1} per point, "
                     f"time limit {r['max_steps']} steps; sync / async execute the policy's own "
                     f"{r['policy']['execute_horizon']} of {r['policy']['horizon']} actions, temporal_ensemble 1, "
                     f"rtc {cfg.rtc_execute_horizon}; {r['delay_seconds'] / 60:.1f} min. "
                     f"![success against injected delay]({_relative(r['figure'])})")
    return "\n\n".join(parts)


def _run_name(checkpoint: str) -> str:
    """The training run of a checkpoint directory (``runs/X/checkpoints/step_N`` -> ``X``)."""
    path = Path(checkpoint).resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def _relative(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)
