"""The teleoperation session: poll the device at the control rate, step the sim, record through the store's
streaming writer.

The session ticks at the task's control rate from the moment it starts; tick k has session time
``t = k / control_hz``, which is what a device is polled with (and what a recorded stream is stamped with).
A live device is paced in real time (a tick that runs late is counted as an overrun and the clock catches
up); a recorded stream runs as fast as the simulation steps, tick for tick the same.

Per tick: the device's events are handled in order (start: reset the scene with the next seed and open an
episode; save: commit it with the sim's success; discard: drop it; quit: end), then, while an episode is
recording, the command is mapped to a unified action, the step is written (the observation the operator
acted on, the action, ``timestamp = step / control_hz``, and what :func:`~robot_policy.teleop.recorder.step_record`
adds) and the env steps. When the task succeeds or its time limit runs out, the episode stops stepping
and waits for the operator's save or discard (or is saved at once with ``auto_save``). Nothing of an
episode is visible in the store before its commit: a discarded one, or one in flight when the session ends
or crashes, leaves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from robot_policy.data.store import EpisodeStore
from robot_policy.data.streaming import StreamingEpisodeWriter
from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.keys import OBS_STATE
from robot_policy.teleop.device import Event, TeleopCommand, TeleopDevice
from robot_policy.teleop.mapping import ActionMapper
from robot_policy.teleop.recorder import step_record


@dataclass
class SessionConfig:
    """Options of a teleoperation session."""

    #: seed of the first episode; each started episode takes the next one
    seed: int = 0
    #: end the session after this many saved episodes; None = when the operator quits
    episodes: int | None = None
    #: save an episode as soon as the task succeeds, without waiting for the save key
    auto_save: bool = False
    #: record env.get_state() per step (for replay), as collect does
    record_sim_state: bool = True

    def __post_init__(self) -> None:
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1 (or null), got {self.episodes}")


@dataclass
class EpisodeOutcome:
    """One started episode."""

    seed: int
    steps: int
    success: bool
    #: store index when saved, None when discarded
    index: int | None


@dataclass
class SessionStatus:
    """What the status line shows, updated every tick."""

    t: float = 0.0
    state: str = "idle"  # idle | recording | done
    seed: int | None = None
    step: int = 0
    max_steps: int = 0
    success: bool = False
    saved: int = 0
    discarded: int = 0
    overruns: int = 0
    device: str = ""
    message: str = ""


@dataclass
class SessionSummary:
    episodes: list[EpisodeOutcome] = field(default_factory=list)
    ticks: int = 0
    overruns: int = 0
    elapsed_s: float = 0.0
    #: the session ended with an episode recording or waiting: it was discarded
    unsaved_at_end: bool = False

    @property
    def saved(self) -> list[EpisodeOutcome]:
        return [e for e in self.episodes if e.index is not None]


class _Episode:
    """The episode in flight: its writer, observation and progress."""

    def __init__(self, writer: StreamingEpisodeWriter, obs: Obs, seed: int) -> None:
        self.writer, self.obs, self.seed = writer, obs, seed
        self.steps, self.done, self.success = 0, False, False


def run_session(env: ManipulationEnv, device: TeleopDevice, mapper: ActionMapper, store: EpisodeStore,
                cfg: SessionConfig | None = None,
                on_tick: Callable[[SessionStatus, ManipulationEnv], None] | None = None) -> SessionSummary:
    """Teleoperate ``env`` with ``device`` into ``store`` until quit, the stream's end or ``cfg.episodes``
    saved (see the module docstring). ``device`` must be entered; ``on_tick`` (status line, viewer) gets
    the status and the env after every tick."""
    cfg = cfg or SessionConfig()
    hz = env.task.control_hz
    period = 1.0 / hz
    summary = SessionSummary()
    status = SessionStatus(max_steps=env.task.max_steps, device=device.name)
    next_seed = cfg.seed
    ep: _Episode | None = None
    start = time.perf_counter()

    def finish(save: bool) -> None:
        nonlocal ep
        if ep is None:
            return
        index = ep.writer.commit(success=ep.success) if save else None
        if not save:
            ep.writer.discard()
        summary.episodes.append(EpisodeOutcome(ep.seed, ep.steps, ep.success, index))
        status.saved, status.discarded = len(summary.saved), len(summary.episodes) - len(summary.saved)
        status.message = (f"saved episode {index} (seed {ep.seed}, {ep.steps} steps, "
                          f"{'success' if ep.success else 'no success'})" if save else f"discarded seed {ep.seed}")
        ep = None

    try:
        tick = 0
        while True:
            t = tick * period
            if device.live:
                lag = time.perf_counter() - start - t
                if lag < 0:
                    time.sleep(-lag)
                elif lag > period:  # a tick ran late: count it and let the clock catch up
                    summary.overruns += 1
                    tick = int((time.perf_counter() - start) / period)
                    t = tick * period
            cmd = device.poll(t)
            quit_now = False
            for event in cmd.events:
                if event is Event.START:
                    if ep is not None:
                        status.message = "an episode is recording: save (enter) or discard (backspace) it first"
                        continue
                    obs, _ = env.reset(seed=next_seed)
                    mapper.reset(obs[OBS_STATE])
                    device.reset()
                    writer = store.stream_episode(language=env.task.language, seed=next_seed,
                                                  state_mask=env.state_mask, action_mask=env.action_mask)
                    ep = _Episode(writer, obs, next_seed)
                    status.message = f"recording seed {next_seed}"
                    next_seed += 1
                elif event in (Event.SAVE, Event.DISCARD):
                    if ep is None:
                        status.message = "no episode to save or discard: start one (n)"
                    elif event is Event.SAVE and ep.steps == 0:
                        status.message = "nothing recorded yet: move, or discard"
                    else:
                        finish(save=event is Event.SAVE)
                elif event is Event.QUIT:
                    quit_now = True
                    break
            if quit_now:
                break
            if ep is not None and not ep.done:
                _step(env, mapper, ep, cmd, cfg.record_sim_state, hz)
                if ep.done:
                    status.message = (("task succeeded" if ep.success else "time limit reached")
                                      + ": save (enter) or discard (backspace)")
                    if cfg.auto_save and ep.success:
                        finish(save=True)
            tick += 1
            summary.ticks = tick
            _update(status, t, ep, summary, cmd)
            if on_tick is not None:
                on_tick(status, env)
            if cfg.episodes is not None and len(summary.saved) >= cfg.episodes:
                break
            if device.finished:
                break
    finally:
        if ep is not None:
            summary.unsaved_at_end = True
            ep.writer.discard()
        summary.elapsed_s = time.perf_counter() - start
    return summary


def _step(env: ManipulationEnv, mapper: ActionMapper, ep: _Episode, cmd: TeleopCommand, record_sim_state: bool,
          hz: float) -> None:
    """One recorded control step of the episode in flight."""
    action = mapper(cmd)
    images, extras = step_record(env, ep.obs, record_sim_state)
    ep.writer.add_step(state=ep.obs[OBS_STATE], action=action, timestamp=ep.steps / hz, images=images, **extras)
    ep.obs, _, terminated, truncated, info = env.step(action)
    ep.steps += 1
    ep.success = bool(info["success"])
    ep.done = bool(terminated or truncated)


def _update(status: SessionStatus, t: float, ep: _Episode | None, summary: SessionSummary,
            cmd: TeleopCommand) -> None:
    status.t = t
    status.overruns = summary.overruns
    status.state = "idle" if ep is None else "done" if ep.done else "recording"
    status.seed = None if ep is None else ep.seed
    status.step = 0 if ep is None else ep.steps
    status.success = bool(ep is not None and ep.success)
    if cmd.status:
        status.device = cmd.status
