"""Run every benchmark module in turn: `python -m meterline.benchmarks [name ...]`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import meterline.benchmarks as package


def benchmark_names() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    names = benchmark_names()
    parser = argparse.ArgumentParser(prog="python -m meterline.benchmarks",
                                     description="Bounded benchmarks on the local stack; each prints its table.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"which to run (default: all): {', '.join(names)}")
    selected = parser.parse_args(argv).names or names
    if unknown := [name for name in selected if name not in names]:
        parser.error(f"no benchmark called {', '.join(map(repr, unknown))} (choose from {', '.join(names)})")
    for name in selected:
        print(f"\n=== bench_{name} ===", flush=True)
        importlib.import_module(f"meterline.benchmarks.bench_{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
