"""Mass cancel, cancel-on-disconnect and pre-trade risk in the book, against the reference.

Every case runs through both the jitted ``Matcher`` and ``ReferenceBook`` (``Both``), so
the events are checked against rules written out plainly, and ``Matcher.validate``
(which also checks every account's open-order count) runs after every batch. The random
streams mix limit changes, kill switches and mass cancels into ordinary trading, and the
snapshot cases check that a restored book takes the same decisions.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.book_cases import (
    Both,
    batch,
    buy,
    cancel,
    command,
    disconnect,
    kinds,
    mass_cancel,
    replace,
    sell,
    set_limit,
)
from support.reference_book import RISK_ACCOUNTS

from ringex import matcher_jit as jit
from ringex.codes import EventKind, EventReason, Op, OrderType, RiskLimit, Side, Tif
from ringex.config import SymbolSpec
from ringex.engine.matcher import SNAPSHOT_MAGIC, Matcher

QUICK = os.environ.get("RINGEX_QUICK") == "1"
SPEC = SymbolSpec("ACME", tick=1, price_min=50, price_max=150, capacity=64)
R = EventReason

# ---- mass cancel and cancel-on-disconnect ----------------------------------------------


def test_mass_cancel_cancels_only_the_accounts_orders_in_priority_order_and_counts_them():
    book = Both(SPEC)
    book.run(buy(1, 99, 5, account=1), buy(2, 100, 5, account=2), buy(3, 100, 5, account=1), sell(4, 101, 5, account=1))
    ev = book.run(mass_cancel(1))
    assert kinds(ev) == [("C", R.MASS_CANCEL)] * 3 + [("M", R.MASS_CANCEL)]
    assert ev["order_id"][:3].tolist() == [3, 1, 4]  # best bid first, then the ask
    summary = ev[-1]
    assert (summary["qty"], summary["account"], summary["client_order_id"]) == (3, 1, 77)
    assert book.matcher.resting_orders()["order_id"].tolist() == [2]


@pytest.mark.parametrize(("side", "left"), [(Side.BUY, [4]), (Side.SELL, [3, 1])])
def test_mass_cancel_of_one_side(side, left):
    book = Both(SPEC)
    book.run(buy(1, 99, 5), buy(3, 100, 5), sell(4, 101, 5))
    ev = book.run(mass_cancel(1, side=side))
    assert ev[-1]["kind"] == EventKind.MASS_CANCELLED and ev[-1]["side"] == side
    assert book.matcher.resting_orders()["order_id"].tolist() == left


def test_mass_cancel_with_nothing_to_cancel_still_answers_and_a_bad_side_is_rejected():
    book = Both(SPEC)
    assert kinds(book.run(mass_cancel(5))) == [("M", R.MASS_CANCEL)]
    assert kinds(book.run(mass_cancel(5, side=ord("Q")))) == [("J", R.BAD_ORDER_TYPE)]


def test_cancel_on_disconnect_cancels_everything_and_is_silent_when_there_was_nothing():
    book = Both(SPEC)
    book.run(buy(1, 99, 5, account=3), sell(2, 120, 5, account=3))
    ev = book.run(disconnect(3))
    assert kinds(ev) == [("C", R.DISCONNECT), ("C", R.DISCONNECT), ("M", R.DISCONNECT)]
    assert len(book.run(disconnect(3))) == 0
    assert book.matcher.order_count() == 0


def test_mass_cancel_frees_the_book_and_a_filled_order_is_not_cancelled():
    book = Both(SPEC)
    book.run(buy(1, 100, 5, account=1), buy(2, 99, 5, account=1))
    book.run(sell(3, 100, 5, account=2))  # fills order 1 completely
    ev = book.run(mass_cancel(1))
    assert ev["order_id"][:-1].tolist() == [2] and ev[-1]["qty"] == 1


# ---- pre-trade risk: each limit ---------------------------------------------------------


def test_max_order_qty_of_the_symbol_and_of_an_account_the_tighter_wins():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.MAX_ORDER_QTY, 10))
    assert kinds(book.run(buy(1, 100, 11))) == [("J", R.RISK_MAX_QTY)]
    book.run(set_limit(RiskLimit.MAX_ORDER_QTY, 4, target=1))
    assert kinds(book.run(buy(2, 100, 5, account=1))) == [("J", R.RISK_MAX_QTY)]
    assert kinds(book.run(buy(3, 100, 5, account=2))) == [("A", 0)]  # only account 1 is held to 4
    book.run(set_limit(RiskLimit.MAX_ORDER_QTY, 0))  # the symbol's limit gone, the account's stays
    assert kinds(book.run(buy(4, 100, 50, account=2), buy(5, 100, 5, account=1))) == [("A", 0), ("J", R.RISK_MAX_QTY)]


def test_max_notional_counts_price_times_qty_and_prices_a_market_order_at_the_last_trade():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.MAX_NOTIONAL, 1000, target=1))
    assert kinds(book.run(buy(1, 100, 10, account=1))) == [("A", 0)]  # 1000: at the limit
    assert kinds(book.run(buy(2, 101, 10, account=1))) == [("J", R.RISK_MAX_NOTIONAL)]
    book.run(sell(3, 120, 20, account=2), buy(4, 120, 1, account=2))  # last trade at 120
    market = buy(5, 0, 9, account=1, tif=Tif.IOC, order_type=OrderType.MARKET)
    assert kinds(book.run(market)) == [("J", R.RISK_MAX_NOTIONAL)]  # 9 x 120 > 1000
    market = buy(6, 0, 8, account=1, tif=Tif.IOC, order_type=OrderType.MARKET)
    assert kinds(book.run(market))[0] == ("T", 0)


def test_a_market_order_with_no_reference_is_priced_at_the_best_opposite_price():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.MAX_NOTIONAL, 500), sell(1, 60, 8, account=2))
    market = buy(2, 0, 9, tif=Tif.IOC, order_type=OrderType.MARKET)
    assert kinds(book.run(market)) == [("J", R.RISK_MAX_NOTIONAL)]  # 9 x 60 = 540
    market = buy(3, 0, 8, tif=Tif.IOC, order_type=OrderType.MARKET)
    assert kinds(book.run(market)) == [("T", 0)]
    assert kinds(book.run(sell(4, 60, 9, account=2))) == [("J", R.RISK_MAX_NOTIONAL)]


def test_price_collar_around_the_reference_price_then_around_the_last_trade():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.COLLAR_BPS, 1000), set_limit(RiskLimit.REFERENCE_PRICE, 100))  # 10% of 100
    assert kinds(book.run(buy(1, 111, 1))) == [("J", R.RISK_PRICE_COLLAR)]
    assert kinds(book.run(sell(2, 89, 1))) == [("J", R.RISK_PRICE_COLLAR)]
    assert kinds(book.run(buy(3, 110, 1), sell(4, 90, 1, account=2))) == [("A", 0), ("T", 0)]
    assert book.matcher.last_price == 110  # the collar now centres on 110: 99..121
    assert kinds(book.run(sell(5, 98, 1, account=2))) == [("J", R.RISK_PRICE_COLLAR)]
    assert kinds(book.run(buy(6, 121, 1))) == [("A", 0)]


def test_a_market_order_only_sweeps_as_far_as_the_collar():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.COLLAR_BPS, 500), set_limit(RiskLimit.REFERENCE_PRICE, 100))  # 95..105
    book.run(sell(1, 104, 2, account=2), sell(2, 105, 2, account=2), sell(3, 106, 2, account=2))
    ev = book.run(buy(4, 0, 10, tif=Tif.IOC, order_type=OrderType.MARKET))
    assert kinds(ev) == [("T", 0), ("T", 0), ("C", R.NO_LIQUIDITY)]
    assert ev["price"][:2].tolist() == [104, 105] and ev[-1]["qty"] == 6
    fok = buy(5, 0, 2, tif=Tif.FOK, order_type=OrderType.MARKET)  # 106 is beyond the collar now centred on 105
    assert kinds(book.run(fok)) == [("T", 0)]
    fok = buy(6, 0, 1, tif=Tif.FOK, order_type=OrderType.MARKET)
    assert kinds(book.run(fok)) == [("C", R.FOK_UNFILLED)]


def test_max_open_orders_counts_resting_orders_per_account_and_ioc_does_not_count():
    book = Both(SPEC)
    book.run(set_limit(RiskLimit.MAX_OPEN_ORDERS, 2))
    assert kinds(book.run(buy(1, 90, 1), buy(2, 91, 1))) == [("A", 0), ("A", 0)]
    assert kinds(book.run(buy(3, 92, 1))) == [("J", R.RISK_MAX_OPEN_ORDERS)]
    assert kinds(book.run(sell(4, 140, 1, tif=Tif.IOC))) == [("C", R.IOC_REMAINDER)]
    assert kinds(book.run(buy(5, 92, 1, account=2))) == [("A", 0)]  # per account
    book.run(cancel(1))
    assert kinds(book.run(buy(6, 92, 1))) == [("A", 0)]
    book.run(sell(7, 91, 2, account=3))  # fills order 5 (first at 92), then 6: one open order left
    assert kinds(book.run(buy(8, 93, 1))) == [("A", 0)]


def test_kill_switch_cancels_everything_refuses_new_orders_until_released():
    book = Both(SPEC)
    book.run(buy(1, 90, 1, account=4), sell(2, 130, 1, account=4), buy(3, 91, 1, account=5))
    ev = book.run(set_limit(RiskLimit.KILL_SWITCH, 1, target=4, operator=9))
    assert kinds(ev) == [("C", R.KILL_SWITCH), ("C", R.KILL_SWITCH), ("L", 0)]
    done = ev[-1]
    assert (chr(done["side"]), done["account"], done["price"], done["qty"], done["contra_account"]) == ("K", 4, 1, 2, 9)
    assert kinds(book.run(buy(4, 90, 1, account=4), buy(5, 90, 1, account=5))) == [("J", R.RISK_KILL_SWITCH), ("A", 0)]
    book.run(set_limit(RiskLimit.KILL_SWITCH, 0, target=4))
    assert kinds(book.run(buy(6, 90, 1, account=4))) == [("A", 0)]


def test_replace_is_held_to_the_quantity_notional_and_collar_limits_but_not_to_open_orders():
    book = Both(SPEC)
    book.run(buy(1, 100, 5), set_limit(RiskLimit.MAX_OPEN_ORDERS, 1), set_limit(RiskLimit.MAX_ORDER_QTY, 8))
    assert kinds(book.run(replace(1, 100, 9))) == [("J", R.RISK_MAX_QTY)]
    assert kinds(book.run(replace(1, 101, 8))) == [("R", 0)]
    book.run(set_limit(RiskLimit.MAX_NOTIONAL, 800))
    assert kinds(book.run(replace(1, 101, 8))) == [("J", R.RISK_MAX_NOTIONAL)]
    book.run(set_limit(RiskLimit.COLLAR_BPS, 100), set_limit(RiskLimit.REFERENCE_PRICE, 100))
    assert kinds(book.run(replace(1, 98, 2))) == [("R", 0)]
    assert kinds(book.run(replace(1, 102, 2))) == [("J", R.RISK_PRICE_COLLAR)]
    assert book.matcher.resting_orders()["price"].tolist() == [98]


def test_clear_removes_every_limit_but_no_kill_switch():
    book = Both(SPEC)
    book.run(
        set_limit(RiskLimit.MAX_ORDER_QTY, 1),
        set_limit(RiskLimit.MAX_ORDER_QTY, 1, target=2),
        set_limit(RiskLimit.KILL_SWITCH, 1, target=3),
    )
    book.run(set_limit(RiskLimit.CLEAR, 0))
    assert book.matcher.symbol_limits()["max_order_qty"] == 0
    limits = book.matcher.account_limits()
    assert limits["account"].tolist() == [3] and limits["killed"].tolist() == [True]
    assert kinds(book.run(buy(1, 100, 5, account=2), buy(2, 100, 5, account=3))) == [
        ("A", 0),
        ("J", R.RISK_KILL_SWITCH),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        set_limit(RiskLimit.COLLAR_BPS, 100, target=1),  # a symbol's limit given an account
        set_limit(RiskLimit.KILL_SWITCH, 1, target=0),  # an account's limit given none
        set_limit(RiskLimit.KILL_SWITCH, 2, target=1),
        set_limit(RiskLimit.MAX_ORDER_QTY, -1),
        set_limit(RiskLimit.CLEAR, 1),
        set_limit(ord("?"), 1),
    ],
)
def test_a_malformed_limit_is_rejected_and_changes_nothing(bad):
    book = Both(SPEC)
    before = book.matcher.state_hash()
    assert kinds(book.run(bad)) == [("J", R.BAD_ORDER_TYPE)]
    book.matcher._arena[jit.H_LAST_SEQ] = -1  # only the sequence moved
    assert book.matcher.state_hash() == before


def test_the_table_of_accounts_with_limits_is_bounded_and_says_so():
    spec = SymbolSpec("ACME", price_min=50, price_max=150, capacity=8)
    m = Matcher(spec)
    m.apply(batch([set_limit(RiskLimit.MAX_ORDER_QTY, 5, target=a) for a in range(1, RISK_ACCOUNTS + 1)]), 0)
    ev = m.apply(batch([set_limit(RiskLimit.MAX_ORDER_QTY, 5, target=RISK_ACCOUNTS + 1)]), RISK_ACCOUNTS)
    assert kinds(ev) == [("J", R.RISK_TABLE_FULL)]
    # an account with limits may still change them, and orders of anyone still rest
    ev = m.apply(batch([set_limit(RiskLimit.MAX_ORDER_QTY, 7, target=1)]), RISK_ACCOUNTS + 1)
    assert kinds(ev) == [("L", 0)]
    orders = [buy(i, 60 + i, 1, account=10_000 + i) for i in range(1, 9)]
    assert kinds(m.apply(batch(orders), RISK_ACCOUNTS + 2)) == [("A", 0)] * 8
    m.validate()


def test_account_records_are_recycled_when_many_accounts_come_and_go():
    spec = SymbolSpec("ACME", price_min=50, price_max=150, capacity=4)
    book = Both(spec)
    oid = 1
    for round_ in range(3):
        # more distinct accounts than the book has records, each resting and leaving
        cmds = []
        for account in range(1, 2 * (spec.capacity + RISK_ACCOUNTS) // 3):
            cmds += [buy(oid, 60, 1, account=account + round_), cancel(oid, account=account + round_)]
            oid += 1
        book.run(*cmds)
    book.run(set_limit(RiskLimit.MAX_OPEN_ORDERS, 1), buy(oid, 60, 1, account=1), buy(oid + 1, 61, 1, account=1))


# ---- random streams against the reference -----------------------------------------------

LIMITS = [
    RiskLimit.MAX_ORDER_QTY,
    RiskLimit.MAX_NOTIONAL,
    RiskLimit.MAX_OPEN_ORDERS,
    RiskLimit.COLLAR_BPS,
    RiskLimit.REFERENCE_PRICE,
    RiskLimit.KILL_SWITCH,
    RiskLimit.CLEAR,
]


@st.composite
def risky_stream(draw):
    tick = draw(st.sampled_from([1, 2, 5]))
    capacity = draw(st.integers(1, 12))
    stp = draw(st.sampled_from(["off", "cancel_oldest"]))
    spec = SymbolSpec("S", tick=tick, price_min=100, price_max=100 + 20 * tick, max_qty=60, capacity=capacity, stp=stp)
    cmds, placed, next_id = [], [], 1
    for _ in range(draw(st.integers(1, 150))):
        account = draw(st.integers(1, 4))
        op = draw(st.sampled_from(["new"] * 6 + ["cancel", "replace", "mass", "disconnect", "limit", "limit"]))
        price = spec.price_min + draw(st.integers(0, spec.levels - 1)) * spec.tick
        qty = draw(st.integers(1, 25))
        if op == "new":
            market = draw(st.integers(0, 5)) == 0
            tif = draw(st.sampled_from([Tif.IOC, Tif.FOK] if market else [Tif.GTC, Tif.GTC, Tif.IOC, Tif.POST_ONLY]))
            side = draw(st.sampled_from([Side.BUY, Side.SELL]))
            otype = OrderType.MARKET if market else OrderType.LIMIT
            cmds.append(command(Op.NEW, next_id, account, side, otype, tif, 0 if market else price, qty, ts=next_id))
            placed.append((next_id, account))
        elif op in ("cancel", "replace") and placed:
            oid, owner = draw(st.sampled_from(placed[-6:]))
            if op == "cancel":
                cmds.append(cancel(oid, account=owner))
            else:
                cmds.append(replace(oid, price, qty, account=owner))
        elif op == "mass":
            cmds.append(mass_cancel(account, side=draw(st.sampled_from([0, Side.BUY, Side.SELL]))))
        elif op == "disconnect":
            cmds.append(disconnect(account))
        elif op == "limit":
            limit = draw(st.sampled_from(LIMITS))
            if limit in (RiskLimit.COLLAR_BPS, RiskLimit.REFERENCE_PRICE, RiskLimit.CLEAR):
                target = 0
            elif limit == RiskLimit.KILL_SWITCH:
                target = account
            else:
                target = draw(st.sampled_from([0, account]))
            value = {
                RiskLimit.MAX_ORDER_QTY: draw(st.integers(0, 30)),
                RiskLimit.MAX_NOTIONAL: draw(st.integers(0, 3000)),
                RiskLimit.MAX_OPEN_ORDERS: draw(st.integers(0, 4)),
                RiskLimit.COLLAR_BPS: draw(st.sampled_from([0, 100, 500, 1500])),
                RiskLimit.REFERENCE_PRICE: draw(st.sampled_from([0, price])),
                RiskLimit.KILL_SWITCH: draw(st.integers(0, 1)),
                RiskLimit.CLEAR: 0,
            }[limit]
            cmds.append(set_limit(limit, value, target=target))
        next_id += 1
    sizes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=20))
    return spec, cmds, sizes


@settings(
    max_examples=40 if QUICK else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(risky_stream())
def test_random_streams_with_limits_and_mass_cancels_match_the_reference(stream):
    spec, cmds, sizes = stream
    book = Both(spec)
    at, k = 0, 0
    while at < len(cmds):
        n = sizes[k % len(sizes)]
        book.run(*cmds[at : at + n])
        at += n
        k += 1


# ---- snapshots ----------------------------------------------------------------------------


def risky_commands(seed: int, n: int, spec: SymbolSpec) -> np.ndarray:
    """Trading with limits, kill switches and mass cancels mixed in."""
    rng = random.Random(seed)
    out, live = [], []
    for oid in range(1, n + 1):
        r = rng.random()
        account = rng.randint(1, 6)
        price = rng.randint(spec.price_min, spec.price_max)
        if r < 0.03:
            limit = rng.choice([RiskLimit.MAX_ORDER_QTY, RiskLimit.MAX_NOTIONAL, RiskLimit.MAX_OPEN_ORDERS])
            out.append(set_limit(limit, rng.choice([0, 5, 20, 800]), target=rng.choice([0, account])))
        elif r < 0.05:
            out.append(set_limit(RiskLimit.COLLAR_BPS, rng.choice([0, 300, 2000])))
        elif r < 0.06:
            out.append(set_limit(RiskLimit.KILL_SWITCH, rng.randint(0, 1), target=account))
        elif r < 0.08:
            out.append(mass_cancel(account, rng.choice([0, Side.BUY, Side.SELL])))
        elif r < 0.55 or not live:
            side = rng.choice([Side.BUY, Side.SELL])
            out.append(command(Op.NEW, oid, account, side, OrderType.LIMIT, Tif.GTC, price, rng.randint(1, 30), ts=oid))
            live.append((oid, account))
        elif r < 0.7:
            target, owner = rng.choice(live)
            out.append(cancel(target, account=owner))
        else:
            target, owner = rng.choice(live)
            out.append(replace(target, price, rng.randint(1, 30), account=owner))
    return batch(out)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_a_restored_snapshot_takes_the_same_risk_decisions_as_one_straight_run(seed):
    spec = SymbolSpec("ACME", price_min=100, price_max=140, capacity=300)
    cmds = risky_commands(seed, 4000, spec)
    straight = Matcher(spec)
    expected = straight.apply(cmds, 1).tobytes()
    refused = np.frombuffer(expected, straight._events.dtype)["reason"]
    assert {R.RISK_MAX_QTY, R.RISK_MAX_OPEN_ORDERS, R.RISK_KILL_SWITCH} <= set(refused.tolist())
    cut = random.Random(seed).randint(1, len(cmds) - 1)
    first = Matcher(spec)
    head = first.apply(cmds[:cut], 1).tobytes()
    restored = Matcher.restore(spec, first.snapshot())
    assert restored.state_hash() == first.state_hash()
    assert restored.account_limits().tolist() == first.account_limits().tolist()
    tail = restored.apply(cmds[cut:], cut + 1).tobytes()
    assert head + tail == expected
    assert restored.state_hash() == straight.state_hash()


def test_a_snapshot_of_the_version_before_risk_is_still_read():
    spec = SymbolSpec("ACME", price_min=100, price_max=140, capacity=30)
    m = Matcher(spec)
    m.apply(batch([buy(1, 101, 5), buy(2, 102, 5, account=2), sell(3, 120, 1)]), 0)
    words = np.frombuffer(m.snapshot(), np.int64)
    count = int(words[2])
    header = words[4 : 4 + jit.HEADER_WORDS]
    # version 1: magic, version, order count, a 32-word header, then the orders
    v1 = np.concatenate([[SNAPSHOT_MAGIC, 1, count], header[:32], words[4 + jit.HEADER_WORDS :][: 8 * count]])
    restored = Matcher.restore(spec, v1.astype(np.int64).tobytes())
    assert restored.resting_orders().tolist() == m.resting_orders().tolist()
    assert Matcher.snapshot_last_seq(v1.astype(np.int64).tobytes()) == 2
    restored.validate()
