"""3Dconnexion SpaceMouse teleoperation from raw HID reports (``hidapi``): a 6-DoF end-effector velocity.

HID reports (the device's input reports, first byte the report id; axes are signed 16-bit little endian,
about +-350 at full deflection):

* id 1: translation x, y, z (6 bytes); on newer devices (SpaceMouse Wireless / Compact / Pro) all six axes,
  translation then rotation (12 bytes);
* id 2: rotation about x, y, z (6 bytes);
* id 3: buttons, one bit per button (bit 0 = left button);
* other ids (battery, LEDs) carry no motion and are skipped.

The device's axes: x to the right, y toward the operator, z down (rotations about those). The default
``axes = ("-y", "-x", "-z")`` maps them to the arm's base frame as the keyboard moves it: pushing the cap away
is +x (forward), to the left +y, lifting it +z; rotations go through the same map. A deflection ``v`` (in
[-1, 1] after the dead zone) moves the end effector at ``v * max_speed`` (m/s) and turns it at
``v * max_angular_speed`` (rad/s). The device repeats reports while deflected; when none arrived for
``stale_s`` the motion stops, so a device that is unplugged or stalls never keeps the arm moving.

One device per arm (device i drives arm i), or one device for all: its right button (bit 1) then switches
the arm it drives. The left button (bit 0) toggles that arm's gripper. Episode control comes from the
keyboard (see ``robot-policy teleop device=spacemouse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from robot_policy.teleop.device import ArmCommand, TeleopCommand
from robot_policy.teleop.event_log import StreamReplay, StreamWriter, read_stream

STREAM_KIND = "spacemouse"
#: USB vendor ids of 3Dconnexion devices: Logitech-era (SpaceNavigator, SpaceMouse Pro) and 3Dconnexion's own
VENDOR_IDS = (0x046D, 0x256F)
#: HID usage page / usage of a multi-axis controller (Generic Desktop, Multi-axis Controller)
_USAGE_PAGE, _USAGE = 0x01, 0x08


class ReportError(ValueError):
    """A HID report that is too short for its id."""


@dataclass
class MouseState:
    """The latest values one device reported: (6,) raw axes (tx, ty, tz, rx, ry, rz) and the button bits."""

    axes: np.ndarray
    buttons: int = 0


def parse_report(report: bytes, state: MouseState) -> bool:
    """Update ``state`` from one HID report (see the module docstring); True when it carried motion."""
    if not report:
        raise ReportError("empty HID report")
    rid, body = report[0], report[1:]
    if rid in (1, 2):
        n = 6 if rid == 1 and len(body) >= 12 else 3
        if len(body) < 2 * n:
            raise ReportError(f"HID report id {rid}: {len(body)} data bytes, expected at least {2 * n} "
                              "(3 signed 16-bit little-endian axes)")
        values = np.frombuffer(bytes(body[:2 * n]), dtype="<i2").astype(np.float64)
        start = 0 if rid == 1 else 3
        state.axes[start:start + n] = values
        return True
    if rid == 3:
        if not body:
            raise ReportError("HID report id 3 (buttons) has no data bytes")
        state.buttons = int.from_bytes(bytes(body), "little")
    return False


def axis_matrix(axes: Sequence[str]) -> np.ndarray:
    """(3, 3) signed permutation taking device axes to the arm frame, from names such as ("-y", "-x", "-z");
    it must be a rotation (determinant +1), or rotations would turn the wrong way."""
    if len(axes) != 3:
        raise ValueError(f"spacemouse.axes: expected three signed axis names, got {list(axes)}")
    m = np.zeros((3, 3))
    for row, name in enumerate(axes):
        sign, letter = (-1.0, name[1:]) if name.startswith("-") else (1.0, name.lstrip("+"))
        if letter not in ("x", "y", "z"):
            raise ValueError(f"spacemouse.axes[{row}]: {name!r} is not one of x, y, z, -x, -y, -z")
        m[row, "xyz".index(letter)] = sign
    if abs(np.linalg.det(m) - 1.0) > 1e-9:
        raise ValueError(f"spacemouse.axes: {list(axes)} is not a rotation (each device axis once, determinant "
                         "+1); flip the sign of one axis")
    return m


@dataclass
class SpaceMouseConfig:
    """Scaling of SpaceMouse input."""

    #: m/s at full deflection
    max_speed: float = 0.15
    #: rad/s at full deflection
    max_angular_speed: float = 0.8
    #: fraction of full scale ignored around rest (the cap never rests exactly at 0)
    deadzone: float = 0.1
    #: raw axis value of full deflection
    full_scale: float = 350.0
    #: the arm frame's x, y, z as signed device axes (see the module docstring)
    axes: tuple[str, str, str] = ("-y", "-x", "-z")
    #: s without a motion report after which the motion stops
    stale_s: float = 0.5

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)  # type: ignore[assignment]  # lists from YAML
        axis_matrix(self.axes)
        for name in ("max_speed", "max_angular_speed", "full_scale", "stale_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"spacemouse.{name}: must be > 0, got {getattr(self, name)}")
        if not 0 <= self.deadzone < 1:
            raise ValueError(f"spacemouse.deadzone: must be in [0, 1), got {self.deadzone}")


class SpaceMouseTeleop:
    """Reports of ``n_devices`` SpaceMice in, one :class:`TeleopCommand` per tick out (module docstring).

    Args:
        arms: the embodiment's arms; with one device, the first is driven at the start.
        control_hz: the tick rate (Hz).
        n_devices: 1 (switched between arms) or one per arm.
    """

    def __init__(self, arms: Sequence[str], control_hz: float, n_devices: int = 1,
                 config: SpaceMouseConfig | None = None) -> None:
        self.arms = tuple(arms)
        if n_devices != 1 and n_devices != len(self.arms):
            raise ValueError(f"spacemouse: {n_devices} devices for {len(self.arms)} arms; use one device (its "
                             "right button switches arms) or one per arm")
        self.cfg = config or SpaceMouseConfig()
        self.dt = 1.0 / control_hz
        self._m = axis_matrix(self.cfg.axes)
        self._states = [MouseState(np.zeros(6)) for _ in range(n_devices)]
        self._last_motion = [-np.inf] * n_devices
        self._driven = list(self.arms[:n_devices]) if n_devices > 1 else [self.arms[0]]
        self.reset()

    def reset(self) -> None:
        """A new episode: grippers open, as the scene resets them."""
        self.gripper_open = {a: True for a in self.arms}

    def scaled(self, raw: np.ndarray) -> np.ndarray:
        """(6,) raw axes -> deflections in [-1, 1] with the dead zone removed."""
        v = np.clip(raw / self.cfg.full_scale, -1.0, 1.0)
        dz = self.cfg.deadzone
        return np.sign(v) * np.maximum(np.abs(v) - dz, 0.0) / (1.0 - dz)

    def feed(self, reports: Sequence[tuple[int, bytes]], t: float) -> TeleopCommand:
        """Apply ``reports`` ((device index, report bytes) since the last tick, in order) at session time t."""
        arms: dict[str, ArmCommand] = {}
        for device, report in reports:
            if not 0 <= device < len(self._states):
                raise ValueError(f"spacemouse report from device {device}; {len(self._states)} device(s) are open")
            state = self._states[device]
            before = state.buttons
            if parse_report(report, state):
                self._last_motion[device] = t
            pressed = state.buttons & ~before
            arm = self._driven[device]
            if pressed & 1:
                self.gripper_open[arm] = not self.gripper_open[arm]
                arms.setdefault(arm, ArmCommand()).gripper = 1.0 if self.gripper_open[arm] else 0.0
            if pressed & 2 and len(self._states) == 1:
                self._driven[0] = self.arms[(self.arms.index(arm) + 1) % len(self.arms)]
        for device, state in enumerate(self._states):
            if t - self._last_motion[device] > self.cfg.stale_s:
                continue
            v = self.scaled(state.axes)
            if not v.any():
                continue
            twist = np.concatenate([self._m @ v[:3] * self.cfg.max_speed,
                                    self._m @ v[3:] * self.cfg.max_angular_speed]) * self.dt
            arms.setdefault(self._driven[device], ArmCommand()).twist = twist
        return TeleopCommand(arms=arms, status=self.status())

    def status(self) -> str:
        grip = " ".join(f"{a[0].upper()}:{'open' if self.gripper_open[a] else 'closed'}" for a in self.arms)
        return f"spacemouse -> {', '.join(self._driven)} | grip {grip}"


# ---- report sources --------------------------------------------------------------------------------
class ReportSource(Protocol):
    """Where HID reports come from: devices through hidapi, or a recorded stream."""

    @property
    def live(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    @property
    def n_devices(self) -> int: ...

    def read(self, t: float) -> list[tuple[int, bytes]]: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


def find_spacemice() -> list[dict[str, Any]]:
    """hidapi's descriptions of the 3Dconnexion multi-axis devices plugged in (``path``, ``product_string``...)."""
    import hid  # lazily: the stack runs without hidapi until a SpaceMouse is used

    found = [d for d in hid.enumerate() if d.get("vendor_id") in VENDOR_IDS]
    # a device exposes several HID interfaces; the motion reports come from the multi-axis one (usage page
    # and usage are 0 where the platform's hidapi backend does not report them)
    axis = [d for d in found if (d.get("usage_page"), d.get("usage")) in ((_USAGE_PAGE, _USAGE), (0, 0))]
    return sorted(axis, key=lambda d: d["path"])


class HidReports:
    """Reports read without blocking from SpaceMice through hidapi.

    Args:
        paths: hidapi device paths, one per device in arm order; None = every SpaceMouse found.
    """

    live = True
    finished = False

    def __init__(self, paths: Sequence[str] | None = None) -> None:
        self._paths = list(paths) if paths else None
        self._devices: list[Any] = []

    @property
    def n_devices(self) -> int:
        return len(self._devices)

    def __enter__(self) -> Self:
        import hid

        paths = self._paths
        if paths is None:
            paths = [d["path"].decode() if isinstance(d["path"], bytes) else d["path"] for d in find_spacemice()]
            if not paths:
                raise RuntimeError("device=spacemouse: no 3Dconnexion device found through hidapi (vendor ids "
                                   f"{', '.join(hex(v) for v in VENDOR_IDS)}); plug one in, check the udev rule "
                                   "that gives your user access to /dev/hidraw*, or replay a recorded stream "
                                   "with events=FILE")
        try:
            for path in paths:
                dev = hid.device()
                try:
                    dev.open_path(path.encode())
                except OSError as e:
                    raise RuntimeError(f"device=spacemouse: cannot open HID device {path!r} ({e}); check its "
                                       "permissions (a udev rule for /dev/hidraw*)") from None
                dev.set_nonblocking(1)
                self._devices.append(dev)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def read(self, t: float) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for i, dev in enumerate(self._devices):
            while report := dev.read(64):
                out.append((i, bytes(report)))
        return out

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        while self._devices:
            self._devices.pop().close()


class RecordedReports:
    """Reports from a recorded SpaceMouse stream (``{"t": s, "device": i, "report": "<hex>"}`` lines)."""

    live = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        events = read_stream(self.path, STREAM_KIND, {"device": int, "report": str})
        for n, e in enumerate(events):
            try:
                e["bytes"] = bytes.fromhex(e["report"])
            except ValueError:
                raise ValueError(f"{self.path}: event {n + 1}: report {e['report']!r} is not hex") from None
        self._n = 1 + max((e["device"] for e in events), default=0)
        self._replay = StreamReplay(events)

    @property
    def n_devices(self) -> int:
        return self._n

    @property
    def finished(self) -> bool:
        return self._replay.finished

    def read(self, t: float) -> list[tuple[int, bytes]]:
        return [(e["device"], e["bytes"]) for e in self._replay.due(t)]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class SpaceMouseDevice:
    """SpaceMice as a :class:`~robot_policy.teleop.device.TeleopDevice`: reports from ``source`` through a
    :class:`SpaceMouseTeleop` built once the devices are open; ``record_to`` also writes every report read."""

    name = "spacemouse"

    def __init__(self, source: ReportSource, arms: Sequence[str], control_hz: float,
                 config: SpaceMouseConfig | None = None, record_to: str | Path | None = None) -> None:
        self.source = source
        self._arms, self._hz, self._cfg = tuple(arms), control_hz, config
        self._record_to = record_to
        self._writer: StreamWriter | None = None
        self.teleop: SpaceMouseTeleop | None = None

    @property
    def live(self) -> bool:
        return self.source.live

    @property
    def finished(self) -> bool:
        return self.source.finished

    def poll(self, t: float) -> TeleopCommand:
        if self.teleop is None:
            raise RuntimeError("SpaceMouseDevice.poll outside its `with` block")
        reports = self.source.read(t)
        if self._writer is not None:
            for device, report in reports:
                self._writer.write(t, device=device, report=report.hex())
        return self.teleop.feed(reports, t)

    def reset(self) -> None:
        if self.teleop is not None:
            self.teleop.reset()

    def __enter__(self) -> Self:
        self.source.__enter__()
        self.teleop = SpaceMouseTeleop(self._arms, self._hz, self.source.n_devices, self._cfg)
        if self._record_to is not None:
            self._writer = StreamWriter(self._record_to, STREAM_KIND, note="robot-policy teleop device=spacemouse")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.source.__exit__(kind, exc, tb)
