"""``ringex orders [SYMBOL]``: your open orders, as the notifier knows them now.

It subscribes to the account's private ``orders`` channel, prints the snapshot every
such subscription starts with (``orders_snapshot``, docs/market-data.md) and leaves.
The account and token come from ``--account``/``--token`` or ``RINGEX_ACCOUNT`` /
``RINGEX_TOKEN``; the exchange is found as every client command finds it
(``ringex.cli.common``). ``--json`` prints the snapshot's orders as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys

from ringex.cli.common import (
    ExchangeNotFound,
    FeedRefused,
    add_account_arguments,
    add_exchange_arguments,
    credentials,
    find_exchange,
    orders_feed,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("symbol", nargs="?", default=None, help="only this symbol's orders")
    add_exchange_arguments(parser, md_port=True)
    add_account_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per order")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the notifier")


def run(args: argparse.Namespace) -> int:
    try:
        account, token = credentials(args)
        exchange = find_exchange(args)
        md, snapshot = orders_feed(exchange, account, token, args.symbol, timeout=args.timeout)
    except (ValueError, ExchangeNotFound, FeedRefused) as exc:
        print(f"ringex orders: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exchange.host}:{exchange.md_port}"
        print(f"ringex orders: cannot reach the notifier at {where}: {exc}", file=sys.stderr)
        return 2
    md.close()
    orders = snapshot["orders"]
    if args.json:
        for order in orders:
            print(json.dumps(order))
        return 0
    if not orders:
        print(f"account {account}: no open orders" + (f" in {args.symbol}" if args.symbol else ""))
        return 0
    print(f"account {account}: {len(orders)} open order{'s' if len(orders) != 1 else ''}")
    print(f"{'symbol':8} {'order id':>20} {'client id':>12} {'side':4} {'price':>10} {'open':>10}")
    for o in orders:
        print(
            f"{o['symbol']:8} {o['order_id']:>20} {o['client_order_id']:>12} {o['side']:4}"
            f" {o['price']:>10} {o['remaining']:>10}"
        )
    return 0
