"""The safety filter between the policy and the arms: joint limits with a margin, velocity, acceleration and
braking bounds, NaN/Inf and first-jump rejection, an optional end-effector box, and ruckig stops.

``limits`` builds the per-dimension limits from an embodiment; ``filter`` is the forward pass and the
:class:`SafetyFilter` (its module docstring states the guarantees); ``braking`` the stops; ``workspace`` the
end-effector boxes.
"""

from robot_policy.runtime.safety.braking import brake_trajectory, can_stop, stoppable_speed
from robot_policy.runtime.safety.filter import (
    FilterResult,
    Intervention,
    LimitedChunk,
    SafetyFilter,
    limit_chunk,
)
from robot_policy.runtime.safety.limits import JointLimits
from robot_policy.runtime.safety.workspace import ForwardKinematics, Workspace, WorkspaceBox

__all__ = ["FilterResult", "ForwardKinematics", "Intervention", "JointLimits", "LimitedChunk", "SafetyFilter",
           "Workspace", "WorkspaceBox", "brake_trajectory", "can_stop", "limit_chunk", "stoppable_speed"]
