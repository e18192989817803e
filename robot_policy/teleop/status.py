"""The live status line of a teleoperation session (rich), redrawn in place on a terminal.

On a terminal it shows, on one line: recording state, seed, step / time limit, the sim's success, episodes
saved and discarded, the device's own state (active arm, step size, grippers) and the last message. Where
the output is not a terminal (a log file, CI) only the messages are printed, one line each, as they change.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.text import Text

from robot_policy.envs.base import ManipulationEnv
from robot_policy.teleop.session import SessionStatus

_STATE_STYLE = {"idle": ("IDLE", "bold yellow"), "recording": ("REC", "bold red"), "done": ("DONE", "bold green")}


def render_status(status: SessionStatus) -> Text:
    """One line of text for ``status``."""
    label, style = _STATE_STYLE.get(status.state, (status.state.upper(), "bold"))
    line = Text()
    line.append(f"{label:<4}", style=style)
    if status.seed is not None:
        line.append(f" seed {status.seed} step {status.step}/{status.max_steps}")
        line.append(" success" if status.success else "", style="green")
    line.append(f" | saved {status.saved} discarded {status.discarded}")
    if status.overruns:
        line.append(f" | late ticks {status.overruns}", style="yellow")
    if status.device:
        line.append(f" | {status.device}", style="cyan")
    if status.message:
        line.append(f" | {status.message}", style="dim")
    return line


class StatusLine:
    """A session's ``on_tick`` hook that keeps the status line current (at most ``refresh_hz`` redraws/s)."""

    def __init__(self, console: Console | None = None, refresh_hz: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self._min_interval = 1.0 / refresh_hz
        self._last = -float("inf")
        self._live: Live | None = None
        self._message = ""

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self._live = Live(Text("starting..."), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __call__(self, status: SessionStatus, env: ManipulationEnv) -> None:
        if self._live is None:
            if status.message != self._message:
                self.console.print(status.message, markup=False, highlight=False)
            self._message = status.message
            return
        now = time.perf_counter()
        if now - self._last >= self._min_interval or status.message != self._message:
            self._live.update(render_status(status), refresh=True)
            self._last, self._message = now, status.message

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
