"""The outage spool: an append-only, durable, bounded FIFO of events on local disk.

Layout (one directory, shared by every meter on the machine):

    <dir>/<segment>.spool    records, one per line: ``<crc32 hex> <key> <value JSON>\\n``
    <dir>/<segment>.offset   bytes of the segment already acknowledged by Kafka (absent = 0)

A meter appends to its own segment (named by a UUIDv7, so names sort by creation time) and
holds an exclusive `flock` on every segment it owns. A new meter adopts every segment no live
process holds - the ones an earlier, stopped or crashed process left - and replays them in name
order before its own. Reading never moves the committed offset; only `commit()` does, after
Kafka acknowledged the whole batch, so a crash at any point replays the batch again rather than
losing it (the duplicates are harmless: the processors dedupe on request id).

Durability: each append is one write() to the OS, so it survives a crash of the process as
soon as `append` returns. Surviving a crash of the machine needs fsync: ``always`` before append
returns, ``interval`` at most `fsync_interval` seconds later, ``never`` leaves it to the OS.
A torn last line (the machine died mid-write) fails its checksum and is dropped on adoption;
its `append` had not returned, so no caller was told the event was safe.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meterline.producers.request_ids import new_request_id
from meterline.producers.exceptions import SpoolError, SpoolFullError

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
Record = tuple[bytes, bytes]  # (Kafka key, event JSON)
SEGMENT_BYTES = 64 * 1024 * 1024  # a new segment after this many bytes, so replayed ones can be deleted


@dataclass
class _Segment:
    path: Path
    fd: int  # open read-write and flock'ed while we own it
    size: int  # bytes of complete records
    committed: int  # bytes acknowledged by Kafka
    pending: int  # records after `committed`


@dataclass(frozen=True)
class Batch:
    """Records read from one segment, from its committed offset up to `end`."""

    segment: Path
    records: list[Record] = field(repr=False)
    end: int


class Spool:
    """A directory of segment files; thread-safe. See the module docstring for the guarantees.

    Args:
        directory: where segments live (created if missing). Setting METERLINE_SPOOL_DIR.
        max_bytes: bound on the segments this spool owns; `append` raises SpoolFullError past it.
        fsync: "always", "interval" or "never" (see above).
        fsync_interval: seconds between fsyncs under "interval".
    """

    def __init__(self, directory: Path, max_bytes: int, fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0):
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []  # oldest first; the last one may be our active one
        self._active: _Segment | None = None
        self._dirty: set[int] = set()
        self._last_sync = time.monotonic()
        self._left_behind: int | None = None  # set by close(): events left for the next meter
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # events are the customer's data
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {directory}: {error}", directory) from error
        self.adopt()

    # -- ownership ---------------------------------------------------------------------------

    def adopt(self) -> int:
        """Take over segments no live process holds (left by a stopped one); return records found."""
        found = 0
        with self._lock:
            owned = {segment.path for segment in self._segments}
            for path in sorted(self.directory.glob("*.spool")):
                if path in owned:
                    continue
                segment = self._try_lock(path)
                if segment is not None:
                    self._segments.append(segment)
                    found += segment.pending
            self._segments.sort(key=lambda s: (s is self._active, s.path.name))
        if found:
            log.warning("spool %s: adopted %d unsent event(s) from an earlier process", self.directory, found)
        return found

    def _try_lock(self, path: Path) -> _Segment | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None  # another process finished it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # a live meter owns it
        if os.fstat(fd).st_nlink == 0:  # deleted by its owner between our open and our lock
            os.close(fd)
            return None
        committed = self._read_offset(path)
        size, pending = self._scan(fd, path, committed)
        return _Segment(path, fd, size, committed, pending)

    @staticmethod
    def _read_offset(path: Path) -> int:
        try:
            return int(path.with_suffix(".offset").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def _scan(fd: int, path: Path, committed: int) -> tuple[int, int]:
        """Count complete records after `committed`; cut a torn tail."""
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        end, pending = committed, 0
        while end < len(data):
            newline = data.find(b"\n", end)
            if newline < 0 or _decode(data[end:newline]) is None:
                log.warning("spool %s: dropping a torn record at byte %d (written during a crash)", path, end)
                break
            end, pending = newline + 1, pending + 1
        if end < len(data):
            os.ftruncate(fd, end)
        return end, pending

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Append records at the end, all or none; raise SpoolFullError past `max_bytes`."""
        lines = b"".join(_encode(key, value) for key, value in records)
        with self._lock:
            used = self.size_bytes
            if used + len(lines) > self.max_bytes:
                raise SpoolFullError(self.directory, used, self.max_bytes, len(lines))
            try:
                segment = self._active
                if segment is None or segment.size >= SEGMENT_BYTES:
                    segment = self._new_segment()
                written = os.pwrite(segment.fd, lines, segment.size)
            except OSError as error:  # disk full, permissions: the caller must hear of it, as a SpoolError
                raise SpoolError(f"cannot write the spool in {self.directory}: {error}", self.directory) from error
            if written != len(lines):
                os.ftruncate(segment.fd, segment.size)
                raise SpoolError(f"short write to {segment.path} (disk full?)", segment.path)
            segment.size += written
            segment.pending += len(records)
            self._dirty.add(segment.fd)
            if self.fsync == "always" or (
                self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval
            ):
                self.sync()

    def _new_segment(self) -> _Segment:
        # Created under another name and locked before it is renamed: another process adopting
        # "*.spool" files can never lock it first.
        path = self.directory / f"{new_request_id()}.spool"
        creating = path.with_suffix(".new")
        fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(creating, path)
        self._active = _Segment(path, fd, 0, 0, 0)
        self._segments.append(self._active)
        if self.fsync != "never":
            _fsync_dir(self.directory)
        return self._active

    def sync(self) -> None:
        """fsync every segment written since the last sync (called by the policy, flush and close)."""
        with self._lock:
            for fd in self._dirty:
                os.fsync(fd)
            self._dirty.clear()
            self._last_sync = time.monotonic()

    def sync_if_due(self) -> None:
        """Under the "interval" policy, fsync when the interval has passed (the SDK's thread calls this)."""
        if self.fsync == "interval" and self._dirty and time.monotonic() - self._last_sync >= self.fsync_interval:
            self.sync()

    # -- replaying ---------------------------------------------------------------------------

    def read(self, max_records: int) -> Batch | None:
        """The oldest unacknowledged records (at most `max_records`, from one segment), or None."""
        with self._lock:
            for segment in self._segments:
                if segment.pending == 0:
                    continue
                data = os.pread(segment.fd, min(segment.size - segment.committed, 8 * 1024 * 1024), segment.committed)
                records: list[Record] = []
                end = segment.committed
                for line in data.split(b"\n")[:-1]:  # the last piece is empty or a partial record
                    decoded = _decode(line)
                    if decoded is None:
                        raise SpoolError(f"corrupt record at byte {end} of {segment.path}", segment.path)
                    records.append(decoded)
                    end += len(line) + 1
                    if len(records) >= max_records:
                        break
                return Batch(segment.path, records, end)
            return None

    def commit(self, batch: Batch) -> None:
        """Mark `batch` acknowledged by Kafka; delete its segment once all of it is."""
        with self._lock:
            segment = next(s for s in self._segments if s.path == batch.segment)
            segment.pending -= len(batch.records)
            segment.committed = batch.end
            if segment.pending == 0:  # all of it is in Kafka; the next append starts a new segment
                self._remove(segment)
                return
            offset = segment.path.with_suffix(".offset")
            temporary = offset.with_suffix(".offset.tmp")
            temporary.write_text(str(segment.committed))
            os.replace(temporary, offset)

    def _remove(self, segment: _Segment) -> None:
        # Unlink while holding the lock: an adopter that opened it before re-checks st_nlink.
        segment.path.with_suffix(".offset").unlink(missing_ok=True)
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)
        self._dirty.discard(segment.fd)
        self._segments.remove(segment)
        if segment is self._active:
            self._active = None

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events in the spool not yet acknowledged by Kafka (after close: left for the next meter)."""
        with self._lock:
            if self._left_behind is not None:
                return self._left_behind
            return sum(segment.pending for segment in self._segments)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in the segments this spool owns (what `max_bytes` bounds)."""
        with self._lock:
            return sum(segment.size for segment in self._segments)

    def close(self) -> None:
        """fsync and release the segments; what is left stays on disk for the next meter."""
        with self._lock:
            self.sync()
            self._left_behind = sum(segment.pending for segment in self._segments)
            for segment in list(self._segments):
                if segment.pending == 0 and segment.size == segment.committed:
                    self._remove(segment)
                else:
                    os.close(segment.fd)
            self._segments.clear()
            self._active = None


def _encode(key: bytes, value: bytes) -> bytes:
    if b" " in key or b"\n" in key or b"\n" in value:
        raise ValueError("spool records need a key without spaces or newlines and one-line JSON")
    body = key + b" " + value
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> Record | None:
    """(key, value) from one line, or None if the line is torn or corrupt."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
    except ValueError:
        return None
    key, _, value = body.partition(b" ")
    return key, value


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
