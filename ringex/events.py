"""``EVENT`` records as JSON-ready dicts: the one place that names event fields for humans.

``ringex match``, ``ringex journal`` and the notifier all print events; they share this
so an event reads the same everywhere. Each kind keeps only the fields that mean
something for it (see the field docstring in ``ringex.records``); a trade names its
two parties ``taker_*`` and ``maker_*`` instead of main and ``contra_*`` fields.
"""

from __future__ import annotations

import numpy as np

from ringex.codes import EventKind, EventReason, OrderType, RiskLimit, Side, Tif
from ringex.records import decode_symbol

__all__ = ["event_to_dict", "EVENT_NAMES", "REASON_NAMES"]

EVENT_NAMES = {int(k): k.name.lower() for k in EventKind}
REASON_NAMES = {int(r): r.name.lower() for r in EventReason}
SIDE_NAMES = {int(Side.BUY): "buy", int(Side.SELL): "sell"}
ORDER_TYPE_NAMES = {int(OrderType.LIMIT): "limit", int(OrderType.MARKET): "market"}
TIF_NAMES = {int(Tif.GTC): "gtc", int(Tif.IOC): "ioc", int(Tif.FOK): "fok", int(Tif.POST_ONLY): "post_only"}
LIMIT_NAMES = {int(limit): limit.name.lower() for limit in RiskLimit}


def _name(table: dict[int, str], code: int) -> str:
    # 0 is "not given" (a cancel has no side); an unknown code (only from a bad command
    # echoed in a REJECTED event) prints as its number.
    if code == 0:
        return ""
    return table.get(code, str(code))


def event_to_dict(record: np.void) -> dict:
    """One ``EVENT`` record as a dict of plain ``str``/``int`` values, ``"event"`` first."""
    kind = int(record["kind"])
    out: dict = {
        "event": _name(EVENT_NAMES, kind),
        "symbol": decode_symbol(record["symbol"]),
        "seq": int(record["seq"]),
        "ts_ns": int(record["ts_ns"]),
    }
    if kind == EventKind.TRADE:
        out.update(
            trade_id=int(record["trade_id"]),
            price=int(record["price"]),
            qty=int(record["qty"]),
            taker_side=_name(SIDE_NAMES, int(record["side"])),
            taker_order_id=int(record["order_id"]),
            taker_client_order_id=int(record["client_order_id"]),
            taker_account=int(record["account"]),
            taker_remaining=int(record["remaining"]),
            maker_order_id=int(record["contra_order_id"]),
            maker_client_order_id=int(record["contra_client_order_id"]),
            maker_account=int(record["contra_account"]),
            maker_remaining=int(record["contra_remaining"]),
        )
        return out
    if kind == EventKind.MASS_CANCELLED:
        out.update(
            account=int(record["account"]),
            client_order_id=int(record["client_order_id"]),
            side=_name(SIDE_NAMES, int(record["side"])) or "both",
            cancelled=int(record["qty"]),
            reason=_name(REASON_NAMES, int(record["reason"])),
        )
        return out
    if kind == EventKind.LIMIT_SET:
        out.update(
            limit=_name(LIMIT_NAMES, int(record["side"])),
            account=int(record["account"]),  # 0: the symbol's own limit
            value=int(record["price"]),
            cancelled=int(record["qty"]),  # orders an engaged kill switch cancelled
            operator=int(record["contra_account"]),
            client_order_id=int(record["client_order_id"]),
        )
        return out
    out.update(
        order_id=int(record["order_id"]),
        client_order_id=int(record["client_order_id"]),
        account=int(record["account"]),
        side=_name(SIDE_NAMES, int(record["side"])),
        order_type=_name(ORDER_TYPE_NAMES, int(record["order_type"])),
        tif=_name(TIF_NAMES, int(record["tif"])),
        price=int(record["price"]),
        qty=int(record["qty"]),
    )
    if kind in (EventKind.ACCEPTED, EventKind.REPLACED):
        out["remaining"] = int(record["remaining"])
    else:
        out["reason"] = _name(REASON_NAMES, int(record["reason"]))
    return out
