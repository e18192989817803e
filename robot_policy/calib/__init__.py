"""Calibration of a rig: boards (boards), synthetic ground-truth views (render), intrinsics, hand-eye,
base-to-base, RealSense factory intrinsics (realsense), coverage reports (report), robot pose inputs (poses),
and the jobs behind ``robot-policy calibrate`` (jobs). The rig files' schema, writer and loader (camera YAML ->
store CameraInfo, base-to-base, staleness checks) are :mod:`robot_policy.data.rig_file`, below every consumer."""
