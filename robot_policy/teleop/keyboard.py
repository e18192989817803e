"""Keyboard teleoperation: key presses -> end-effector steps per arm, arm switch, gripper toggle, episodes.

Default bindings (:data:`DEFAULT_BINDINGS`), motion in the active arm's base frame (x forward, away from
its base; y to its left; z up):

========================  =============================================================================
w / s, a / d, r / f       translate +x / -x, +y / -y, +z / -z by ``translation_step`` per press
up / down                 translate +z / -z (same as r / f)
u / o, i / k, j / l       rotate about x / y / z (roll, pitch, yaw), + / -, by ``rotation_step`` per press
space                     toggle the active arm's gripper (open <-> closed); with both arms: close both
                          if either is open, else open both
tab, 1, 2, 3              next arm; right; left; both (each arm moves by the same step in its own frame)
+ (or =), -               double / halve the step sizes (x1/4 .. x4)
n                         start an episode; enter: save it; backspace or delete: discard it
q, esc                    quit (an unsaved episode is discarded)
========================  =============================================================================

A press asks for a displacement; the arm gets it at most ``max_speed`` (m/s, rad/s) fast: what exceeds a
tick's share carries over to the next ticks, so N presses always move the target N steps, whether they
come from auto-repeat or from a recorded stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import numpy as np

from robot_policy.teleop.device import ArmCommand, Event, TeleopCommand
from robot_policy.teleop.event_log import StreamReplay, StreamWriter, read_stream

STREAM_KIND = "keyboard"
BOTH = "both"


@dataclass(frozen=True)
class Binding:
    """What a key does. ``kind``: move (``axis`` 0-5 of the twist, ``sign`` +-1), gripper, next_arm,
    select (``target``: an arm or "both"), speed (``factor``), event (``event``)."""

    kind: str
    axis: int = 0
    sign: float = 0.0
    target: str = ""
    factor: float = 1.0
    event: Event | None = None


def _move(axis: int, sign: float) -> Binding:
    return Binding("move", axis=axis, sign=sign)


DEFAULT_BINDINGS: dict[str, Binding] = {
    "w": _move(0, 1), "s": _move(0, -1), "a": _move(1, 1), "d": _move(1, -1), "r": _move(2, 1), "f": _move(2, -1),
    "up": _move(2, 1), "down": _move(2, -1),
    "u": _move(3, 1), "o": _move(3, -1), "i": _move(4, 1), "k": _move(4, -1), "j": _move(5, 1), "l": _move(5, -1),
    "space": Binding("gripper"), "tab": Binding("next_arm"),
    "1": Binding("select", target="right"), "2": Binding("select", target="left"), "3": Binding("select", target=BOTH),
    "+": Binding("speed", factor=2.0), "=": Binding("speed", factor=2.0), "-": Binding("speed", factor=0.5),
    "n": Binding("event", event=Event.START), "enter": Binding("event", event=Event.SAVE),
    "backspace": Binding("event", event=Event.DISCARD), "delete": Binding("event", event=Event.DISCARD),
    "q": Binding("event", event=Event.QUIT), "esc": Binding("event", event=Event.QUIT),
}


@dataclass
class KeyboardConfig:
    """Step sizes and speed limits of keyboard teleoperation."""

    #: m the end-effector target moves per motion-key press (at speed x1)
    translation_step: float = 0.005
    #: rad the end-effector target turns per rotation-key press (at speed x1)
    rotation_step: float = 0.05
    #: m/s the target moves at most (presses beyond a tick's share carry over)
    max_speed: float = 0.3
    #: rad/s the target turns at most
    max_angular_speed: float = 1.5

    def __post_init__(self) -> None:
        for name in ("translation_step", "rotation_step", "max_speed", "max_angular_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"keyboard.{name}: must be > 0, got {getattr(self, name)}")


class KeyboardTeleop:
    """The key map's state machine: key names in, one :class:`TeleopCommand` per tick out.

    Args:
        arms: the embodiment's arms, e.g. ("right", "left"); the first is active at the start.
        control_hz: the session's tick rate (Hz), for the per-tick speed limit.
        config: step sizes and speed limits.
        bindings: key name -> :class:`Binding` (default :data:`DEFAULT_BINDINGS`).
    """

    def __init__(self, arms: Sequence[str], control_hz: float, config: KeyboardConfig | None = None,
                 bindings: Mapping[str, Binding] | None = None) -> None:
        if not arms:
            raise ValueError("KeyboardTeleop: the embodiment has no arms to drive")
        if not control_hz > 0:
            raise ValueError(f"KeyboardTeleop: control_hz must be > 0, got {control_hz}")
        self.arms = tuple(arms)
        self.cfg = config or KeyboardConfig()
        self.bindings = dict(DEFAULT_BINDINGS if bindings is None else bindings)
        self._choices = (*self.arms, BOTH) if len(self.arms) > 1 else self.arms
        dt = 1.0 / control_hz
        # per-tick limit of each twist component (m, rad)
        self._tick_limit = np.array([self.cfg.max_speed * dt] * 3 + [self.cfg.max_angular_speed * dt] * 3)
        self.active = self.arms[0]
        self.speed = 1.0
        self.reset()

    def reset(self) -> None:
        """A new episode: grippers open (as the scene resets them), no motion pending."""
        self.gripper_open = {a: True for a in self.arms}
        self._pending = {a: np.zeros(6) for a in self.arms}

    def _active_arms(self) -> tuple[str, ...]:
        return self.arms if self.active == BOTH else (self.active,)

    def feed(self, keys: Sequence[str]) -> TeleopCommand:
        """Apply ``keys`` (pressed since the last tick, in order) and return this tick's command."""
        events: list[Event] = []
        grippers: dict[str, float] = {}
        step = np.array([self.cfg.translation_step] * 3 + [self.cfg.rotation_step] * 3) * self.speed
        for key in keys:
            b = self.bindings.get(key)
            if b is None:
                continue  # unbound keys do nothing, as in any terminal program
            if b.kind == "move":
                for arm in self._active_arms():
                    self._pending[arm][b.axis] += b.sign * step[b.axis]
            elif b.kind == "gripper":
                targets = self._active_arms()
                close = any(self.gripper_open[a] for a in targets)
                for arm in targets:
                    self.gripper_open[arm] = not close
                    grippers[arm] = 0.0 if close else 1.0
            elif b.kind == "next_arm":
                self.active = self._choices[(self._choices.index(self.active) + 1) % len(self._choices)]
            elif b.kind == "select":
                if b.target in self._choices:
                    self.active = b.target
            elif b.kind == "speed":
                self.speed = float(np.clip(self.speed * b.factor, 0.25, 4.0))
                step = np.array([self.cfg.translation_step] * 3 + [self.cfg.rotation_step] * 3) * self.speed
            elif b.kind == "event" and b.event is not None:
                events.append(b.event)
        arms: dict[str, ArmCommand] = {}
        for arm in self.arms:
            twist = np.clip(self._pending[arm], -self._tick_limit, self._tick_limit)
            self._pending[arm] = self._pending[arm] - twist
            moved = bool(np.any(twist != 0))
            if moved or arm in grippers:
                arms[arm] = ArmCommand(twist=twist if moved else None, gripper=grippers.get(arm))
        return TeleopCommand(arms=arms, events=tuple(events), status=self.status())

    def status(self) -> str:
        grip = " ".join(f"{a[0].upper()}:{'open' if self.gripper_open[a] else 'closed'}" for a in self.arms)
        return (f"arm {self.active} | step {self.cfg.translation_step * self.speed * 1000:.1f} mm "
                f"{np.degrees(self.cfg.rotation_step * self.speed):.1f} deg | grip {grip}")


class KeySource(Protocol):
    """Where key names come from: a terminal, or a recorded stream."""

    @property
    def live(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    def read(self, t: float) -> list[str]: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class RecordedKeys:
    """Key names from a recorded keyboard stream (``{"t": s, "key": name}`` lines; see event_log)."""

    live = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._replay = StreamReplay(read_stream(self.path, STREAM_KIND, {"key": str}))

    @property
    def finished(self) -> bool:
        return self._replay.finished

    def read(self, t: float) -> list[str]:
        return [e["key"] for e in self._replay.due(t)]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class KeyboardDevice:
    """The keyboard as a :class:`~robot_policy.teleop.device.TeleopDevice`: keys from ``source`` through
    ``teleop``; with ``record_to``, every key read is also written to a stream file that replays the session."""

    name = "keyboard"

    def __init__(self, source: KeySource, teleop: KeyboardTeleop, record_to: str | Path | None = None) -> None:
        self.source = source
        self.teleop = teleop
        self._record_to = record_to
        self._writer: StreamWriter | None = None

    @property
    def live(self) -> bool:
        return self.source.live

    @property
    def finished(self) -> bool:
        return self.source.finished

    def poll(self, t: float) -> TeleopCommand:
        keys = self.source.read(t)
        if self._writer is not None:
            for key in keys:
                self._writer.write(t, key=key)
        return self.teleop.feed(keys)

    def reset(self) -> None:
        self.teleop.reset()

    def __enter__(self) -> Self:
        self.source.__enter__()
        if self._record_to is not None:
            self._writer = StreamWriter(self._record_to, STREAM_KIND, note="robot-policy teleop device=keyboard")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.source.__exit__(kind, exc, tb)
