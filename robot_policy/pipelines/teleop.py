"""Teleoperate a simulated task into an episode store (``robot-policy teleop``).

Builds the device (keyboard, SpaceMouse or leader arms; live, or a recorded stream), the action mapper for
the task's embodiment, the status line and, where a display exists, the viewer; opens the store (created,
or appended to) and runs :func:`robot_policy.teleop.session.run_session`. Leader arms speak ROS 2: unless
``ROBOT_POLICY_DDS=external`` says the DDS configuration is the user's, the session runs on the loopback-only
Fast DDS profile (``robot_policy.runtime.dds``), and the process environment is restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.registry import make_env
from robot_policy.pipelines.collect import open_task_store
from robot_policy.runtime.dds import loopback_env, require_loopback
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.teleop.device import CompositeDevice, TeleopDevice
from robot_policy.teleop.keyboard import (
    KeyboardConfig,
    KeyboardDevice,
    KeyboardTeleop,
    KeySource,
    RecordedKeys,
)
from robot_policy.teleop.kinematics import make_kinematics
from robot_policy.teleop.leader import LeaderConfig, LeaderDevice, LeaderMapping
from robot_policy.teleop.mapping import ActionMapper, MappingConfig, arm_layouts
from robot_policy.teleop.session import SessionConfig, SessionStatus, run_session
from robot_policy.teleop.spacemouse import (
    HidReports,
    RecordedReports,
    ReportSource,
    SpaceMouseConfig,
    SpaceMouseDevice,
)
from robot_policy.teleop.status import StatusLine
from robot_policy.teleop.terminal import TerminalKeys
from robot_policy.teleop.viewer import VIEWER_MODES, SceneViewer, wants_viewer


@dataclass
class TeleopConfig:
    """Options of ``robot-policy teleop`` (the task comes from the ``task=`` config group)."""

    #: the input device: keyboard, spacemouse or leader
    device: str = "keyboard"
    #: store path (required), e.g. datasets/teleop_lift.zarr
    out: str = ""
    #: replay this recorded stream of the device's raw input instead of reading the device (keyboard: keys,
    #: spacemouse: HID reports); None = the live device
    events: str | None = None
    #: spacemouse / leader: a recorded key stream for the episode keys; None = the terminal
    keys: str | None = None
    #: also write the raw input read live to this stream file (replay it with events=FILE); with a SpaceMouse
    #: the episode keys typed at the terminal go beside it, to <name>.keys.jsonl (replay with keys=)
    record_events: str | None = None
    #: seed of the first episode; each started episode takes the next
    seed: int = 0
    #: end after this many saved episodes; None = when the operator quits (or the recorded stream ends)
    episodes: int | None = None
    #: save an episode as soon as the task succeeds
    auto_save: bool = False
    #: append to an existing store (same embodiment and task) instead of failing
    append: bool = False
    #: delete an existing store at out and start a new one
    overwrite: bool = False
    #: record env.get_state() per step (for replay)
    record_sim_state: bool = True
    #: scene viewer window: auto (where a display exists), on, off
    viewer: str = "auto"
    #: the viewer's camera; None = the task's first camera (or the env's first)
    viewer_camera: str | None = None
    #: spacemouse: hidapi device paths, one per arm in arm order; [] = every SpaceMouse found
    spacemouse_paths: list[str] = field(default_factory=list)
    #: leader: ROS domain id on the loopback DDS profile; -1 = ROS_DOMAIN_ID from the environment, else 0
    domain_id: int = -1
    keyboard: KeyboardConfig = field(default_factory=KeyboardConfig)
    spacemouse: SpaceMouseConfig = field(default_factory=SpaceMouseConfig)
    leader: LeaderConfig = field(default_factory=LeaderConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device: unknown {self.device!r}; devices: {', '.join(DEVICES)}")
        if not self.out:
            raise ValueError("out: give the store path, e.g. out=datasets/teleop_lift.zarr")
        if self.overwrite and self.append:
            raise ValueError("overwrite=true and append=true contradict each other; pass one of them")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1 (or null), got {self.episodes}")
        if self.viewer not in VIEWER_MODES:
            raise ValueError(f"viewer: unknown mode {self.viewer!r}; modes: {', '.join(VIEWER_MODES)}")
        if self.device == "leader" and self.events is not None:
            raise ValueError("events: leader arms are read live over ROS 2 (record a bag to replay them); give "
                             "keys=FILE for recorded episode keys")
        if self.device == "keyboard" and self.keys is not None:
            raise ValueError("keys: with device=keyboard the keys are the device; give the recorded stream as "
                             "events=FILE")
        if self.device == "leader" and self.record_events is not None:
            raise ValueError("record_events: leader arms are ROS 2 topics; record them as a bag (the episode "
                             "keys alone would not replay the session)")
        if self.events is not None and self.record_events is not None:
            raise ValueError("record_events: a replayed stream (events=) is already recorded")
        if not -1 <= self.domain_id <= 101:
            raise ValueError(f"domain_id must be in 0..101 (or -1), got {self.domain_id}")


def _key_source(path: str | None) -> KeySource:
    return RecordedKeys(path) if path is not None else TerminalKeys()


def _keyboard(cfg: TeleopConfig, spec: EmbodimentSpec, hz: float) -> TeleopDevice:
    teleop = KeyboardTeleop(tuple(arm_layouts(spec)), hz, cfg.keyboard)
    return KeyboardDevice(_key_source(cfg.events), teleop, record_to=cfg.record_events)


def keys_record_path(record_events: str) -> Path:
    """Where a SpaceMouse session recording ``record_events`` writes the episode keys typed beside it."""
    path = Path(record_events)
    return path.with_name(path.stem + ".keys.jsonl")


def _episode_keys(cfg: TeleopConfig, spec: EmbodimentSpec, hz: float) -> TeleopDevice:
    """The keyboard next to a SpaceMouse or leader arms, for the episode keys (its motion keys work too)."""
    record = keys_record_path(cfg.record_events) if cfg.record_events is not None else None
    return KeyboardDevice(_key_source(cfg.keys), KeyboardTeleop(tuple(arm_layouts(spec)), hz, cfg.keyboard),
                          record_to=record)


def _spacemouse(cfg: TeleopConfig, spec: EmbodimentSpec, hz: float) -> TeleopDevice:
    source: ReportSource = (RecordedReports(cfg.events) if cfg.events is not None
                            else HidReports(cfg.spacemouse_paths or None))
    mouse = SpaceMouseDevice(source, tuple(arm_layouts(spec)), hz, cfg.spacemouse, record_to=cfg.record_events)
    return CompositeDevice([mouse, _episode_keys(cfg, spec, hz)])


def _leader(cfg: TeleopConfig, spec: EmbodimentSpec, hz: float) -> TeleopDevice:
    return CompositeDevice([LeaderDevice(LeaderMapping(spec, cfg.leader)), _episode_keys(cfg, spec, hz)])


#: device name -> builder (config, embodiment, control rate) -> device, not yet entered
DEVICES: dict[str, Callable[[TeleopConfig, EmbodimentSpec, float], TeleopDevice]] = {
    "keyboard": _keyboard, "spacemouse": _spacemouse, "leader": _leader,
}


@contextlib.contextmanager
def ros_environment(cfg: TeleopConfig, log_dir: Path) -> Iterator[None]:
    """For leader arms: the loopback DDS variables in this process for the session, restored after."""
    if cfg.device != "leader":
        yield
        return
    if os.environ.get("ROBOT_POLICY_DDS") == "external":
        require_loopback()  # stands aside for a user's own DDS configuration
        yield
        return
    domain = cfg.domain_id if cfg.domain_id >= 0 else int(os.environ.get("ROS_DOMAIN_ID", "0"))
    env = loopback_env(domain, log_dir=log_dir)
    keys = ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
            "RMW_IMPLEMENTATION", "ROS_LOG_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def teleop(task: TaskConfig, cfg: TeleopConfig, status: bool = True) -> dict[str, Any]:
    """Run a teleoperation session of ``task`` into ``cfg.out``; returns a summary (episodes saved and
    discarded, their seeds, steps and success, ticks, overruns). ``status``: draw the status line."""
    env = make_env(task)
    hz = env.task.control_hz
    try:
        mapper = ActionMapper(env.embodiment, hz, None if cfg.device == "leader" else make_kinematics, cfg.mapping)
        device = DEVICES[cfg.device](cfg, env.embodiment, hz)
        hooks: list[Callable[[SessionStatus, ManipulationEnv], None]] = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(ros_environment(cfg, Path(cfg.out).parent / "ros_logs"))
            provenance = {"source": "teleop", "device": device.name, **({"events": cfg.events} if cfg.events else {})}
            store = stack.enter_context(open_task_store(task, env, cfg.out, append=cfg.append,
                                                        overwrite=cfg.overwrite, provenance=provenance))
            stack.enter_context(device)
            if status:
                hooks.append(stack.enter_context(StatusLine()))
            if wants_viewer(cfg.viewer):
                hooks.append(stack.enter_context(SceneViewer(cfg.viewer_camera)))
            stack.callback(mapper.close)
            session = SessionConfig(seed=cfg.seed, episodes=cfg.episodes, auto_save=cfg.auto_save,
                                    record_sim_state=cfg.record_sim_state)

            def on_tick(state: SessionStatus, sim: ManipulationEnv) -> None:
                for hook in hooks:
                    hook(state, sim)

            summary = run_session(env, device, mapper, store, session, on_tick=on_tick)
            n_episodes = store.n_episodes
    finally:
        env.close()
    saved = summary.saved
    return {"task": task.name, "out": cfg.out, "device": device.name, "store_episodes": n_episodes,
            "saved": len(saved), "saved_successes": sum(e.success for e in saved),
            "discarded": len(summary.episodes) - len(saved), "unsaved_at_end": summary.unsaved_at_end,
            "episodes": [dataclasses.asdict(e) for e in summary.episodes], "ticks": summary.ticks,
            "overruns": summary.overruns, "elapsed_s": summary.elapsed_s}
