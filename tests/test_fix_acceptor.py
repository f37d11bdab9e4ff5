"""The FIX acceptor over real sockets, against a running exchange (every stage a process).

Each test runs its own exchange (``FixExchange``: ``Stages(fix=True)``), FIX clients
(``ringex.fix.client.FixClient`` or raw sockets) and, where it helps, a protocol v1
client as the other side of a trade.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from support.fix import ALICE, BOB, FixExchange, report, reports_for

from ringex.codes import (
    BusinessRejectReason,
    CxlRejReason,
    ExecInst,
    ExecType,
    FixMsgType,
    FixOrdType,
    FixSide,
    FixTimeInForce,
    OrdRejReason,
    OrdStatus,
    SessionRejectReason,
    Tag,
)
from ringex.fix.client import FixSessionClosed
from ringex.fix.codec import NEED_DATA, FrameDecoder, encode, utc_timestamp
from ringex.fix.session import MemoryStore
from ringex.fix.turns import read_turns
from ringex.topology import FIX, GATEWAY, JOURNALER

BUY, SELL = FixSide.BUY, FixSide.SELL
MARKET = FixOrdType.MARKET
IOC, FOK, GTC, DAY = (
    FixTimeInForce.IMMEDIATE_OR_CANCEL,
    FixTimeInForce.FILL_OR_KILL,
    FixTimeInForce.GOOD_TILL_CANCEL,
    FixTimeInForce.DAY,
)


@pytest.fixture
def exchange(tmp_path):
    ex = FixExchange(tmp_path / "x")
    yield ex
    ex.close()


def fields(m, *tags) -> tuple:
    return tuple(m.text(t) for t in tags)


def test_logon_with_the_account_and_its_token_and_what_is_refused(exchange):
    alice = exchange.client("ALICE1")
    assert alice.session.heartbeat_s == 30
    refusals = {
        "wrong token": ("ALICE2", str(ALICE[0]), "1"),
        "not a number": ("ALICE3", "alice", "secret"),
        "someone else's CompID": ("ALICE1", str(BOB[0]), str(BOB[1])),
    }
    for comp_id, user, password in refusals.values():
        client = exchange.client(comp_id, logon=False)
        client.session.start_logon(30, username=user, password=password)
        client._flush()
        with pytest.raises(FixSessionClosed, match="logon refused"):
            client._wait(lambda c=client: c.logged_on)
    # a second connection for a session that is logged on
    twin = exchange.client("ALICE1", logon=False)
    twin.session.start_logon(30, username=str(ALICE[0]), password=str(ALICE[1]))
    twin._flush()
    with pytest.raises(FixSessionClosed, match="logged on already"):
        twin._wait(lambda: twin.logged_on)
    # the first one never noticed
    alice.new_order("a1", "ACME", BUY, 1, price=100)
    assert report(alice, "a1").text(Tag.ExecType) == ExecType.NEW
    text = exchange.log()
    assert "refused: bad credentials" in text and "belongs to another account" in text


def test_every_order_type_with_fills_to_both_sides(exchange):
    alice = exchange.client("ALICE1")
    bob = exchange.client("BOB1", BOB)

    # limit GTC rests; a crossing limit fills both sides at the resting price
    alice.new_order("a1", "ACME", BUY, 10, price=105)
    new = report(alice, "a1", ExecType.NEW)
    assert fields(new, Tag.OrdStatus, Tag.LeavesQty, Tag.CumQty, Tag.AvgPx) == ("0", "10", "0", "0")
    order_id = new.text(Tag.OrderID)
    bob.new_order("b1", "ACME", SELL, 4, price=100)
    assert report(bob, "b1", ExecType.NEW).text(Tag.OrdStatus) == OrdStatus.NEW
    taker = report(bob, "b1", ExecType.TRADE)
    assert fields(taker, Tag.OrdStatus, Tag.LastPx, Tag.LastQty, Tag.CumQty, Tag.LeavesQty, Tag.AvgPx) == (
        "2",
        "105",
        "4",
        "4",
        "0",
        "105",
    )
    assert taker.text(Tag.LastLiquidityInd) == "2"
    maker = report(alice, "a1", ExecType.TRADE)
    assert fields(maker, Tag.OrderID, Tag.OrdStatus, Tag.LastQty, Tag.CumQty, Tag.LeavesQty) == (
        order_id,
        "1",
        "4",
        "4",
        "6",
    )
    assert maker.text(Tag.LastLiquidityInd) == "1"

    # market IOC takes the rest
    bob.new_order("b2", "ACME", SELL, 6, ord_type=MARKET)
    assert report(bob, "b2", ExecType.TRADE).text(Tag.OrdStatus) == OrdStatus.FILLED
    filled = report(alice, "a1", ExecType.TRADE)
    assert fields(filled, Tag.OrdStatus, Tag.CumQty, Tag.LeavesQty, Tag.AvgPx) == ("2", "10", "0", "105")

    # a market order with nothing to take: New, then Canceled
    bob.new_order("b3", "ACME", SELL, 5, ord_type=MARKET, tif=FOK)
    report(bob, "b3", ExecType.NEW)
    assert report(bob, "b3", ExecType.CANCELED).text(Tag.LeavesQty) == "0"

    # two prices: AvgPx is their weighted mean
    bob.new_order("b4", "ACME", SELL, 1, price=110)
    bob.new_order("b5", "ACME", SELL, 1, price=115)
    report(bob, "b4", ExecType.NEW), report(bob, "b5", ExecType.NEW)
    alice.new_order("a2", "ACME", BUY, 2, ord_type=MARKET, tif=IOC)
    report(alice, "a2", ExecType.TRADE)
    last = report(alice, "a2", ExecType.TRADE)
    assert fields(last, Tag.CumQty, Tag.AvgPx, Tag.OrdStatus) == ("2", "112.5", "2")

    # IOC: what cannot fill at once is canceled
    bob.new_order("b6", "ACME", SELL, 3, price=150)
    report(bob, "b6", ExecType.NEW)
    alice.new_order("a3", "ACME", BUY, 5, price=150, tif=IOC)
    assert report(alice, "a3", ExecType.TRADE).text(Tag.LastQty) == "3"
    canceled = report(alice, "a3", ExecType.CANCELED)
    assert fields(canceled, Tag.OrdStatus, Tag.CumQty, Tag.LeavesQty) == ("4", "3", "0")

    # FOK: all or nothing
    bob.new_order("b7", "ACME", SELL, 2, price=160)
    report(bob, "b7", ExecType.NEW)
    alice.new_order("a4", "ACME", BUY, 5, price=160, tif=FOK)
    assert report(alice, "a4", ExecType.CANCELED).text(Tag.CumQty) == "0"
    alice.new_order("a5", "ACME", BUY, 2, price=160, tif=FOK)
    assert report(alice, "a5", ExecType.TRADE).text(Tag.OrdStatus) == OrdStatus.FILLED

    # post-only: rests when it would not trade, is rejected when it would: by the
    # matcher, so after its New if the gateway's K reached the acceptor first (FIX 4.4
    # allows New -> Rejected), with no New if the matcher's event did
    alice.new_order("a6", "ACME", BUY, 1, price=100, exec_inst=ExecInst.PARTICIPATE_DONT_INITIATE)
    assert report(alice, "a6").text(Tag.ExecType) == ExecType.NEW
    bob.new_order("b8", "ACME", SELL, 1, price=200)
    report(bob, "b8", ExecType.NEW)
    alice.new_order("a7", "ACME", BUY, 1, price=200, tif=GTC, exec_inst=ExecInst.PARTICIPATE_DONT_INITIATE)
    rejected = report(alice, "a7", ExecType.REJECTED)
    assert rejected.text(Tag.OrdStatus) == OrdStatus.REJECTED and "post-only" in rejected.text(Tag.Text)
    assert rejected.text(Tag.OrdRejReason) == OrdRejReason.OTHER
    before = reports_for(alice.received, "a7")[:-1]
    assert before in ([], [ExecType.NEW]), before

    # rejected before they reach the exchange, each with its reason
    cases = {
        "r1": (dict(symbol="ACME", qty=1, price=103), OrdRejReason.OTHER, "tick of 5"),
        "r2": (dict(symbol="NOPE", qty=1, price=100), OrdRejReason.UNKNOWN_SYMBOL, "unknown symbol"),
        "r3": (dict(symbol="ACME", qty=501, price=100), OrdRejReason.INCORRECT_QUANTITY, "OrderQty"),
        "r4": (
            dict(symbol="ACME", qty=1, price=100, tif=DAY),
            OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
            "TimeInForce",
        ),
        "r5": (dict(symbol="ACME", qty=1, price=1100), OrdRejReason.OTHER, "outside"),
        "a1": (dict(symbol="ACME", qty=1, price=100), OrdRejReason.DUPLICATE_ORDER, "used before"),
    }
    for cl_ord_id, (order, reason, text) in cases.items():
        alice.new_order(cl_ord_id, order["symbol"], BUY, order["qty"], price=order["price"], tif=order.get("tif"))
        got = report(alice, cl_ord_id, ExecType.REJECTED)
        assert got.text(Tag.OrdRejReason) == reason and text in got.text(Tag.Text), cl_ord_id

    # every order got exactly one terminal report: filled, canceled or rejected
    for client, ids in (
        (alice, ["a1", "a2", "a3", "a4", "a5", "a7"]),
        (bob, ["b1", "b2", "b3", "b4", "b5", "b6", "b7"]),
    ):
        for cl_ord_id in ids:
            terminal = [
                m
                for m in client.received
                if m.text(Tag.ClOrdID) == cl_ord_id
                and m.text(Tag.OrdStatus) in (OrdStatus.FILLED, OrdStatus.CANCELED, OrdStatus.REJECTED)
                and m.text(Tag.ExecType) != ExecType.NEW
                and m.text(Tag.OrdRejReason) != OrdRejReason.DUPLICATE_ORDER  # about the duplicate, not a1
            ]
            assert len(terminal) == 1, (cl_ord_id, reports_for(client.received, cl_ord_id))
    assert alice.rejects == [] and bob.rejects == []


def test_cancel_and_replace_and_their_rejects(exchange):
    alice = exchange.client("ALICE1")
    alice.new_order("a1", "ACME", BUY, 10, price=105)
    report(alice, "a1", ExecType.NEW)

    alice.replace("a2", "a1", "ACME", BUY, 12, 110)
    replaced = report(alice, "a2", ExecType.REPLACED)
    assert fields(replaced, Tag.OrigClOrdID, Tag.Price, Tag.OrderQty, Tag.LeavesQty, Tag.OrdStatus) == (
        "a1",
        "110",
        "12",
        "12",
        "0",
    )

    v1 = exchange.v1(BOB)
    assert v1.sell("ACME", 2, 110).ok
    assert report(alice, "a2", ExecType.TRADE).text(Tag.CumQty) == "2"
    # OrderQty is the new total: not at or below what is filled
    alice.replace("a3", "a2", "ACME", BUY, 2, 110)
    refused = report(alice, "a3", msg_type=FixMsgType.ORDER_CANCEL_REJECT)
    assert fields(refused, Tag.OrigClOrdID, Tag.CxlRejResponseTo, Tag.CxlRejReason) == ("a2", "2", CxlRejReason.OTHER)
    alice.replace("a4", "a2", "ACME", BUY, 5, 111)
    assert "tick" in report(alice, "a4", msg_type=FixMsgType.ORDER_CANCEL_REJECT).text(Tag.Text)
    alice.replace("a5", "a2", "ACME", SELL, 5, 110)
    assert "Side" in report(alice, "a5", msg_type=FixMsgType.ORDER_CANCEL_REJECT).text(Tag.Text)

    # a cancel by OrigClOrdID from another session of the same account
    other = exchange.client("ALICE2")
    other.cancel("c1", "a2", "ACME", BUY)
    canceled = report(other, "c1", ExecType.CANCELED)
    assert fields(canceled, Tag.OrigClOrdID, Tag.OrdStatus, Tag.CumQty, Tag.LeavesQty) == ("a2", "4", "2", "0")
    # too late, unknown, duplicate ClOrdID
    other.cancel("c2", "a1", "ACME", BUY)
    assert report(other, "c2", msg_type="9").text(Tag.CxlRejReason) == CxlRejReason.TOO_LATE_TO_CANCEL
    other.cancel("c3", "nope", "ACME", BUY)
    assert report(other, "c3", msg_type="9").text(Tag.CxlRejReason) == CxlRejReason.UNKNOWN_ORDER
    other.cancel("c1", "a2", "ACME", BUY)
    assert report(other, "c1", msg_type="9").text(Tag.CxlRejReason) == CxlRejReason.DUPLICATE_CL_ORD_ID
    # another account's ClOrdIDs are not ours to cancel
    bob = exchange.client("BOB1", BOB)
    alice.new_order("a9", "ACME", BUY, 1, price=100)
    report(alice, "a9", ExecType.NEW)
    bob.cancel("x1", "a9", "ACME", BUY)
    assert report(bob, "x1", msg_type="9").text(Tag.CxlRejReason) == CxlRejReason.UNKNOWN_ORDER
    assert alice.rejects == other.rejects == bob.rejects == []


def test_unsupported_and_malformed_messages(exchange):
    alice = exchange.client("ALICE1")
    # OrderStatusRequest: a FIX 4.4 message ringex does not take
    alice.send("H", [(Tag.ClOrdID, "a1"), (Tag.Symbol, "ACME"), (Tag.Side, BUY)])
    reject = alice.wait_for(lambda m: m.msg_type == FixMsgType.BUSINESS_MESSAGE_REJECT)
    assert fields(reject, Tag.RefMsgType, Tag.BusinessRejectReason) == (
        "H",
        BusinessRejectReason.UNSUPPORTED_MESSAGE_TYPE,
    )
    # a NewOrderSingle without its Side: a session-level Reject naming the tag
    seq = alice.send(
        "D",
        [
            (Tag.ClOrdID, "a2"),
            (Tag.Symbol, "ACME"),
            (Tag.TransactTime, utc_timestamp(time.time_ns())),
            (Tag.OrderQty, 1),
            (Tag.OrdType, 2),
            (Tag.Price, 100),
        ],
    )
    # a MsgType FIX 4.4 does not have
    seq2 = alice.send("ZZ", [(Tag.Text, "hello")])
    alice.poll(0.5)
    assert [
        (m.integer(Tag.RefSeqNum), m.text(Tag.SessionRejectReason), m.text(Tag.RefTagID)) for m in alice.rejects
    ] == [
        (seq, SessionRejectReason.REQUIRED_TAG_MISSING, str(int(Tag.Side))),
        (seq2, SessionRejectReason.INVALID_MSG_TYPE, str(int(Tag.MsgType))),
    ]
    # the session goes on
    alice.new_order("a3", "ACME", BUY, 1, price=100)
    assert report(alice, "a3").text(Tag.ExecType) == ExecType.NEW


def test_heartbeats_and_test_requests_over_sockets(exchange):
    alice = exchange.client("ALICE1", heartbeat_s=1)
    alice.session.test_request("ping-1")
    alice._flush()
    alice.poll(2.5)
    heartbeats = [m for m in alice.wire if m.msg_type == FixMsgType.HEARTBEAT]
    assert any(m.text(Tag.TestReqID) == "ping-1" for m in heartbeats)
    assert len([m for m in heartbeats if m.get(Tag.TestReqID) is None]) >= 1  # the acceptor's own, when idle
    assert alice.session.state.value == "active"

    # a counterparty that goes silent is sent a TestRequest, then logged out
    sock = exchange.raw()
    now = utc_timestamp(time.time_ns())
    sock.sendall(
        encode(
            "A",
            [(Tag.SenderCompID, "SILENT"), (Tag.TargetCompID, "RINGEX"), (Tag.MsgSeqNum, 1), (Tag.SendingTime, now)],
            [(Tag.EncryptMethod, 0), (Tag.HeartBtInt, 1), (Tag.Username, ALICE[0]), (Tag.Password, ALICE[1])],
        )
    )
    received = read_until_closed(sock, 10)
    types = [m.msg_type for m in received]
    assert types[0] == "A" and FixMsgType.TEST_REQUEST in types and types[-1] == FixMsgType.LOGOUT
    assert "no answer to TestRequest" in received[-1].text(Tag.Text)


def read_until_closed(sock: socket.socket, timeout: float) -> list:
    decoder = FrameDecoder()
    out = []
    sock.settimeout(timeout)
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        decoder.receive_data(data)
        while (m := decoder.next_message()) is not NEED_DATA:
            out.append(m)


def test_a_dropped_connection_recovers_every_missed_report_by_resend_request(exchange):
    store = MemoryStore()
    alice = exchange.client("ALICE1", store=store)
    alice.new_order("a1", "ACME", BUY, 10, price=105)
    alice.new_order("a2", "ACME", BUY, 5, price=100)
    report(alice, "a1", ExecType.NEW), report(alice, "a2", ExecType.NEW)
    seen = store.next_target_seq
    alice.drop()

    # while Alice is away: fills, and a cancel from another of her sessions
    v1 = exchange.v1(BOB)
    assert v1.sell("ACME", 4, 105).ok and v1.sell("ACME", 6, 105).ok
    other = exchange.client("ALICE2")
    other.cancel("c1", "a2", "ACME", BUY)
    report(other, "c1", ExecType.CANCELED)
    other.logout()
    time.sleep(0.3)  # let the acceptor take the events (they are reports for a session that is away)

    again = exchange.client("ALICE1", store=store)  # its Logon answer shows the gap; it asks for a resend
    first = report(again, "a1", ExecType.TRADE)
    second = report(again, "a1", ExecType.TRADE)
    assert first.poss_dup and second.poss_dup and first.get(Tag.OrigSendingTime)
    assert (first.text(Tag.CumQty), second.text(Tag.CumQty), second.text(Tag.OrdStatus)) == ("4", "10", "2")
    assert again.session.gaps_detected == 1 and store.next_target_seq > seen
    # nothing twice: the reports before the drop are not resent
    assert [m.text(Tag.ClOrdID) for m in again.received].count("a1") == 2
    assert again.rejects == []

    # the other way: a message of ours lost on its way makes the acceptor ask for it
    body = [
        (Tag.ClOrdID, "a3"),
        (Tag.Symbol, "ACME"),
        (Tag.Side, BUY),
        (Tag.TransactTime, utc_timestamp(time.time_ns())),
    ]
    again.session.send(FixMsgType.NEW_ORDER_SINGLE, body + [(Tag.OrderQty, 1), (Tag.OrdType, 2), (Tag.Price, 100)])
    again.session.data_to_send()  # never sent
    again.new_order("a4", "ACME", BUY, 1, price=100)
    report(again, "a3", ExecType.NEW), report(again, "a4", ExecType.NEW)
    requests = [m for m in again.wire if m.msg_type == FixMsgType.RESEND_REQUEST]
    assert len(requests) == 1 and again.rejects == []


def test_garbage_and_bad_checksums(exchange):
    bystander = exchange.client("BOB1", BOB)
    alice = exchange.client("ALICE1")
    # a bad CheckSum: ignored, then recovered through the gap it leaves
    alice.new_order("a1", "ACME", BUY, 1, price=100)
    alice.session.data_to_send()
    raw = alice.session.store.messages[alice.session.store.next_sender_seq - 1]
    alice.send_raw(raw[:-4] + b"%03d\x01" % ((int(raw[-4:-1]) + 1) % 256))
    alice.new_order("a2", "ACME", BUY, 1, price=100)
    assert report(alice, "a1").text(Tag.ExecType) == ExecType.NEW
    assert report(alice, "a2").text(Tag.ExecType) == ExecType.NEW
    exchange.wait_log("ignored a garbled message (CheckSum")

    # garbage: that session ends with a Logout saying why, and a log line
    alice.send_raw(b"GET / HTTP/1.1\r\nHost: ringex\r\n\r\n")
    with pytest.raises(FixSessionClosed):
        alice.poll(5)
        alice.next_message(timeout=0.5)
    logout = [m for m in alice.wire if m.msg_type == FixMsgType.LOGOUT][-1]
    assert "unparsable" in logout.text(Tag.Text)
    exchange.wait_log("FIX session ALICE1 closed: unparsable input")
    # a connection that sends garbage first is dropped without a word
    sock = exchange.raw()
    sock.sendall(b"\x00" * 100)
    assert read_until_closed(sock, 10) == []
    # nobody else noticed
    bystander.new_order("b1", "ACME", SELL, 1, price=900)
    assert report(bystander, "b1").text(Tag.ExecType) == ExecType.NEW
    assert exchange.stages.alive(FIX)


def test_a_restarted_acceptor_loses_nothing_and_settles_what_was_in_doubt(exchange):
    store = MemoryStore()
    alice = exchange.client("ALICE1", store=store)
    alice.new_order("a1", "ACME", BUY, 10, price=105)
    report(alice, "a1", ExecType.NEW)

    # an order on its way while the acceptor dies: the journaler is paused, so the
    # gateway holds the command, unacknowledged, when the acceptor is killed
    exchange.stages.pause(JOURNALER)
    alice.new_order("a2", "ACME", BUY, 3, price=100)
    time.sleep(0.3)
    exchange.stages.kill(FIX)
    exchange.stages.resume(JOURNALER)
    # fills while it is down
    v1 = exchange.v1(BOB)
    assert v1.sell("ACME", 10, 105).ok
    exchange.stages.start(FIX)

    again = exchange.client("ALICE1", store=store)
    assert report(again, "a1", ExecType.TRADE).text(Tag.OrdStatus) == OrdStatus.FILLED
    # a2 reached the journal: it is an order, reported New, never rejected as lost
    assert report(again, "a2", ExecType.NEW).text(Tag.OrderID) != "NONE"
    assert again.rejects == []

    # an order the gateway never took: the gateway is stopped with it in its socket
    # buffer and killed, so it never reaches a ring; it is rejected as not entered
    exchange.stages.pause(GATEWAY)
    again.new_order("a3", "ACME", BUY, 1, price=100)
    time.sleep(0.3)
    exchange.stages.kill(GATEWAY)
    lost = report(again, "a3", ExecType.REJECTED, timeout=20)
    assert "not entered" in lost.text(Tag.Text) and "safe to send it again" in lost.text(Tag.Text)
    exchange.stages.start(GATEWAY)
    # the session's gateway connection comes back by itself
    deadline = time.monotonic() + 10
    while True:
        again.new_order(f"a4-{time.monotonic_ns()}", "ACME", BUY, 1, price=100)
        m = again.next_message()
        if m.text(Tag.ExecType) == ExecType.NEW:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.2)


def test_with_tracing_on_the_acceptor_notes_the_turns_that_carried_orders(tmp_path):
    # perf/fix_bench.py --trace cuts each FIX order's path at these stamps
    exchange = FixExchange(tmp_path / "x", trace_every=1000)
    try:
        alice = exchange.client("ALICE1")
        for i in range(3):
            alice.new_order(f"t{i}", "ACME", BUY, 1, price=100 + 5 * i)
            report(alice, f"t{i}", ExecType.NEW)
        data = exchange.data
    finally:
        exchange.close()  # the acceptor writes what it holds as it stops
    turns = read_turns(data, FIX)
    assert int(turns["orders"].sum()) == 3 and int(turns["replies"].sum()) == 3
    assert (turns["wake"] <= turns["handled"]).all() and (turns["handled"] <= turns["committed"]).all()
    assert (turns["committed"] <= turns["sent"]).all()
    # each order's turn came before the turn of its K
    order_turns = np.repeat(turns["sent"][turns["orders"] > 0], turns["orders"][turns["orders"] > 0])
    reply_turns = np.repeat(turns["wake"][turns["replies"] > 0], turns["replies"][turns["replies"] > 0])
    assert (order_turns < reply_turns).all()
