"""CLI start-up: whole-process wall time of `meterline` commands, beside a bare Python start.

    python -m meterline.benchmarks cli      # or `make bench`; ~1 minute

The commands run from a virtualenv made for the purpose, with meterline installed from a wheel
of this checkout with the `cli` extra, as a user installs it (pip's cache or PyPI provide the
dependencies). A development install is slower to start: its editable-install finder and its
hundred other packages add ~0.1 s to every command. A quick run keeps that virtualenv in the
cache directory until the packaged files change (`installed.cached_install`). Each command runs RUNS times, alternating
with that virtualenv's `python -c pass` (the floor no command can go under on this machine);
the table gives medians, and each command's median ratio to the floor over adjacent pairs. The full LiteLLM book is imported from the repository's copy of LiteLLM's
real map (tests/data/litellm), then quoted twice: once with an empty cache (the first quote
after the book changes), then from the parsed-book cache.

Targets (issue 13): `meterline --help` and `pricing quote` <= 0.3 s with the shipped files,
`pricing quote` <= 0.5 s with the full LiteLLM book.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from meterline.benchmarks.installed import ROOT, cached_install, install_checkout
from meterline.benchmarks.results import Figure
from meterline.settings import load_settings

RUNS = 9
LITELLM_MAP = ROOT / "tests" / "data" / "litellm" / "model_prices_and_context_window.json"
QUOTE = ["pricing", "quote", "--model", "claude-sonnet-4", "--input-tokens", "1200", "--output-tokens", "340"]


def _seconds(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return time.perf_counter() - start


def main(quick: bool = False) -> list[Figure]:
    runs = 3 if quick else RUNS
    with tempfile.TemporaryDirectory() as scratch:
        bin_dir = (cached_install(load_settings().cache_dir, "cli") if quick else install_checkout(Path(scratch), "cli")) / "bin"
        meterline = str(bin_dir / "meterline")
        floor_command = [str(bin_dir / "python"), "-c", "pass"]
        # A cache of its own, so the first quote of the book really starts cold.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")},
               "METERLINE_CACHE_DIR": str(Path(scratch) / "cache"), "METERLINE_HOME": str(Path(scratch) / "home")}
        cases: dict[str, tuple[list[str], float]] = {
            "meterline --help": ([meterline, "--help"], 0.3),
            "pricing quote (shipped files)": ([meterline, *QUOTE], 0.3),
        }
        cold = None
        if LITELLM_MAP.exists():
            book = Path(scratch) / "litellm-prices.yaml"
            subprocess.run([meterline, "pricing", "import-litellm", str(LITELLM_MAP), "--output", str(book)], env=env,
                           check=True, capture_output=True, timeout=120)
            quote_book = [meterline, *QUOTE, "--prices", str(book)]
            cold = _seconds(quote_book, env)
            cases["pricing quote (full LiteLLM book, cached)"] = (quote_book, 0.5)
        times: dict[str, list[float]] = {name: [] for name in cases}
        floors: list[float] = []
        for _ in range(runs):
            floors.append(_seconds(floor_command, env))
            for name, (command, _target) in cases.items():
                times[name].append(_seconds(command, env))
    floor = statistics.median(floors)
    print(f"CLI start-up, whole process, median of {runs} alternating runs; bare `python -c pass`: {floor:.3f} s")
    print(f"{'command':<44}{'median s':>10}{'vs python':>11}{'target s':>10}")
    figures = []
    for name, (_command, target) in cases.items():
        median = statistics.median(times[name])
        ratio = statistics.median(own / base for own, base in zip(times[name], floors))
        print(f"{name:<44}{median:>10.3f}{ratio:>10.1f}x{target:>10.1f}  {'OK' if median <= target else 'MISSED'}")
        figures.append(Figure(f"start-up: {name}", median, "s", "python -c pass", ratio, f"<= {target} s", median <= target))
    if cold is not None:
        print(f"{'pricing quote (full LiteLLM book, first run)':<44}{cold:>10.3f}   (parses the YAML, fills the cache)")
    else:
        print(f"(LiteLLM's map is not at {LITELLM_MAP}: run from a checkout for the full-book figure)")
    return figures


if __name__ == "__main__":
    main()
