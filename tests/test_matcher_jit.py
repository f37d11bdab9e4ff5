"""The jitted book against the reference book, by hand-written cases and by random streams.

Every case runs through both ``Matcher`` and ``ReferenceBook`` and compares the event
records exactly; ``Matcher.validate`` runs after every batch.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.book_cases import Both, batch, buy, cancel, command, kinds, replace, sell

from ringex.codes import EventKind, EventReason, Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.engine.matcher import BookCorrupt, Matcher, SequenceGap
from ringex.records import EVENT

QUICK = os.environ.get("RINGEX_QUICK") == "1"


SPEC = SymbolSpec("ACME", tick=1, price_min=90, price_max=110, capacity=16)


# ---- hand-written cases ---------------------------------------------------------------


def test_incoming_sell_matches_highest_bid_first():
    book = Both(SPEC)
    book.run(buy(1, 99, 5), buy(2, 101, 5), buy(3, 100, 5))
    ev = book.run(sell(4, 95, 12, account=2))
    trades = ev[ev["kind"] == EventKind.TRADE]
    assert trades["price"].tolist() == [101, 100, 99]
    assert trades["contra_order_id"].tolist() == [2, 3, 1]
    assert trades["qty"].tolist() == [5, 5, 2]
    assert book.matcher.best_bid() == 99 and book.matcher.best_ask() is None


def test_incoming_buy_matches_lowest_ask_first_and_never_leaves_a_crossed_book():
    book = Both(SPEC)
    book.run(sell(1, 103, 5), sell(2, 101, 5), sell(3, 102, 5))
    ev = book.run(buy(4, 102, 20, account=2))
    trades = ev[ev["kind"] == EventKind.TRADE]
    assert trades["price"].tolist() == [101, 102]
    assert ev[-1]["kind"] == EventKind.ACCEPTED and ev[-1]["qty"] == 10
    assert book.matcher.best_bid() == 102 and book.matcher.best_ask() == 103


def test_time_priority_within_a_level_and_print_at_the_makers_price():
    book = Both(SPEC)
    book.run(sell(1, 100, 3), sell(2, 100, 3))
    ev = book.run(buy(3, 105, 4, account=2))
    assert [(int(e["contra_order_id"]), int(e["qty"]), int(e["price"])) for e in ev[:2]] == [(1, 3, 100), (2, 1, 100)]
    assert ev[0]["contra_remaining"] == 0 and ev[1]["contra_remaining"] == 2
    assert ev[0]["trade_id"] == 1 and ev[1]["trade_id"] == 2


def test_fok_that_cannot_fill_leaves_no_trade_and_no_trace():
    book = Both(SPEC)
    book.run(sell(1, 100, 5), sell(2, 101, 5))
    before = book.matcher.state_hash()
    ev = book.run(buy(3, 101, 11, account=2, tif=Tif.FOK))
    assert kinds(ev) == [("C", EventReason.FOK_UNFILLED)]
    assert book.matcher.state_hash() != before  # last_seq moved on...
    assert book.matcher.resting_orders()["qty"].tolist() == [5, 5]  # ...but the book did not
    ev = book.run(buy(4, 101, 10, account=2, tif=Tif.FOK))
    assert kinds(ev) == [("T", 0), ("T", 0)]


def test_fok_counts_own_orders_as_unfillable_under_self_trade_prevention():
    book = Both(SymbolSpec("ACME", price_min=90, price_max=110, capacity=16, stp="cancel_newest"))
    book.run(sell(1, 100, 5, account=7), sell(2, 101, 5, account=2))
    assert kinds(book.run(buy(3, 101, 6, account=7, tif=Tif.FOK))) == [("C", EventReason.FOK_UNFILLED)]


def test_replace_keeps_priority_only_for_same_price_smaller_qty():
    book = Both(SPEC)
    book.run(buy(1, 100, 10), buy(2, 100, 10), buy(3, 100, 10))
    book.run(replace(1, 100, 4))  # keeps its place
    assert book.matcher.resting_orders()["order_id"].tolist() == [1, 2, 3]
    book.run(replace(2, 100, 10))  # same qty: to the back
    assert book.matcher.resting_orders()["order_id"].tolist() == [1, 3, 2]
    book.run(replace(1, 100, 9))  # larger: to the back
    assert book.matcher.resting_orders()["order_id"].tolist() == [3, 2, 1]
    book.run(replace(3, 99, 1), replace(3, 100, 1))  # away and back: behind everyone
    assert book.matcher.resting_orders()["order_id"].tolist() == [2, 1, 3]


def test_replace_across_the_spread_trades_at_once_after_its_replaced_event():
    book = Both(SPEC)
    book.run(buy(1, 98, 5), sell(2, 102, 3, account=2))
    ev = book.run(replace(1, 103, 5))
    assert kinds(ev) == [("R", 0), ("T", 0)]
    assert ev[1]["price"] == 102 and ev[1]["remaining"] == 2 and ev[1]["order_id"] == 1
    assert book.matcher.best_bid() == 103


def test_cancel_and_replace_by_another_account_are_rejected_not_owner():
    book = Both(SPEC)
    book.run(buy(1, 100, 5, account=1))
    ev = book.run(cancel(1, account=2), replace(1, 101, 5, account=2), cancel(9), replace(9, 100, 1))
    assert kinds(ev) == [("J", EventReason.NOT_OWNER)] * 2 + [("J", EventReason.UNKNOWN_ORDER)] * 2
    assert book.matcher.resting_orders()["order_id"].tolist() == [1]


def test_post_only_that_would_trade_is_rejected():
    book = Both(SPEC)
    book.run(sell(1, 100, 5))
    assert kinds(book.run(buy(2, 100, 5, tif=Tif.POST_ONLY))) == [("J", EventReason.WOULD_TRADE)]
    assert kinds(book.run(buy(3, 99, 5, tif=Tif.POST_ONLY))) == [("A", 0)]


def test_ioc_and_market_cancel_their_remainder():
    book = Both(SPEC)
    book.run(sell(1, 100, 5))
    assert kinds(book.run(buy(2, 100, 8, account=2, tif=Tif.IOC))) == [("T", 0), ("C", EventReason.IOC_REMAINDER)]
    book.run(sell(3, 110, 5))
    ev = book.run(buy(4, 0, 8, account=2, tif=Tif.IOC, order_type=OrderType.MARKET))
    assert kinds(ev) == [("T", 0), ("C", EventReason.NO_LIQUIDITY)] and ev[1]["qty"] == 3
    ev = book.run(sell(5, 0, 1, account=2, tif=Tif.FOK, order_type=OrderType.MARKET))
    assert kinds(ev) == [("C", EventReason.FOK_UNFILLED)]


def test_book_full_rejects_with_a_reason_and_frees_up_after_a_cancel():
    book = Both(SymbolSpec("ACME", price_min=90, price_max=110, capacity=2))
    book.run(buy(1, 100, 1), buy(2, 100, 1))
    assert kinds(book.run(buy(3, 99, 1))) == [("J", EventReason.BOOK_FULL)]
    assert kinds(book.run(sell(4, 100, 1, account=2, tif=Tif.IOC))) == [("T", 0)]  # IOC needs no slot
    assert kinds(book.run(buy(5, 99, 1))) == [("A", 0)]


@pytest.mark.parametrize(
    "stp, expected",
    [
        ("off", [("T", 0), ("T", 0)]),
        ("cancel_newest", [("C", EventReason.SELF_TRADE)]),
        ("cancel_oldest", [("C", EventReason.SELF_TRADE), ("T", 0), ("A", 0)]),
        ("cancel_both", [("C", EventReason.SELF_TRADE), ("C", EventReason.SELF_TRADE)]),
    ],
)
def test_self_trade_prevention_modes(stp, expected):
    book = Both(SymbolSpec("ACME", price_min=90, price_max=110, capacity=8, stp=stp))
    book.run(sell(1, 100, 5, account=7), sell(2, 101, 5, account=8))
    assert kinds(book.run(buy(3, 101, 8, account=7))) == expected


def test_bad_input_is_rejected_not_crashed_on():
    book = Both(SPEC)
    book.run(buy(1, 100, 5))
    bad_side = command(Op.NEW, 2, side=ord("X"), price=100, qty=1)
    unknown_op = command(ord("Z"), 3)
    ev = book.run(
        bad_side, unknown_op, buy(4, 100, 0), buy(5, 100, -3), buy(6, 111, 1), buy(7, 89, 1), buy(8, 100, 1, order_type=OrderType.MARKET),
        buy(9, 100, 1, order_type=OrderType.MARKET, tif=Tif.POST_ONLY), buy(1, 100, 1), replace(1, 100, 0), replace(1, 200, 5),
        command(Op.NEW, 10, side=Side.BUY, order_type=ord("Q"), price=100, qty=1), buy(11, 100, 2_000_000_000),
    )  # fmt: skip
    reasons = [EventReason(int(r)).name for r in ev["reason"]]
    assert reasons == ["BAD_ORDER_TYPE", "BAD_ORDER_TYPE", "BAD_QTY", "BAD_QTY", "BAD_PRICE", "BAD_PRICE", "BAD_ORDER_TYPE",
                       "BAD_ORDER_TYPE", "DUPLICATE_ORDER_ID", "BAD_QTY", "BAD_PRICE", "BAD_ORDER_TYPE", "BAD_QTY"]  # fmt: skip
    assert set(ev["kind"].tolist()) == {EventKind.REJECTED}


def test_price_off_the_tick_is_rejected():
    book = Both(SymbolSpec("ACME", tick=5, price_min=100, price_max=200))
    assert kinds(book.run(buy(1, 102, 1))) == [("J", EventReason.BAD_PRICE)]
    assert kinds(book.run(buy(2, 105, 1))) == [("A", 0)]


def test_events_carry_seq_ts_symbol_and_the_senders_ids():
    book = Both(SPEC)
    c = sell(1, 100, 5)
    c["ts_ns"] = 123
    book.run(c)
    c = buy(2, 100, 2, account=2)
    c["ts_ns"] = 456
    ev = book.run(c)
    assert ev[0]["seq"] == 2 and ev[0]["ts_ns"] == 456 and ev[0]["symbol"] == b"ACME"
    assert (ev[0]["account"], ev[0]["client_order_id"], ev[0]["contra_account"], ev[0]["contra_client_order_id"]) == (
        2,
        2007,
        1,
        1007,
    )


def test_a_batch_must_follow_the_last_sequence():
    m = Matcher(SPEC)
    m.apply(batch([buy(1, 100, 1)]), 5)
    with pytest.raises(SequenceGap):
        m.apply(batch([buy(2, 100, 1)]), 7)
    m.apply(batch([buy(2, 100, 1)]), 6)
    assert m.last_seq == 6


def test_event_buffer_grows_when_a_batch_sweeps_the_whole_book():
    spec = SymbolSpec("ACME", price_min=1, price_max=5000, capacity=5001)
    m = Matcher(spec)
    m.apply(batch([sell(i, i, 1) for i in range(1, 5001)]), 1)
    ev = m.apply(batch([buy(9999, 5000, 6000, account=2)]), 5001)
    assert len(ev) == 5001 and ev[-1]["kind"] == EventKind.ACCEPTED and ev[-1]["qty"] == 1000
    m.validate()


def test_validate_notices_corruption():
    m = Matcher(SPEC)
    m.apply(batch([buy(1, 100, 5), buy(2, 101, 5)]), 1)
    m.validate()
    from ringex import matcher_jit as jit

    m._arena[jit.H_BEST_BID] = 0
    with pytest.raises(BookCorrupt, match="best bid"):
        m.validate()


def test_depth_and_best_prices():
    book = Both(SPEC)
    book.run(buy(1, 100, 5), buy(2, 100, 3), buy(3, 98, 1), sell(4, 103, 2, account=2), sell(5, 110, 9, account=2))
    assert book.matcher.depth(5) == {"bids": [(100, 8, 2), (98, 1, 1)], "asks": [(103, 2, 1), (110, 9, 1)]}
    assert book.matcher.depth(1) == {"bids": [(100, 8, 2)], "asks": [(103, 2, 1)]}


# ---- random streams against the reference ---------------------------------------------

STP_MODES = ["off", "cancel_newest", "cancel_oldest", "cancel_both"]


@st.composite
def market_scenario(draw):
    n_symbols = draw(st.integers(1, 3))
    specs = []
    for i in range(n_symbols):
        tick = draw(st.sampled_from([1, 2, 5]))
        price_min = draw(st.integers(1, 50)) * tick
        levels = draw(st.integers(1, 8))
        specs.append(
            SymbolSpec(f"S{i}", tick=tick, price_min=price_min, price_max=price_min + (levels - 1) * tick,
                       max_qty=50, capacity=draw(st.integers(1, 10)), stp=draw(st.sampled_from(STP_MODES)))
        )  # fmt: skip
    streams = {spec.name: [] for spec in specs}
    placed = {}  # order id -> (symbol, account, price, qty) as first sent
    next_id = 1
    for _ in range(draw(st.integers(1, 120))):
        spec = draw(st.sampled_from(specs))
        side = draw(st.sampled_from([Side.BUY, Side.SELL]))
        # Prices mostly on the band (edges included), often on the side's passive half so
        # orders rest and queue up; sometimes just outside the band or off the tick.
        half = spec.levels // 2
        passive = (0, half) if side == Side.BUY else (spec.levels - 1 - half, spec.levels - 1)
        price = draw(
            st.one_of(
                st.integers(*passive).map(lambda k, s=spec: s.price_min + k * s.tick),
                st.integers(*passive).map(lambda k, s=spec: s.price_min + k * s.tick),
                st.sampled_from([spec.price_min, spec.price_max]),
                st.integers(0, spec.levels - 1).map(lambda k, s=spec: s.price_min + k * s.tick),
                st.sampled_from([spec.price_min - spec.tick, spec.price_max + spec.tick, spec.price_min + 1, 0]),
            )
        )
        qty = draw(st.one_of(st.integers(1, 6), st.integers(1, 20), st.sampled_from([0, -1, 51])))
        account = draw(st.integers(1, 3))
        op = draw(st.sampled_from(["new", "new", "new", "cancel", "replace", "replace", "junk"]))
        if op == "new":
            order_type = draw(st.sampled_from([OrderType.LIMIT] * 4 + [OrderType.MARKET]))
            tif = draw(st.sampled_from([Tif.GTC, Tif.GTC, Tif.GTC, Tif.IOC, Tif.FOK, Tif.POST_ONLY]))
            oid = next_id if draw(st.integers(0, 20)) else max(1, next_id - 1)  # sometimes a duplicate
            next_id += 1
            streams[spec.name].append(command(Op.NEW, oid, account, side, order_type, tif, price, qty, ts=next_id))
            placed[oid] = (spec.name, account, price, qty)
        elif op in ("cancel", "replace"):
            # mostly one of this symbol's recent orders, else any id (dead, another symbol's, unknown)
            ours = [k for k, v in placed.items() if v[0] == spec.name][-8:]
            target = draw(st.sampled_from(ours)) if ours and draw(st.integers(0, 3)) else draw(st.integers(1, next_id))
            if target in placed and draw(st.integers(0, 3)):
                _, owner, old_price, old_qty = placed[target]
                account = owner  # mostly the owner; else a random account (NOT_OWNER)
                if draw(st.booleans()):  # same price, same or smaller qty: the queue-position rule
                    price, qty = old_price, draw(st.integers(max(1, old_qty - 2), max(1, old_qty)))
            if op == "cancel":
                streams[spec.name].append(command(Op.CANCEL, target, account, coid=next_id + 10_000))
            else:
                streams[spec.name].append(
                    command(Op.REPLACE, target, account, price=price, qty=qty, coid=next_id + 10_000)
                )
        else:
            streams[spec.name].append(
                command(draw(st.sampled_from([0, Op.NEW, b"X"[0]])), next_id, account, price=price, qty=qty)
            )
        next_id += 1
    batches = {name: draw(st.lists(st.integers(1, 8), min_size=1, max_size=40)) for name in streams}
    return specs, streams, batches


@settings(
    max_examples=40 if QUICK else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(market_scenario())
def test_random_streams_give_identical_events_to_the_reference(scenario):
    specs, streams, batch_sizes = scenario
    for spec in specs:
        book = Both(spec)
        stream = streams[spec.name]
        sizes = iter(batch_sizes[spec.name] * (len(stream) + 1))
        i = 0
        while i < len(stream):
            k = next(sizes)
            book.run(*stream[i : i + k])
            i += k


# ---- determinism and snapshots ----------------------------------------------------------


def random_stream(seed, n, spec):
    rng = random.Random(seed)
    cmds, live = [], []
    for oid in range(1, n + 1):
        r = rng.random()
        price = rng.randint(spec.price_min, spec.price_max)
        account = rng.randint(1, 5)
        if r < 0.5 or not live:
            c = command(Op.NEW, oid, account, rng.choice([Side.BUY, Side.SELL]), OrderType.LIMIT,
                        rng.choice([Tif.GTC, Tif.GTC, Tif.IOC, Tif.FOK]), price, rng.randint(1, 30), ts=oid)  # fmt: skip
            live.append((oid, account))
        elif r < 0.65:
            target, acct = rng.choice(live)
            c = command(Op.CANCEL, target, acct, ts=oid)
        else:
            target, acct = rng.choice(live)
            c = command(Op.REPLACE, target, acct, price=price, qty=rng.randint(1, 30), ts=oid)
        cmds.append(c)
    return batch(cmds)


def test_same_commands_twice_give_byte_identical_events():
    spec = SymbolSpec("ACME", price_min=100, price_max=140, capacity=300, stp="cancel_oldest")
    cmds = random_stream(1, 5000, spec)
    a = Matcher(spec).apply(cmds, 1).tobytes()
    b = Matcher(spec).apply(cmds, 1).tobytes()
    assert a == b and len(a) > 5000 * EVENT.itemsize // 2


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_snapshot_restore_and_the_rest_equals_one_straight_run(seed):
    spec = SymbolSpec("ACME", price_min=100, price_max=140, capacity=300)
    cmds = random_stream(seed, 4000, spec)
    straight = Matcher(spec)
    expected = straight.apply(cmds, 1).tobytes()
    cut = random.Random(seed).randint(1, len(cmds) - 1)
    first = Matcher(spec)
    head = first.apply(cmds[:cut], 1).tobytes()
    snap = first.snapshot()
    assert Matcher.snapshot_last_seq(snap) == cut
    restored = Matcher.restore(spec, snap)
    assert restored.state_hash() == first.state_hash()
    tail = restored.apply(cmds[cut:], cut + 1).tobytes()
    assert head + tail == expected
    assert restored.state_hash() == straight.state_hash()


def test_restore_refuses_a_snapshot_of_another_spec():
    spec = SymbolSpec("ACME", price_min=100, price_max=140, capacity=30)
    snap = Matcher(spec).snapshot()
    with pytest.raises(ValueError, match="different spec"):
        Matcher.restore(SymbolSpec("ACME", price_min=100, price_max=140, capacity=30, stp="cancel_both"), snap)
    with pytest.raises(ValueError):
        Matcher.restore(spec, snap[:-8])


def test_ids_and_accounts_use_all_64_bits():
    book = Both(SPEC)
    big_id, big_account = (1 << 64) - 1, (1 << 63) + 5
    ev = book.run(buy(big_id, 100, 5, account=big_account), sell(1 << 63, 100, 2, account=1))
    assert int(ev[1]["contra_order_id"]) == big_id and int(ev[1]["contra_account"]) == big_account
    assert kinds(book.run(cancel(big_id, account=big_account))) == [("C", EventReason.USER_REQUEST)]


def test_snapshot_size_follows_the_orders_not_the_band():
    spec = SymbolSpec("ACME", price_min=1, price_max=1_000_000)
    m = Matcher(spec)
    m.apply(batch([buy(i, 1000 + i, 5) for i in range(1, 101)]), 1)
    snap = m.snapshot()
    assert len(snap) < 100 * 64 + 1024
    restored = Matcher.restore(spec, snap)
    assert restored.state_hash() == m.state_hash() and restored.depth(3) == m.depth(3)
