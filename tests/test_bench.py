"""``ringex bench``: the open-loop flow it generates, how it joins requests to market
data, and a short run of the driver against a real exchange."""

from __future__ import annotations

import numpy as np
import pytest

from ringex import bench
from ringex.codes import Side
from ringex.config import DEFAULT_SYMBOLS

SYMBOLS = [s.name for s in DEFAULT_SYMBOLS]


def test_workload_is_seeded_evenly_spaced_and_follows_the_mix():
    a = bench.make_workload(2000, 10, 3, SYMBOLS, seed=7)
    b = bench.make_workload(2000, 10, 3, SYMBOLS, seed=7)
    assert len(a) == 3 and sum(len(p.t_ns) for p in a) == 20_000
    for pa, pb in zip(a, b, strict=True):
        assert pa.frames.tobytes() == pb.frames.tobytes()
        # each session sends every 3/2000 s, in client order id order from 1
        assert np.all(np.diff(pa.t_ns) == pytest.approx(1.5e6, abs=1))
        assert pa.frames["client_order_id"].tolist() == list(range(1, len(pa.t_ns) + 1))
    kinds = np.concatenate([p.kind for p in a])
    for code, share in zip((bench.GTC, bench.IOC, bench.CANCEL, bench.REPLACE), bench.MIX.values(), strict=True):
        assert np.mean(kinds == code) == pytest.approx(share, abs=0.01)


def test_new_orders_rest_on_their_side_and_iocs_reach_through_the_mid():
    (plan,) = bench.make_workload(5000, 2, 1, SYMBOLS, seed=3)
    f = plan.frames
    gtc, ioc = plan.kind == bench.GTC, plan.kind == bench.IOC
    buy = f["side"] == Side.BUY
    assert np.all(f["price"][gtc & buy] <= plan.mid[gtc & buy])
    assert np.all(f["price"][gtc & ~buy] >= plan.mid[gtc & ~buy])
    assert np.all(f["price"][ioc & buy] >= plan.mid[ioc & buy])
    assert np.all(f["price"][ioc & ~buy] <= plan.mid[ioc & ~buy])
    assert np.all(f["price"][gtc & buy] < plan.mid[gtc & buy])
    assert np.all(f["qty"][plan.kind != bench.CANCEL] > 0)
    assert np.all(f["price"][plan.kind != bench.CANCEL] > 0)


def test_first_seen_matches_order_id_and_stamp_and_keeps_the_earliest():
    oid = np.array([10, 11, 12, 10], dtype=np.uint64)
    ts = np.array([100, 100, 200, 300], dtype=np.uint64)
    events = np.array(
        [
            [10, 100, 5000],  # request 0
            [10, 100, 4000],  # request 0 again, seen earlier
            [12, 201, 4500],  # wrong stamp: nobody's
            [10, 300, 7000],  # request 3 (the same order, replaced later)
        ],
        dtype=np.uint64,
    )
    idx, seen = bench.first_seen(oid, ts, events)
    assert idx.tolist() == [0, 3]
    assert seen.tolist() == [4000, 7000]


def test_summary_percentiles_come_from_the_histogram():
    lat = np.arange(1, 100_001, dtype=np.int64) * 1000  # 1 µs .. 100 ms
    s = bench.summarize(lat)
    assert s["count"] == 100_000
    assert s["p50"] == pytest.approx(50_000, rel=0.002)
    assert s["p99"] == pytest.approx(99_000, rel=0.002)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["p99.99"] <= s["max"]


def test_driver_measures_a_small_open_loop_run_on_a_real_exchange():
    with bench.LocalExchange("async") as target, bench.Workers() as workers:
        assert len(target.accounts) >= 2
        # the first orders after start-up stall; the sweep pays for that with a warm-up too
        # one symbol, so the few orders of a short run meet (prices spread over 650 ticks)
        # (and it fills the book, so the IOCs of the measured step find resting orders)
        bench.run_step(target, workers, bench.StepConfig(1000, 2.0, 0.2, 1), SYMBOLS)
        r = bench.run_step(target, workers, bench.StepConfig(500, 2.0, 0.5, 1, sessions=2, seed=2), SYMBOLS)
    assert r["requests"] == 1000
    assert r["acked"] == r["requests"] and r["not_acked"] == 0
    assert r["rejected"] == {}
    assert r["kinds"]["replace"] > 0 and r["kinds"]["cancel"] > 0  # targets learned from acks
    for name in ("ack", "trade", "fill"):
        lat = r["latency_us"][name]
        assert lat["count"] > 0, name
        values = [lat[k] for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max")]
        assert values == sorted(values) and values[0] > 0, (name, values)
    assert r["latency_us"]["ack"]["count"] == 1000
    assert r["requests_that_traded"] > 0 and r["trades_seen"] >= r["requests_that_traded"]
    assert set(r["cpu_percent"]) >= {"gateway", "journaler", "matcher-0", "notifier", "bench-sender", "bench-md"}
    assert {"in.journaler", "in.matcher", "out.notifier"} <= set(r["ring_lag"])
