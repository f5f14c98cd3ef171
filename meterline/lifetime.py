"""A child process that does not outlive the process that started it.

A worker started by a supervisor or a benchmark, left running after its parent was SIGKILLed,
keeps its port (the next start refuses it) and its CPU (the next benchmark's figures drift).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0  # after the SIGTERM: a clean stop that hangs ends here


def stop_with_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """Send this process SIGTERM (its clean stop) once `parent_pid` is no longer its parent, and
    exit past STOP_GRACE_SECONDS if it is still running; returns the watching thread (a daemon)."""

    def watch() -> None:
        while os.getppid() == parent_pid:  # a dead parent's children are adopted: the parent id changes
            time.sleep(interval)
        log.warning("process %d, which started this one, is gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_SECONDS)
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
