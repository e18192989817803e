"""The rig calibration a serving process loads: the base-to-base transform between the arms' bases, with
what is wrong with it (missing, too old, another camera's) as sentences for its log and diagnostics.

The transform puts both arms' end effectors in one frame (the parent arm's base, see
:mod:`robot_policy.data.rig_file`), which the safety filter's rig-frame box and arm separation need
(:class:`robot_policy.runtime.controller.ControllerConfig`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from robot_policy.data.rig_file import (
    CalibrationWarning,
    FrameTransform,
    base_to_base_file,
    load_rig_base_to_base,
)


@dataclass(frozen=True)
class RigCalibrationStatus:
    """What loading a rig's calibration found: ``transform`` (None when missing), the ``file`` it read, and
    ``problems`` (one sentence each, naming the file; empty when it is fresh)."""

    transform: FrameTransform | None
    file: str
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """JSON-ready, for diagnostics."""
        tf = self.transform
        return {"file": self.file, "loaded": tf is not None, "problems": self.problems,
                **({} if tf is None else {"frames": f"T_{tf.parent}_{tf.child}", "calibrated_at": tf.calibrated_at})}


def load_rig_calibration(path: str, *, max_age_days: float | None, required: bool = False) -> RigCalibrationStatus:
    """Load the base-to-base transform of the rig at ``path`` (a calib/RIG directory or its base_to_base.yaml).
    Stale or missing: the :class:`~robot_policy.data.rig_file.CalibrationWarning` s are warned (and logged) as
    usual and also returned as ``problems``; missing with ``required``, or malformed: RigFileError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        tf = load_rig_base_to_base(path, max_age_days=max_age_days, required=required)
    problems = []
    for w in caught:
        if issubclass(w.category, CalibrationWarning):
            problems.append(str(w.message))
        # re-issued outside the capture, so the caller's warning filters still see every one
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return RigCalibrationStatus(tf, str(base_to_base_file(path)), problems)
