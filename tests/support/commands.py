"""Seeded random command streams for tests that drive a real book and check what comes out.

A ``CommandStream`` makes batches of ``COMMAND`` records for the symbols it is given:
new orders of every kind the matcher knows (limit GTC, IOC, FOK and post-only, and
market IOC), cancels and replaces. It exists so that the tests comparing a book with
something derived from it (depth views, recovery from snapshot + journal, replay
verification) all feed it the same kind of traffic, and that traffic reaches every path:

- **Trades, and a book with depth.** A limit price lies on the order's own side of the
  middle of the symbol's band (buys below, sells above), up to ``Mix.depth`` ticks
  away, or up to ``Mix.cross`` ticks through it. Orders priced through the middle
  cross the other side's best, often sweeping levels, and market orders take whatever
  is there; the rest build a book of more levels a side than a ten-level view shows.
- **Cancels and replaces of real ids.** They name an order this stream placed, drawn
  from the most recent ``LIVE_WINDOW`` limit orders, which are mostly still resting,
  and come from its owner, so most take effect. Some targets have filled or expired
  meanwhile (unknown order), and a ``Mix.foreign`` share come from another account
  (not the owner): both reject paths are exercised too.
- **Every new-order kind.** GTC is weighted up so the book fills; the other time in
  force values and market orders are common enough to appear in a batch of tens.
- **Several owners.** Accounts are drawn from a few, so fills have distinct maker and
  taker owners (and self-trades happen where a symbol enables STP).

Order ids come from one counter over all the stream's symbols, as the gateway assigns
them; ``next_order_id`` is the one the next new order gets (so the last one placed is
``next_order_id - 1``). The stream is reproducible from the ``random.Random`` it is
given: timestamps come from a counter unless a ``clock`` is passed, for a live producer.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable

import numpy as np

from ringex.codes import Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.records import COMMAND, encode_symbol, make_records

__all__ = ["LIVE_WINDOW", "Mix", "CommandStream"]

# How many recent GTC and post-only orders cancels and replaces choose from: the recent
# ones are the most likely still to be resting.
LIVE_WINDOW = 200


@dataclasses.dataclass(frozen=True)
class Mix:
    """What a stream is made of. The defaults are the mix every test here wants; a test
    changes one only to say something about it."""

    cancel: float = 0.15  # share of commands that cancel (when the stream has placed one)
    replace: float = 0.07  # share that replace
    market: float = 0.1  # share of new orders that are market IOC
    # GTC three times in six, so the book fills and keeps several levels a side.
    tifs: tuple[int, ...] = (Tif.GTC, Tif.GTC, Tif.GTC, Tif.IOC, Tif.FOK, Tif.POST_ONLY)
    depth: int = 12  # a limit price is up to this many ticks from the middle on its side
    cross: int = 4  # ... or up to this many through it (about one order in four)
    max_qty: int = 100  # new orders 1..max_qty; replaces to at most half, so they shrink and grow
    accounts: int = 5  # owners 1..accounts
    # share of cancels and replaces sent by an account that does not own the order
    foreign: float = 0.1


class CommandStream:
    """Batches of random commands for ``specs``; see the module docstring for their shape."""

    def __init__(
        self,
        specs: SymbolSpec | Iterable[SymbolSpec],
        rng: random.Random,
        *,
        first_order_id: int = 1,
        mix: Mix = Mix(),  # noqa: B008 - frozen, so sharing the default is safe
        clock: Callable[[], int] | None = None,
    ) -> None:
        specs = [specs] if isinstance(specs, SymbolSpec) else list(specs)
        self.rng = rng
        self.mix = mix
        self.next_order_id = first_order_id
        self._specs = {spec.name: spec for spec in specs}
        # per symbol, (order id, owner, side) of recent limit orders
        self._live: dict[str, list[tuple[int, int, int]]] = {spec.name: [] for spec in specs}
        self._clock = clock if clock is not None else itertools.count(1_000).__next__

    def batch(self, symbol: str, n: int) -> np.ndarray:
        """``n`` commands for ``symbol``, continuing the stream."""
        spec, live, rng, mix = self._specs[symbol], self._live[symbol], self.rng, self.mix
        out = make_records(COMMAND, n)
        for rec in out:
            rec["symbol"] = encode_symbol(symbol)
            rec["client_order_id"] = rng.randint(1, 1 << 40)
            rec["ts_ns"] = self._clock()
            roll = rng.random()
            if roll < mix.cancel + mix.replace and live:
                target = rng.randrange(len(live))
                rec["order_id"], owner, side = live[target]
                rec["account"] = owner
                if rng.random() < mix.foreign:
                    rec["account"] = owner % mix.accounts + 1  # anyone else
                if roll < mix.cancel:
                    rec["msg_type"] = Op.CANCEL
                    if rec["account"] == owner:
                        del live[target]
                else:
                    rec["msg_type"] = Op.REPLACE
                    rec["price"] = self._limit_price(spec, side)
                    rec["qty"] = rng.randint(1, mix.max_qty // 2)
            else:
                rec["msg_type"] = Op.NEW
                rec["order_id"] = self.next_order_id
                self.next_order_id += 1
                rec["account"] = rng.randint(1, mix.accounts)
                rec["side"] = side = rng.choice((Side.BUY, Side.SELL))
                rec["qty"] = rng.randint(1, mix.max_qty)
                if rng.random() < mix.market:
                    rec["order_type"], rec["tif"] = OrderType.MARKET, Tif.IOC
                else:
                    rec["order_type"] = OrderType.LIMIT
                    rec["tif"] = rng.choice(mix.tifs)
                    rec["price"] = self._limit_price(spec, side)
                    if rec["tif"] in (Tif.GTC, Tif.POST_ONLY):  # the kinds that can rest
                        live.append((int(rec["order_id"]), int(rec["account"]), side))
                        del live[:-LIVE_WINDOW]
        return out

    def _limit_price(self, spec: SymbolSpec, side: int) -> int:
        mid = spec.price_min + (spec.price_max - spec.price_min) // 2 // spec.tick * spec.tick
        away = self.rng.randint(-self.mix.cross, self.mix.depth) * spec.tick
        return mid - away if side == Side.BUY else mid + away
