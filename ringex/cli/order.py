"""``ringex order``: send one new order, cancel or replace to a running exchange, or ask
about one of your orders.

::

    ringex order buy ACME 10 105            # limit GTC
    ringex order sell ACME 5 --market       # market IOC (--fok for market FOK)
    ringex order buy ACME 10 105 --ioc|--fok|--post-only
    ringex order buy ACME 10 105 --wait     # ... and print what the matcher did with it
    ringex order cancel 1732000000000001 --symbol ACME
    ringex order replace 1732000000000001 110 8 --symbol ACME
    ringex order status 1732000000000001    # open (and how much), or not
    ringex order cancel-all [--symbol ACME] [--side buy|sell] [--wait]   # every order of yours

The account and token come from ``--account``/``--token`` or the environment
(``RINGEX_ACCOUNT``, ``RINGEX_TOKEN``); the exchange is found as every client command
finds it (``ringex.cli.common``: ``--data``/``--config``, ``RINGEX_*``, the run file).

The first line printed is the exchange's answer (``K``: durable in the journal, or
``X`` with its reason). With ``--wait`` the command first subscribes to the account's
private ``orders`` channel and then prints the matcher's outcome: ``filled N @ P``
for each fill, then ``rested: N open at P``, ``filled``, ``cancelled: REASON`` or
``rejected: REASON`` (a risk limit, post-only that would trade, an unknown order...).
Exit status 0 for an ack (and with ``--wait`` an outcome that is not a reject), 1 for
a reject, 2 for a usage, login or connection problem.
"""

from __future__ import annotations

import argparse
import sys
import time

from ringex.cli.common import (
    ExchangeNotFound,
    FeedRefused,
    add_account_arguments,
    add_exchange_arguments,
    credentials,
    find_exchange,
    orders_feed,
)
from ringex.order_entry.client import LoginRejected, OrderClient, SessionClosed

__all__ = ["add_arguments", "run"]


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _connection_args(p: argparse.ArgumentParser, wait: bool = True) -> None:
    add_exchange_arguments(p, order_port=True, md_port=True)
    add_account_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    if wait:
        p.add_argument("--wait", action="store_true", help="also print the matcher's outcome")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for side in ("buy", "sell"):
        p = sub.add_parser(side, help=f"{side} SYMBOL QTY [PRICE]")
        p.add_argument("symbol")
        p.add_argument("qty", type=_int)
        p.add_argument("price", type=_int, nargs="?", default=None, help="limit price in ticks (omit with --market)")
        kind = p.add_mutually_exclusive_group()
        kind.add_argument("--ioc", dest="tif", action="store_const", const="I", help="immediate or cancel")
        kind.add_argument("--fok", dest="tif", action="store_const", const="F", help="fill or kill")
        kind.add_argument("--post-only", dest="tif", action="store_const", const="P", help="rest only, never take")
        p.add_argument("--market", action="store_true", help="market order (IOC unless --fok)")
        _connection_args(p)
    p = sub.add_parser("cancel", help="cancel ORDER_ID --symbol S")
    p.add_argument("order_id", type=_int)
    p.add_argument("--symbol", required=True, help="the order's symbol (routes the cancel to its book)")
    _connection_args(p)
    p = sub.add_parser("replace", help="replace ORDER_ID PRICE QTY --symbol S")
    p.add_argument("order_id", type=_int)
    p.add_argument("price", type=_int)
    p.add_argument("qty", type=_int, help="the new open quantity")
    p.add_argument("--symbol", required=True, help="the order's symbol (routes the replace to its book)")
    _connection_args(p)
    p = sub.add_parser("cancel-all", help="cancel every order of your account (--symbol, --side to narrow)")
    p.add_argument("--symbol", default=None, help="only this symbol's orders (default: every symbol)")
    p.add_argument("--side", choices=("buy", "sell"), default=None, help="only this side's orders")
    _connection_args(p)
    p = sub.add_parser("status", help="status ORDER_ID: whether one of your orders is open, and how much")
    p.add_argument("order_id", type=_int)
    p.add_argument("--symbol", default=None, help="look only in this symbol")
    _connection_args(p, wait=False)


def _outcome(md, action: str, order_id: int, deadline: float) -> int:
    """Print what the matcher did with the request about ``order_id``, from the private
    channel ``md`` (subscribed before the request was sent); the exit status."""
    while True:
        left = deadline - time.monotonic()
        try:
            msg = md.recv(max(0.0, left))
        except TimeoutError:
            print(f"no outcome within the timeout (ringex watch --orders shows order {order_id})")
            return 1
        if msg.get("channel") != "orders" or msg.get("order_id") != order_id:
            continue
        kind = msg["type"]
        if kind == "fill":
            print(f"filled {msg['qty']} @ {msg['price']} ({msg['liquidity']}), {msg['remaining']} open")
            if msg["remaining"] == 0 and action in ("buy", "sell", "replace"):
                print("filled")
                return 0
        elif kind == "accepted":
            print(f"rested: {msg['remaining']} open at {msg['price']}")
            return 0
        elif kind == "cancelled":
            print(f"cancelled: {msg['reason']} ({msg['qty']} not filled)")
            return 0
        elif kind == "rejected":
            print(f"rejected: {msg['reason']}")
            return 1
        elif kind == "replaced":
            print(f"replaced: {msg['remaining']} open at {msg['price']}")
            # a replace that crosses trades at once: its fills follow in the same batch
            for fill in md.drain(quiet=0.3):
                if fill.get("type") == "fill" and fill.get("order_id") == order_id:
                    print(f"filled {fill['qty']} @ {fill['price']} ({fill['liquidity']}), {fill['remaining']} open")
            return 0


def _mass_outcome(md, client_order_id: int, symbols: int | None, deadline: float) -> int:
    """Print what a mass cancel cancelled, from its ``mass_cancelled`` message in each
    book: ``symbols`` of them (None: as many as come before a short quiet spell)."""
    total = seen = 0
    while symbols is None or seen < symbols:
        left = deadline - time.monotonic()
        quiet = 0.5 if symbols is None and seen else left
        try:
            msg = md.recv(max(0.0, min(left, quiet)))
        except TimeoutError:
            if symbols is None and seen:
                break
            print("no outcome within the timeout (ringex watch --orders shows it)")
            return 1
        if msg.get("type") != "mass_cancelled" or msg.get("client_order_id") != client_order_id:
            continue
        seen += 1
        total += msg["cancelled"]
        print(f"{msg['symbol']}: cancelled {msg['cancelled']} order{'s' if msg['cancelled'] != 1 else ''}")
    if seen > 1:
        print(f"cancelled {total} order{'s' if total != 1 else ''} in {seen} symbols")
    return 0


def _status(exchange, account: int, token: int, args: argparse.Namespace) -> int:
    md, snapshot = orders_feed(exchange, account, token, args.symbol, timeout=args.timeout)
    md.close()
    for order in snapshot["orders"]:
        if order["order_id"] == args.order_id:
            print(
                f"order {args.order_id}: open, {order['side']} {order['symbol']} {order['remaining']} at"
                f" {order['price']} (client order id {order['client_order_id']})"
            )
            return 0
    print(f"order {args.order_id}: not open (filled, cancelled, or not one of account {account}'s)")
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        account, token = credentials(args)
        exchange = find_exchange(args)
    except (ValueError, ExchangeNotFound) as exc:
        print(f"ringex order: {exc}", file=sys.stderr)
        return 2
    host, port = exchange.host, exchange.order_port
    if args.action in ("buy", "sell") and args.price is None and not args.market:
        print("ringex order: a limit order needs a PRICE (or --market)", file=sys.stderr)
        return 2
    md = None
    try:
        if args.action == "status":
            return _status(exchange, account, token, args)
        if args.wait:
            md, _ = orders_feed(exchange, account, token, args.symbol, timeout=args.timeout)
        with OrderClient.connect(host, port, timeout=args.timeout) as client:
            client.login(account, token)
            if args.action in ("buy", "sell"):
                reply = client.new_order(
                    args.symbol, args.action, args.qty, args.price, tif=args.tif or "G", market=args.market
                )
            elif args.action == "cancel":
                reply = client.cancel(args.symbol, args.order_id)
            elif args.action == "cancel-all":
                reply = client.mass_cancel(args.symbol, args.side or 0)
            else:
                reply = client.replace(args.symbol, args.order_id, args.price, args.qty)
        text = str(reply)
        if args.action in ("cancel", "replace", "cancel-all"):
            # the reply does not say what it answers: name the request (ACK cancel ..., REJECT replace ...)
            kind, _, rest = text.partition(" ")
            text = f"{kind} {args.action} {rest}"
        print(text, flush=True)
        if not reply.ok:
            return 1
        if md is not None and args.action == "cancel-all":
            books = 1 if args.symbol else (len(exchange.symbols) if exchange.running else None)
            return _mass_outcome(md, reply.client_order_id, books, time.monotonic() + args.timeout)
        if md is not None:
            return _outcome(md, args.action, reply.order_id, time.monotonic() + args.timeout)
        return 0
    except LoginRejected as exc:
        print(f"ringex order: login refused for account {account}: {exc.reply.reason_name}", file=sys.stderr)
        return 2
    except FeedRefused as exc:
        print(f"ringex order: {exc}", file=sys.stderr)
        return 2
    except (OSError, SessionClosed) as exc:
        where = f"{host} (order entry port {port}, market data port {exchange.md_port})"
        print(f"ringex order: cannot reach the exchange at {where}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a symbol that cannot be encoded
        print(f"ringex order: {exc}", file=sys.stderr)
        return 2
    finally:
        if md is not None:
            md.close()
