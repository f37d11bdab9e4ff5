"""Test oracles for the order entry protocol: obviously-correct numpy versions of what
``ringex.order_entry`` does in jitted passes, for the tests and the fuzzer to compare
against."""

from __future__ import annotations

import numpy as np

from ringex.codes import MsgType, OrderType, Reason, ReplyType, RiskLimit, Side, Tif
from ringex.order_entry.protocol import MAX_COLLAR_BPS, REPLY, SymbolTable

__all__ = ["validate_reference", "build_replies"]

_KNOWN = np.array(list(MsgType), dtype=np.uint8)


def validate_reference(
    frames: np.ndarray, table: SymbolTable, logged_in: bool, symbol_index: np.ndarray | None = None
) -> np.ndarray:
    """``validate`` written with numpy whole-array operations: the reference the
    jitted ``validate`` is tested against (same reasons, same precedence).

    Checks, first failure wins: the message type is known; the session is logged in
    (for requests); the symbol is listed; for ``N`` the side, the order type/tif
    combination (limit with G/I/F/P, market with I/F), the quantity (1..max_qty) and
    the price (a limit price in the band on a tick, a market price 0); for ``C`` and
    ``R`` a non-zero order id; for ``R`` the new quantity and price as for a limit ``N``.
    ``M`` and ``Y`` may leave the symbol blank (every symbol); ``M`` needs a side of 0, B
    or S; ``Y`` a non-negative value and a limit its target can have (docs/protocol.md).

    Logins and heartbeats pass (their handling is the session's business); rate,
    in-flight and readiness limits are not checked here either. ``symbol_index``
    may be passed in when the caller already computed ``table.index_of``.
    """
    mt = frames["msg_type"]
    if symbol_index is None:
        symbol_index = table.index_of(frames["symbol"])
    listed = symbol_index >= 0
    idx = np.where(listed, symbol_index, 0)
    tick, pmin, pmax, qmax = table.tick[idx], table.price_min[idx], table.price_max[idx], table.max_qty[idx]

    new = mt == MsgType.NEW
    cancel = mt == MsgType.CANCEL
    replace = mt == MsgType.REPLACE
    mass = mt == MsgType.MASS_CANCEL
    risk = mt == MsgType.RISK
    request = new | cancel | replace | mass | risk
    blank = frames["symbol"] == b""
    side, otype, tif = frames["side"], frames["order_type"], frames["tif"]
    price, qty = frames["price"], frames["qty"]

    limit = otype == OrderType.LIMIT
    market = otype == OrderType.MARKET
    tif_ok = np.where(
        limit,
        (tif == Tif.GTC) | (tif == Tif.IOC) | (tif == Tif.FOK) | (tif == Tif.POST_ONLY),
        market & ((tif == Tif.IOC) | (tif == Tif.FOK)),
    )
    priced = (new & limit) | replace
    price_ok = np.where(
        priced,
        (price > 0) & (price >= pmin) & (price <= pmax) & ((price - pmin) % tick == 0),
        price == 0,
    )
    qty_ok = (qty > 0) & (qty <= qmax)
    target = frames["order_id"]
    for_symbol = target == 0
    limit_ok = (
        np.isin(side, [RiskLimit.MAX_ORDER_QTY, RiskLimit.MAX_NOTIONAL, RiskLimit.MAX_OPEN_ORDERS])
        | ((side == RiskLimit.COLLAR_BPS) & for_symbol & (price <= MAX_COLLAR_BPS))
        | ((side == RiskLimit.REFERENCE_PRICE) & for_symbol)
        | ((side == RiskLimit.KILL_SWITCH) & ~for_symbol & (price <= 1))
        | ((side == RiskLimit.CLEAR) & for_symbol & (price == 0))
    ) & (price >= 0)

    conditions = [
        ~np.isin(mt, _KNOWN),
        request & (not logged_in),
        request & ~listed & ~((mass | risk) & blank),
        mass & (side != 0) & (side != Side.BUY) & (side != Side.SELL),
        risk & ~limit_ok,
        new & (side != Side.BUY) & (side != Side.SELL),
        new & ~tif_ok,
        (cancel | replace) & (frames["order_id"] == 0),
        (new | replace) & ~qty_ok,
        (new | replace) & ~price_ok,
    ]
    choices = [
        Reason.UNKNOWN_MESSAGE,
        Reason.NOT_LOGGED_IN,
        Reason.UNKNOWN_SYMBOL,
        Reason.BAD_SIDE,
        Reason.BAD_LIMIT,
        Reason.BAD_SIDE,
        Reason.BAD_ORDER_TYPE,
        Reason.BAD_ORDER_ID,
        Reason.BAD_QTY,
        Reason.BAD_PRICE,
    ]
    return np.select(conditions, [np.uint16(c) for c in choices], np.uint16(0)).astype(np.uint16)


def build_replies(frames: np.ndarray, reasons: np.ndarray, ts_ns: int | np.ndarray) -> np.ndarray:
    """One ``REPLY`` per frame: ``X`` with its reason where ``reasons`` is non-zero,
    else ``K``; the echoed fields copied as whole columns. ``seq`` is left 0 for the
    caller to fill once the ring has placed the command. (The gateway's sessions
    build theirs inside their jitted batch pass; this is for tools and tests.)"""
    out = np.zeros(len(frames), dtype=REPLY)
    out["msg_type"] = np.where(reasons != 0, np.uint8(ReplyType.REJECT), np.uint8(ReplyType.ACK))
    out["reason"] = reasons
    for name in ("side", "symbol", "client_order_id", "order_id", "price", "qty"):
        out[name] = frames[name]
    out["ts_ns"] = ts_ns
    return out
