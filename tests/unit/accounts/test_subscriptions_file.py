"""Subscription files: YAML and CSV, every problem with its line, histories, the applicable subscription."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from meterline.pricing.catalogue import default_catalogue
from meterline.schemas.subscription import BEGINNING, Subscription, effective_subscription
from meterline.subscriptions import SubscriptionFileError, read_file


# An org on Pro then Enterprise, and one of its users on Free of their own (also used on the real broker).
TWO_SUBSCRIBERS = """\
subscriptions:
  - org_id: acme
    plan: pro
    since: 2026-01-31T09:30:00+02:00
    stripe_customer_id: cus_Abc123
    changes:
      - {plan: enterprise, at: "2026-03-15T00:00:00Z"}
  - org_id: acme
    user_id: alice
    plan: free
    since: 2028-02-29T00:00:00Z
"""


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SubscriptionFileError) as caught:
        read_file(path, default_catalogue())
    return [str(problem) for problem in caught.value.problems]


def test_a_yaml_file_gives_each_subscriber_its_history(tmp_path: Path) -> None:
    path = write(tmp_path, "subs.yaml", TWO_SUBSCRIBERS)
    org, alice = read_file(path, default_catalogue())
    assert org.subscriber_key == "acme" and alice.subscriber_key == "acme/alice"
    assert org.since == utc(2026, 1, 31, 7, 30)  # kept as the UTC instant
    assert org.plan_at(utc(2026, 3, 14, 23, 59)) == "pro"
    assert org.plan_at(utc(2026, 3, 15)) == "enterprise"  # a change applies from its instant on
    assert org.plan_at(utc(2026, 1, 1)) is None
    assert Subscription.model_validate_json(org.to_json()) == org  # what the topic carries round-trips


def test_every_problem_of_a_yaml_file_is_listed_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", """\
subscriptions:
  - org_id: acme
    plan: prp
    since: 2026-01-31T00:00:00Z
  - org_id: "a/b"
    plan: pro
    since: 2026-01-31
    colour: red
  - org_id: beta
    plan: pro
    since: 2026-01-31T00:00:00Z
    changes:
      - {plan: pro-annual, at: "2026-03-15T00:00:00Z"}
  - org_id: gamma
    plan: pro
    since: 2026-01-31T00:00:00Z
    changes:
      - {plan: free, at: "2025-03-15T00:00:00Z"}
  - org_id: acme
    plan: free
    since: 2026-05-01T00:00:00Z
  - org_id: delta
    plan: free
    since: 2026-05-01T00:00:00Z
    stripe_customer_id: "12345"
""")
    found = problems(path)
    assert "line 2: plan: unknown plan 'prp'; did you mean 'pro'?" in found
    assert "line 5: org_id: must be 1 to 256 characters, none of them '/', whitespace or a control character" in found
    assert "line 5: since: Input should have timezone info" in found
    assert "line 5: colour: unknown key" in found
    assert any(p.startswith("line 9: changes: mixes billing intervals (month, year)") for p in found)
    assert any(p.startswith("line 14: changes: change 1 (at 2025-03-15T00:00:00+00:00) must come after") for p in found)
    assert any(p.startswith("line 19: org_id/user_id: 'acme' is already subscribed on line 2") for p in found)
    assert "line 22: stripe_customer_id: must be a Stripe customer id: cus_ then 1 to 255 letters or digits" in found


def test_a_csv_file_turns_a_subscribers_rows_into_its_plan_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "subs.csv", "org_id,user_id,plan,since,anchor\n"
                                        "acme,,pro,2026-01-31T00:00:00Z,\n"
                                        "acme,bob,free,2026-01-01T00:00:00Z,2026-01-05T00:00:00Z\n"
                                        "acme,bob,pro,2026-02-10T00:00:00Z,\n")
    org, bob = read_file(path, default_catalogue())
    assert org.user_id is None and org.plan == "pro" and not org.changes
    assert bob.plans == ("free", "pro") and bob.changes[0].at == utc(2026, 2, 10)
    assert bob.billing_anchor == utc(2026, 1, 5)


@pytest.mark.parametrize(("text", "expected"), [
    ("org_id,plan\nacme,pro\n", "line 1: header: column 'since' is required"),
    ("org_id,plan,since,colour\nacme,pro,2026-01-01T00:00:00Z,red\n", "line 1: header: unknown column 'colour'"),
    ("org_id,user_id,plan,since\nacme,bob,pro,2026-01-01T00:00:00Z,extra\n", "line 2: row: has 5 fields, the header 4"),
    ("org_id,user_id,plan,since,anchor\nacme,bob,free,2026-01-01T00:00:00Z,\n"
     "acme,bob,pro,2026-02-10T00:00:00Z,2026-02-01T00:00:00Z\n",
     "line 3: anchor: only the subscriber's first row (line 2) may set it"),
    ("org_id,plan,since\nacme,gold,2026-01-01T00:00:00Z\n", "line 2: plan: unknown plan 'gold'"),
])
def test_every_problem_of_a_csv_file_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems(write(tmp_path, "subs.csv", text)))


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("subs.yaml", b"subscriptions: [\n", "not valid YAML"),
    ("subs.yaml", b"", "is empty"),
    ("subs.yaml", b"- org_id: acme\n", "must be a mapping with a `subscriptions:` list"),
    ("subs.yaml", b"subscriptions: 3\nplans: []\n", "unknown key (only `subscriptions`)"),
    ("subs.yaml", b"\xff\xfe\x00binary", "is not UTF-8 text"),
    ("subs.csv", b"org_id,plan,since\n\xff,pro,x\n", "is not UTF-8 text"),
])
def test_a_file_that_is_no_subscription_list_is_one_clear_problem(tmp_path: Path, name: str, content: bytes,
                                                                  expected: str) -> None:
    assert any(expected in problem for problem in problems(write(tmp_path, name, content)))


def test_a_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    assert any("cannot read" in problem for problem in problems(tmp_path / "nowhere.yaml"))


def test_the_users_own_subscription_wins_then_the_orgs_then_the_default_plan() -> None:
    org = Subscription(org_id="acme", plan="pro", since=utc(2026, 1, 1))
    alice = Subscription(org_id="acme", user_id="alice", plan="enterprise", since=utc(2026, 6, 1))
    known = {"acme": org, "acme/alice": alice}
    assert effective_subscription("acme", "alice", known, "free", utc(2026, 7, 1)) == alice
    assert effective_subscription("acme", "alice", known, "free", utc(2026, 5, 1)) == org  # hers starts later
    assert effective_subscription("acme", "bob", known, "free", utc(2026, 7, 1)) == org
    default = effective_subscription("beta", "carol", known, "free", utc(2026, 7, 1))
    assert default.plan == "free" and default.since == BEGINNING
    assert effective_subscription("acme", "bob", known, "free", utc(2025, 12, 31)).since == BEGINNING


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["subs.yaml", "subs.csv"]))
def test_any_bytes_give_subscriptions_or_listed_problems(content: bytes, name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory), name, content)
        try:
            read_file(path, default_catalogue())
        except SubscriptionFileError as error:
            assert error.problems and all(str(problem).startswith("line ") for problem in error.problems)
