"""meterline as a user installs it: a virtualenv holding a wheel of this checkout (and its extras).

Used by the CLI start-up benchmark and the SDK-alone test. The wheel is built from a copy of
the tree: setuptools leaves a build/ directory behind, and one left in the checkout would carry
files deleted since into later wheels. Dependencies come from pip's cache or PyPI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install_checkout(scratch: Path, extras: str = "") -> Path:
    """Build this checkout's wheel in `scratch`, install it (with `extras`) in a new venv there; return the venv."""
    source, venv = scratch / "source", scratch / "venv"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "tests",
                                                                 "__pycache__", ".pytest_cache", ".hypothesis"))
    _step(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(scratch), str(source))
    (wheel,) = scratch.glob("meterline-*.whl")  # this checkout's wheel, never a package of that name on PyPI
    _step(sys.executable, "-m", "venv", str(venv))
    _step(str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[{extras}]" if extras else str(wheel))
    return venv


def _step(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
