"""Signal a CLI run in a subprocess once it has logged work (a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def interrupt_once_logged(proc: subprocess.Popen[bytes], log: Path, metrics: Path, marker: str, what: str,
                          timeout: float = 120.0) -> int:
    """Wait until ``metrics`` contains ``marker`` (the run finished a unit of ``what``), send SIGINT, and
    return the exit code; fails the test (with the run's ``log``) if it exits first or logs nothing in
    ``timeout`` s. The process never outlives the call."""
    deadline = time.monotonic() + timeout
    try:
        while not (metrics.exists() and marker in metrics.read_text()):
            if proc.poll() is not None:
                pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} logged after {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
