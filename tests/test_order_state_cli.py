"""Order state from the command line: ``ringex order ... --wait``, ``ringex order status``,
``ringex orders`` and ``ringex book``, as subprocesses against a real exchange (every
stage a real process, real sockets, the real journal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.order_entry import ACCOUNT, OTHER, OTHER_TOKEN, TOKEN, OrderEntry
from support.running import ROOT

RISK_TOML = """
[risk.ACME]
max_order_qty = 100
"""


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    ex = OrderEntry(tmp_path_factory.mktemp("state") / "x", toml=RISK_TOML)
    yield ex
    ex.close()
    assert "Traceback" not in ex.log(), ex.log()


def ringex(exchange, *args: str, account: int = ACCOUNT, token: int = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "RINGEX_ACCOUNT": str(account), "RINGEX_TOKEN": str(token)}
    ports = ["--host", "127.0.0.1", "--md-port", str(exchange.stages.config.md_port)]
    if args[0] == "order":
        ports += ["--port", str(exchange.port)]
    return subprocess.run(
        [sys.executable, "-m", "ringex", *args, *ports], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


def order_id_of(out: subprocess.CompletedProcess) -> int:
    return int(out.stdout.split(" order ")[1].split()[0])


def test_wait_prints_the_matchers_outcome_of_each_kind(exchange):
    rested = ringex(exchange, "order", "sell", "ACME", "10", "200", "--wait", account=OTHER, token=OTHER_TOKEN)
    assert rested.returncode == 0, rested.stderr
    ack, outcome = rested.stdout.splitlines()
    assert ack.startswith("ACK ACME sell 10 @ 200") and outcome == "rested: 10 open at 200"

    filled = ringex(exchange, "order", "buy", "ACME", "4", "200", "--wait")
    assert filled.returncode == 0, filled.stderr
    assert filled.stdout.splitlines()[1:] == ["filled 4 @ 200 (taker), 0 open", "filled"]

    post = ringex(exchange, "order", "buy", "ACME", "1", "200", "--post-only", "--wait")
    assert post.returncode == 1 and post.stdout.splitlines()[1] == "rejected: would_trade", post.stdout

    ioc = ringex(exchange, "order", "buy", "ACME", "20", "200", "--ioc", "--wait")
    assert ioc.returncode == 0
    assert ioc.stdout.splitlines()[1:] == [
        "filled 6 @ 200 (taker), 14 open",
        "cancelled: ioc_remainder (14 not filled)",
    ]

    risky = ringex(exchange, "order", "buy", "ACME", "101", "150", "--wait")
    assert risky.returncode == 1 and risky.stdout.splitlines()[1] == "rejected: risk_max_qty", risky.stdout

    gone = order_id_of(rested)  # filled away by the two buys above
    cancel = ringex(
        exchange, "order", "cancel", str(gone), "--symbol", "ACME", "--wait", account=OTHER, token=OTHER_TOKEN
    )
    assert cancel.returncode == 1
    assert (
        cancel.stdout.startswith(f"ACK cancel ACME order {gone}")
        and cancel.stdout.splitlines()[1] == "rejected: unknown_order"
    )


def test_wait_follows_a_replace_and_a_cancel(exchange):
    bid = ringex(exchange, "order", "buy", "BOLT", "5", "40", "--wait")
    assert bid.stdout.splitlines()[1] == "rested: 5 open at 40", bid.stdout
    oid = order_id_of(bid)
    replaced = ringex(exchange, "order", "replace", str(oid), "45", "3", "--symbol", "BOLT", "--wait")
    assert replaced.returncode == 0 and replaced.stdout.splitlines()[1:] == ["replaced: 3 open at 45"]
    mine = ringex(exchange, "order", "cancel", str(oid), "--symbol", "BOLT", "--wait", account=OTHER, token=OTHER_TOKEN)
    assert mine.returncode == 1 and mine.stdout.splitlines()[1] == "rejected: not_owner", mine.stdout
    cancel = ringex(exchange, "order", "cancel", str(oid), "--symbol", "BOLT", "--wait")
    assert cancel.returncode == 0 and cancel.stdout.splitlines()[1] == "cancelled: user_request (3 not filled)"


def test_open_orders_order_status_and_the_book(exchange):
    a = order_id_of(ringex(exchange, "order", "buy", "ACME", "7", "150"))
    b = order_id_of(ringex(exchange, "order", "sell", "BOLT", "2", "90"))
    ringex(exchange, "order", "buy", "ACME", "3", "145", account=OTHER, token=OTHER_TOKEN)
    sold = ringex(exchange, "order", "sell", "ACME", "1", "150", "--wait", account=OTHER, token=OTHER_TOKEN)
    assert sold.stdout.splitlines()[1:] == ["filled 1 @ 150 (taker), 0 open", "filled"], sold.stdout

    listed = ringex(exchange, "orders")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[2:]]
    assert [(r[0], int(r[1]), r[3], int(r[4]), int(r[5])) for r in rows] == [
        ("ACME", a, "buy", 150, 6),
        ("BOLT", b, "sell", 90, 2),
    ]
    only = ringex(exchange, "orders", "BOLT", "--json").stdout.splitlines()
    assert len(only) == 1 and json.loads(only[0])["order_id"] == b

    status = ringex(exchange, "order", "status", str(a))
    assert status.returncode == 0 and f"order {a}: open, buy ACME 6 at 150" in status.stdout
    assert ringex(exchange, "order", "cancel", str(a), "--symbol", "ACME", "--wait").returncode == 0
    status = ringex(exchange, "order", "status", str(a))
    assert status.returncode == 1 and "not open" in status.stdout

    book = ringex(exchange, "book", "ACME")
    assert book.returncode == 0, book.stderr
    lines = book.stdout.splitlines()
    assert lines[0] == "ACME  last trade 1 @ 150"
    assert [line.split() for line in lines[2:]] == [["3", "145", "|"]]
    empty = ringex(exchange, "book", "BOLT")
    assert "no trades yet" in empty.stdout and "90" in empty.stdout
    unknown = ringex(exchange, "book", "NOPE")
    assert unknown.returncode == 2 and "ringex book: the notifier refused" in unknown.stderr
