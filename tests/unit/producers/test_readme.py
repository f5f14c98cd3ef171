"""The README's hand-written event (for kcat and other languages) stays valid."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from meterline.schemas import parse_event

README = Path(__file__).parents[3] / "producers" / "README.md"


def test_the_documented_kcat_event_parses() -> None:
    text = README.read_text()
    (document,) = re.findall(r"<<'EOF'\n(.*?)\nEOF", text, flags=re.S)
    event = parse_event(document, now=datetime(2025, 2, 1, tzinfo=timezone.utc))
    key = re.search(r"-k (\S+)", text)
    assert key is not None and key.group(1) == event.user_key
    assert "partitioner=murmur2_random" in text
