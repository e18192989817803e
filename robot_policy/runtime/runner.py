"""Inference off the control loop: one background thread computes chunks while the loop executes the queue.

    with AsyncInferenceRunner(policy) as runner:
        while running:                                   # the control loop, e.g. 20 Hz
            now = time.monotonic()
            if (result := runner.poll()) is not None:    # re-raises the worker's exception, if any
                scheduler.add(to_native(result.chunk), result.obs_time, hz, now=now)
            if scheduler.remaining(now) <= threshold:
                runner.submit(obs, obs_time)             # False while the previous one is still out
            command(scheduler.action_at(now))

A thread: torch releases the GIL inside its kernels (and ONNX Runtime / TensorRT inside ``run``), so the
control loop runs while the network does. The Python between kernels (the sampler's update, input assembly)
does take the GIL and delays a control tick that wakes meanwhile by up to the switch interval, more when the
inference thread is preempted while holding it (``bench runtime``'s loop under SCHED_FIFO on 2 loaded cores:
~20 of 1000 ticks more than 1 ms late with the thread, 1-4 with
:class:`~robot_policy.runtime.process_runner.ProcessInferenceRunner`, the same interface with the policy in
a process of its own: a real-time loop's choice; this one stays for in-process and deterministic runs).

Threads: torch's intra-op pool is process-wide. ``torch_threads`` sets it once, from the worker, before the
first inference; leave a core to the control loop (e.g. ``os.cpu_count() - 1``). ``None`` leaves torch's
setting as it is. Grad mode is per thread, so the worker runs each call under ``torch.no_grad()`` itself.

While an inference is out (:attr:`AsyncInferenceRunner.busy`) the worker owns the policy: the control thread
must not call its ``observe`` or ``reset`` then (keep the observations and replay them after the result, and
``wait_idle()`` before a reset).

Times are ``clock()`` seconds (``time.monotonic`` by default), the clock of the observation stamps.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np
import torch

from robot_policy.policies.base import ActionChunk

#: ``predict(obs, **kwargs) -> chunk``: a policy's ``predict_chunk`` or any function of the same form
Predict = Callable[..., Any]


@dataclass(frozen=True)
class InferenceResult:
    """One finished inference.

    Attributes:
        chunk: what ``predict`` returned (an :class:`~robot_policy.policies.base.ActionChunk` for a policy).
        obs_time: the observation's stamp passed to :meth:`AsyncInferenceRunner.submit` (s).
        started: when the worker began the call (s).
        finished: when the result became available, after ``injected_delay_s`` (s).
    """

    chunk: Any
    obs_time: float
    started: float
    finished: float

    @property
    def latency_s(self) -> float:
        """Observation to available chunk (s): what decides which of the chunk's actions are already due."""
        return self.finished - self.obs_time

    @property
    def inference_s(self) -> float:
        """Time in the worker (s), the injected delay included."""
        return self.finished - self.started


@dataclass(frozen=True)
class _Job:
    obs: Any
    obs_time: float
    kwargs: dict[str, Any]


class InferenceRunner(Protocol):
    """What :class:`~robot_policy.runtime.controller.PolicyController` needs of a runner: one inference in
    flight, started by ``submit`` and collected once by ``poll`` / ``wait``. :class:`AsyncInferenceRunner`
    (a thread), :class:`~robot_policy.runtime.process_runner.ProcessInferenceRunner` (a process) and
    :class:`SimulatedLatencyRunner` (simulated time) are ones."""

    @property
    def busy(self) -> bool: ...

    def submit(self, obs: Any, obs_time: float, **kwargs: Any) -> bool: ...

    def poll(self) -> InferenceResult | None: ...

    def wait(self, timeout: float | None = None) -> InferenceResult | None: ...

    def wait_idle(self, timeout: float | None = None) -> InferenceResult | None: ...

    def close(self, timeout: float | None = None) -> None: ...


class WorkerRunner(ABC):
    """The bookkeeping of a runner whose worker (a thread, a process) takes one job at a time: at most one
    submitted and not yet collected, results and the worker's exceptions handed over once. Subclasses move
    the job to the worker (:meth:`_put`) and the worker's answer back (:meth:`_get`)."""

    def __init__(self) -> None:
        # Submitted and not yet collected by poll/wait. Only the caller's thread reads or writes it.
        self._outstanding = False
        self._closed = False

    @abstractmethod
    def _put(self, job: _Job) -> None:
        """Hand ``job`` to the worker."""

    @abstractmethod
    def _get(self, timeout: float | None) -> InferenceResult | BaseException | None:
        """The worker's answer, waiting up to ``timeout`` s (0: do not wait; None: forever); None if none."""

    @property
    def busy(self) -> bool:
        """Whether a submitted inference has not been collected yet (running, or finished but not polled)."""
        return self._outstanding

    def submit(self, obs: Any, obs_time: float, **kwargs: Any) -> bool:
        """Start inferring a chunk from ``obs`` (taken at ``obs_time``, s); ``kwargs`` go to ``predict`` (e.g.
        ``prefix=`` for real-time chunking, ``noise=``). Returns False, and does nothing, while the previous
        one is still out: it is running, or its result has not been collected by :meth:`poll` (a result is
        never overwritten). ``obs`` must not be mutated by the caller afterwards: the worker reads it."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__}: submit after close")
        if self._outstanding:
            return False
        self._outstanding = True
        self._put(_Job(obs, float(obs_time), kwargs))
        return True

    def poll(self) -> InferenceResult | None:
        """The finished result, once, or None if there is none (yet). Re-raises an exception raised by
        ``predict`` in the worker (the runner is then free for the next submit)."""
        if not self._outstanding:
            return None
        item = self._get(0.0)
        return None if item is None else self._collect(item)

    def wait(self, timeout: float | None = None) -> InferenceResult | None:
        """Block until the outstanding result is ready (None after ``timeout`` s, or when none is out)."""
        if not self._outstanding:
            return None
        item = self._get(timeout)
        return None if item is None else self._collect(item)

    def wait_idle(self, timeout: float | None = None) -> InferenceResult | None:
        """Block until nothing is outstanding and return what was (None if nothing was): before a reset, so
        that a chunk of the old episode is never polled in the new one. Re-raises the worker's exception.
        Raises TimeoutError if the inference is still running after ``timeout`` s."""
        if not self._outstanding:
            return None
        result = self.wait(timeout)
        if self._outstanding:
            raise TimeoutError(f"{type(self).__name__}: inference still running after {timeout} s")
        return result

    def _collect(self, item: InferenceResult | BaseException) -> InferenceResult:
        self._outstanding = False
        if isinstance(item, BaseException):
            raise item
        return item

    @abstractmethod
    def close(self, timeout: float | None = None) -> None:
        """Stop the worker, waiting up to ``timeout`` s; later submits raise."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncInferenceRunner(WorkerRunner):
    """Runs ``predict`` in a background thread, one call at a time. See the module docstring.

    Args:
        predict: a :class:`~robot_policy.policies.base.Policy` (its ``predict_chunk`` is called) or a
            function ``predict(obs, **kwargs)``.
        injected_delay_s: extra seconds the worker sleeps before publishing each result (delay benchmarks:
            how a scheduler copes with slower inference).
        torch_threads: torch's intra-op threads, set from the worker before the first call; None = unchanged.
        clock: the time source of ``started`` / ``finished``.
    """

    def __init__(self, predict: Predict | Any, *, injected_delay_s: float = 0.0, torch_threads: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        fn = getattr(predict, "predict_chunk", predict)
        if not callable(fn):
            raise TypeError(f"AsyncInferenceRunner: {type(predict).__name__} has no predict_chunk and is not callable")
        if injected_delay_s < 0:
            raise ValueError(f"injected_delay_s: must be >= 0, got {injected_delay_s}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads: must be >= 1, got {torch_threads}")
        super().__init__()
        self._predict: Predict = fn
        self.injected_delay_s = injected_delay_s
        self._torch_threads = torch_threads
        self._clock = clock
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._results: queue.Queue[InferenceResult | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="policy-inference", daemon=True)
        self._thread.start()

    def _put(self, job: _Job) -> None:
        self._jobs.put(job)

    def _get(self, timeout: float | None) -> InferenceResult | BaseException | None:
        try:
            return self._results.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            return None

    def _work(self) -> None:
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
        while (job := self._jobs.get()) is not None:
            started = self._clock()
            try:
                with torch.no_grad():
                    chunk = self._predict(job.obs, **job.kwargs)
                if self.injected_delay_s:
                    time.sleep(self.injected_delay_s)
                self._results.put(InferenceResult(chunk, job.obs_time, started, self._clock()))
            except Exception as e:  # noqa: BLE001 -- not swallowed: poll() re-raises it in the caller's thread
                self._results.put(e)

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker and join it; an inference in progress finishes first (torch cannot be interrupted).
        Idempotent."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join(timeout)


def chunk_native(chunk: ActionChunk) -> np.ndarray:
    """A chunk's native actions (Ta, n), the embodiment's action fields concatenated in declaration order: the
    rows :class:`~robot_policy.runtime.scheduler.ChunkScheduler` queues."""
    if chunk.embodiment is None:
        raise ValueError("chunk_native: this ActionChunk has no embodiment")
    return np.asarray(chunk.embodiment.action.unified_to_flat(chunk.unified))  # (Ta, n)


class SimulatedLatencyRunner:
    """:class:`AsyncInferenceRunner`'s interface on simulated time: the chunk is computed at :meth:`submit`
    (synchronously, in the caller's thread) and becomes available to :meth:`poll` once ``clock()`` has
    advanced by ``latency_s``. For runs where the world is simulated step by step (the runtime benchmark's
    delay sweep): the latency is exact and the run deterministic, whatever the machine's speed.
    """

    def __init__(self, predict: Predict | Any, latency_s: float, clock: Callable[[], float]) -> None:
        if latency_s < 0:
            raise ValueError(f"latency_s: must be >= 0, got {latency_s}")
        fn = getattr(predict, "predict_chunk", predict)
        if not callable(fn):
            raise TypeError(f"SimulatedLatencyRunner: {type(predict).__name__} has no predict_chunk and is not callable")
        self._predict: Predict = fn
        self.latency_s = float(latency_s)
        self._clock = clock
        self._result: InferenceResult | None = None

    @property
    def busy(self) -> bool:
        return self._result is not None

    def submit(self, obs: Any, obs_time: float, **kwargs: Any) -> bool:
        if self._result is not None:
            return False
        started = self._clock()
        with torch.no_grad():
            chunk = self._predict(obs, **kwargs)
        self._result = InferenceResult(chunk, float(obs_time), started, started + self.latency_s)
        return True

    def poll(self) -> InferenceResult | None:
        if self._result is None or self._clock() < self._result.finished - 1e-9:
            return None
        result, self._result = self._result, None
        return result

    def wait(self, timeout: float | None = None) -> InferenceResult | None:
        """The pending result regardless of the clock (lockstep callers that let the world wait)."""
        result, self._result = self._result, None
        return result

    def wait_idle(self, timeout: float | None = None) -> InferenceResult | None:
        return self.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._result = None
