"""Topic and service names and their QoS (DESIGN.md, "Runtime and deployment")."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

JOINT_STATES = "/joint_states"
#: per arm: the topic interface of ros2_control's joint_trajectory_controller
TRAJECTORY = "/{arm}_controller/joint_trajectory"
#: per arm: end-effector pose in the robot base frame, from the arm driver's forward kinematics
EEF_POSE = "/{arm}/eef_pose"
#: the task's object state vector (Float64MultiArray), from perception or, in simulation, the simulator
OBJECT_STATE = "/object_state"
ESTOP = "/policy/estop"
DIAGNOSTICS = "/diagnostics"
SIM_RESET = "/sim/reset"
SIM_STATUS = "/sim/status"

#: sensor streams: best effort, newest only (a late sample is worth nothing to a controller)
SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
#: commands: reliable, a short queue
COMMAND_QOS = QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: the e-stop: reliable and transient local, so a node that starts late still sees a latched stop
ESTOP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
