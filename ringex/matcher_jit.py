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
  pairs of (order id, pool slot) with slot -1 for an empty bucket.

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

from ringex.codes import EventKind, EventReason, Op, OrderType, Side, Stp, Tif
from ringex.records import COMMAND, EVENT

__all__ = [
    "make_book",
    "arena_words",
    "match_batch",
    "check_book",
    "collect_orders",
    "collect_depth",
    "load_orders",
    "warm_up",
    "CHECK_MESSAGES",
]

ARENA_MAGIC = 0x52494E47424F4F4B  # "RINGBOOK"
ARENA_VERSION = 1

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
HEADER_WORDS = 32

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
P_FLAGS = 7
ORDER_WORDS = 8

# ---- codes (ringex.codes, copied into plain ints: numba freezes module globals) -----
MSG_NEW = int(Op.NEW)
MSG_CANCEL = int(Op.CANCEL)
MSG_REPLACE = int(Op.REPLACE)
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

R_NONE = int(EventReason.NONE)
R_USER_REQUEST = int(EventReason.USER_REQUEST)
R_IOC_REMAINDER = int(EventReason.IOC_REMAINDER)
R_FOK_UNFILLED = int(EventReason.FOK_UNFILLED)
R_SELF_TRADE = int(EventReason.SELF_TRADE)
R_NO_LIQUIDITY = int(EventReason.NO_LIQUIDITY)
R_UNKNOWN_ORDER = int(EventReason.UNKNOWN_ORDER)
R_NOT_OWNER = int(EventReason.NOT_OWNER)
R_BOOK_FULL = int(EventReason.BOOK_FULL)
R_WOULD_TRADE = int(EventReason.WOULD_TRADE)
R_BAD_PRICE = int(EventReason.BAD_PRICE)
R_BAD_QTY = int(EventReason.BAD_QTY)
R_BAD_ORDER_TYPE = int(EventReason.BAD_ORDER_TYPE)
R_DUPLICATE_ORDER_ID = int(EventReason.DUPLICATE_ORDER_ID)

STP_OFF = int(Stp.OFF)
STP_CANCEL_NEWEST = int(Stp.CANCEL_NEWEST)
STP_CANCEL_OLDEST = int(Stp.CANCEL_OLDEST)
STP_CANCEL_BOTH = int(Stp.CANCEL_BOTH)

# A command emits at most one event per resting order it meets (a trade or a
# self-trade cancel) plus: REPLACED first, and a final ACCEPTED/CANCELLED (two with
# cancel_both). 3 covers that with one to spare.
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
    return HEADER_WORDS + 2 * levels * LEVEL_WORDS + capacity * ORDER_WORDS + 2 * _index_size(capacity)


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
    off_ladder = HEADER_WORDS
    off_pool = off_ladder + 2 * levels * LEVEL_WORDS
    off_index = off_pool + capacity * ORDER_WORDS
    arena = np.zeros(off_index + 2 * index_size, dtype=np.int64)
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
    ladder = arena[off_ladder:off_pool].reshape(2 * levels, LEVEL_WORDS)
    ladder[:, L_HEAD] = -1
    ladder[:, L_TAIL] = -1
    pool = arena[off_pool:off_index].reshape(capacity, ORDER_WORDS)
    pool[:, P_LEVEL] = -1
    pool[:, P_PREV] = -1
    pool[:, P_NEXT] = np.arange(1, capacity + 1)
    pool[-1, P_NEXT] = -1
    arena[off_index + 1 :: 2] = -1
    return arena


# =====================================================================================
# order-id index
# =====================================================================================


@njit(cache=True, inline="always")
def _home(key, mask):
    h = key * HASH_MULT
    return (h ^ (h >> 32)) & mask


@njit(cache=True)
def _index_find(arena, key):
    """Pool slot of the live order ``key``, or -1."""
    off = arena[H_OFF_INDEX]
    mask = arena[H_INDEX_MASK]
    b = _home(key, mask)
    while True:
        slot = arena[off + 2 * b + 1]
        if slot < 0:
            return -1
        if arena[off + 2 * b] == key:
            return slot
        b = (b + 1) & mask


@njit(cache=True)
def _index_insert(arena, key, slot):
    off = arena[H_OFF_INDEX]
    mask = arena[H_INDEX_MASK]
    b = _home(key, mask)
    while arena[off + 2 * b + 1] >= 0:
        b = (b + 1) & mask
    arena[off + 2 * b] = key
    arena[off + 2 * b + 1] = slot


@njit(cache=True)
def _index_delete(arena, key):
    """Remove ``key``; later entries of its probe run shift back into the hole."""
    off = arena[H_OFF_INDEX]
    mask = arena[H_INDEX_MASK]
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


@njit(cache=True, inline="always")
def _word0(kind, side, reason, order_type, tif):
    return kind | (side << 8) | (reason << 16) | (order_type << 24) | (tif << 32)


@njit(cache=True)
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


@njit(cache=True)
def _emit_command(arena, ev, n, cmd, seq, kind, reason, qty, remaining):
    """An event about the command itself: its ids and fields as it gave them."""
    w0 = cmd[0]
    word0 = _word0(kind, (w0 >> 8) & 0xFF, reason, (w0 >> 16) & 0xFF, (w0 >> 24) & 0xFF)
    return _emit(arena, ev, n, word0, seq, cmd[7], cmd[3], cmd[2], cmd[6], cmd[4], qty, remaining, 0, 0, 0, 0, 0)


@njit(cache=True)
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


@njit(cache=True)
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
        n = _emit(
            arena, ev, n, t_word0, seq, ts, oid, coid, acct, price_min + best * tick, fill, qty,
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
    # Checked before matching so a rejected order has had no effect at all.
    if rests and arena[H_COUNT_BID] + arena[H_COUNT_ASK] >= arena[H_CAPACITY]:
        return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_BOOK_FULL, qty, 0)
    side_ix = _side_ix(side)
    opp_best = arena[H_BEST_BID + 1 - side_ix]
    if tif == TIF_POST_ONLY and opp_best >= 0:
        if (side_ix == 0 and opp_best <= level) or (side_ix == 1 and opp_best >= level):
            return _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_WOULD_TRADE, qty, 0)
    if tif == TIF_FOK and not _fok_fillable(arena, side_ix, level, is_market, qty, acct):
        return _emit_command(arena, ev, n, cmd, seq, EV_CANCELLED, R_FOK_UNFILLED, qty, 0)
    t_word0 = _word0(EV_TRADE, side, 0, order_type, tif)
    rem, n, stopped = _take(arena, ev, n, seq, ts, t_word0, side_ix, level, is_market, qty, oid, coid, acct)
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
    slot = _alloc(arena)
    ob = _order_base(arena, slot)
    arena[ob + P_ORDER_ID] = oid
    arena[ob + P_CLIENT_ORDER_ID] = coid
    arena[ob + P_ACCOUNT] = acct
    arena[ob + P_QTY] = rem
    arena[ob + P_FLAGS] = side | (order_type << 8) | (tif << 16)
    _append(arena, slot, side_ix, level)
    _index_insert(arena, oid, slot)
    return _emit_order(arena, ev, n, slot, seq, ts, EV_ACCEPTED, R_NONE, coid, rem, rem)


@njit(cache=True)
def _owned_order(arena, cmd, seq, ev, n):
    """The pool slot of the order a cancel/replace targets, or -1 after emitting a reject."""
    slot = _index_find(arena, cmd[3])
    if slot < 0:
        return -1, _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_UNKNOWN_ORDER, cmd[5], 0)
    if arena[_order_base(arena, slot) + P_ACCOUNT] != cmd[6]:
        return -1, _emit_command(arena, ev, n, cmd, seq, EV_REJECTED, R_NOT_OWNER, cmd[5], 0)
    return slot, n


@njit(cache=True)
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


@njit(cache=True)
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
                out[k, 3] = arena[ob + P_FLAGS]
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
    order) in an empty book; used to restore a snapshot. Returns 0, or -1 if a row is
    out of the band or the pool is full (a damaged snapshot)."""
    for k in range(count):
        if arena[H_FREE_HEAD] < 0:
            return -1
        flags = orders[k, 3]
        level = _price_level(arena, orders[k, 4])
        if level < 0 or orders[k, 5] <= 0:
            return -1
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


def warm_up() -> float:
    """Compile (first start) or load from numba's cache (later starts) every kernel by
    running a tiny book through all of them. Returns the seconds it took; call before a
    process reports ready."""
    started = time.perf_counter()
    arena = make_book(levels=8, capacity=4, price_min=1, tick=1, max_qty=100, stp=STP_CANCEL_OLDEST, symbol_word=0)
    commands = np.zeros(4, COMMAND)
    commands["msg_type"] = [MSG_NEW, MSG_NEW, MSG_REPLACE, MSG_CANCEL]
    commands["side"] = [SIDE_BUY, SIDE_SELL, 0, 0]
    commands["order_type"] = [TYPE_LIMIT, TYPE_LIMIT, 0, 0]
    commands["tif"] = [TIF_GTC, TIF_FOK, 0, 0]
    commands["order_id"] = [1, 2, 1, 1]
    commands["price"] = [3, 3, 4, 0]
    commands["qty"] = [5, 1, 4, 0]
    events = np.zeros(64, EVENT)
    match_batch(
        arena, commands.view(np.int64).reshape(-1, COMMAND_WORDS), 0, events.view(np.int64).reshape(-1, EVENT_WORDS)
    )
    check_book(arena)
    collect_depth(arena, 0, 4, np.zeros((4, 3), np.int64))
    orders = np.zeros((4, 8), np.int64)
    count = collect_orders(arena, orders)
    load_orders(
        make_book(levels=8, capacity=4, price_min=1, tick=1, max_qty=100, stp=STP_OFF, symbol_word=0), orders, count
    )
    return time.perf_counter() - started
