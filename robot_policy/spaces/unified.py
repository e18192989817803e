"""The unified 128-d state/action space (RDT's layout, configs/state_vec.py there).

State and action share one layout. Units are SI (m, rad, m/s, rad/s); a gripper's opening is min-max
scaled to [0, 1] with 1 = fully open. Slots an embodiment does not use hold 0, and a 0/1 mask of 128
says which slots are real. A single-arm robot uses the right-arm slots.

Slot table (right arm; the left arm is the same layout shifted by ``LEFT_OFFSET`` = 50):

====== ==========================================================================
0-9    arm joint positions (rad)
10-14  gripper joint positions (10 = gripper open amount in [0, 1])
15-24  arm joint velocities (rad/s)
25-29  gripper joint velocities
30-32  end-effector position (m, robot base frame)
33-38  end-effector rotation, 6D: first two columns of the rotation matrix
39-41  end-effector linear velocity (m/s); delta-pose actions go here
42-44  end-effector angular velocity (rad/s)
45-49  reserved
====== ==========================================================================

100-102 hold the mobile base velocity (x, y in m/s, yaw rate in rad/s); 95-99 and 103-127 are reserved.
"""

from __future__ import annotations

from typing import Final

import numpy as np

UNIFIED_DIM: Final = 128
LEFT_OFFSET: Final = 50

# Per-arm block: name -> (start, stop) relative to the arm's first slot.
_ARM_BLOCKS: Final[dict[str, tuple[int, int]]] = {
    "arm_joint_pos": (0, 10),
    "gripper_joint_pos": (10, 15),
    "gripper_open": (10, 11),
    "arm_joint_vel": (15, 25),
    "gripper_joint_vel": (25, 30),
    "eef_pos": (30, 33),
    "eef_rot6d": (33, 39),
    "eef_lin_vel": (39, 42),
    "eef_ang_vel": (42, 45),
}


def _build_slots() -> dict[str, slice]:
    slots: dict[str, slice] = {}
    for side, offset in (("right", 0), ("left", LEFT_OFFSET)):
        for block, (start, stop) in _ARM_BLOCKS.items():
            slots[f"{side}_{block}"] = slice(offset + start, offset + stop)
    slots["base_vel"] = slice(100, 103)
    return slots


#: Named regions of the unified vector. ``gripper_open`` is the first slot of ``gripper_joint_pos``.
SLOTS: Final[dict[str, slice]] = _build_slots()

#: Slots no embodiment may write.
RESERVED: Final[tuple[slice, ...]] = (slice(45, 50), slice(95, 100), slice(103, 128))


def slot(name: str) -> slice:
    """Return the index range of a named slot region; an unknown name lists the valid ones."""
    try:
        return SLOTS[name]
    except KeyError:
        raise KeyError(f"unknown unified slot {name!r}; valid slots: {', '.join(SLOTS)}") from None


def slot_width(name: str) -> int:
    s = slot(name)
    return s.stop - s.start


def describe_index(index: int) -> str:
    """Human-readable name of one unified index, for error messages: ``'left_eef_pos[2]'``."""
    if not 0 <= index < UNIFIED_DIM:
        raise IndexError(f"unified index {index} outside [0, {UNIFIED_DIM})")
    # Prefer the finest region: gripper_open over gripper_joint_pos.
    best: tuple[int, str] | None = None
    for name, s in SLOTS.items():
        if s.start <= index < s.stop:
            width = s.stop - s.start
            if best is None or width < best[0]:
                best = (width, f"{name}[{index - s.start}]")
    if best is not None:
        return best[1]
    return f"reserved[{index}]"


def is_reserved(index: int) -> bool:
    return any(s.start <= index < s.stop for s in RESERVED)


def mask_from_indices(indices: list[int] | np.ndarray) -> np.ndarray:
    """A (128,) float32 mask with ones at ``indices``."""
    mask = np.zeros(UNIFIED_DIM, dtype=np.float32)
    mask[np.asarray(indices, dtype=np.int64)] = 1.0
    return mask
