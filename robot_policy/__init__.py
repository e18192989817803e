"""robot_policy: demonstrations on two arms -> an RDT-style diffusion policy.

Today: scripted sim demonstrations, training, evaluation in pybullet and robosuite.
"""

__version__ = "0.1.0"
