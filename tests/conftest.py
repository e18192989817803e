"""Shared pytest setup: headless rendering, and markers that skip themselves where the thing is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# MuJoCo renders headless through EGL (Mesa's llvmpipe on CPU machines); set before any test imports it.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _has_rclpy() -> bool:
    try:
        import rclpy  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core machine: a second thread mostly waits (up to 25x slower under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {
        "gpu": (_has_cuda, "needs a CUDA device (none on this machine)"),
        "ros": (_has_rclpy, "needs rclpy (ROS 2 is not installed here)"),
        "hardware": (lambda: bool(os.environ.get("ROBOT_POLICY_HARDWARE")),
                     "needs a robot or camera; set ROBOT_POLICY_HARDWARE=1 on a rig"),
    }
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (probe, why) in skips.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=why))
