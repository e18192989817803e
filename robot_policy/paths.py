"""Where the repository's data directories are, resolved once from the package location.

The package is installed editable (``pip install -e .``), so ``configs/``, ``sim/`` and ``datasets/``
sit beside it. ``ROBOT_POLICY_ROOT`` overrides the root (a deployed checkout elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(os.environ.get("ROBOT_POLICY_ROOT", Path(__file__).resolve().parents[1]))
CONFIG_DIR = REPO_ROOT / "configs"
SIM_DIR = REPO_ROOT / "sim"
DATASETS_DIR = REPO_ROOT / "datasets"
CALIB_DIR = REPO_ROOT / "calib"
