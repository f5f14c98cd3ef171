"""meterline as a user installs it: a virtualenv holding a wheel of this checkout (and its extras).

Used by the CLI start-up benchmark and the SDK-alone test. The wheel is built from a copy of
the tree: setuptools leaves a build/ directory behind, and one left in the checkout would carry
files deleted since into later wheels. Dependencies come from pip's cache or PyPI.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IGNORED = (".git", ".venv", "build", "dist", "*.egg-info", "tests", "__pycache__", ".pytest_cache", ".hypothesis")


def install_checkout(scratch: Path, extras: str = "") -> Path:
    """Build this checkout's wheel in `scratch`, install it (with `extras`) in a new venv there; return the venv."""
    source, venv = scratch / "source", scratch / "venv"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_IGNORED))
    _step(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(scratch), str(source))
    (wheel,) = scratch.glob("meterline-*.whl")  # this checkout's wheel, never a package of that name on PyPI
    _step(sys.executable, "-m", "venv", str(venv))
    _step(str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[{extras}]" if extras else str(wheel))
    return venv


def _step(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def _packaged_files_digest(extras: str) -> str:
    """A digest of what goes into the wheel (the packages' folders and pyproject.toml), the extras and this Python."""
    import tomllib

    folders = sorted(set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()))
    digest = hashlib.sha256(f"{sys.version}|{extras}".encode())
    for path in [ROOT / "pyproject.toml", *sorted(file for folder in folders for file in (ROOT / folder).rglob("*")
                                                   if file.is_file() and "__pycache__" not in file.parts)]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_install(cache_dir: Path, extras: str = "") -> Path:
    """`install_checkout`, kept in `cache_dir` for as long as the packaged files are the same (a
    quick benchmark run would spend 12 of its 120 s making it again); returns the venv."""
    installs = cache_dir / "checkout-installs"
    here = installs / _packaged_files_digest(extras)
    if not (here / "complete").exists():
        shutil.rmtree(installs, ignore_errors=True)  # only one kept: each is ~100 MB
        here.mkdir(parents=True)
        install_checkout(here, extras)
        shutil.rmtree(here / "source", ignore_errors=True)
        (here / "complete").touch()
    return here / "venv"
