"""Corrections end to end on the real broker and chDB: from the SDK and the CLI, applied once to the
balance, stored in the warehouse as the corrected version, and kept in its audit trail.

Expected credits are written out here: gpt-4o-mini with no action costs (input + output tokens) / 1000.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.cli import main
from meterline.pricing.config import default_path
from meterline.producers import Meter, build_event
from meterline.settings import Settings
from tests.integration.pipeline import read_topic, running_pipeline, stop, wait_for

ORG = "org-corrections"
MODEL = "gpt-4o-mini"


def test_a_void_and_an_amend_change_the_balance_once_and_the_warehouse_keeps_the_trail(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    for name, value in {"BOOTSTRAP": settings.kafka_bootstrap, "HOME": str(settings.home),
                        "USAGE_TOPIC": settings.usage_topic}.items():
        monkeypatch.setenv(f"METERLINE_{name}", value)
    with running_pipeline(settings) as pipeline, Meter(settings) as meter:
        for request_id, tokens in (("r1", 1000), ("r2", 2000), ("r3", 300)):
            meter.send(build_event(ORG, "erin", MODEL, tokens, 0, request_id=request_id))
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["applied"] == 3), pipeline.stats()

        assert meter.void(ORG, "erin", "r1", reason="the app billed a failed call", correction_id="c-1") == "c-1"
        meter.void(ORG, "erin", "r1", reason="the app billed a failed call", correction_id="c-1")  # a retry
        meter.flush()
        amend = ["corrections", "amend", ORG, "--user", "erin", "--request-id", "r2", "--input-tokens", "500",
                 "--reason", "ticket 12: tokens double-counted", "--id", "c-2"]
        assert main(amend) == 0
        assert main(["corrections", "void", ORG, "--user", "erin", "--request-id", "r1", "--reason", "again"]) == 0
        assert main(["corrections", "void", ORG, "--user", "erin", "--request-id", "never-sent", "--reason", "x"]) == 0
        # Refused before anything is sent.
        assert main(["corrections", "amend", ORG, "--user", "erin", "--request-id", "r2", "--reason", "nothing"]) == 2
        assert wait_for(lambda: pipeline.stats()["dead_lettered"] == 2), pipeline.stats()
        stats = pipeline.stats()
        assert (stats["corrections"], stats["duplicate_corrections"]) == (2, 1), stats

        expected = (Decimal(500) + Decimal(300)) / 1000
        erin = pipeline.balance(ORG, "erin")
        assert (Decimal(erin["credits_used"]), erin["events"], Decimal(erin["used"])) == (expected, 2, expected)

        letters = read_topic(settings, settings.dead_letter_topic, expected=2)
        reasons = sorted(dict(m.headers())["meterline.reason"].decode() for m in letters)
        assert "voided by correction 'c-1'" in reasons[1] and "never counted" in reasons[0], reasons

        def stored() -> list[tuple]:
            return pipeline.warehouse.query((
                "SELECT request_id, input_tokens, credits FROM rated_events FINAL WHERE org_id = {org:String} "
                "ORDER BY request_id", {"org": ORG}))

        assert wait_for(lambda: len(stored()) == 2 and stored()[0][1] == 500), stored()
        assert [(r, tokens, credits) for r, tokens, credits in stored()] == [
            ("r2", 500, Decimal("0.5")), ("r3", 300, Decimal("0.3"))]
        (total,) = pipeline.warehouse.query((
            "SELECT sum(credits) FROM rated_events FINAL WHERE org_id = {org:String}", {"org": ORG}))[0]
        assert total == expected  # the warehouse holds what the balance counts
        trail = pipeline.warehouse.query((
            "SELECT request_id, revision, status, input_tokens, correction_id, correction_reason FROM usage_corrections FINAL "
            "WHERE org_id = {org:String} ORDER BY request_id, revision, status", {"org": ORG}))
        assert [tuple(row) for row in trail] == [
            ("r1", 0, "superseded", 1000, "c-1", "the app billed a failed call"),
            ("r1", 1, "voided", 1000, "c-1", "the app billed a failed call"),
            ("r2", 0, "superseded", 2000, "c-2", "ticket 12: tokens double-counted"),
            ("r2", 1, "amended", 500, "c-2", "ticket 12: tokens double-counted")]


def test_a_correction_reads_back_an_event_from_an_earlier_batch_after_a_restart(
        make_settings: Callable[..., Settings]) -> None:
    """The event is in no batch the new worker has seen: it is read back from Kafka by its offset."""
    settings = make_settings()
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        meter.send(build_event(ORG, "fay", MODEL, 4000, 0, request_id="f1"))
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["applied"] == 1), pipeline.stats()
        pipeline.kill_worker()
        pipeline.start_worker()
        pipeline.wait_until_serving()
        meter.amend(ORG, "fay", "f1", reason="provider refund", output_tokens=1000)
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["corrections"] == 1), pipeline.stats()
        fay = pipeline.balance(ORG, "fay")
        assert (Decimal(fay["credits_used"]), fay["events"]) == (Decimal(5), 1), json.dumps(fay)


def test_a_void_after_a_price_change_takes_back_what_the_old_price_book_charged(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The worker restarts with credits doubled; the void of an event counted before takes back the old amount."""
    settings = make_settings()
    doubled = tmp_path / "plans.yaml"
    doubled.write_text(default_path("plans.yaml").read_text().replace("per_1k_tokens: 1\n", "per_1k_tokens: 2\n"))
    with running_pipeline(settings) as pipeline, Meter(settings) as meter:
        for request_id in ("p1", "p2"):
            meter.send(build_event(ORG, "gil", MODEL, 1000, 0, request_id=request_id))
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["applied"] == 2), pipeline.stats()
        stop(pipeline.worker)
        pipeline.settings = settings.model_copy(update={"plans": doubled})
        pipeline.start_worker()
        meter.send(build_event(ORG, "gil", MODEL, 1000, 0, request_id="p3"))  # 2 credits under the new book
        meter.void(ORG, "gil", "p1", reason="refund")
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["corrections"] == 1), pipeline.stats()
        assert pipeline.stats()["price_books"] == 2
        gil = pipeline.balance(ORG, "gil")
        assert (Decimal(gil["credits_used"]), gil["events"]) == (Decimal(1) + Decimal(2), 2), json.dumps(gil)

        def versions() -> list[tuple]:
            return pipeline.warehouse.query((
                "SELECT request_id, status, credits, price_version FROM usage_corrections FINAL "
                "WHERE org_id = {org:String} AND user_id = 'gil' ORDER BY revision", {"org": ORG}))

        assert wait_for(lambda: len(versions()) == 2), versions()
        (_r, _s, _c, old), (_r1, voided, credits, same) = versions()
        assert (voided, credits, same) == ("voided", Decimal(1), old)  # taken back at the price it was charged
        assert wait_for(lambda: pipeline.warehouse.query((
            "SELECT sum(credits) FROM rated_events FINAL WHERE org_id = {org:String} AND user_id = 'gil'",
            {"org": ORG}))[0][0] == Decimal(3))
