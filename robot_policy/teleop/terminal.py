"""Key presses from the terminal: stdin in cbreak mode (no line buffering, no echo), read without blocking.

Terminals deliver key *presses* only (no releases); a held key repeats at the terminal's auto-repeat rate
(typically 25-33 presses/s after a 250-600 ms delay), which is what makes a held motion key move the arm
continuously. Key names are the printable character itself (``"w"``, ``"W"``, ``"+"``) or one of
:data:`SPECIAL_KEYS` (``"enter"``, ``"up"``, ...). Ctrl-C keeps its usual meaning (SIGINT), so a session
can always be interrupted; the terminal's settings are restored on exit, whatever happens.
"""

from __future__ import annotations

import os
import select
import sys
from types import TracebackType
from typing import IO, Any, Self

#: byte sequences of the non-printable keys a teleop key map may use (xterm / VT100 encodings)
_SEQUENCES: dict[bytes, str] = {
    b"\x1b[A": "up", b"\x1b[B": "down", b"\x1b[C": "right", b"\x1b[D": "left",
    b"\x1bOA": "up", b"\x1bOB": "down", b"\x1bOC": "right", b"\x1bOD": "left",
    b"\x1b[3~": "delete", b"\x1b[H": "home", b"\x1b[F": "end",
    b"\x1b[5~": "pageup", b"\x1b[6~": "pagedown",
}
_SINGLE: dict[int, str] = {0x0D: "enter", 0x0A: "enter", 0x7F: "backspace", 0x08: "backspace", 0x09: "tab",
                           0x20: "space", 0x1B: "esc"}
#: every non-printable key name :func:`decode_keys` produces
SPECIAL_KEYS: frozenset[str] = frozenset({*_SEQUENCES.values(), *_SINGLE.values()})


def decode_keys(data: bytes) -> list[str]:
    """Key names in ``data`` (bytes as a terminal in cbreak mode sends them), in order. Escape sequences of
    keys outside :data:`SPECIAL_KEYS` and other control bytes are dropped; UTF-8 text is decoded."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x1B and i + 1 < len(data) and data[i + 1] in b"[O":
            # CSI / SS3: ESC [ params final-byte (0x40-0x7e); one key
            j = i + 2
            while j < len(data) and not 0x40 <= data[j] <= 0x7E:
                j += 1
            seq = data[i:j + 1]
            if seq in _SEQUENCES:
                keys.append(_SEQUENCES[seq])
            i = j + 1
            continue
        byte = data[i]
        if byte in _SINGLE:
            keys.append(_SINGLE[byte])
            i += 1
        elif byte < 0x20:
            i += 1  # other control characters (Ctrl-letter): no teleop meaning
        elif byte < 0x80:
            keys.append(chr(byte))
            i += 1
        else:  # a UTF-8 multibyte character: its length from the lead byte
            width = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            keys.append(data[i:i + width].decode("utf-8", errors="replace"))
            i += width
    return keys


class TerminalKeys:
    """Non-blocking key presses from a terminal (see the module docstring).

    Args:
        stream: the terminal to read (default: stdin); it must be a tty.
    """

    live = True
    finished = False

    def __init__(self, stream: IO[Any] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._saved: list[Any] | None = None
        self._fd = -1

    def __enter__(self) -> Self:
        import termios

        if not self._stream.isatty():
            raise RuntimeError("device=keyboard reads key presses from a terminal, but stdin is not a tty; run it "
                               "in a terminal, or replay a recorded key stream with events=FILE")
        self._fd = self._stream.fileno()
        self._saved = termios.tcgetattr(self._fd)
        mode = termios.tcgetattr(self._fd)
        # cbreak: keys arrive as typed, not echoed; ISIG stays on so Ctrl-C still interrupts
        mode[3] &= ~(termios.ICANON | termios.ECHO)
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 0, 0
        termios.tcsetattr(self._fd, termios.TCSANOW, mode)
        return self

    def read(self, t: float = 0.0) -> list[str]:
        """The keys pressed since the last read (never blocks); ``t`` (the session clock) is not needed."""
        if self._saved is None:
            raise RuntimeError("TerminalKeys.read outside its `with` block")
        data = b""
        while select.select([self._fd], [], [], 0.0)[0]:
            chunk = os.read(self._fd, 1024)
            if not chunk:
                break
            data += chunk
        return decode_keys(data)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
