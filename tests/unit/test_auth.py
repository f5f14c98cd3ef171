import time

import pytest

from meterline.auth import REFUSED, balance_refusal, operator_key, org_key, user_token

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
    _prefix, signature = token.split(".")
    extended = f"mlu_{LATER + 10**6}.{signature}"  # a later expiry with the old signature
    assert balance_refusal(SECRET, extended, "acme", "u1", LATER) == REFUSED


@pytest.mark.parametrize("presented", ["", "mlu_", "mlu_.", "mlu_123", "mlu_x.abc", "mlu_١٢٣.abc", "mlu_" + "9" * 40 + ".ab",
                                       "mlk_é", "Bearer", "mlu_-5.00"])
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
    expiry = int(token.removeprefix("mlu_").split(".")[0])
    assert int(before) + 1800 <= expiry <= time.time() + 1800
    assert token == user_token(SECRET, "acme", "u1", expiry)
    assert main(["keys", "acme", "--user", "u1"]) == 0  # 24 hours by default
    expiry = int(capsys.readouterr().out.strip().removeprefix("mlu_").split(".")[0])
    assert abs(expiry - (time.time() + 86_400)) < 5
    assert main(["keys"]) == 2


@pytest.mark.parametrize("ttl", ["0", "0s", "367d", "1w", "-5m", "h", "1.5h", ""])
def test_keys_command_refuses_a_ttl_it_cannot_honour(ttl, capsys):
    from meterline.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["keys", "acme", "--user", "u1", f"--ttl={ttl}"])
    assert exited.value.code == 2 and "must be a duration" in capsys.readouterr().err
