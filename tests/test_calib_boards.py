"""Boards as data: the YAML definitions, printable images at true scale, and detection on a flat board."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from robot_policy.calib.boards import (
    BoardError,
    available_boards,
    board_image,
    detect,
    load_board,
    printed_square_m,
)
from robot_policy.cli.main import main


def test_shipped_boards_load() -> None:
    names = available_boards()
    assert {"charuco_5x7_a4", "charuco_8x11_a3", "chessboard_9x6_a4"} <= set(names)
    b = load_board("charuco_5x7_a4")
    assert (b.squares_x, b.squares_y, b.square_length_m, b.marker_length_m) == (5, 7, 0.035, 0.026)
    assert b.corner_points().shape == (24, 3)


def test_bad_boards_name_the_problem(tmp_path) -> None:
    with pytest.raises(BoardError, match="unknown board 'nope'.*charuco_5x7_a4"):
        load_board("nope")
    bad = tmp_path / "b.yaml"
    bad.write_text("kind: charuco\nsquares_x: 5\nsquares_y: 7\nsquare_length_m: 0.03\nmarker_length_m: 0.04\n")
    with pytest.raises(BoardError, match="marker_length_m must be in"):
        load_board(bad)
    bad.write_text("kind: charuco\nsquares_x: 5\nsquares_y: 7\nsquare_length_m: 0.03\nmarker_lenght_m: 0.02\n")
    with pytest.raises(BoardError, match="unknown key.*marker_lenght_m"):
        load_board(bad)


@pytest.mark.parametrize("name", ["charuco_5x7_a4", "chessboard_9x6_a4"])
def test_detection_on_a_flat_board_is_subpixel(name: str) -> None:
    b = load_board(name)
    img = cv2.GaussianBlur(board_image(b, 40, margin_px=20), (0, 0), 0.8)
    d = detect(b, img)
    assert d is not None and len(d) == len(b.corner_points())
    expected = d.object_points[:, :2] / b.square_length_m * 40 + 20 - 0.5  # pattern edge at margin - 0.5 px
    if b.kind == "chessboard":  # a chessboard's corner order may start from either end
        flipped = expected[::-1]
        expected = flipped if np.abs(d.image_points - flipped).mean() < np.abs(d.image_points - expected).mean() \
            else expected
    assert np.abs(d.image_points - expected).max() < 0.3


def test_board_command_writes_true_scale_png(tmp_path, capsys) -> None:
    out = tmp_path / "board.png"
    assert main(["calibrate", "board", "board=charuco_5x7_a4", f"out={out}", "dpi=150", "margin_mm=10"]) == 0
    img = Image.open(out)
    dpi = img.info["dpi"]
    assert round(dpi[0]) == 150
    b = load_board("charuco_5x7_a4")
    sq = printed_square_m(b, 150)
    assert abs(sq - 0.035) < 0.0254 / 150  # rounded to whole dots
    w_px = img.size[0]
    assert abs(w_px / 150 * 0.0254 - (5 * sq + 2 * 0.01)) < 2 * 0.0254 / 150
    assert detect(b, np.asarray(img)) is not None
    assert "printed_square_mm" in capsys.readouterr().out
