"""Order entry protocol version 1, sans-IO: bytes in, structured arrays out.

The wire contract is ``../shared/PROTOCOL.md`` (the user's copy is
``docs/protocol.md``). Every frame in either direction is 64 bytes, so a receiver
never parses a frame at a time: ``FrameDecoder`` hands back every whole frame it
holds as one numpy structured array, and ``validate`` checks all of them in one
jitted pass over the array (``frame_reason`` per frame; the tests hold the same check
written with numpy whole-array operations, which costs ~0.3 ms per call in fixed
overhead, far too much for a ``recv`` holding one order). Nothing here touches a socket or a clock, so the gateway, the
client library, the tests and the fuzzer share exactly this code.

Shapes follow h11: ``receive_data(bytes)`` buffers, ``next_frames()`` returns an
array or ``NEED_DATA``; encoders return ``bytes``.

Project additions to the contract (allowed by it: new codes, reserved bytes):

- ``A`` (login accepted) carries the session id in its reserved u32 at offset 4.
- Reason 13 ``IDLE_TIMEOUT`` and 14 ``SESSION_LIMIT`` close a session with ``E``.
- ``M`` mass cancel (the session's own account; a blank symbol means every symbol,
  side 0 both sides) and ``Y`` risk limit (operator sessions only: the ``RiskLimit`` in
  the side byte, the target account in ``order_id``, the value in ``price``), with
  reasons 15 ``NOT_PERMITTED`` and 16 ``BAD_LIMIT``. A request to every symbol is
  given symbol index ``len(table)`` (``SymbolTable.every``): the gateway puts it in
  every in-ring.
"""

from __future__ import annotations

import struct
from typing import Final

import numba
import numpy as np

from ringex import config
from ringex.codes import MsgType, OrderType, Reason, RiskLimit, Side, Tif
from ringex.records import COMMAND, SYMBOL_LEN, encode_symbol

__all__ = [
    "PROTOCOL_VERSION",
    "FRAME_SIZE",
    "COMMAND",
    "REPLY",
    "NEED_DATA",
    "FrameDecoder",
    "SymbolTable",
    "validate",
    "frame_reason",
    "frame_words",
    "encode_login",
    "encode_new_order",
    "encode_cancel",
    "encode_replace",
    "encode_mass_cancel",
    "encode_risk",
    "MAX_COLLAR_BPS",
    "encode_heartbeat",
    "encode_reply",
]

PROTOCOL_VERSION: Final = 1
FRAME_SIZE: Final = 64
# The widest price collar a ``Y`` may set (``ringex.config`` says why).
MAX_COLLAR_BPS: Final = config.MAX_COLLAR_BPS


REPLY = np.dtype(
    {
        "names": [
            "msg_type",
            "side",
            "reason",
            "session",
            "symbol",
            "client_order_id",
            "order_id",
            "price",
            "qty",
            "seq",
            "ts_ns",
        ],
        "formats": ["u1", "u1", "<u2", "<u4", "S8", "<u8", "<u8", "<i8", "<i8", "<u8", "<u8"],
        "offsets": [0, 1, 2, 4, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": FRAME_SIZE,
    }
)
"""An exchange-to-client frame. ``session`` is the reserved u32, used only by ``A``."""

assert COMMAND.itemsize == FRAME_SIZE and REPLY.itemsize == FRAME_SIZE


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by ``FrameDecoder.next_frames`` when no whole frame is buffered."""


##########################################################################################
# Decoding
##########################################################################################


class FrameDecoder:
    """Splits a byte stream into whole 64-byte frames.

    ``receive_data`` appends what a ``recv`` returned; ``next_frames`` returns every
    whole frame buffered so far as one writable structured array (its own memory, so
    the gateway may stamp it) or ``NEED_DATA``. A partial frame stays buffered until
    the rest of its bytes arrive, so at most ``FRAME_SIZE - 1`` bytes are ever held
    between calls: the work done is O(bytes received), whatever the peer sends.

    ``dtype`` is ``COMMAND`` for the exchange side and ``REPLY`` for a client.
    """

    def __init__(self, dtype: np.dtype = COMMAND) -> None:
        if dtype.itemsize != FRAME_SIZE:
            raise ValueError(f"frame dtype must be {FRAME_SIZE} bytes, got {dtype.itemsize}")
        self.dtype = dtype
        self._buf = bytearray()
        self._closed = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._closed = True
        else:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buf)

    @property
    def peer_closed(self) -> bool:
        return self._closed

    def next_frames(self) -> np.ndarray | _NeedData:
        whole = len(self._buf) - len(self._buf) % FRAME_SIZE
        if whole == 0:
            return NEED_DATA
        if whole == len(self._buf):
            chunk, self._buf = self._buf, bytearray()
        else:
            chunk = self._buf[:whole]
            del self._buf[:whole]
        return np.frombuffer(chunk, dtype=self.dtype)


##########################################################################################
# Validation
##########################################################################################


class SymbolTable:
    """The listed symbols as arrays, so a batch of frames is checked without a loop.

    ``names`` is sorted (``S8``) so ``index_of`` is one ``searchsorted``; the other
    arrays are indexed like ``names``. ``specs`` maps the same index back to the
    ``SymbolSpec`` it came from.
    """

    def __init__(self, specs) -> None:
        specs = sorted(specs, key=lambda s: encode_symbol(s.name))
        if not specs:
            raise ValueError("a symbol table needs at least one symbol")
        self.specs = tuple(specs)
        self.names = np.array([encode_symbol(s.name) for s in specs], dtype=f"S{SYMBOL_LEN}")
        self.tick = np.array([s.tick for s in specs], dtype=np.int64)
        self.price_min = np.array([s.price_min for s in specs], dtype=np.int64)
        self.price_max = np.array([s.price_max for s in specs], dtype=np.int64)
        self.max_qty = np.array([s.max_qty for s in specs], dtype=np.int64)
        # For the jitted checks: the 8 symbol bytes as one little-endian u64 key, sorted
        # for a binary search, with the table index of each key; the limits as rows.
        keys = self.names.view("<u8")
        order = np.argsort(keys, kind="stable")
        self.keys = np.ascontiguousarray(keys[order])
        self.key_index = order.astype(np.int64)
        self.bounds = np.ascontiguousarray(np.stack([self.tick, self.price_min, self.price_max, self.max_qty]))

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def every(self) -> int:
        """The symbol index ``frame_reason`` gives a request for every symbol (``M`` and
        ``Y`` with a blank symbol): one past the last listed symbol."""
        return len(self.specs)

    def index(self, name: str) -> int:
        """Index of one symbol by name; ``KeyError`` if it is not listed."""
        i = int(self.index_of(np.array([encode_symbol(name)], dtype=self.names.dtype))[0])
        if i < 0:
            raise KeyError(name)
        return i

    def index_of(self, symbols: np.ndarray) -> np.ndarray:
        """Index of each ``S8`` symbol in the table, -1 where it is not listed."""
        pos = np.searchsorted(self.names, symbols)
        pos = np.minimum(pos, len(self.names) - 1)
        return np.where(self.names[pos] == symbols, pos, -1).astype(np.int64)


# msg_type, code letters and reasons as plain ints: enum attribute lookups cost
# microseconds, and the jitted checks need constants
_L, _N, _C, _R, _H = (int(m) for m in (MsgType.LOGIN, MsgType.NEW, MsgType.CANCEL, MsgType.REPLACE, MsgType.HEARTBEAT))
_NOT_LOGGED_IN, _UNKNOWN_SYMBOL, _UNKNOWN_MESSAGE = (
    int(Reason.NOT_LOGGED_IN),
    int(Reason.UNKNOWN_SYMBOL),
    int(Reason.UNKNOWN_MESSAGE),
)
_BAD_SIDE, _BAD_ORDER_TYPE, _BAD_QTY, _BAD_PRICE, _BAD_ORDER_ID = (
    int(Reason.BAD_SIDE),
    int(Reason.BAD_ORDER_TYPE),
    int(Reason.BAD_QTY),
    int(Reason.BAD_PRICE),
    int(Reason.BAD_ORDER_ID),
)
_M, _Y = int(MsgType.MASS_CANCEL), int(MsgType.RISK)
_BAD_LIMIT = int(Reason.BAD_LIMIT)
_RL_QTY, _RL_NOTIONAL, _RL_OPEN, _RL_COLLAR, _RL_REFERENCE, _RL_KILL, _RL_CLEAR = (
    int(limit)
    for limit in (
        RiskLimit.MAX_ORDER_QTY,
        RiskLimit.MAX_NOTIONAL,
        RiskLimit.MAX_OPEN_ORDERS,
        RiskLimit.COLLAR_BPS,
        RiskLimit.REFERENCE_PRICE,
        RiskLimit.KILL_SWITCH,
        RiskLimit.CLEAR,
    )
)
_BUY, _SELL = int(Side.BUY), int(Side.SELL)
_LIMIT, _MARKET = int(OrderType.LIMIT), int(OrderType.MARKET)
_GTC, _IOC, _FOK, _POST = int(Tif.GTC), int(Tif.IOC), int(Tif.FOK), int(Tif.POST_ONLY)


@numba.njit(cache=True)
def symbol_slot(keys: np.ndarray, key_index: np.ndarray, key: np.uint64) -> int:
    """Table index of the symbol whose 8 bytes read as the u64 ``key``, -1 if unlisted.
    ``keys``: sorted u64[n]; ``key_index``: i64[n], the table index of each key."""
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(keys) and keys[lo] == key:
        return key_index[lo]
    return -1


@numba.njit(cache=True)
def frame_reason(wu: np.ndarray, wi: np.ndarray, r: int, logged_in: bool, keys, key_index, bounds) -> tuple[int, int]:
    """(reason, symbol table index or -1) of frame ``r``; the precedence of ``validate``.

    ``wu``/``wi``: the frames as u64[n, 8] and i64[n, 8] views (word 0 holds msg_type,
    side, order_type, tif in its low bytes; word 1 the symbol; 3 order_id; 4 price;
    5 qty). ``bounds``: i64[4, n_symbols] rows tick, price_min, price_max, max_qty.
    """
    w0 = wu[r, 0]
    mt = w0 & 0xFF
    new = mt == _N
    cancel = mt == _C
    replace = mt == _R
    if not (new or cancel or replace):
        if mt == _L or mt == _H:
            return 0, -1
        if mt == _M or mt == _Y:
            return _control_reason(wu, wi, r, logged_in, keys, key_index)
        return _UNKNOWN_MESSAGE, -1
    if not logged_in:
        return _NOT_LOGGED_IN, -1
    sym = symbol_slot(keys, key_index, wu[r, 1])
    if sym < 0:
        return _UNKNOWN_SYMBOL, -1
    if new:
        side = (w0 >> 8) & 0xFF
        if side != _BUY and side != _SELL:
            return _BAD_SIDE, sym
        otype = (w0 >> 16) & 0xFF
        tif = (w0 >> 24) & 0xFF
        if otype == _LIMIT:
            ok = tif == _GTC or tif == _IOC or tif == _FOK or tif == _POST
        elif otype == _MARKET:
            ok = tif == _IOC or tif == _FOK
        else:
            ok = False
        if not ok:
            return _BAD_ORDER_TYPE, sym
    elif wu[r, 3] == 0:
        return _BAD_ORDER_ID, sym
    if cancel:
        return 0, sym
    qty = wi[r, 5]
    if qty <= 0 or qty > bounds[3, sym]:
        return _BAD_QTY, sym
    price = wi[r, 4]
    if new and ((w0 >> 16) & 0xFF) == _MARKET:
        if price != 0:
            return _BAD_PRICE, sym  # a market order carries no price
    elif price <= 0 or price < bounds[1, sym] or price > bounds[2, sym] or (price - bounds[1, sym]) % bounds[0, sym]:
        return _BAD_PRICE, sym
    return 0, sym


@numba.njit(cache=True)
def _control_reason(wu, wi, r, logged_in, keys, key_index):
    """(reason, symbol index) of an ``M`` or ``Y`` frame: a blank symbol is every symbol
    (index ``len(keys)``); ``M`` needs side 0, B or S; ``Y`` a limit its target can have
    (a symbol's collar and reference price, an account's kill switch of 0 or 1) and a
    value from 0 (collar at most ``MAX_COLLAR_BPS``)."""
    if not logged_in:
        return _NOT_LOGGED_IN, -1
    w0 = wu[r, 0]
    sym = len(keys)
    if wu[r, 1] != 0:
        sym = symbol_slot(keys, key_index, wu[r, 1])
        if sym < 0:
            return _UNKNOWN_SYMBOL, -1
    detail = (w0 >> 8) & 0xFF
    if (w0 & 0xFF) == _M:
        if detail != 0 and detail != _BUY and detail != _SELL:
            return _BAD_SIDE, sym
        return 0, sym
    target = wu[r, 3]
    value = wi[r, 4]
    if value < 0:
        return _BAD_LIMIT, sym
    if detail == _RL_QTY or detail == _RL_NOTIONAL or detail == _RL_OPEN:
        return 0, sym
    if detail == _RL_COLLAR:
        return (0 if target == 0 and value <= MAX_COLLAR_BPS else _BAD_LIMIT), sym
    if detail == _RL_REFERENCE:
        return (0 if target == 0 else _BAD_LIMIT), sym
    if detail == _RL_KILL:
        return (0 if target != 0 and value <= 1 else _BAD_LIMIT), sym
    if detail == _RL_CLEAR:
        return (0 if target == 0 and value == 0 else _BAD_LIMIT), sym
    return _BAD_LIMIT, sym


@numba.njit(cache=True)
def _validate_all(wu, wi, logged_in, keys, key_index, bounds, reasons, symbol_index):
    for r in range(wu.shape[0]):
        reasons[r], symbol_index[r] = frame_reason(wu, wi, r, logged_in, keys, key_index, bounds)


def frame_words(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frames as u64[n, 8] and i64[n, 8] views of the same memory."""
    raw = np.ascontiguousarray(frames).view(np.uint64).reshape(-1, 8)
    return raw, raw.view(np.int64)


def validate(frames: np.ndarray, table: SymbolTable, logged_in: bool) -> np.ndarray:
    """The reject reason of each frame (``Reason.OK`` = 0 where it passes), as ``u2``.

    Checks, first failure wins: the message type is known; the session is logged in
    (for requests); the symbol is listed; for ``N`` the side, the order type/tif
    combination (limit with G/I/F/P, market with I/F); for ``C`` and ``R`` a non-zero
    order id; for ``N`` and ``R`` the quantity (1..max_qty) and the price (a limit
    price in the band on a tick, a market price 0).

    Logins and heartbeats pass (their handling is the session's business); rate,
    in-flight and readiness limits are not checked here either. One jitted pass over
    the frames (``frame_reason``).
    """
    reasons = np.zeros(len(frames), dtype=np.uint16)
    if len(frames):
        wu, wi = frame_words(frames)
        _validate_all(
            wu, wi, logged_in, table.keys, table.key_index, table.bounds, reasons, np.empty(len(frames), np.int64)
        )
    return reasons


##########################################################################################
# Encoding
##########################################################################################

# one struct for both directions: the frames differ only in what the fields mean
_FRAME = struct.Struct("<BBBBI8sQQqqQQ")
_REPLY = struct.Struct("<BBHI8sQQqqQQ")
assert _FRAME.size == FRAME_SIZE and _REPLY.size == FRAME_SIZE


def _sym(symbol: str | bytes) -> bytes:
    return symbol if isinstance(symbol, bytes) else encode_symbol(symbol)


def encode_login(account: int, token: int, client_order_id: int = 0) -> bytes:
    return _FRAME.pack(MsgType.LOGIN, 0, 0, 0, 0, b"\0" * 8, client_order_id, 0, 0, 0, account, token)


def encode_new_order(
    symbol: str | bytes,
    side: int,
    qty: int,
    price: int = 0,
    *,
    client_order_id: int = 0,
    order_type: int = OrderType.LIMIT,
    tif: int = Tif.GTC,
) -> bytes:
    """A new order. ``side``/``order_type``/``tif`` are the letter codes (``records`` enums)."""
    return _FRAME.pack(MsgType.NEW, side, order_type, tif, 0, _sym(symbol), client_order_id, 0, price, qty, 0, 0)


def encode_cancel(symbol: str | bytes, order_id: int, *, client_order_id: int = 0) -> bytes:
    return _FRAME.pack(MsgType.CANCEL, 0, 0, 0, 0, _sym(symbol), client_order_id, order_id, 0, 0, 0, 0)


def encode_replace(symbol: str | bytes, order_id: int, price: int, qty: int, *, client_order_id: int = 0) -> bytes:
    return _FRAME.pack(MsgType.REPLACE, 0, 0, 0, 0, _sym(symbol), client_order_id, order_id, price, qty, 0, 0)


def encode_mass_cancel(symbol: str | bytes | None = None, side: int = 0, *, client_order_id: int = 0) -> bytes:
    """Cancel every order of the session's account: in ``symbol`` (None: every symbol), on
    ``side`` (``Side.BUY``/``Side.SELL``, 0: both)."""
    sym = b"\0" * 8 if symbol is None else _sym(symbol)
    return _FRAME.pack(MsgType.MASS_CANCEL, side, 0, 0, 0, sym, client_order_id, 0, 0, 0, 0, 0)


def encode_risk(
    limit: int, value: int, *, account: int = 0, symbol: str | bytes | None = None, client_order_id: int = 0
) -> bytes:
    """Set ``limit`` (a ``RiskLimit``) to ``value`` for ``account`` (0: the symbol's own
    limit, for every account) in ``symbol`` (None: every symbol). Operators only."""
    sym = b"\0" * 8 if symbol is None else _sym(symbol)
    return _FRAME.pack(MsgType.RISK, limit, 0, 0, 0, sym, client_order_id, account, value, 0, 0, 0)


def encode_heartbeat() -> bytes:
    return _FRAME.pack(MsgType.HEARTBEAT, 0, 0, 0, 0, b"\0" * 8, 0, 0, 0, 0, 0, 0)


def encode_reply(
    msg_type: int,
    *,
    reason: int = 0,
    side: int = 0,
    session: int = 0,
    symbol: bytes = b"",
    client_order_id: int = 0,
    order_id: int = 0,
    price: int = 0,
    qty: int = 0,
    seq: int = 0,
    ts_ns: int = 0,
) -> bytes:
    """One exchange-to-client frame (logins, heartbeats, errors: the rare ones)."""
    return _REPLY.pack(msg_type, side, reason, session, symbol, client_order_id, order_id, price, qty, seq, ts_ns)
