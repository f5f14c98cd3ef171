"""Run every benchmark module in turn: `python -m meterline.benchmarks [name ...]`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import meterline.benchmarks as package


def main(names: list[str]) -> int:
    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))
    selected = [m for m in modules if not names or m.removeprefix("bench_") in names or m in names]
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"meterline.benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
