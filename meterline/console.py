"""The CLI's stderr console, made on first use.

rich when it is installed (the `cli` and `server` extras bring it); the SDK alone
(`pip install meterline`, whose only command is `emit`) prints the same lines as plain text.
Importing rich also costs a tenth of `meterline --help`, so nothing imports it before a command runs.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from typing import Any, Protocol

# The markup our messages use; a literal "[1, 2]" in a message is left alone.
_MARKUP = re.compile(r"\[/?(?:red|yellow|green|bold)\]")


class Printer(Protocol):
    def print(self, *objects: Any, **options: Any) -> None: ...


class PlainConsole:
    """`rich.console.Console.print` for text, without rich: markup removed, to standard error."""

    def print(self, *objects: Any, **_options: Any) -> None:
        print(*(_MARKUP.sub("", str(item)) for item in objects), file=sys.stderr)


@cache
def stderr_console() -> Printer:
    try:
        from rich.console import Console
    except ModuleNotFoundError:
        return PlainConsole()
    return Console(stderr=True, soft_wrap=True)  # a message stays one line: logs and grep read it whole
