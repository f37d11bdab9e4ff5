"""Account store: salted hashes on disk, cheap repeat verification, the CLI."""

from __future__ import annotations

import json
import time

import pytest

from ringex.cli import main as cli_main
from ringex.order_entry.accounts import (
    ACCOUNTS_FILE,
    DEMO_FILE,
    DEMO_OPERATOR,
    AccountError,
    AccountStore,
    create_demo_accounts,
    demo_accounts,
)


def test_added_account_verifies_with_its_token_only(tmp_path):
    store = AccountStore.open(tmp_path)
    token = store.add(7)
    assert 1 <= token < 2**64
    assert store.verify(7, token)
    assert not store.verify(7, token ^ 1)
    assert not store.verify(8, token)
    assert not store.verify(-1, token)
    assert not store.verify(7, 2**64)


def test_file_holds_salted_hashes_never_the_token(tmp_path):
    store = AccountStore.open(tmp_path)
    t1 = store.add(1, token=123456789)
    t2 = store.add(2, token=123456789)
    assert t1 == t2 == 123456789
    text = (tmp_path / ACCOUNTS_FILE).read_text()
    assert "123456789" not in text and hex(123456789)[2:] not in text
    doc = json.loads(text)
    a, b = doc["accounts"]["1"], doc["accounts"]["2"]
    assert a["salt"] != b["salt"] and a["hash"] != b["hash"]  # same token, different salt
    assert (tmp_path / ACCOUNTS_FILE).stat().st_mode & 0o077 == 0


def test_repeat_verification_is_cached(tmp_path):
    store = AccountStore.open(tmp_path)
    token = store.add(5)
    t0 = time.perf_counter()
    assert store.verify(5, token)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        assert store.verify(5, token)
    repeat = (time.perf_counter() - t0) / 100
    # not a speed assertion: the cache either answers or scrypt runs again (>100x apart)
    assert repeat * 20 < first


def test_changes_by_another_process_are_seen(tmp_path):
    gateway_view = AccountStore.open(tmp_path)
    cli_view = AccountStore.open(tmp_path)
    token = cli_view.add(9)
    assert gateway_view.verify(9, token)
    cli_view.remove(9)
    assert not gateway_view.verify(9, token)  # the cached pair is dropped with the file change
    assert gateway_view.accounts() == []


def test_remove_and_list(tmp_path):
    store = AccountStore.open(tmp_path)
    store.add(3, token=1)
    store.add(2, token=1)
    assert store.accounts() == [2, 3]
    assert store.remove(3)
    assert not store.remove(3)
    assert store.accounts() == [2]


def test_bad_ids_and_tokens_are_refused(tmp_path):
    store = AccountStore.open(tmp_path)
    for bad in (0, -1, 2**64, "1"):
        with pytest.raises(AccountError):
            store.add(bad)
    with pytest.raises(AccountError):
        store.add(1, token=0)


def test_corrupt_file_is_reported(tmp_path):
    (tmp_path / ACCOUNTS_FILE).write_text("{not json")
    with pytest.raises(AccountError, match="unreadable"):
        AccountStore.open(tmp_path)


def test_demo_accounts_only_on_first_start(tmp_path):
    tokens = create_demo_accounts(tmp_path, count=2)
    assert sorted(tokens) == [DEMO_OPERATOR, 1001, 1002]
    store = AccountStore.open(tmp_path)
    assert all(store.verify(a, t) for a, t in tokens.items())
    assert store.is_operator(DEMO_OPERATOR) and not store.is_operator(1001)
    assert create_demo_accounts(tmp_path) == {}
    assert demo_accounts(tmp_path) == tokens


def test_demo_tokens_written_before_the_accounts_are_reused_after_a_failed_first_start(tmp_path):
    tokens = create_demo_accounts(tmp_path, count=1)
    (tmp_path / ACCOUNTS_FILE).unlink()  # as if the start died before the account file was written
    assert create_demo_accounts(tmp_path, count=1) == tokens
    assert all(AccountStore.open(tmp_path).verify(a, t) for a, t in tokens.items())
    assert (tmp_path / DEMO_FILE).stat().st_mode & 0o777 == 0o600


def test_a_reset_or_removed_demo_account_leaves_the_demo_file(tmp_path, capsys):
    tokens = create_demo_accounts(tmp_path, count=2)
    assert cli_main(["accounts", "--data", str(tmp_path), "add", "1001"]) == 0
    out = capsys.readouterr().out
    assert "account 1001 reset" in out and "no longer works" in out
    assert cli_main(["accounts", "--data", str(tmp_path), "remove", "1002"]) == 0
    assert demo_accounts(tmp_path) == {DEMO_OPERATOR: tokens[DEMO_OPERATOR]}


def test_cli_add_list_remove(tmp_path, capsys):
    assert cli_main(["accounts", "--data", str(tmp_path), "add", "42", "--token", "777"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "777"
    assert cli_main(["accounts", "--data", str(tmp_path), "add", "43"]) == 0
    token = int(capsys.readouterr().out.strip().splitlines()[-1])
    assert AccountStore.open(tmp_path).verify(43, token)
    assert cli_main(["accounts", "--data", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().out.split() == ["42", "43"]
    assert cli_main(["accounts", "--data", str(tmp_path), "remove", "42"]) == 0
    assert cli_main(["accounts", "--data", str(tmp_path), "remove", "42"]) == 1
    assert "no account 42" in capsys.readouterr().err
    assert not AccountStore.open(tmp_path).verify(42, 777)


def test_verify_nowait_answers_only_what_is_cheap(tmp_path):
    store = AccountStore.open(tmp_path)
    token = store.add(11)
    assert store.verify_nowait(12, token) is False  # unknown account: no scrypt needed
    assert store.verify_nowait(11, token) is None  # only scrypt can tell
    assert store.verify_nowait(11, token + 1) is None
    assert store.verify(11, token)
    assert store.verify_nowait(11, token) is True  # cached now
    assert store.verify_nowait(11, token + 1) is None  # failures are never cached
