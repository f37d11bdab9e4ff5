"""Offline matching (``ringex match ORDERS.csv``): a file of orders through the books.

The CSV has a header row and the columns ``op,order_id,account,symbol,side,type,tif,price,qty``
(any order; cells that do not apply are left empty). Each symbol gets its own book, run
through the same jitted kernels as the exchange; events come out in file order, one
JSON object per line (``ringex.events.event_to_dict`` plus the CSV ``line`` that caused
it). Details and an example: ``docs/matching.md``.

Error handling: the whole file is parsed and checked before anything is matched or
written, so a malformed row (or a byte that is not UTF-8, an unterminated quote, a
field over ``csv``'s size limit) stops the run with a message naming its line and no
output at all; ``-o FILE`` is written to a temporary file and renamed into place.
A row that is well-formed but breaks a matching rule (qty 0, a price off the band, a
market GTC, cancelling someone else's order) is not an error here: the book answers it
with a REJECTED event, as the exchange would.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np

from ringex.codes import Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.records import COMMAND, encode_symbol, make_records

__all__ = ["parse_orders", "match_orders", "BookOptions", "OrderFileError", "COLUMNS"]

COLUMNS = ("op", "order_id", "account", "symbol", "side", "type", "tif", "price", "qty")
OPS = {"new": Op.NEW, "cancel": Op.CANCEL, "replace": Op.REPLACE}
SIDES = {"buy": Side.BUY, "sell": Side.SELL}
TYPES = {"limit": OrderType.LIMIT, "market": OrderType.MARKET}
TIFS = {"gtc": Tif.GTC, "ioc": Tif.IOC, "fok": Tif.FOK, "post_only": Tif.POST_ONLY}
DEFAULT_TIF = {OrderType.LIMIT: Tif.GTC, OrderType.MARKET: Tif.IOC}
I64_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1


class OrderFileError(ValueError):
    """The order file is malformed; the message names the file and line."""


@dataclasses.dataclass
class Row:
    line: int
    symbol: str
    op: int
    order_id: int
    account: int
    side: int = 0
    order_type: int = 0
    tif: int = 0
    price: int | None = None
    qty: int = 0


# ---- parsing ----------------------------------------------------------------------------


def _integer(where: str, column: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise OrderFileError(f"{where}: {column} must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        raise OrderFileError(f"{where}: {column} {value} is out of range")
    return value


def _word(where: str, column: str, text: str, table: dict) -> int:
    try:
        return table[text.lower()]
    except KeyError:
        raise OrderFileError(f"{where}: {column} must be one of {', '.join(table)}, got {text!r}") from None


def _parse_row(where: str, line: int, cells: dict[str, str]) -> Row:
    def need(column: str) -> str:
        if not cells[column]:
            raise OrderFileError(f"{where}: {column} is required for op {cells['op']!r}")
        return cells[column]

    op = _word(where, "op", need("op"), OPS)
    symbol = need("symbol")
    try:
        encode_symbol(symbol)
    except (ValueError, UnicodeEncodeError):
        raise OrderFileError(f"{where}: symbol must be 1 to 8 ASCII characters, got {symbol!r}") from None
    row = Row(
        line=line,
        symbol=symbol,
        op=op,
        order_id=_integer(where, "order_id", need("order_id"), 0, U64_MAX),
        account=_integer(where, "account", cells["account"], 0, U64_MAX) if cells["account"] else 0,
    )
    if op == Op.NEW:
        row.side = _word(where, "side", need("side"), SIDES)
        row.order_type = _word(where, "type", need("type"), TYPES)
        row.tif = _word(where, "tif", cells["tif"], TIFS) if cells["tif"] else DEFAULT_TIF[row.order_type]
        if row.order_type == OrderType.LIMIT:
            row.price = _integer(where, "price", need("price"), -I64_MAX, I64_MAX)
        elif cells["price"]:
            raise OrderFileError(f"{where}: a market order has no price, got {cells['price']!r}")
        row.qty = _integer(where, "qty", need("qty"), -I64_MAX, I64_MAX)
    elif op == Op.REPLACE:
        row.price = _integer(where, "price", need("price"), -I64_MAX, I64_MAX)
        row.qty = _integer(where, "qty", need("qty"), -I64_MAX, I64_MAX)
    return row


def parse_orders(path: str) -> list[Row]:
    """Every row of the order file, checked; raises ``OrderFileError`` at the first bad one."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise OrderFileError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte order mark (spreadsheets write one) is not a cell
    except UnicodeDecodeError as exc:
        # decoded whole, so the offset is the file's and names the line
        line = data.count(b"\n", 0, exc.start) + 1
        raise OrderFileError(f"{path} line {line}: not UTF-8 text ({exc.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _parse_rows(path, reader)
    except csv.Error as exc:  # an unterminated quote, a field over csv's size limit...
        raise OrderFileError(f"{path} line {reader.line_num}: {exc}") from None


def _parse_rows(path: str, reader) -> list[Row]:
    header = next(reader, None)
    if header is None:
        raise OrderFileError(f"{path}: empty file (expected a header row: {','.join(COLUMNS)})")
    header = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise OrderFileError(f"{path} line 1: header lacks column(s) {', '.join(missing)}")
    rows = []
    for cells in reader:
        line = reader.line_num
        where = f"{path} line {line}"
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise OrderFileError(f"{where}: {len(cells)} cells, the header has {len(header)}")
        rows.append(_parse_row(where, line, {h: c.strip() for h, c in zip(header, cells, strict=True)}))
    return rows


# ---- matching ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BookOptions:
    """How to size every book of an offline run; None: from the file (the symbol's
    lowest and highest price, its number of new orders)."""

    tick: int = 1
    price_min: int | None = None
    price_max: int | None = None
    capacity: int | None = None
    max_qty: int = SymbolSpec("X").max_qty
    stp: str = "off"


def _spec(symbol: str, rows: list[Row], options: BookOptions) -> SymbolSpec:
    prices = [r.price for r in rows if r.price is not None and r.price > 0]
    tick = options.tick
    if tick <= 0:
        raise OrderFileError("--tick must be positive")
    price_min = options.price_min if options.price_min is not None else min(prices, default=tick)
    price_max = options.price_max if options.price_max is not None else max(prices, default=price_min)
    price_max = max(price_max, price_min)
    price_max = price_min + -(-(price_max - price_min) // tick) * tick  # whole ticks
    capacity = options.capacity if options.capacity is not None else max(1, sum(r.op == Op.NEW for r in rows))
    return SymbolSpec(
        symbol,
        tick=tick,
        price_min=price_min,
        price_max=price_max,
        max_qty=options.max_qty,
        capacity=capacity,
        stp=options.stp,
    )


def _commands(rows: list[Row]) -> np.ndarray:
    return make_records(
        COMMAND,
        len(rows),
        msg_type=[r.op for r in rows],
        side=[r.side for r in rows],
        order_type=[r.order_type for r in rows],
        tif=[r.tif for r in rows],
        symbol=rows[0].symbol,
        client_order_id=[r.line for r in rows],  # the CSV line: says which row an event answers
        order_id=[r.order_id for r in rows],
        price=[r.price or 0 for r in rows],
        qty=[r.qty for r in rows],
        account=[r.account for r in rows],
    )


def match_orders(rows: list[Row], options: BookOptions = BookOptions()) -> list[dict]:
    """Match ``rows`` (one book per symbol); the events as dicts, in file order."""
    from ringex.engine.matcher import Matcher
    from ringex.events import event_to_dict

    by_symbol: dict[str, list[Row]] = {}
    for r in rows:
        by_symbol.setdefault(r.symbol, []).append(r)
    tagged = []
    for symbol, its_rows in by_symbol.items():
        matcher = Matcher(_spec(symbol, its_rows, options))
        events = matcher.apply(_commands(its_rows), 1)  # sequences 1..n per symbol
        for k, record in enumerate(events):
            line = its_rows[int(record["seq"]) - 1].line
            tagged.append((line, k, {**event_to_dict(record), "line": line}))
    tagged.sort(key=lambda t: (t[0], t[1]))
    return [d for _, _, d in tagged]
