from meterline.auth import may_read_balance, operator_key, org_key, user_token

SECRET = "s3cret"


def test_an_org_key_reads_its_own_users_only():
    key = org_key(SECRET, "acme")
    assert may_read_balance(SECRET, key, "acme", "u1")
    assert not may_read_balance(SECRET, key, "globex", "u1")


def test_a_user_token_reads_only_that_user():
    token = user_token(SECRET, "acme", "u1")
    assert may_read_balance(SECRET, token, "acme", "u1")
    assert not may_read_balance(SECRET, token, "acme", "u2")
    assert not may_read_balance(SECRET, token, "acme2", "u1")


def test_keys_depend_on_the_secret_and_empty_is_refused():
    assert not may_read_balance("other", org_key(SECRET, "acme"), "acme", "u1")
    assert not may_read_balance(SECRET, "", "acme", "u1")


def test_the_operator_key_opens_no_balance():
    assert not may_read_balance(SECRET, operator_key(SECRET), "acme", "u1")


def test_a_non_ascii_header_is_a_mismatch_not_an_error():
    assert not may_read_balance(SECRET, "mlk_é", "acme", "u1")


def test_keys_command_refuses_ids_that_could_collide(capsys):
    from meterline.cli import main

    assert main(["keys", "a/b", "--user", "c"]) == 2
    assert "org id 'a/b'" in capsys.readouterr().err


def test_keys_command_prints_the_key_the_worker_checks(monkeypatch, capsys):
    from meterline.cli import main

    monkeypatch.setenv("METERLINE_API_SECRET", SECRET)
    assert main(["keys", "--operator"]) == 0
    assert capsys.readouterr().out.strip() == operator_key(SECRET)
    assert main(["keys", "acme", "--user", "u1"]) == 0
    assert capsys.readouterr().out.strip() == user_token(SECRET, "acme", "u1")
    assert main(["keys"]) == 2
