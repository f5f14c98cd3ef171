"""The figures a benchmark measured, and the record of a run: `bench/results/latest.json` and `latest.md`.

Each benchmark's `main(quick)` prints its own table and returns its headline figures; the runner
(`__main__.py`) writes them, with the machine they were measured on, so runs can be compared later.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path("bench/results")
QUICK_NOTE = ("A quick run: less data, one run of each, on a broker of its own with no initial rebalance delay "
              "(a user's broker waits 3 s for more members of a new group: add it to every start-up figure).")
PROFILE_PATH = RESULTS_DIR / "profile-worker.txt"  # a worker's py-spy stacks, raw: flamegraph.pl or speedscope draw them


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    versus: str = ""  # the ceiling or peer measured beside it, in the same run
    ratio: float | None = None  # value / versus (rates: higher is better; times: lower is better)
    target: str = ""  # as the issue states it, e.g. ">= 100,000 rows/s"
    met: bool | None = None  # None: no target


def percentile(values: list[float], level: float) -> float:
    """The value at `level` (0.99: p99) of those measured; NaN when none was."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(level * len(ordered)))] if ordered else float("nan")


def run_benchmark(name: str, quick: bool) -> list[Figure]:
    """Run `bench_<name>.main`: here, not in __main__.py, so a spawned process can find it."""
    return importlib.import_module(f"meterline.benchmarks.bench_{name}").main(quick=quick)


def machine() -> dict[str, object]:
    """Cores, memory and CPU model: a figure means little without them."""
    model, memory = platform.processor() or "unknown", 0
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        pass
    return {"cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1), "cpu": model,
            "python": platform.python_version(), "system": platform.platform()}


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _json_value(value: object) -> object:
    # NaN is not JSON: a figure that could not be measured is null.
    return None if isinstance(value, float) and math.isnan(value) else value


def markdown(started: datetime, quick: bool, figures: dict[str, list[Figure]], about: dict[str, object]) -> str:
    lines = [f"# meterline benchmarks, {started:%Y-%m-%d %H:%M} UTC{' (--quick)' if quick else ''}", "",
             *([QUICK_NOTE, ""] if quick else []),
             f"Machine: {about['cores']} cores, {about['memory_gib']} GiB, {about['cpu']}; Python {about['python']}.", "",
             "| benchmark | figure | value | unit | ceiling or peer | ratio | target | met |",
             "|---|---|---:|---|---|---:|---|---|"]
    for benchmark, found in figures.items():
        for figure in found:
            met = {True: "yes", False: "**no**", None: ""}[figure.met]
            ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}x"
            lines.append(f"| {benchmark} | {figure.name} | {_number(figure.value)} | {figure.unit} | {figure.versus} | "
                         f"{ratio} | {figure.target} | {met} |")
    missed = [(benchmark, figure) for benchmark, found in figures.items() for figure in found if figure.met is False]
    if missed:
        lines += ["", "## Targets missed" + (" (a quick run: rough figures, judge on a full one)" if quick else ""), ""]
        lines += [f"- {benchmark}: {figure.name}: {_number(figure.value)} {figure.unit} against {figure.target}"
                  f"{shortfall(figure)}" for benchmark, figure in missed]
        lines += ["", "Where the time goes: the load benchmark's tables of CPU per part and of a worker's py-spy "
                      f"sample (raw stacks in {PROFILE_PATH})."]
    return "\n".join(lines) + "\n"


def shortfall(figure: Figure) -> str:
    """How far from its target a figure is, as a ratio to the target's number (none found: nothing)."""
    found = re.search(r"\d[\d,]*(\.\d+)?", figure.target)
    bound = float(found[0].replace(",", "")) if found else 0.0
    if not bound:
        return ""
    ratio = figure.value / bound
    return f" ({ratio:.2f}x the floor)" if figure.target.startswith(">=") else f" ({ratio:.2f}x the limit)"


def write(started: datetime, quick: bool, figures: dict[str, list[Figure]], directory: Path = RESULTS_DIR) -> Path:
    """Write latest.json and latest.md into `directory`; return the JSON's path."""
    directory.mkdir(parents=True, exist_ok=True)
    about = machine()
    record = {"started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(), "quick": quick,
              "machine": about,
              "figures": [{"benchmark": benchmark, **{key: _json_value(value) for key, value in asdict(figure).items()}}
                          for benchmark, found in figures.items() for figure in found]}
    path = directory / "latest.json"
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (directory / "latest.md").write_text(markdown(started, quick, figures, about), encoding="utf-8")
    return path
