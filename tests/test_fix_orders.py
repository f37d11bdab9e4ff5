"""ringex.fix.orders without sockets: the order router on a real store, fed the gateway's
replies and the matcher's events in each order they can reach the acceptor.

New goes out on the gateway's K or the order's first event, whichever comes first,
never twice, and a matcher refusal after a New is a Rejected after it (FIX 4.4 lets an
order pass from New to Rejected). The acceptor's tests cover the same over sockets,
where which comes first is up to the scheduler; here each order is forced.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ringex.codes import EventKind, EventReason, ExecType, FixMsgType, FixOrdType, FixSide, OrdStatus, Side, Tag
from ringex.config import SymbolSpec
from ringex.fix.codec import parse_frame, utc_timestamp
from ringex.fix.orders import OrderRouter
from ringex.fix.session import MemoryStore, compose
from ringex.fix.store import FixStore
from ringex.records import EVENT

ACME = SymbolSpec(name="ACME", tick=1, price_min=1, price_max=10_000, max_qty=1_000)
ACCOUNT = 1001
OTHER = 1002


class Outbox:
    """The acceptor's side of the router: what it was asked to send."""

    def __init__(self) -> None:
        self.reports: list[dict[int, bytes]] = []
        self.forwarded: list[int] = []

    def report(self, comp_id: str, msg_type: str, body) -> None:
        fields = body if isinstance(body, list) else [f.split(b"=", 1) for f in body.split(b"\x01") if f]
        self.reports.append(
            {int(tag): value if isinstance(value, bytes) else str(value).encode() for tag, value in fields}
        )
        self.reports[-1][int(Tag.MsgType)] = msg_type.encode()

    def forward(self, comp_id: str, cid: int, frame: bytes) -> bool:
        self.forwarded.append(cid)
        return True

    def exec_types(self) -> list[str]:
        return [r[int(Tag.ExecType)].decode() for r in self.reports]


@pytest.fixture
def store(tmp_path):
    with FixStore(tmp_path) as store:
        yield store


def new_order(router: OrderRouter, cl_ord_id: str, price: int = 100, qty: int = 10) -> int:
    """A NewOrderSingle from session TRADER1; returns the v1 client_order_id it went out with."""
    body = [(Tag.ClOrdID, cl_ord_id), (Tag.Symbol, "ACME"), (Tag.Side, FixSide.BUY)]
    body += [(Tag.TransactTime, utc_timestamp(time.time_ns())), (Tag.OrderQty, qty)]
    body += [(Tag.OrdType, FixOrdType.LIMIT), (Tag.Price, price)]
    message = parse_frame(
        compose(MemoryStore(), "TRADER1", "RINGEX", FixMsgType.NEW_ORDER_SINGLE, body, time.time_ns())
    )
    router.on_message("TRADER1", ACCOUNT, None, message)  # no session: nothing here is a session-level reject
    router.flush()
    router.store.commit()
    return router.outbox.forwarded[-1]


def acked_order(store: FixStore, cl_ord_id: str, order_id: int) -> tuple[OrderRouter, int]:
    """A router on ``store`` with one order entered and acknowledged (its K), flushed."""
    router = OrderRouter((ACME,), store, Outbox())
    cid = new_order(router, cl_ord_id)
    router.on_reply(cid, True, order_id, 0, time.time_ns())
    router.flush()
    return router, cid


def events(*rows: dict) -> np.ndarray:
    out = np.zeros(len(rows), EVENT)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i][name] = value
    return out


def accepted(cid: int, order_id: int, qty: int = 10) -> dict:
    return dict(kind=EventKind.ACCEPTED, side=Side.BUY, order_id=order_id, client_order_id=cid, account=ACCOUNT,
                price=100, qty=qty, remaining=qty)  # fmt: skip


def traded(cid: int, order_id: int, qty: int, remaining: int) -> dict:
    # the order rests and a seller of another account takes qty of it
    return dict(kind=EventKind.TRADE, side=Side.SELL, order_id=99, client_order_id=5, account=OTHER, price=100,
                qty=qty, remaining=0, contra_order_id=order_id, contra_client_order_id=cid, contra_account=ACCOUNT,
                contra_remaining=remaining)  # fmt: skip


def test_new_goes_out_on_the_k_and_the_first_event_adds_no_second_new(store):
    router = OrderRouter((ACME,), store, Outbox())
    cid = new_order(router, "o1")
    assert router.outbox.reports == []  # nothing is said before the exchange has the order
    received_ns = time.time_ns()
    router.on_reply(cid, True, 7, 0, received_ns)
    (new,) = router.outbox.reports
    assert new[int(Tag.ExecType)] == b"0" and new[int(Tag.OrdStatus)] == b"0"
    assert new[int(Tag.ExecID)] == b"K-7" and new[int(Tag.OrderID)] == b"7"
    assert new[int(Tag.TransactTime)] == utc_timestamp(received_ns)  # when the exchange received it
    router.on_events("ACME", 1, events(accepted(cid, 7), traded(cid, 7, 4, 6)))
    assert router.outbox.exec_types() == [ExecType.NEW, ExecType.TRADE]
    assert router.outbox.reports[-1][int(Tag.CumQty)] == b"4"


def test_an_event_before_the_k_gives_the_new_and_the_k_adds_nothing(store):
    router = OrderRouter((ACME,), store, Outbox())
    cid = new_order(router, "o1")
    router.on_events("ACME", 1, events(accepted(cid, 7)))
    (new,) = router.outbox.reports
    assert new[int(Tag.ExecID)] == b"ACME-1-N" and new[int(Tag.OrderID)] == b"7"
    router.on_reply(cid, True, 7, 0, time.time_ns())
    assert router.outbox.exec_types() == [ExecType.NEW]
    router.on_events("ACME", 2, events(traded(cid, 7, 10, 0)))
    assert router.outbox.exec_types() == [ExecType.NEW, ExecType.TRADE]
    assert router.outbox.reports[-1][int(Tag.OrdStatus)] == OrdStatus.FILLED.encode()
    assert not router.waiting  # nothing in flight, nothing open


def test_a_matcher_refusal_after_the_k_is_a_rejected_after_the_new(store):
    router = OrderRouter((ACME,), store, Outbox())
    cid = new_order(router, "o1")
    router.on_reply(cid, True, 7, 0, time.time_ns())
    refusal = dict(kind=EventKind.REJECTED, reason=EventReason.WOULD_TRADE, order_id=7, client_order_id=cid,
                   account=ACCOUNT)  # fmt: skip
    # another account's refusal with the same client_order_id is not this order's
    router.on_events("ACME", 1, events({**refusal, "account": OTHER}))
    assert router.outbox.exec_types() == [ExecType.NEW]
    router.on_events("ACME", 2, events(refusal))
    assert router.outbox.exec_types() == [ExecType.NEW, ExecType.REJECTED]
    rejected = router.outbox.reports[-1]
    assert rejected[int(Tag.OrdStatus)] == OrdStatus.REJECTED.encode() and b"post-only" in rejected[int(Tag.Text)]
    assert rejected[int(Tag.ExecID)] == b"ACME-2-J" and rejected[int(Tag.LeavesQty)] == b"0"
    assert not router.waiting


def test_after_a_restart_the_journals_events_send_no_second_new(tmp_path):
    with FixStore(tmp_path) as store:
        router, cid = acked_order(store, "o1", 7)
        store.commit()  # the acceptor's turn: the New is stored before it is sent
    with FixStore(tmp_path) as store:
        router = OrderRouter((ACME,), store, Outbox())
        assert not router.unanswered()  # answered by its K: nothing in doubt
        # the events the acceptor had not taken yet, from the journal
        router.on_events("ACME", 1, events(accepted(cid, 7), traded(cid, 7, 10, 0)))
        assert router.outbox.exec_types() == [ExecType.TRADE]
        assert router.outbox.reports[0][int(Tag.OrderID)] == b"7"


def test_a_new_order_in_flight_at_a_restart_is_in_doubt_and_its_k_still_reports_new(tmp_path):
    # A new order's request is not stored: it is read off the order (live, not
    # reported New), and an older store's stored one is read once and dropped.
    with FixStore(tmp_path) as store:
        router = OrderRouter((ACME,), store, Outbox())
        cid = new_order(router, "o1")
        answered = new_order(router, "o2")
        router.on_reply(answered, True, 8, 0, time.time_ns())
        # as an older acceptor stored it
        store.put_request(cid, dict(cid=cid, kind="new", key=cid, account=ACCOUNT, requester="TRADER1", cl_ord_id="o1"))
        router.flush()
        store.commit()
        assert list(store.requests())  # the older store's record
    with FixStore(tmp_path) as store:
        router = OrderRouter((ACME,), store, Outbox())
        assert router.unanswered() == [cid]  # o2 was answered by its K; o1 is in doubt
        assert router.requests[cid].cl_ord_id == "o1" and router.requests[cid].requester == "TRADER1"
        router.flush()
        store.commit()
        assert not list(store.requests())  # nothing stored for a new order
        router.on_reply(cid, True, 7, 0, time.time_ns())
        (new,) = router.outbox.reports
        assert new[int(Tag.ExecType)] == b"0" and new[int(Tag.ClOrdID)] == b"o1"
        assert not router.unanswered()


def test_an_older_stores_order_as_a_dict_is_still_read(tmp_path):
    with FixStore(tmp_path) as store:
        router, cid = acked_order(store, "o1", 7)
        store.put_order(cid, vars(router.live[cid]), live=True)  # as an older acceptor wrote it
        store.commit()
    with FixStore(tmp_path) as store:
        router = OrderRouter((ACME,), store, Outbox())
        assert router.live[cid].cl_ord_id == "o1" and router.live[cid].order_id == 7
        router.on_events("ACME", 1, events(traded(cid, 7, 10, 0)))
        assert router.outbox.exec_types() == [ExecType.TRADE]
        router.flush()
        store.commit()
        assert isinstance(store.order(cid), tuple)  # written back in today's form
