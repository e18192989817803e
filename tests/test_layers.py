"""The layer contracts of DESIGN.md (pyproject's [tool.importlinter]) hold: data flows one way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed: it comes with the test extra (pip install -e '.[test]')")
    return exe


def test_layer_contracts_are_kept() -> None:
    result = subprocess.run([_lint_imports(), "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_backwards_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: a copy of the package where ``policies`` imports ``envs`` is rejected."""
    shutil.copytree(ROOT / "robot_policy", tmp_path / "robot_policy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    base = tmp_path / "robot_policy" / "policies" / "base.py"
    base.write_text(base.read_text() + "\nfrom robot_policy.envs import base as _backwards  # noqa: E402,F401\n")
    result = subprocess.run([_lint_imports(), "--no-cache"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert result.returncode != 0
    assert "robot_policy.policies.base -> robot_policy.envs" in result.stdout
