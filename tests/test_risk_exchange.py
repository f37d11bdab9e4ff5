"""Risk limits, kill switches, mass cancel and cancel-on-disconnect through the real
exchange: every stage a real process, real sockets, the real LMDB journal.

What a trader sees comes from the private orders channel of the notifier; what replay
must reproduce is checked with ``ringex recover --verify`` on the journal these runs
leave, so every refusal here is also a refusal replay takes again.
"""

from __future__ import annotations

import time

import pytest
from support.order_entry import ACCOUNT, OPERATOR, OPERATOR_TOKEN, OTHER, OTHER_TOKEN, TOKEN, OrderEntry

from ringex.cli import main as cli_main
from ringex.codes import EventKind, EventReason, Op, Reason, RiskLimit
from ringex.engine.risk import LIMITS_USED

RISK_TOML = """
[risk.ACME]
max_order_qty = 100
collar_bps = 1000
reference_price = 500

[accounts.1002]
max_open_orders = 2
cancel_on_disconnect = true
"""


@pytest.fixture
def exchange(tmp_path):
    ex = OrderEntry(tmp_path / "x", toml=RISK_TOML, operator=True)
    yield ex
    ex.close()
    assert "Traceback" not in ex.log(), ex.log()


def outcome(feed, order_id: int, timeout: float = 10.0) -> dict:
    """The private message that settles ``order_id``: accepted, rejected or cancelled."""
    (*_, last) = feed.recv_until(
        lambda m: m.get("order_id") == order_id and m["type"] in ("accepted", "rejected", "cancelled"), timeout
    )
    return last


def outcomes(feed, order_ids, kinds=("accepted", "rejected", "cancelled"), timeout: float = 10.0) -> dict[int, dict]:
    """The settling private message of each of ``order_ids``, in whatever order they come."""
    found: dict[int, dict] = {}

    def settles(m) -> bool:
        if m.get("order_id") in order_ids and m["type"] in kinds:
            found[m["order_id"]] = m
        return len(found) == len(set(order_ids))

    feed.recv_until(settles, timeout)
    return found


def journaled_reasons(ex: OrderEntry, symbol: str, timeout: float = 10.0, want=()) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        reasons = [int(r) for r in ex.events(symbol)["reason"]]
        if set(want) <= set(reasons) or time.monotonic() > deadline:
            return reasons
        time.sleep(0.05)


def verify(ex: OrderEntry, capsys) -> str:
    assert cli_main(["recover", "--verify", "--data", str(ex.data)]) == 0
    return capsys.readouterr().out


def test_the_configs_limits_are_journaled_at_start_and_refuse_orders(exchange, capsys):
    commands = exchange.published("ACME")
    limits = commands[commands["msg_type"] == Op.RISK]
    assert [chr(c) for c in limits["side"]] == ["X", "Q", "C", "P", "O"]  # clear, then ACME's and 1002's
    assert (exchange.data / LIMITS_USED).exists()
    with exchange.orders_feed() as feed, exchange.client() as c:
        big = c.buy("ACME", 101, 500)
        assert big.msg_type == "K"  # the gateway's checks pass: risk is the matcher's
        assert outcome(feed, big.order_id)["reason"] == "risk_max_qty"
        far = c.buy("ACME", 10, 600)  # 20% above the reference price of 500
        assert outcome(feed, far.order_id)["reason"] == "risk_price_collar"
        near = c.buy("ACME", 10, 550)
        assert outcome(feed, near.order_id)["type"] == "accepted"
        bolt = c.buy("BOLT", 101, 900)  # BOLT has no symbol limits
        assert outcome(feed, bolt.order_id)["type"] == "accepted"
    with exchange.orders_feed(OTHER, OTHER_TOKEN) as feed, exchange.client(account=OTHER, token=OTHER_TOKEN) as c:
        placed = [c.buy("BOLT", 1, 10 + i) for i in range(3)]
        settled = [outcome(feed, r.order_id) for r in placed]
        assert [m["type"] for m in settled] == ["accepted", "accepted", "rejected"]
        assert settled[2]["reason"] == "risk_max_open_orders"
    journaled_reasons(exchange, "ACME", want=[EventReason.RISK_MAX_QTY, EventReason.RISK_PRICE_COLLAR])
    out = verify(exchange, capsys)
    assert "every replayed event equals the journaled one" in out


def test_only_an_operator_may_set_limits_and_they_apply_at_once(exchange, capsys):
    with exchange.client() as trader:
        refused = trader.set_limit(RiskLimit.MAX_NOTIONAL, 1000, account=ACCOUNT)
        assert (refused.msg_type, refused.reason) == ("X", Reason.NOT_PERMITTED)
    with exchange.client(account=OPERATOR, token=OPERATOR_TOKEN) as op:
        bad = op.set_limit(RiskLimit.COLLAR_BPS, 100, account=ACCOUNT)
        assert (bad.msg_type, bad.reason) == ("X", Reason.BAD_LIMIT)
        assert op.set_limit(RiskLimit.MAX_NOTIONAL, 1000, account=ACCOUNT, symbol="BOLT").msg_type == "K"
    with exchange.orders_feed() as feed, exchange.client() as c:
        over = c.buy("BOLT", 11, 100)
        assert outcome(feed, over.order_id)["reason"] == "risk_max_notional"
        under = c.buy("BOLT", 10, 100)
        assert outcome(feed, under.order_id)["type"] == "accepted"
    journaled_reasons(exchange, "BOLT", want=[EventReason.RISK_MAX_NOTIONAL])
    verify(exchange, capsys)


def test_kill_switch_in_every_symbol_cancels_refuses_and_is_released(exchange, capsys):
    with exchange.orders_feed() as feed, exchange.client() as c:
        resting = [c.buy("ACME", 1, 500), c.sell("BOLT", 1, 900)]
        for r in resting:
            assert outcome(feed, r.order_id)["type"] == "accepted"
        with exchange.client(account=OPERATOR, token=OPERATOR_TOKEN) as op:
            assert op.set_limit(RiskLimit.KILL_SWITCH, 1, account=ACCOUNT).msg_type == "K"
            cancelled = outcomes(feed, [r.order_id for r in resting], kinds=("cancelled",))
            assert {m["reason"] for m in cancelled.values()} == {"kill_switch"}
            told = feed.recv_until(lambda m: m["type"] == "limit_set")[-1]
            assert (told["limit"], told["value"]) == ("kill_switch", 1)
            refused = c.buy("ACME", 1, 500)
            assert outcome(feed, refused.order_id)["reason"] == "risk_kill_switch"
            assert op.set_limit(RiskLimit.KILL_SWITCH, 0, account=ACCOUNT).msg_type == "K"
        again = c.buy("ACME", 1, 500)
        assert outcome(feed, again.order_id)["type"] == "accepted"
    journaled_reasons(exchange, "ACME", want=[EventReason.KILL_SWITCH, EventReason.RISK_KILL_SWITCH])
    verify(exchange, capsys)


def test_mass_cancel_of_every_symbol_is_acked_once_every_ring_has_it(exchange, capsys):
    with exchange.orders_feed() as feed, exchange.client() as c, exchange.client(account=OTHER, token=OTHER_TOKEN) as o:
        mine = [c.buy("ACME", 1, 500), c.buy("ACME", 2, 505), c.sell("BOLT", 1, 900)]
        theirs = o.buy("ACME", 1, 500)
        for r in mine:
            assert outcome(feed, r.order_id)["type"] == "accepted"
        one_side = c.mass_cancel("ACME", "sell")  # nothing to cancel on ACME's sell side
        done = feed.recv_until(lambda m: m["type"] == "mass_cancelled")[-1]
        assert (one_side.msg_type, done["cancelled"], done["side"]) == ("K", 0, "sell")
        every = c.mass_cancel()
        assert every.msg_type == "K" and every.symbol == ""
        cancelled = outcomes(feed, [r.order_id for r in mine], kinds=("cancelled",))
        assert {m["reason"] for m in cancelled.values()} == {"mass_cancel"}
    for symbol in ("ACME", "BOLT"):
        journaled_reasons(exchange, symbol, want=[EventReason.MASS_CANCEL])
    # the other account's order is not the mass cancel's (account 1002 cancels on
    # disconnect, so it may yet be cancelled for that reason once its session closed)
    still = exchange.events("ACME")
    by_mass_cancel = still[(still["kind"] == EventKind.CANCELLED) & (still["reason"] == EventReason.MASS_CANCEL)]
    assert theirs.order_id not in by_mass_cancel["order_id"]
    summaries = [e for s in ("ACME", "BOLT") for e in exchange.events(s) if e["kind"] == EventKind.MASS_CANCELLED]
    assert sorted(int(e["qty"]) for e in summaries) == [0, 1, 2]
    verify(exchange, capsys)


def test_a_request_for_every_symbol_waits_for_the_journal_like_any_other(exchange):
    with exchange.client() as c:
        exchange.pause_journal()
        try:
            c.timeout = 0.5
            c.send(c.conn.mass_cancel()[1])
            with pytest.raises(TimeoutError):
                c.next_reply()
        finally:
            exchange.resume_journal()
        c.timeout = 10
        assert c.next_reply().msg_type == "K"


def test_cancel_on_disconnect_when_the_accounts_last_session_closes(exchange, capsys):
    with exchange.orders_feed(OTHER, OTHER_TOKEN) as feed:
        first = exchange.client(account=OTHER, token=OTHER_TOKEN)
        second = exchange.client(account=OTHER, token=OTHER_TOKEN)
        order = first.buy("ACME", 1, 500)
        assert outcome(feed, order.order_id)["type"] == "accepted"
        first.close()  # another session of the account is still there: nothing happens
        with pytest.raises(TimeoutError):
            feed.recv_until(lambda m: m["type"] == "cancelled", timeout=1.0)
        second.close()
        assert outcome(feed, order.order_id)["reason"] == "disconnect"
        done = feed.recv_until(lambda m: m["type"] == "mass_cancelled")[-1]
        assert (done["reason"], done["cancelled"]) == ("disconnect", 1)
    verify(exchange, capsys)


def test_a_restarted_gateway_cancels_the_orders_of_cancel_on_disconnect_accounts(exchange, capsys):
    with exchange.orders_feed(OTHER, OTHER_TOKEN) as feed, exchange.orders_feed() as mine:
        c = exchange.client(account=OTHER, token=OTHER_TOKEN)
        order = c.sell("BOLT", 1, 900)
        assert outcome(feed, order.order_id)["type"] == "accepted"
        with exchange.client() as trader:
            kept = trader.buy("BOLT", 1, 10)  # an account without cancel-on-disconnect
            assert outcome(mine, kept.order_id)["type"] == "accepted"
        exchange.kill_gateway()  # -9: no session closes cleanly
        c.close()
        exchange.start_gateway()
        assert outcome(feed, order.order_id)["reason"] == "disconnect"
    bolt = exchange.events("BOLT")
    assert kept.order_id not in bolt[bolt["kind"] == EventKind.CANCELLED]["order_id"]
    commands = exchange.published("BOLT")
    # a restarted gateway finds the rings in use: it does not journal the config's limits again
    assert (commands["msg_type"] == Op.RISK).sum() == 2  # CLEAR and 1002's max_open_orders, once
    verify(exchange, capsys)


def test_an_exchange_without_limits_journals_none(tmp_path):
    ex = OrderEntry(tmp_path / "plain")
    try:
        with ex.client() as c:
            first = c.buy("ACME", 1, 500)
        assert first.seq == 0  # nothing was journaled before the first order
        assert not (ex.data / LIMITS_USED).exists()
    finally:
        ex.close()


def _cli(ex: OrderEntry, *args: str, account: int = ACCOUNT, token: int = TOKEN):
    import os
    import subprocess
    import sys

    from support.running import ROOT

    env = {**os.environ, "RINGEX_ACCOUNT": str(account), "RINGEX_TOKEN": str(token)}
    ports = ["--host", "127.0.0.1", "--port", str(ex.port)]
    if args[0] == "order":
        ports += ["--md-port", str(ex.stages.config.md_port)]
    return subprocess.run(
        [sys.executable, "-m", "ringex", *args, *ports], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


def test_cancel_all_and_the_risk_command_line(exchange, capsys):
    assert _cli(exchange, "order", "buy", "ACME", "1", "500").returncode == 0
    assert _cli(exchange, "order", "sell", "BOLT", "2", "900").returncode == 0
    assert _cli(exchange, "order", "sell", "BOLT", "1", "950").returncode == 0
    out = _cli(exchange, "order", "cancel-all", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == [
        "ACME: cancelled 1 order",
        "BOLT: cancelled 2 orders",
        "cancelled 3 orders in 2 symbols",
    ], out.stdout

    refused = _cli(exchange, "risk", "kill", str(ACCOUNT))
    assert refused.returncode == 1 and "NOT_PERMITTED" in refused.stdout and "--operator" in refused.stdout
    op = {"account": OPERATOR, "token": OPERATOR_TOKEN}
    killed = _cli(exchange, "risk", "kill", str(ACCOUNT), **op)
    assert killed.returncode == 0 and killed.stdout.startswith(
        f"ACK kill switch engaged for account {ACCOUNT} in every"
    )
    assert (
        _cli(exchange, "order", "buy", "ACME", "1", "500", "--wait").stdout.splitlines()[1]
        == "rejected: risk_kill_switch"
    )
    assert _cli(exchange, "risk", "release", str(ACCOUNT), **op).returncode == 0
    assert (
        _cli(exchange, "order", "buy", "ACME", "1", "500", "--wait").stdout.splitlines()[1] == "rested: 1 open at 500"
    )
    limited = _cli(exchange, "risk", "set", "max_order_qty", "5", "--for", str(ACCOUNT), "--symbol", "BOLT", **op)
    assert limited.stdout.startswith(f"ACK max_order_qty = 5 for account {ACCOUNT} in BOLT"), limited.stdout
    assert (
        _cli(exchange, "order", "buy", "BOLT", "6", "10", "--wait").stdout.splitlines()[1] == "rejected: risk_max_qty"
    )
    bad = _cli(exchange, "risk", "set", "collar_bps", "100", "--for", str(ACCOUNT), **op)
    assert bad.returncode == 1 and "BAD_LIMIT" in bad.stdout
    verify(exchange, capsys)
