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


@functools.cache
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``'s ``model name`` on Linux, e.g. ``"AMD EPYC
    7B13"``; elsewhere :func:`platform.processor`, else the machine type such as ``"x86_64"``).

    The processor kind matters for reproducibility: torch's CPU kernels (and the BLAS beneath them)
    choose their instructions by processor, and sums then round differently in their last bits;
    such a difference grows in a sampled training until the trained networks differ (README,
    "Reproducible")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here (``torch.backends.cpu.get_cpu_capability()``,
    e.g. ``"AVX2"``, ``"AVX512"``; ``ATEN_CPU_CAPABILITY`` lowers it), or ``"unknown"``."""
    try:
        import torch  # only here: this module imports nothing heavy at import time

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old or unusual torch: the record says so
        return "unknown"


def processor_label(cpu: str, capability: str | None = None) -> str:
    """``"<model> (<instruction set>)"``, or the model alone where the instruction set is unknown:
    how manifests' processors are shown (report headers, resumed runs, study cells)."""
    return f"{cpu} ({capability})" if capability and capability != "unknown" else cpu


def processor() -> str:
    """This machine's :func:`processor_label`."""
    return processor_label(cpu_model(), cpu_capability())


def environment() -> dict[str, Any]:
    """Python, platform, processor (model and torch's instruction set), package versions and
    commit, for a manifest."""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_model(), "cpu_capability": cpu_capability(),
            "packages": package_versions(), "git_commit": git_commit()}


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def file_record(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """``{"path": absolute path, "sha256": …}``: how a manifest records a file a run used (a
    plugin), so that a rerun or resume can tell it changed."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
