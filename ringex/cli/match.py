"""``ringex match ORDERS.csv``: match a file of orders offline, print every event as JSON.

The file format and the matching are ``ringex.engine.offline``'s (``docs/matching.md``).
Error handling: a malformed file stops the run with a message naming its line and no
output at all; ``-o FILE`` is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from ringex.config import STP_MODES, ConfigError
from ringex.engine.offline import COLUMNS, BookOptions, OrderFileError, match_orders, parse_orders

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("orders", metavar="ORDERS.csv", help="the order file (columns: " + ",".join(COLUMNS) + ")")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the events here (atomically) instead of stdout")
    parser.add_argument(
        "--price-min", type=int, help="lowest price of every book's band (default: the file's lowest price per symbol)"
    )
    parser.add_argument(
        "--price-max",
        type=int,
        help="highest price of every book's band (default: the file's highest price per symbol)",
    )
    parser.add_argument("--tick", type=int, default=1, help="price tick (default 1)")
    parser.add_argument(
        "--capacity", type=int, help="resting orders per book (default: the symbol's number of new orders)"
    )
    parser.add_argument("--max-qty", type=int, default=BookOptions.max_qty, help="largest order quantity")
    parser.add_argument(
        "--stp",
        default="off",
        choices=STP_MODES,
        help="self-trade prevention",
    )


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ringex-match-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    options = BookOptions(
        tick=args.tick,
        price_min=args.price_min,
        price_max=args.price_max,
        capacity=args.capacity,
        max_qty=args.max_qty,
        stp=args.stp,
    )
    try:
        rows = parse_orders(args.orders)
        events = match_orders(rows, options)
    except (OrderFileError, ConfigError) as exc:
        print(f"ringex match: {exc}", file=sys.stderr)
        return 2
    text = "".join(json.dumps(e) + "\n" for e in events)
    if args.output:
        _write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
