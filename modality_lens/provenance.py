"""Provenance of a run: when, which toolkit commit, which library versions, which weights.

Nothing here imports a model library: versions come from package metadata.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from interp.errors import RunDirError

__all__ = ["git_commit", "library_versions", "now", "weights_hash"]

LIBRARIES = ("torch", "transformers", "nnsight", "transformer-lens", "numpy", "scipy", "pyarrow",
              "matplotlib", "pillow")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> dict[str, Any] | None:
    """Commit and dirty flag of the toolkit's own checkout, or None (installed from a wheel, no git)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata: nothing is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def weights_hash(model_dir: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` over the weight files of a model directory, for run.json's ``model.weights_hash``.

    Hashes, in name order, each ``*.safetensors`` (else ``*.bin``) file's name and bytes, so a
    renamed or moved directory keeps its hash and any changed weight changes it.

    Raises:
        RunDirError: the directory holds no weight file.
    """
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise RunDirError(f"{folder}: no *.safetensors or *.bin weight file to hash")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\n")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
