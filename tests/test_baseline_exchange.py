"""``perf/baseline_exchange.py``, the single-process yardstick: its book against the
reference book, and a real process: logins, validation, K after the journal, trade
prints and private order events, recovery from its journal after a kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import socket

import numpy as np
import pytest
from support.commands import CommandStream, Mix
from support.reference_book import ReferenceBook

from perf.baseline_exchange import Book
from perf.targets import BaselineExchange
from ringex.codes import EventKind, EventReason, OrderType, Reason, Side, Tif
from ringex.config import SymbolSpec
from ringex.order_entry.protocol import (
    REPLY,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_new_order,
    encode_replace,
)
from ringex.records import EVENT

##########################################################################################
# the book
##########################################################################################

_REASON = {r.name.lower().encode(): int(r) for r in EventReason}


class Recorder:
    """The book's events as (kind, side, reason, order_id, client_order_id, account,
    price, qty, remaining, trade_id, contra order_id, contra client_order_id, contra
    account, contra remaining): the EVENT fields both books fill alike."""

    def __init__(self) -> None:
        self.out: list[tuple] = []

    def trade(self, book, price, qty, taker, maker, ts):
        self.out.append(
            (EventKind.TRADE, taker.side, 0, taker.oid, taker.coid, taker.account, price, qty, taker.qty,
             book.trade_id, maker.oid, maker.coid, maker.account, maker.qty)
        )  # fmt: skip

    def accepted(self, book, o, ts, kind=EventKind.ACCEPTED):
        self.out.append((kind, o.side, 0, o.oid, o.coid, o.account, o.price, o.qty, o.qty, 0, 0, 0, 0, 0))

    def replaced(self, book, o, ts):
        self.accepted(book, o, ts, EventKind.REPLACED)

    def cancelled(self, book, oid, coid, account, side, price, qty, reason, ts):
        self.out.append((EventKind.CANCELLED, side, _REASON[reason], oid, coid, account, price, qty, 0, 0, 0, 0, 0, 0))

    def rejected(self, book, oid, coid, account, side, price, qty, reason, ts):
        self.out.append((EventKind.REJECTED, side, _REASON[reason], oid, coid, account, price, qty, 0, 0, 0, 0, 0, 0))


_FIELDS = [
    "kind", "side", "reason", "order_id", "client_order_id", "account", "price", "qty", "remaining",
    "trade_id", "contra_order_id", "contra_client_order_id", "contra_account", "contra_remaining",
]  # fmt: skip


@pytest.mark.parametrize("seed, capacity", [(1, 1 << 16), (2, 1 << 16), (3, 40)])
def test_book_matches_the_reference_book_event_for_event(seed, capacity):
    spec = SymbolSpec("ACME", price_min=1, price_max=1000, capacity=capacity)
    reference = ReferenceBook(spec)
    recorder = Recorder()
    book = Book("ACME", capacity, recorder)
    stream = CommandStream(spec, random.Random(seed), mix=Mix(foreign=0.1))
    seq = 0
    for _ in range(20):
        for cmd in stream.batch("ACME", 200):
            expected = [tuple(int(e[f]) for f in _FIELDS) for e in reference.apply(cmd[None], seq)]
            seq += 1
            recorder.out.clear()
            c = {f: int(cmd[f]) for f in ("order_id", "client_order_id", "account", "price", "qty", "ts_ns")}
            if cmd["msg_type"] == ord("N"):
                book.new(
                    c["order_id"], c["client_order_id"], c["account"], int(cmd["side"]), int(cmd["order_type"]),
                    int(cmd["tif"]), c["price"], c["qty"], c["ts_ns"],
                )  # fmt: skip
            elif cmd["msg_type"] == ord("C"):
                book.cancel(c["order_id"], c["client_order_id"], c["account"], c["ts_ns"])
            else:
                book.replace(c["order_id"], c["client_order_id"], c["account"], c["price"], c["qty"], c["ts_ns"])
            assert recorder.out == expected, (seq, cmd)
    resting = sorted((o.oid, o.coid, o.account, o.side, o.price, o.qty) for o in book.orders.values())
    assert resting == sorted(reference.resting())
    assert EVENT.itemsize == 128  # the fields compared above are EVENT's


##########################################################################################
# the process
##########################################################################################


class Client:
    """A raw order entry session: frames out, REPLY records in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def replies(self, n: int):
        buf = b""
        while len(buf) < 64 * n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return np.frombuffer(buf, dtype=REPLY)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True


class Md:
    """A raw market data session: JSON lines."""

    def __init__(self, port: int, *requests: dict) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))

    def until(self, pred) -> list[dict]:
        seen = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                assert chunk, f"market data closed after {seen}"
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            seen.append(json.loads(line))
            if pred(seen[-1]):
                return seen


@pytest.fixture(scope="module")
def baseline():
    with BaselineExchange("fsync") as target:
        yield target


def _login(target, account=None):
    account, token = target.accounts[0] if account is None else account
    c = Client(target.port)
    c.send(encode_login(account, token, client_order_id=77))
    (a,) = c.replies(1)
    assert chr(a["msg_type"]) == "A" and a["client_order_id"] == 77 and a["session"] > 0
    return c


def test_orders_are_acked_in_order_and_trades_reach_both_channels(baseline):
    (acct, token), (acct2, token2) = baseline.accounts[:2]
    trades = Md(baseline.md_port, {"op": "subscribe", "channel": "trades", "symbol": "BOLT"})
    trades.until(lambda m: m["type"] == "subscribed")
    mine = Md(
        baseline.md_port, {"op": "login", "account": acct2, "token": token2}, {"op": "subscribe", "channel": "orders"}
    )
    mine.until(lambda m: m["type"] == "subscribed")
    seller, buyer = _login(baseline, (acct, token)), _login(baseline, (acct2, token2))
    seller.send(encode_new_order("BOLT", Side.SELL, 10, 500, client_order_id=1))
    (k,) = seller.replies(1)
    assert chr(k["msg_type"]) == "K" and k["seq"] == 0 and k["order_id"] > 0 and k["ts_ns"] > 0
    buyer.send(
        encode_new_order("BOLT", Side.BUY, 4, 501, client_order_id=1),
        encode_new_order("BOLT", Side.BUY, 4, 0, client_order_id=2),  # a limit at price 0
        encode_heartbeat(),  # never answered
        encode_new_order("NOPE", Side.BUY, 4, 1, client_order_id=3),
        encode_cancel("BOLT", 0, client_order_id=4),
        encode_new_order("BOLT", Side.BUY, 1, 500, client_order_id=5, order_type=OrderType.MARKET, tif=Tif.GTC),
        encode_new_order("BOLT", Side.BUY, 1, 0, client_order_id=6, order_type=OrderType.MARKET, tif=Tif.IOC),
        encode_replace("BOLT", int(k["order_id"]), 500, 1, client_order_id=7),  # not the owner: K, then rejected
    )
    r = buyer.replies(7)
    assert [chr(x) for x in r["msg_type"]] == ["K", "X", "X", "X", "X", "K", "K"]
    assert r["client_order_id"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert r["reason"].tolist()[1:5] == [
        Reason.BAD_PRICE,
        Reason.UNKNOWN_SYMBOL,
        Reason.BAD_ORDER_ID,
        Reason.BAD_ORDER_TYPE,
    ]
    assert r["seq"][0] == 1 and r["seq"][5] == 2 and r["seq"][6] == 3  # the symbol's journal sequence
    taker = int(r["order_id"][0])
    (trade,) = [m for m in trades.until(lambda m: m["type"] == "trade") if m["type"] == "trade"]
    assert trade == {
        "type": "trade", "channel": "trades", "symbol": "BOLT", "seq": trade["seq"], "trade_id": trade["trade_id"],
        "price": 500, "qty": 4, "taker_side": "buy", "maker_order_id": int(k["order_id"]), "taker_order_id": taker,
        "ts_ns": int(r["ts_ns"][0]),
    }  # fmt: skip
    events = mine.until(lambda m: m["type"] == "rejected")
    kinds = [(m["type"], m.get("liquidity"), m.get("reason")) for m in events if m["channel"] == "orders"]
    assert kinds == [("fill", "taker", None), ("fill", "taker", None), ("rejected", None, "not_owner")]
    assert events[-2]["remaining"] == 0 and events[-2]["order_id"] == int(r["order_id"][5])  # the market order


def test_logins_are_checked_and_requests_wait_for_one(baseline):
    account, token = baseline.accounts[0]
    anonymous = Client(baseline.port)
    anonymous.send(encode_new_order("ACME", Side.BUY, 1, 10, client_order_id=9))
    (x,) = anonymous.replies(1)
    assert chr(x["msg_type"]) == "X" and x["reason"] == Reason.NOT_LOGGED_IN
    wrong = Client(baseline.port)
    wrong.send(encode_login(account, token + 1))
    (j,) = wrong.replies(1)
    assert chr(j["msg_type"]) == "J" and j["reason"] == Reason.BAD_CREDENTIALS
    assert wrong.closed()
    twice = _login(baseline)
    twice.send(encode_login(account, token, client_order_id=5), b"Z" + bytes(63))
    x = twice.replies(2)
    assert [chr(m) for m in x["msg_type"]] == ["X", "X"]
    assert x["reason"].tolist() == [Reason.ALREADY_LOGGED_IN, Reason.UNKNOWN_MESSAGE]


def test_a_restart_recovers_the_books_from_the_journal(tmp_path):
    data = tmp_path / "data"
    with BaselineExchange("fsync", data=data) as first:
        accounts = first.accounts
        c = _login(first, accounts[0])
        c.send(encode_new_order("CRUX", Side.BUY, 7, 300, client_order_id=1))
        (k,) = c.replies(1)
        assert chr(k["msg_type"]) == "K"
        os.kill(first.pids["baseline"], signal.SIGKILL)  # acked, so it is in the journal
    restarted = BaselineExchange("fsync", data=data)
    with restarted as second:
        assert "1 journaled commands replayed" in restarted.output
        events = Md(
            second.md_port,
            {"op": "login", "account": accounts[0][0], "token": accounts[0][1]},
            {"op": "subscribe", "channel": "orders", "symbol": "CRUX"},
        )
        events.until(lambda m: m["type"] == "subscribed")
        c = _login(second, accounts[0])
        c.send(encode_cancel("CRUX", int(k["order_id"]), client_order_id=2))
        (k2,) = c.replies(1)
        assert chr(k2["msg_type"]) == "K" and k2["seq"] == 1  # the journal goes on
        (cancelled,) = [m for m in events.until(lambda m: m["type"] in ("cancelled", "rejected"))][-1:]
        assert cancelled["type"] == "cancelled" and cancelled["reason"] == "user_request" and cancelled["qty"] == 7
