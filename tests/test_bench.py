"""The end-to-end harness in ``perf/`` and ``ringex bench``: the open-loop flow it
generates, how it joins requests to market data and merges repeats, a tiny sweep with
its report, and the command's behaviour in and outside a checkout."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from perf import analysis, e2e, workload
from perf.workload import CANCEL, GTC, IOC, MIX, REPLACE, make_workload
from ringex.codes import Side
from ringex.config import DEFAULT_SYMBOLS

SYMBOLS = [s.name for s in DEFAULT_SYMBOLS]


##########################################################################################
# workload
##########################################################################################


def test_workload_is_seeded_evenly_spaced_and_follows_the_mix():
    a = make_workload(2000, 10, 3, SYMBOLS, seed=7)
    b = make_workload(2000, 10, 3, SYMBOLS, seed=7)
    assert len(a) == 3 and sum(len(p.t_ns) for p in a) == 20_000
    for pa, pb in zip(a, b, strict=True):
        assert pa.frames.tobytes() == pb.frames.tobytes()
        # each session sends every 3/2000 s, in client order id order from 1
        assert np.all(np.diff(pa.t_ns) == pytest.approx(1.5e6, abs=1))
        assert pa.frames["client_order_id"].tolist() == list(range(1, len(pa.t_ns) + 1))
    kinds = np.concatenate([p.kind for p in a])
    for code, share in zip((GTC, IOC, CANCEL, REPLACE), MIX.values(), strict=True):
        assert np.mean(kinds == code) == pytest.approx(share, abs=0.01)


def test_new_orders_rest_on_their_side_and_iocs_reach_through_the_mid():
    (plan,) = make_workload(5000, 2, 1, SYMBOLS, seed=3)
    f = plan.frames
    gtc, ioc = plan.kind == GTC, plan.kind == IOC
    buy = f["side"] == Side.BUY
    assert np.all(f["price"][gtc & buy] < plan.mid[gtc & buy])
    assert np.all(f["price"][gtc & ~buy] > plan.mid[gtc & ~buy])
    assert np.all(f["price"][ioc & buy] >= plan.mid[ioc & buy])
    assert np.all(f["price"][ioc & ~buy] <= plan.mid[ioc & ~buy])
    assert np.all(f["qty"][plan.kind != CANCEL] > 0)
    assert np.all(f["price"][plan.kind != CANCEL] > 0)


def test_a_tick_makes_requests_due_together_go_to_one_session():
    plans = make_workload(10_000, 1, 4, SYMBOLS, seed=1, tick_ns=500_000)
    t = np.concatenate([p.t_ns for p in plans])
    assert len(t) == 10_000 and np.all(t % 500_000 == 0)
    assert len(np.unique(t)) == 2000  # 5 requests per tick
    for i, p in enumerate(plans):
        ticks, counts = np.unique(p.t_ns // 500_000, return_counts=True)
        assert np.all(ticks % 4 == i)  # the ticks go round the sessions
        assert np.all(counts == 5)
    # below one request per tick nothing moves to another session or instant
    slow = make_workload(1000, 1, 4, SYMBOLS, seed=1, tick_ns=500_000)
    fast = make_workload(1000, 1, 4, SYMBOLS, seed=1)
    assert all(np.array_equal(a.t_ns, b.t_ns) for a, b in zip(slow, fast, strict=True))
    assert workload.KIND_NAMES[REPLACE] == "replace"


##########################################################################################
# analysis
##########################################################################################


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
    idx, seen = analysis.first_seen(oid, ts, events)
    assert idx.tolist() == [0, 3]
    assert seen.tolist() == [4000, 7000]


def test_summaries_come_from_histograms_and_repeats_merge():
    lat = np.arange(1, 100_001, dtype=np.int64) * 1000  # 1 µs .. 100 ms
    s = analysis.summarize(lat)
    assert s["count"] == 100_000
    assert s["p50"] == pytest.approx(50_000, rel=0.002)
    assert s["p99"] == pytest.approx(99_000, rel=0.002)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["p99.99"] <= s["max"]
    halves = [analysis.summarize(lat[:50_000]), analysis.summarize(lat[50_000:])]
    merged = analysis.merge(halves)
    assert merged["count"] == 100_000
    assert {k: merged[k] for k in ("p50", "p99", "max")} == {k: s[k] for k in ("p50", "p99", "max")}
    assert analysis.summarize(np.zeros(0))["count"] == 0


def test_market_data_lines_become_trades_taker_fills_and_errors():
    lines = [
        b'{"type":"trade","channel":"trades","symbol":"ACME","seq":1,"trade_id":1,"price":5,"qty":1,'
        b'"taker_side":"buy","maker_order_id":3,"taker_order_id":4,"ts_ns":99}',
        b'{"type":"fill","channel":"orders","symbol":"ACME","seq":1,"account":1,"order_id":4,"client_order_id":2,'
        b'"side":"buy","trade_id":1,"price":5,"qty":1,"remaining":0,"liquidity":"taker","ts_ns":99}',
        b'{"type":"fill","channel":"orders","symbol":"ACME","seq":2,"account":1,"order_id":3,"client_order_id":1,'
        b'"side":"sell","trade_id":1,"price":5,"qty":1,"remaining":0,"liquidity":"maker","ts_ns":99}',
        b'{"type":"error","channel":null,"symbol":null,"seq":null,"reason":"slow consumer"}',
    ]
    md = analysis.parse_md(b"\n".join(lines) + b"\n", np.array([10, 20, 30, 40]))
    assert md["trades"].tolist() == [[4, 99, 10]]
    assert md["fills"].tolist() == [[4, 99, 20]]
    assert md["errors"] == ["slow consumer"]


##########################################################################################
# a tiny sweep and its report
##########################################################################################


def test_a_sweep_alternates_repeats_and_reports_them(tmp_path, monkeypatch):
    step = e2e.StepConfig(0, seconds=0.5, warmup=0.2, symbols=1)
    runs, points, warmups = e2e.sweep(["async"], [2000], step, designs=("baseline",), repeats=2)
    assert [(r["design"], r["repeat"]) for r in runs] == [("baseline", 0), ("baseline", 1)]
    assert warmups[0]["design"] == "baseline"
    (point,) = points
    merged = point["designs"]["baseline"]
    assert merged["ack"]["count"] == sum(r["latency_us"]["ack"]["count"] for r in runs) == 2000
    assert len(merged["ack_p99_per_repeat_us"]) == 2 and not merged["saturated"]
    assert runs[0]["cpu_percent"]["baseline"] > 0 and "idle_other" not in runs[0]["cpu_percent"]
    # the report: a compare row per (mode, rate), every run, the plot
    result = {
        "machine": e2e.machine() | {"loadavg_at_end": [0.0, 0.0, 0.0]},
        "command": "test",
        "mix": MIX,
        "config": {**e2e.dataclasses.asdict(step), "repeats": 2},
        "verdicts": e2e.verdicts(points),
        "points": points,
        "exchange_warmup": warmups,
        "steps": runs,
    }
    monkeypatch.setattr(e2e, "RESULTS", tmp_path)
    section = e2e.results_section(result)
    assert section.startswith(e2e.BEGIN) and section.rstrip().endswith(e2e.END)
    assert "| async | 2,000 | - / 2,000 |" in section
    assert section.count("| async | 2,000 | baseline |") == 4  # every run, and where the time goes
    md = tmp_path / "RESULTS.md"
    md.write_text("# Performance results\n\nprose\n\n" + e2e.BEGIN + "\nold\n" + e2e.END + "\n\nmore prose\n")
    e2e.write_results_md(md, section)
    text = md.read_text()
    assert "old" not in text and "prose" in text and "more prose" in text and text.count(e2e.BEGIN) == 1
    analysis.plot(points, tmp_path / "e2e.png")
    assert (tmp_path / "e2e.png").stat().st_size > 10_000


def test_verdicts_compare_the_designs_point_by_point():
    def design(p50, p99, trade99, accepted, saturated=False):
        return {
            "ack": {"p50": p50, "p99": p99},
            "trade": {"p99": trade99},
            "accepted_per_s": accepted,
            "saturated": saturated,
        }

    points = [
        {"durability": "async", "rate": 1000, "designs": {"ringex": design(100, 900, 1500, 1000), "baseline": design(200, 800, 900, 1000)}},
        {"durability": "async", "rate": 10000, "designs": {"ringex": design(140, 950, 5000, 10000), "baseline": design(300, 2000, 2100, 10000)}},
    ]  # fmt: skip
    v = e2e.verdicts(points)
    assert v[0].endswith("no (1,000/s p99 0.90 > 0.80 ms)")
    assert v[1].startswith("async: ringex trade print p99 at most 2x") and "10,000/s trade p99 5.00 ms" in v[1]
    assert v[2].endswith("ringex 10,000/s, baseline 10,000/s (1.0x)")
    assert v[3].startswith("async: highest accepted rate with ack and trade print p99 < 100 ms")
    assert "target async ack p50 at 1,000/s <= 150 µs: ringex 100 µs met" in v
    assert "target async ack p99 at 10,000/s <= 1,000 µs: ringex 950 µs met" in v


##########################################################################################
# ringex bench
##########################################################################################


def test_ringex_bench_runs_the_harness_of_its_checkout():
    out = subprocess.run(
        [sys.executable, "-m", "ringex", "bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--tick-us" in out.stdout and "--repeats" in out.stdout


def test_ringex_bench_outside_a_checkout_says_where_the_harness_is(tmp_path, capsys):
    import ringex.cli.bench

    copy = tmp_path / "site-packages" / "ringex" / "cli" / "bench.py"
    copy.parent.mkdir(parents=True)
    copy.write_text(open(ringex.cli.bench.__file__).read())
    spec = importlib.util.spec_from_file_location("installed_bench", copy)
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.checkout() is None
    with pytest.raises(SystemExit) as exit_:
        installed.add_arguments(e2e.argparse.ArgumentParser())
    assert exit_.value.code == 2
    assert installed.run(e2e.argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err.count("source checkout") == 2 and "pip install -e '.[perf]'" in err
