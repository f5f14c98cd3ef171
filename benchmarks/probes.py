"""Emit -> balance freshness: a probe user's balance, watched while events are emitted to it.

A probe's freshness is its emit -> the first answer from the balance API that counts it. The
balance is polled every POLL_SECONDS (each read costs a worker ~0.5 ms of CPU, and the period is
the figure's resolution), or read from its server-sent event stream.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from meterline.client import get_balance

POLL_SECONDS = 0.01


class ProbeWatch:
    def __init__(self, worker_url: str, token: str, org: str, user: str, stream: bool = False):
        self._url, self._token, self._org, self._user = worker_url, token, org, user
        self.emitted: list[float] = []  # monotonic instants, appended by the emitter
        self.latencies: list[float] = []
        self._shown = 0
        self._done = threading.Event()
        self._stop_at = float("inf")
        self._grace = 0.0
        self._thread = threading.Thread(target=self._read_stream if stream else self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = 0.0) -> None:
        """Stop once every probe emitted is shown, or `grace` seconds from now; probes not shown by then are missing."""
        self._grace, self._stop_at = grace, time.monotonic()
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(grace + 30)

    def _seen(self, count: int) -> None:
        """The balance now counts `count` probes: each newly shown one's latency is now."""
        now = time.monotonic()
        while self._shown < min(count, len(self.emitted)):
            self.latencies.append(now - self.emitted[self._shown])
            self._shown += 1

    def _finished(self) -> bool:
        return self._done.is_set() and (self._shown >= len(self.emitted) or time.monotonic() - self._stop_at > self._grace)

    def _poll(self) -> None:
        while not self._finished():
            try:
                self._seen(get_balance(self._url, self._token, self._org, self._user)["events"])
            except OSError:
                pass  # not served this moment (a rebalance): the next read tells
            time.sleep(POLL_SECONDS)

    def _read_stream(self) -> None:
        url = f"{self._url}/v1/orgs/{self._org}/users/{self._user}/balance/stream"  # urllib follows the 307 to the owner
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            for line in response:
                if line.startswith(b"data: "):
                    self._seen(json.loads(line[6:]).get("events", self._shown))
                if self._finished():
                    return
