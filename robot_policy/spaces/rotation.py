"""Rotation conversions: 6D <-> matrix <-> quaternion <-> rotation vector.

All functions take arrays with arbitrary leading batch dims (``...``). Quaternions are scalar-last
``(x, y, z, w)`` unless the name says ``wxyz``. Quaternion and rotation-vector conversions go through
scipy's ``Rotation``; the 6D representation (Zhou et al. 2019, used by RDT) is not in scipy, so its two
small functions are written here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation


def _flat(x: np.ndarray, tail: tuple[int, ...], what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[x.ndim - len(tail):] != tail:
        raise ValueError(f"{what}: expected shape (..., {', '.join(map(str, tail))}), got {x.shape}")
    lead = x.shape[: x.ndim - len(tail)]
    return x.reshape((-1, *tail)), lead


def matrix_to_rot6d(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 6): first column then second column."""
    m, lead = _flat(matrix, (3, 3), "matrix_to_rot6d")
    # Columns 0 and 1, concatenated column-wise: (N, 3, 2) -> (N, 2, 3) -> (N, 6)
    out = np.swapaxes(m[:, :, :2], 1, 2).reshape(-1, 6)
    return out.reshape((*lead, 6))


def rot6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; exact inverse of ``matrix_to_rot6d`` on rotations.

    Raises ValueError when the two columns are (nearly) parallel or zero: no rotation is defined then.
    """
    r, lead = _flat(rot6d, (6,), "rot6d_to_matrix")
    a1, a2 = r[:, :3], r[:, 3:]
    n1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    if np.any(n1 < 1e-8):
        raise ValueError("rot6d_to_matrix: first column has zero norm")
    b1 = a1 / n1
    a2_perp = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    n2 = np.linalg.norm(a2_perp, axis=-1, keepdims=True)
    if np.any(n2 < 1e-8):
        raise ValueError("rot6d_to_matrix: columns are parallel")
    b2 = a2_perp / n2
    b3 = np.cross(b1, b2)
    m = np.stack([b1, b2, b3], axis=-1)  # columns -> (N, 3, 3)
    return m.reshape((*lead, 3, 3))


def canonical_quat(quat_xyzw: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Pick one of q and -q (the same rotation) so round trips compare equal: the first component of
    (w, x, y, z) that is not ~0 is made positive (w > 0 in all but the 180-degree cases)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    order = q[..., [3, 0, 1, 2]]
    first = np.argmax(np.abs(order) > eps, axis=-1)[..., None]
    sign = np.where(np.take_along_axis(order, first, axis=-1) < 0, -1.0, 1.0)
    return q * sign


def quat_to_matrix(quat_xyzw: np.ndarray) -> np.ndarray:
    """(..., 4) scalar-last quaternions (normalised on the way) -> (..., 3, 3).

    Written out rather than through scipy's Rotation: it runs in every env step's state conversion, where
    Rotation's construction costs ~40 us a call and this ~5 us (tests compare the two).
    """
    q, lead = _flat(quat_xyzw, (4,), "quat_to_matrix")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quat_to_matrix: zero-norm quaternion")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape((*lead, 3, 3))


def matrix_to_quat(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) scalar-last quaternions, canonical sign (see ``canonical_quat``)."""
    m, lead = _flat(matrix, (3, 3), "matrix_to_quat")
    return canonical_quat(Rotation.from_matrix(m).as_quat()).reshape((*lead, 4))


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle vectors (rad) -> (..., 3, 3)."""
    v, lead = _flat(rotvec, (3,), "rotvec_to_matrix")
    return Rotation.from_rotvec(v).as_matrix().reshape((*lead, 3, 3))


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) axis-angle with angle in [0, pi]."""
    m, lead = _flat(matrix, (3, 3), "matrix_to_rotvec")
    return Rotation.from_matrix(m).as_rotvec().reshape((*lead, 3))


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def _matrix_from_flat9(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m.reshape((*m.shape[:-1], 3, 3))


def _matrix_to_flat9(m: np.ndarray) -> np.ndarray:
    return np.asarray(m).reshape((*np.shape(m)[:-2], 9))


def _wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    return quat_to_matrix(wxyz_to_xyzw(np.asarray(q)))


def _matrix_to_wxyz(m: np.ndarray) -> np.ndarray:
    return xyzw_to_wxyz(matrix_to_quat(m))


ToMatrix = Callable[[np.ndarray], np.ndarray]

#: Native rotation representations an embodiment field may declare: name -> (native dim, to matrix,
#: from matrix). ``matrix`` is row-major flattened (9,).
REPRESENTATIONS: dict[str, tuple[int, ToMatrix, ToMatrix]] = {
    "quat_xyzw": (4, quat_to_matrix, matrix_to_quat),
    "quat_wxyz": (4, _wxyz_to_matrix, _matrix_to_wxyz),
    "rotvec": (3, rotvec_to_matrix, matrix_to_rotvec),
    "matrix": (9, _matrix_from_flat9, _matrix_to_flat9),
    "rot6d": (6, rot6d_to_matrix, matrix_to_rot6d),
}
