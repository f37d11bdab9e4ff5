"""The yardstick: the single-process exchange a competent Python developer would write
without the disruptor. ``perf/e2e.py`` runs it side by side with ringex, under the same
load, to show what the disruptor's processes and rings buy (or cost).

Topology (one process, one asyncio event loop)::

  order entry ──TCP──► data_received: parse, validate, throttle, stamp, match ──┐
  clients ◄── K/X ─────────────┐                 (in-memory books)             │
                               │    next loop turn: one LMDB write txn ◄───────┘
  subscribers ◄── trades, ─────┴─── (sync on commit in fsync mode), then every reply
  (TCP lines)     order events      and market data message of the turn is written

What it shares with ringex (so the comparison is like for like):

- order entry protocol v1 (64-byte frames), the same accounts and secrets
  (``ringex.order_entry.accounts.AccountStore``; a verified pair is cached, the scrypt check of a new
  one runs off the loop), the same reject reasons and validation, the same session
  limits (20,000 requests/s with bursts of 2,000, 4,096 waiting for the journal, 16
  unknown frames), exactly one K or X per request, in request order;
- K only once the command is durable: the commands of a loop turn are journaled in one
  LMDB transaction at the start of the next turn (group commit), synced in ``fsync``
  mode, not in ``async`` mode; replies and market data of the turn go out after it;
- the matching rules (docs/matching.md): price-time priority, trades at the resting
  price, limit and market, GTC/IOC/FOK/post-only, cancel, replace keeping its place on
  a same-price size-down, capacity (BOOK_FULL), the same event reasons;
- the market data JSON lines of ``docs/market-data.md`` for the ``trades`` and the
  private ``orders`` channels (byte for byte the notifier's format), published only
  after the commit that made their command durable.

What it leaves out, as a yardstick may: the bbo and depth channels, WebSocket,
self-trade prevention (ringex's default is off too), heartbeats and idle timeouts, and
snapshots (recovery replays the whole journal of commands through the book).

    python -m perf.baseline_exchange --data DIR [--durability fsync|async]
        [--order-port 7101] [--md-port 7102]

prints the demo accounts it created (first start) and ``stop with Ctrl-C`` once it
serves; SIGTERM or Ctrl-C stops it after a last commit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

import lmdb
from sortedcontainers import SortedDict

from ringex.codes import MsgType, OrderType, Reason, ReplyType, Side, Tif
from ringex.config import DEFAULT_SYMBOLS
from ringex.order_entry.accounts import AccountStore, create_demo_accounts

__all__ = ["Exchange", "Book", "main"]

_FRAME = struct.Struct("<BBBBI8sQQqqQQ")  # client -> exchange (and the journaled command)
_REPLY = struct.Struct("<BBHI8sQQqqQQ")  # exchange -> client
_N, _C, _R, _L, _H = (int(m) for m in (MsgType.NEW, MsgType.CANCEL, MsgType.REPLACE, MsgType.LOGIN, MsgType.HEARTBEAT))
_K, _X, _A, _J, _E = (
    int(r)
    for r in (
        ReplyType.ACK,
        ReplyType.REJECT,
        ReplyType.LOGIN_ACCEPTED,
        ReplyType.LOGIN_REJECTED,
        ReplyType.ERROR,
    )
)
_BUY, _SELL = int(Side.BUY), int(Side.SELL)
_LIMIT, _MARKET = int(OrderType.LIMIT), int(OrderType.MARKET)
_GTC, _IOC, _FOK, _POST = (int(t) for t in (Tif.GTC, Tif.IOC, Tif.FOK, Tif.POST_ONLY))
_LIMIT_TIFS, _MARKET_TIFS = frozenset((_GTC, _IOC, _FOK, _POST)), frozenset((_IOC, _FOK))
_SIDE = {_BUY: b"buy", _SELL: b"sell"}

# ringex's session limits (the [order_entry] defaults, ringex.config.OrderEntryLimits), so both throttle alike
RATE_PER_S = 20_000.0
BURST = 2000
MAX_IN_FLIGHT = 4096
MAX_GARBAGE = 16
# the notifier's bound on a subscriber's queued bytes before it is cut off
MAX_MD_QUEUE = 1 << 20
# the journal's address space: a sweep writes millions of ~100-byte records (sparse file)
MAP_SIZE = 16 << 30


##########################################################################################
# the book
##########################################################################################


class Order:
    __slots__ = ("oid", "coid", "account", "side", "price", "qty")

    def __init__(self, oid: int, coid: int, account: int, side: int, price: int, qty: int) -> None:
        self.oid, self.coid, self.account, self.side, self.price, self.qty = oid, coid, account, side, price, qty


class Book:
    """One symbol's price-time book: per side a ``SortedDict`` price -> ``OrderedDict``
    (order id -> Order, oldest first), and an order id index. ``events`` gets told what
    happened (see ``Publisher``); everything matches docs/matching.md with
    self-trade prevention off."""

    def __init__(self, name: str, capacity: int, events) -> None:
        self.name = name
        self.symbol = name.encode()
        self.capacity = capacity
        self.events = events
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.orders: dict[int, Order] = {}
        self.trade_id = 0

    def new(self, oid, coid, account, side, otype, tif, price, qty, ts) -> None:
        ev = self.events
        if (tif == _GTC or tif == _POST) and len(self.orders) >= self.capacity:
            ev.rejected(self, oid, coid, account, side, price, qty, b"book_full", ts)
            return
        market = otype == _MARKET
        if tif == _POST or tif == _FOK:
            opposite = self.asks if side == _BUY else self.bids
            if tif == _POST and opposite:
                best = opposite.peekitem(0 if side == _BUY else -1)[0]
                if (best <= price) if side == _BUY else (best >= price):
                    ev.rejected(self, oid, coid, account, side, price, qty, b"would_trade", ts)
                    return
            if tif == _FOK and not self._fillable(opposite, side, price, qty, market):
                ev.cancelled(self, oid, coid, account, side, price, qty, b"fok_unfilled", ts)
                return
        order = Order(oid, coid, account, side, price, qty)
        self._take(order, market, ts)
        if order.qty == 0:
            return
        if market:
            ev.cancelled(self, oid, coid, account, side, price, order.qty, b"no_liquidity", ts)
        elif tif == _IOC:
            ev.cancelled(self, oid, coid, account, side, price, order.qty, b"ioc_remainder", ts)
        else:
            self._rest(order)
            ev.accepted(self, order, ts)

    def cancel(self, oid, coid, account, ts) -> None:
        order = self._target(oid, coid, account, 0, 0, ts)
        if order is not None:
            order.coid = coid
            self._remove(order)
            self.events.cancelled(
                self, oid, coid, order.account, order.side, order.price, order.qty, b"user_request", ts
            )

    def replace(self, oid, coid, account, price, qty, ts) -> None:
        order = self._target(oid, coid, account, price, qty, ts)
        if order is None:
            return
        order.coid = coid
        if price == order.price and qty < order.qty:  # keeps its place in the queue
            order.qty = qty
            self.events.replaced(self, order, ts)
            return
        self._remove(order)
        order.price, order.qty = price, qty
        self.events.replaced(self, order, ts)
        self._take(order, False, ts)
        if order.qty:
            self._rest(order)

    def _target(self, oid, coid, account, price, qty, ts) -> Order | None:
        order = self.orders.get(oid)
        if order is None:
            self.events.rejected(self, oid, coid, account, 0, price, qty, b"unknown_order", ts)
        elif order.account != account:
            self.events.rejected(self, oid, coid, account, 0, price, qty, b"not_owner", ts)
            return None
        return order

    def _rest(self, order: Order) -> None:
        side = self.bids if order.side == _BUY else self.asks
        level = side.get(order.price)
        if level is None:
            level = side[order.price] = collections.OrderedDict()
        level[order.oid] = order
        self.orders[order.oid] = order

    def _remove(self, order: Order) -> None:
        side = self.bids if order.side == _BUY else self.asks
        level = side[order.price]
        del level[order.oid]
        if not level:
            del side[order.price]
        del self.orders[order.oid]

    def _take(self, taker: Order, market: bool, ts: int) -> None:
        buy = taker.side == _BUY
        book, best_index = (self.asks, 0) if buy else (self.bids, -1)
        ev = self.events
        while taker.qty and book:
            price, level = book.peekitem(best_index)
            if not market and (price > taker.price if buy else price < taker.price):
                return
            while taker.qty and level:
                maker = next(iter(level.values()))
                fill = min(taker.qty, maker.qty)
                taker.qty -= fill
                maker.qty -= fill
                self.trade_id += 1
                ev.trade(self, price, fill, taker, maker, ts)
                if not maker.qty:
                    del level[maker.oid]
                    del self.orders[maker.oid]
            if not level:
                del book[price]

    @staticmethod
    def _fillable(opposite: SortedDict, side: int, price: int, qty: int, market: bool) -> bool:
        prices = opposite.keys() if side == _BUY else reversed(opposite.keys())
        for p in prices:
            if not market and (p > price if side == _BUY else p < price):
                return False
            qty -= sum(o.qty for o in opposite[p].values())
            if qty <= 0:
                return True
        return False


##########################################################################################
# market data
##########################################################################################

# The notifier's compact JSON, as bytes templates (every field an integer or a fixed word)
_TRADE = (
    b'{"type":"trade","channel":"trades","symbol":"%s","seq":%d,"trade_id":%d,"price":%d,"qty":%d,'
    b'"taker_side":"%s","maker_order_id":%d,"taker_order_id":%d,"ts_ns":%d}\n'
)
_HEAD = b'{"type":"%s","channel":"orders","symbol":"%s","seq":%d,"account":%d,"order_id":%d,"client_order_id":%d,"side":"%s",'
_FILL = _HEAD + b'"trade_id":%d,"price":%d,"qty":%d,"remaining":%d,"liquidity":"%s","ts_ns":%d}\n'
_OPEN = _HEAD + b'"price":%d,"qty":%d,"remaining":%d,"ts_ns":%d}\n'  # accepted, replaced
_CANCELLED = _HEAD + b'"price":%d,"qty":%d,"remaining":0,"reason":"%s","ts_ns":%d}\n'
_REJECTED = _HEAD + b'"price":%d,"qty":%d,"reason":"%s","ts_ns":%d}\n'


def _line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Publisher:
    """Turns book events into market data lines queued on the subscribed sessions (sent
    after the commit). Streams and their seq as docs/market-data.md: ``trades`` per
    symbol counts every trade; an account's ``orders`` stream (all symbols, or one)
    counts while it has subscribers."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.subscribers: dict[tuple, set] = {}
        self.seq: collections.Counter = collections.Counter()
        self.private: collections.Counter = collections.Counter()  # account -> subscriptions

    def _private(self, account: int, symbol: str, template: bytes, kind: bytes, args: tuple) -> None:
        # each of the account's two streams (every symbol, this symbol) has its own seq
        for stream in (("orders", account, None), ("orders", account, symbol)):
            subs = self.subscribers.get(stream)
            if subs:
                seq = self.seq[stream] = self.seq[stream] + 1
                line = template % (kind, symbol.encode(), seq, account, *args)
                dirty = self.exchange.dirty_md
                for session in subs:
                    session.pending += line
                    dirty.add(session)

    def trade(self, book: Book, price: int, qty: int, taker: Order, maker: Order, ts: int) -> None:
        stream = ("trades", book.name)
        seq = self.seq[stream] = self.seq[stream] + 1
        subs = self.subscribers.get(stream)
        if subs:
            line = _TRADE % (book.symbol, seq, book.trade_id, price, qty, _SIDE[taker.side], maker.oid, taker.oid, ts)
            dirty = self.exchange.dirty_md
            for session in subs:
                session.pending += line
                dirty.add(session)
        for o, liquidity in ((taker, b"taker"), (maker, b"maker")):
            if o.account in self.private:
                args = (o.oid, o.coid, _SIDE[o.side], book.trade_id, price, qty, o.qty, liquidity, ts)
                self._private(o.account, book.name, _FILL, b"fill", args)

    def accepted(self, book: Book, o: Order, ts: int, kind: bytes = b"accepted") -> None:
        if o.account in self.private:
            self._private(o.account, book.name, _OPEN, kind, (o.oid, o.coid, _SIDE[o.side], o.price, o.qty, o.qty, ts))

    def replaced(self, book: Book, o: Order, ts: int) -> None:
        self.accepted(book, o, ts, b"replaced")

    def cancelled(self, book: Book, oid, coid, account, side, price, qty, reason: bytes, ts) -> None:
        if account in self.private:
            args = (oid, coid, _SIDE.get(side, b"?"), price, qty, reason, ts)
            self._private(account, book.name, _CANCELLED, b"cancelled", args)

    def rejected(self, book: Book, oid, coid, account, side, price, qty, reason: bytes, ts) -> None:
        if account in self.private:
            args = (oid, coid, _SIDE.get(side, b"?"), price, qty, reason, ts)
            self._private(account, book.name, _REJECTED, b"rejected", args)


class Silent:
    """The events of a replay: nobody hears them."""

    def trade(self, *args) -> None:
        pass

    accepted = replaced = cancelled = rejected = trade


##########################################################################################
# sessions
##########################################################################################


class OrderSession(asyncio.Protocol):
    """One order entry connection: frames in, replies queued until the next commit."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.session_id = exchange.next_session_id()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.out = bytearray()
        self.account = 0
        self.logged_in = False
        self.verifying = False
        self.closing = False
        self.garbage = 0
        self.in_flight = 0  # K's waiting for the commit
        self.tokens = float(BURST)
        self.refilled = time.monotonic()

    def connection_made(self, transport) -> None:
        self.transport = transport  # asyncio sets TCP_NODELAY on its TCP transports

    def connection_lost(self, exc) -> None:
        self.closing = True

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        data = self.buf + data if self.buf else data
        if self.verifying:
            self.buf = data
            if len(data) > 64 * 1024:  # flooding while we check its login, as ringex
                self.close_with(Reason.THROTTLED, time.time_ns())
            return
        whole = len(data) - len(data) % 64
        self.buf = data[whole:]
        if whole:
            self.exchange.handle(self, data, whole, time.time_ns())

    def queue(self, reply: bytes) -> None:
        self.out += reply
        self.exchange.dirty.add(self)
        self.exchange.schedule_commit()

    def close_with(self, reason: int, ts: int) -> None:
        self.queue(_REPLY.pack(_E, 0, reason, 0, b"", 0, 0, 0, 0, 0, ts))
        self.closing = True

    def flush(self) -> None:
        self.in_flight = 0
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self.out))
            if self.closing:
                self.transport.close()
        self.out.clear()


class MdSession(asyncio.Protocol):
    """One market data connection: JSON requests in, lines out (stream lines after the
    commit, answers to requests at once)."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending = bytearray()
        self.account: int | None = None
        self.streams: set[tuple] = set()
        self.errors = 0

    def connection_made(self, transport) -> None:
        self.transport = transport  # asyncio sets TCP_NODELAY on its TCP transports

    def connection_lost(self, exc) -> None:
        pub = self.exchange.publisher
        for stream in self.streams:
            pub.subscribers[stream].discard(self)
            if stream[0] == "orders":
                pub.private[stream[1]] -= 1
                if not pub.private[stream[1]]:
                    del pub.private[stream[1]]
        self.streams.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        if len(self.buf) > 4096:
            self.error("request longer than 4096 bytes")
        for line in lines:
            if line.strip() and self.transport is not None:
                self.request(line)

    def send_now(self, message: dict) -> None:
        if self.transport is not None:
            self.transport.write(_line(message))

    def error(self, reason: str) -> None:
        self.errors += 1
        self.send_now({"type": "error", "channel": None, "symbol": None, "seq": None, "reason": reason})
        if self.errors >= 5 and self.transport is not None:
            self.transport.close()

    def request(self, line: bytes) -> None:
        try:
            req = json.loads(line)
            op = req["op"]
        except (ValueError, KeyError, TypeError):
            self.error("malformed JSON")
            return
        ex = self.exchange
        if op == "ping":
            self.send_now({"type": "pong", "channel": None, "symbol": None, "seq": None, "ts_ns": time.time_ns()})
        elif op == "login":
            account, token = req.get("account"), req.get("token")
            ok = ex.accounts.verify(account, token)  # a subscriber logs in once: scrypt on the loop is acceptable
            if not ok:
                self.error("bad credentials")
                self.transport.close()
                return
            self.account = account
            self.send_now({"type": "logged_in", "channel": None, "symbol": None, "seq": None, "account": account})
        elif op == "subscribe":
            channel, symbol = req.get("channel"), req.get("symbol")
            if channel == "trades" and symbol in ex.books:
                stream = ("trades", symbol)
            elif channel == "orders" and (symbol is None or symbol in ex.books):
                if self.account is None:
                    self.error("orders: login first")
                    return
                stream = ("orders", self.account, symbol)
            else:
                self.error(f"the baseline serves trades and orders only, for listed symbols: {line[:100]!r}")
                return
            pub = ex.publisher
            pub.subscribers.setdefault(stream, set()).add(self)
            if stream not in self.streams and channel == "orders":
                pub.private[self.account] += 1
            self.streams.add(stream)
            self.send_now({"type": "subscribed", "channel": channel, "symbol": symbol, "seq": pub.seq[stream]})
        else:
            self.error(f"unknown op {op!r}")

    def flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self.pending.clear()
            return
        if self.transport.get_write_buffer_size() > MAX_MD_QUEUE:
            self.pending.clear()
            self.send_now({"type": "error", "channel": None, "symbol": None, "seq": None, "reason": "slow consumer"})
            self.transport.close()
            return
        self.transport.write(bytes(self.pending))
        self.pending.clear()


##########################################################################################
# the exchange
##########################################################################################


class Exchange:
    """Books, sessions and the journal of one process. ``handle`` runs the frames of a
    ``recv``; ``commit`` (scheduled once per loop turn that had work) makes them durable
    and only then sends what they caused."""

    def __init__(self, data_dir: Path, durability: str, symbols=DEFAULT_SYMBOLS) -> None:
        self.accounts = AccountStore.open(data_dir)
        self.publisher = Publisher(self)
        self.books = {s.name: Book(s.name, s.capacity, self.publisher) for s in symbols}
        # symbol bytes -> (name, tick, price_min, price_max, max_qty)
        self.specs = {
            s.name.encode().ljust(8, b"\0"): (s.name, s.tick, s.price_min, s.price_max, s.max_qty) for s in symbols
        }
        sync = durability == "fsync"
        self.env = lmdb.open(str(data_dir / "baseline.lmdb"), map_size=MAP_SIZE, sync=sync, metasync=sync)
        self.pending: list[tuple[bytes, bytes]] = []
        self.dirty: set[OrderSession] = set()
        self.dirty_md: set[MdSession] = set()
        self.commit_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions = 0
        self.journal_seq, self.symbol_seq, self.next_order_id = self._recover()

    def _recover(self) -> tuple[int, dict[str, int], int]:
        """Replay the journaled commands through the books (events unheard): the books,
        the journal position, each symbol's next seq and the next order id."""
        symbol_seq = dict.fromkeys(self.books, 0)
        silent, last_id, n = Silent(), 0, 0
        for book in self.books.values():
            book.events = silent
        with self.env.begin() as txn:
            for _key, value in txn.cursor():
                f = _FRAME.unpack(value)
                self._apply(f)
                name = self.specs[value[8:16]][0]
                symbol_seq[name] += 1
                last_id = max(last_id, f[7])
                n += 1
        for book in self.books.values():
            book.events = self.publisher
        # ids above the last run's even without a journal, as ringex's gateway does
        return n, symbol_seq, max(last_id + 1, time.time_ns() // 1000)

    def _apply(self, f: tuple) -> None:
        mt, side, otype, tif, _session, symbol, coid, oid, price, qty, account, ts = f
        book = self.books[self.specs[symbol][0]]
        if mt == _N:
            book.new(oid, coid, account, side, otype, tif, price, qty, ts)
        elif mt == _C:
            book.cancel(oid, coid, account, ts)
        else:
            book.replace(oid, coid, account, price, qty, ts)

    def next_session_id(self) -> int:
        self.sessions += 1
        return self.sessions

    def schedule_commit(self) -> None:
        if not self.commit_scheduled:
            self.commit_scheduled = True
            self.loop.call_soon(self.commit)  # runs first in the next loop turn

    # -- order entry -----------------------------------------------------------------

    def handle(self, s: OrderSession, data: bytes, end: int, ts: int, start: int = 0) -> None:
        """Answer the frames ``data[start:end]`` of session ``s`` received at ``ts``."""
        now = time.monotonic()
        s.tokens = min(BURST, s.tokens + (now - s.refilled) * RATE_PER_S)
        s.refilled = now
        out = s.out
        pack, unpack_from = _REPLY.pack, _FRAME.unpack_from
        for off in range(start, end, 64):
            f = unpack_from(data, off)
            mt, side, otype, tif, _res, symbol, coid, oid, price, qty, account, token = f
            if mt == _H:
                continue
            if mt == _L:
                if s.logged_in:
                    out += pack(_X, side, Reason.ALREADY_LOGGED_IN, 0, symbol, coid, oid, price, qty, 0, ts)
                    continue
                ok = self.accounts.verify_nowait(account, token)
                if ok is None:  # the slow scrypt check, off the loop; the rest waits
                    s.verifying = True
                    s.buf = data[off + 64 : end] + s.buf
                    future = self.loop.run_in_executor(None, self.accounts.verify, account, token)
                    future.add_done_callback(lambda fut, f=f: self._login_checked(s, f, fut.result()))
                    break
                self._answer_login(s, f, ok, ts)
                if not s.logged_in:
                    break
                continue
            if mt != _N and mt != _C and mt != _R:
                if s.garbage >= MAX_GARBAGE:
                    s.close_with(Reason.UNKNOWN_MESSAGE, ts)
                    break
                s.garbage += 1
                out += pack(_X, side, Reason.UNKNOWN_MESSAGE, 0, symbol, coid, oid, price, qty, 0, ts)
                continue
            reason = self._check(s, mt, side, otype, tif, symbol, oid, price, qty)
            if reason == 0:
                name = self.specs[symbol][0]
                if mt == _N:
                    oid = self.next_order_id
                    self.next_order_id += 1
                seq = self.symbol_seq[name]
                self.symbol_seq[name] = seq + 1
                command = _FRAME.pack(mt, side, otype, tif, s.session_id, symbol, coid, oid, price, qty, s.account, ts)
                self.pending.append((self.journal_seq.to_bytes(8, "big"), command))
                self.journal_seq += 1
                book = self.books[name]
                if mt == _N:
                    book.new(oid, coid, s.account, side, otype, tif, price, qty, ts)
                elif mt == _C:
                    book.cancel(oid, coid, s.account, ts)
                else:
                    book.replace(oid, coid, s.account, price, qty, ts)
                s.in_flight += 1
                out += pack(_K, side, 0, 0, symbol, coid, oid, price, qty, seq, ts)
            else:
                out += pack(_X, side, reason, 0, symbol, coid, oid, price, qty, 0, ts)
        if out or s.closing:
            self.dirty.add(s)
            self.schedule_commit()

    def _check(self, s: OrderSession, mt, side, otype, tif, symbol, oid, price, qty) -> int:
        """The reject reason of a request (0: valid), in ringex's order of checks."""
        if not s.logged_in:
            return Reason.NOT_LOGGED_IN
        spec = self.specs.get(symbol)
        if spec is None:
            reason = Reason.UNKNOWN_SYMBOL
        elif mt == _N and side != _BUY and side != _SELL:
            reason = Reason.BAD_SIDE
        elif mt == _N and not (tif in _LIMIT_TIFS if otype == _LIMIT else otype == _MARKET and tif in _MARKET_TIFS):
            reason = Reason.BAD_ORDER_TYPE
        elif mt != _N and oid == 0:
            reason = Reason.BAD_ORDER_ID
        elif mt == _C:
            reason = 0
        elif qty <= 0 or qty > spec[4]:
            reason = Reason.BAD_QTY
        elif mt == _N and otype == _MARKET:
            reason = Reason.BAD_PRICE if price != 0 else 0
        else:
            _name, tick, pmin, pmax, _max_qty = spec
            reason = Reason.BAD_PRICE if price <= 0 or price < pmin or price > pmax or (price - pmin) % tick else 0
        # every request costs a token, valid or not: the rate limit protects the exchange
        if s.tokens < 1:
            return Reason.THROTTLED
        s.tokens -= 1
        if reason == 0 and s.in_flight >= MAX_IN_FLIGHT:
            return Reason.THROTTLED
        return reason

    def _answer_login(self, s: OrderSession, f: tuple, ok: bool, ts: int) -> None:
        coid, account = f[6], f[10]
        if ok:
            s.logged_in, s.account = True, account
            s.queue(_REPLY.pack(_A, 0, 0, s.session_id, b"", coid, 0, 0, 0, 0, ts))
        else:
            s.queue(_REPLY.pack(_J, 0, Reason.BAD_CREDENTIALS, 0, b"", coid, 0, 0, 0, 0, ts))
            s.closing = True

    def _login_checked(self, s: OrderSession, f: tuple, ok: bool) -> None:
        s.verifying = False
        ts = time.time_ns()
        self._answer_login(s, f, ok, ts)
        if s.logged_in and s.buf:
            data, s.buf = s.buf, b""
            s.data_received(data)

    # -- the commit ------------------------------------------------------------------

    def commit(self) -> None:
        """Journal the turn's commands in one transaction (synced in fsync mode), then
        send every reply and market data line they caused."""
        self.commit_scheduled = False
        if self.pending:
            with self.env.begin(write=True) as txn:
                txn.cursor().putmulti(self.pending, append=True)
            self.pending = []
        dirty, self.dirty = self.dirty, set()
        for s in dirty:
            s.flush()
        dirty_md, self.dirty_md = self.dirty_md, set()
        for m in dirty_md:
            m.flush()

    def close(self) -> None:
        self.commit()
        self.env.close()


##########################################################################################
# command line
##########################################################################################


async def serve(args: argparse.Namespace) -> None:
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    created = create_demo_accounts(data)
    exchange = Exchange(data, args.durability)
    gc.freeze()  # the recovered books are long-lived: keep them out of every collection
    loop = asyncio.get_running_loop()
    exchange.loop = loop
    orders = await loop.create_server(lambda: OrderSession(exchange), args.host, args.order_port)
    md = await loop.create_server(lambda: MdSession(exchange), args.host, args.md_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    order_port = orders.sockets[0].getsockname()[1]
    md_port = md.sockets[0].getsockname()[1]
    lines = [
        f"baseline is up: {len(exchange.books)} symbols, durability {args.durability}, data in {data}, "
        f"{exchange.journal_seq} journaled commands replayed, pid {os.getpid()}",
        f"  order entry   {args.host}:{order_port}  (binary protocol v1)",
        f"  market data   {args.host}:{md_port} (TCP, JSON lines: trades and orders channels)",
    ]
    lines += [f"    account {a}  token {t}" for a, t in created.items()]
    print("\n".join([*lines, "stop with Ctrl-C"]), flush=True)
    await stop.wait()
    orders.close()
    md.close()
    exchange.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data directory (accounts.json, baseline.lmdb)")
    parser.add_argument("--durability", choices=("fsync", "async"), default="fsync")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--order-port", type=int, default=7101)
    parser.add_argument("--md-port", type=int, default=7102)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
