"""Frozen pretrained encoders come from a local directory only: these helpers make the two ways that can
fail (no ``transformers``, no checkpoint on disk) say so plainly. Nothing here reaches a model hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def require_transformers(what: str) -> Any:
    """Import ``transformers`` lazily (it is an optional dependency) or explain what needs it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"{what} needs the 'transformers' package: pip install transformers "
                          f"(weights are still read only from a local path)") from e
    return transformers


def require_local_dir(path: str | None, key: str) -> Path:
    """A checkpoint directory that must already exist on disk; ``key`` names the config field for errors."""
    if not path:
        raise ValueError(f"{key}: a local checkpoint directory is required (nothing is fetched from a hub)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{key}: {str(p)!r} is not a directory; put the checkpoint there first")
    return p
