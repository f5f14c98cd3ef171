import hashlib
import hmac
import time

import pytest

from meterline.auth import (ORG_KEY_REQUIRED, REFUSED, REVOKED, balance_refusal, operator_key, org_key, org_key_refusal,
                            user_token)

SECRET = "s3cret"
NOW = 1_800_000_000.0
LATER = int(NOW) + 3600


def allowed(presented: str, org: str = "acme", user: str = "u1", secret: str = SECRET, now: float = NOW) -> bool:
    return balance_refusal(secret, presented, org, user, now) is None


def test_an_org_key_reads_its_own_users_only():
    key = org_key(SECRET, "acme")
    assert allowed(key) and allowed(key, user="u2")
    assert not allowed(key, org="globex")


def test_a_user_token_reads_only_that_user():
    token = user_token(SECRET, "acme", "u1", LATER)
    assert allowed(token)
    assert not allowed(token, user="u2")
    assert not allowed(token, org="acme2")


def test_a_user_token_expires_and_its_expiry_cannot_be_moved():
    token = user_token(SECRET, "acme", "u1", LATER)
    assert allowed(token, now=LATER - 1)
    assert balance_refusal(SECRET, token, "acme", "u1", LATER) == "this user token has expired: ask for a new one"
    issued, _expiry, signature = token.removeprefix("mlu_").split(".")
    extended = f"mlu_{issued}.{LATER + 10**6}.{signature}"  # a later expiry with the old signature
    assert balance_refusal(SECRET, extended, "acme", "u1", LATER) == REFUSED


@pytest.mark.parametrize("presented", ["", "mlu_", "mlu_.", "mlu_123", "mlu_x.abc", "mlu_١٢٣.abc", "mlu_" + "9" * 40 + ".ab",
                                       "mlk_é", "Bearer", "mlu_-5.00", "mlk_", "mlk_.", "mlk_1.", "mlk_١.ab", "mlu_1.2.3.4",
                                       "mlk_" + "9" * 4000 + ".ab", "mlu_1..ab"])
def test_malformed_credentials_are_refused_not_errors(presented):
    assert balance_refusal(SECRET, presented, "acme", "u1", NOW) == REFUSED


def test_keys_depend_on_the_secret():
    assert not allowed(org_key(SECRET, "acme"), secret="other")
    assert not allowed(user_token(SECRET, "acme", "u1", LATER), secret="other")


def test_the_operator_key_opens_no_balance():
    assert not allowed(operator_key(SECRET))


def test_keys_command_refuses_ids_that_could_collide(capsys):
    from meterline.cli import main

    assert main(["keys", "a/b", "--user", "c"]) == 2
    assert "org id 'a/b'" in capsys.readouterr().err


def test_keys_command_prints_the_key_the_worker_checks(monkeypatch, capsys):
    from meterline.cli import main

    monkeypatch.setenv("METERLINE_API_SECRET", SECRET)
    assert main(["keys", "--operator"]) == 0
    assert capsys.readouterr().out.strip() == operator_key(SECRET)
    before = time.time()
    assert main(["keys", "acme", "--user", "u1", "--ttl", "30m"]) == 0
    token = capsys.readouterr().out.strip()
    issued, expiry = (int(part) for part in token.removeprefix("mlu_").split(".")[:2])
    assert int(before) + 1800 <= expiry <= time.time() + 1800
    assert before * 1000 - 1 <= issued <= time.time() * 1000
    assert token == user_token(SECRET, "acme", "u1", expiry, issued)
    assert main(["keys", "acme", "--user", "u1"]) == 0  # 24 hours by default
    expiry = int(capsys.readouterr().out.strip().removeprefix("mlu_").split(".")[1])
    assert abs(expiry - (time.time() + 86_400)) < 5
    assert main(["keys"]) == 2


@pytest.mark.parametrize("ttl", ["0", "0s", "367d", "1w", "-5m", "h", "1.5h", ""])
def test_keys_command_refuses_a_ttl_it_cannot_honour(ttl, capsys):
    from meterline.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["keys", "acme", "--user", "u1", f"--ttl={ttl}"])
    assert exited.value.code == 2 and "must be a duration" in capsys.readouterr().err


def _legacy_org_key(org: str) -> str:
    # What `meterline keys` printed before keys carried their issue instant (the rule, spelt out here).
    return "mlk_" + hmac.new(SECRET.encode(), f"org:{org}".encode(), hashlib.sha256).hexdigest()


def _legacy_user_token(org: str, user: str, expires: int) -> str:
    return f"mlu_{expires}." + hmac.new(SECRET.encode(), f"user:{org}/{user}:{expires}".encode(), hashlib.sha256).hexdigest()


def test_a_revocation_refuses_the_keys_and_tokens_issued_before_it_and_no_later_ones():
    revoked_at = 1_800_000_000_000
    before, after = revoked_at - 1, revoked_at
    for presented in (org_key(SECRET, "acme", before), user_token(SECRET, "acme", "u1", LATER, before)):
        assert allowed(presented)  # no revocation yet
        assert balance_refusal(SECRET, presented, "acme", "u1", NOW, revoked_at) == REVOKED
    for presented in (org_key(SECRET, "acme", after), user_token(SECRET, "acme", "u1", LATER, after)):
        assert balance_refusal(SECRET, presented, "acme", "u1", NOW, revoked_at) is None
    assert org_key_refusal(SECRET, org_key(SECRET, "acme", before), "acme", revoked_at) == REVOKED
    assert org_key_refusal(SECRET, org_key(SECRET, "acme", after), "acme", revoked_at) is None
    # A token is still only its own user's, and an expired one says so before it says revoked.
    assert balance_refusal(SECRET, user_token(SECRET, "acme", "u1", LATER, after), "acme", "u2", NOW, revoked_at) == REFUSED
    assert balance_refusal(SECRET, user_token(SECRET, "acme", "u1", int(NOW), after), "acme", "u1", NOW, revoked_at) \
        == "this user token has expired: ask for a new one"


def test_the_issue_instant_is_signed_so_a_revoked_key_cannot_be_dated_later():
    revoked_at = 1_800_000_000_000
    for old in (org_key(SECRET, "acme", revoked_at - 5), user_token(SECRET, "acme", "u1", LATER, revoked_at - 5)):
        prefix, issued, rest = old[:4], *old[4:].split(".", 1)
        assert int(issued) == revoked_at - 5
        redated = f"{prefix}{revoked_at + 5}.{rest}"
        assert balance_refusal(SECRET, redated, "acme", "u1", NOW, revoked_at) == REFUSED


def test_keys_made_before_keys_carried_their_issue_instant_work_until_the_first_revocation():
    legacy_key, legacy_token = _legacy_org_key("acme"), _legacy_user_token("acme", "u1", LATER)
    assert allowed(legacy_key) and allowed(legacy_token) and org_key_refusal(SECRET, legacy_key, "acme") is None
    assert not allowed(legacy_key, org="globex") and not allowed(legacy_token, user="u2")
    assert balance_refusal(SECRET, legacy_key, "acme", "u1", NOW, 1) == REVOKED
    assert balance_refusal(SECRET, legacy_token, "acme", "u1", NOW, 1) == REVOKED


def test_an_org_whose_id_ends_like_an_instant_gets_no_other_orgs_key():
    # "/" cannot be part of an org id: "acme/5" is no org, so no key of one org is another's.
    assert org_key_refusal(SECRET, org_key(SECRET, "acme", 5), "acme5") == ORG_KEY_REQUIRED
    assert org_key_refusal(SECRET, org_key(SECRET, "acme.5", 0), "acme") == ORG_KEY_REQUIRED
