"""``ringex watch``: a live terminal view of the market data notifier.

    ringex watch ACME                  trades and the top of ACME's book
    ringex watch --orders              your account's own order events (every symbol)
    ringex watch --orders ACME         ... for one symbol

The account for ``--orders`` comes from ``--account``/``--token`` or the environment
variables ``RINGEX_ACCOUNT``/``RINGEX_TOKEN``. The book is kept by the recipe in
docs/market-data.md: a depth snapshot, then updates; a seq gap resubscribes.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ringex.cli.common import ExchangeNotFound, add_account_arguments, credentials, find_exchange
from ringex.market_data.client import ConnectionClosed, FeedGap, LocalBook, MdClient

__all__ = ["add_arguments", "run"]

TRADES_SHOWN = 15
EVENTS_SHOWN = 20
REFRESH_S = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("symbol", nargs="?", help="the symbol to watch (with --orders: only this symbol)")
    parser.add_argument("--orders", action="store_true", help="show your account's own order events")
    add_account_arguments(parser)
    parser.add_argument("--config", metavar="FILE", help="the exchange's TOML config (for its data_dir and ports)")
    parser.add_argument("--data", metavar="DIR", help="the exchange's data directory (default: the one running)")
    parser.add_argument("--host", default=None, help="exchange host (default: where the exchange listens)")
    parser.add_argument(
        "--md-port",
        "--port",
        dest="md_port",
        type=int,
        default=None,
        help="the notifier's TCP port (default: the exchange's)",
    )
    parser.add_argument("--levels", type=int, default=5, help="book levels per side (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


class _View:
    """What the screen shows, updated message by message."""

    def __init__(self, symbol: str | None, levels: int) -> None:
        self.symbol = symbol
        self.levels = levels
        self.book = LocalBook()
        self.trades: collections.deque[dict] = collections.deque(maxlen=TRADES_SHOWN)
        self.events: collections.deque[dict] = collections.deque(maxlen=EVENTS_SHOWN)
        self.trade_seq: int | None = None
        self.open_orders: list[dict] | None = None  # the orders snapshot, when subscribed
        self.status = "connecting"

    def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = msg.get("channel")
        if kind == "subscribed":
            self.status = "live"
            if channel == "trades":
                self.trade_seq = msg["seq"]
        elif kind == "orders_snapshot":
            self.open_orders = msg["orders"]
        elif kind == "trade":
            if self.trade_seq is not None and msg["seq"] != self.trade_seq + 1:
                self.status = f"trades: gap before seq {msg['seq']}"
            self.trade_seq = msg["seq"]
            self.trades.appendleft(msg)
        elif channel == "orders" and kind not in ("subscribed", "unsubscribed"):
            self.events.appendleft(msg)
        elif kind == "error":
            self.status = f"error: {msg.get('reason')}"
        elif kind in ("depth_snapshot", "depth_update"):
            self.book.on_message(msg)
            self.status = "live"

    def render(self):
        parts = [Text(f"ringex watch {self.symbol or ''}  [{self.status}]", style="bold")]
        if self.symbol and self.open_orders is None:
            book = Table(title=f"{self.symbol} top {self.levels}", expand=False)
            for col in ("bid qty", "bid", "ask", "ask qty"):
                book.add_column(col, justify="right")
            top = self.book.top(self.levels)
            for i in range(self.levels):
                bid = top["bids"][i] if i < len(top["bids"]) else ("", "")
                ask = top["asks"][i] if i < len(top["asks"]) else ("", "")
                book.add_row(str(bid[1]), str(bid[0]), str(ask[0]), str(ask[1]))
            tape = Table(title="trades", expand=False)
            for col in ("seq", "time", "price", "qty", "taker"):
                tape.add_column(col, justify="right")
            for t in self.trades:
                when = time.strftime("%H:%M:%S", time.localtime(t["ts_ns"] / 1e9))
                style = "green" if t["taker_side"] == "buy" else "red"
                tape.add_row(str(t["seq"]), when, str(t["price"]), str(t["qty"]), Text(t["taker_side"], style=style))
            parts += [book, tape]
        if self.open_orders is not None:
            table = Table(title=f"open orders when subscribed ({len(self.open_orders)})", expand=False)
            for col in ("symbol", "order", "client id", "side", "price", "remaining"):
                table.add_column(col, justify="right")
            for o in self.open_orders[:EVENTS_SHOWN]:
                table.add_row(
                    o["symbol"],
                    str(o["order_id"]),
                    str(o["client_order_id"]),
                    o["side"],
                    str(o["price"]),
                    str(o["remaining"]),
                )
            parts.append(table)
        if self.events:
            table = Table(title="my orders", expand=False)
            for col in ("seq", "symbol", "event", "order", "client id", "side", "price", "qty", "remaining", "reason"):
                table.add_column(col, justify="right")
            for e in self.events:
                table.add_row(
                    str(e["seq"]),
                    e["symbol"],
                    e["type"],
                    str(e.get("order_id", "")),
                    str(e.get("client_order_id", "")),
                    e.get("side", ""),
                    str(e.get("price", "")),
                    str(e.get("qty", "")),
                    str(e.get("remaining", "")),
                    e.get("reason", ""),
                )
            parts.append(table)
        return Group(*parts)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if not args.orders and not args.symbol:
        console.print("ringex watch: give a SYMBOL, or --orders")
        return 2
    try:
        exchange = find_exchange(args)
    except ExchangeNotFound as exc:
        console.print(f"ringex watch: {exc}")
        return 2
    try:
        md = MdClient(exchange.host, exchange.md_port, timeout=5.0)
    except OSError as exc:
        console.print(f"ringex watch: cannot reach the notifier at {exchange.host}:{exchange.md_port}: {exc}")
        return 1
    view = _View(args.symbol, args.levels)
    with md:
        if args.orders:
            try:
                account, token = credentials(args)
            except ValueError as exc:
                console.print(f"ringex watch --orders: {exc}")
                return 2
            md.login(account, token)
            md.subscribe("orders", args.symbol)
        else:
            md.subscribe("trades", args.symbol)
            md.subscribe("depth", args.symbol, levels=args.levels)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        with Live(view.render(), console=console, refresh_per_second=1 / REFRESH_S, transient=False) as live:
            while deadline is None or time.monotonic() < deadline:
                try:
                    msg = md.recv(REFRESH_S)
                except TimeoutError:
                    live.update(view.render())
                    continue
                except ConnectionClosed:
                    view.status = "disconnected"
                    live.update(view.render())
                    return 1
                if msg.get("type") == "error" and msg.get("reason") == "bad credentials":
                    view.status = "bad credentials"
                    live.update(view.render())
                    return 1
                try:
                    view.on_message(msg)
                except FeedGap as gap:
                    view.status = f"resync: {gap}"
                    md.unsubscribe("depth", args.symbol, levels=args.levels)
                    md.subscribe("depth", args.symbol, levels=args.levels)
                    view.book = LocalBook()
                live.update(view.render())
    return 0
