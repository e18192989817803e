"""Calibration (intrinsics, hand-eye, base-to-base): not built yet."""
