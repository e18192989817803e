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


def available_configs(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs in ``configs/<group>/``."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def resolve_config(group: str, name_or_path: str | Path, config_dir: Path = CONFIG_DIR,
                   error: type[Exception] = KeyError) -> Path:
    """``configs/<group>/<name>.yaml``, or ``name_or_path`` itself when it is a YAML path.

    An unknown name raises ``error`` listing the configs of the group.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = config_dir / group / f"{name_or_path}.yaml"
    if not path.exists():
        raise error(f"unknown {group} {str(name_or_path)!r}; available: "
                    f"{', '.join(available_configs(group, config_dir))}")
    return path
