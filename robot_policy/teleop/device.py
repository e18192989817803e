"""What every teleoperation device hands the session: one :class:`TeleopCommand` per control tick.

A device is polled once per tick with the session clock ``t`` (seconds since the session started) and
answers with what the operator asked for since the last poll:

* per arm, an end-effector **delta** (``twist``: translation in m and a rotation vector in rad, both in the
  arm's own base frame, the frame of the embodiment's ``<arm>_eef_pos`` fields; the rotation is about the
  end-effector point), and/or absolute **joint targets** (rad, the arm's native joint order; leader arms),
  and/or a **gripper** target opening in [0, 1] (1 open, 0 closed: the unified gripper slot's meaning);
* episode **events**: start, save, discard, quit, in the order the operator gave them.

Devices never see the embodiment's action layout; :mod:`robot_policy.teleop.mapping` turns commands into
unified actions through the embodiment spec. Devices are context managers (hardware is opened in
``__enter__`` and released in ``__exit__``); a *live* device is paced by the session in real time, a
recorded stream is replayed as fast as the simulation runs and says when it is ``finished``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import numpy as np


class Event(enum.StrEnum):
    """Episode control from the operator."""

    #: reset the scene and start recording an episode
    START = "start"
    #: commit the episode in flight to the store
    SAVE = "save"
    #: drop the episode in flight: nothing of it reaches the store
    DISCARD = "discard"
    #: end the session (an episode in flight is discarded)
    QUIT = "quit"


@dataclass
class ArmCommand:
    """What one arm is asked to do this tick; None = unchanged (hold the current target)."""

    #: (6,) end-effector delta this tick: translation (m) then rotation vector (rad), arm base frame
    twist: np.ndarray | None = None
    #: (dof,) absolute joint-position targets (rad), native joint order
    joints: np.ndarray | None = None
    #: target opening in [0, 1] (1 open, 0 closed)
    gripper: float | None = None

    def __post_init__(self) -> None:
        if self.twist is not None:
            self.twist = np.asarray(self.twist, dtype=np.float64)
            if self.twist.shape != (6,) or not np.all(np.isfinite(self.twist)):
                raise ValueError(f"ArmCommand.twist: expected 6 finite numbers (m, rad), got {self.twist!r}")
        if self.joints is not None:
            self.joints = np.asarray(self.joints, dtype=np.float64)
            if self.joints.ndim != 1 or not np.all(np.isfinite(self.joints)):
                raise ValueError(f"ArmCommand.joints: expected a finite 1-d vector (rad), got {self.joints!r}")
        if self.gripper is not None and not 0.0 <= self.gripper <= 1.0:
            raise ValueError(f"ArmCommand.gripper: opening must be in [0, 1], got {self.gripper}")


@dataclass
class TeleopCommand:
    """A device's answer to one poll (see the module docstring)."""

    arms: dict[str, ArmCommand] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    #: short device state for the status line (active arm, speed scale, ...)
    status: str = ""


def merge_commands(commands: Sequence[TeleopCommand]) -> TeleopCommand:
    """One command from several devices' answers: twists add, the later device's joints and gripper win,
    events keep device order."""
    arms: dict[str, ArmCommand] = {}
    events: list[Event] = []
    for cmd in commands:
        events.extend(cmd.events)
        for arm, part in cmd.arms.items():
            into = arms.setdefault(arm, ArmCommand())
            if part.twist is not None:
                into.twist = part.twist.copy() if into.twist is None else into.twist + part.twist
            if part.joints is not None:
                into.joints = part.joints
            if part.gripper is not None:
                into.gripper = part.gripper
    return TeleopCommand(arms=arms, events=tuple(events),
                         status=" | ".join(c.status for c in commands if c.status))


@runtime_checkable
class TeleopDevice(Protocol):
    """A teleoperation input (see the module docstring)."""

    #: short name for the status line and the store's provenance
    name: str

    @property
    def live(self) -> bool:
        """True for hardware and terminals (the session paces ticks in real time), False for a recorded
        stream (replayed as fast as the simulation steps)."""
        ...

    @property
    def finished(self) -> bool:
        """A recorded stream that has delivered its last event; always False for a live device."""
        ...

    def poll(self, t: float) -> TeleopCommand:
        """What the operator asked for since the last poll; ``t``: session clock (s), non-decreasing."""
        ...

    def reset(self) -> None:
        """A new episode starts (the scene was reset: grippers open): forget per-episode state."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class CompositeDevice:
    """Several devices driven as one: e.g. a SpaceMouse for motion and the terminal keyboard for episode
    control. Live if any part is; finished when every part is finished."""

    def __init__(self, parts: Sequence[TeleopDevice]) -> None:
        if not parts:
            raise ValueError("CompositeDevice: give at least one device")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        self._entered: list[TeleopDevice] = []

    @property
    def live(self) -> bool:
        return any(p.live for p in self.parts)

    @property
    def finished(self) -> bool:
        return all(p.finished for p in self.parts)

    def poll(self, t: float) -> TeleopCommand:
        return merge_commands([p.poll(t) for p in self.parts])

    def reset(self) -> None:
        for p in self.parts:
            p.reset()

    def __enter__(self) -> Self:
        try:
            for p in self.parts:
                p.__enter__()
                self._entered.append(p)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        while self._entered:
            self._entered.pop().__exit__(kind, exc, tb)
