"""Recorded device streams: JSON Lines of timestamped raw input, written by a live session, replayed by tests.

A stream file starts with a header line and then holds one event per line, in time order::

    {"stream": "keyboard", "version": 1, "note": "..."}
    {"t": 0.0, "key": "n"}
    {"t": 0.05, "key": "w"}

``t`` is the session clock in seconds (the time since the session started; the session ticks at the
control rate, so tick k is ``t = k / control_hz``). Events are the device's *raw* input (a key name, a HID
report as hex), so a replay goes through the same decoding and mapping code as the live device. Several
events may share a ``t``; they are delivered in file order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

FORMAT_VERSION = 1
#: an event is due at tick time t when its stamp is at most t + this (s): stamps written as k / hz rounded
#: to a few digits still land on tick k
TIME_TOLERANCE_S = 1e-6


class StreamError(ValueError):
    """A recorded stream that cannot be replayed; the message names the file and line."""


def read_stream(path: str | Path, kind: str, fields: Mapping[str, type]) -> list[dict[str, Any]]:
    """The events of the ``kind`` stream at ``path``, each checked to carry ``fields`` (name -> type)
    besides ``t``. Raises StreamError naming file and line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise StreamError(f"{path}: no such {kind} stream file")
    events: list[dict[str, Any]] = []
    last_t = 0.0
    with open(path) as fh:
        lines = [(n, line) for n, line in enumerate(fh, start=1) if line.strip()]
    if not lines:
        raise StreamError(f"{path}: empty; expected a header line {{\"stream\": \"{kind}\", ...}}")
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise StreamError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(entry, dict):
            raise StreamError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        if n == lines[0][0]:
            if entry.get("stream") != kind:
                raise StreamError(f"{where}: header must be {{\"stream\": \"{kind}\", \"version\": "
                                  f"{FORMAT_VERSION}}}, got {entry!r}")
            if entry.get("version") != FORMAT_VERSION:
                raise StreamError(f"{where}: stream version {entry.get('version')!r}; this reader reads "
                                  f"version {FORMAT_VERSION}")
            continue
        t = entry.get("t")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not t >= 0:
            raise StreamError(f"{where}: 't' must be a number of seconds >= 0, got {t!r}")
        if t < last_t:
            raise StreamError(f"{where}: t = {t} goes back in time (previous event at {last_t})")
        for name, tp in fields.items():
            if not isinstance(entry.get(name), tp):
                raise StreamError(f"{where}: expected '{name}' ({tp.__name__}), got {entry.get(name)!r}")
        unknown = set(entry) - {"t", *fields}
        if unknown:
            raise StreamError(f"{where}: unknown key(s) {sorted(unknown)}; a {kind} event has t, "
                              f"{', '.join(fields)}")
        last_t = float(t)
        events.append(entry)
    return events


class StreamReplay:
    """Deliver a recorded stream's events by session time."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events
        self._next = 0

    def due(self, t: float) -> list[dict[str, Any]]:
        """The events stamped up to ``t`` (s) not delivered yet, in file order."""
        start = self._next
        while self._next < len(self._events) and self._events[self._next]["t"] <= t + TIME_TOLERANCE_S:
            self._next += 1
        return self._events[start:self._next]

    @property
    def finished(self) -> bool:
        return self._next >= len(self._events)


class StreamWriter:
    """Write a ``kind`` stream: the header now, then one line per :meth:`write` (flushed, so a crashed
    session still leaves what was typed)."""

    def __init__(self, path: str | Path, kind: str, note: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(self.path, "w")  # noqa: SIM115  # closed by close() / __exit__
        header: dict[str, Any] = {"stream": kind, "version": FORMAT_VERSION}
        if note:
            header["note"] = note
        self._fh.write(json.dumps(header) + "\n")
        self._fh.flush()

    def write(self, t: float, **payload: Any) -> None:
        self._fh.write(json.dumps({"t": round(float(t), 6), **payload}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
