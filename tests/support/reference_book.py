"""A slow, obviously correct order book: the oracle the jitted book is tested against.

Written from the rules (PROTOCOL.md, docs/matching.md), not from ``matcher_jit``: plain
dicts of price -> list of orders, one ``Order`` object per resting order, and a dry run
on a deep copy to decide whether a fill-or-kill order can fill. It produces the same
``EVENT`` records as ``ringex.engine.matcher.Matcher``, so the two can be compared exactly.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ringex.codes import EventKind, EventReason, Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.records import EVENT, encode_symbol

VALID_TIFS = {OrderType.LIMIT: {Tif.GTC, Tif.IOC, Tif.FOK, Tif.POST_ONLY}, OrderType.MARKET: {Tif.IOC, Tif.FOK}}


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
        elif tif in (Tif.GTC, Tif.POST_ONLY) and len(self.orders) >= self.spec.capacity:
            reject = EventReason.BOOK_FULL
        if reject is not None:
            self._about_command(cmd, EventKind.REJECTED, reject, qty)
            return
        is_market = order_type == OrderType.MARKET
        taker = Order(int(cmd["order_id"]), int(cmd["client_order_id"]), int(cmd["account"]), side, order_type, tif,
                      int(cmd["price"]), qty)  # fmt: skip
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
        elif is_market:
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
