"""A worker without accounts: the engine as it was before cycles, plans and alerts, for the benchmarks' ratio.

`python -m meterline.benchmarks.without_accounts` runs the real worker (settings from METERLINE_
variables) with `Accounts` replaced by `NoAccounts`, which places every event nowhere: no
subscription lookup, no cycle, no alert. Everything else - decode, rate, dedupe, state records,
rated topic, changelogs - is the worker's own. Never for production: balances have no cycle.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from meterline.processors.accounts import Accounts, Placement


class NoAccounts(Accounts):
    """Places every event nowhere: no subscription lookup, no cycle, no alert."""

    NOWHERE = Placement("", datetime(1970, 1, 1, tzinfo=timezone.utc), False)

    def place(self, *_args: Any, **_kwargs: Any) -> tuple[Placement, None]:  # type: ignore[override]
        return self.NOWHERE, None

    def correct(self, *_args: Any, **_kwargs: Any) -> tuple[Placement, None]:  # type: ignore[override]
        return self.NOWHERE, None

    def alerts(self, *_args: Any, **_kwargs: Any) -> list[Any]:  # type: ignore[override]
        return []


def main() -> None:
    import meterline.processors.app as worker_app
    from meterline.processors.worker import run_worker

    worker_app.Accounts = NoAccounts  # type: ignore[misc]  # the one change: the engine builds these
    run_worker()


if __name__ == "__main__":
    main()
