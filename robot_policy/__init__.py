"""robot_policy: demonstrations on two arms -> an RDT-style diffusion policy (today: scripted sim demos, training, evaluation)."""

__version__ = "0.1.0"
