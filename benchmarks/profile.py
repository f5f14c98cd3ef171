"""Where the time goes: CPU seconds per process, and a py-spy sample of a running worker.

py-spy samples a live process from outside (no change to the worker, ~1 % overhead at 100 Hz
with --nonblocking). Its raw output is one line per distinct stack, "frame;frame;... count",
each frame "function (file:line)", outermost first; only stacks on a CPU are sampled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime and stime: fields 14 and 15 of stat(5)


def start_sampling(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` for `seconds` into `output` (raw); None where py-spy is not installed."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
                             "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_ENTRY_MODULES = {"__main__", "worker"}  # the worker's start-up frames, under everything its event loop runs
_PROJECT = Path(__file__).resolve().parents[1]  # an editable install runs the project's own folders


def _part(file: str) -> str:
    """The library or meterline package a frame's file belongs to; the stdlib module otherwise."""
    path = Path(file)
    if "site-packages" in path.parts:
        parts = path.parts[path.parts.index("site-packages") + 1:]
    elif path.is_relative_to(_PROJECT):
        parts = ("meterline", *path.relative_to(_PROJECT).parts)
    else:  # the standard library: its package (asyncio, json) or module (decimal)
        return path.stem if path.parent.name.startswith("python3") else path.parent.name
    return ".".join(parts[:2] if parts[0] == "meterline" else parts[:1]).removesuffix(".py")


def summarize(raw: Path, top: int = 12) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(package, share of samples spent in its own code)], [(meterline function, share of
    samples it is on the stack)]), largest first."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [match for frame in stack.split(";") if (match := _FRAME.match(frame))]
        if not frames:
            continue
        own[_part(frames[-1]["file"]) or "(no Python frame)"] += count
        ours = {f"{Path(m['file']).stem}.{m['function']}" for m in frames
                if _part(m["file"]).startswith("meterline") and Path(m["file"]).stem not in _ENTRY_MODULES}
        for function in ours:
            within[function] += count
    if not samples:
        return 0, [], []
    return (samples, [(name, n / samples) for name, n in own.most_common(top)],
            [(name, n / samples) for name, n in within.most_common(top)])
