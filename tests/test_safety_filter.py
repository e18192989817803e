"""The safety filter's guarantees (robot_policy/runtime/safety/filter.py, module docstring), fuzzed over
10,000 random chunks, plus the targeted cases: rejections, pass-through, ruckig stops, the workspace box,
limits from an embodiment spec.

The checks here are written from the definitions, independently of the filter's own helpers.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_policy.runtime.safety import FilterResult, Intervention, JointLimits, SafetyFilter, WorkspaceBox
from robot_policy.spaces.embodiment import load_embodiment

SPEC = load_embodiment("panda_bimanual_joint")
MARGIN, GRIPPER_MARGIN = 0.05, 0.002
LIMITS = JointLimits.from_embodiment(SPEC, margin=MARGIN, gripper_margin=GRIPPER_MARGIN)
N = LIMITS.n
JUMP = np.where(np.char.endswith(np.array(LIMITS.names), "gripper"), 0.03, 0.3)  # (n,) rad or m
RTOL = 1e-9


def finite_differences(q: np.ndarray, dq: np.ndarray, c: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocities (T, n) from q through the commands, and accelerations (T, n) from dq."""
    v = np.diff(np.concatenate([q[None], c]), axis=0) / dt
    a = np.diff(np.concatenate([dq[None], v]), axis=0) / dt
    return v, a


def start_feasible(lim: JointLimits, q: np.ndarray, dq: np.ndarray) -> bool:
    """q in range, |dq| <= vel_max and a stop at acc_max from (q, dq) fits: dq^2 <= 2 acc_max d."""
    room = np.where(dq >= 0, lim.pos_max - q, q - lim.pos_min)
    return bool(((q >= lim.pos_min) & (q <= lim.pos_max) & (np.abs(dq) <= lim.vel_max)
                 & (dq**2 <= 2 * lim.acc_max * room)).all())


def assert_safe(lim: JointLimits, dt: float, q: np.ndarray, dq: np.ndarray, r: FilterResult,
                check_acc: bool) -> None:
    c = r.commands
    assert c.ndim == 2 and c.shape[1] == lim.n
    if not np.isfinite(q).all():
        assert len(c) == 0
        return
    assert len(c) >= 1
    assert np.isfinite(c).all()
    # P: exactly inside, no tolerance
    assert (c >= lim.pos_min).all() and (c <= lim.pos_max).all(), (c.min(0) - lim.pos_min, lim.pos_max - c.max(0))
    v, a = finite_differences(q, np.where(np.isfinite(dq), dq, 0.0), c, dt)
    assert (np.abs(v) <= lim.vel_max * (1 + RTOL)).all(), np.abs(v).max(0) / lim.vel_max
    if check_acc:
        assert (np.abs(a) <= lim.acc_max * (1 + RTOL)).all(), np.abs(a).max(0) / lim.acc_max
    if r.braking:
        assert np.array_equal(c[-1], c[-2]) if len(c) > 1 else np.allclose(c[-1], q)  # ends at rest
    elif check_acc:
        # B at every command of a passed chunk: room to stop at acc_max before the limit ahead
        room = np.where(v >= 0, lim.pos_max - c, c - lim.pos_min)
        assert (v**2 <= 2 * lim.acc_max * room * (1 + RTOL) + RTOL * lim.vel_max**2).all()


def random_case(rng: np.random.Generator, q_kind: str, dq_kind: str, t_kind: str, horizon: int, dt: float,
                bad: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi, vmax, amax = LIMITS.pos_min, LIMITS.pos_max, LIMITS.vel_max, LIMITS.acc_max
    width = hi - lo
    q = rng.uniform(lo, hi)
    if q_kind == "edges":  # each dimension at its lower edge, its upper edge, or anywhere
        pick = rng.integers(0, 3, N)
        q = np.where(pick == 0, lo, np.where(pick == 1, hi, q))
    # the fastest feasible speed each way: vel_max, and a stop at acc_max must fit before the limit
    up = np.minimum(vmax, np.sqrt(2 * amax * (hi - q)))
    down = np.minimum(vmax, np.sqrt(2 * amax * (q - lo)))
    if dq_kind == "zero":
        dq = np.zeros(N)
    elif dq_kind == "feasible":
        dq = rng.uniform(-down, up)
    elif dq_kind == "at_limit":  # at the velocity or braking limit, either way
        dq = np.where(rng.random(N) < 0.5, up, -down)
    else:  # "any": up to vel_max either way, which near an edge may not leave room to stop
        dq = rng.uniform(-vmax, vmax)
    steps = np.arange(1, horizon + 1)[:, None]  # (T, 1)
    if t_kind == "smooth":  # constant acceleration within half the limits: mostly passes
        v0 = dq
        acc = rng.uniform(-0.5, 0.5, N) * amax
        targets = q + v0 * steps * dt + 0.5 * acc * (steps * dt) ** 2
    elif t_kind == "walk":  # random walk at a random multiple of the speed limit
        scale = rng.choice([0.3, 1.0, 3.0, 10.0])
        targets = q + np.cumsum(rng.normal(0.0, 1.0, (horizon, N)) * scale * vmax * dt, axis=0)
    elif t_kind == "far":  # anywhere in three times the range: far outside the limits
        targets = rng.uniform(lo - width, hi + width, (horizon, N))
    elif t_kind == "edges":  # exactly at the edges, or beyond them
        choices = np.stack([lo, hi, lo - 0.5 * width, hi + 0.5 * width])  # (4, n)
        targets = choices[rng.integers(0, 4, (horizon, N)), np.arange(N)]
    else:  # "jump": a first point beyond max_first_jump in some dimension
        targets = np.repeat(q[None], horizon, axis=0)
        j = rng.integers(0, N)
        targets[:, j] += rng.choice([-1.0, 1.0]) * JUMP[j] * rng.uniform(1.01, 5.0)
    if t_kind != "jump" and rng.random() < 0.9:  # keep the first point within reach so the chunk is filtered
        targets[0] = q + np.clip(targets[0] - q, -0.999 * JUMP, 0.999 * JUMP)
    if bad != "none":
        value = rng.choice([np.nan, np.inf, -np.inf])
        where = {"targets": targets, "q": q, "dq": dq}[bad]
        flat = where.reshape(-1)
        flat[rng.integers(0, flat.size, rng.integers(1, 4))] = value
    return q, dq, targets


def test_fuzz_10k_chunks_stay_within_limits() -> None:
    seen: Counter[str] = Counter()
    filters = {dt: SafetyFilter(LIMITS, dt, JUMP) for dt in (0.01, 0.05, 0.1)}

    @settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**63 - 1),
           q_kind=st.sampled_from(["inside", "edges"]),
           dq_kind=st.sampled_from(["zero", "feasible", "at_limit", "any"]),
           t_kind=st.sampled_from(["smooth", "smooth", "walk", "walk", "far", "edges", "jump"]),
           horizon=st.integers(1, 24),
           dt=st.sampled_from(sorted(filters)),
           bad=st.sampled_from(["none"] * 8 + ["targets", "q", "dq"]))
    def check(seed: int, q_kind: str, dq_kind: str, t_kind: str, horizon: int, dt: float, bad: str) -> None:
        q, dq, targets = random_case(np.random.default_rng(seed), q_kind, dq_kind, t_kind, horizon, dt, bad)
        r = filters[dt].filter(q, dq, targets)
        feasible = bool(np.isfinite(dq).all()) and start_feasible(LIMITS, q, dq)
        if feasible:
            assert not r.infeasible_start
        assert_safe(LIMITS, dt, q, dq, r, check_acc=feasible)
        seen[r.intervention.value] += 1
        seen["acc_checked"] += int(feasible)

    check()
    # the fuzz reached every outcome, and checked the acceleration bound on most chunks
    for kind in ("none", "clipped", "rejected_nonfinite", "rejected_nonfinite_state", "rejected_jump"):
        assert seen[kind] >= 100, seen
    assert seen["acc_checked"] >= 6_000, seen
    assert sum(f.stats()["chunks"] for f in filters.values()) == 10_000


# --- targeted cases ------------------------------------------------------------------------------------

DT = 1.0 / SPEC.control_hz
MID = (LIMITS.pos_min + LIMITS.pos_max) / 2


def smooth_chunk(q: np.ndarray, horizon: int = 16, amp: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """A slow sine about q (well within every limit): targets (T, n) and the matching start velocity."""
    w = 2 * np.pi * 0.5
    t = np.arange(1, horizon + 1)[:, None] * DT
    scale = np.where(np.char.endswith(np.array(LIMITS.names), "gripper"), 0.01, 1.0)
    return q + amp * scale * np.sin(w * t), amp * scale * w * np.ones(N)


def test_smooth_chunk_within_limits_passes_unchanged() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    targets, dq = smooth_chunk(MID)
    r = f.filter(MID, dq, targets)
    assert r.intervention == Intervention.NONE, r.detail
    assert np.array_equal(r.commands, targets)  # bit for bit
    assert r.n_clipped == 0 and not r.braking and not r.infeasible_start
    assert f.stats()["none"] == 1


def test_targets_outside_limits_are_clipped() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    targets, dq = smooth_chunk(MID)
    targets[5:, 0] = LIMITS.pos_max[0] + 1.0  # beyond the margin (and the hard limit)
    r = f.filter(MID, dq, targets)
    assert r.intervention == Intervention.CLIPPED and "right_joint_pos[0]" in r.detail
    assert r.n_clipped == 11 and np.array_equal(r.commands[:5], targets[:5])
    assert_safe(LIMITS, DT, MID, dq, r, check_acc=True)
    assert f.stats()["clipped_points"] == 11


@pytest.mark.parametrize("where", ["targets", "dq", "q"])
def test_nonfinite_is_rejected_with_a_stop(where: str) -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    targets, dq = smooth_chunk(MID)
    q = MID.copy()
    {"targets": targets[3], "dq": dq, "q": q}[where][2] = np.nan
    r = f.filter(q, dq, targets)
    if where == "q":  # nothing safe to command
        assert r.intervention == Intervention.REJECTED_NONFINITE_STATE and r.commands.shape == (0, N)
        return
    assert r.intervention == Intervention.REJECTED_NONFINITE and r.braking
    assert "right_joint_pos[2]" in r.detail
    if where == "targets":  # a stop from (q, dq): what brake() gives
        assert np.array_equal(r.commands, f.brake(q, dq))
        assert len(r.commands) > 1
    else:  # the velocity is unknown: hold q
        assert np.array_equal(r.commands, q[None])
    assert_safe(LIMITS, DT, q, dq, r, check_acc=where == "targets")


def test_first_point_jump_is_rejected() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    targets, dq = smooth_chunk(MID)
    targets[:, 9] += 0.5  # left_joint_pos[1], max jump 0.3 rad
    r = f.filter(MID, dq, targets)
    assert r.intervention == Intervention.REJECTED_JUMP and r.braking
    assert "left_joint_pos[1]" in r.detail
    assert np.array_equal(r.commands, f.brake(MID, dq))
    assert f.stats()["rejected_jump"] == 1


def test_the_jump_check_measures_from_the_arm_when_given() -> None:
    """From the last command q, a chunk that starts 0.5 rad away is rejected; the same chunk is accepted when the
    arm is measured where it starts (the last plan, not the arm, was elsewhere), and a chunk that starts at q
    is rejected when the arm is measured 0.5 rad away."""
    f = SafetyFilter(LIMITS, DT, JUMP)
    targets, dq = smooth_chunk(MID)
    shifted = targets.copy()
    shifted[:, 9] += 0.5
    arm = MID.copy()
    arm[9] += 0.5
    assert f.filter(MID, dq, shifted).intervention == Intervention.REJECTED_JUMP
    assert f.filter(MID, dq, shifted, measured=arm).intervention != Intervention.REJECTED_JUMP
    r = f.filter(MID, dq, targets, measured=arm)
    assert r.intervention == Intervention.REJECTED_JUMP and "left_joint_pos[1]" in r.detail


def test_brake_stops_within_limits() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    vmax, amax, jmax = LIMITS.vel_max, LIMITS.acc_max, LIMITS.jerk_max
    # full speed up from the middle: room for the jerk-limited stop, which is longer than v^2 / (2 a)
    dq = vmax.copy()
    stop = f.brake(MID, dq)
    v, a = finite_differences(MID, dq, stop, DT)
    assert np.array_equal(stop[-1], stop[-2]) and np.abs(v[-1]).max() == 0.0  # final velocity 0
    assert (np.abs(a) <= amax * (1 + RTOL)).all() and (np.abs(v) <= vmax * (1 + RTOL)).all()
    travelled = stop[-1] - MID
    assert (travelled > dq**2 / (2 * amax) + 1e-6).all()  # the jerk limit made it longer ...
    assert (travelled < dq**2 / (2 * amax) + dq * amax / jmax + 1e-6).all()  # ... by at most v a / j
    # now towards the upper limit with just the room an acceleration-limited stop needs: the stop still fits
    q = LIMITS.pos_max - dq**2 / (2 * amax)
    stop = f.brake(q, dq)
    v, a = finite_differences(q, dq, stop, DT)
    assert (stop <= LIMITS.pos_max).all() and np.abs(v[-1]).max() == 0.0
    assert (np.abs(a) <= amax * (1 + RTOL)).all()
    np.testing.assert_allclose(stop[-1], LIMITS.pos_max, atol=1e-9)  # used all of the room, no more


def test_brake_that_cannot_fit_stops_at_the_limit() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    q = LIMITS.pos_max - 0.01
    stop = f.brake(q, LIMITS.vel_max)
    assert (stop <= LIMITS.pos_max).all() and np.array_equal(stop[-1], LIMITS.pos_max)
    assert f.filter(q, LIMITS.vel_max, q[None]).infeasible_start


def test_brake_from_rest_holds() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    assert np.array_equal(f.brake(MID, np.zeros(N)), MID[None])


def test_overspeed_start_decelerates_at_max() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    dq = 1.5 * LIMITS.vel_max
    q = MID.copy()
    targets = q + np.arange(1, 17)[:, None] * DT * dq  # keeps going at 1.5 x vel_max
    targets = np.clip(targets, q - JUMP, q + JUMP)  # (the test is about speed, not the limits)
    r = f.filter(q, dq, targets)
    assert r.infeasible_start and r.intervention == Intervention.CLIPPED
    v, a = finite_differences(q, dq, r.commands, DT)
    assert (np.abs(a) <= LIMITS.acc_max * (1 + RTOL)).all()  # the acceleration bound held throughout
    k = np.arange(1, 17)[:, None]
    # speed comes down at acc_max until it is within vel_max, then stays there
    assert (np.abs(v) <= np.maximum(LIMITS.vel_max, np.abs(dq) - k * LIMITS.acc_max * DT) * (1 + RTOL)).all()
    assert (np.abs(v[-1]) <= LIMITS.vel_max * (1 + RTOL)).all()


def test_start_outside_range_moves_back_never_further_out() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    q = MID.copy()
    q[0] = LIMITS.pos_max[0] + 0.03  # in the margin band, e.g. after an external push
    dq = np.zeros(N)
    dq[0] = 0.5  # and still moving outwards
    targets = np.repeat(q[None], 16, axis=0)
    targets[:, 0] = q[0] + 0.1  # the policy wants to go even further out
    r = f.filter(q, dq, targets)
    assert r.infeasible_start
    c = np.concatenate([q[:1], r.commands[:, 0]])
    # each command is inside the range or no further out than the one before, and it gets back in
    assert (c[1:] <= np.maximum(LIMITS.pos_max[0], c[:-1])).all()
    assert c[-1] <= LIMITS.pos_max[0]
    assert_safe(LIMITS, DT, q, dq, FilterResult(r.commands[c[1:] <= LIMITS.pos_max[0]], r.intervention),
                check_acc=False)  # the other dimensions, and this one once back inside


def two_link_fk(c: np.ndarray) -> np.ndarray:
    """Planar two-link arm, unit links, base at the origin: joints (2,) -> end effector (1, 3) [m]."""
    x = np.cos(c[0]) + np.cos(c[0] + c[1])
    y = np.sin(c[0]) + np.sin(c[0] + c[1])
    return np.array([[x, y, 0.0]])


def test_workspace_box_truncates_and_stops_inside() -> None:
    lim = JointLimits(("shoulder", "elbow"), np.array([-2.5, -2.5]), np.array([2.5, 2.5]),
                      vel_max=np.array([2.0, 2.0]), acc_max=np.array([10.0, 10.0]), jerk_max=np.array([100.0, 100.0]))
    box = WorkspaceBox(lower=np.array([-2.5, -2.5, -0.1]), upper=np.array([2.5, 1.0, 0.1]))  # a wall at y = 1 m
    f = SafetyFilter(lim, DT, 0.3, workspace=[box], fk=two_link_fk)
    q, dq = np.array([0.0, 0.5]), np.array([1.0, 0.0])  # the shoulder already moving at 1 rad/s
    targets = q + np.arange(1, 21)[:, None] * np.array([0.05, 0.0])  # the shoulder sweeps up through the wall
    free = SafetyFilter(lim, DT, 0.3).filter(q, dq, targets)
    assert free.intervention == Intervention.NONE
    ys = np.array([two_link_fk(c)[0, 1] for c in targets])
    assert ys.max() > 1.0
    r = f.filter(q, dq, targets)
    assert r.intervention == Intervention.TRUNCATED_WORKSPACE and r.braking
    keep = int(r.detail.split("kept ")[1].split(" ")[0])
    assert 0 < keep < int(np.argmax(ys > 1.0))  # cut before the first point outside, with room to stop
    assert np.array_equal(r.commands[:keep], targets[:keep])
    assert all(two_link_fk(c)[0, 1] <= 1.0 for c in r.commands)
    assert np.array_equal(r.commands[-1], r.commands[-2])  # stopped
    assert_safe(lim, DT, q, dq, r, check_acc=True)


def test_workspace_needs_fk() -> None:
    box = WorkspaceBox(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="workspace and fk"):
        SafetyFilter(LIMITS, DT, JUMP, workspace=[box])
    with pytest.raises(ValueError, match="lower"):
        WorkspaceBox(np.ones(3), np.zeros(3))


def test_limits_from_panda_bimanual_joint_spec() -> None:
    raw = JointLimits.from_embodiment(SPEC)
    assert raw.n == 16 == SPEC.action.native_dim
    assert raw.names[:8] == tuple(f"right_joint_pos[{j}]" for j in range(7)) + ("right_gripper",)
    assert raw.names[8:] == tuple(f"left_joint_pos[{j}]" for j in range(7)) + ("left_gripper",)
    # the native flat action order: the unified bounds mapped back with the spec's own conversion
    lo_u, hi_u = SPEC.joint_position_bounds()
    np.testing.assert_allclose(raw.pos_min, SPEC.action.unified_to_flat(np.where(np.isfinite(lo_u), lo_u, 0.0)))
    np.testing.assert_allclose(raw.pos_max, SPEC.action.unified_to_flat(np.where(np.isfinite(hi_u), hi_u, 0.0)))
    np.testing.assert_allclose(raw.vel_max[:7], SPEC.arms["right"].joint_vel_max)
    np.testing.assert_allclose(raw.acc_max[8:15], SPEC.arms["left"].joint_acc_max)
    np.testing.assert_allclose(raw.jerk_max, 10 * raw.acc_max)
    assert raw.vel_max[7] == 0.1 and raw.acc_max[15] == 1.0
    # the margin shrinks joints by rad, grippers by m
    np.testing.assert_allclose(LIMITS.pos_min[:7], raw.pos_min[:7] + MARGIN)
    np.testing.assert_allclose(LIMITS.pos_max[7], 0.08 - GRIPPER_MARGIN)


def test_bad_margin_names_the_joint() -> None:
    with pytest.raises(ValueError, match=r"too large for right_joint_pos\[3\]"):
        JointLimits.from_embodiment(SPEC, margin=1.6)  # joint 4's range is 3.0 rad wide
    with pytest.raises(ValueError, match="too large for right_gripper"):
        JointLimits.from_embodiment(SPEC, gripper_margin=0.05)
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        JointLimits.from_embodiment(SPEC, margin=-0.1)


def test_eef_action_is_refused() -> None:
    with pytest.raises(ValueError, match="needs joint-position"):
        JointLimits.from_embodiment(load_embodiment("panda_bimanual_eef"))


def test_wrong_shapes_fail_loudly() -> None:
    f = SafetyFilter(LIMITS, DT, JUMP)
    with pytest.raises(ValueError, match="targets"):
        f.filter(MID, np.zeros(N), MID)
    with pytest.raises(ValueError, match="dq"):
        f.filter(MID, np.zeros(N - 1), MID[None])
    with pytest.raises(ValueError, match="dt"):
        SafetyFilter(LIMITS, 0.0, JUMP)
