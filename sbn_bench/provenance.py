"""Where a result came from (STYLE 7): the source commit, package versions, platform and file hashes.

One copy, used by run manifests, training manifests and reports. Imports nothing of sbn_bench but
its version.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sbn_bench.version import __version__

PACKAGES = ("torch", "numpy", "pandas", "click")
"""Third-party packages whose versions a manifest records."""


@functools.cache
def git_commit(start: str | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding the package (or ``start``), or None."""
    where = start or str(Path(__file__).resolve().parent)
    try:
        r = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and out else None


def package_versions() -> dict[str, str | None]:
    """``{"sbn_bench": …, "torch": …, "numpy": …, "pandas": …, "click": …}`` (None if absent)."""
    out: dict[str, str | None] = {"sbn_bench": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform, package versions and commit, for a manifest."""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "packages": package_versions(), "git_commit": git_commit()}


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
