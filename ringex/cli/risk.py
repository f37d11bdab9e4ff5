"""``ringex risk``: an operator sets pre-trade risk limits and kill switches at run time.

::

    ringex risk set max_order_qty 1000 [--for ACCOUNT] [--symbol ACME]
    ringex risk set collar_bps 500 --symbol ACME       # a symbol's own: collar_bps, reference_price
    ringex risk kill ACCOUNT [--symbol ACME]            # cancel its orders, refuse new ones
    ringex risk release ACCOUNT [--symbol ACME]
    ringex risk clear [--symbol ACME]                   # every limit of the book, not kill switches

Each is one ``Y`` request (docs/protocol.md, "Beyond version 1") from a session of an
operator account (``ringex accounts add ID --operator``), whose account and token come
from ``--account``/``--token`` or ``RINGEX_ACCOUNT``/``RINGEX_TOKEN``. Without
``--for`` a limit is the symbol's own, for every account; without ``--symbol`` it is
set in every symbol. A value of 0 removes a limit. The ``K`` means the change is in
the journal, before any order behind it is matched. A change lasts until the next
fresh ``ringex up``, which journals the config's limits again.
"""

from __future__ import annotations

import argparse
import sys

from ringex.cli.common import (
    ExchangeNotFound,
    add_account_arguments,
    add_exchange_arguments,
    credentials,
    find_exchange,
    parse_int,
)
from ringex.codes import Reason, RiskLimit

__all__ = ["add_arguments", "run"]

# the names ``set`` takes: the config's (``[risk.NAME]``, ``[accounts.ID]``)
SETTABLE = {
    "max_order_qty": RiskLimit.MAX_ORDER_QTY,
    "max_notional": RiskLimit.MAX_NOTIONAL,
    "max_open_orders": RiskLimit.MAX_OPEN_ORDERS,
    "collar_bps": RiskLimit.COLLAR_BPS,
    "reference_price": RiskLimit.REFERENCE_PRICE,
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbol", default=None, help="only this symbol (default: every symbol)")
    add_exchange_arguments(p, order_port=True)
    add_account_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("set", help="set LIMIT VALUE (0 removes it) for an account (--for) or the symbol")
    p.add_argument("limit", choices=sorted(SETTABLE))
    p.add_argument("value", type=parse_int)
    p.add_argument("--for", dest="target", type=parse_int, default=0, metavar="ACCOUNT", help="the account's own limit")
    _common(p)
    for action, what in (("kill", "cancel an account's orders and refuse new ones"), ("release", "let it trade again")):
        p = sub.add_parser(action, help=what)
        p.add_argument("target", type=parse_int, metavar="ACCOUNT")
        _common(p)
    p = sub.add_parser("clear", help="remove every limit of the book (kill switches stay)")
    _common(p)


def run(args: argparse.Namespace) -> int:
    from ringex.order_entry.client import LoginRejected, OrderClient, SessionClosed

    if args.action == "set":
        limit, value, target = SETTABLE[args.limit], args.value, args.target
        what = f"{args.limit} = {value}"
    elif args.action in ("kill", "release"):
        limit, value, target = RiskLimit.KILL_SWITCH, int(args.action == "kill"), args.target
        what = "kill switch engaged" if value else "kill switch released"
    else:
        limit, value, target = RiskLimit.CLEAR, 0, 0
        what = "every limit cleared"
    try:
        account, token = credentials(args)
        exchange = find_exchange(args)
    except (ValueError, ExchangeNotFound) as exc:
        print(f"ringex risk: {exc}", file=sys.stderr)
        return 2
    try:
        with OrderClient.connect(exchange.host, exchange.order_port, timeout=args.timeout) as client:
            client.login(account, token)
            reply = client.set_limit(limit, value, account=target, symbol=args.symbol)
    except LoginRejected as exc:
        print(f"ringex risk: login refused for account {account}: {exc.reply.reason_name}", file=sys.stderr)
        return 2
    except (OSError, SessionClosed, ValueError) as exc:
        print(
            f"ringex risk: cannot reach the exchange at {exchange.host}:{exchange.order_port}: {exc}", file=sys.stderr
        )
        return 2
    whom = f"account {target}" if target else "every account"
    where = args.symbol or "every symbol"
    if not reply.ok:
        hint = (
            " (an operator account is needed: ringex accounts add ID --operator)"
            if reply.reason == Reason.NOT_PERMITTED
            else ""
        )
        print(f"REJECT {what} for {whom} in {where}: {reply.reason_name}{hint}")
        return 1
    print(f"ACK {what} for {whom} in {where}, journal seq {reply.seq}")
    return 0
