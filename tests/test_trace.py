"""Stage tracing: each process notes when sampled requests pass it; the records join
into per-stage delays."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from support.order_entry import ACCOUNT, CONFIG_TOML, OTHER, OTHER_TOKEN, TOKEN

from ringex.codes import Side
from ringex.market_data.client import MdClient
from ringex.order_entry.client import OrderClient
from ringex.trace import TRACE, Stage, Tracer, read_traces, stage_latencies, trace_dir


def test_a_tracer_notes_only_the_sampled_sequences_and_flushes_them(tmp_path):
    tracer = Tracer(trace_dir(tmp_path) / "gateway.trace", every=4)
    tracer.span(Stage.RECEIVED, 1, 6, 7, t_ns=100)  # 6..12: 8 and 12
    tracer.seqs(Stage.ACKED, 1, [7, 8, 9, 12], t_ns=250)
    tracer.close()
    records = read_traces(tmp_path)
    assert records.dtype == TRACE
    assert sorted(records[["stage", "seq", "t_ns"]].tolist()) == [
        (Stage.RECEIVED, 8, 100),
        (Stage.RECEIVED, 12, 100),
        (Stage.ACKED, 8, 250),
        (Stage.ACKED, 12, 250),
    ]


def test_a_tracer_says_whether_a_range_holds_a_sampled_sequence(tmp_path):
    tracer = Tracer(trace_dir(tmp_path) / "journaler.trace", every=4)
    assert tracer.samples(8, 8) and tracer.samples(5, 9) and tracer.samples(0, 0)
    assert not tracer.samples(5, 7) and not tracer.samples(9, 11)
    # brute force agrees on every small range
    assert all(
        tracer.samples(a, b) == any(s % 4 == 0 for s in range(a, b + 1)) for a in range(0, 30) for b in range(a, 30)
    )
    tracer.close()


def test_stage_latencies_join_the_processes_records_per_request(tmp_path):
    gateway = Tracer(trace_dir(tmp_path) / "gateway.trace", every=1)
    journaler = Tracer(trace_dir(tmp_path) / "journaler.trace", every=1)
    for seq in range(100):
        gateway.span(Stage.RECEIVED, 0, seq, 1, t_ns=1_000_000 * seq)
        journaler.span(Stage.JOURNALED, 0, seq, 1, t_ns=1_000_000 * seq + 50_000 + 1000 * seq)
        journaler.span(Stage.JOURNALED, 0, seq, 1, t_ns=1_000_000 * seq + 900_000)  # a restart's repeat
    gateway.span(Stage.RECEIVED, 1, 0, 1, t_ns=0)  # another symbol's seq 0: not the same request
    gateway.close()
    journaler.close()
    got = stage_latencies(read_traces(tmp_path))
    assert got["JOURNALED"]["n"] == 100
    assert got["JOURNALED"]["p50"] == np.percentile(50 + np.arange(100), 50).round(1)
    assert got["JOURNALED"]["max"] == 149.0  # the first record of a stage counts
    assert set(got) == {"JOURNALED"}
    later = stage_latencies(read_traces(tmp_path), since_ns=50_000_000)
    assert later["JOURNALED"]["n"] == 50


def test_a_traced_exchange_shows_every_stage_of_a_trade_in_order(make_stages):
    stages = make_stages(CONFIG_TOML, durability="async", trace_every=1)
    stages.add_account(ACCOUNT, TOKEN)
    stages.add_account(OTHER, OTHER_TOKEN)
    stages.start_all()
    with MdClient("127.0.0.1", stages.config.md_port) as md:
        md.subscribe("trades", "ACME")
        md.recv_until(lambda m: m["type"] == "subscribed")
        with OrderClient.connect("127.0.0.1", stages.config.order_port) as maker:
            with OrderClient.connect("127.0.0.1", stages.config.order_port) as taker:
                maker.login(ACCOUNT, TOKEN)
                taker.login(OTHER, OTHER_TOKEN)
                for i in range(20):
                    assert maker.new_order("ACME", "sell", 1, 100 + 5 * i).ok
                    assert taker.new_order("ACME", "buy", 1, 100 + 5 * i).ok
        md.recv_until(lambda m: m["type"] == "trade" and m["seq"] == 20)
    time.sleep(0.1)
    for role in list(stages.procs):  # processes flush their records as they stop
        stages.stop(role)
    got = stage_latencies(read_traces(stages.data))
    assert set(got) == {stage.name for stage in Stage} - {"RECEIVED"}
    assert all(s["n"] == 40 for name, s in got.items() if name != "PRINTED"), got
    # printed: the 20 buys that traded (a resting sell's ACCEPTED interests no subscriber
    # here, unless it went out in one batch with a trade)
    assert 20 <= got["PRINTED"]["n"] <= 40
    assert got["PUBLISHED"]["p50"] <= got["JOURNALED"]["p50"] <= got["ACKED"]["p50"]
    assert got["JOURNALED"]["p50"] <= got["MATCHED"]["p50"] <= got["PRINTED"]["p50"]
    cli = subprocess.run(
        [sys.executable, "-m", "ringex", "trace", "--data", str(stages.data)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert cli.returncode == 0, cli.stderr
    assert "JOURNALED" in cli.stdout and "PRINTED" in cli.stdout


def test_ringex_trace_says_when_nothing_was_traced(tmp_path):
    cli = subprocess.run(
        [sys.executable, "-m", "ringex", "trace", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert cli.returncode == 1 and "trace_every" in cli.stderr
    assert not (tmp_path / "trace").exists()
    assert Side.BUY  # codes import kept for the frames above
