"""A bundle's ``manifest.json``: the sha256 of every file in the bundle and the versions that wrote it.

A bundle is checked against its manifest before anything in it is read: a file whose bytes differ from
the manifest's hash, or a listed file that is missing, is a :class:`BundleError` naming the file. Files
that the manifest does not list are never read (the loader reads only the names the manifest lists).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "robot_policy.bundle/1"
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A deploy bundle that is missing, damaged or from another format; the message names the file."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    """A directory whose ``manifest.json`` says it is a deploy bundle (it may still fail verification). Any
    other manifest.json (a web app's, a dataset's) is not one: ``export overwrite=true`` deletes bundles only."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("format") == BUNDLE_FORMAT)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def write_manifest(root: Path, versions: dict[str, str], source: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under ``root`` (recursively; paths relative, '/'-separated) into ``root/manifest.json``."""
    files = {p.relative_to(root).as_posix(): file_sha256(p)
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": BUNDLE_FORMAT, "files": files, "versions": versions, "source": source}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the bundle at ``root``, after checking every file it lists against its hash."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: not a deploy bundle (no {MANIFEST}; write one with robot-policy export)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {got!r}, expected {BUNDLE_FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: lists no files")
    for name, digest in files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the bundle's manifest but missing")
        if file_sha256(file) != digest:
            raise BundleError(f"{file}: content does not match the bundle's manifest (sha256 {digest[:12]}... "
                              "expected); the bundle was modified or damaged after export, refusing to load it")
    return manifest


def bundle_file(root: Path, manifest: dict[str, Any], name: str) -> Path:
    """A verified file of the bundle; a name the manifest does not list is an error."""
    if name not in manifest["files"]:
        raise BundleError(f"{root}: the manifest lists no {name}")
    return root / name
