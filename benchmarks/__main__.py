"""Run every benchmark module in turn: `python -m meterline.benchmarks [--quick] [name ...]`.

Each prints its table; the figures they return are written to bench/results/latest.json and
latest.md (results.py).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from datetime import datetime, timezone

from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

import meterline.benchmarks as package
from meterline.benchmarks.results import Figure, write


def benchmark_names() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))


def _where(console: Console, done: int, total: int, began: float, name: str) -> None:
    """A bar of the benchmarks done so far (a static line: each benchmark draws its own spinners)."""
    line = Table.grid(padding=(0, 1))
    line.add_row(f"benchmark {done + 1}/{total}: {name}", ProgressBar(total=total, completed=done, width=30),
                 f"{time.monotonic() - began:,.0f} s so far")
    console.rule()
    console.print(line)


def main(argv: list[str]) -> int:
    names = benchmark_names()
    parser = argparse.ArgumentParser(prog="python -m meterline.benchmarks",
                                     description="Bounded benchmarks on the local stack; each prints its table, and the "
                                                 "figures go to bench/results/latest.json and latest.md.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"which to run (default: all): {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer runs: a smoke run of a few minutes, "
                                                             "its figures rougher")
    args = parser.parse_args(argv)
    selected = args.names or names
    if unknown := [name for name in selected if name not in names]:
        parser.error(f"no benchmark called {', '.join(map(repr, unknown))} (choose from {', '.join(names)})")
    console = Console()
    started, began = datetime.now(timezone.utc), time.monotonic()
    figures: dict[str, list[Figure]] = {}
    for done, name in enumerate(selected):
        _where(console, done, len(selected), began, name)
        figures[name] = importlib.import_module(f"meterline.benchmarks.bench_{name}").main(quick=args.quick)
        path = write(started, args.quick, figures)  # after each one: a stopped run keeps what it measured
    console.rule()
    console.print(f"{len(selected)} benchmarks in {time.monotonic() - began:,.0f} s; figures in {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
