"""robot_policy: from teleoperated demonstrations on two arms to a policy running on the robot."""

__version__ = "0.1.0"
