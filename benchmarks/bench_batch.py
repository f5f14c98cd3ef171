"""The worker's own work per event, without Kafka or Faust, in instructions.

    python -m meterline.benchmarks batch      # or `make bench`; ~70 s (--quick: ~40 s)

`BatchProcessor.process` over the pipeline benchmark's kind of stream (power-law users, re-sent
ids), in batches of 600 (what the 50 ms timer gathers at ~11,000 events/s), each touched user's
state read back and written as the engine does (processors/app.py, `Engine.apply`). What is left
out is Faust's share and Kafka's: bench_pipeline's do-nothing agent measures those. The same
step is timed in bench_accounts (with and without the accounts).

On this shared machine a time per event moves by +-20 % from one minute to the next. Counted by
valgrind's callgrind (Debian's `valgrind`, which `make bench` installs), the instructions an event
costs do not: two runs with the same hash seed agree to a few hundred in ~200,000, so a change of
1 % in the engine's own cost shows. Two processes make the same stream and process a different
number of its events: the difference in instructions, per event, leaves out start-up, imports and
making the stream.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from meterline.benchmarks.bench_pipeline import usage_stream
from meterline.benchmarks.results import Figure
from meterline.pricing.catalogue import default_catalogue
from meterline.pricing.rating import default_rater
from meterline.processors.accounts import Accounts
from meterline.processors.app import keep_full_collections_rare
from meterline.processors.batch import BatchProcessor, SourceRecord
from meterline.processors.enforcement import user_partition
from meterline.processors.state import WrittenStates
from meterline.settings import load_settings

BATCH = 600
# Two stream lengths for the instruction count (the second minus the first, per event).
COUNTED = (3_000, 9_000)
QUICK_COUNTED = (1_000, 3_000)
PER_MILLISECOND = 20  # records Kafka stamps with the same millisecond, as at ~20,000 events/s


def source_records(events: int, partitions: int) -> list[SourceRecord]:
    """The stream as the worker reads it: each user's records in order on the user's partition."""
    offsets = [0] * partitions
    start = round(time.time(), 3)
    records = []
    for n, (key, value, _resent) in enumerate(usage_stream(events)):
        partition = user_partition(key, partitions)
        records.append(SourceRecord(partition, offsets[partition], key, value, start + n // PER_MILLISECOND / 1000))
        offsets[partition] += 1
    return records


def process_all(records: list[SourceRecord], partitions: int) -> None:
    """What Engine.apply does with the records, batch by batch, minus Faust and Kafka."""
    processor = BatchProcessor(default_rater(), Accounts(default_catalogue(), "free", {}), "bench",
                               35 * 86_400, 10_000_000)
    for partition in range(partitions):
        processor.load(partition, [])
    store: dict[bytes, bytes] = {}
    written = WrittenStates()
    now = records[-1].timestamp or 0.0
    for start in range(0, len(records), BATCH):
        result = processor.process(records[start:start + BATCH], lambda key: written.read(key, store.get(key)), now=now)
        for key, (_partition, state) in result.states.items():
            stored = store[key] = bytes(memoryview(state.to_bytes()))  # as tables.put stores it
            written.wrote(key, stored, state)
        now += BATCH / 10_000


def _instructions(events: int, made: int) -> int:
    """Instructions callgrind counts for a process that makes `made` events and processes `events` of them."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
               "meterline.benchmarks.bench_batch", "--process", str(events), "--of", str(made)]
    done = subprocess.run(command, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True,
                          timeout=900, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {done.stderr[-500:]}")
    return int(found.group(1))


def instructions_per_event(counted: tuple[int, int]) -> float:
    with ThreadPoolExecutor(2) as pool:
        fewer, more = pool.map(_instructions, counted, [counted[1]] * 2)
    return (more - fewer) / (counted[1] - counted[0])


def main(quick: bool = False) -> list[Figure]:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed, so nothing is counted (`make bench` installs it; Debian: apt-get install valgrind)")
        return []
    counted = QUICK_COUNTED if quick else COUNTED
    per_event = instructions_per_event(counted)
    print(f"The worker's own work (BatchProcessor.process, batches of {BATCH}, states read back and written): "
          f"{per_event:,.0f} instructions per event (callgrind: {counted[1]:,} events minus {counted[0]:,})")
    return [Figure("batch logic: instructions per event", per_event, "instructions/event")]


def _counted_run(events: int, made: int) -> None:
    """The process callgrind counts: `made` records made, the first `events` processed, nothing else."""
    partitions = load_settings().partitions
    records = source_records(made, partitions)
    keep_full_collections_rare()  # as a worker does at start
    process_all(records[:events], partitions)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--process", type=int, help="only process this many events (of --of made): what callgrind counts")
    parser.add_argument("--of", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.process is None:
        main()
    else:
        _counted_run(arguments.process, max(arguments.of, arguments.process))
