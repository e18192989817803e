"""The rig files: a camera YAML round-trips through the loader into the store's camera attributes (and
`dataset info` shows it), older stores still open, stale or foreign calibrations warn naming the file."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest
import zarr

from robot_policy.cli.main import main
from robot_policy.data.rig_file import (
    CameraCalibration,
    RigFileError,
    StaleCalibrationWarning,
    load_camera_calibration,
    load_rig_cameras,
    save_camera_calibration,
)
from robot_policy.data.store import CameraInfo, EpisodeStore
from robot_policy.spaces.embodiment import load_embodiment

SPEC = load_embodiment("panda_single_joint")
T_RIG = np.array([[0, -1, 0, 0.41], [0, 0, -1, 0.05], [1, 0, 0, 0.62], [0, 0, 0, 1]], np.float64)


def calibration(**kw: object) -> CameraCalibration:
    base = {"camera": "front", "width": 1280, "height": 720,
                "K": np.array([[910.1, 0, 652.3], [0, 912.4, 356.8], [0, 0, 1]]),
                "distortion": np.array([-0.12, 0.06, 0.0007, -0.0004, -0.015]), "distortion_model": "plumb_bob",
                "serial": "123622270136", "T_rig_camera": T_RIG, "rig_frame": "right_base",
                "calibrated_at": "2026-01-10T09:30:00+00:00", "quality": {"rms_reprojection_px": 0.15}}
    base.update(kw)
    return CameraCalibration(**base)  # type: ignore[arg-type]


def test_camera_yaml_round_trips_into_the_store_and_dataset_info(tmp_path, capsys) -> None:
    path = save_camera_calibration(tmp_path / "rig" / "front.yaml", calibration())
    cal = load_camera_calibration(path, max_age_days=None)
    np.testing.assert_array_equal(cal.K, calibration().K)
    np.testing.assert_array_equal(cal.T_rig_camera, T_RIG)
    assert (cal.rig_frame, cal.serial, cal.quality["rms_reprojection_px"]) == ("right_base", "123622270136", 0.15)
    info = cal.to_camera_info()
    with EpisodeStore.create(tmp_path / "s.zarr", SPEC, cameras={"front": info}):
        pass
    with EpisodeStore.open(tmp_path / "s.zarr") as store:
        back = store.cameras["front"]
    assert back == info
    assert back.distortion == pytest.approx((-0.12, 0.06, 0.0007, -0.0004, -0.015))
    assert (back.distortion_model, back.serial, back.calibrated_at) == ("plumb_bob", "123622270136",
                                                                        "2026-01-10T09:30:00+00:00")
    assert np.allclose(back.extrinsics, T_RIG) and np.allclose(back.intrinsics, cal.K)
    assert main(["dataset", "info", str(tmp_path / "s.zarr")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("fx 910.10", "fy 912.40", "cx 652.30", "plumb_bob", "-0.12", "0.4100", "123622270136", "2026-01-10"):
        assert text in out, text
    assert load_rig_cameras(tmp_path / "rig", max_age_days=None) == {"front": info}


def test_store_without_the_new_camera_fields_still_opens(tmp_path) -> None:
    with EpisodeStore.create(tmp_path / "old.zarr", SPEC, cameras={"front": CameraInfo(24, 32)}):
        pass
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="a")
    # what a store written before the calibration fields holds
    root.attrs["cameras"] = {"front": {"height": 24, "width": 32, "intrinsics": [[30, 0, 16], [0, 30, 12], [0, 0, 1]],
                                       "extrinsics": None}}
    with EpisodeStore.open(tmp_path / "old.zarr") as store:
        cam = store.cameras["front"]
    assert cam.intrinsics is not None and cam.distortion is None and cam.serial is None
    assert set(cam.to_dict()) == {"height", "width", "intrinsics", "extrinsics"}  # written back unchanged


def test_stale_or_foreign_calibration_warns_naming_the_file(tmp_path) -> None:
    path = save_camera_calibration(tmp_path / "front.yaml", calibration())
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    with pytest.warns(StaleCalibrationWarning, match=r"front.yaml: calibrated 141 days ago.*allowed 90 days"):
        load_camera_calibration(path, max_age_days=90, now=now)
    with pytest.warns(StaleCalibrationWarning, match=r"front.yaml: .*serial '123622270136'.*'999'"):
        load_camera_calibration(path, max_age_days=None, expected_serial="999")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_camera_calibration(path, max_age_days=200, expected_serial="123622270136", now=now)


def test_bad_camera_files_are_errors_naming_file_and_field(tmp_path) -> None:
    path = save_camera_calibration(tmp_path / "front.yaml", calibration())
    text = path.read_text()
    (tmp_path / "a.yaml").write_text(text.replace("distortion_model: plumb_bob", "distortion_model: fisheye9"))
    with pytest.raises(RigFileError, match=r"a.yaml: .*unknown distortion_model 'fisheye9'"):
        load_camera_calibration(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(text.replace("format: robot_policy/camera_calibration", "format: other"))
    with pytest.raises(RigFileError, match=r"b.yaml: format is 'other'"):
        load_camera_calibration(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text(text.replace("camera_matrix:", "camera_matrx:"))
    with pytest.raises(RigFileError, match=r"c.yaml: missing key 'camera_matrix'"):
        load_camera_calibration(tmp_path / "c.yaml")
    with pytest.raises(RigFileError, match="takes 5 finite coefficients"):
        calibration(distortion=np.zeros(4))
