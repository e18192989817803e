"""Data-layer benchmark: sampler windows/s (RAM and disk) and streaming-writer steps/s with cameras, with
and without fsync (the store's default makes each commit durable: its chunk files and directories).

The 1M-step store is synthetic but shaped like real data: smooth joint trajectories (random walks) in the
slots of ``panda_bimanual_joint``, zeros elsewhere, 500-step episodes. Camera frames for the writer are
smooth gradients with moving blobs and sensor noise, which compress about like rendered scenes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_policy.data.disk_reader import TensorstoreReader
from robot_policy.data.sampler import SequenceSampler, gather_windows
from robot_policy.data.store import CameraInfo, EpisodeStore, StoreError
from robot_policy.spaces.embodiment import load_embodiment


@dataclass
class DataBenchConfig:
    """Options of ``robot-policy bench data``."""

    #: where the 1M-step store is built (reused when it already has ``n_steps`` steps)
    workdir: str = "bench_out/data"
    #: steps of the synthetic store the sampler reads
    n_steps: int = 1_000_000
    #: steps per synthetic episode
    episode_length: int = 500
    #: To: observation steps per window
    obs_horizon: int = 2
    #: Ta: action steps per window
    action_horizon: int = 64
    #: windows per sampler call
    batch_size: int = 256
    #: seconds spent measuring each sampler rate
    seconds: float = 5.0
    #: streaming writer: steps recorded, camera count and size
    writer_steps: int = 1000
    #: steps per episode the streaming writer commits
    writer_episode_length: int = 200
    #: cameras recorded by the streaming writer
    cameras: int = 2
    #: their frame height and width (px)
    image_size: int = 224


def _smooth_episode(rng: np.random.Generator, length: int, mask: np.ndarray) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal((length, 128)) * 0.01, axis=0) + rng.uniform(-1, 1, 128)
    return (walk * mask).astype(np.float32)


def build_store(path: Path, n_steps: int, episode_length: int, seed: int = 0) -> EpisodeStore:
    """Create (or reuse) the synthetic store of ``n_steps`` steps."""
    if path.exists():
        try:
            store = EpisodeStore.open(path)
            if store.n_steps == n_steps:
                return store
        except StoreError:  # damaged or half-built: rebuilt below
            pass
    spec = load_embodiment("panda_bimanual_joint")
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, spec, overwrite=True, provenance={"source": "bench data (synthetic)"}) as store:
        for start in tqdm(range(0, n_steps, episode_length), desc="building 1M-step store", unit="ep",
                          total=-(-n_steps // episode_length)):
            length = min(episode_length, n_steps - start)
            state = _smooth_episode(rng, length, spec.state.mask)
            action = _smooth_episode(rng, length, spec.action.mask)
            store.add_episode({"state": state, "action": action, "timestamp": np.arange(length) / spec.control_hz})
    return EpisodeStore.open(path)


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Items/s of ``fn`` (which returns items done per call) over about ``seconds``."""
    fn()  # warm-up: first reads open handles and fault pages in
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def sampler_rates(store: EpisodeStore, cfg: DataBenchConfig) -> dict[str, float]:
    sampler = SequenceSampler(store.episode_ends, cfg.obs_horizon, cfg.action_horizon)
    rng = np.random.default_rng(0)
    ram = store.load(["state", "action"])

    def ram_batch() -> int:
        gather_windows(ram, sampler, rng.integers(0, len(sampler), cfg.batch_size), ("state",), ("action",))
        return cfg.batch_size

    def ram_single() -> int:
        gather_windows(ram, sampler, rng.integers(0, len(sampler), 1), ("state",), ("action",))
        return 1

    results = {"ram_windows_per_s": _rate(ram_batch, cfg.seconds),
               "ram_windows_per_s_batch1": _rate(ram_single, cfg.seconds)}
    for name, limit in (("disk_windows_per_s", None), ("disk_windows_per_s_1thread", 1)):
        reader = TensorstoreReader(store.path, ["state", "action"], cache_bytes=0, concurrency=limit)

        def disk_batch(reader: TensorstoreReader = reader) -> int:
            reader.gather(sampler, rng.integers(0, len(sampler), cfg.batch_size), ("state",), ("action",))
            return cfg.batch_size

        results[name] = _rate(disk_batch, cfg.seconds)
    return results


def _frames(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1) * 200
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        cy, cx = 0.5 + 0.3 * np.sin(i / 15 + np.arange(3)[:, None, None]), 0.5 + 0.3 * np.cos(i / 11)
        blob = np.exp(-((yy - cy[0]) ** 2 + (xx - cx) ** 2) / 0.01)[..., None] * np.array([40, 120, 30])
        frames[i] = np.clip(base + blob + rng.normal(0, 2.0, (size, size, 3)), 0, 255)
    return frames


def writer_rate(workdir: Path, cfg: DataBenchConfig, fsync: bool = True) -> dict[str, float]:
    """Steps/s of the streaming writer recording ``cfg.cameras`` cameras, commits (and, with ``fsync``,
    the fsyncs of every chunk file and directory written) included; bytes stored per camera frame."""
    spec = load_embodiment("panda_bimanual_joint")
    rng = np.random.default_rng(0)
    frames = _frames(rng, 64, cfg.image_size)
    cams = {f"cam{i}": CameraInfo(cfg.image_size, cfg.image_size) for i in range(cfg.cameras)}
    state = _smooth_episode(rng, cfg.writer_episode_length, spec.state.mask)
    action = _smooth_episode(rng, cfg.writer_episode_length, spec.action.mask)
    path = workdir / "writer_bench.zarr"
    steps = 0
    with EpisodeStore.create(path, spec, cameras=cams, overwrite=True, fsync=fsync) as store:
        start = time.perf_counter()
        with tqdm(total=cfg.writer_steps, desc=f"streaming writer ({'fsync' if fsync else 'no fsync'})",
                  unit="step") as bar:
            while steps < cfg.writer_steps:
                with store.stream_episode(language="bench") as ep:
                    for t in range(min(cfg.writer_episode_length, cfg.writer_steps - steps)):
                        images = {name: frames[(steps + 7 * i) % len(frames)] for i, name in enumerate(cams)}
                        ep.add_step(state=state[t], action=action[t], timestamp=t / spec.control_hz, images=images)
                        steps += 1
                        bar.update()
                    ep.commit()
        elapsed = time.perf_counter() - start
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"writer_steps_per_s": steps / elapsed, "writer_bytes_per_frame": size / (steps * cfg.cameras)}


def run_data_bench(cfg: DataBenchConfig) -> dict[str, Any]:
    """Run every data measurement; returns the numbers (the CLI writes JSON and BENCHMARKS.md)."""
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = build_store(workdir / "store_1m.zarr", cfg.n_steps, cfg.episode_length)
    build_s = time.perf_counter() - t0
    results: dict[str, Any] = {"store_steps": store.n_steps, "store_episodes": store.n_episodes,
                               "store_build_s": build_s, "cpu_count": os.cpu_count()}
    results.update(sampler_rates(store, cfg))
    results.update(writer_rate(workdir, cfg))
    results["writer_steps_per_s_no_fsync"] = writer_rate(workdir, cfg, fsync=False)["writer_steps_per_s"]
    return results
