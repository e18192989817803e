"""The ``robot-policy`` verbs."""
