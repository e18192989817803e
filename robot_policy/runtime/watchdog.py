"""The watchdog: decides each control period whether the arms may run the queued actions.

Pure logic on times the caller passes in (seconds on one monotonic clock, the clock of the observation
stamps too): no threads and no clock of its own, so tests drive it step by step. The control loop calls
:meth:`Watchdog.mode` once per period and acts on it:

  RUN    send the next queued action (through the safety filter);
  HOLD   send no queued action; brake from the last command and hold (``SafetyFilter.brake``);
  ESTOP  as HOLD, and nothing else is sent until :meth:`Watchdog.reset` succeeds.

Rules, checked in this order by :meth:`Watchdog.mode`:
  1. e-stop: an asserted e-stop input latches ESTOP. It stays ESTOP through anything (observations, chunks,
     deactivate/activate, the input's release) until :meth:`reset`, which succeeds only while the input is
     released; the reset leads to HOLD, not RUN.
  2. inactive (before :meth:`activate`, after :meth:`deactivate`): HOLD.
  3. stale observation: no observation yet, the newest stamp older than ``obs_timeout_s``, or a stamp ahead
     of ``now`` (the clocks disagree, so freshness is unknown): HOLD, at the first period where it holds, so
     within one control period of the observation going stale.
  4. empty queue: HOLD. A missed inference deadline (an inference running for longer than
     ``inference_deadline_s``) does not stop the arms by itself: the queued actions keep running (the miss
     is reported in the reason and counted) and the empty queue then holds.
  5. after a HOLD (other than an empty queue's) or ESTOP, RUN resumes only with a chunk planned from an
     observation stamped at or after the moment the hold began (:meth:`chunk_arrived`'s ``obs_stamp``): a chunk planned before assumed
     the arm kept moving, and the arm has stopped since.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum


class Mode(str, Enum):
    RUN = "run"
    HOLD = "hold"
    ESTOP = "estop"


@dataclass(frozen=True)
class WatchdogConfig:
    """Attributes:
        obs_timeout_s: an observation older than this (now - stamp) [s] is stale.
        inference_deadline_s: an inference still running this long after it started [s] missed its deadline.
    """

    obs_timeout_s: float
    inference_deadline_s: float

    def __post_init__(self) -> None:
        for key in ("obs_timeout_s", "inference_deadline_s"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"WatchdogConfig.{key}: must be a finite number of seconds > 0, got {v!r}")


class Watchdog:
    """Modes RUN / HOLD / ESTOP from observation stamps, inference timing, the queue and the e-stop input.

    Starts inactive (HOLD) with the e-stop released. Times are seconds on the caller's monotonic clock;
    ``mode`` must be called with non-decreasing ``now``.
    """

    def __init__(self, config: WatchdogConfig) -> None:
        self.config = config
        self._active = False
        self._latest_obs = -math.inf  # newest observation stamp
        self._inference_started: float | None = None  # the running inference, if any
        self._deadline_reported = False  # the running inference's miss is counted once
        self._estop_input = False
        self._estop_latched = False
        self._hold_began = -math.inf  # RUN needs a chunk planned from an observation at or after this
        self._plan_ok = False
        self._mode = Mode.HOLD
        self._reason = "inactive"
        self._last_now = -math.inf
        self._counts: Counter[str] = Counter()

    # inputs ---------------------------------------------------------------------------------------------
    def activate(self, now: float) -> None:
        """Allow RUN (lifecycle activate). Does not clear a latched e-stop."""
        self._active = True

    def deactivate(self, now: float) -> None:
        """HOLD until activated again and a new chunk is planned (lifecycle deactivate)."""
        self._active = False
        self._begin_hold(now)

    def observe(self, stamp: float) -> None:
        """An observation taken at ``stamp`` [s] arrived. Out-of-order stamps older than the newest are ignored."""
        if not math.isfinite(stamp):
            raise ValueError(f"Watchdog.observe: stamp must be finite seconds, got {stamp!r}")
        self._latest_obs = max(self._latest_obs, stamp)

    def inference_started(self, now: float) -> None:
        """An inference (one chunk) started at ``now``; its deadline is ``now + inference_deadline_s``."""
        self._inference_started = now
        self._deadline_reported = False

    def chunk_arrived(self, now: float, obs_stamp: float) -> None:
        """A chunk planned from the observation stamped ``obs_stamp`` [s] arrived (and was queued) at ``now``."""
        self._inference_started = None
        self._deadline_reported = False
        if obs_stamp >= self._hold_began:
            self._plan_ok = True
        self._counts["chunks"] += 1

    def set_estop(self, asserted: bool, now: float) -> None:
        """The e-stop input's current level. Asserted latches ESTOP; released alone does not clear it."""
        self._estop_input = bool(asserted)
        if asserted and not self._estop_latched:
            self._estop_latched = True
            self._counts["estops"] += 1
            self._begin_hold(now)

    def reset(self, now: float) -> bool:
        """Clear a latched e-stop. Refused (False, and the reason says so) while the input is still asserted:
        the operator releases the e-stop first, then resets. Leads to HOLD until a new chunk is planned."""
        if self._estop_input:
            self._counts["resets_refused"] += 1
            self._reason = "reset refused: e-stop input still asserted; release it first"
            return False
        if self._estop_latched:
            self._estop_latched = False
            self._counts["resets"] += 1
            self._begin_hold(now)
        return True

    # output ---------------------------------------------------------------------------------------------
    def mode(self, now: float, queued: int) -> Mode:
        """The mode for the control period starting at ``now`` [s], with ``queued`` actions left to send.

        Call once per control period; the reason is in :attr:`reason`.
        """
        if now < self._last_now:
            raise ValueError(f"Watchdog.mode: time went backwards ({now} after {self._last_now}); "
                             "pass a monotonic clock")
        self._last_now = now
        mode, reason = self._evaluate(now, queued)
        if mode != self._mode:
            self._counts[f"{self._mode.value}->{mode.value}"] += 1
            # An empty queue leaves the arm at the last point of a plan, which is where the next plan,
            # made from an observation taken while it ran, starts: it does not need a fresh plan. Every
            # other hold (stale observation, inactive, e-stop) does (rule 5).
            if mode != Mode.RUN and not reason.startswith("queue empty"):
                self._begin_hold(now)
            self._mode = mode
        self._reason = reason
        return mode

    @property
    def last_mode(self) -> Mode:
        """The mode the last :meth:`mode` call returned (HOLD before the first), for diagnostics."""
        return self._mode

    @property
    def reason(self) -> str:
        """Why the last :meth:`mode` is what it is (or why the last reset was refused), for diagnostics."""
        return self._reason

    @property
    def deadline_missed(self) -> bool:
        """The running inference is past its deadline (as of the last :meth:`mode`; cleared by the next chunk
        or inference)."""
        return self._deadline_reported

    def stats(self) -> dict[str, int]:
        """Counters: transitions as ``'run->hold'`` etc., chunks, deadlines_missed, estops, resets,
        resets_refused."""
        return dict(self._counts)

    # ----------------------------------------------------------------------------------------------------
    def _begin_hold(self, now: float) -> None:
        self._hold_began = max(self._hold_began, now)
        self._plan_ok = False

    def _evaluate(self, now: float, queued: int) -> tuple[Mode, str]:
        cfg = self.config
        if self._estop_latched:
            state = "asserted" if self._estop_input else "released; reset() to clear"
            return Mode.ESTOP, f"e-stop latched (input {state})"
        late = ""
        if self._inference_started is not None and now - self._inference_started > cfg.inference_deadline_s:
            if not self._deadline_reported:
                self._deadline_reported = True
                self._counts["deadlines_missed"] += 1
            late = (f"inference deadline missed ({now - self._inference_started:.3f} s > "
                    f"{cfg.inference_deadline_s} s)")
        if not self._active:
            return Mode.HOLD, "inactive"
        age = now - self._latest_obs
        if math.isinf(age):
            return Mode.HOLD, "no observation yet"
        if age > cfg.obs_timeout_s:
            return Mode.HOLD, f"observation stale: {age:.3f} s old > {cfg.obs_timeout_s} s"
        if age < 0:
            return Mode.HOLD, f"observation stamped {-age:.3f} s in the future: clocks disagree"
        if queued <= 0:
            return Mode.HOLD, "queue empty" + (f" after {late}" if late else "")
        if not self._plan_ok:
            return Mode.HOLD, (f"waiting for a chunk planned from an observation at or after t={self._hold_began:.3f}"
                               " (the hold's start)")
        return Mode.RUN, f"running; {late}, {queued} queued actions left" if late else "running"
