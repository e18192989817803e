"""Inference in a process of its own: the control loop's process never runs the policy's Python.

    with ProcessInferenceRunner.from_path("runs/x/checkpoints/latest", torch_threads=1) as runner:
        controller = PolicyController(runner.policy, runner.interface(), cfg, runner=runner)
        ...                                     # the controller ticks as with AsyncInferenceRunner

:class:`~robot_policy.runtime.runner.AsyncInferenceRunner` infers on a thread: torch releases the GIL inside
its kernels, but the Python between them (the sampler's loop, input assembly, a few hundred small ops per
chunk) takes it, and a control tick that wakes meanwhile waits for it (up to the interpreter's switch
interval, longer when the inference thread is itself preempted while holding it). Here the policy is loaded
in a spawned process (:meth:`ProcessInferenceRunner.from_path`: a deploy bundle or a checkpoint directory, by
:func:`~robot_policy.runtime.controller.load_serving_policy`; or any ``load()`` that pickles), observations go
to it and chunks come back over a pipe, and the loop's process holds no interpreter lock but its own.

The policy's state lives there too: :attr:`ProcessInferenceRunner.policy` is its stand-in in this process
(``horizon``, ``execute_horizon``, ``embodiment``; ``reset`` and ``observe`` are forwarded, in order with the
inference requests; ``predict_chunk`` is a blocking call, for warming up). Messages are pickled by
``multiprocessing`` between the two processes of one run (nothing is stored). A chunk comes back as its
arrays and is rebuilt here with this process's embodiment, so the loop's process unpickles ~10 kB per chunk.

Times: ``started`` / ``finished`` are stamped in the worker on ``time.monotonic`` (CLOCK_MONOTONIC, shared by
every process of the machine), so the observation stamps must be on that clock too.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robot_policy.policies.base import ActionChunk
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.runner import InferenceResult, WorkerRunner, _Job


class InferenceProcessError(RuntimeError):
    """The policy process failed: loading, an inference (with the worker's traceback), or it died."""


def _chunk_message(chunk: ActionChunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    return chunk.unified, chunk.mask, chunk.timestamps, chunk.execute_horizon


def serving_policy(path: str, backend: str | None = None, embodiment: str | None = None,
                   language: str | None = None) -> Any:
    """The policy of a deploy bundle or checkpoint directory, as the ROS node loads it."""
    from robot_policy.runtime.controller import load_serving_policy

    return load_serving_policy(path, backend=backend, embodiment=embodiment, language=language)[0]


def _serve(conn: Connection, load: Callable[[], Any], torch_threads: int | None, injected_delay_s: float) -> None:
    """The worker: load the policy, then answer messages in order until ``None`` or a closed pipe."""
    import torch

    from robot_policy.policies.base import observe, reset_policy

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        policy = load()
        conn.send(("ready", {"horizon": int(getattr(policy, "horizon", 0)),
                             "execute_horizon": int(getattr(policy, "execute_horizon", 0)),
                             "embodiment": policy.embodiment}))
    except Exception:  # noqa: BLE001 -- not swallowed: the parent raises it
        conn.send(("error", f"loading the policy:\n{traceback.format_exc()}"))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent went away
            return
        if message is None:
            return
        kind, *args = message
        if kind == "observe":
            observe(policy, args[0])
        elif kind == "reset":
            reset_policy(policy, args[0])
        else:  # "infer" (a job, answered with its times) or "call" (predict_chunk, answered with the chunk)
            obs, obs_time, kwargs = args
            started = time.monotonic()
            try:
                with torch.no_grad():
                    chunk = policy.predict_chunk(obs, **kwargs)
                if kind == "infer" and injected_delay_s:
                    time.sleep(injected_delay_s)
                conn.send(("result", _chunk_message(chunk), obs_time, started, time.monotonic()))
            except Exception:  # noqa: BLE001 -- not swallowed: the parent raises it
                conn.send(("error", traceback.format_exc()))


class SpawnedWorker:
    """A spawned process and this side of its pipe. The worker's first message is ``("ready", info)`` (kept
    as :attr:`info`) or ``("error", text)``; ``None`` sent to it asks it to exit.

    Args:
        target, args: the worker function (module level: spawn imports it) and its arguments after the pipe.
        name: the process's name, and the prefix of every error.
        start_timeout_s: how long the worker may take to be ready.
        error: the exception type raised for the worker's failures.
    """

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str, start_timeout_s: float,
                 error: type[Exception] = RuntimeError) -> None:
        self.name, self.error = name, error
        ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads' locks
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self._process.start()
        child.close()
        self.closed = False
        try:
            if not self._conn.poll(start_timeout_s):
                raise error(f"{name}: not ready after {start_timeout_s} s")
            kind, info = self.recv()
            if kind != "ready":
                raise error(f"{name}: the worker failed {info}")
        except BaseException:
            self.close(timeout=5.0)
            raise
        self.info: Any = info

    def send(self, message: Any) -> None:
        if self.closed:
            raise RuntimeError(f"{self.name}: used after close")
        self._conn.send(message)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is waiting (after up to ``timeout`` s; None: until one is)."""
        return self._conn.poll(timeout)

    def recv(self) -> tuple[Any, ...]:
        try:
            return self._conn.recv()  # type: ignore[no-any-return]
        except EOFError as e:
            raise self.error(f"{self.name}: the worker died (exit code {self._process.exitcode})") from e

    def close(self, timeout: float | None = None) -> None:
        """Ask the worker to exit (it finishes what it is doing first) and join it; terminated if it has not
        exited after ``timeout`` s. Idempotent."""
        if not self.closed:
            self.closed = True
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass  # already gone
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        self._conn.close()


class RemotePolicy:
    """This process's stand-in for the policy in a :class:`ProcessInferenceRunner`'s worker."""

    def __init__(self, runner: ProcessInferenceRunner, info: dict[str, Any]) -> None:
        self._runner = runner
        self.horizon: int = info["horizon"]
        self.execute_horizon: int = info["execute_horizon"]
        self.embodiment = info["embodiment"]

    def reset(self, seed: int = 0) -> None:
        self._runner.worker.send(("reset", seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self._runner.worker.send(("observe", obs))

    def predict_chunk(self, obs: dict[str, np.ndarray], **kwargs: Any) -> ActionChunk:
        """A blocking inference (warm-up); not while the runner has one out."""
        if self._runner.busy:
            raise RuntimeError("RemotePolicy.predict_chunk: the runner has an inference out")
        self._runner.worker.send(("call", obs, 0.0, kwargs))
        item = self._runner._get(None)
        if isinstance(item, BaseException):
            raise item
        assert item is not None
        return item.chunk  # type: ignore[no-any-return]


class ProcessInferenceRunner(WorkerRunner):
    """:class:`~robot_policy.runtime.runner.AsyncInferenceRunner`'s interface, the policy in a spawned
    process (module docstring).

    Args:
        load: makes the policy, called in the worker; it must pickle (a module-level function or a partial of
            one): :meth:`from_path` passes :func:`serving_policy`.
        injected_delay_s: extra seconds the worker sleeps before sending each result.
        torch_threads: torch's intra-op threads in the worker; None = torch's default there.
        start_timeout_s: how long loading may take before it counts as failed.
    """

    def __init__(self, load: Callable[[], Any], *, injected_delay_s: float = 0.0, torch_threads: int | None = None,
                 start_timeout_s: float = 300.0) -> None:
        if injected_delay_s < 0:
            raise ValueError(f"injected_delay_s: must be >= 0, got {injected_delay_s}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads: must be >= 1, got {torch_threads}")
        super().__init__()
        self.worker = SpawnedWorker(_serve, (load, torch_threads, injected_delay_s), "policy-inference",
                                    start_timeout_s, InferenceProcessError)
        self.policy = RemotePolicy(self, self.worker.info)

    @classmethod
    def from_path(cls, path: str, *, backend: str | None = None, embodiment: str | None = None,
                  language: str | None = None, **kwargs: Any) -> ProcessInferenceRunner:
        """The policy of a deploy bundle or checkpoint directory (:func:`serving_policy`) in the worker;
        ``kwargs`` go to the constructor."""
        return cls(functools.partial(serving_policy, path, backend, embodiment, language), **kwargs)

    def interface(self, object_state_dim: int = 0, joint_names: list[str] | None = None) -> RobotInterface:
        """The wire layout of the policy's embodiment (what ``load_serving_policy`` returns beside it)."""
        return RobotInterface.from_embodiment(self.policy.embodiment, object_state_dim, joint_names)

    def _put(self, job: _Job) -> None:
        self.worker.send(("infer", job.obs, job.obs_time, job.kwargs))

    def _get(self, timeout: float | None) -> InferenceResult | BaseException | None:
        if not self.worker.poll(timeout):
            return None
        kind, *payload = self.worker.recv()
        if kind == "error":
            return InferenceProcessError(f"ProcessInferenceRunner: inference failed in the worker:\n{payload[0]}")
        (unified, mask, timestamps, execute_horizon), obs_time, started, finished = payload
        chunk = ActionChunk(unified, mask, timestamps, execute_horizon, self.policy.embodiment)
        return InferenceResult(chunk, obs_time, started, finished)

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker (an inference in progress finishes first) and join it; terminated if it has not
        exited after ``timeout`` s. Idempotent."""
        self._closed = True
        self.worker.close(timeout)
