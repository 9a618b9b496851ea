"""Where a number came from: git commit and package versions."""
from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

PACKAGES = ("torch", "numpy", "diffusers", "transformers", "torch-fidelity", "open_clip_torch", "duckdb", "ray", "negguide-bench")


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with '+dirty' for local edits."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():  # installed from a wheel: not a checkout of ours
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
