"""The policy controller: one control period of the runtime, whatever carries the messages.

Each :meth:`PolicyController.tick` (called at ``loop_hz`` by the ROS 2 node's timer, the in-process loop
of :mod:`robot_policy.runtime.loop`, or a test):

1. takes the newest complete observation from the :class:`~robot_policy.runtime.robot_io.ObservationAssembler`
   (the transport feeds it) and tells the watchdog its stamp;
2. queues a chunk the :class:`~robot_policy.runtime.runner.AsyncInferenceRunner` finished, stamped with its
   observation's time, in the :class:`~robot_policy.runtime.scheduler.ChunkScheduler`;
3. asks the :class:`~robot_policy.runtime.watchdog.Watchdog` for the mode;
4. starts the next inference when the queue runs low (after ``execute_horizon`` actions of the last chunk),
   from the newest observation, so inference runs while the queue executes;
5. RUN: the queued actions from now on, at the chunk's rate, go through the
   :class:`~robot_policy.runtime.safety.SafetyFilter` from the last command (position and finite-difference
   velocity) and become the :class:`Command`; HOLD / ESTOP: a ruckig stop from the last command, once.

Nothing reaches the returned command without the filter. Times are seconds on the clock of the observation
stamps (the ROS clock in the node, ``time.monotonic`` in process).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.data.rig_file import FrameTransform
from robot_policy.policies.base import Policy, observe, reset_policy
from robot_policy.policies.diffusion import ActionPrefix
from robot_policy.runtime.robot_io import ObservationAssembler, RobotInterface, native_rows
from robot_policy.runtime.rtc import rtc_weights
from robot_policy.runtime.runner import AsyncInferenceRunner, InferenceResult, InferenceRunner
from robot_policy.runtime.safety import (
    ForwardKinematics,
    Intervention,
    JointLimits,
    SafetyFilter,
    WorkspaceBox,
)
from robot_policy.runtime.scheduler import ChunkScheduler, SchedulerConfig
from robot_policy.runtime.watchdog import Mode, Watchdog, WatchdogConfig


@dataclass
class ControllerConfig:
    """How the controller runs. Times in seconds, positions in rad (grippers: m of finger gap)."""

    #: control-loop rate (Hz); None: the embodiment's control rate
    loop_hz: float | None = None
    #: an observation older than this is stale -> hold (within one period)
    obs_timeout_s: float = 0.15
    #: an inference running longer than this missed its deadline (the queue keeps running, then hold);
    #: None: the duration of ``execute_horizon`` actions
    inference_deadline_s: float | None = None
    #: arm joint position limits shrink by this at both ends
    position_margin: float = 0.01
    #: grippers: the embodiment spec gives none, so these (the pybullet Panda's fingers close 0.08 m in
    #: ~0.4 s in the scripted demonstrations: 0.2 m/s)
    gripper_vel_max: float = 0.25
    gripper_acc_max: float = 5.0
    #: jerk_max = jerk_per_acc * acc_max (1/s). Franka's datasheet: 7500 rad/s^3 against 15 rad/s^2 on joint 1
    #: (500x; the same ratio on every joint). The scripted demonstrations reach 1.6x of 10x at 20 Hz.
    jerk_per_acc: float = 500.0
    #: a chunk whose first command is farther than this from the arm (its measured joints) is rejected, and
    #: the queue dropped so the next inference starts from the arm's state
    max_first_jump: float = 0.3
    #: chunk blending: none | temporal_ensemble | rtc
    scheduler: str = "none"
    #: actions of a chunk executed before the next inference starts; None: the policy's own
    execute_horizon: int | None = None
    #: added to every inference (the delay benchmark)
    injected_delay_s: float = 0.0
    #: the inference latency assumed until one is measured (when to start the next inference)
    initial_latency_s: float = 0.1
    #: when the next inference starts: ``early`` (the queue would otherwise run out before the chunk arrives:
    #: asynchronous execution) or ``when_empty`` (after the queue ran out: synchronous execution, the arm
    #: stops while the policy infers)
    replan: str = "early"
    #: lockstep: tick waits for the inference it starts (the world stands still meanwhile, as in
    #: robot-policy eval); for deterministic in-process runs and tests, never on a robot
    synchronous: bool = False
    #: an end-effector box [lower, upper] (3 numbers each, m) the safety filter keeps every arm in (needs an
    #: ``fk``): in the rig frame (the base-to-base calibration's parent arm base) when the controller has the
    #: rig calibration, else in each arm's own base frame; None: no box
    workspace_lower: list[float] | None = None
    workspace_upper: list[float] | None = None
    #: the arms' end effectors stay at least this far apart (m; needs an ``fk`` and the rig calibration)
    min_arm_separation: float | None = None

    def __post_init__(self) -> None:
        if self.scheduler not in ("none", "temporal_ensemble", "rtc"):
            raise ValueError(f"scheduler: unknown {self.scheduler!r}; valid: none, temporal_ensemble, rtc")
        if self.replan not in ("early", "when_empty"):
            raise ValueError(f"replan: unknown {self.replan!r}; valid: early, when_empty")
        for key in ("obs_timeout_s", "max_first_jump", "gripper_vel_max", "gripper_acc_max", "jerk_per_acc",
                    "initial_latency_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.loop_hz is not None and not self.loop_hz > 0:
            raise ValueError(f"loop_hz: must be > 0, got {self.loop_hz}")
        if self.execute_horizon is not None and self.execute_horizon < 1:
            raise ValueError(f"execute_horizon: must be >= 1, got {self.execute_horizon}")
        if (self.workspace_lower is None) != (self.workspace_upper is None):
            raise ValueError("workspace_lower and workspace_upper go together (a box), got "
                             f"{self.workspace_lower} and {self.workspace_upper}")


@dataclass(frozen=True)
class Command:
    """Position commands for every joint: row i (n,) is for ``start + (i + 1) * dt`` [s]; after the last
    row the arm holds it. ``braking``: a stop, not the policy's plan."""

    positions: np.ndarray
    dt: float
    start: float
    braking: bool = False

    @property
    def times(self) -> np.ndarray:
        """(T,) absolute time of each row [s]."""
        return self.start + self.dt * np.arange(1, len(self.positions) + 1)


class _Plan:
    """The last command sent, with the state it started from, sampled for the next plan's start state."""

    def __init__(self, origin: np.ndarray, origin_vel: np.ndarray, command: Command) -> None:
        self.points = np.vstack([origin[None], command.positions])  # (T + 1, n): row 0 at command.start
        self.origin_vel = origin_vel
        self.command = command

    def state_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        dt = self.command.dt
        s = (t - self.command.start) / dt
        last = len(self.points) - 1
        if s >= last:
            return self.points[-1].copy(), np.zeros_like(self.points[-1])
        if s <= 0:
            return self.points[0].copy(), self.origin_vel.copy()
        k = int(s)
        w = s - k
        # the velocity the arm has at t is that of the segment it ran up to t: at a point (w == 0) the one
        # that ends there, not the next one (which the new plan replaces)
        j = k - 1 if w == 0 else k
        vel = (self.points[j + 1] - self.points[j]) / dt
        return self.points[k] + w * (self.points[k + 1] - self.points[k]), vel


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.abs(np.asarray(values)) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


class PolicyController:
    """Runs a :class:`~robot_policy.policies.base.Policy` on a robot through the runtime (module docstring).

    Not thread-safe: one control thread calls every method; inference runs on the runner's thread (or in its
    process: :class:`~robot_policy.runtime.process_runner.ProcessInferenceRunner`, with ``policy`` its
    ``runner.policy``).
    """

    def __init__(self, policy: Policy, interface: RobotInterface, cfg: ControllerConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 runner: InferenceRunner | None = None,
                 fk: ForwardKinematics | None = None, rig: FrameTransform | None = None) -> None:
        """``fk``: joint commands (n,) -> end-effector positions (arms, 3; rows in ``interface.arm_joints``
        order, each in its arm's base frame, m), for the workspace settings of ``cfg``; ``rig``: the rig's
        base-to-base calibration (:func:`robot_policy.data.rig_file.load_rig_base_to_base`), which puts the
        arms' end effectors in one frame."""
        self.policy = policy
        self.interface = interface
        self.cfg = cfg = cfg or ControllerConfig()
        spec = interface.embodiment
        self.control_hz = float(spec.control_hz)
        self.loop_hz = float(cfg.loop_hz or self.control_hz)
        self.dt = 1.0 / self.control_hz
        self.execute_horizon = int(cfg.execute_horizon or getattr(policy, "execute_horizon", 0) or 8)
        self.horizon = int(getattr(policy, "horizon", self.execute_horizon))
        self.assembler = ObservationAssembler(interface)
        limits = JointLimits.from_embodiment(spec, jerk_per_acc=cfg.jerk_per_acc, gripper_vel_max=cfg.gripper_vel_max,
                                             gripper_acc_max=cfg.gripper_acc_max).shrunk(
            self._margins(spec))
        self.rig = rig
        self.filter = SafetyFilter(limits, self.dt, cfg.max_first_jump, **workspace_options(cfg, interface, fk, rig))
        deadline = cfg.inference_deadline_s or self.execute_horizon * self.dt
        self.watchdog = Watchdog(WatchdogConfig(obs_timeout_s=cfg.obs_timeout_s, inference_deadline_s=deadline))
        self.scheduler = ChunkScheduler(SchedulerConfig(mode=cfg.scheduler))
        # the runner stamps its results on the clock of the observation stamps, so latency = finished - obs time
        self.runner: InferenceRunner = runner or AsyncInferenceRunner(
            self._infer, injected_delay_s=cfg.injected_delay_s, clock=clock)
        self._plan: _Plan | None = None
        self._holding = False
        self._last_stamp = -np.inf
        self._pending_observations: list[dict[str, np.ndarray]] = []
        self._inflight_obs_time: float | None = None
        self._last_tick: float | None = None
        self._period_errors: collections.deque[float] = collections.deque(maxlen=4000)
        self._tick_compute: collections.deque[float] = collections.deque(maxlen=4000)
        self._latencies: collections.deque[float] = collections.deque(maxlen=500)
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_malformed = ""
        self._mode = Mode.HOLD
        self._new_chunk = False

    def _margins(self, spec: Any) -> np.ndarray:
        # the joint margin on arm joints only: a gripper's range is its whole travel (0 = closed is needed)
        margins = []
        for f in spec.action.fields:
            margins += [0.0 if f.gripper is not None else self.cfg.position_margin] * f.dim
        return np.asarray(margins)

    # ---- lifecycle --------------------------------------------------------------------------------
    def warm(self) -> None:
        """One inference on a zero observation (the backend's first call allocates and compiles)."""
        obs = {k: np.zeros_like(v) for k, v in self._zero_observation().items()}
        self.policy.predict_chunk(obs)

    def _zero_observation(self) -> dict[str, np.ndarray]:
        from robot_policy.keys import OBS_OBJECT, OBS_STATE, OBS_STATE_MASK
        from robot_policy.spaces.unified import UNIFIED_DIM

        obs = {OBS_STATE: np.zeros(UNIFIED_DIM, np.float32), OBS_STATE_MASK: self.interface.embodiment.state.mask}
        if self.interface.object_state_dim:
            obs[OBS_OBJECT] = np.zeros(self.interface.object_state_dim, np.float32)
        return obs

    def start(self, seed: int, now: float) -> None:
        """A new episode: the policy's history and noise reset to ``seed``, an empty queue, control allowed."""
        self.runner.wait_idle()
        reset_policy(self.policy, seed)
        self.scheduler = ChunkScheduler(SchedulerConfig(mode=self.cfg.scheduler))
        self._pending_observations.clear()
        self._plan, self._holding, self._last_stamp = None, False, -np.inf
        self.watchdog.activate(now)

    def stop(self, now: float) -> Command | None:
        """Deactivate: hold from now on (a stop from the last command, returned for sending)."""
        self.watchdog.deactivate(now)
        return self._hold(now)

    def set_estop(self, asserted: bool, now: float) -> None:
        self.watchdog.set_estop(asserted, now)

    def reset_estop(self, now: float) -> bool:
        return self.watchdog.reset(now)

    def close(self) -> None:
        self.runner.close()

    def record_malformed(self, reason: str) -> None:
        self._counts["malformed_messages"] += 1
        self._last_malformed = reason

    def describe(self) -> str:
        return (f"{self.control_hz:g} Hz chunks, loop {self.loop_hz:g} Hz, execute {self.execute_horizon} of "
                f"{self.horizon}, scheduler {self.cfg.scheduler}")

    # ---- one control period -----------------------------------------------------------------------
    def tick(self, now: float) -> Command | None:
        """The command to send this period (None: nothing new to send; the arm follows or holds the last)."""
        t0 = time.perf_counter()
        self._new_chunk = False
        if self._last_tick is not None:
            self._period_errors.append(now - self._last_tick - 1.0 / self.loop_hz)
        self._last_tick = now
        assembled = self.assembler.assemble()
        obs, stamp = (None, None) if assembled is None else assembled
        new_obs = stamp is not None and stamp > self._last_stamp
        if new_obs:
            assert stamp is not None and obs is not None
            self.watchdog.observe(stamp)
            self._last_stamp = stamp
        result = self.runner.poll()
        if result is not None:
            self._accept(result, now)
        queued = self.scheduler.remaining(now)
        mode = self.watchdog.mode(now, queued)
        if new_obs and obs is not None:
            self._maybe_infer(obs, float(stamp), now, queued, mode)  # type: ignore[arg-type]
            if self.cfg.synchronous and self.runner.busy:
                # lockstep: the world waits for the chunk, as in robot-policy eval (deterministic tests)
                waited = self.runner.wait()
                if waited is not None:
                    self._accept(waited, now)
                queued = self.scheduler.remaining(now)
                mode = self.watchdog.mode(now, queued)
        if mode != Mode.RUN and self._mode == Mode.RUN:
            # why control stopped, by kind ("observation stale", "queue empty", ...), for diagnostics
            self._counts["hold_" + self.watchdog.reason.split(":")[0].split(" (")[0].replace(" ", "_")] += 1
        self._mode = mode
        if mode == Mode.RUN:
            command = self._run(now) if self._replan_due(now) else None
        else:
            command = self._hold(now)
        self._tick_compute.append(time.perf_counter() - t0)
        return command

    def _replan_due(self, now: float) -> bool:
        """Whether this RUN period sends a new plan. At the chunks' rate, every period (each plan starts at a
        chunk step, from the state the last one reached there, so the filter's bounds chain exactly). Faster
        (e.g. 200 Hz), only when something changed: a chunk arrived, control resumed after a hold, or the plan
        is about to run out; re-filtering the same queue every 5 ms from mid-step states would re-apply the
        acceleration bound per tick and let the executed trajectory exceed it."""
        if self.loop_hz <= self.control_hz * (1 + 1e-9):
            return True
        if self._plan is None or self._holding or self._new_chunk:
            return True
        return bool(now + self.dt >= self._plan.command.times[-1])

    def _accept(self, result: InferenceResult, now: float) -> None:
        rows = native_rows(self.interface, result.chunk.unified)
        self._latencies.append(result.latency_s)
        if not np.isfinite(rows).all():
            # a broken backend: the chunk is dropped whole, so the queue runs out and the arms hold (the
            # filter would refuse it too; it never reaches the scheduler)
            self._counts["chunks_rejected_nonfinite"] += 1
        else:
            if self.cfg.replan == "when_empty":
                # synchronous execution: a chunk's first execute_horizon actions, then the arm holds while the
                # next one is inferred (the rest of the chunk is not executed meanwhile)
                rows = rows[: self.execute_horizon]
            self.scheduler.add(rows, result.obs_time, self.control_hz, now=now)
            self.watchdog.chunk_arrived(now, result.obs_time)
            self._new_chunk = True
        for o in self._pending_observations:  # the steps that ran while it was inferring, in order
            observe(self.policy, o)
        self._pending_observations.clear()

    def _maybe_infer(self, obs: dict[str, np.ndarray], stamp: float, now: float, queued: int, mode: Mode) -> None:
        # Re-plan once execute_horizon actions of the chunk have run, or earlier when the rest of the queue
        # would run out before a new chunk can arrive (the recent inference latency plus a period): with
        # execute_horizon == horizon the queue would otherwise empty and the arms hold between chunks.
        early = not self.cfg.synchronous and self.cfg.replan == "early"
        lead = int(np.ceil(self._expected_latency() * self.control_hz)) + 1 if early else 0
        due = queued <= max(self.horizon - self.execute_horizon, lead, 0)
        if mode != Mode.ESTOP and due and not self.runner.busy and self.runner.submit(obs, stamp, **self._rtc(stamp)):
            self.watchdog.inference_started(now)
            return
        if self.runner.busy:
            self._pending_observations.append(obs)
        else:
            observe(self.policy, obs)

    def _rtc(self, stamp: float) -> dict[str, Any]:
        """``prefix=`` for real-time chunking: the queued actions at the new chunk's steps, those due before it
        can arrive frozen, the rest of the overlap guided with decaying weights (runtime.rtc)."""
        if self.cfg.scheduler != "rtc" or self.scheduler.remaining(stamp) == 0:
            return {}
        prefix = self.scheduler.prefix_for_next(stamp, self.horizon, self._expected_latency(), self.control_hz)
        weights = rtc_weights(self.horizon, prefix.frozen, prefix.overlap)
        return {"prefix": ActionPrefix.from_native(prefix.actions, weights, self.interface.embodiment)}

    def _expected_latency(self) -> float:
        if not self._latencies:
            return self.cfg.initial_latency_s
        return float(np.percentile(np.asarray(self._latencies), 90))

    def _infer(self, obs: dict[str, np.ndarray]) -> Any:
        return self.policy.predict_chunk(obs)

    def _start_state(self, now: float) -> tuple[np.ndarray, np.ndarray] | None:
        if self._plan is not None:
            return self._plan.state_at(now)
        q = self.assembler.joint_position
        if q is None:
            return None
        return q.copy(), np.zeros_like(q)

    def _run(self, now: float) -> Command | None:
        start = self._start_state(now)
        if start is None:
            return None
        targets = []
        t = now + self.dt
        while (row := self.scheduler.action_at(t)) is not None:
            targets.append(row)
            t += self.dt
            if len(targets) >= 4 * self.horizon:  # a temporal ensemble of many chunks: enough lookahead
                break
        if not targets:
            return self._hold(now)
        q0, dq0 = start
        result = self.filter.filter(q0, dq0, np.stack(targets), measured=self.assembler.joint_position)
        if len(result.commands) == 0:
            return None
        if result.intervention == Intervention.REJECTED_JUMP:
            # the queue was planned for another arm state: drop it, so the next inference (from the arm's
            # state now) starts at once, instead of braking on the same queue every period
            self.scheduler = ChunkScheduler(SchedulerConfig(mode=self.cfg.scheduler))
            self._counts["queues_dropped_jump"] += 1
        command = Command(result.commands, self.dt, now, braking=result.braking)
        self._plan, self._holding = _Plan(q0, dq0, command), result.braking
        self._counts["commands"] += 1
        return command

    def _hold(self, now: float) -> Command | None:
        if self._holding:
            return None  # the stop was sent; the arm holds its last point
        start = self._start_state(now)
        if start is None:
            return None
        q0, dq0 = start
        stop = self.filter.brake(q0, dq0)
        if len(stop) == 0:
            return None
        command = Command(stop, self.dt, now, braking=True)
        self._plan, self._holding = _Plan(q0, dq0, command), True
        self._counts["holds"] += 1
        return command

    # ---- diagnostics ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Loop timing (``loop_period_error``: |actual - nominal period|; ``loop_compute``: time in tick),
        inference latency, the watchdog's mode and counters, the filter's interventions."""
        out: dict[str, Any] = {"mode": self._mode.value, "reason": self.watchdog.reason, "loop_hz": self.loop_hz}
        out["loop_period_error"] = _percentiles(self._period_errors)
        out["loop_compute"] = _percentiles(self._tick_compute)
        period = 1.0 / self.loop_hz
        out["loop_periods_met"] = (float(np.mean(np.asarray(self._tick_compute) < period))
                                   if self._tick_compute else None)
        out["inference_latency"] = _percentiles(self._latencies)
        out.update({f"watchdog_{k}": v for k, v in self.watchdog.stats().items()})
        out.update({f"filter_{k}": v for k, v in self.filter.stats().items()})
        out.update(dict(self._counts))
        out["late_chunks"] = self.scheduler.late_chunks
        if self._last_malformed:
            out["last_malformed"] = self._last_malformed
        return out


def workspace_options(cfg: ControllerConfig, interface: RobotInterface, fk: ForwardKinematics | None,
                      rig: FrameTransform | None) -> dict[str, Any]:
    """The :class:`SafetyFilter` keywords of ``cfg``'s end-effector box and arm separation: the boxes, ``fk``
    and, with the rig calibration, each arm's base pose in the rig frame (arms in ``arm_joints`` order)."""
    if cfg.workspace_lower is None and cfg.min_arm_separation is None:
        return {}
    if fk is None:
        raise ValueError("workspace_lower/upper and min_arm_separation need an fk (joint commands -> end-effector "
                         "positions); the runtime has no arm model of its own")
    arms = list(interface.arm_joints)
    if cfg.min_arm_separation is not None and rig is None:
        raise ValueError(f"min_arm_separation={cfg.min_arm_separation} needs the rig's base-to-base calibration: "
                         "without it the arms' end effectors are each in its own base frame")
    boxes = [] if cfg.workspace_lower is None else [WorkspaceBox(np.asarray(cfg.workspace_lower),
                                                                 np.asarray(cfg.workspace_upper))]
    base_poses = None if rig is None else rig.base_poses(arms)
    return {"workspace": boxes * (len(arms) if rig is None else 1) or None, "fk": fk, "base_poses": base_poses,
            "min_separation": cfg.min_arm_separation}


def load_serving_policy(path: str, backend: str | None = None, embodiment: str | None = None,
                        language: str | None = None, object_state_dim: int = 0,
                        joint_names: Sequence[str] | None = None) -> tuple[Policy, RobotInterface]:
    """The policy a node serves, from a deploy bundle (``backend`` chooses how it runs) or a checkpoint
    directory (torch), and the wire layout of its embodiment."""
    from robot_policy.runtime.bundle import is_bundle, load_bundle
    from robot_policy.spaces.embodiment import load_embodiment

    if not Path(path).exists():
        raise FileNotFoundError(f"policy {path!r}: no such bundle or checkpoint directory")
    policy: Any
    if is_bundle(path):
        policy = load_bundle(path, backend=backend or "onnxruntime")
    else:
        if backend:
            raise ValueError(f"backend={backend}: only a deploy bundle chooses a backend; {path} is a checkpoint")
        from robot_policy.policies.diffusion import DiffusionPolicy

        kwargs: dict[str, Any] = {}
        if embodiment:
            kwargs["embodiment"] = embodiment
        if language:
            kwargs["language"] = language
        policy = DiffusionPolicy.from_checkpoint(path, **kwargs)
    spec = getattr(policy, "embodiment", None)
    if spec is None:
        if not embodiment:
            raise ValueError(f"policy {path!r} names no embodiment: pass embodiment=")
        spec = load_embodiment(embodiment)
    return policy, RobotInterface.from_embodiment(spec, object_state_dim, joint_names)
