"""The outage spool: FIFO, durable across restarts, bounded, one owner per segment."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from meterline.producers.exceptions import SpoolError, SpoolFullError
from meterline.producers.spool import Spool

MB = 1024 * 1024


def records(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    return [(b"acme/u-%d" % (i % 3), b'{"id":"r%d"}' % i) for i in range(start, stop)]


def drain(spool: Spool) -> list[tuple[bytes, bytes]]:
    """Read and commit everything, as a successful replay would."""
    seen = []
    while (batch := spool.read(7)) is not None:
        seen.extend(batch.records)
        spool.commit(batch)
    return seen


def test_records_come_back_in_order_and_committed_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    spool.append(records(0, 10))
    spool.append(records(10, 25))
    assert spool.pending == 25
    assert drain(spool) == records(0, 25)
    assert spool.pending == 0 and list(tmp_path.iterdir()) == []


def test_a_new_spool_replays_what_a_closed_one_left_from_its_committed_offset(tmp_path: Path) -> None:
    first = Spool(tmp_path, 10 * MB)
    first.append(records(0, 20))
    batch = first.read(5)
    assert batch is not None
    first.commit(batch)  # 5 delivered before the "process" stopped
    first.close()
    second = Spool(tmp_path, 10 * MB)
    assert second.pending == 15
    second.append(records(20, 22))  # new events queue behind the adopted ones
    assert drain(second) == records(5, 22)


def test_a_live_owner_keeps_its_segment(tmp_path: Path) -> None:
    owner = Spool(tmp_path, 10 * MB)
    owner.append(records(0, 3))
    other = Spool(tmp_path, 10 * MB)
    assert other.pending == 0 and other.read(10) is None
    owner.close()
    assert other.adopt() == 3 and drain(other) == records(0, 3)


def test_another_process_adopting_at_creation_cannot_take_a_new_segment(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    creator, adopter = Spool(tmp_path, 10 * MB), Spool(tmp_path, 10 * MB)
    real_flock = fcntl.flock

    def adopt_first(fd: int, operation: int) -> None:  # the adopter runs between create and lock
        monkeypatch.setattr(fcntl, "flock", real_flock)
        adopter.adopt()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", adopt_first)
    creator.append(records(0, 3))  # would raise SpoolError if the adopter had locked the segment
    assert adopter.pending == 0 and creator.pending == 3 and drain(creator) == records(0, 3)


def test_a_torn_last_record_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    spool.append(records(0, 4))
    spool.close()
    (segment,) = tmp_path.glob("*.spool")
    with open(segment, "ab") as file:
        file.write(b"1234abcd acme/u-1 {\"id\":\"tor")  # the machine died mid-write
    assert drain(Spool(tmp_path, 10 * MB)) == records(0, 4)


def test_the_bound_raises_a_clear_error_and_keeps_what_was_accepted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 2000)
    spool.append(records(0, 40))
    with pytest.raises(SpoolFullError) as caught:
        spool.append(records(40, 80))
    assert caught.value.max_bytes == 2000 and "METERLINE_SPOOL_MAX_BYTES" in str(caught.value)
    assert drain(spool) == records(0, 40)
    spool.append(records(40, 80))  # room again once replayed


# fsyncs for 3 appends: "always" syncs each, plus the directory entry of the new segment;
# "interval" (1 h here) only that directory entry until the interval passes; "never" none.
@pytest.mark.parametrize(("policy", "expected"), [("always", 4), ("interval", 1), ("never", 0)])
def test_fsync_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, expected: int) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    spool = Spool(tmp_path, 10 * MB, fsync=policy, fsync_interval=3600)  # type: ignore[arg-type]
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    for i in range(3):
        spool.append(records(i, i + 1))
    assert len(synced) == expected
    spool.close()  # close always syncs what is dirty
    assert len(synced) == expected + (1 if policy != "always" else 0)


def test_an_os_error_while_spooling_is_a_spool_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20, "never", 1.0)

    def disk_full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    with pytest.raises(SpoolError, match="No space left"):
        spool.append([(b"k", b"v")])
