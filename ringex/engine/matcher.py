"""``Matcher``: one symbol's book, owned from Python, matched by the kernels in ``matcher_jit``.

The class validates what it is given, owns the arena and a scratch event buffer, and
turns the kernels' arrays into Python answers (best prices, depth, resting orders,
snapshots, a state hash). Everything that touches the book per command is jitted.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ringex import matcher_jit as jit
from ringex.codes import Stp
from ringex.config import SymbolSpec
from ringex.records import COMMAND, EVENT, encode_symbol

__all__ = ["Matcher", "BookCorrupt", "RESTING_ORDER", "ACCOUNT_LIMITS", "SequenceGap"]

RESTING_ORDER = np.dtype(
    [
        ("order_id", "<u8"),
        ("client_order_id", "<u8"),
        ("account", "<u8"),
        ("side", "u1"),
        ("order_type", "u1"),
        ("tif", "u1"),
        ("price", "<i8"),
        ("qty", "<i8"),
    ]
)


ACCOUNT_LIMITS = np.dtype(
    [("account", "<u8"), ("max_order_qty", "<i8"), ("max_notional", "<i8"), ("max_open_orders", "<i8"), ("killed", "?")]
)
"""An account's own limits in one book (0: none), as ``Matcher.account_limits`` lists them."""


SNAPSHOT_MAGIC = 0x52494E47534E4150  # "RINGSNAP"
SNAPSHOT_VERSION = 2  # 2: the risk words of the header and the accounts with limits
# Version 1 (before pre-trade risk) had a 32-word header and no accounts: still read,
# so a data directory from before keeps its snapshots.
V1_HEADER_WORDS = 32
ACCOUNT_ROW_WORDS = 5


class BookCorrupt(AssertionError):
    """``Matcher.validate`` found a broken invariant; the message names it."""


class SequenceGap(ValueError):
    """A batch does not start right after the last sequence the book applied."""


def _symbol_word(name: str) -> int:
    return int(np.frombuffer(encode_symbol(name), dtype="<i8")[0])


class Matcher:
    """The book of one symbol.

    Resource handling: the arena (see ``matcher_jit``) is sized from the spec once;
    ``apply`` reuses one scratch event buffer, growing it only when a batch could
    produce more events than it holds, so the events it returns are a view that is
    valid until the next ``apply``.

    Error handling: commands are never rejected by raising -- bad ones become REJECTED
    events. ``apply`` raises ``SequenceGap`` if a batch would skip or repeat sequences,
    since that means the caller lost its place in the journal.
    """

    def __init__(self, spec: SymbolSpec, *, _arena: np.ndarray | None = None) -> None:
        self.spec = spec
        if _arena is None:
            _arena = jit.make_book(
                levels=spec.levels,
                capacity=spec.capacity,
                price_min=spec.price_min,
                tick=spec.tick,
                max_qty=spec.max_qty,
                stp=int(Stp.from_name(spec.stp)),
                symbol_word=_symbol_word(spec.name),
            )
        self._arena = _arena
        self._set_event_buffer(np.zeros(1024, EVENT))

    # ---- matching -------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Sequence of the last command applied; -1 for a book that has applied none."""
        return int(self._arena[jit.H_LAST_SEQ])

    def _command_words(self, commands: np.ndarray, first_seq: int) -> np.ndarray:
        # The per-call Python here is most of a small batch's cost: keep it to cheap checks.
        dtype = commands.dtype
        if dtype is not COMMAND and dtype != COMMAND:
            raise TypeError(f"commands must have the COMMAND dtype, got {dtype}")
        last = self._arena[jit.H_LAST_SEQ]
        if last >= 0 and first_seq != last + 1:
            raise SequenceGap(f"{self.spec.name}: batch starts at seq {first_seq}, book is at {last}")
        flags = commands.flags
        if not flags.c_contiguous or not flags.writeable:
            # The kernels are compiled for writable arrays; numba types a read-only one
            # (a journal chunk of one record is a view of LMDB's bytes) as another type
            # and refuses it.
            commands = np.array(commands, order="C")
        return commands.view(np.int64).reshape(-1, jit.COMMAND_WORDS)

    def _set_event_buffer(self, events: np.ndarray) -> None:
        self._events = events
        self._event_words = events.view(np.int64).reshape(-1, jit.EVENT_WORDS)

    def apply(self, commands: np.ndarray, first_seq: int) -> np.ndarray:
        """Match a batch of ``COMMAND`` records; ``commands[i]`` has sequence ``first_seq + i``.

        Returns the ``EVENT`` records it caused, in order: a view into a buffer that the
        next call overwrites.
        """
        words = self._command_words(commands, first_seq)
        done, written = jit.match_batch(self._arena, words, first_seq, self._event_words)
        while done < len(words):
            # Not enough room for the next command's worst case: grow and carry on.
            need = written + self.order_count() + jit.EVENT_SLACK + 2 * (len(words) - done)
            grown = np.zeros(max(2 * len(self._events), need), EVENT)
            # copied as words: a structured-array copy would skip the padding bytes
            grown.view(np.int64)[: written * jit.EVENT_WORDS] = self._events.view(np.int64)[: written * jit.EVENT_WORDS]
            self._set_event_buffer(grown)
            consumed, n = jit.match_batch(self._arena, words[done:], first_seq + done, self._event_words[written:])
            done += consumed
            written += n
        return self._events[:written]

    # ---- snapshots ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The book as bytes: its header (spec, ``last_seq``, trade counter, the risk
        words), every resting order in priority order and every account with limits of
        its own, so the size follows the orders, not the band.

        Layout (``int64`` words): ``SNAPSHOT_MAGIC``, ``SNAPSHOT_VERSION``, order count,
        account count, the arena's ``HEADER_WORDS`` header words, then 8 words per order
        as ``collect_orders`` writes them and 5 per account as ``collect_accounts`` does.
        Restoring re-rests the orders in that order, so queue positions, best prices and
        every later event are the same; only the pool slots and account records an order
        occupies may differ, and nothing observable depends on them.
        """
        orders = np.zeros((self.order_count(), 8), np.int64)
        count = jit.collect_orders(self._arena, orders)
        accounts = self._limited_accounts()
        prefix = np.array([SNAPSHOT_MAGIC, SNAPSHOT_VERSION, count, len(accounts)], np.int64)
        return (
            prefix.tobytes() + self._arena[: jit.HEADER_WORDS].tobytes() + orders[:count].tobytes() + accounts.tobytes()
        )

    def _limited_accounts(self) -> np.ndarray:
        rows = np.zeros((int(self._arena[jit.H_PINNED]), ACCOUNT_ROW_WORDS), np.int64)
        k = jit.collect_accounts(self._arena, rows)
        rows = rows[:k]
        return rows[np.argsort(rows[:, 0].view(np.uint64), kind="stable")]

    @staticmethod
    def _layout(words: np.ndarray) -> tuple[int, int, int, int]:
        """(version, header words, orders, accounts) of a snapshot's words; ``ValueError``
        if it is none of the versions read here."""
        if len(words) < 3 or words[0] != SNAPSHOT_MAGIC or words[1] not in (1, SNAPSHOT_VERSION):
            raise ValueError("snapshot: not a book snapshot of a version this ringex reads")
        if words[1] == 1:
            return 1, V1_HEADER_WORDS, int(words[2]), 0
        if len(words) < 4:
            raise ValueError("snapshot: truncated")
        return SNAPSHOT_VERSION, jit.HEADER_WORDS, int(words[2]), int(words[3])

    @classmethod
    def snapshot_last_seq(cls, snapshot: bytes) -> int:
        """The sequence of the last command a snapshot covers (-1: none)."""
        words = np.frombuffer(snapshot, dtype=np.int64, count=min(len(snapshot) // 8, 4 + jit.HEADER_WORDS))
        version, _, _, _ = cls._layout(words)
        return int(words[(3 if version == 1 else 4) + jit.H_LAST_SEQ])

    @classmethod
    def restore(cls, spec: SymbolSpec, snapshot: bytes) -> Matcher:
        """A book equal to the one that took ``snapshot``; raises ``ValueError`` if the
        snapshot is damaged or was taken under a different spec."""
        words = np.frombuffer(snapshot, dtype=np.int64) if len(snapshot) % 8 == 0 else np.zeros(0, np.int64)
        version, header_words, count, n_accounts = cls._layout(words)
        start = 3 if version == 1 else 4
        if (
            count < 0
            or n_accounts < 0
            or len(words) != start + header_words + 8 * count + ACCOUNT_ROW_WORDS * n_accounts
        ):
            raise ValueError("snapshot: length does not match its order and account counts")
        head = words[start : start + header_words]
        book = cls(spec)
        expected = book._arena[: jit.HEADER_WORDS]
        for slot in (jit.H_LEVELS, jit.H_CAPACITY, jit.H_PRICE_MIN, jit.H_TICK, jit.H_MAX_QTY, jit.H_STP, jit.H_SYMBOL):
            if head[slot] != expected[slot]:
                raise ValueError(
                    f"snapshot: taken under a different spec for {spec.name} (header word {slot}: {head[slot]} != {expected[slot]})"
                )
        at = start + header_words
        orders = np.ascontiguousarray(words[at : at + 8 * count].reshape(count, 8))
        accounts = np.ascontiguousarray(words[at + 8 * count :].reshape(n_accounts, ACCOUNT_ROW_WORDS))
        if version > 1:  # first: whether open orders are counted decides how orders rest
            for slot in jit.RISK_HEADER:
                book._arena[slot] = head[slot]
        if jit.load_accounts(book._arena, accounts, n_accounts) != 0:
            raise ValueError("snapshot: an account's limits do not fit the book (damaged snapshot)")
        if jit.load_orders(book._arena, orders, count) != 0:
            raise ValueError("snapshot: an order does not fit the book (damaged snapshot)")
        book._arena[jit.H_LAST_SEQ] = head[jit.H_LAST_SEQ]
        book._arena[jit.H_TRADE_COUNTER] = head[jit.H_TRADE_COUNTER]
        try:
            book.validate()
        except BookCorrupt as exc:
            raise ValueError(f"snapshot: {exc}") from None
        return book

    # ---- inspection -----------------------------------------------------------------

    def validate(self) -> None:
        """Check linked lists, level and side totals, best bid/ask (and that the book is
        not crossed), the order-id index and the free list. Raises ``BookCorrupt``."""
        code = jit.check_book(self._arena)
        if code:
            raise BookCorrupt(f"{self.spec.name}: {jit.CHECK_MESSAGES[code]}")

    def state_hash(self) -> str:
        """A hash of the book's logical state (last seq, trade counter, every resting
        order in priority order, the last trade price and every limit), independent of
        where orders and accounts sit in the arena."""
        digest = hashlib.blake2b(digest_size=16)
        head = self._arena[: jit.HEADER_WORDS]
        digest.update(np.array([head[jit.H_LAST_SEQ], head[jit.H_TRADE_COUNTER]], np.int64).tobytes())
        digest.update(self.resting_orders().tobytes())
        digest.update(head[list(jit.RISK_HEADER)].tobytes())
        digest.update(self._limited_accounts().tobytes())
        return digest.hexdigest()

    # ---- risk -----------------------------------------------------------------------

    @property
    def last_price(self) -> int | None:
        """The price of the last trade (None before the first)."""
        price = int(self._arena[jit.H_LAST_PRICE])
        return price or None

    def symbol_limits(self) -> dict[str, int]:
        """The book's own limits (0: none): ``max_order_qty``, ``max_notional``,
        ``max_open_orders`` (per account), ``collar_bps``, ``reference_price``."""
        a = self._arena
        return {
            "max_order_qty": int(a[jit.H_LIMIT_QTY]),
            "max_notional": int(a[jit.H_LIMIT_NOTIONAL]),
            "max_open_orders": int(a[jit.H_LIMIT_OPEN]),
            "collar_bps": int(a[jit.H_COLLAR_BPS]),
            "reference_price": int(a[jit.H_REFERENCE_PRICE]),
        }

    def account_limits(self) -> np.ndarray:
        """Every account with limits or a kill switch of its own here (``ACCOUNT_LIMITS``
        records, by account)."""
        rows = self._limited_accounts()
        out = np.zeros(len(rows), ACCOUNT_LIMITS)
        out["account"] = rows[:, 0].view(np.uint64)
        out["max_order_qty"] = rows[:, 1]
        out["max_notional"] = rows[:, 2]
        out["max_open_orders"] = rows[:, 3]
        out["killed"] = rows[:, 4] != 0
        return out

    def order_count(self) -> int:
        return int(self._arena[jit.H_COUNT_BID] + self._arena[jit.H_COUNT_ASK])

    @property
    def trade_counter(self) -> int:
        """The last trade id issued (trade ids count 1, 2, 3... per book)."""
        return int(self._arena[jit.H_TRADE_COUNTER])

    def _best(self, side_ix: int) -> int | None:
        level = int(self._arena[jit.H_BEST_BID + side_ix])
        return None if level < 0 else self.spec.price_min + level * self.spec.tick

    def best_bid(self) -> int | None:
        return self._best(0)

    def best_ask(self) -> int | None:
        return self._best(1)

    def depth(self, levels: int = 10) -> dict[str, list[tuple[int, int, int]]]:
        """The best ``levels`` price levels per side: ``{"bids": [(price, qty, orders)...],
        "asks": [...]}``, best first."""
        out = np.zeros((max(levels, 0), 3), np.int64)
        result = {}
        for side_ix, key in ((0, "bids"), (1, "asks")):
            k = jit.collect_depth(self._arena, side_ix, levels, out)
            result[key] = [tuple(int(v) for v in row) for row in out[:k]]
        return result

    def resting_orders(self) -> np.ndarray:
        """Every resting order (``RESTING_ORDER`` records) in priority order: bids best
        first, then asks best first, FIFO within a level."""
        words = np.zeros((self.order_count(), 8), np.int64)
        k = jit.collect_orders(self._arena, words)
        out = np.zeros(k, RESTING_ORDER)
        out["order_id"] = words[:k, 0].view(np.uint64)
        out["client_order_id"] = words[:k, 1].view(np.uint64)
        out["account"] = words[:k, 2].view(np.uint64)
        out["side"] = words[:k, 3] & 0xFF
        out["order_type"] = (words[:k, 3] >> 8) & 0xFF
        out["tif"] = (words[:k, 3] >> 16) & 0xFF
        out["price"] = words[:k, 4]
        out["qty"] = words[:k, 5]
        return out
