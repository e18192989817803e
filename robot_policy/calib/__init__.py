"""Calibration of a rig: boards (boards), synthetic ground-truth views (render), intrinsics, hand-eye,
base-to-base, RealSense factory intrinsics (realsense), coverage reports (report), robot pose inputs (poses),
the rig files and their loader (rig_file: camera YAML -> store CameraInfo, staleness check), and the jobs
behind ``robot-policy calibrate`` (jobs)."""
