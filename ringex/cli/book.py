"""``ringex book SYMBOL``: the current book of one symbol, and its last trade.

It subscribes to the symbol's ``depth`` channel (``--levels`` per side) and to its
``trades`` with the last trade (``last: 1``), prints both snapshots and leaves: no
account is needed, as for any public market data. The exchange is found as every
client command finds it (``ringex.cli.common``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ringex.cli.common import ExchangeNotFound, add_exchange_arguments, find_exchange

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("symbol")
    parser.add_argument("--levels", type=int, default=10, help="price levels per side (default: %(default)s)")
    add_exchange_arguments(parser, md_port=True)
    parser.add_argument("--json", action="store_true", help="print the two snapshots as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the notifier")


def _snapshots(exchange, symbol: str, levels: int, timeout: float) -> tuple[dict, dict]:
    from ringex.market_data.client import MdClient

    with MdClient(exchange.host, exchange.md_port, timeout=timeout) as md:
        md.subscribe("depth", symbol, levels=levels)
        md.subscribe("trades", symbol, last=1)
        depth = trades = None
        while depth is None or trades is None:
            msg = md.recv()
            if msg.get("type") == "error":
                raise ValueError(f"the notifier refused: {msg.get('reason')}")
            if msg.get("type") == "depth_snapshot":
                depth = msg
            elif msg.get("type") == "trades_snapshot":
                trades = msg
    return depth, trades


def run(args: argparse.Namespace) -> int:
    try:
        exchange = find_exchange(args)
        depth, trades = _snapshots(exchange, args.symbol, args.levels, args.timeout)
    except (ValueError, ExchangeNotFound) as exc:
        print(f"ringex book: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ringex book: cannot reach the notifier at {exchange.host}:{exchange.md_port}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"depth": depth, "trades": trades}))
        return 0
    last = trades["trades"][-1] if trades["trades"] else None
    last_text = f"last trade {last['qty']} @ {last['price']}" if last else "no trades yet"
    print(f"{args.symbol}  {last_text}")
    bids, asks = depth["bids"], depth["asks"]
    if not bids and not asks:
        print("(empty book)")
        return 0
    print(f"{'bid qty':>10} {'bid':>10} | {'ask':<10} {'ask qty':<10}")
    for i in range(max(len(bids), len(asks))):
        bid = bids[i] if i < len(bids) else None
        ask = asks[i] if i < len(asks) else None
        left = f"{bid[1]:>10} {bid[0]:>10}" if bid else " " * 21
        right = f"{ask[0]:<10} {ask[1]:<10}" if ask else ""
        print(f"{left} | {right}".rstrip())
    return 0
