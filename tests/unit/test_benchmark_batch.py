"""The batch benchmark's stream and its counted run (benchmarks/bench_batch.py), without valgrind."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from meterline.benchmarks.bench_batch import source_records
from meterline.processors.enforcement import user_partition


def test_the_stream_keeps_each_user_on_one_partition_in_offset_order() -> None:
    records = source_records(2_000, partitions=8)
    offsets: dict[int, list[int]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        offsets[record.partition].append(record.offset)
        assert record.key is not None
        partition_of[record.key].add(record.partition)
        assert record.partition == user_partition(record.key, 8)
    assert all(found == list(range(len(found))) for found in offsets.values())  # 0, 1, 2, ... on each partition
    assert all(len(partitions) == 1 for partitions in partition_of.values())
    assert len({record.value for record in records}) < len(records)  # some re-sent, as the pipeline's topic


def test_the_run_callgrind_counts_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "meterline.benchmarks.bench_batch", "--process", "300", "--of", "600"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
