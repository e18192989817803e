"""Calibration: intrinsics, hand-eye, base-to-base."""
