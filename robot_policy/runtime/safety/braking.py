"""Stopping: the braking bound of the forward pass and the time-optimal stop (ruckig).

Both work per dimension on (n,) vectors in the units of :class:`~.limits.JointLimits` (rad or m, per second).
"""

from __future__ import annotations

import math

import numpy as np
from ruckig import ControlInterface, InputParameter, OutputParameter, Result, Ruckig, Synchronization

from robot_policy.runtime.safety.limits import JointLimits


def stoppable_speed(room: np.ndarray, acc_max: np.ndarray, dt: float | np.ndarray) -> np.ndarray:
    """(n,) the largest speed [per s] of a step of length ``dt`` [s] that ends with room to stop.

    A step from position p at velocity v ends at p + v dt; from there a stop at deceleration ``acc_max``
    needs v^2 / (2 acc_max). So with ``room`` (>= 0) between p and the limit ahead,
    v^2 <= 2 acc_max (room - v dt), whose positive root is returned. The bound implies v dt <= room (the
    step itself stays inside), and it is recursive: decelerating by acc_max dt from a speed that meets it
    meets it again at the next step, so a chunk that meets it at every point can always be stopped.
    """
    adt = acc_max * dt
    return np.sqrt(adt * adt + 2.0 * acc_max * room) - adt


def can_stop(limits: JointLimits, q: np.ndarray, dq: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """(n,) bool: the state (q, dq) meets the filter's bounds P, V and B, so a stop at acc_max from it stays
    inside [pos_min, pos_max]: q in range, |dq| <= vel_max, dq^2 <= 2 acc_max d with d the distance to the
    limit ahead of dq. Every command the filter emits meets it. ``rtol`` absorbs rounding."""
    room = np.where(dq >= 0, limits.pos_max - q, q - limits.pos_min)
    return ((q >= limits.pos_min) & (q <= limits.pos_max) & (np.abs(dq) <= limits.vel_max * (1 + rtol))
            & (dq * dq <= 2.0 * limits.acc_max * room * (1 + rtol) + rtol * limits.vel_max ** 2))


def brake_trajectory(limits: JointLimits, dt: float, q: np.ndarray, dq: np.ndarray) -> np.ndarray:
    """(T, n) positions at t + dt, t + 2dt, ... of a time-optimal stop from (q, dq), ending stopped.

    Per dimension and unsynchronised (each joint stops as soon as it can: the shortest stopping distance, not
    the original path), from zero acceleration, with ruckig's velocity interface (target velocity 0). The
    first choice is jerk-limited (``limits.jerk_max``). A dimension whose jerk-limited stop would leave
    [pos_min, pos_max] takes the acceleration-limited stop instead (ruckig with unlimited jerk), which needs
    dq^2 / (2 acc_max): the braking bound of the filter guarantees that much room at every command it emits.
    A dimension that has not even that room (a start the filter did not produce) still gets the fastest stop,
    with its positions held at the limit it would cross: a command never goes past a limit, and a joint
    already outside its range is never commanded further out than q. The last two rows are equal (the stop is
    complete within the commands); from rest the trajectory is the one row q.

    Ruckig does the stop; what is written here is only the fallback per dimension and the clamp.
    """
    jerk = _ruckig_stop(limits, dt, q, dq, limits.jerk_max)
    lo = np.minimum(limits.pos_min, q)
    hi = np.maximum(limits.pos_max, q)
    leaves = ((jerk < lo) | (jerk > hi)).any(axis=0)  # (n,)
    if leaves.any():
        acc = _ruckig_stop(limits, dt, q, dq, np.full(limits.n, math.inf))
        rows = max(len(jerk), len(acc))
        jerk, acc = _pad(jerk, rows), _pad(acc, rows)
        jerk[:, leaves] = acc[:, leaves]
    stop = np.clip(jerk, lo, hi)
    # ruckig's last sample is where the stop ended, somewhere inside the last period: repeat it so that the
    # commands themselves end at rest (a zero last finite-difference velocity; the step to it is at most
    # acc_max / 2, as the stop took under one period at acc_max)
    if not (np.array_equal(stop[-1], stop[-2]) if len(stop) > 1 else np.array_equal(stop[-1], q)):
        stop = np.concatenate([stop, stop[-1:]])
    return stop


def _ruckig_stop(limits: JointLimits, dt: float, q: np.ndarray, dq: np.ndarray,
                 jerk_max: np.ndarray) -> np.ndarray:
    n = limits.n
    otg = Ruckig(n, dt)
    inp = InputParameter(n)
    out = OutputParameter(n)
    inp.control_interface = ControlInterface.Velocity
    inp.synchronization = Synchronization.No
    inp.current_position = q.tolist()
    inp.current_velocity = dq.tolist()
    inp.current_acceleration = [0.0] * n
    inp.target_velocity = [0.0] * n
    inp.target_acceleration = [0.0] * n
    inp.max_velocity = limits.vel_max.tolist()
    inp.max_acceleration = limits.acc_max.tolist()
    inp.max_jerk = jerk_max.tolist()
    rows: list[list[float]] = []
    while True:
        result = otg.update(inp, out)
        if result not in (Result.Working, Result.Finished):
            raise RuntimeError(f"ruckig could not plan a stop from q={q.tolist()}, dq={dq.tolist()}: {result}")
        rows.append(list(out.new_position))
        if result == Result.Finished:
            return np.array(rows)  # (T, n)
        out.pass_to_input(inp)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    """(T, n) -> (rows, n), repeating the last (stopped) row."""
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)]) if rows > len(x) else x.copy()
