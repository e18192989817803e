"""The safety filter: every position command that reaches an arm has passed :meth:`SafetyFilter.filter`.

Guarantees, for the T' commands c_1..c_T' that :meth:`SafetyFilter.filter` returns for the state (q, dq) at t,
sent at t + dt, t + 2 dt, ..., with c_0 = q, the finite-difference velocity v_k = (c_k - c_{k-1}) / dt,
v_0 = dq, and the limits of :class:`~.limits.JointLimits` (margin already applied), per dimension:

  P (position)      pos_min <= c_k <= pos_max for every k, exactly (no tolerance);
  V (velocity)      |v_k| <= vel_max;
  A (acceleration)  |v_k - v_{k-1}| / dt <= acc_max, the first step measured from dq;
  F (finite)        every command is finite;
and, for the chunk's own commands (intervention NONE or CLIPPED, and the kept prefix of TRUNCATED_WORKSPACE):
  B (braking)       v_k^2 <= 2 acc_max d_k, d_k the distance from c_k to the limit ahead of v_k: from every
                    command a stop at acc_max stays inside the limits, so the commands never leave them even
                    if the next chunk never arrives (:meth:`SafetyFilter.brake` from (c_T, v_T) is that stop);
while a braking output (``FilterResult.braking``) ends at rest instead: its last two commands are equal.

These hold up to floating-point rounding (P exactly) whenever the start is feasible, i.e. meets P, V and B
itself: q inside the range, |dq| <= vel_max, dq^2 <= 2 acc_max d_0 (:func:`~.braking.can_stop`; every command
the filter emits is such a state). From an infeasible start, A takes precedence over V and B (the commands
decelerate at acc_max until they meet V and B again) and P over everything (a joint that cannot stop before
its limit is stopped at it; one already outside its range is never commanded further out than the command
before). :attr:`FilterResult.infeasible_start` reports it. A non-finite q gives no command at all.

Jerk is limited in the forward pass, as the lowest-priority bound: the jerk (a_k - a_{k-1}) / dt is held
within jerk_max where the bounds above leave room, and gives way to them otherwise (the braking bound assumes
an instant switch to full deceleration); the steps where it gave way are counted. It is not done with ruckig
because ruckig's online tracking of a chunk point by point would lag (and so change) chunks that are already
within limits, and its position limits are only checked, not planned around; ruckig plans the stops.

What is written by hand here is what ruckig does not do: the per-step forward pass over a whole chunk with
position limits and the braking bound, the NaN/Inf and first-jump checks, and the workspace truncation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from robot_policy.runtime.safety.braking import brake_trajectory, can_stop, stoppable_speed
from robot_policy.runtime.safety.limits import JointLimits
from robot_policy.runtime.safety.workspace import ForwardKinematics, Workspace, WorkspaceBox


class Intervention(str, Enum):
    """What the filter did to a chunk, most severe first when several apply."""

    NONE = "none"  # passed unchanged
    CLIPPED = "clipped"  # some points moved to meet the limits (FilterResult.n_clipped)
    REJECTED_NONFINITE = "rejected_nonfinite"  # NaN/Inf in targets or dq: chunk dropped, braking instead
    REJECTED_NONFINITE_STATE = "rejected_nonfinite_state"  # NaN/Inf in q: nothing safe to command
    REJECTED_JUMP = "rejected_jump"  # first point too far from q: chunk dropped, braking instead
    TRUNCATED_WORKSPACE = "truncated_workspace"  # an end effector would leave its box (or come too close
    # to the other arm's): cut, then braking


@dataclass(frozen=True, eq=False)
class FilterResult:
    """The outcome of one :meth:`SafetyFilter.filter` call.

    Attributes:
        commands: (T', n) positions to send at t + dt, t + 2dt, ... (T' may differ from the chunk's T; it is
            0 only for REJECTED_NONFINITE_STATE). When ``braking``, the last two rows are equal: a standstill
            to hold.
        intervention: the most severe thing done.
        n_clipped: how many of the chunk's T points (rows) the forward pass moved (0 when rejected; counted over
            the whole chunk when it was then truncated).
        braking: the commands end in a stop instead of following the chunk to its end.
        infeasible_start: (q, dq) broke P, V or B (or was not finite), so the guarantees are the weaker ones
            of the module docstring for this chunk.
        jerk_yielded: (step, dimension) pairs where the jerk bound gave way to the others.
        detail: a sentence for diagnostics (which dimension, by how much); empty when nothing happened.
    """

    commands: np.ndarray
    intervention: Intervention
    n_clipped: int = 0
    braking: bool = False
    infeasible_start: bool = False
    jerk_yielded: int = 0
    detail: str = ""


@dataclass(frozen=True, eq=False)
class LimitedChunk:
    """What the forward pass :func:`limit_chunk` made of a chunk."""

    commands: np.ndarray  # (T, n)
    clipped: np.ndarray  # (T, n) bool, command != target
    jerk_yielded: int  # (step, dimension) pairs where the jerk bound gave way


def limit_chunk(limits: JointLimits, dt: float, q: np.ndarray, dq: np.ndarray, targets: np.ndarray) -> LimitedChunk:
    """The forward pass: targets (T, n) -> commands (T, n) that meet P, V, A, B (and, where possible, jerk).

    Targets are clamped into [pos_min, pos_max]; then each step, one period at a time with no look-ahead,
    aims for the target's own velocity plus a catch-up on the lag behind it (at most the speed that can still
    stop at the target) and takes the velocity nearest to that which the bounds allow. A chunk within limits
    is copied bit for bit; one that breaks them is followed with lag and closes in without overshooting a
    target that stops (up to the jerk bound's inertia). Inputs must be finite; q and dq are (n,).
    """
    lo, hi = limits.pos_min, limits.pos_max
    vmax, amax = limits.vel_max, limits.acc_max
    x = np.clip(targets, lo, hi)  # (T, n)
    out = np.empty_like(x)
    adt = amax * dt  # velocity change per step at full acceleration
    jdt2 = limits.jerk_max * dt * dt  # velocity change per step from a full-jerk change of acceleration
    p = q.copy()
    v = dq.copy()
    a: np.ndarray | None = None  # the acceleration before the first step is not known: no jerk bound there
    jerk_yielded = 0
    # A lagging command closes in on its target no faster than it can stop there with room for the jerk
    # ramp to full deceleration (A / J [s]); the braking-bound formula with that lead. Best effort, no bound.
    approach_lead = dt + amax / limits.jerk_max
    x_prev = q  # the reference before the first target is q itself: no lag, and the first step's velocity
    for k in range(len(x)):
        u = (x[k] - p) / dt  # the velocity that reaches the target in this step
        # aim for the target's own velocity plus a catch-up on the lag e (a step of the chunk is followed
        # exactly; a greedy "reach the target now" would arrive at speed and overshoot a target that stopped)
        e = x_prev - p
        catch_up = np.minimum(np.abs(e) / dt, stoppable_speed(np.abs(e), amax, approach_lead))
        w = np.where(e == 0, u, (x[k] - x_prev) / dt + np.sign(e) * catch_up)
        x_prev = x[k]
        # V and B: soft, they give way to A from an infeasible start (room 0 outside the range: move back)
        s_hi = np.minimum(vmax, stoppable_speed(np.maximum(hi - p, 0.0), amax, dt))
        s_lo = np.maximum(-vmax, -stoppable_speed(np.maximum(p - lo, 0.0), amax, dt))
        # A: clipping the soft interval into the acceleration interval is their intersection when there
        # is one, else the acceleration-feasible velocity nearest to it
        lo_v = np.clip(s_lo, v - adt, v + adt)
        hi_v = np.clip(s_hi, v - adt, v + adt)
        if a is not None:
            j_lo = v + a * dt - jdt2
            j_hi = v + a * dt + jdt2
            fits = (j_lo <= hi_v) & (j_hi >= lo_v)
            jerk_yielded += int((~fits).sum())
            lo_v = np.where(fits, np.maximum(lo_v, j_lo), lo_v)
            hi_v = np.where(fits, np.minimum(hi_v, j_hi), hi_v)
        v_new = np.clip(w, lo_v, hi_v)
        c = np.where(v_new == u, x[k], p + v_new * dt)
        # P: hard. It binds only from an infeasible start (and on rounding at a limit)
        c = np.clip(c, np.minimum(lo, p), np.maximum(hi, p))
        out[k] = c
        v_new = (c - p) / dt  # what the arm will see
        a = (v_new - v) / dt
        p, v = c, v_new
    return LimitedChunk(out, out != targets, jerk_yielded)


class SafetyFilter:
    """Limits, checks and, when needed, replaces position chunks before they reach the arms.

    Args:
        limits: per-dimension limits, in the order of the commands (margin already applied).
        dt: command period [s]: targets[k] is for t + (k + 1) dt.
        max_first_jump: largest allowed |targets[0] - q| per dimension [rad or m], scalar or (n,); a farther
            first point means the chunk was planned from another state, so it is rejected, not clipped.
        workspace: optional boxes, one per arm, in the order of ``fk``'s rows (or one for every arm in the rig
            frame, with ``base_poses``).
        fk: joint commands (n,) -> end-effector positions (arms, 3) [m, each arm's base frame]; with
            ``workspace`` or ``min_separation``.
        base_poses: per arm, ``T_rig_base`` (4, 4) [m] from the rig's base-to-base calibration: the boxes and
            the separation are then in that one rig frame (:class:`~.workspace.Workspace`).
        min_separation: the arms' end effectors stay at least this far apart [m] (needs ``base_poses``).

    Not thread-safe: one control loop owns it (the counters of :meth:`stats` are plain ints).
    """

    def __init__(self, limits: JointLimits, dt: float, max_first_jump: float | np.ndarray,
                 workspace: Sequence[WorkspaceBox] | None = None, fk: ForwardKinematics | None = None,
                 base_poses: Sequence[np.ndarray] | None = None, min_separation: float | None = None) -> None:
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"SafetyFilter.dt: must be a finite period > 0 in seconds, got {dt}")
        jump = np.broadcast_to(np.asarray(max_first_jump, dtype=np.float64), (limits.n,)).copy()
        if not (np.isfinite(jump) & (jump > 0)).all():
            raise ValueError(f"SafetyFilter.max_first_jump: must be finite and > 0, got {max_first_jump!r}")
        checked = workspace is not None or min_separation is not None
        if checked != (fk is not None):
            raise ValueError("SafetyFilter: workspace and fk go together, as do min_separation and fk (the boxes "
                             "and the separation are checked through fk)")
        self.limits = limits
        self.dt = float(dt)
        self.max_first_jump = jump
        self.workspace = (Workspace(workspace or (), fk, base_poses, min_separation)
                          if checked and fk is not None else None)
        self._counts: Counter[str] = Counter()

    def filter(self, q: np.ndarray, dq: np.ndarray, targets: np.ndarray,
               measured: np.ndarray | None = None) -> FilterResult:
        """Commands to send for a chunk of position targets.

        Args:
            q: (n,) current position [rad or m] (measured, or the last command sent).
            dq: (n,) current velocity [rad/s or m/s], consistent with q.
            targets: (T, n) positions for t + dt, ..., t + T dt, T >= 1.
            measured: (n,) the measured position, when q is the last command: the first-jump check compares
                the chunk with where the arm is (a chunk planned from another state), not with the last plan
                (consecutive chunks of a multimodal policy may disagree; the forward pass from q smooths that).

        Raises ValueError on wrong shapes (a programming error, not a data fault).
        """
        n = self.limits.n
        q = _array("q", q, (n,))
        dq = _array("dq", dq, (n,))
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[1] != n or len(targets) == 0:
            raise ValueError(f"SafetyFilter.filter: targets must be (T >= 1, {n}), got {targets.shape}")
        reference = q if measured is None else _array("measured", measured, (n,))
        result = self._filter(q, dq, targets, reference)
        self._count(result)
        return result

    def brake(self, q: np.ndarray, dq: np.ndarray) -> np.ndarray:
        """(T, n) a time-optimal stop from (q (n,), dq (n,)) within the limits, sampled every dt, ending at rest.

        See :func:`~.braking.brake_trajectory`. For the hold after a chunk ran out, or on HOLD/ESTOP, from the
        last command and its finite-difference velocity. Non-finite dq: holds q; non-finite q: (0, n).
        """
        n = self.limits.n
        q = _array("q", q, (n,))
        dq = _array("dq", dq, (n,))
        self._counts["brakes"] += 1
        if not np.isfinite(q).all():
            return np.empty((0, n))
        if not np.isfinite(dq).all():
            return q[None].copy()
        return brake_trajectory(self.limits, self.dt, q, dq)

    def stats(self) -> dict[str, int]:
        """Running counters: chunks, one per intervention, clipped_points, braking, infeasible_starts,
        jerk_yielded, brakes (calls of :meth:`brake`)."""
        keys = ["chunks", *(i.value for i in Intervention), "clipped_points", "braking", "infeasible_starts",
                "jerk_yielded", "brakes"]
        return {k: self._counts[k] for k in keys}

    def _filter(self, q: np.ndarray, dq: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> FilterResult:
        n = self.limits.n
        if not np.isfinite(q).all():
            return FilterResult(np.empty((0, n)), Intervention.REJECTED_NONFINITE_STATE, infeasible_start=True,
                                detail=f"non-finite q in {self._where(~np.isfinite(q))}: no safe command")
        if not np.isfinite(dq).all():
            # the velocity is unknown, so no stop can be planned; holding q is the one command with a meaning
            return FilterResult(q[None].copy(), Intervention.REJECTED_NONFINITE, braking=True, infeasible_start=True,
                                detail=f"non-finite dq in {self._where(~np.isfinite(dq))}: holding q")
        infeasible = not can_stop(self.limits, q, dq).all()
        if not np.isfinite(targets).all():
            bad = ~np.isfinite(targets)
            return FilterResult(brake_trajectory(self.limits, self.dt, q, dq), Intervention.REJECTED_NONFINITE,
                                braking=True, infeasible_start=infeasible,
                                detail=f"non-finite targets ({int(bad.sum())} values) in "
                                       f"{self._where(bad.any(axis=0))}: braking")
        jump = np.abs(targets[0] - reference)
        if not np.isfinite(reference).all() or (jump > self.max_first_jump).any():
            j = int(np.argmax(jump / self.max_first_jump))
            return FilterResult(brake_trajectory(self.limits, self.dt, q, dq), Intervention.REJECTED_JUMP,
                                braking=True, infeasible_start=infeasible,
                                detail=f"first point {jump[j]:.4g} from the arm in {self.limits.names[j]} "
                                       f"(max {self.max_first_jump[j]:.4g}): braking")
        passed = limit_chunk(self.limits, self.dt, q, dq, targets)
        n_clipped = int(passed.clipped.any(axis=1).sum())
        commands, intervention, braking, detail = passed.commands, Intervention.NONE, False, ""
        if n_clipped:
            intervention = Intervention.CLIPPED
            detail = (f"{n_clipped} of {len(targets)} points clipped, in "
                      f"{self._where(np.asarray(passed.clipped.any(axis=0)))}")
        if self.workspace is not None:
            cut = self._truncate(q, dq, passed.commands)
            if cut is not None:
                commands, keep, stays_inside, why = cut
                intervention, braking = Intervention.TRUNCATED_WORKSPACE, True
                detail = f"{why}: kept {keep} of {len(targets)} points, then braking"
                if not stays_inside:
                    detail += " (no stop stays inside the box: braking from q, best effort)"
        return FilterResult(commands, intervention, n_clipped=n_clipped, braking=braking,
                            infeasible_start=infeasible, jerk_yielded=passed.jerk_yielded, detail=detail)

    def _truncate(self, q: np.ndarray, dq: np.ndarray,
                  commands: np.ndarray) -> tuple[np.ndarray, int, bool, str] | None:
        """None when every command keeps the end effectors in their boxes (and apart). Else the longest prefix
        whose stop (:func:`brake_trajectory`) stays inside too, followed by that stop, with the prefix length
        and True; or, when no prefix does (e.g. q is already outside), the stop from (q, dq), 0 and False; and
        why the first command out is out."""
        assert self.workspace is not None
        inside = self.workspace.inside(commands)
        if inside.all():
            return None
        first_out = int(np.argmin(inside))
        why = self.workspace.violation(commands[first_out])
        for keep in range(first_out, -1, -1):
            p = commands[keep - 1] if keep > 0 else q
            prev = commands[keep - 2] if keep > 1 else q
            v = (p - prev) / self.dt if keep > 0 else dq
            tail = brake_trajectory(self.limits, self.dt, p, v)
            if self.workspace.inside(tail).all():
                return np.concatenate([commands[:keep], tail]), keep, True, why
        return brake_trajectory(self.limits, self.dt, q, dq), 0, False, why

    def _count(self, r: FilterResult) -> None:
        c = self._counts
        c["chunks"] += 1
        c[r.intervention.value] += 1
        c["clipped_points"] += r.n_clipped
        c["braking"] += int(r.braking)
        c["infeasible_starts"] += int(r.infeasible_start)
        c["jerk_yielded"] += r.jerk_yielded

    def _where(self, mask: np.ndarray) -> str:
        names = [name for name, m in zip(self.limits.names, mask) if m]
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _array(name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.array(x, dtype=np.float64)  # a copy: the filter never writes into the caller's state
    if a.shape != shape:
        raise ValueError(f"SafetyFilter: {name} must have shape {shape}, got {a.shape}")
    return a
