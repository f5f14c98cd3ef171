"""The CLI's stderr console, made on first use: importing rich costs a tenth of `meterline --help`."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@cache
def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)
