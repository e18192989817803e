"""Issue 11's done-when for teleop: a recorded keyboard stream teleoperates ``pybullet_bimanual_lift`` to
success in sim, and those episodes validate and train with the same command as scripted ones (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_policy.cli.main import main
from robot_policy.data.store import EpisodeStore
from robot_policy.models import checkpoint as ckpt
from robot_policy.spaces.unified import slot
from tests.teleop_streams import lift_key_stream

DATA = Path(__file__).parent / "data"
STREAM = DATA / "teleop_keyboard_lift.jsonl"
SEEDS = [0, 1]


def test_the_committed_stream_is_what_the_generator_derives_from_the_expert() -> None:
    """The file is not hand-edited: it is the generator's output for seeds 0-1 (regenerate it with
    ``python tests/teleop_streams.py tests/data/teleop_keyboard_lift.jsonl 0 1``)."""
    events = [json.loads(line) for line in STREAM.read_text().splitlines()[1:]]
    assert events == lift_key_stream(SEEDS)
    keys = {e["key"] for e in events}
    assert {"n", "enter", "q", "space", "1", "2", "3", "r", "f", "w", "a", "d", "j"} <= keys  # moves, turns, arms


@pytest.mark.slow
def test_a_recorded_keyboard_stream_lifts_the_tray_and_the_episodes_validate_and_train(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "teleop.zarr"
    assert main(["teleop", "task=pybullet_bimanual_lift", "device=keyboard", f"events={STREAM}", f"out={store}",
                 "seed=0"]) == 0
    assert "saved 2 episode(s) (2 successful), discarded 0" in capsys.readouterr().out
    with EpisodeStore.open(store) as s:
        meta = s.episode_meta()
        assert s.n_episodes == 2 and list(meta["success"]) == [1, 1] and list(meta["seed"]) == SEEDS
        lengths = s.episode_lengths
        assert np.all(lengths < 200)  # success ended them, not the time limit
        assert s.attrs["provenance"]["device"] == "keyboard"

    # the same store layout as a scripted recording of the task
    scripted = tmp_path / "scripted.zarr"
    assert main(["collect", "task=pybullet_bimanual_lift", "episodes=1", f"out={scripted}", "seed=0"]) == 0
    with EpisodeStore.open(scripted) as a, EpisodeStore.open(store) as b:
        assert a.data_keys == b.data_keys and a.embodiment == b.embodiment and a.attrs["task"] == b.attrs["task"]
    capsys.readouterr()

    assert main(["dataset", "validate", str(store)]) == 0
    assert "valid" in capsys.readouterr().out
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:  # the command tests/tiny_checkpoint.py trains scripted episodes with
        assert main(["train", f"dataset.path={store}", f"out={run}", "policy=rdt_tiny", "steps=2", "batch_size=8",
                     "val_fraction=0", "torch_threads=1", "progress=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert ckpt.latest_checkpoint(run) is not None


@pytest.mark.slow
def test_a_terminal_session_typed_into_a_pty_records_an_episode(tmp_path: Path) -> None:
    """The live keyboard path: the CLI on a pseudo-terminal, paced in real time, keys typed as a user would."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    store = tmp_path / "typed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "robot_policy.cli.main", "teleop", f"out={store}", "viewer=off"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm"})
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 60.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < deadline, f"no {marker!r} in the terminal output: {seen[-2000:]!r}"
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"IDLE")  # the status line is up: the session ticks
        os.write(master, b"n")
        read_until(b"REC")
        os.write(master, b"rrrr")  # 4 presses: 20 mm up
        time.sleep(1.0)
        os.write(master, b"\r")
        read_until(b"saved episode 0")
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0, seen[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    with EpisodeStore.open(store) as s:
        assert s.n_episodes == 1
        z = s.get_episode(0)["state"][:, slot("right_eef_pos")][:, 2]  # right end-effector z, base frame (m)
    assert z[-1] - z[0] == pytest.approx(0.02, abs=0.004)
