"""The jitted order book: one contiguous int64 arena per symbol and the kernels over it.

Why one arena: a numba call pays for every array argument it unboxes (DESIGN.md measured
~130 ns for one int up to ~800 ns for 11 arrays). The whole book -- header scalars, both
price ladders, the order pool and the order-id index -- lives in ONE ``int64`` array at
fixed offsets recorded in its header, so a batch call passes four arguments (arena,
commands, first sequence, events). ``perf/matcher_bench.py`` measures this against
passing the sub-arrays separately. (Snapshots do not copy the arena: a default band of
a million levels makes it ~54 MB, mostly empty ladder; ``Matcher.snapshot`` keeps the
header and the resting orders, and ``load_orders`` re-rests them.)

Commands and events are passed as ``int64`` word views of ``COMMAND`` (8 words) and
``EVENT`` (16 words) slots, so the kernels never touch numba record types and compile
once for every caller. Byte fields are unpacked from word 0 (little-endian, x86-64).

Arena layout (``int64`` words; offsets of the three regions are in the header):

- header, ``HEADER_WORDS`` words, slots ``H_*`` below;
- ladder, ``2 * levels * LEVEL_WORDS``: per side (0 bid, 1 ask) and level (tick index
  within the band) the FIFO's ``head`` and ``tail`` pool slot (-1 when empty) and the
  level's open ``qty``;
- pool, ``capacity * ORDER_WORDS`` (one 64-byte line per order): order id, client order
  id, account, level (-1 when the slot is free), open qty, prev/next slot in the level's
  FIFO (next doubles as the free-list link), flags (side | order_type << 8 | tif << 16);
- index, ``2 * index_size`` words: open addressing with linear probing and
  backward-shift deletion (no tombstones, so probe lengths do not grow with churn),
  pairs of (order id, pool slot) with slot -1 for an empty bucket;
- accounts, ``account_slots * ACCOUNT_WORDS``: one record per account that has limits of
  its own, or resting orders while open orders are counted (account, open orders, its
  limits, kill switch, free-list link, in use), and their index, pairs of (account,
  record) like the order index.

Open orders are counted per account only once a book has had a max-open-orders limit
(``H_TRACK_OPEN``): setting the first one counts the resting orders from the book, and
from then on a resting order keeps its account's record number + 1 in its flags (bits
24 and up), so counting costs no lookup when it rests or leaves. A book that never had
such a limit, or any limit, runs the matching path of a book without risk: no lookup,
no count.

Pre-trade risk (``ringex.engine.risk`` says what each limit means): the header holds the
symbol's limits, the last trade price and the reference price; an account's own limits
and kill switch are in its record. Limits change only by ``Op.RISK`` commands from the
journal, never from the config directly, so replaying the journal replays every
decision. Records of accounts with limits are never swept; the others are recycled
when the free list runs dry (only when an order must rest), so there are at most
``capacity`` records with orders plus ``RISK_ACCOUNTS`` with limits: never a full table
for an order.

Bounded output: a kernel never stops in the middle of a command. Before each command
``match_batch`` checks that the event buffer has room for the worst case of one command
(every resting order traded or cancelled, plus ``EVENT_SLACK``) and otherwise returns
early, reporting how many commands it consumed, so a caller can hand it a ring's free
space directly and come back for the rest.

Kernels return counts and reason codes; they never raise on bad input.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from ringex.codes import EventKind, EventReason, Op, OrderType, RiskLimit, Side, Stp, Tif
from ringex.records import COMMAND, EVENT

__all__ = [
    "make_book",
    "arena_words",
    "match_batch",
    "check_book",
    "collect_orders",
    "collect_depth",
    "load_orders",
    "collect_accounts",
    "load_accounts",
    "warm_up",
    "CHECK_MESSAGES",
]

ARENA_MAGIC = 0x52494E47424F4F4B  # "RINGBOOK"
ARENA_VERSION = 2  # 2: pre-trade risk (accounts, limits, last trade price)

# ---- header slots -------------------------------------------------------------------
H_MAGIC = 0
H_VERSION = 1
H_LEVELS = 2
H_CAPACITY = 3
H_INDEX_MASK = 4
H_PRICE_MIN = 5
H_TICK = 6
H_MAX_QTY = 7
H_STP = 8
H_SYMBOL = 9  # the 8 symbol bytes as one little-endian word, copied into every event
H_BEST_BID = 10  # level index, -1 when the side is empty
H_BEST_ASK = 11
H_COUNT_BID = 12  # resting orders per side
H_COUNT_ASK = 13
H_QTY_BID = 14  # open quantity per side: lets FOK give up early
H_QTY_ASK = 15
H_FREE_HEAD = 16
H_LAST_SEQ = 17  # sequence of the last command applied, -1 before the first
H_TRADE_COUNTER = 18  # the last trade id issued; trade ids are 1, 2, 3... per book
H_OFF_LADDER = 19
H_OFF_POOL = 20
H_OFF_INDEX = 21
H_LAST_PRICE = 22  # price of the last trade, 0 before the first
H_REFERENCE_PRICE = 23  # the collar's centre until the first trade, 0: none
H_COLLAR_BPS = 24  # the symbol's risk limits (0: none) ...
H_LIMIT_QTY = 25
H_LIMIT_NOTIONAL = 26
H_LIMIT_OPEN = 27  # ... the most resting orders one account may have here
H_OFF_ACCOUNTS = 28
H_OFF_ACCOUNT_INDEX = 29
H_ACCOUNT_MASK = 30
H_ACCOUNT_SLOTS = 31
H_ACCOUNT_FREE = 32  # head of the free list of account records
H_PINNED = 33  # records kept for their limits or kill switch (at most RISK_ACCOUNTS)
H_TRACK_OPEN = 34  # 1 once open orders are counted per account (see the module docstring)
HEADER_WORDS = 48
# The risk words a snapshot carries over (the rest of the header is the spec or derived).
RISK_HEADER = (
    H_LAST_PRICE,
    H_REFERENCE_PRICE,
    H_COLLAR_BPS,
    H_LIMIT_QTY,
    H_LIMIT_NOTIONAL,
    H_LIMIT_OPEN,
    H_TRACK_OPEN,
)

# ---- ladder and pool fields -----------------------------------------------------------
L_HEAD = 0
L_TAIL = 1
L_QTY = 2
LEVEL_WORDS = 3

P_ORDER_ID = 0
P_CLIENT_ORDER_ID = 1
P_ACCOUNT = 2
P_LEVEL = 3
P_QTY = 4
P_PREV = 5
P_NEXT = 6
P_FLAGS = 7  # side | order_type << 8 | tif << 16 | (account record + 1, or 0) << 24
ORDER_WORDS = 8
FLAG_BITS = 24
FLAG_MASK = (1 << FLAG_BITS) - 1

A_ACCOUNT = 0
A_OPEN = 1  # resting orders
A_MAX_QTY = 2  # the account's own limits, 0: none
A_MAX_NOTIONAL = 3
A_MAX_OPEN = 4
A_KILLED = 5
A_NEXT = 6  # free-list link
A_IN_USE = 7
ACCOUNT_WORDS = 8
# Accounts per book that may hold limits or a kill switch of their own. Picked: more
# members than a small venue has; ~0.5 MB of arena.
RISK_ACCOUNTS = 4096
BPS = 10_000  # basis points in one

# ---- codes (ringex.codes, copied into plain ints: numba freezes module globals) -----
MSG_NEW = int(Op.NEW)
MSG_CANCEL = int(Op.CANCEL)
MSG_REPLACE = int(Op.REPLACE)
MSG_MASS_CANCEL = int(Op.MASS_CANCEL)
MSG_RISK = int(Op.RISK)
MSG_DISCONNECT = int(Op.DISCONNECT)
LIMIT_QTY = int(RiskLimit.MAX_ORDER_QTY)
LIMIT_NOTIONAL = int(RiskLimit.MAX_NOTIONAL)
LIMIT_OPEN = int(RiskLimit.MAX_OPEN_ORDERS)
LIMIT_COLLAR = int(RiskLimit.COLLAR_BPS)
LIMIT_REFERENCE = int(RiskLimit.REFERENCE_PRICE)
LIMIT_KILL = int(RiskLimit.KILL_SWITCH)
LIMIT_CLEAR = int(RiskLimit.CLEAR)
SIDE_BUY = int(Side.BUY)
SIDE_SELL = int(Side.SELL)
TYPE_LIMIT = int(OrderType.LIMIT)
TYPE_MARKET = int(OrderType.MARKET)
TIF_GTC = int(Tif.GTC)
TIF_IOC = int(Tif.IOC)
TIF_FOK = int(Tif.FOK)
TIF_POST_ONLY = int(Tif.POST_ONLY)

EV_ACCEPTED = int(EventKind.ACCEPTED)
EV_TRADE = int(EventKind.TRADE)
EV_CANCELLED = int(EventKind.CANCELLED)
EV_REPLACED = int(EventKind.REPLACED)
EV_REJECTED = int(EventKind.REJECTED)
EV_MASS_CANCELLED = int(EventKind.MASS_CANCELLED)
EV_LIMIT_SET = int(EventKind.LIMIT_SET)

R_NONE = int(EventReason.NONE)
R_USER_REQUEST = int(EventReason.USER_REQUEST)
R_IOC_REMAINDER = int(EventReason.IOC_REMAINDER)
R_FOK_UNFILLED = int(EventReason.FOK_UNFILLED)
R_SELF_TRADE = int(EventReason.SELF_TRADE)
R_NO_LIQUIDITY = int(EventReason.NO_LIQUIDITY)
R_MASS_CANCEL = int(EventReason.MASS_CANCEL)
R_KILL_SWITCH = int(EventReason.KILL_SWITCH)
R_DISCONNECT = int(EventReason.DISCONNECT)
R_UNKNOWN_ORDER = int(EventReason.UNKNOWN_ORDER)
R_NOT_OWNER = int(EventReason.NOT_OWNER)
R_BOOK_FULL = int(EventReason.BOOK_FULL)
R_WOULD_TRADE = int(EventReason.WOULD_TRADE)
R_BAD_PRICE = int(EventReason.BAD_PRICE)
R_BAD_QTY = int(EventReason.BAD_QTY)
R_BAD_ORDER_TYPE = int(EventReason.BAD_ORDER_TYPE)
R_DUPLICATE_ORDER_ID = int(EventReason.DUPLICATE_ORDER_ID)
R_RISK_MAX_QTY = int(EventReason.RISK_MAX_QTY)
R_RISK_MAX_NOTIONAL = int(EventReason.RISK_MAX_NOTIONAL)
R_RISK_PRICE_COLLAR = int(EventReason.RISK_PRICE_COLLAR)
R_RISK_MAX_OPEN_ORDERS = int(EventReason.RISK_MAX_OPEN_ORDERS)
R_RISK_KILL_SWITCH = int(EventReason.RISK_KILL_SWITCH)
R_RISK_TABLE_FULL = int(EventReason.RISK_TABLE_FULL)

STP_OFF = int(Stp.OFF)
STP_CANCEL_NEWEST = int(Stp.CANCEL_NEWEST)
STP_CANCEL_OLDEST = int(Stp.CANCEL_OLDEST)
STP_CANCEL_BOTH = int(Stp.CANCEL_BOTH)

# A command emits at most one event per resting order it meets (a trade or a
# self-trade cancel, or a mass cancel's or kill switch's cancel) plus: REPLACED first,
# and a final ACCEPTED/CANCELLED (two with cancel_both), MASS_CANCELLED or LIMIT_SET.
# 3 covers that with one to spare.
EVENT_SLACK = 3

COMMAND_WORDS = COMMAND.itemsize // 8
EVENT_WORDS = EVENT.itemsize // 8
assert COMMAND_WORDS == 8 and EVENT_WORDS == 16

HASH_MULT = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: Fibonacci hashing


def _index_size(capacity: int) -> int:
    index_size = 1
    while index_size < 2 * capacity:  # load factor <= 1/2 keeps linear probes short
        index_size <<= 1
    return index_size


def arena_words(levels: int, capacity: int) -> int:
    """Length of the arena of a book with ``levels`` per side and ``capacity`` orders."""
    slots = capacity + RISK_ACCOUNTS
    return (
        HEADER_WORDS
        + 2 * levels * LEVEL_WORDS
        + capacity * ORDER_WORDS
        + 2 * _index_size(capacity)
        + slots * ACCOUNT_WORDS
        + 2 * _index_size(slots)
    )


def make_book(
    *,
    levels: int,
    capacity: int,
    price_min: int,
    tick: int,
    max_qty: int,
    stp: int,
    symbol_word: int,
) -> np.ndarray:
    """A fresh, empty book arena (``int64[::1]``), with every sentinel filled in."""
    index_size = _index_size(capacity)
    account_slots = capacity + RISK_ACCOUNTS
    account_index_size = _index_size(account_slots)
    off_ladder = HEADER_WORDS
    off_pool = off_ladder + 2 * levels * LEVEL_WORDS
    off_index = off_pool + capacity * ORDER_WORDS
    off_accounts = off_index + 2 * index_size
    off_account_index = off_accounts + account_slots * ACCOUNT_WORDS
    arena = np.zeros(off_account_index + 2 * account_index_size, dtype=np.int64)
    head = arena[:HEADER_WORDS]
    head[H_MAGIC] = ARENA_MAGIC
    head[H_VERSION] = ARENA_VERSION
    head[H_LEVELS] = levels
    head[H_CAPACITY] = capacity
    head[H_INDEX_MASK] = index_size - 1
    head[H_PRICE_MIN] = price_min
    head[H_TICK] = tick
    head[H_MAX_QTY] = max_qty
    head[H_STP] = stp
    head[H_SYMBOL] = symbol_word
    head[H_BEST_BID] = -1
    head[H_BEST_ASK] = -1
    head[H_FREE_HEAD] = 0
    head[H_LAST_SEQ] = -1
    head[H_OFF_LADDER] = off_ladder
    head[H_OFF_POOL] = off_pool
    head[H_OFF_INDEX] = off_index
    head[H_OFF_ACCOUNTS] = off_accounts
    head[H_OFF_ACCOUNT_INDEX] = off_account_index
    head[H_ACCOUNT_MASK] = account_index_size - 1
    head[H_ACCOUNT_SLOTS] = account_slots
    head[H_ACCOUNT_FREE] = 0
    ladder = arena[off_ladder:off_pool].reshape(2 * levels, LEVEL_WORDS)
    ladder[:, L_HEAD] = -1
    ladder[:, L_TAIL] = -1
    pool = arena[off_pool:off_index].reshape(capacity, ORDER_WORDS)
    pool[:, P_LEVEL] = -1
    pool[:, P_PREV] = -1
    pool[:, P_NEXT] = np.arange(1, capacity + 1)
    pool[-1, P_NEXT] = -1
    arena[off_index + 1 : off_accounts : 2] = -1
    accounts = arena[off_accounts:off_account_index].reshape(account_slots, ACCOUNT_WORDS)
    accounts[:, A_NEXT] = np.arange(1, account_slots + 1)
    accounts[-1, A_NEXT] = -1
    arena[off_account_index + 1 :: 2] = -1
    return arena


# =====================================================================================
# order-id index
# =====================================================================================


@njit(cache=True, inline="always")
def _home(key, mask):
    h = key * HASH_MULT
    return (h ^ (h >> 32)) & mask


@njit(cache=True, inline="always")
def _table_find(arena, off, mask, key):
    """Value of ``key`` in the table of ``mask + 1`` (key, value) pairs at ``off``, or -1."""
    b = _home(key, mask)
    while True:
        slot = arena[off + 2 * b + 1]
        if slot < 0:
            return -1
        if arena[off + 2 * b] == key:
            return slot
        b = (b + 1) & mask


@njit(cache=True, inline="always")
def _table_insert(arena, off, mask, key, slot):
    b = _home(key, mask)
    while arena[off + 2 * b + 1] >= 0:
        b = (b + 1) & mask
    arena[off + 2 * b] = key
    arena[off + 2 * b + 1] = slot


@njit(cache=True)
def _index_find(arena, key):
    """Pool slot of the live order ``key``, or -1."""
    return _table_find(arena, arena[H_OFF_INDEX], arena[H_INDEX_MASK], key)


@njit(cache=True)
def _index_insert(arena, key, slot):
    _table_insert(arena, arena[H_OFF_INDEX], arena[H_INDEX_MASK], key, slot)


@njit(cache=True)
def _index_delete(arena, key):
    _table_delete(arena, arena[H_OFF_INDEX], arena[H_INDEX_MASK], key)


@njit(cache=True)
def _table_delete(arena, off, mask, key):
    """Remove ``key``; later entries of its probe run shift back into the hole."""
    i = _home(key, mask)
    while arena[off + 2 * i] != key or arena[off + 2 * i + 1] < 0:
        if arena[off + 2 * i + 1] < 0:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if arena[off + 2 * j + 1] < 0:
            break
        k = _home(arena[off + 2 * j], mask)
        # the entry at j may stay if its home lies cyclically in (i, j]
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        arena[off + 2 * i] = arena[off + 2 * j]
        arena[off + 2 * i + 1] = arena[off + 2 * j + 1]
        i = j
    arena[off + 2 * i] = 0
    arena[off + 2 * i + 1] = -1


# =====================================================================================
# account records
# =====================================================================================


@njit(cache=True, inline="always")
def _account_base(arena, rec):
    return arena[H_OFF_ACCOUNTS] + rec * ACCOUNT_WORDS


@njit(cache=True)
def _account_find(arena, account):
    """Record of ``account``, or -1 when it has neither resting orders nor limits here."""
    return _table_find(arena, arena[H_OFF_ACCOUNT_INDEX], arena[H_ACCOUNT_MASK], account)


@njit(cache=True, inline="always")
def _pinned(arena, ab):
    """Whether a record must outlive its orders: it holds a limit or a kill switch."""
    return (arena[ab + A_MAX_QTY] | arena[ab + A_MAX_NOTIONAL] | arena[ab + A_MAX_OPEN] | arena[ab + A_KILLED]) != 0


@njit(cache=True)
def _sweep_accounts(arena):
    """Return every record with no resting orders and no limits to the free list.

    Only called when the free list is empty, so a record is recycled rarely; which
    records go first is never observable (no event names a record)."""
    off = arena[H_OFF_ACCOUNT_INDEX]
    mask = arena[H_ACCOUNT_MASK]
    for rec in range(arena[H_ACCOUNT_SLOTS]):
        ab = _account_base(arena, rec)
        if arena[ab + A_IN_USE] and arena[ab + A_OPEN] == 0 and not _pinned(arena, ab):
            _table_delete(arena, off, mask, arena[ab + A_ACCOUNT])
            arena[ab + A_IN_USE] = 0
            arena[ab + A_NEXT] = arena[H_ACCOUNT_FREE]
            arena[H_ACCOUNT_FREE] = rec


@njit(cache=True)
def _account_get(arena, account):
    """Record of ``account``, made if it has none; -1 only if every record is held by an
    account with orders or limits, which the bounds on both rule out (module docstring)."""
    rec = _account_find(arena, account)
    if rec >= 0:
        return rec
    if arena[H_ACCOUNT_FREE] < 0:
        _sweep_accounts(arena)
        if arena[H_ACCOUNT_FREE] < 0:
            return -1
    rec = arena[H_ACCOUNT_FREE]
    ab = _account_base(arena, rec)
    arena[H_ACCOUNT_FREE] = arena[ab + A_NEXT]
    arena[ab + A_ACCOUNT] = account
    arena[ab + A_OPEN] = 0
    arena[ab + A_MAX_QTY] = 0
    arena[ab + A_MAX_NOTIONAL] = 0
    arena[ab + A_MAX_OPEN] = 0
    arena[ab + A_KILLED] = 0
    arena[ab + A_NEXT] = -1
    arena[ab + A_IN_USE] = 1
    _table_insert(arena, arena[H_OFF_ACCOUNT_INDEX], arena[H_ACCOUNT_MASK], account, rec)
    return rec


@njit(cache=True)
def _track_open(arena):
    """Start counting open orders per account: give every resting order its account's
    record and count it. Called when the book gets its first max-open-orders limit;
    the counts are a function of the book, so a replay starts them alike."""
    if arena[H_TRACK_OPEN]:
        return
    for side_ix in range(2):
        level = arena[H_BEST_BID + side_ix]
        step = -1 if side_ix == 0 else 1
        remaining = arena[H_COUNT_BID + side_ix]
        base = arena[H_OFF_LADDER] + side_ix * arena[H_LEVELS] * LEVEL_WORDS
        while remaining > 0:
            slot = arena[base + level * LEVEL_WORDS + L_HEAD]
            while slot >= 0:
                ob = arena[H_OFF_POOL] + slot * ORDER_WORDS
                rec = _account_get(arena, arena[ob + P_ACCOUNT])
                arena[ob + P_FLAGS] = (arena[ob + P_FLAGS] & FLAG_MASK) | ((rec + 1) << FLAG_BITS)
                arena[_account_base(arena, rec) + A_OPEN] += 1
                remaining -= 1
                slot = arena[ob + P_NEXT]
            level += step
    arena[H_TRACK_OPEN] = 1


@njit(cache=True, inline="always")
def _tighter(a, b):
    """The tighter of two limits where 0 means none."""
    if a == 0:
        return b
    if b == 0 or a < b:
        return a
    return b


# =====================================================================================
# ladder and pool
# =====================================================================================


@njit(cache=True, inline="always")
def _level_base(arena, side_ix, level):
    return arena[H_OFF_LADDER] + (side_ix * arena[H_LEVELS] + level) * LEVEL_WORDS


@njit(cache=True, inline="always")
def _order_base(arena, slot):
    return arena[H_OFF_POOL] + slot * ORDER_WORDS


@njit(cache=True, inline="always")
def _side_ix(side):
    return 0 if side == SIDE_BUY else 1


@njit(cache=True)
def _append(arena, slot, side_ix, level):
    """Put a pool order at the back of its level's queue and update the side totals."""
    lb = _level_base(arena, side_ix, level)
    ob = _order_base(arena, slot)
    qty = arena[ob + P_QTY]
    tail = arena[lb + L_TAIL]
    arena[ob + P_LEVEL] = level
    arena[ob + P_PREV] = tail
    arena[ob + P_NEXT] = -1
    if tail < 0:
        arena[lb + L_HEAD] = slot
    else:
        arena[_order_base(arena, tail) + P_NEXT] = slot
    arena[lb + L_TAIL] = slot
    arena[lb + L_QTY] += qty
    arena[H_COUNT_BID + side_ix] += 1
    arena[H_QTY_BID + side_ix] += qty
    if arena[H_TRACK_OPEN]:
        arena[_account_base(arena, (arena[ob + P_FLAGS] >> FLAG_BITS) - 1) + A_OPEN] += 1
    if side_ix == 0:
        if level > arena[H_BEST_BID]:
            arena[H_BEST_BID] = level
    else:
        best = arena[H_BEST_ASK]
        if best < 0 or level < best:
            arena[H_BEST_ASK] = level


@njit(cache=True)
def _unlink(arena, slot, side_ix):
    """Take a pool order out of its level's queue (the slot stays allocated)."""
    ob = _order_base(arena, slot)
    level = arena[ob + P_LEVEL]
    lb = _level_base(arena, side_ix, level)
    prev = arena[ob + P_PREV]
    nxt = arena[ob + P_NEXT]
    qty = arena[ob + P_QTY]
    if prev < 0:
        arena[lb + L_HEAD] = nxt
    else:
        arena[_order_base(arena, prev) + P_NEXT] = nxt
    if nxt < 0:
        arena[lb + L_TAIL] = prev
    else:
        arena[_order_base(arena, nxt) + P_PREV] = prev
    arena[lb + L_QTY] -= qty
    arena[H_COUNT_BID + side_ix] -= 1
    arena[H_QTY_BID + side_ix] -= qty
    if arena[H_TRACK_OPEN]:
        arena[_account_base(arena, (arena[ob + P_FLAGS] >> FLAG_BITS) - 1) + A_OPEN] -= 1
    arena[ob + P_LEVEL] = -1
    arena[ob + P_PREV] = -1
    arena[ob + P_NEXT] = -1
    if arena[lb + L_HEAD] < 0 and level == arena[H_BEST_BID + side_ix]:
        _rescan_best(arena, side_ix, level)


@njit(cache=True)
def _rescan_best(arena, side_ix, emptied):
    """Find the new best level after ``emptied`` (the old best) ran dry.

    The scan stops at the next occupied level, which exists while the side's count is
    non-zero, so it costs the gap to the next price, not the width of the band.
    """
    if arena[H_COUNT_BID + side_ix] == 0:
        arena[H_BEST_BID + side_ix] = -1
        return
    step = -1 if side_ix == 0 else 1
    level = emptied + step
    base = _level_base(arena, side_ix, 0)
    while arena[base + level * LEVEL_WORDS + L_HEAD] < 0:
        level += step
    arena[H_BEST_BID + side_ix] = level


@njit(cache=True)
def _alloc(arena):
    slot = arena[H_FREE_HEAD]
    ob = _order_base(arena, slot)
    arena[H_FREE_HEAD] = arena[ob + P_NEXT]
    return slot


@njit(cache=True)
def _release(arena, slot):
    """Return an unlinked order's slot to the free list and forget its id."""
    ob = _order_base(arena, slot)
    _index_delete(arena, arena[ob + P_ORDER_ID])
    arena[ob + P_LEVEL] = -1
    arena[ob + P_PREV] = -1
    arena[ob + P_NEXT] = arena[H_FREE_HEAD]
    arena[H_FREE_HEAD] = slot


# =====================================================================================
# events
# =====================================================================================

# Explicit signatures on the helpers that many call sites use: numba compiles a callee
# once per combination of *literal* arguments it is called with from jitted code (each
# event kind and reason constant), which made ``_emit_command`` alone 27 specialisations
# and the first start's compile twice as long. Fixed types compile each once, when the
# module is imported (from numba's cache after the first time); so they must be
# defined after whatever they call.


@njit(cache=True, inline="always")
def _word0(kind, side, reason, order_type, tif):
    return kind | (side << 8) | (reason << 16) | (order_type << 24) | (tif << 32)


@njit("i8(i8[::1], i8[:, ::1], i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)", cache=True)
def _emit(arena, ev, n, word0, seq, ts, oid, coid, acct, price, qty, remaining, trade_id, c_oid, c_coid, c_acct, c_rem):
    row = ev[n]
    row[0] = word0
    row[1] = seq
    row[2] = ts
    row[3] = oid
    row[4] = coid
    row[5] = acct
    row[6] = price
    row[7] = qty
    row[8] = remaining
    row[9] = trade_id
    row[10] = c_oid
    row[11] = c_coid
    row[12] = c_acct
    row[13] = c_rem
    row[14] = arena[H_SYMBOL]
    row[15] = 0
    return n + 1


@njit("i8(i8[::1], i8[:, ::1], i8, i8[::1], i8, i8, i8, i8, i8)", cache=True)
def _emit_command(arena, ev, n, cmd, seq, kind, reason, qty, remaining):
    """An event about the command itself: its ids and fields as it gave them."""
    w0 = cmd[0]
    word0 = _word0(kind, (w0 >> 8) & 0xFF, reason, (w0 >> 16) & 0xFF, (w0 >> 24) & 0xFF)
    return _emit(arena, ev, n, word0, seq, cmd[7], cmd[3], cmd[2], cmd[6], cmd[4], qty, remaining, 0, 0, 0, 0, 0)


@njit("i8(i8[::1], i8[:, ::1], i8, i8, i8, i8, i8, i8, i8, i8, i8)", cache=True)
def _emit_order(arena, ev, n, slot, seq, ts, kind, reason, coid, qty, remaining):
    """An event about a pool order: its side, type, tif, id, account and price."""
    ob = _order_base(arena, slot)
    flags = arena[ob + P_FLAGS]
    word0 = _word0(kind, flags & 0xFF, reason, (flags >> 8) & 0xFF, (flags >> 16) & 0xFF)
    price = arena[H_PRICE_MIN] + arena[ob + P_LEVEL] * arena[H_TICK]
    return _emit(arena, ev, n, word0, seq, ts, arena[ob + P_ORDER_ID], coid, arena[ob + P_ACCOUNT], price, qty, remaining, 0, 0, 0, 0, 0)  # fmt: skip


# =====================================================================================
# matching
# =====================================================================================


@njit(cache=True)
def _fok_fillable(arena, side_ix, limit_level, is_market, qty, account):
    """Whether a taker could fill ``qty`` right now, as ``_take`` would, without touching the book.

    Under self-trade prevention the taker's own resting orders do not count: with
    cancel_oldest they would be cancelled and skipped, with cancel_newest/cancel_both
    the taker would stop at the first one.
    """
    opp = 1 - side_ix
    total = arena[H_QTY_BID + opp]
    if total < qty:
        return False
    stp = arena[H_STP]
    level = arena[H_BEST_BID + opp]
    step = -1 if opp == 0 else 1
    avail = 0
    seen = 0
    base = _level_base(arena, opp, 0)
    while seen < total:
        if not is_market and (level - limit_level) * step > 0:
            return False
        lb = base + level * LEVEL_WORDS
        level_qty = arena[lb + L_QTY]
        if level_qty > 0:
            seen += level_qty
            if stp == STP_OFF:
                avail += level_qty
            else:
                slot = arena[lb + L_HEAD]
                while slot >= 0:
                    ob = _order_base(arena, slot)
                    if arena[ob + P_ACCOUNT] == account:
                        if stp != STP_CANCEL_OLDEST:
                            return avail >= qty
                    else:
                        avail += arena[ob + P_QTY]
                        if avail >= qty:
                            return True
                    slot = arena[ob + P_NEXT]
            if avail >= qty:
                return True
        level += step
    return avail >= qty


@njit("Tuple((i8, i8, b1))(i8[::1], i8[:, ::1], i8, i8, i8, i8, i8, i8, b1, i8, i8, i8, i8)", cache=True)
def _take(arena, ev, n, seq, ts, t_word0, side_ix, limit_level, is_market, qty, oid, coid, acct):
    """Match a taker against the opposite side in price-time priority.

    Prints at the maker's price. Returns (unfilled qty, events written, whether
    self-trade prevention cancelled the taker's remainder).
    """
    opp = 1 - side_ix
    stp = arena[H_STP]
    price_min = arena[H_PRICE_MIN]
    tick = arena[H_TICK]
    while qty > 0:
        best = arena[H_BEST_BID + opp]
        if best < 0:
            break
        if not is_market:
            if side_ix == 0 and best > limit_level:
                break
            if side_ix == 1 and best < limit_level:
                break
        lb = _level_base(arena, opp, best)
        maker = arena[lb + L_HEAD]
        mb = _order_base(arena, maker)
        if stp != STP_OFF and arena[mb + P_ACCOUNT] == acct:
            if stp == STP_CANCEL_NEWEST:
                return qty, n, True
            mq = arena[mb + P_QTY]
            n = _emit_order(
                arena, ev, n, maker, seq, ts, EV_CANCELLED, R_SELF_TRADE, arena[mb + P_CLIENT_ORDER_ID], mq, 0
            )
            _unlink(arena, maker, opp)
            _release(arena, maker)
            if stp == STP_CANCEL_BOTH:
                return qty, n, True
            continue
        mq = arena[mb + P_QTY]
        fill = qty if qty < mq else mq
        qty -= fill
        mq -= fill
        arena[mb + P_QTY] = mq
        arena[lb + L_QTY] -= fill
        arena[H_QTY_BID + opp] -= fill
        trade_id = arena[H_TRADE_COUNTER] + 1
        arena[H_TRADE_COUNTER] = trade_id
        trade_price = price_min + best * tick
        arena[H_LAST_PRICE] = trade_price
        n = _emit(
            arena, ev, n, t_word0, seq, ts, oid, coid, acct, trade_price, fill, qty,
            trade_id, arena[mb + P_ORDER_ID], arena[mb + P_CLIENT_ORDER_ID], arena[mb + P_ACCOUNT], mq,
        )  # fmt: skip
        if mq == 0:
            _unlink(arena, maker, opp)
            _release(arena, maker)
    return qty, n, False


@njit(cache=True)
def _price_level(arena, price):
    """Level index of a limit price, or -1 when it is outside the band or off the tick."""
    rel = price - arena[H_PRICE_MIN]
    if rel < 0:
        return -1
    tick = arena[H_TICK]
    if rel % tick != 0:
        return -1
    level = rel // tick
    if level >= arena[H_LEVELS]:
        return -1
    return level


@njit(cache=True)
def _reference(arena):
    """The price risk checks measure against: the last trade's, else the reference price
    (0: neither)."""
    last = arena[H_LAST_PRICE]
    return last if last > 0 else arena[H_REFERENCE_PRICE]


@njit(cache=True)
def _outside_collar(arena, side_ix, price):
    """Whether a limit price lies beyond the collar: a buy above, or a sell below, the
    reference by more than ``collar_bps`` of it."""
    bps = arena[H_COLLAR_BPS]
    ref = _reference(arena)
    if bps == 0 or ref <= 0:
        return False
    band = ref * bps // BPS
    return price > ref + band if side_ix == 0 else price < ref - band


@njit(cache=True)
def _collar_level(arena, side_ix):
    """The furthest level a market order may trade at under the collar, or -1 when no
    collar applies (the order then takes any price)."""
    bps = arena[H_COLLAR_BPS]
    ref = _reference(arena)
    if bps == 0 or ref <= 0:
        return -1
    band = ref * bps // BPS
    tick = arena[H_TICK]
    top = arena[H_LEVELS] - 1
    if side_ix == 0:
        rel = ref + band - arena[H_PRICE_MIN]  # a buy may pay up to here, rounded down to a tick
        if rel < 0:
            return 0
        level = rel // tick
        return level if level < top else top
    rel = ref - band - arena[H_PRICE_MIN]  # a sell may go down to here, rounded up to a tick
    if rel <= 0:
        return 0
    level = (rel + tick - 1) // tick
    return level if level < top else top


@njit("b1(i8[::1], i8, i8, b1, i8, i8)", cache=True)
def _over_notional(arena, rec, side_ix, is_market, price, qty):
    """Whether price x qty exceeds the tighter notional limit. A market order is
    priced at the reference (last trade, else reference price), else at the best
    opposite price; with none of them it has nothing to trade against and passes."""
    limit = arena[H_LIMIT_NOTIONAL]
    if rec >= 0:
        limit = _tighter(limit, arena[_account_base(arena, rec) + A_MAX_NOTIONAL])
    if limit == 0:
        return False
    if is_market:
        price = _reference(arena)
        if price <= 0:
            best = arena[H_BEST_BID + 1 - side_ix]
            if best < 0:
                return False
            price = arena[H_PRICE_MIN] + best * arena[H_TICK]
    return qty > limit // price  # qty * price > limit, without the product overflowing


@njit(cache=True, inline="always")
def _risk_applies(arena, rec):
    """Whether any limit could refuse an order of the account with record ``rec`` (-1:
    none): the symbol's limits are four header words and an account's are in its
    record, so with none set the checks cost four loads and no lookup."""
    if (arena[H_LIMIT_QTY] | arena[H_LIMIT_NOTIONAL] | arena[H_LIMIT_OPEN] | arena[H_COLLAR_BPS]) != 0:
        return True
    return rec >= 0 and _pinned(arena, _account_base(arena, rec))


@njit(cache=True, inline="always")
def _risk_record(arena, account):
    """The record risk checks need for ``account``: -1 without a lookup when no account
    has limits of its own and the symbol has no open-order limit (which needs the count)."""
    if arena[H_PINNED] == 0 and arena[H_LIMIT_OPEN] == 0:
        return -1
    return _account_find(arena, account)


@njit("i8(i8[::1], i8, i8, b1, i8, i8, b1)", cache=True)
def _risk_refusal(arena, rec, side_ix, is_market, price, qty, rests):
    """The first pre-trade check a new order fails, as a reject reason, or R_NONE.

    In order: the account's kill switch, the largest order quantity, the price collar
    (limit orders; a market order is bounded by it instead, ``_collar_level``), the
    largest notional, and, for an order that may rest, the most open orders. Account
    and symbol limits both apply (``_tighter``)."""
    max_qty = arena[H_LIMIT_QTY]
    max_open = arena[H_LIMIT_OPEN]
    open_orders = 0
    if rec >= 0:
        ab = _account_base(arena, rec)
        if arena[ab + A_KILLED]:
            return R_RISK_KILL_SWITCH
        max_qty = _tighter(max_qty, arena[ab + A_MAX_QTY])
        max_open = _tighter(max_open, arena[ab + A_MAX_OPEN])
        open_orders = arena[ab + A_OPEN]
    if max_qty and qty > max_qty:
        return R_RISK_MAX_QTY
    if not is_market and _outside_collar(arena, side_ix, price):
        return R_RISK_PRICE_COLLAR
    if _over_notional(arena, rec, side_ix, is_market, price, qty):
        return R_RISK_MAX_NOTIONAL
    if rests and max_open and open_orders >= max_open:
        return R_RISK_MAX_OPEN_ORDERS
    return R_NONE


@njit("i8(i8[::1], i8[::1], i8, i8[:, ::1], i8)", cache=True)
def _new_order(arena, cmd, seq, ev, n):
    w0 = cmd[0]
    side = (w0 >> 8) & 0xFF
    order_type = (w0 >> 16) & 0xFF
    tif = (w0 >> 24) & 0xFF
    coid = cmd[2]
    oid = cmd[3]
    price = cmd[4]
    qty = cmd[5]
    acct = cmd[6]
    ts = cmd[7]
    if side != SIDE_BUY and side != SIDE_SELL:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, qty, 0)
    if order_type == TYPE_LIMIT:
        if tif != TIF_GTC and tif != TIF_IOC and tif != TIF_FOK and tif != TIF_POST_ONLY:
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, qty, 0)
    elif order_type == TYPE_MARKET:
        if tif != TIF_IOC and tif != TIF_FOK:
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, qty, 0)
    else:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, qty, 0)
    if qty <= 0 or qty > arena[H_MAX_QTY]:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_QTY, qty, 0)
    is_market = order_type == TYPE_MARKET
    level = 0
    if not is_market:
        level = _price_level(arena, price)
        if level < 0:
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_PRICE, qty, 0)
    if _index_find(arena, oid) >= 0:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_DUPLICATE_ORDER_ID, qty, 0)
    rests = tif == TIF_GTC or tif == TIF_POST_ONLY
    side_ix = _side_ix(side)
    rec = _risk_record(arena, acct)
    if _risk_applies(arena, rec):
        refusal = _risk_refusal(arena, rec, side_ix, is_market, price, qty, rests)
        if refusal != R_NONE:
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, refusal, qty, 0)
    # Checked before matching so a rejected order has had no effect at all.
    if rests and arena[H_COUNT_BID] + arena[H_COUNT_ASK] >= arena[H_CAPACITY]:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BOOK_FULL, qty, 0)
    sweeps = is_market  # whether the taker may trade at any price
    if is_market:
        bound = _collar_level(arena, side_ix)
        if bound >= 0:
            level = bound
            sweeps = False
    opp_best = arena[H_BEST_BID + 1 - side_ix]
    if tif == TIF_POST_ONLY and opp_best >= 0:
        if (side_ix == 0 and opp_best <= level) or (side_ix == 1 and opp_best >= level):
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_WOULD_TRADE, qty, 0)
    if tif == TIF_FOK and not _fok_fillable(arena, side_ix, level, sweeps, qty, acct):
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_FOK_UNFILLED, qty, 0)
    t_word0 = _word0(EV_TRADE, side, 0, order_type, tif)
    rem, n, stopped = _take(arena, ev, n, seq, ts, t_word0, side_ix, level, sweeps, qty, oid, coid, acct)
    if rem == 0:
        return n
    if stopped:
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_SELF_TRADE, rem, 0)
    if is_market:
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_NO_LIQUIDITY, rem, 0)
    if tif == TIF_IOC:
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_IOC_REMAINDER, rem, 0)
    if tif == TIF_FOK:  # unreachable after _fok_fillable; kept so no remainder ever rests
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_FOK_UNFILLED, rem, 0)
    owner = 0  # record + 1 while open orders are counted
    if arena[H_TRACK_OPEN]:
        owner = (rec if rec >= 0 else _account_get(arena, acct)) + 1
    slot = _alloc(arena)
    ob = _order_base(arena, slot)
    arena[ob + P_ORDER_ID] = oid
    arena[ob + P_CLIENT_ORDER_ID] = coid
    arena[ob + P_ACCOUNT] = acct
    arena[ob + P_QTY] = rem
    arena[ob + P_FLAGS] = side | (order_type << 8) | (tif << 16) | (owner << FLAG_BITS)
    _append(arena, slot, side_ix, level)
    _index_insert(arena, oid, slot)
    return _emit_order(arena, ev, n, slot, seq, ts, EV_ACCEPTED, R_NONE, coid, rem, rem)


@njit("UniTuple(i8, 2)(i8[::1], i8[::1], i8, i8[:, ::1], i8)", cache=True)
def _owned_order(arena, cmd, seq, ev, n):
    """The pool slot of the order a cancel/replace targets, or -1 after emitting a reject."""
    slot = _index_find(arena, cmd[3])
    if slot < 0:
        return -1, _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_UNKNOWN_ORDER, cmd[5], 0)
    if arena[_order_base(arena, slot) + P_ACCOUNT] != cmd[6]:
        return -1, _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_NOT_OWNER, cmd[5], 0)
    return slot, n


@njit("i8(i8[::1], i8[::1], i8, i8[:, ::1], i8)", cache=True)
def _cancel(arena, cmd, seq, ev, n):
    slot, n = _owned_order(arena, cmd, seq, ev, n)
    if slot < 0:
        return n
    ob = _order_base(arena, slot)
    side_ix = _side_ix(arena[ob + P_FLAGS] & 0xFF)
    n = _emit_order(arena, ev, n, slot, seq, cmd[7], EV_CANCELLED, R_USER_REQUEST, cmd[2], arena[ob + P_QTY], 0)
    _unlink(arena, slot, side_ix)
    _release(arena, slot)
    return n


@njit("i8(i8[::1], i8[::1], i8, i8[:, ::1], i8)", cache=True)
def _replace(arena, cmd, seq, ev, n):
    slot, n = _owned_order(arena, cmd, seq, ev, n)
    if slot < 0:
        return n
    qty = cmd[5]
    if qty <= 0 or qty > arena[H_MAX_QTY]:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_QTY, qty, 0)
    level = _price_level(arena, cmd[4])
    if level < 0:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_PRICE, qty, 0)
    ts = cmd[7]
    coid = cmd[2]
    ob = _order_base(arena, slot)
    flags = arena[ob + P_FLAGS]
    side = flags & 0xFF
    side_ix = _side_ix(side)
    rec = (flags >> FLAG_BITS) - 1
    if rec < 0:
        rec = _risk_record(arena, arena[ob + P_ACCOUNT])
    if _risk_applies(arena, rec):
        # The order is open already, so the open-order limit does not apply; the others do.
        refusal = _risk_refusal(arena, rec, side_ix, False, cmd[4], qty, False)
        if refusal != R_NONE:
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, refusal, qty, 0)
    old_qty = arena[ob + P_QTY]
    arena[ob + P_CLIENT_ORDER_ID] = coid  # later events about the order carry the replace's id
    if level == arena[ob + P_LEVEL] and qty < old_qty:
        # Same price, smaller: keeps its place in the queue.
        arena[ob + P_QTY] = qty
        arena[_level_base(arena, side_ix, level) + L_QTY] -= old_qty - qty
        arena[H_QTY_BID + side_ix] -= old_qty - qty
        return _emit_order(arena, ev, n, slot, seq, ts, EV_REPLACED, R_NONE, coid, qty, qty)
    # Anything else: to the back of the new level, matched first as a GTC limit taker.
    _unlink(arena, slot, side_ix)
    arena[ob + P_LEVEL] = level  # for the REPLACED event's price; _append sets it again
    arena[ob + P_QTY] = qty
    n = _emit_order(arena, ev, n, slot, seq, ts, EV_REPLACED, R_NONE, coid, qty, qty)
    t_word0 = _word0(EV_TRADE, side, 0, (flags >> 8) & 0xFF, (flags >> 16) & 0xFF)
    oid = arena[ob + P_ORDER_ID]
    acct = arena[ob + P_ACCOUNT]
    rem, n, stopped = _take(arena, ev, n, seq, ts, t_word0, side_ix, level, False, qty, oid, coid, acct)
    if stopped:
        n = _emit_order(arena, ev, n, slot, seq, ts, EV_CANCELLED, R_SELF_TRADE, coid, rem, 0)
        _release(arena, slot)
    elif rem == 0:
        _release(arena, slot)
    else:
        arena[ob + P_QTY] = rem
        _append(arena, slot, side_ix, level)
    return n


@njit("UniTuple(i8, 2)(i8[::1], i8, i8, i8, i8, i8, i8[:, ::1], i8)", cache=True)
def _cancel_account(arena, account, side_filter, seq, ts, reason, ev, n):
    """Cancel every resting order of ``account`` (one side, or both when ``side_filter``
    is 0) in priority order: bids best first, then asks best first, FIFO within a level,
    so a replay cancels in the same order. Returns (orders cancelled, events written)."""
    if arena[H_TRACK_OPEN]:
        rec = _account_find(arena, account)
        if rec < 0 or arena[_account_base(arena, rec) + A_OPEN] == 0:
            return 0, n
    cancelled = 0
    for side_ix in range(2):
        if side_filter != 0 and side_filter != (SIDE_BUY if side_ix == 0 else SIDE_SELL):
            continue
        total = arena[H_COUNT_BID + side_ix]  # orders on the side before any is cancelled
        level = arena[H_BEST_BID + side_ix]
        step = -1 if side_ix == 0 else 1
        base = _level_base(arena, side_ix, 0)
        seen = 0
        while seen < total:
            slot = arena[base + level * LEVEL_WORDS + L_HEAD]
            while slot >= 0:
                ob = _order_base(arena, slot)
                nxt = arena[ob + P_NEXT]
                seen += 1
                if arena[ob + P_ACCOUNT] == account:
                    qty = arena[ob + P_QTY]
                    n = _emit_order(arena, ev, n, slot, seq, ts, EV_CANCELLED, reason, arena[ob + P_CLIENT_ORDER_ID], qty, 0)  # fmt: skip
                    _unlink(arena, slot, side_ix)
                    _release(arena, slot)
                    cancelled += 1
                slot = nxt
            level += step
    return cancelled, n


@njit("i8(i8[::1], i8[::1], i8, i8[:, ::1], i8, i8)", cache=True)
def _mass_cancel(arena, cmd, seq, ev, n, reason):
    """``Op.MASS_CANCEL`` (the account's own request; ``side`` 0 for both sides) or
    ``Op.DISCONNECT`` (the gateway's, both sides). Ends with MASS_CANCELLED carrying the
    number of orders cancelled; a cancel-on-disconnect that found none says nothing."""
    w0 = cmd[0]
    side_filter = (w0 >> 8) & 0xFF if reason == R_MASS_CANCEL else 0
    if side_filter != 0 and side_filter != SIDE_BUY and side_filter != SIDE_SELL:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, 0, 0)
    account = cmd[6]
    cancelled, n = _cancel_account(arena, account, side_filter, seq, cmd[7], reason, ev, n)
    if cancelled == 0 and reason != R_MASS_CANCEL:
        return n
    word0 = _word0(EV_MASS_CANCELLED, side_filter, reason, 0, 0)
    return _emit(arena, ev, n, word0, seq, cmd[7], 0, cmd[2], account, 0, cancelled, 0, 0, 0, 0, 0, 0)


@njit(cache=True)
def _clear_limits(arena):
    """Every limit of the book back to none; kill switches stay."""
    for slot in (H_COLLAR_BPS, H_REFERENCE_PRICE, H_LIMIT_QTY, H_LIMIT_NOTIONAL, H_LIMIT_OPEN):
        arena[slot] = 0
    pinned = 0
    for rec in range(arena[H_ACCOUNT_SLOTS]):
        ab = _account_base(arena, rec)
        if arena[ab + A_IN_USE]:
            arena[ab + A_MAX_QTY] = 0
            arena[ab + A_MAX_NOTIONAL] = 0
            arena[ab + A_MAX_OPEN] = 0
            if arena[ab + A_KILLED]:
                pinned += 1
    arena[H_PINNED] = pinned


@njit("i8(i8[::1], i8[::1], i8, i8[:, ::1], i8)", cache=True)
def _set_limit(arena, cmd, seq, ev, n):
    """``Op.RISK``: set the limit named by the ``side`` byte (a ``RiskLimit``) to the
    ``price`` word, for the account in the ``order_id`` word (0: the symbol's own
    limit). Engaging a kill switch cancels the account's orders first. Ends with
    LIMIT_SET (``qty``: orders the kill switch cancelled; ``contra_account``: who asked)."""
    limit = (cmd[0] >> 8) & 0xFF
    target = cmd[3]
    value = cmd[4]
    ts = cmd[7]
    symbol_wide = limit == LIMIT_COLLAR or limit == LIMIT_REFERENCE or limit == LIMIT_CLEAR
    per_account = limit == LIMIT_KILL
    known = symbol_wide or per_account or limit == LIMIT_QTY or limit == LIMIT_NOTIONAL or limit == LIMIT_OPEN
    if (
        not known
        or value < 0
        or (symbol_wide and target != 0)
        or (per_account and (target == 0 or value > 1))
        or (limit == LIMIT_CLEAR and value != 0)
    ):
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, 0, 0)
    cancelled = 0
    if limit == LIMIT_OPEN and value != 0:
        _track_open(arena)
    if target == 0:
        if limit == LIMIT_CLEAR:
            _clear_limits(arena)
        elif limit == LIMIT_COLLAR:
            arena[H_COLLAR_BPS] = value
        elif limit == LIMIT_REFERENCE:
            arena[H_REFERENCE_PRICE] = value
        elif limit == LIMIT_QTY:
            arena[H_LIMIT_QTY] = value
        elif limit == LIMIT_NOTIONAL:
            arena[H_LIMIT_NOTIONAL] = value
        else:
            arena[H_LIMIT_OPEN] = value
    else:
        rec = _account_find(arena, target)
        was_pinned = rec >= 0 and _pinned(arena, _account_base(arena, rec))
        if value != 0 and not was_pinned:
            # a record kept for limits must never crowd out one an order needs
            if arena[H_PINNED] >= RISK_ACCOUNTS:
                return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_RISK_TABLE_FULL, 0, 0)
            if rec < 0:
                rec = _account_get(arena, target)
        if rec >= 0:
            ab = _account_base(arena, rec)
            if limit == LIMIT_KILL:
                if value:
                    cancelled, n = _cancel_account(arena, target, 0, seq, ts, R_KILL_SWITCH, ev, n)
                arena[ab + A_KILLED] = value
            elif limit == LIMIT_QTY:
                arena[ab + A_MAX_QTY] = value
            elif limit == LIMIT_NOTIONAL:
                arena[ab + A_MAX_NOTIONAL] = value
            else:
                arena[ab + A_MAX_OPEN] = value
            arena[H_PINNED] += int(_pinned(arena, ab)) - int(was_pinned)
    word0 = _word0(EV_LIMIT_SET, limit, 0, 0, 0)
    return _emit(arena, ev, n, word0, seq, ts, 0, cmd[2], target, value, cancelled, 0, 0, 0, 0, cmd[6], 0)


@njit(cache=True)
def match_batch(arena, commands, first_seq, events):
    """Apply ``commands`` (``int64[n, 8]``, COMMAND words) to the book, writing events.

    ``first_seq`` is the symbol sequence of ``commands[0]``; command ``i`` has
    ``first_seq + i``. ``events`` is ``int64[m, 16]`` (EVENT words). Stops before a
    command whose worst case might not fit in the events left. Returns
    ``(commands consumed, events written)``.
    """
    n = 0
    cap = events.shape[0]
    i = 0
    while i < commands.shape[0]:
        if n + arena[H_COUNT_BID] + arena[H_COUNT_ASK] + EVENT_SLACK > cap:
            break
        cmd = commands[i]
        seq = first_seq + i
        msg = cmd[0] & 0xFF
        if msg == MSG_NEW:
            n = _new_order(arena, cmd, seq, events, n)
        elif msg == MSG_CANCEL:
            n = _cancel(arena, cmd, seq, events, n)
        elif msg == MSG_REPLACE:
            n = _replace(arena, cmd, seq, events, n)
        elif msg == MSG_MASS_CANCEL:
            n = _mass_cancel(arena, cmd, seq, events, n, R_MASS_CANCEL)
        elif msg == MSG_DISCONNECT:
            n = _mass_cancel(arena, cmd, seq, events, n, R_DISCONNECT)
        elif msg == MSG_RISK:
            n = _set_limit(arena, cmd, seq, events, n)
        else:
            n = _emit_command(arena, events, n, cmd, seq, EV_REJECTED, R_BAD_ORDER_TYPE, cmd[5], 0)
        arena[H_LAST_SEQ] = seq
        i += 1
    return i, n


# =====================================================================================
# inspection: validation, depth, resting orders
# =====================================================================================

CHECK_MESSAGES = {
    0: "ok",
    1: "header magic or version wrong",
    2: "a level's queue has a broken prev/next link",
    3: "an order in a queue has the wrong level, side, or a non-positive quantity",
    4: "a level's quantity is not the sum of its orders",
    5: "a level's tail is not its last order",
    6: "a queue is longer than the pool (cycle)",
    7: "per-side order count or quantity does not match the header",
    8: "best bid/ask is not the highest bid / lowest ask level",
    9: "the book is crossed (best bid >= best ask)",
    10: "an order's id does not find its own slot in the index",
    11: "the index holds a different number of entries than the book has orders",
    12: "the free list is broken (cycle, wrong length, or holds a live slot)",
    13: "an order's account record is not its account's, or an open-order count is wrong",
    14: "the account records are broken (index, free list, or the count of records with limits)",
}


@njit(cache=True)
def check_book(arena):
    """Check every invariant of the book; 0 when sound, else a ``CHECK_MESSAGES`` code."""
    if arena[H_MAGIC] != ARENA_MAGIC or arena[H_VERSION] != ARENA_VERSION:
        return 1
    levels = arena[H_LEVELS]
    capacity = arena[H_CAPACITY]
    live = 0
    for side_ix in range(2):
        side = SIDE_BUY if side_ix == 0 else SIDE_SELL
        count = 0
        total = 0
        best = -1
        for level in range(levels):
            lb = _level_base(arena, side_ix, level)
            slot = arena[lb + L_HEAD]
            prev = -1
            qty = 0
            steps = 0
            while slot >= 0:
                ob = _order_base(arena, slot)
                if arena[ob + P_PREV] != prev:
                    return 2
                if arena[ob + P_LEVEL] != level or (arena[ob + P_FLAGS] & 0xFF) != side or arena[ob + P_QTY] <= 0:
                    return 3
                if _index_find(arena, arena[ob + P_ORDER_ID]) != slot:
                    return 10
                qty += arena[ob + P_QTY]
                prev = slot
                slot = arena[ob + P_NEXT]
                steps += 1
                if steps > capacity:
                    return 6
            if qty != arena[lb + L_QTY]:
                return 4
            if arena[lb + L_TAIL] != prev:
                return 5
            if steps > 0:
                count += steps
                total += qty
                if side_ix == 0 or best < 0:
                    best = level
        if count != arena[H_COUNT_BID + side_ix] or total != arena[H_QTY_BID + side_ix]:
            return 7
        if best != arena[H_BEST_BID + side_ix]:
            return 8
        live += count
    if arena[H_BEST_BID] >= 0 and arena[H_BEST_ASK] >= 0 and arena[H_BEST_BID] >= arena[H_BEST_ASK]:
        return 9
    off = arena[H_OFF_INDEX]
    entries = 0
    for b in range(arena[H_INDEX_MASK] + 1):
        if arena[off + 2 * b + 1] >= 0:
            entries += 1
    if entries != live:
        return 11
    free = 0
    slot = arena[H_FREE_HEAD]
    while slot >= 0:
        if slot >= capacity or arena[_order_base(arena, slot) + P_LEVEL] != -1:
            return 12
        free += 1
        if free > capacity:
            return 12
        slot = arena[_order_base(arena, slot) + P_NEXT]
    if free + live != capacity:
        return 12
    return _check_accounts(arena)


@njit(cache=True)
def _check_accounts(arena):
    slots = arena[H_ACCOUNT_SLOTS]
    counted = np.zeros(slots, np.int64)
    for side_ix in range(2):
        for level in range(arena[H_LEVELS]):
            slot = arena[_level_base(arena, side_ix, level) + L_HEAD]
            while slot >= 0:
                ob = _order_base(arena, slot)
                rec = (arena[ob + P_FLAGS] >> FLAG_BITS) - 1
                if not arena[H_TRACK_OPEN]:
                    if rec != -1:
                        return 13
                    slot = arena[ob + P_NEXT]
                    continue
                if rec < 0 or rec >= slots:
                    return 13
                ab = _account_base(arena, rec)
                if not arena[ab + A_IN_USE] or arena[ab + A_ACCOUNT] != arena[ob + P_ACCOUNT]:
                    return 13
                counted[rec] += 1
                slot = arena[ob + P_NEXT]
    in_use = 0
    pinned = 0
    for rec in range(slots):
        ab = _account_base(arena, rec)
        if arena[ab + A_IN_USE]:
            in_use += 1
            if counted[rec] != arena[ab + A_OPEN]:
                return 13
            if _account_find(arena, arena[ab + A_ACCOUNT]) != rec:
                return 14
            if _pinned(arena, ab):
                pinned += 1
    if pinned != arena[H_PINNED]:
        return 14
    off = arena[H_OFF_ACCOUNT_INDEX]
    entries = 0
    for b in range(arena[H_ACCOUNT_MASK] + 1):
        if arena[off + 2 * b + 1] >= 0:
            entries += 1
    free = 0
    rec = arena[H_ACCOUNT_FREE]
    while rec >= 0:
        if rec >= slots or arena[_account_base(arena, rec) + A_IN_USE]:
            return 14
        free += 1
        if free > slots:
            return 14
        rec = arena[_account_base(arena, rec) + A_NEXT]
    if entries != in_use or free + in_use != slots:
        return 14
    return 0


@njit(cache=True)
def collect_depth(arena, side_ix, max_levels, out):
    """Fill ``out`` (``int64[max_levels, 3]``: price, qty, orders) from the best level
    outward; returns how many levels were filled."""
    level = arena[H_BEST_BID + side_ix]
    if level < 0:
        return 0
    step = -1 if side_ix == 0 else 1
    remaining = arena[H_COUNT_BID + side_ix]
    k = 0
    while k < max_levels and remaining > 0:
        lb = _level_base(arena, side_ix, level)
        if arena[lb + L_HEAD] >= 0:
            orders = 0
            slot = arena[lb + L_HEAD]
            while slot >= 0:
                orders += 1
                slot = arena[_order_base(arena, slot) + P_NEXT]
            out[k, 0] = arena[H_PRICE_MIN] + level * arena[H_TICK]
            out[k, 1] = arena[lb + L_QTY]
            out[k, 2] = orders
            remaining -= orders
            k += 1
        level += step
    return k


@njit(cache=True)
def collect_orders(arena, out):
    """Fill ``out`` (``int64[count, 8]``) with every resting order in priority order,
    bids best first then asks best first: order id, client order id, account, flags,
    price, open qty, and two zero words. Returns the number of rows."""
    k = 0
    for side_ix in range(2):
        level = arena[H_BEST_BID + side_ix]
        if level < 0:
            continue
        step = -1 if side_ix == 0 else 1
        remaining = arena[H_COUNT_BID + side_ix]
        while remaining > 0:
            slot = arena[_level_base(arena, side_ix, level) + L_HEAD]
            while slot >= 0:
                ob = _order_base(arena, slot)
                out[k, 0] = arena[ob + P_ORDER_ID]
                out[k, 1] = arena[ob + P_CLIENT_ORDER_ID]
                out[k, 2] = arena[ob + P_ACCOUNT]
                out[k, 3] = arena[ob + P_FLAGS] & FLAG_MASK  # the record number is this book's business
                out[k, 4] = arena[H_PRICE_MIN] + level * arena[H_TICK]
                out[k, 5] = arena[ob + P_QTY]
                out[k, 6] = 0
                out[k, 7] = 0
                k += 1
                remaining -= 1
                slot = arena[ob + P_NEXT]
            level += step
    return k


@njit(cache=True)
def load_orders(arena, orders, count):
    """Rest ``orders[:count]`` (rows as ``collect_orders`` writes them, in priority
    order) in an empty book (whose ``H_TRACK_OPEN`` is set first, if the snapshot's
    was); used to restore a snapshot. Returns 0, or -1 if a row is out of the band or
    the pool is full (a damaged snapshot)."""
    for k in range(count):
        if arena[H_FREE_HEAD] < 0:
            return -1
        level = _price_level(arena, orders[k, 4])
        if level < 0 or orders[k, 5] <= 0 or orders[k, 3] >> FLAG_BITS != 0:
            return -1
        flags = orders[k, 3]
        if arena[H_TRACK_OPEN]:
            rec = _account_get(arena, orders[k, 2])
            if rec < 0:
                return -1
            flags |= (rec + 1) << FLAG_BITS
        slot = _alloc(arena)
        ob = _order_base(arena, slot)
        arena[ob + P_ORDER_ID] = orders[k, 0]
        arena[ob + P_CLIENT_ORDER_ID] = orders[k, 1]
        arena[ob + P_ACCOUNT] = orders[k, 2]
        arena[ob + P_QTY] = orders[k, 5]
        arena[ob + P_FLAGS] = flags
        _append(arena, slot, _side_ix(flags & 0xFF), level)
        _index_insert(arena, orders[k, 0], slot)
    return 0


@njit(cache=True)
def collect_accounts(arena, out):
    """Fill ``out`` (``int64[n, 5]``, n at least ``arena[H_PINNED]``) with every account
    that has limits or a kill switch of its own: account, max order qty, max notional,
    max open orders, killed. Returns the number of rows (in record order: sort them for
    anything compared)."""
    k = 0
    for rec in range(arena[H_ACCOUNT_SLOTS]):
        ab = _account_base(arena, rec)
        if arena[ab + A_IN_USE] and _pinned(arena, ab):
            out[k, 0] = arena[ab + A_ACCOUNT]
            out[k, 1] = arena[ab + A_MAX_QTY]
            out[k, 2] = arena[ab + A_MAX_NOTIONAL]
            out[k, 3] = arena[ab + A_MAX_OPEN]
            out[k, 4] = arena[ab + A_KILLED]
            k += 1
    return k


@njit(cache=True)
def load_accounts(arena, rows, count):
    """Give the accounts of ``rows[:count]`` (as ``collect_accounts`` writes them) their
    limits in a book with no orders yet; used to restore a snapshot. Returns 0, or -1
    for a damaged row or more rows than ``RISK_ACCOUNTS``."""
    if count > RISK_ACCOUNTS:
        return -1
    for k in range(count):
        if rows[k, 1] < 0 or rows[k, 2] < 0 or rows[k, 3] < 0 or not 0 <= rows[k, 4] <= 1:
            return -1
        rec = _account_get(arena, rows[k, 0])
        if rec < 0:
            return -1
        ab = _account_base(arena, rec)
        was_pinned = _pinned(arena, ab)
        arena[ab + A_MAX_QTY] = rows[k, 1]
        arena[ab + A_MAX_NOTIONAL] = rows[k, 2]
        arena[ab + A_MAX_OPEN] = rows[k, 3]
        arena[ab + A_KILLED] = rows[k, 4]
        arena[H_PINNED] += int(_pinned(arena, ab)) - int(was_pinned)
    return 0


def warm_up() -> float:
    """Compile (first start) or load from numba's cache (later starts) every kernel by
    running a tiny book through all of them. Returns the seconds it took; call before a
    process reports ready."""
    started = time.perf_counter()
    arena = make_book(levels=8, capacity=4, price_min=1, tick=1, max_qty=100, stp=STP_CANCEL_OLDEST, symbol_word=0)
    commands = np.zeros(8, COMMAND)
    commands["msg_type"] = [MSG_RISK, MSG_NEW, MSG_NEW, MSG_REPLACE, MSG_CANCEL, MSG_MASS_CANCEL, MSG_DISCONNECT, MSG_RISK]  # fmt: skip
    commands["side"] = [LIMIT_QTY, SIDE_BUY, SIDE_SELL, 0, 0, 0, 0, LIMIT_KILL]
    commands["order_type"] = [0, TYPE_LIMIT, TYPE_LIMIT, 0, 0, 0, 0, 0]
    commands["tif"] = [0, TIF_GTC, TIF_FOK, 0, 0, 0, 0, 0]
    commands["order_id"] = [7, 1, 2, 1, 1, 0, 0, 7]
    commands["account"] = [0, 7, 0, 7, 7, 7, 7, 0]
    commands["price"] = [10, 3, 3, 4, 0, 0, 0, 1]
    commands["qty"] = [0, 5, 1, 4, 0, 0, 0, 0]
    events = np.zeros(64, EVENT)
    match_batch(
        arena, commands.view(np.int64).reshape(-1, COMMAND_WORDS), 0, events.view(np.int64).reshape(-1, EVENT_WORDS)
    )
    check_book(arena)
    collect_depth(arena, 0, 4, np.zeros((4, 3), np.int64))
    orders = np.zeros((4, 8), np.int64)
    count = collect_orders(arena, orders)
    accounts = np.zeros((4, 5), np.int64)
    pinned = collect_accounts(arena, accounts)
    fresh = make_book(levels=8, capacity=4, price_min=1, tick=1, max_qty=100, stp=STP_OFF, symbol_word=0)
    load_accounts(fresh, accounts, pinned)
    load_orders(fresh, orders, count)
    return time.perf_counter() - started
