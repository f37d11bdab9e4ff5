"""Market data without I/O: client requests, server messages, depth views and streams.

The notifier (``ringex/market_data/notifier.py``) owns sockets and the ring; everything that
decides *what* is sent lives here, so it is tested without a network and shared by
the server, the client (``ringex/market_data/client.py``) and ``ringex watch``.

Streams. Every server message belongs to one stream and carries that stream's
``seq``, which counts up by exactly one per message, so a client detects a gap by
``seq != last + 1``. The streams are:

- ``("trades", symbol)``: one ``trade`` per TRADE event.
- ``("bbo", symbol)``: one ``bbo`` whenever the best bid or ask (price or qty)
  changed after the events of one command: so its seq, like a trade's, depends only
  on the symbol's history, not on how the events were batched (a market data
  follower on another host numbers it the same, ``ringex.cluster.follower``).
- ``("depth", symbol, levels)``: ``depth_update`` with absolute quantities for every
  price level that changed *within the top ``levels`` of each side* after a batch
  (qty 0: the level left the view). Each ``levels`` value is its own stream because
  two views of different sizes change at different times.
- ``("orders", account, symbol)`` and ``("orders", account, None)`` (every symbol):
  the account's own events.

A snapshot (``bbo``, ``depth_snapshot``, ``orders_snapshot``, ``trades_snapshot``)
and the ``subscribed`` ack carry the seq of the last message already published on the
stream, so the next one has ``seq + 1``. An ``orders`` subscription always starts with
the account's open orders (``orders_snapshot``); a ``trades`` subscription may ask for
the last ``last`` trades (at most ``MAX_TRADE_HISTORY``, ``trades_snapshot``).

Public payloads are encoded once per event and the same bytes go to every
subscriber; ``tcp_line`` and ``ws_text_frame`` wrap a payload for each transport.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import json
import struct
from collections.abc import Hashable, Iterable
from typing import Any

from ringex.codes import EventKind, EventReason, RiskLimit, Side
from ringex.records import EVENT, decode_symbol

__all__ = [
    "CHANNELS",
    "DEFAULT_DEPTH_LEVELS",
    "MAX_DEPTH_LEVELS",
    "STANDARD_DEPTH_LEVELS",
    "MAX_EXTRA_DEPTH_SIZES",
    "MAX_LINE_BYTES",
    "MAX_REQUEST_OPENERS",
    "MAX_TRADE_HISTORY",
    "ClientError",
    "Login",
    "Subscribe",
    "Unsubscribe",
    "Ping",
    "parse_request",
    "LineDecoder",
    "encode",
    "tcp_line",
    "ws_text_frame",
    "session_message",
    "DepthView",
    "MarketData",
]

CHANNELS = ("trades", "bbo", "depth", "orders")
PUBLIC_CHANNELS = ("trades", "bbo", "depth")
DEFAULT_DEPTH_LEVELS = 10
# A depth view is recomputed per batch for every distinct size subscribed; a cap keeps
# that work and the snapshot size bounded.  100 is picked as "more than any screen".
MAX_DEPTH_LEVELS = 100
# Each distinct size is a view recomputed per batch, so sizes are what a subscriber's
# ``levels`` costs everyone: one client subscribing to every size from 1 to 100 made
# each batch of a symbol cost 2.6 ms of the notifier instead of 9 µs (issue 18). Any
# size may be asked for, but besides these standard ones at most
# MAX_EXTRA_DEPTH_SIZES others exist per symbol at a time.
STANDARD_DEPTH_LEVELS = (1, 5, 10, 20, 50, 100)
MAX_EXTRA_DEPTH_SIZES = 4
# A request is a short JSON object; a longer line is a broken or hostile client, and
# buffering it without a bound would let one client grow the server's memory.
MAX_LINE_BYTES = 4096
# A request is one flat JSON object of scalars, so it has exactly one "{" and no "[".
# ``json.loads`` recurses once per nesting level: a line of 3,000 "[" raised
# RecursionError out of the parser and took the notifier down (issue 18). Openers are
# counted (at C speed) before anything is parsed; a few spare ones keep an unusual but
# harmless request (an empty list in a field we ignore) answerable by name.
MAX_REQUEST_OPENERS = 8
# How much of a client's value an error message quotes back: enough to recognise it,
# not enough for a 4 KiB request to be echoed whole.
ECHO_CHARS = 40
# Trades kept per symbol for a ``trades`` subscription's ``last``: a screenful of tape.
MAX_TRADE_HISTORY = 100

_SIDE_NAME = {Side.BUY: "buy", Side.SELL: "sell"}
_LIMIT_NAME = {limit.value: limit.name.lower() for limit in RiskLimit}
_SIDE_BYTES = {Side.BUY: b"buy", Side.SELL: b"sell"}
_TRADE_TAIL = (
    b'%d,"trade_id":%d,"price":%d,"qty":%d,"taker_side":"%s","maker_order_id":%d,"taker_order_id":%d,"ts_ns":%d}'
)
_REASON_NAME = {r.value: r.name.lower() for r in EventReason}

# Positions of EVENT fields in the tuples ``ndarray.tolist()`` returns: one bulk
# conversion per batch is much cheaper than reading fields of numpy records one by one.
_F = {name: i for i, name in enumerate(EVENT.names)}
_KIND, _SIDE, _REASON = _F["kind"], _F["side"], _F["reason"]
_SEQ, _TS = _F["seq"], _F["ts_ns"]
_OID, _COID, _ACCT = _F["order_id"], _F["client_order_id"], _F["account"]
_PRICE, _QTY, _REM = _F["price"], _F["qty"], _F["remaining"]
_TID = _F["trade_id"]
_C_OID, _C_COID, _C_ACCT, _C_REM = (
    _F["contra_order_id"],
    _F["contra_client_order_id"],
    _F["contra_account"],
    _F["contra_remaining"],
)
_SYM = _F["symbol"]

_ACCEPTED, _TRADE, _CANCELLED, _REPLACED, _REJECTED = (
    int(EventKind.ACCEPTED),
    int(EventKind.TRADE),
    int(EventKind.CANCELLED),
    int(EventKind.REPLACED),
    int(EventKind.REJECTED),
)
_MASS_CANCELLED, _LIMIT_SET = int(EventKind.MASS_CANCELLED), int(EventKind.LIMIT_SET)
_BUY, _SELL = int(Side.BUY), int(Side.SELL)


####################################################################################
# Client requests
####################################################################################


class ClientError(ValueError):
    """The client sent something we cannot act on; ``reason`` is sent back to it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Login:
    account: int
    token: int


@dataclasses.dataclass(frozen=True)
class Subscribe:
    channel: str
    symbol: str | None
    levels: int = DEFAULT_DEPTH_LEVELS
    last: int = 0  # trades: how many past trades to send first


@dataclasses.dataclass(frozen=True)
class Unsubscribe:
    channel: str
    symbol: str | None
    levels: int = DEFAULT_DEPTH_LEVELS


@dataclasses.dataclass(frozen=True)
class Ping:
    pass


Request = Login | Subscribe | Unsubscribe | Ping


def _uint(obj: dict, key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise ClientError(f"{key}: must be an unsigned 64-bit integer")
    return value


def _echo(value: Any) -> str:
    """``repr(value)`` cut to ``ECHO_CHARS``, for quoting a client's value back to it."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def parse_request(raw: bytes | str, symbols: Iterable[str], *, max_bytes: int = MAX_LINE_BYTES) -> Request:
    """Parse one client message (a JSON object) against the listed ``symbols``.

    Error handling: any input at all, of any size, nesting, encoding or types, either
    parses or raises ``ClientError`` naming the problem (sent back as an ``error``
    message); nothing else escapes. A request longer than ``max_bytes`` (characters,
    for a ``str``) or with more than ``MAX_REQUEST_OPENERS`` arrays and objects is
    refused before it is parsed.
    """
    if len(raw) > max_bytes:
        raise ClientError(f"request longer than {max_bytes} bytes")
    opener_count = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    if opener_count > MAX_REQUEST_OPENERS:
        raise ClientError(f"more than {MAX_REQUEST_OPENERS} arrays or objects: a request is one flat JSON object")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad UTF-8 (UnicodeDecodeError) and integers of
        # more digits than ``sys.get_int_max_str_digits``; RecursionError cannot happen
        # under the opener bound and is caught anyway: a parser must not be a crash
        raise ClientError("malformed JSON") from None
    if not isinstance(obj, dict):
        raise ClientError("a message must be a JSON object")
    op = obj.get("op")
    if op == "ping":
        return Ping()
    if op == "login":
        return Login(_uint(obj, "account"), _uint(obj, "token"))
    if op not in ("subscribe", "unsubscribe"):
        raise ClientError(f"unknown op {_echo(op)}" if isinstance(op, str) else "missing op")
    channel = obj.get("channel")
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise ClientError(f"unknown channel {_echo(channel)}; channels: {', '.join(CHANNELS)}")
    symbol = obj.get("symbol")
    if symbol is None:
        if channel != "orders":
            raise ClientError(f"{channel}: symbol is required")
    elif not isinstance(symbol, str) or symbol not in symbols:
        raise ClientError(f"unknown symbol {_echo(symbol)}")
    levels = obj.get("levels", DEFAULT_DEPTH_LEVELS)
    if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= MAX_DEPTH_LEVELS:
        raise ClientError(f"levels: must be an integer from 1 to {MAX_DEPTH_LEVELS}")
    if channel != "depth":
        levels = DEFAULT_DEPTH_LEVELS
    if op == "unsubscribe":
        return Unsubscribe(channel, symbol, levels)
    last = obj.get("last", 0)
    if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last <= MAX_TRADE_HISTORY:
        raise ClientError(f"last: must be an integer from 0 to {MAX_TRADE_HISTORY}")
    if last and channel != "trades":
        raise ClientError("last: only the trades channel has a history")
    return Subscribe(channel, symbol, levels, last)


class LineDecoder:
    """Splits a TCP byte stream into lines (one JSON message each), h11-style.

    ``receive_data`` buffers; ``next_line`` returns a line without its newline, or
    ``None`` when more data is needed. Work is proportional to bytes received: the
    search resumes where the last one stopped.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self._max = max_line

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that are not a complete line yet (after ``next_line`` returned None)."""
        return len(self._buf)

    def next_line(self) -> bytes | None:
        """The next complete line, or ``None``; ``ClientError`` if a line is too long."""
        i = self._buf.find(b"\n", self._scanned)
        if i < 0:
            self._scanned = len(self._buf)
            if self._scanned > self._max:
                raise ClientError(f"line longer than {self._max} bytes")
            return None
        line = bytes(self._buf[:i]).rstrip(b"\r")
        del self._buf[: i + 1]
        self._scanned = 0
        if len(line) > self._max:
            raise ClientError(f"line longer than {self._max} bytes")
        return line


####################################################################################
# Server messages
####################################################################################


# One encoder for every message: ``json.dumps`` with options builds a new encoder per
# call, which here cost as much as the encoding itself.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(message: dict[str, Any]) -> bytes:
    """One message's JSON payload: compact, ASCII, no newline."""
    return _ENCODER.encode(message).encode()


@functools.lru_cache(maxsize=1024)
def _json_string(value: str) -> bytes:
    return encode(value)


def tcp_line(payload: bytes) -> bytes:
    return payload + b"\n"


def ws_text_frame(payload: bytes) -> bytes:
    """A server-to-client WebSocket text frame (RFC 6455 5.2: FIN, opcode 1, unmasked).

    Server frames are never masked, so one frame's bytes suit every WebSocket session:
    the fan-out builds them once instead of asking each connection's wsproto state.
    No extension is negotiated, so the reserved bits stay 0.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def session_message(kind: str, **fields: Any) -> bytes:
    """A message about the session itself (pong, heartbeat, error, logged_in...):
    it belongs to no stream, so channel, symbol and seq are null."""
    return encode({"type": kind, "channel": None, "symbol": None, "seq": None, **fields})


####################################################################################
# Depth view
####################################################################################


class DepthView:
    """One symbol's aggregated book (price -> open qty per side), kept from events.

    Events name orders, not levels, so the view keeps ``orders``: order_id ->
    ``[side, price, open, account, client_order_id]`` of every resting order, and
    ``by_account``: account -> its resting order ids (an ``orders`` subscription starts
    with them); CANCELLED (which carries only the qty cancelled) and REPLACED find the
    order's level there. A TRADE reduces every
    party that rests in the view to its ``remaining``: that is the maker, and also a
    taker that already rests (a replaced order that crossed). A taker that is not
    resting yet is added by its ACCEPTED, which carries what is left open.
    """

    def __init__(self) -> None:
        self.orders: dict[int, list[int]] = {}
        self.by_account: dict[int, set[int]] = {}
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        # ascending prices with a non-zero qty, for the top of each side
        self._bid_prices: list[int] = []
        self._ask_prices: list[int] = []

    # -- changes ------------------------------------------------------------------

    def _level_add(self, side: int, price: int, delta: int) -> None:
        levels, prices = (self.bids, self._bid_prices) if side == _BUY else (self.asks, self._ask_prices)
        old = levels.get(price, 0)
        new = old + delta
        if new > 0:
            levels[price] = new
            if old == 0:
                bisect.insort(prices, price)
        else:
            if old:
                del levels[price]
                del prices[bisect.bisect_left(prices, price)]

    def rest(self, order_id: int, side: int, price: int, qty: int, account: int = 0, client_order_id: int = 0) -> None:
        """An order rests with ``qty`` open (ACCEPTED, or a snapshot of the book)."""
        if qty <= 0:
            return
        self.forget(order_id)
        self.orders[order_id] = [side, price, qty, account, client_order_id]
        owned = self.by_account.get(account)
        if owned is None:
            owned = self.by_account[account] = set()
        owned.add(order_id)
        self._level_add(side, price, qty)

    def reduce_to(self, order_id: int, remaining: int) -> None:
        order = self.orders.get(order_id)
        if order is None:
            return
        side, price, open_qty, account, _ = order
        self._level_add(side, price, remaining - open_qty)
        if remaining > 0:
            order[2] = remaining
        else:
            del self.orders[order_id]
            owned = self.by_account[account]
            owned.discard(order_id)
            if not owned:
                del self.by_account[account]

    def forget(self, order_id: int) -> None:
        self.reduce_to(order_id, 0)

    def apply(self, row: tuple) -> None:
        """Apply one event given as an ``EVENT`` tuple (``ndarray.tolist()`` row)."""
        kind = row[_KIND]
        if kind == _ACCEPTED:
            self.rest(row[_OID], row[_SIDE], row[_PRICE], row[_REM], row[_ACCT], row[_COID])
        elif kind == _TRADE:
            self.reduce_to(row[_C_OID], row[_C_REM])
            self.reduce_to(row[_OID], row[_REM])
        elif kind == _CANCELLED:
            order = self.orders.get(row[_OID])
            if order is not None:
                self.reduce_to(row[_OID], order[2] - row[_QTY])
        elif kind == _REPLACED:
            order = self.orders.get(row[_OID])
            side = order[0] if order is not None else row[_SIDE]
            self.rest(row[_OID], side, row[_PRICE], row[_QTY], row[_ACCT], row[_COID])

    # -- views --------------------------------------------------------------------

    def top(self, levels: int) -> tuple[list[list[int]], list[list[int]]]:
        """The best ``levels`` of each side as ``[price, qty]``, best first."""
        bids = [[p, self.bids[p]] for p in self._bid_prices[: -levels - 1 : -1]]
        asks = [[p, self.asks[p]] for p in self._ask_prices[:levels]]
        return bids, asks

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        bid = self._bid_prices[-1] if self._bid_prices else None
        ask = self._ask_prices[0] if self._ask_prices else None
        return bid, self.bids.get(bid, 0), ask, self.asks.get(ask, 0)


####################################################################################
# Streams, subscriptions and the per-batch publication
####################################################################################

Stream = tuple


class MarketData:
    """Everything the notifier publishes, as a function of events and subscriptions.

    ``apply(events)`` takes one batch of EVENT records and returns, for every stream
    that has subscribers and something new, the list of payloads to send, in order;
    the caller fans each out unchanged. Sessions are opaque hashable handles.

    Resource handling: public streams without subscribers still count their seq (a
    trade's seq is the same for everyone) but nothing is encoded for them; private
    streams count only while subscribed, and an account nobody follows costs nothing.
    """

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = tuple(symbols)
        self.views: dict[str, DepthView] = {s: DepthView() for s in self.symbols}
        self.subscribers: dict[Stream, set[Hashable]] = {}
        self.seq: dict[Stream, int] = {}
        self._bbo: dict[str, tuple] = {s: (None, 0, None, 0) for s in self.symbols}
        self._bbo_ts: dict[str, int] = dict.fromkeys(self.symbols, 0)
        # (symbol, levels) -> last published top of book of that size
        self._depth: dict[tuple[str, int], tuple[dict[int, int], dict[int, int]]] = {}
        self._depth_refs: dict[tuple[str, int], int] = {}
        self._symbol_names: dict[bytes, str] = {}
        self._trade_prefix: dict[str, bytes] = {}
        self._private_formats: dict[tuple, bytes] = {}
        # accounts with at least one orders subscription -> how many: events of other
        # accounts skip the private path entirely
        self._private_accounts: dict[int, int] = {}
        # the last trades of each symbol, as (seq, EVENT row), for ``Subscribe.last``
        self._trades: dict[str, collections.deque] = {
            s: collections.deque(maxlen=MAX_TRADE_HISTORY) for s in self.symbols
        }

    # -- start-up -----------------------------------------------------------------

    def load_book(self, symbol: str, resting: Iterable[tuple[int, ...]]) -> None:
        """Seed a symbol's view with its resting orders ``(order_id, side, price, open[,
        account, client_order_id])``, as recovery knows them, before the first event
        after that point is applied."""
        view = self.views[symbol]
        for order_id, side, price, open_qty, *owner in resting:
            view.rest(int(order_id), int(side), int(price), int(open_qty), *(int(x) for x in owner))
        self._bbo[symbol] = view.bbo()

    # -- subscriptions --------------------------------------------------------------

    @staticmethod
    def stream_of(req: Subscribe | Unsubscribe, account: int | None) -> Stream:
        if req.channel == "orders":
            return ("orders", account, req.symbol)
        if req.channel == "depth":
            return ("depth", req.symbol, req.levels)
        return (req.channel, req.symbol)

    def subscribe(self, session: Hashable, req: Subscribe, account: int | None) -> list[bytes]:
        """Add ``session`` to the stream and return what it gets first: the
        ``subscribed`` ack and, for bbo and depth, the current snapshot."""
        if req.channel == "orders" and account is None:
            raise ClientError("orders: login first")
        stream = self.stream_of(req, account)
        subs = self.subscribers.setdefault(stream, set())
        if session in subs:
            raise ClientError(f"already subscribed to {req.channel} {req.symbol or '*'}")
        if req.channel == "orders":
            self._private_accounts[account] = self._private_accounts.get(account, 0) + 1
        if req.channel == "depth":
            key = (req.symbol, req.levels)
            if key not in self._depth and req.levels not in STANDARD_DEPTH_LEVELS:
                extra = sorted(n for s, n in self._depth if s == req.symbol and n not in STANDARD_DEPTH_LEVELS)
                if len(extra) >= MAX_EXTRA_DEPTH_SIZES:
                    sizes = ", ".join(map(str, sorted({*STANDARD_DEPTH_LEVELS, *extra})))
                    raise ClientError(f"depth: {req.symbol} has as many sizes as it serves; levels may be {sizes}")
            if key not in self._depth:
                bids, asks = self.views[req.symbol].top(req.levels)
                self._depth[key] = (dict(bids), dict(asks))
            self._depth_refs[key] = self._depth_refs.get(key, 0) + 1
        subs.add(session)
        seq = self.seq.get(stream, 0)
        ack = {"type": "subscribed", "channel": req.channel, "symbol": req.symbol, "seq": seq}
        if req.channel == "depth":
            ack["levels"] = req.levels
        out = [encode(ack)]
        if req.channel == "orders":
            out.append(self._orders_snapshot(account, req.symbol, seq))
        elif req.channel == "trades" and req.last:
            out.append(self._trades_snapshot(req.symbol, req.last, seq))
        elif req.channel == "bbo":
            out.append(self._bbo_message(req.symbol, seq))
        elif req.channel == "depth":
            bids, asks = self._depth[(req.symbol, req.levels)]
            snap = {
                "type": "depth_snapshot",
                "channel": "depth",
                "symbol": req.symbol,
                "seq": seq,
                "levels": req.levels,
                "bids": [[p, q] for p, q in sorted(bids.items(), reverse=True)],
                "asks": [[p, q] for p, q in sorted(asks.items())],
            }
            out.append(encode(snap))
        return out

    def _orders_snapshot(self, account: int, symbol: str | None, seq: int) -> bytes:
        """The account's open orders (in ``symbol``, or every symbol), by symbol and id."""
        orders = []
        for name in (symbol,) if symbol else self.symbols:
            view = self.views[name]
            for order_id in sorted(view.by_account.get(account, ())):
                side, price, open_qty, _, client_order_id = view.orders[order_id]
                orders.append(
                    {
                        "symbol": name,
                        "order_id": order_id,
                        "client_order_id": client_order_id,
                        "side": _SIDE_NAME.get(side, "?"),
                        "price": price,
                        "remaining": open_qty,
                    }
                )
        snap = {"type": "orders_snapshot", "channel": "orders", "symbol": symbol, "seq": seq, "account": account}
        return encode({**snap, "orders": orders})

    def _trades_snapshot(self, symbol: str, last: int, seq: int) -> bytes:
        """The last ``last`` trades of ``symbol``, oldest first, as ``trade`` messages
        carry them (each with the seq it was published with)."""
        history = list(self._trades[symbol])[-last:]
        trades = [json.loads(self._trade_message(symbol, trade_seq, row)) for trade_seq, row in history]
        for trade in trades:
            del trade["type"], trade["channel"], trade["symbol"]
        return encode({"type": "trades_snapshot", "channel": "trades", "symbol": symbol, "seq": seq, "trades": trades})

    def unsubscribe(self, session: Hashable, req: Unsubscribe, account: int | None) -> bytes:
        stream = self.stream_of(req, account)
        if not self._remove(session, stream):
            raise ClientError(f"not subscribed to {req.channel} {req.symbol or '*'}")
        msg = {"type": "unsubscribed", "channel": req.channel, "symbol": req.symbol, "seq": self.seq.get(stream, 0)}
        return encode(msg)

    def _remove(self, session: Hashable, stream: Stream) -> bool:
        subs = self.subscribers.get(stream)
        if subs is None or session not in subs:
            return False
        subs.discard(session)
        if not subs:
            del self.subscribers[stream]
        if stream[0] == "orders":
            account = stream[1]
            self._private_accounts[account] -= 1
            if not self._private_accounts[account]:
                del self._private_accounts[account]
        if stream[0] == "depth":
            key = (stream[1], stream[2])
            self._depth_refs[key] -= 1
            if not self._depth_refs[key]:
                del self._depth_refs[key], self._depth[key]
        return True

    def drop(self, session: Hashable, streams: Iterable[Stream]) -> None:
        """Forget a closed session's subscriptions."""
        for stream in list(streams):
            self._remove(session, stream)

    # -- events ---------------------------------------------------------------------

    def _next(self, stream: Stream) -> int:
        seq = self.seq.get(stream, 0) + 1
        self.seq[stream] = seq
        return seq

    def _symbol(self, raw: bytes) -> str:
        name = self._symbol_names.get(raw)
        if name is None:
            name = self._symbol_names[raw] = decode_symbol(raw)
        return name

    def apply(self, events) -> list[tuple[Stream, list[bytes]]]:
        """Apply a batch of EVENT records (an ``EVENT`` array, or a list of its rows as
        tuples) and return ``[(stream, payloads)]`` for streams with subscribers."""
        if hasattr(events, "dtype"):
            # column by column is ~2x cheaper than ``events.tolist()`` row by row
            rows = zip(*[events[name].tolist() for name in EVENT.names], strict=True)
        else:
            rows = events
        out: dict[Stream, list[bytes]] = {}
        subscribed = self.subscribers
        private = self._private_accounts
        touched: dict[str, int] = {}
        # the command whose events were applied last, per symbol: the bbo is compared at
        # every command's end, so its stream counts the same changes whatever batches
        # the events came in (a follower's numbers equal the primary's)
        caused_by: dict[str, int] = {}
        for row in rows:
            symbol = self._symbol(row[_SYM])
            view = self.views.get(symbol)
            if view is None:
                continue
            if caused_by.get(symbol, row[_SEQ]) != row[_SEQ] and symbol in touched:
                self._publish_bbo(symbol, touched[symbol], out)
            caused_by[symbol] = row[_SEQ]
            kind = row[_KIND]
            if kind == _TRADE:
                stream = ("trades", symbol)
                seq = self._next(stream)
                self._trades[symbol].append((seq, row))
                if stream in subscribed:
                    out.setdefault(stream, []).append(self._trade_message(symbol, seq, row))
            if kind != _REJECTED:
                # keep the order's side/price for the private message before applying
                prior = view.orders.get(row[_OID])
                view.apply(row)
                touched[symbol] = row[_TS]
            else:
                prior = None
            if row[_ACCT] in private or (kind == _TRADE and row[_C_ACCT] in private):
                self._private(symbol, row, prior, out)
        for symbol, ts in touched.items():
            self._publish_book(symbol, ts, out)
        return list(out.items())

    def _trade_message(self, symbol: str, seq: int, row: tuple) -> bytes:
        # The hottest message (one per trade, fanned out to everyone): a bytes template
        # is ~10x cheaper than json.dumps, and every field is an integer or a fixed
        # string, so nothing needs escaping (the symbol is escaped once, in the prefix).
        prefix = self._trade_prefix.get(symbol)
        if prefix is None:
            prefix = self._trade_prefix[symbol] = (
                b'{"type":"trade","channel":"trades","symbol":%s,"seq":' % json.dumps(symbol).encode()
            )
        return prefix + _TRADE_TAIL % (
            seq,
            row[_TID],
            row[_PRICE],
            row[_QTY],
            _SIDE_BYTES.get(row[_SIDE], b"?"),
            row[_C_OID],
            row[_OID],
            row[_TS],
        )

    def _private(self, symbol: str, row: tuple, prior: list[int] | None, out: dict) -> None:
        kind = row[_KIND]
        if kind == _TRADE:
            taker_side = row[_SIDE]
            maker_side = _SELL if taker_side == _BUY else _BUY
            parties = (
                (row[_ACCT], row[_OID], row[_COID], row[_REM], taker_side, "taker"),
                (row[_C_ACCT], row[_C_OID], row[_C_COID], row[_C_REM], maker_side, "maker"),
            )
            for account, oid, coid, remaining, side, liquidity in parties:
                fields = {
                    "order_id": oid,
                    "client_order_id": coid,
                    "side": _SIDE_NAME.get(side, "?"),
                    "trade_id": row[_TID],
                    "price": row[_PRICE],
                    "qty": row[_QTY],
                    "remaining": remaining,
                    "liquidity": liquidity,
                }
                self._emit_private(account, symbol, "fill", fields, row[_TS], out)
            return
        if kind == _MASS_CANCELLED:
            fields = {
                "client_order_id": row[_COID],
                "side": _SIDE_NAME.get(row[_SIDE], "both"),
                "cancelled": row[_QTY],
                "reason": _REASON_NAME.get(row[_REASON], "unknown"),
            }
            self._emit_private(row[_ACCT], symbol, "mass_cancelled", fields, row[_TS], out)
            return
        if kind == _LIMIT_SET:
            # told to the account whose limit it is (an operator learns from the K)
            fields = {"limit": _LIMIT_NAME.get(row[_SIDE], "unknown"), "value": row[_PRICE], "cancelled": row[_QTY]}
            self._emit_private(row[_ACCT], symbol, "limit_set", fields, row[_TS], out)
            return
        side = row[_SIDE] or (prior[0] if prior else 0)
        fields = {
            "order_id": row[_OID],
            "client_order_id": row[_COID],
            "side": _SIDE_NAME.get(side, "?"),
        }
        if kind == _ACCEPTED:
            name = "accepted"
            fields.update(price=row[_PRICE], qty=row[_QTY], remaining=row[_REM])
        elif kind == _CANCELLED:
            name = "cancelled"
            price = row[_PRICE] or (prior[1] if prior else 0)
            fields.update(price=price, qty=row[_QTY], remaining=0, reason=_REASON_NAME.get(row[_REASON], "unknown"))
        elif kind == _REPLACED:
            name = "replaced"
            fields.update(price=row[_PRICE], qty=row[_QTY], remaining=row[_REM])
        elif kind == _REJECTED:
            name = "rejected"
            fields.update(price=row[_PRICE], qty=row[_QTY], reason=_REASON_NAME.get(row[_REASON], "unknown"))
        else:
            return
        self._emit_private(row[_ACCT], symbol, name, fields, row[_TS], out)

    def _emit_private(self, account: int, symbol: str, name: str, fields: dict, ts: int, out: dict) -> None:
        # Each of the account's two streams (this symbol, every symbol) has its own seq,
        # counted only while the stream has subscribers: nobody else can see it, and the
        # ``subscribed`` ack tells a new subscriber where it stands.
        for stream in (("orders", account, symbol), ("orders", account, None)):
            if stream in self.subscribers:
                seq = self._next(stream)
                out.setdefault(stream, []).append(self._private_message(name, symbol, seq, account, fields, ts))

    def _private_message(self, name: str, symbol: str, seq: int, account: int, fields: dict, ts: int) -> bytes:
        """``encode`` of ``{type, channel, symbol, seq, account, **fields, ts_ns}``, byte for
        byte, from a bytes template made once per kind of message: two per trade, one
        per order event, so under load this was the notifier's biggest cost (~5 us a
        message through the JSON encoder, ~1 us this way). Fields are integers or short
        fixed strings (side, liquidity, reason), JSON-escaped once each."""
        strings = tuple([isinstance(value, str) for value in fields.values()])
        key = (name, symbol, *fields, strings)
        template = self._private_formats.get(key)
        if template is None:
            head = encode({"type": name, "channel": "orders", "symbol": symbol})[:-1]
            parts = [head, b',"seq":%d,"account":%d']
            for field, is_string in zip(fields, strings, strict=True):
                parts.append(b",%s:%s" % (encode(field), b"%s" if is_string else b"%d"))
            parts.append(b',"ts_ns":%d}')
            template = self._private_formats[key] = b"".join(parts)
        values = [seq, account]
        for value in fields.values():
            values.append(_json_string(value) if isinstance(value, str) else value)
        values.append(ts)
        return template % tuple(values)

    def _bbo_message(self, symbol: str, seq: int) -> bytes:
        bid, bid_qty, ask, ask_qty = self._bbo[symbol]
        return encode(
            {
                "type": "bbo",
                "channel": "bbo",
                "symbol": symbol,
                "seq": seq,
                "bid_price": bid,
                "bid_qty": bid_qty,
                "ask_price": ask,
                "ask_qty": ask_qty,
                "ts_ns": self._bbo_ts[symbol],
            }
        )

    def _publish_bbo(self, symbol: str, ts: int, out: dict) -> None:
        bbo = self.views[symbol].bbo()
        if bbo != self._bbo[symbol]:
            self._bbo[symbol] = bbo
            self._bbo_ts[symbol] = ts
            stream = ("bbo", symbol)
            seq = self._next(stream)
            if stream in self.subscribers:
                out.setdefault(stream, []).append(self._bbo_message(symbol, seq))

    def _publish_book(self, symbol: str, ts: int, out: dict) -> None:
        view = self.views[symbol]
        self._publish_bbo(symbol, ts, out)
        sizes = [(levels, old) for (sym, levels), old in self._depth.items() if sym == symbol]
        if not sizes:
            return
        # the deepest view once; each size is a prefix of it (sliced and compared in C)
        all_bids, all_asks = view.top(max(levels for levels, _ in sizes))
        for levels, (old_bids, old_asks) in sizes:
            new_bids, new_asks = dict(all_bids[:levels]), dict(all_asks[:levels])
            if new_bids == old_bids and new_asks == old_asks:
                continue
            bid_changes = _level_changes(old_bids, new_bids, reverse=True)
            ask_changes = _level_changes(old_asks, new_asks, reverse=False)
            if not bid_changes and not ask_changes:
                continue
            self._depth[(symbol, levels)] = (new_bids, new_asks)
            stream = ("depth", symbol, levels)
            seq = self._next(stream)
            msg = {
                "type": "depth_update",
                "channel": "depth",
                "symbol": symbol,
                "seq": seq,
                "levels": levels,
                "bids": bid_changes,
                "asks": ask_changes,
                "ts_ns": ts,
            }
            out.setdefault(stream, []).append(encode(msg))


def _level_changes(old: dict[int, int], new: dict[int, int], reverse: bool) -> list[list[int]]:
    changes = [[p, q] for p, q in new.items() if old.get(p) != q]
    changes += [[p, 0] for p in old if p not in new]
    changes.sort(reverse=reverse)
    return changes
