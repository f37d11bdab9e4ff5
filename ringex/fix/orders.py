"""FIX order messages to protocol v1 requests, and the exchange's answers to FIX reports.

The application layer of the acceptor, sans-IO: ``OrderRouter`` turns

- NewOrderSingle (D), OrderCancelRequest (F), OrderCancelReplaceRequest (G) into
  protocol v1 frames for the session's gateway connection (``Outbox.forward``), after
  checking them (what fails is answered at once: ExecutionReport Rejected,
  OrderCancelReject, a session-level Reject for a missing required field,
  BusinessMessageReject for a message type ringex does not take);
- the gateway's ``K`` for a new order (it is durable in the journal) into
  ExecutionReport New, and its ``X`` into those same rejections;
- the matcher's events (``EVENT`` records from the out-rings, or from the journal when
  catching up) into ExecutionReports: Trade (partial and full fills, with LastPx,
  LastQty, CumQty, LeavesQty, AvgPx), Canceled, Replaced, Rejected, New if the
  event came before the K, and OrderCancelReject for a cancel or replace the matcher
  refused;
- requests lost with their gateway connection before any answer (``lost``) into a
  rejection that says so.

Every report goes to ``Outbox.report(comp_id, msg_type, body)``, which stores it in
that FIX session's outbox (and sends it if the session is connected).

How events are matched to FIX orders. The acceptor numbers its v1 requests
``CID_TAG | n`` (the top bit set) and keeps every request until the matcher answers
it; the book carries a request's client_order_id on every event about its order
(a replace's id from then on), so a vectorised test of that bit picks the acceptor's
events out of a batch, and the request (by client_order_id) or the order (by the
exchange's order id) tells whose they are. A protocol v1 client of the same account
should number its requests below 2^63 (``docs/fix.md``).

Each order gets one ExecutionReport New, on its ``K`` or with its first event,
whichever the acceptor sees first (so an order that trades on arrival gets New, then
its fills), and exactly one terminal report: filled, canceled or rejected; the
matcher may still refuse an order reported New (a risk limit, post-only), which FIX
4.4 allows (New to Rejected). New goes out on the ``K`` because the K comes a matcher
turn earlier: it is FIX's acknowledgement, and v1's. ExecIDs derive from the event
(symbol, journal sequence, what the report is) or the K (the exchange's order id),
so a report regenerated from the journal after a crash carries the ExecID it had (a
New is never regenerated: it is stored with the order, before it is sent).

State: ``requests`` (in flight), ``live`` orders (by key and by exchange order id)
in memory; all of it, and every ClOrdID each account used, in the ``FixStore``
(a new order's request as its order: live, not reported New).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Protocol

import numpy as np

from ringex.codes import (
    BusinessRejectReason,
    CxlRejReason,
    CxlRejResponseTo,
    EventKind,
    EventReason,
    ExecInst,
    ExecType,
    FixMsgType,
    FixOrdType,
    FixSide,
    FixTimeInForce,
    OrderType,
    OrdRejReason,
    OrdStatus,
    Reason,
    SessionRejectReason,
    Side,
    Tag,
    Tif,
)
from ringex.config import SymbolSpec
from ringex.fix.codec import Message, utc_timestamp
from ringex.fix.store import FixStore
from ringex.order_entry.protocol import encode_cancel, encode_new_order, encode_replace
from ringex.records import EVENT

__all__ = ["OrderRouter", "Outbox", "Order", "Request", "CID_TAG", "NEW", "CANCEL", "REPLACE"]

log = logging.getLogger("ringex.fix.orders")

# The acceptor's v1 client_order_ids have this bit set (see the module docstring).
CID_TAG = 1 << 63
# v1 client_order_ids are reserved in the store this many at a time (``_new_cid``).
CID_BLOCK = 1024
# Longest ClOrdID kept (FIX sets no limit; a key in the store must have one).
MAX_CL_ORD_ID = 64
NEW, CANCEL, REPLACE = "new", "cancel", "replace"

_SIDES = {FixSide.BUY: Side.BUY, FixSide.SELL: Side.SELL}
_FIX_SIDE = {int(Side.BUY): FixSide.BUY, int(Side.SELL): FixSide.SELL}
_NUMBER = re.compile(rb"^([0-9]+)(?:\.(0*))?$")
_ORD_REJ_FOR_V1 = {
    Reason.UNKNOWN_SYMBOL: OrdRejReason.UNKNOWN_SYMBOL,
    Reason.BAD_QTY: OrdRejReason.INCORRECT_QUANTITY,
    Reason.BAD_ORDER_TYPE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    Reason.NOT_READY: OrdRejReason.EXCHANGE_CLOSED,
}
_ORD_REJ_FOR_EVENT = {
    EventReason.BAD_QTY: OrdRejReason.INCORRECT_QUANTITY,
    EventReason.BAD_ORDER_TYPE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    EventReason.DUPLICATE_ORDER_ID: OrdRejReason.DUPLICATE_ORDER,
    EventReason.UNKNOWN_ORDER: OrdRejReason.UNKNOWN_ORDER,
}
# positions of the EVENT fields in a record's tuple
_E_ACCOUNT = EVENT.names.index("account")
_E_CLIENT_ORDER_ID = EVENT.names.index("client_order_id")
_E_CONTRA_ACCOUNT = EVENT.names.index("contra_account")
_E_CONTRA_CLIENT_ORDER_ID = EVENT.names.index("contra_client_order_id")
_E_CONTRA_ORDER_ID = EVENT.names.index("contra_order_id")
_E_CONTRA_REMAINING = EVENT.names.index("contra_remaining")
_E_KIND = EVENT.names.index("kind")
_E_ORDER_ID = EVENT.names.index("order_id")
_E_PRICE = EVENT.names.index("price")
_E_QTY = EVENT.names.index("qty")
_E_REASON = EVENT.names.index("reason")
_E_REMAINING = EVENT.names.index("remaining")
_E_TS_NS = EVENT.names.index("ts_ns")
_EVENT_TEXT = {
    EventReason.USER_REQUEST: "canceled on request",
    EventReason.IOC_REMAINDER: "immediate-or-cancel: the unfilled rest is canceled",
    EventReason.FOK_UNFILLED: "fill-or-kill: could not fill completely",
    EventReason.SELF_TRADE: "self-trade prevention",
    EventReason.NO_LIQUIDITY: "market order: no more liquidity",
    EventReason.UNKNOWN_ORDER: "unknown order (filled or canceled already)",
    EventReason.NOT_OWNER: "the order belongs to another account",
    EventReason.BOOK_FULL: "the book is full",
    EventReason.WOULD_TRADE: "post-only order would trade on arrival",
    EventReason.BAD_PRICE: "price outside the band or off the tick",
    EventReason.BAD_QTY: "bad quantity",
    EventReason.BAD_ORDER_TYPE: "bad order type",
    EventReason.DUPLICATE_ORDER_ID: "duplicate order id",
}


class Outbox(Protocol):
    """Where the router's output goes (the acceptor)."""

    def report(self, comp_id: str, msg_type: str, body: list) -> None:
        """Store an application message in session ``comp_id``'s outbox; send it if connected."""

    def forward(self, comp_id: str, cid: int, frame: bytes) -> bool:
        """Send a v1 frame on the session's gateway connection; False if it has none."""


@dataclasses.dataclass
class Order:
    key: int  # the v1 client_order_id of its NewOrderSingle
    account: int
    owner: str  # CompID of the session that entered it: unsolicited reports go there
    symbol: str
    side: str
    ord_type: str
    tif: str
    exec_inst: str
    price: int
    order_qty: int
    cl_ord_id: str
    orig_cl_ord_id: str = ""
    order_id: int = 0
    cum_qty: int = 0
    cum_value: int = 0  # sum of price * qty over the fills
    leaves: int = 0
    status: str = OrdStatus.PENDING_NEW
    reported_new: bool = False
    pending: int = 0  # cid of a cancel or replace in flight

    @property
    def live(self) -> bool:
        return self.status in (OrdStatus.PENDING_NEW, OrdStatus.NEW, OrdStatus.PARTIALLY_FILLED)


@dataclasses.dataclass
class Request:
    cid: int
    kind: str  # NEW, CANCEL, REPLACE
    key: int  # the order's
    account: int
    requester: str  # CompID of the session that sent it: the answer goes there
    cl_ord_id: str
    orig_cl_ord_id: str = ""
    price: int = 0
    order_qty: int = 0  # a replace's new OrderQty
    acked: bool = False


class _Refused(Exception):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


class OrderRouter:
    """See the module docstring. ``symbols``: the listed symbols' specs; ``store``: the
    acceptor's ``FixStore``; ``outbox``: where reports and v1 frames go."""

    def __init__(self, symbols: tuple[SymbolSpec, ...], store: FixStore, outbox: Outbox, clock_ns=time.time_ns) -> None:
        self.specs = {spec.name: spec for spec in symbols}
        self.store = store
        self.outbox = outbox
        self.clock_ns = clock_ns
        self.next_cid = store.get_int("next_cid") or 1
        self._cids_reserved = self.next_cid - 1
        self.requests: dict[int, Request] = {}
        for doc in store.requests():
            request = Request(**doc)
            if request.kind == NEW:  # an older store's: now read off its order, below
                store.delete_request(request.cid)
            else:
                self.requests[request.cid] = request
        self.live: dict[int, Order] = {}
        self.by_order_id: dict[int, int] = {}
        for doc in store.live_orders():
            order = _order_from(doc)
            self.live[order.key] = order
            if order.order_id:
                self.by_order_id[order.order_id] = order.key
            if not order.reported_new:
                # its NewOrderSingle is still in flight: every answer (K, X, the first
                # event, a fence) reports it New or Rejected, so the flag says it all
                request = _new_request(order)
                self.requests[request.cid] = request
        self.positions: dict[str, int] = {}
        for name in self.specs:
            value = store.get_int(f"events/{name}")
            if value is not None:
                self.positions[name] = value
        self.reports = 0
        self._unsaved_positions = False
        self._unsaved: dict[int, Order] = {}

    # -- persistence --------------------------------------------------------------------------

    def _save_order(self, order: Order) -> None:
        # Written once per turn whatever the turn did to it (``flush``).
        self._unsaved[order.key] = order
        if not order.live:
            self.live.pop(order.key, None)
            self.by_order_id.pop(order.order_id, None)

    def flush(self) -> None:
        """Write the orders changed since the last call (before the store commits)."""
        for order in self._unsaved.values():
            # its fields' values in declaration order: a third of the cost of pickling
            # them as a dict, keys and all (``_order_from`` reads both)
            self.store.put_order(order.key, tuple(vars(order).values()), order.live)
        self._unsaved.clear()

    def _order(self, key: int) -> Order | None:
        order = self.live.get(key) or self._unsaved.get(key)
        if order is None:
            doc = self.store.order(key)
            order = _order_from(doc) if doc is not None else None
        return order

    def _new_cid(self) -> int:
        # The store holds the end of a reserved block, not every number: a restart
        # skips what was left of the block, and a number is never used twice.
        cid = CID_TAG | self.next_cid
        self.next_cid += 1
        if self.next_cid > self._cids_reserved:
            self._cids_reserved = self.next_cid + CID_BLOCK
            self.store.put_int("next_cid", self._cids_reserved)
        return cid

    def _open_request(self, request: Request) -> None:
        self.requests[request.cid] = request
        # A new order's request is not stored: it is open exactly while its order,
        # stored in the same turn, is live and not reported New (``__init__``). Two
        # writes fewer on every order's path.
        if request.kind != NEW:
            self.store.put_request(request.cid, vars(request))

    def _close_request(self, request: Request) -> None:
        self.requests.pop(request.cid, None)
        if request.kind != NEW:
            self.store.delete_request(request.cid)

    # -- FIX in ------------------------------------------------------------------------------

    def on_message(self, comp_id: str, account: int, session, m: Message) -> None:
        """An application message from session ``comp_id`` (logged on as ``account``);
        ``session`` is its ``Session``, for session-level rejects."""
        mt = m.msg_type
        if mt == FixMsgType.NEW_ORDER_SINGLE:
            self._new_order(comp_id, account, session, m)
        elif mt == FixMsgType.ORDER_CANCEL_REQUEST:
            self._cancel_or_replace(comp_id, account, session, m, CANCEL)
        elif mt == FixMsgType.ORDER_CANCEL_REPLACE_REQUEST:
            self._cancel_or_replace(comp_id, account, session, m, REPLACE)
        else:
            body = [
                (Tag.RefSeqNum, m.seq),
                (Tag.RefMsgType, mt),
                (Tag.BusinessRejectReason, BusinessRejectReason.UNSUPPORTED_MESSAGE_TYPE),
                (Tag.Text, f"MsgType {mt} is not supported; ringex takes D, F and G"),
            ]
            self.outbox.report(comp_id, FixMsgType.BUSINESS_MESSAGE_REJECT, body)

    @staticmethod
    def _missing(session, m: Message, tags) -> bool:
        for tag in tags:
            if not m.get(tag):
                session.reject(
                    m, SessionRejectReason.REQUIRED_TAG_MISSING, tag, f"{Tag(tag).name} ({int(tag)}) is required"
                )
                return True
        return False

    def _new_order(self, comp_id: str, account: int, session, m: Message) -> None:
        required = (Tag.ClOrdID, Tag.Symbol, Tag.Side, Tag.TransactTime, Tag.OrderQty, Tag.OrdType)
        if self._missing(session, m, required):
            return
        cl_ord_id = m.text(Tag.ClOrdID)
        symbol = m.text(Tag.Symbol)
        side = m.text(Tag.Side)
        ord_type = m.text(Tag.OrdType)
        tif = m.text(Tag.TimeInForce)
        exec_inst = m.text(Tag.ExecInst) or ""
        order = Order(
            key=0,
            account=account,
            owner=comp_id,
            symbol=symbol,
            side=side,
            ord_type=ord_type,
            tif=tif or "",
            exec_inst=exec_inst,
            price=0,
            order_qty=_whole(m.get(Tag.OrderQty)) or 0,  # as given, for a rejection's report
            cl_ord_id=cl_ord_id,
        )
        problem = None
        if len(cl_ord_id) > MAX_CL_ORD_ID:
            problem = (OrdRejReason.OTHER, f"ClOrdID longer than {MAX_CL_ORD_ID} characters")
        elif self.store.order_key(account, cl_ord_id) is not None:
            problem = (OrdRejReason.DUPLICATE_ORDER, f"ClOrdID {cl_ord_id} was used before")
        if problem is not None:  # not bound to the ClOrdID: that belongs to the earlier order
            order.status = OrdStatus.REJECTED
            self._report_rejected(order, None, *problem, exec_id=f"X-{comp_id}-{m.seq}")  # no key: by the message
            return
        order.key = self._new_cid()
        self.store.bind_cl_ord_id(account, cl_ord_id, order.key)
        try:
            v1_side, v1_type, v1_tif, price, qty = self._check_new(order, m)
        except _Refused as refusal:
            order.status = OrdStatus.REJECTED
            self._save_order(order)
            self._report_rejected(order, None, refusal.reason, refusal.text)
            return
        order.price, order.order_qty, order.leaves = price, qty, qty
        frame = encode_new_order(symbol, v1_side, qty, price, client_order_id=order.key, order_type=v1_type, tif=v1_tif)
        self._save_order(order)
        self.live[order.key] = order
        request = _new_request(order)
        self._open_request(request)
        if not self.outbox.forward(comp_id, request.cid, frame):
            self.lost(request.cid, "the exchange's order entry is not connected")

    def _check_new(self, order: Order, m: Message):
        """(v1 side, order type, tif, price, qty); raises ``_Refused``."""
        spec = self.specs.get(order.symbol)
        if spec is None:
            raise _Refused(OrdRejReason.UNKNOWN_SYMBOL, f"unknown symbol {order.symbol}")
        v1_side = _SIDES.get(order.side)
        if v1_side is None:
            raise _Refused(
                OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC, f"Side {order.side} is not supported (1 buy, 2 sell)"
            )
        qty = _whole(m.get(Tag.OrderQty))
        if qty is None or qty <= 0 or qty > spec.max_qty:
            raise _Refused(OrdRejReason.INCORRECT_QUANTITY, f"OrderQty must be a whole number from 1 to {spec.max_qty}")
        if order.exec_inst not in ("", ExecInst.PARTICIPATE_DONT_INITIATE):
            raise _Refused(OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC, "ExecInst: only 6 (post-only) is supported")
        post_only = order.exec_inst == ExecInst.PARTICIPATE_DONT_INITIATE
        if order.ord_type == FixOrdType.LIMIT:
            tifs = {"": Tif.GTC, FixTimeInForce.GOOD_TILL_CANCEL: Tif.GTC}
            if not post_only:
                tifs |= {FixTimeInForce.IMMEDIATE_OR_CANCEL: Tif.IOC, FixTimeInForce.FILL_OR_KILL: Tif.FOK}
            v1_tif = tifs.get(order.tif)
            if v1_tif is None:
                what = (
                    "post-only (ExecInst 6) needs TimeInForce 1 (GTC)" if post_only else "TimeInForce must be 1, 3 or 4"
                )
                raise _Refused(OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC, what)
            if post_only:
                v1_tif = Tif.POST_ONLY
            raw_price = m.get(Tag.Price)
            if raw_price is None:
                raise _Refused(OrdRejReason.OTHER, "Price (44) is required for a limit order")
            price = _whole(raw_price)
            problem = _price_problem(spec, price, raw_price)
            if problem:
                raise _Refused(OrdRejReason.OTHER, problem)
            return v1_side, OrderType.LIMIT, v1_tif, price, qty
        if order.ord_type == FixOrdType.MARKET:
            tifs = {"": Tif.IOC, FixTimeInForce.IMMEDIATE_OR_CANCEL: Tif.IOC, FixTimeInForce.FILL_OR_KILL: Tif.FOK}
            v1_tif = tifs.get(order.tif)
            if v1_tif is None or post_only:
                raise _Refused(
                    OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
                    "a market order is IOC (3) or FOK (4), never post-only",
                )
            if m.get(Tag.Price) is not None:
                raise _Refused(OrdRejReason.OTHER, "a market order has no Price")
            return v1_side, OrderType.MARKET, v1_tif, 0, qty
        raise _Refused(
            OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
            f"OrdType {order.ord_type} is not supported (1 market, 2 limit)",
        )

    def _cancel_or_replace(self, comp_id: str, account: int, session, m: Message, kind: str) -> None:
        required = [Tag.OrigClOrdID, Tag.ClOrdID, Tag.Symbol, Tag.Side, Tag.TransactTime]
        if kind == REPLACE:
            required += [Tag.OrderQty, Tag.OrdType]
        if self._missing(session, m, required):
            return
        cl_ord_id, orig = m.text(Tag.ClOrdID), m.text(Tag.OrigClOrdID)
        response_to = (
            CxlRejResponseTo.ORDER_CANCEL_REQUEST if kind == CANCEL else CxlRejResponseTo.ORDER_CANCEL_REPLACE_REQUEST
        )
        key = self.store.order_key(account, orig)
        order = self._order(key) if key is not None else None

        def refuse(reason: str, text: str) -> None:
            self._cancel_reject(comp_id, order, cl_ord_id, orig, response_to, reason, text)

        if len(cl_ord_id) > MAX_CL_ORD_ID:
            return refuse(CxlRejReason.OTHER, f"ClOrdID longer than {MAX_CL_ORD_ID} characters")
        if self.store.order_key(account, cl_ord_id) is not None:
            return refuse(CxlRejReason.DUPLICATE_CL_ORD_ID, f"ClOrdID {cl_ord_id} was used before")
        if order is None:
            return refuse(CxlRejReason.UNKNOWN_ORDER, f"no order with ClOrdID {orig}")
        # the new ClOrdID is used now, whatever becomes of the request
        self.store.bind_cl_ord_id(account, cl_ord_id, order.key)
        if not order.live:
            return refuse(CxlRejReason.TOO_LATE_TO_CANCEL, "the order is filled, canceled or rejected already")
        if order.pending:
            return refuse(CxlRejReason.ALREADY_PENDING, "a cancel or replace of the order is in flight")
        if m.text(Tag.Symbol) != order.symbol or m.text(Tag.Side) != order.side:
            return refuse(CxlRejReason.OTHER, "Symbol and Side must be the order's")
        request = Request(
            cid=self._new_cid(),
            kind=kind,
            key=order.key,
            account=account,
            requester=comp_id,
            cl_ord_id=cl_ord_id,
            orig_cl_ord_id=orig,
        )
        if kind == CANCEL:
            frame = encode_cancel(order.symbol, order.order_id, client_order_id=request.cid)
        else:
            spec = self.specs[order.symbol]
            order_qty = _whole(m.get(Tag.OrderQty))
            raw_price = m.get(Tag.Price)
            price = _whole(raw_price) if raw_price is not None else None
            tif = m.text(Tag.TimeInForce)
            if order.ord_type != FixOrdType.LIMIT or m.text(Tag.OrdType) != FixOrdType.LIMIT:
                return refuse(CxlRejReason.OTHER, "only a resting limit order can be replaced, with OrdType 2")
            if tif is not None and tif != (order.tif or FixTimeInForce.GOOD_TILL_CANCEL):
                return refuse(CxlRejReason.OTHER, "TimeInForce cannot change")
            if (m.text(Tag.ExecInst) or "") != order.exec_inst:
                return refuse(CxlRejReason.OTHER, "ExecInst cannot change")
            if raw_price is None:
                return refuse(CxlRejReason.OTHER, "Price (44) is required")
            problem = _price_problem(spec, price, raw_price)
            if problem:
                return refuse(CxlRejReason.OTHER, problem)
            if order_qty is None or order_qty > spec.max_qty:
                return refuse(CxlRejReason.OTHER, f"OrderQty must be a whole number up to {spec.max_qty}")
            if order_qty <= order.cum_qty:
                return refuse(CxlRejReason.OTHER, f"OrderQty {order_qty} is not above the {order.cum_qty} filled")
            if order.order_id == 0:
                return refuse(CxlRejReason.ALREADY_PENDING, "the order is not acknowledged yet")
            request.price, request.order_qty = price, order_qty
            # v1 replaces set the open quantity: the new total less what is filled
            frame = encode_replace(
                order.symbol, order.order_id, price, order_qty - order.cum_qty, client_order_id=request.cid
            )
        if order.order_id == 0:
            return refuse(CxlRejReason.ALREADY_PENDING, "the order is not acknowledged yet")
        order.pending = request.cid
        self._save_order(order)
        self._open_request(request)
        if not self.outbox.forward(comp_id, request.cid, frame):
            self.lost(request.cid, "the exchange's order entry is not connected")

    # -- the gateway's replies ------------------------------------------------------------------

    def on_reply(self, cid: int, acked: bool, order_id: int, reason: int, ts_ns: int = 0) -> None:
        """The gateway's ``K`` (``acked``, with the exchange's ``order_id`` for a new
        order) or ``X`` (with its ``reason``) for request ``cid``; ``ts_ns``: the reply's
        time the exchange received the request (a New's TransactTime)."""
        request = self.requests.get(cid)
        if request is None:
            return  # the matcher answered it already
        if acked:
            request.acked = True
            if request.kind == NEW:
                order = self.live.get(request.key)
                if order is not None and not order.order_id:
                    order.order_id = order_id
                    self.by_order_id[order_id] = order.key
                # A K means the order is durable in the journal: that is what New
                # promises, and the K comes a matcher turn before the order's first
                # event. The matcher may still refuse it (risk, post-only), which
                # FIX 4.4 allows after New (OrdStatus 8: "an order can pass from New
                # to Rejected status").
                if order is not None:
                    self._ensure_new(order, f"K-{order_id}", ts_ns or None)
            # A cancel's or replace's K changes nothing a restart needs: the matcher's
            # events answer it and are saved with their reports.
            return
        try:
            name = Reason(reason).name
        except ValueError:
            name = f"reason {reason}"
        if request.kind == NEW:
            self._reject_new(
                request,
                _ORD_REJ_FOR_V1.get(reason, OrdRejReason.OTHER),
                f"rejected by the exchange: {name}",
                f"X-{cid & ~CID_TAG}",
            )
        else:
            reject = CxlRejReason.BROKER_OPTION if reason == Reason.NOT_READY else CxlRejReason.OTHER
            self._cancel_request_refused(request, reject, f"rejected by the exchange: {name}")

    def lost(self, cid: int, why: str) -> None:
        """Request ``cid`` never reached the exchange (established by the acceptor: its
        gateway connection went away, and nothing about it reached the journal)."""
        request = self.requests.get(cid)
        if request is None:
            return
        if request.acked:  # durable: the matcher answers it (a fence never gets here first)
            log.error("request %d was acknowledged, not lost; waiting for its events", cid)
            return
        text = f"not entered: {why}; it is safe to send it again"
        if request.kind == NEW:
            self._reject_new(request, OrdRejReason.OTHER, text, f"L-{cid & ~CID_TAG}")
        else:
            self._cancel_request_refused(request, CxlRejReason.OTHER, text)

    def unanswered(self) -> list[int]:
        """Requests with no ``K`` or ``X`` yet, nor any event."""
        return [cid for cid, request in self.requests.items() if not request.acked]

    # -- the matcher's events ---------------------------------------------------------------------

    def position(self, symbol: str) -> int | None:
        """The journal sequence of the next event of ``symbol`` to take (None: never took any)."""
        return self.positions.get(symbol)

    def on_events(self, symbol: str, first_seq: int, events: np.ndarray) -> None:
        """``events`` of ``symbol``, the first at journal event sequence ``first_seq``;
        those before ``position(symbol)`` were taken already and are skipped."""
        start = self.positions.get(symbol, first_seq) - first_seq
        if start >= len(events):
            return
        if start > 0:
            events = events[start:]
            first_seq += start
        ours = np.flatnonzero((events["client_order_id"] >= CID_TAG) | (events["contra_client_order_id"] >= CID_TAG))
        if len(ours):
            for i, record in zip(ours.tolist(), events[ours].tolist(), strict=True):
                self._on_event(symbol, first_seq + i, record)
        end = first_seq + len(events)
        self.positions[symbol] = end
        # Written with what the events changed; events that were none of ours may be
        # taken again after a crash at no cost, so their positions wait for ``save_positions``.
        if len(ours):
            self.store.put_int(f"events/{symbol}", end)
        else:
            self._unsaved_positions = True

    def save_positions(self) -> None:
        """Write every symbol's position (the acceptor does, now and then)."""
        if self._unsaved_positions:
            for symbol, seq in self.positions.items():
                self.store.put_int(f"events/{symbol}", seq)
            self._unsaved_positions = False

    @property
    def waiting(self) -> bool:
        """Whether an event may be about to concern a FIX order (the acceptor then wakes
        for every event; otherwise it may look at the rings at leisure)."""
        return bool(self.requests or self.live)

    def skip_to(self, symbol: str, seq: int) -> None:
        """Start ``symbol``'s event stream at ``seq`` (a store that never took any)."""
        self.positions[symbol] = seq
        self.store.put_int(f"events/{symbol}", seq)

    def _request_of(self, cid: int, account: int) -> Request | None:
        request = self.requests.get(cid) if cid >= CID_TAG else None
        return request if request is not None and request.account == account else None

    def _order_of(self, order_id: int, cid: int, account: int) -> Order | None:
        """The order an event party is about: known by its exchange id, or the first
        event of a new order (its request by client_order_id)."""
        key = self.by_order_id.get(order_id)
        if key is not None:
            return self.live.get(key)
        request = self._request_of(cid, account)
        if request is None or request.kind != NEW:
            return None
        order = self.live.get(request.key)
        if order is not None:
            order.order_id = order_id
            self.by_order_id[order_id] = order.key
        return order

    def _on_event(self, symbol: str, seq: int, e: tuple) -> None:
        # ``e``: one EVENT record as a tuple (``ndarray.tolist``: plain ints, a tenth of the
        # cost of reading fields off a numpy record one by one)
        kind = e[_E_KIND]
        ts = e[_E_TS_NS]
        if kind == EventKind.TRADE:
            price, qty = e[_E_PRICE], e[_E_QTY]
            taker = self._order_of(e[_E_ORDER_ID], e[_E_CLIENT_ORDER_ID], e[_E_ACCOUNT])
            if taker is not None:
                self._fill(taker, seq, ts, price, qty, e[_E_REMAINING], maker=False)
            maker = self._order_of(e[_E_CONTRA_ORDER_ID], e[_E_CONTRA_CLIENT_ORDER_ID], e[_E_CONTRA_ACCOUNT])
            if maker is not None:
                self._fill(maker, seq, ts, price, qty, e[_E_CONTRA_REMAINING], maker=True)
            return
        cid, account, reason = e[_E_CLIENT_ORDER_ID], e[_E_ACCOUNT], e[_E_REASON]
        request = self._request_of(cid, account)
        if kind == EventKind.REJECTED:
            text = _EVENT_TEXT.get(reason, f"reason {reason}")
            reject = _ORD_REJ_FOR_EVENT.get(reason, OrdRejReason.OTHER)
            if request is None:
                # a new order reported New on its K, which closed its request
                order = self.live.get(cid) if cid >= CID_TAG else None
                if order is not None and order.account == account and order.reported_new:
                    self._terminate(order, OrdStatus.REJECTED)
                    self._report_rejected(order, ts, reject, text, exec_id=f"{symbol}-{seq}-J")
                return
            if request.kind == NEW:
                self._reject_new(request, reject, text, f"{symbol}-{seq}-J", ts)
            else:
                too_late = reason == EventReason.UNKNOWN_ORDER
                self._cancel_request_refused(
                    request, CxlRejReason.TOO_LATE_TO_CANCEL if too_late else CxlRejReason.OTHER, text, ts
                )
            return
        if kind == EventKind.REPLACED and request is not None and request.kind == REPLACE:
            order = self.live.get(request.key)
            self._close_request(request)
            if order is None:
                return
            order.pending = 0
            order.orig_cl_ord_id, order.cl_ord_id = order.cl_ord_id, request.cl_ord_id
            order.price = e[_E_PRICE]
            order.leaves = e[_E_REMAINING]
            order.order_qty = order.cum_qty + order.leaves
            self._save_order(order)
            self._report(
                order, request.requester, ExecType.REPLACED, f"{symbol}-{seq}-R", ts, orig=order.orig_cl_ord_id
            )
            return
        if (
            kind == EventKind.CANCELLED
            and reason == EventReason.USER_REQUEST
            and request is not None
            and request.kind == CANCEL
        ):
            order = self.live.get(request.key)
            self._close_request(request)
            if order is None:
                return
            order.pending = 0
            order.orig_cl_ord_id, order.cl_ord_id = order.cl_ord_id, request.cl_ord_id
            self._terminate(order, OrdStatus.CANCELED)
            self._report(
                order, request.requester, ExecType.CANCELED, f"{symbol}-{seq}-C", ts, orig=order.orig_cl_ord_id
            )
            return
        order = self._order_of(e[_E_ORDER_ID], cid, account)
        if order is None:
            return
        self._ensure_new(order, f"{symbol}-{seq}-N", ts)
        if kind == EventKind.CANCELLED:
            # (a cancel or replace of it still in flight is refused by the matcher, unknown order)
            self._terminate(order, OrdStatus.CANCELED)
            self._report(order, order.owner, ExecType.CANCELED, f"{symbol}-{seq}-C", ts, text=_EVENT_TEXT.get(reason))

    def _ensure_new(self, order: Order, exec_id: str, ts: int | None) -> None:
        """The order's K or first event, whichever comes first: its request is
        answered, and it is reported New."""
        if order.reported_new:
            return
        request = self.requests.get(order.key)
        if request is not None:
            self._close_request(request)
        order.reported_new = True
        order.status = OrdStatus.NEW
        self._save_order(order)
        self._report(order, order.owner, ExecType.NEW, exec_id, ts)

    def _fill(self, order: Order, seq: int, ts: int, price: int, qty: int, remaining: int, maker: bool) -> None:
        self._ensure_new(order, f"{order.symbol}-{seq}-N", ts)
        order.cum_qty += qty
        order.cum_value += price * qty
        order.leaves = remaining
        order.order_qty = order.cum_qty + remaining
        if remaining == 0:
            self._terminate(order, OrdStatus.FILLED)
        else:
            order.status = OrdStatus.PARTIALLY_FILLED
            self._save_order(order)
        self._report(
            order,
            order.owner,
            ExecType.TRADE,
            f"{order.symbol}-{seq}-{'M' if maker else 'T'}",
            ts,
            last=(price, qty),
            maker=maker,
        )

    def _terminate(self, order: Order, status: str) -> None:
        order.status = status
        order.leaves = 0
        self._save_order(order)

    # -- rejections --------------------------------------------------------------------------

    def _reject_new(self, request: Request, reason: str, text: str, exec_id: str, ts: int | None = None) -> None:
        self._close_request(request)
        order = self.live.get(request.key)
        if order is None:
            return
        self._terminate(order, OrdStatus.REJECTED)
        self._report_rejected(order, ts, reason, text, exec_id=exec_id)

    def _report_rejected(
        self, order: Order, ts: int | None, reason: str, text: str, exec_id: str | None = None
    ) -> None:
        self._report(
            order, order.owner, ExecType.REJECTED, exec_id or f"X-{order.key & ~CID_TAG}", ts, reject=(reason, text)
        )

    def _cancel_request_refused(self, request: Request, reason: str, text: str, ts: int | None = None) -> None:
        self._close_request(request)
        order = self._order(request.key)
        if order is not None and order.pending == request.cid:
            order.pending = 0
            self._save_order(order)
        response_to = (
            CxlRejResponseTo.ORDER_CANCEL_REQUEST
            if request.kind == CANCEL
            else CxlRejResponseTo.ORDER_CANCEL_REPLACE_REQUEST
        )
        self._cancel_reject(
            request.requester, order, request.cl_ord_id, request.orig_cl_ord_id, response_to, reason, text
        )

    def _cancel_reject(self, comp_id, order, cl_ord_id, orig, response_to, reason, text) -> None:
        body = [
            (Tag.OrderID, order.order_id if order is not None and order.order_id else "NONE"),
            (Tag.ClOrdID, cl_ord_id),
            (Tag.OrigClOrdID, orig),
            (Tag.OrdStatus, order.status if order is not None else OrdStatus.REJECTED),
            (Tag.CxlRejResponseTo, response_to),
            (Tag.CxlRejReason, reason),
            (Tag.Text, text),
        ]
        self.reports += 1
        self.outbox.report(comp_id, FixMsgType.ORDER_CANCEL_REJECT, body)

    # -- execution reports -------------------------------------------------------------------------

    def _report(
        self,
        order: Order,
        comp_id: str,
        exec_type: str,
        exec_id: str,
        ts: int | None,
        *,
        orig: str = "",
        last: tuple[int, int] | None = None,
        maker: bool = False,
        reject: tuple[str, str] | None = None,
        text: str | None = None,
    ) -> None:
        # Written straight as bytes with one %-format: two reports per order are the
        # acceptor's largest cost on the order's path (``codec.encode`` takes them as
        # is). Text is latin-1 both ways, as the decoder reads it (``Message.text``).
        body = b"37=%s\x0111=%s\x01%s17=%s\x01150=%s\x0139=%s\x01%s%s%s151=%d\x0114=%d\x016=%s\x0160=%s\x01%s%s" % (
            b"%d" % order.order_id if order.order_id else b"NONE",
            order.cl_ord_id.encode("latin-1", "replace"),
            b"41=%s\x01" % orig.encode("latin-1", "replace") if orig else b"",
            exec_id.encode("latin-1", "replace"),
            exec_type.encode("latin-1", "replace"),
            order.status.encode("latin-1", "replace"),
            b"103=%s\x01" % reject[0].encode("latin-1", "replace") if reject is not None else b"",
            self._order_fields(order),
            b"32=%d\x0131=%d\x01" % (last[1], last[0]) if last is not None else b"",
            order.leaves if order.live else 0,
            order.cum_qty,
            _average(order.cum_value, order.cum_qty).encode("latin-1", "replace"),
            utc_timestamp(ts if ts else self.clock_ns()),
            b"58=%s\x01" % (reject[1] if reject is not None else text).encode("latin-1", "replace")
            if reject is not None or text
            else b"",
            (b"851=1\x01" if maker else b"851=2\x01") if last is not None else b"",  # 1 added liquidity, 2 removed
        )
        self.reports += 1
        self.outbox.report(comp_id, FixMsgType.EXECUTION_REPORT, body)

    @staticmethod
    def _order_fields(order: Order) -> bytes:
        """Symbol, Side, OrderQty, OrdType, Price, TimeInForce, ExecInst of ``order``."""
        fields = b"55=%s\x0154=%s\x01" % (
            order.symbol.encode("latin-1", "replace"),
            order.side.encode("latin-1", "replace"),
        )
        if order.order_qty:
            fields += b"38=%d\x01" % order.order_qty
        if order.ord_type in (FixOrdType.LIMIT, FixOrdType.MARKET):
            fields += b"40=%s\x01" % order.ord_type.encode("latin-1", "replace")
        if order.ord_type == FixOrdType.LIMIT and order.price:
            fields += b"44=%d\x01" % order.price
        if order.tif:
            fields += b"59=%s\x01" % order.tif.encode("latin-1", "replace")
        if order.exec_inst:
            fields += b"18=%s\x01" % order.exec_inst.encode("latin-1", "replace")
        return fields


def _order_from(doc: tuple | dict) -> Order:
    """An ``Order`` as stored: its fields' values (new fields are only ever added at the
    end, with a default), or, from an older store, a dict of them."""
    return Order(*doc) if isinstance(doc, tuple) else Order(**doc)


def _new_request(order: Order) -> Request:
    """The request that entered ``order`` (its NewOrderSingle)."""
    return Request(
        cid=order.key,
        kind=NEW,
        key=order.key,
        account=order.account,
        requester=order.owner,
        cl_ord_id=order.cl_ord_id,
    )


def _whole(raw: bytes | None) -> int | None:
    """A FIX number that must be whole ("105", "105.0"), or None."""
    if raw is None:
        return None
    match = _NUMBER.match(raw)
    return int(match.group(1)) if match else None


def _price_problem(spec: SymbolSpec, price: int | None, raw: bytes) -> str | None:
    if price is None:
        return f"Price {raw.decode('latin-1')} is not a whole number of price units"
    if not spec.price_min <= price <= spec.price_max:
        return f"Price {price} is outside {spec.name}'s band {spec.price_min}..{spec.price_max}"
    if (price - spec.price_min) % spec.tick:
        return f"Price {price} is not on {spec.name}'s tick of {spec.tick}"
    return None


def _average(value: int, qty: int) -> str:
    if not qty:
        return "0"
    whole, rest = divmod(value, qty)
    if not rest:
        return str(whole)
    return f"{value / qty:.6f}".rstrip("0")
