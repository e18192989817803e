"""Teleoperation devices and the recorder into the episode store."""
