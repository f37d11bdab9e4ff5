"""``ringex order``: send one new order, cancel or replace to a running exchange.

::

    ringex order buy ACME 10 105            # limit GTC
    ringex order sell ACME 5 --market       # market IOC (--fok for market FOK)
    ringex order buy ACME 10 105 --ioc|--fok|--post-only
    ringex order cancel 1732000000000001 --symbol ACME
    ringex order replace 1732000000000001 110 8 --symbol ACME

The account and token come from ``--account``/``--token`` or the environment
(``RINGEX_ACCOUNT``, ``RINGEX_TOKEN``); host and port from the flags, else the
config (``--config``, ``RINGEX_HOST``, ``RINGEX_ORDER_PORT``). Prints the exchange's
answer in words; exit status 0 for an ack, 1 for a reject, 2 for a usage, login or
connection problem.
"""

from __future__ import annotations

import argparse
import os
import sys

from ringex.order_entry.client import LoginRejected, OrderClient, SessionClosed

__all__ = ["add_arguments", "run"]


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="exchange host (default: the config's host)")
    p.add_argument("--port", type=int, default=None, help="order entry port (default: the config's order_port)")
    p.add_argument("--account", type=_int, default=None, help="account id (default: $RINGEX_ACCOUNT)")
    p.add_argument("--token", type=_int, default=None, help="account token (default: $RINGEX_TOKEN)")
    p.add_argument("--config", default=None, metavar="FILE", help="TOML config, for host and port")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")


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


def _credentials(args: argparse.Namespace) -> tuple[int, int]:
    account, token = args.account, args.token
    if account is None and os.environ.get("RINGEX_ACCOUNT"):
        account = _int(os.environ["RINGEX_ACCOUNT"])
    if token is None and os.environ.get("RINGEX_TOKEN"):
        token = _int(os.environ["RINGEX_TOKEN"])
    if account is None or token is None:
        raise ValueError("an account and token are needed: --account/--token or RINGEX_ACCOUNT/RINGEX_TOKEN")
    return account, token


def run(args: argparse.Namespace) -> int:
    from ringex.config import ConfigError, load_config

    try:
        account, token = _credentials(args)
        host, port = args.host, args.port
        if host is None or port is None:
            config = load_config(args.config)
            host = config.host if host is None else host
            port = config.order_port if port is None else port
    except (ValueError, ConfigError, argparse.ArgumentTypeError) as exc:
        print(f"ringex order: {exc}", file=sys.stderr)
        return 2
    try:
        with OrderClient.connect(host, port, timeout=args.timeout) as client:
            client.login(account, token)
            if args.action in ("buy", "sell"):
                if args.price is None and not args.market:
                    print("ringex order: a limit order needs a PRICE (or --market)", file=sys.stderr)
                    return 2
                reply = client.new_order(
                    args.symbol, args.action, args.qty, args.price, tif=args.tif or "G", market=args.market
                )
            elif args.action == "cancel":
                reply = client.cancel(args.symbol, args.order_id)
            else:
                reply = client.replace(args.symbol, args.order_id, args.price, args.qty)
    except LoginRejected as exc:
        print(f"ringex order: login refused for account {account}: {exc.reply.reason_name}", file=sys.stderr)
        return 2
    except (OSError, SessionClosed) as exc:
        print(f"ringex order: cannot reach the exchange at {host}:{port}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a symbol that cannot be encoded
        print(f"ringex order: {exc}", file=sys.stderr)
        return 2
    print(reply)
    return 0 if reply.ok else 1
