"""Run every benchmark module in turn: `python -m meterline.benchmarks [--quick] [name ...]`.

Each prints its table; the figures they return are written to bench/results/latest.json and
latest.md (results.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone

from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

import meterline.benchmarks as package
from meterline.lifetime import stop_with_parent
from meterline.benchmarks.results import Figure, run_benchmark, write
from meterline.settings import load_settings
from meterline.stack import free_port, stack_down


@contextmanager
def quick_stack() -> Iterator[None]:
    """A quick run's own broker, in a home of its own, with no initial rebalance delay (as the tests'):
    each of its ~15 group joins would otherwise wait Kafka's 3 s for more members. The benchmarks
    start it (stack_up) and inherit it through the environment; it is stopped and removed at the end."""
    home = tempfile.mkdtemp(prefix="meterline-bench-quick-")
    quick = {"METERLINE_HOME": home, "METERLINE_KAFKA_PORT": str(free_port()),
             "METERLINE_KAFKA_CONTROLLER_PORT": str(free_port()), "METERLINE_KAFKA_INITIAL_REBALANCE_DELAY_MS": "0"}
    before = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        stack_down(load_settings())
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(home, ignore_errors=True)


def benchmark_names() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))


def _in_fresh_process(name: str, quick: bool) -> list[Figure]:
    """Each benchmark in a process of its own: chDB opens one data directory per process, and one
    benchmark's threads, heap and producers would weigh on the next one's figures."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=stop_with_parent,
                             initargs=(os.getpid(),)) as pool:  # a killed runner leaves no benchmark running
        return pool.submit(run_benchmark, name, quick).result()


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
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer runs on a broker of its own: a smoke "
                                                             "run of about 2 minutes, its figures rougher")
    args = parser.parse_args(argv)
    selected = args.names or names
    if unknown := [name for name in selected if name not in names]:
        parser.error(f"no benchmark called {', '.join(map(repr, unknown))} (choose from {', '.join(names)})")
    with quick_stack() if args.quick else nullcontext():
        return run(selected, args.quick)


def run(selected: list[str], quick: bool) -> int:
    console = Console()
    started, began = datetime.now(timezone.utc), time.monotonic()
    figures: dict[str, list[Figure]] = {}
    failed = []
    for done, name in enumerate(selected):
        _where(console, done, len(selected), began, name)
        one_began = time.monotonic()
        try:
            figures[name] = _in_fresh_process(name, quick)
            console.print(f"benchmark {name}: {time.monotonic() - one_began:,.0f} s")
        except Exception as error:  # noqa: BLE001 - one benchmark's failure is reported, the others still run
            console.print(f"[red]benchmark {name} failed after {time.monotonic() - one_began:,.0f} s: "
                          f"{type(error).__name__}: {error}[/red]")
            failed.append(name)
        path = write(started, quick, figures)  # after each one: a stopped run keeps what it measured
    console.rule()
    console.print(f"{len(selected)} benchmarks in {time.monotonic() - began:,.0f} s; figures in {path} and {path.with_suffix('.md')}")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
