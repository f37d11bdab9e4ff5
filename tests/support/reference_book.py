"""A slow, obviously correct order book: the oracle the jitted book is tested against.

Written from the rules (PROTOCOL.md, docs/matching.md, docs/protocol.md for mass cancel
and pre-trade risk), not from ``matcher_jit``: plain dicts of price -> list of orders,
one ``Order`` object per resting order, a dict of each account's limits, and a dry run
on a deep copy to decide whether a fill-or-kill order can fill. It produces the same
``EVENT`` records as ``ringex.engine.matcher.Matcher``, so the two can be compared exactly.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ringex.codes import EventKind, EventReason, Op, OrderType, RiskLimit, Side, Tif
from ringex.config import SymbolSpec
from ringex.records import EVENT, encode_symbol

VALID_TIFS = {OrderType.LIMIT: {Tif.GTC, Tif.IOC, Tif.FOK, Tif.POST_ONLY}, OrderType.MARKET: {Tif.IOC, Tif.FOK}}
# docs/protocol.md: at most this many accounts of one book hold limits of their own
RISK_ACCOUNTS = 4096
ACCOUNT_LIMITS = (RiskLimit.MAX_ORDER_QTY, RiskLimit.MAX_NOTIONAL, RiskLimit.MAX_OPEN_ORDERS, RiskLimit.KILL_SWITCH)
SYMBOL_LIMITS = (
    RiskLimit.MAX_ORDER_QTY,
    RiskLimit.MAX_NOTIONAL,
    RiskLimit.MAX_OPEN_ORDERS,
    RiskLimit.COLLAR_BPS,
    RiskLimit.REFERENCE_PRICE,
)


def tighter(a, b):
    """The tighter of two limits where 0 means none."""
    limits = [x for x in (a, b) if x]
    return min(limits) if limits else 0


@dataclasses.dataclass
class Order:
    order_id: int
    client_order_id: int
    account: int
    side: int
    order_type: int
    tif: int
    price: int
    qty: int


class ReferenceBook:
    def __init__(self, spec: SymbolSpec) -> None:
        self.spec = spec
        self.symbol = encode_symbol(spec.name)
        self.orders: dict[int, Order] = {}
        self.queues: dict[int, dict[int, list[Order]]] = {Side.BUY: {}, Side.SELL: {}}
        self.trade_counter = 0
        self.last_seq = -1
        self.last_price = 0
        self.limits = dict.fromkeys(SYMBOL_LIMITS, 0)  # the symbol's, 0: none
        self.account_limits: dict[int, dict[int, int]] = {}  # account -> its own, 0: none

    # ---- helpers ---------------------------------------------------------------------

    def _event(
        self, kind, side, reason, order_type, tif, oid, coid, acct, price, qty, remaining, trade=(0, 0, 0, 0, 0)
    ):
        trade_id, c_oid, c_coid, c_acct, c_rem = trade
        self._out.append(
            (kind, side, reason, order_type, tif, self._seq, self._ts, oid, coid, acct, price, qty, remaining,
             trade_id, c_oid, c_coid, c_acct, c_rem, self.symbol)
        )  # fmt: skip

    def _about_command(self, cmd, kind, reason, qty):
        self._event(kind, cmd["side"], reason, cmd["order_type"], cmd["tif"], cmd["order_id"],
                    cmd["client_order_id"], cmd["account"], cmd["price"], qty, 0)  # fmt: skip

    def _about_order(self, order, kind, reason, qty, remaining):
        self._event(kind, order.side, reason, order.order_type, order.tif, order.order_id,
                    order.client_order_id, order.account, order.price, qty, remaining)  # fmt: skip

    def _price_ok(self, price):
        s = self.spec
        return s.price_min <= price <= s.price_max and (price - s.price_min) % s.tick == 0

    def _rest(self, order):
        self.orders[order.order_id] = order
        self.queues[order.side].setdefault(order.price, []).append(order)

    def _remove(self, order):
        del self.orders[order.order_id]
        queue = self.queues[order.side][order.price]
        queue.remove(order)
        if not queue:
            del self.queues[order.side][order.price]

    def best(self, side):
        prices = self.queues[side]
        if not prices:
            return None
        return max(prices) if side == Side.BUY else min(prices)

    def _take(self, taker, is_market):
        """Match ``taker`` (not resting); returns True if self-trade prevention stopped it."""
        other = Side.SELL if taker.side == Side.BUY else Side.BUY
        while taker.qty > 0:
            best = self.best(other)
            if best is None:
                return False
            if not is_market and (best > taker.price if taker.side == Side.BUY else best < taker.price):
                return False
            maker = self.queues[other][best][0]
            if self.spec.stp != "off" and maker.account == taker.account:
                if self.spec.stp == "cancel_newest":
                    return True
                self._about_order(maker, EventKind.CANCELLED, EventReason.SELF_TRADE, maker.qty, 0)
                self._remove(maker)
                if self.spec.stp == "cancel_both":
                    return True
                continue
            fill = min(taker.qty, maker.qty)
            taker.qty -= fill
            maker.qty -= fill
            self.trade_counter += 1
            self.last_price = best
            self._event(EventKind.TRADE, taker.side, 0, taker.order_type, taker.tif, taker.order_id,
                        taker.client_order_id, taker.account, best, fill, taker.qty,
                        (self.trade_counter, maker.order_id, maker.client_order_id, maker.account, maker.qty))  # fmt: skip
            if maker.qty == 0:
                self._remove(maker)
        return False

    def _can_fill(self, taker, is_market):
        trial = copy.deepcopy(self)
        trial._out = []
        taker = copy.copy(taker)
        stopped = trial._take(taker, is_market)
        return not stopped and taker.qty == 0

    # ---- commands --------------------------------------------------------------------

    def apply(self, commands, first_seq):
        self._out = []
        for i, cmd in enumerate(commands):
            self._seq = first_seq + i
            self._ts = cmd["ts_ns"]
            op = cmd["msg_type"]
            if op == Op.NEW:
                self._new(cmd)
            elif op == Op.CANCEL:
                self._cancel(cmd)
            elif op == Op.REPLACE:
                self._replace(cmd)
            elif op == Op.MASS_CANCEL:
                self._mass_cancel(cmd, EventReason.MASS_CANCEL)
            elif op == Op.DISCONNECT:
                self._mass_cancel(cmd, EventReason.DISCONNECT)
            elif op == Op.RISK:
                self._set_limit(cmd)
            else:
                self._about_command(cmd, EventKind.REJECTED, EventReason.BAD_ORDER_TYPE, cmd["qty"])
            self.last_seq = self._seq
        events = np.zeros(len(self._out), EVENT)  # zeroed, so padding bytes compare equal too
        for i, record in enumerate(self._out):
            events[i] = record
        return events

    def _new(self, cmd):
        qty = int(cmd["qty"])
        side, order_type, tif = int(cmd["side"]), int(cmd["order_type"]), int(cmd["tif"])
        reject = None
        if side not in (Side.BUY, Side.SELL) or order_type not in VALID_TIFS or tif not in VALID_TIFS[order_type]:
            reject = EventReason.BAD_ORDER_TYPE
        elif not 0 < qty <= self.spec.max_qty:
            reject = EventReason.BAD_QTY
        elif order_type == OrderType.LIMIT and not self._price_ok(int(cmd["price"])):
            reject = EventReason.BAD_PRICE
        elif int(cmd["order_id"]) in self.orders:
            reject = EventReason.DUPLICATE_ORDER_ID
        else:
            reject = self._risk(int(cmd["account"]), side, order_type == OrderType.MARKET, int(cmd["price"]), qty,
                                tif in (Tif.GTC, Tif.POST_ONLY))  # fmt: skip
        if reject is None and tif in (Tif.GTC, Tif.POST_ONLY) and len(self.orders) >= self.spec.capacity:
            reject = EventReason.BOOK_FULL
        if reject is not None:
            self._about_command(cmd, EventKind.REJECTED, reject, qty)
            return
        is_market = order_type == OrderType.MARKET
        taker = Order(int(cmd["order_id"]), int(cmd["client_order_id"]), int(cmd["account"]), side, order_type, tif,
                      int(cmd["price"]), qty)  # fmt: skip
        bound = self._collar_bound(side) if is_market else None
        if bound is not None:
            # a market order under a collar takes liquidity only up to the collar's edge
            taker = copy.copy(taker)
            taker.price = bound
            is_market = False
        other_best = self.best(Side.SELL if side == Side.BUY else Side.BUY)
        if tif == Tif.POST_ONLY and other_best is not None:
            if (side == Side.BUY and other_best <= taker.price) or (side == Side.SELL and other_best >= taker.price):
                self._about_command(cmd, EventKind.REJECTED, EventReason.WOULD_TRADE, qty)
                return
        if tif == Tif.FOK and not self._can_fill(taker, is_market):
            self._about_command(cmd, EventKind.CANCELLED, EventReason.FOK_UNFILLED, qty)
            return
        stopped = self._take(taker, is_market)
        if taker.qty == 0:
            return
        if stopped:
            self._about_command(cmd, EventKind.CANCELLED, EventReason.SELF_TRADE, taker.qty)
        elif order_type == OrderType.MARKET:
            self._about_command(cmd, EventKind.CANCELLED, EventReason.NO_LIQUIDITY, taker.qty)
        elif tif == Tif.IOC:
            self._about_command(cmd, EventKind.CANCELLED, EventReason.IOC_REMAINDER, taker.qty)
        else:
            self._rest(taker)
            self._about_order(taker, EventKind.ACCEPTED, 0, taker.qty, taker.qty)

    def _target(self, cmd):
        order = self.orders.get(int(cmd["order_id"]))
        if order is None:
            self._about_command(cmd, EventKind.REJECTED, EventReason.UNKNOWN_ORDER, cmd["qty"])
        elif order.account != int(cmd["account"]):
            self._about_command(cmd, EventKind.REJECTED, EventReason.NOT_OWNER, cmd["qty"])
            order = None
        return order

    def _cancel(self, cmd):
        order = self._target(cmd)
        if order is None:
            return
        order.client_order_id = int(cmd["client_order_id"])
        self._about_order(order, EventKind.CANCELLED, EventReason.USER_REQUEST, order.qty, 0)
        self._remove(order)

    def _replace(self, cmd):
        order = self._target(cmd)
        if order is None:
            return
        qty, price = int(cmd["qty"]), int(cmd["price"])
        if not 0 < qty <= self.spec.max_qty:
            self._about_command(cmd, EventKind.REJECTED, EventReason.BAD_QTY, qty)
            return
        if not self._price_ok(price):
            self._about_command(cmd, EventKind.REJECTED, EventReason.BAD_PRICE, qty)
            return
        refusal = self._risk(order.account, order.side, False, price, qty, False)
        if refusal is not None:
            self._about_command(cmd, EventKind.REJECTED, refusal, qty)
            return
        order.client_order_id = int(cmd["client_order_id"])
        if price == order.price and qty < order.qty:
            order.qty = qty
            self._about_order(order, EventKind.REPLACED, 0, qty, qty)
            return
        self._remove(order)
        order.price, order.qty = price, qty
        self._about_order(order, EventKind.REPLACED, 0, qty, qty)
        if self._take(order, False):
            self._about_order(order, EventKind.CANCELLED, EventReason.SELF_TRADE, order.qty, 0)
        elif order.qty > 0:
            self._rest(order)

    # ---- risk ------------------------------------------------------------------------

    def reference(self):
        return self.last_price or self.limits[RiskLimit.REFERENCE_PRICE]

    def _collar_bound(self, side):
        """The furthest price (on a tick, in the band) a market order may trade at, or
        None when no collar applies."""
        ref, bps = self.reference(), self.limits[RiskLimit.COLLAR_BPS]
        if not bps or ref <= 0:
            return None
        s = self.spec
        band = ref * bps // 10_000
        if side == Side.BUY:
            edge = s.price_min + max(0, ref + band - s.price_min) // s.tick * s.tick
        else:
            edge = s.price_min + -(-max(0, ref - band - s.price_min) // s.tick) * s.tick
        return min(max(edge, s.price_min), s.price_max)

    def _risk(self, account, side, is_market, price, qty, rests):
        own = self.account_limits.get(account, {})
        if own.get(RiskLimit.KILL_SWITCH):
            return EventReason.RISK_KILL_SWITCH
        max_qty = tighter(self.limits[RiskLimit.MAX_ORDER_QTY], own.get(RiskLimit.MAX_ORDER_QTY, 0))
        if max_qty and qty > max_qty:
            return EventReason.RISK_MAX_QTY
        ref, bps = self.reference(), self.limits[RiskLimit.COLLAR_BPS]
        if not is_market and bps and ref > 0:
            band = ref * bps // 10_000
            if (side == Side.BUY and price > ref + band) or (side == Side.SELL and price < ref - band):
                return EventReason.RISK_PRICE_COLLAR
        max_notional = tighter(self.limits[RiskLimit.MAX_NOTIONAL], own.get(RiskLimit.MAX_NOTIONAL, 0))
        if max_notional:
            if is_market:
                price = ref if ref > 0 else (self.best(Side.SELL if side == Side.BUY else Side.BUY) or 0)
            if price > 0 and price * qty > max_notional:
                return EventReason.RISK_MAX_NOTIONAL
        max_open = tighter(self.limits[RiskLimit.MAX_OPEN_ORDERS], own.get(RiskLimit.MAX_OPEN_ORDERS, 0))
        if rests and max_open and sum(o.account == account for o in self.orders.values()) >= max_open:
            return EventReason.RISK_MAX_OPEN_ORDERS
        return None

    def _cancel_all_of(self, account, side, reason):
        cancelled = 0
        for order_id, *_ in self.resting():
            order = self.orders[order_id]
            if order.account == account and side in (0, order.side):
                self._about_order(order, EventKind.CANCELLED, reason, order.qty, 0)
                self._remove(order)
                cancelled += 1
        return cancelled

    def _mass_cancel(self, cmd, reason):
        side = int(cmd["side"]) if reason == EventReason.MASS_CANCEL else 0
        if side not in (0, Side.BUY, Side.SELL):
            self._about_command(cmd, EventKind.REJECTED, EventReason.BAD_ORDER_TYPE, 0)
            return
        account = int(cmd["account"])
        cancelled = self._cancel_all_of(account, side, reason)
        if cancelled or reason == EventReason.MASS_CANCEL:
            self._event(EventKind.MASS_CANCELLED, side, reason, 0, 0, 0, int(cmd["client_order_id"]), account, 0,
                        cancelled, 0)  # fmt: skip

    def _pinned(self):
        return sum(any(v for v in limits.values()) for limits in self.account_limits.values())

    def _set_limit(self, cmd):
        limit, target, value = int(cmd["side"]), int(cmd["order_id"]), int(cmd["price"])
        valid = (
            (limit == RiskLimit.CLEAR and target == 0 and value == 0)
            or (limit in (RiskLimit.COLLAR_BPS, RiskLimit.REFERENCE_PRICE) and target == 0 and value >= 0)
            or (limit == RiskLimit.KILL_SWITCH and target != 0 and value in (0, 1))
            or (limit in (RiskLimit.MAX_ORDER_QTY, RiskLimit.MAX_NOTIONAL, RiskLimit.MAX_OPEN_ORDERS) and value >= 0)
        )
        if not valid:
            self._about_command(cmd, EventKind.REJECTED, EventReason.BAD_ORDER_TYPE, 0)
            return
        cancelled = 0
        if limit == RiskLimit.CLEAR:
            self.limits = dict.fromkeys(SYMBOL_LIMITS, 0)
            for limits in self.account_limits.values():
                for key in (RiskLimit.MAX_ORDER_QTY, RiskLimit.MAX_NOTIONAL, RiskLimit.MAX_OPEN_ORDERS):
                    limits[key] = 0
        elif target == 0:
            self.limits[limit] = value
        else:
            limits = self.account_limits.setdefault(target, dict.fromkeys(ACCOUNT_LIMITS, 0))
            if value and not any(limits.values()) and self._pinned() >= RISK_ACCOUNTS:
                self._about_command(cmd, EventKind.REJECTED, EventReason.RISK_TABLE_FULL, 0)
                return
            if limit == RiskLimit.KILL_SWITCH and value:
                cancelled = self._cancel_all_of(target, 0, EventReason.KILL_SWITCH)
            limits[limit] = value
        self._event(EventKind.LIMIT_SET, limit, 0, 0, 0, 0, int(cmd["client_order_id"]), target, value, cancelled, 0,
                    (0, 0, 0, int(cmd["account"]), 0))  # fmt: skip

    # ---- inspection ------------------------------------------------------------------

    def resting(self):
        """(order_id, client_order_id, account, side, price, qty) in priority order,
        bids best first then asks best first."""
        out = []
        for side, descending in ((Side.BUY, True), (Side.SELL, False)):
            for price in sorted(self.queues[side], reverse=descending):
                for o in self.queues[side][price]:
                    out.append((o.order_id, o.client_order_id, o.account, o.side, o.price, o.qty))
        return out
