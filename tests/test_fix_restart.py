"""FIX across a restart of the whole exchange (``ringex up``, stopped and started again)."""

from __future__ import annotations

import pytest
from support.fix import report
from support.running import RunningExchange

from ringex.codes import ExecType, FixMsgType, FixSide, OrdStatus, Tag
from ringex.fix.client import FixClient, FixSessionClosed
from ringex.fix.session import MemoryStore


@pytest.fixture
def exchange(tmp_path):
    ex = RunningExchange(tmp_path / "data")
    yield ex
    ex.stop()


def test_sessions_orders_and_reports_survive_an_exchange_restart(exchange):
    exchange.start()
    assert f"FIX 4.4       127.0.0.1:{exchange.fix_port}" in exchange.output
    (alice, alice_token), (bob, bob_token) = list(exchange.accounts.items())[:2]
    store = MemoryStore()
    a = FixClient("127.0.0.1", exchange.fix_port, "ALICE", store=store).connect()
    a.logon(alice, alice_token)
    a.new_order("a1", "ACME", FixSide.BUY, 10, price=100)
    a.new_order("a2", "ACME", FixSide.BUY, 5, price=99)
    order_id = report(a, "a1", ExecType.NEW).text(Tag.OrderID)
    report(a, "a2", ExecType.NEW)

    assert exchange.stop() == 0  # the session is logged out: "the exchange is shutting down"
    with pytest.raises(FixSessionClosed):
        a.poll(2)
        a.next_message(timeout=1)
    assert any(m.msg_type == FixMsgType.LOGOUT and "shutting down" in m.text(Tag.Text) for m in a.wire)
    a.close()

    exchange.start()
    b = FixClient("127.0.0.1", exchange.fix_port, "BOB").connect()
    b.logon(bob, bob_token)
    b.new_order("b1", "ACME", FixSide.SELL, 4, price=100)
    assert report(b, "b1", ExecType.TRADE).text(Tag.LastPx) == "100"

    # Alice comes back: her sequence numbers continue, the fill is resent, and her
    # ClOrdIDs still name her orders (the book recovered them under the same ids)
    a = FixClient("127.0.0.1", exchange.fix_port, "ALICE", store=store).connect()
    a.logon(alice, alice_token)
    fill = report(a, "a1", ExecType.TRADE)
    assert fill.poss_dup and (fill.text(Tag.OrderID), fill.text(Tag.CumQty), fill.text(Tag.LeavesQty)) == (
        order_id,
        "4",
        "6",
    )
    a.cancel("a3", "a2", "ACME", FixSide.BUY)
    assert report(a, "a3", ExecType.CANCELED).text(Tag.OrigClOrdID) == "a2"
    a.replace("a4", "a1", "ACME", FixSide.BUY, 12, 105)
    replaced = report(a, "a4", ExecType.REPLACED)
    assert (replaced.text(Tag.OrdStatus), replaced.text(Tag.LeavesQty)) == (OrdStatus.PARTIALLY_FILLED, "8")
    assert a.rejects == [] and b.rejects == []
    a.logout()
    b.logout()
