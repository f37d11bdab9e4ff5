"""``ringex up`` as a user runs it: a subprocess on a temporary data directory."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from support.running import ROOT, RunningExchange

from ringex.config import load_config
from ringex.market_data.client import MdClient
from ringex.order_entry.client import OrderClient, SessionClosed
from ringex.topology import Topology, matcher_role

QUICK = os.environ.get("RINGEX_QUICK") == "1"


@pytest.fixture
def exchange(tmp_path):
    ex = RunningExchange(tmp_path / "data")
    yield ex
    ex.stop()


def _ringex(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringex", *args], cwd=ROOT, capture_output=True, text=True, check=check
    )


def test_up_trades_stops_cleanly_and_recovers_the_book(exchange):
    exchange.start()
    assert "ACME" in exchange.output and "BOLT" in exchange.output
    with exchange.subscribed("trades", "ACME") as md:
        with exchange.sessions(2) as (a, b):
            resting = a.buy("ACME", 10, 250)
            assert resting.ok, resting
            taking = b.sell("ACME", 4, 250)
            assert taking.ok, taking
        trade = md.recv_until(lambda m: m["type"] == "trade", timeout=10)[-1]
    assert (trade["price"], trade["qty"]) == (250, 4)
    assert (trade["maker_order_id"], trade["taker_order_id"]) == (resting.order_id, taking.order_id)

    status = exchange.status()
    assert status["state"] == "READY"
    assert {p["role"] for p in status["processes"]} == set(Topology.for_config(load_config(environ={})).roles)
    assert all(p["alive"] and p["ready"] for p in status["processes"])
    assert exchange.shared_memory()

    assert exchange.stop() == 0
    assert exchange.shared_memory() == [], "shared memory left behind after a clean stop"

    exchange.start()
    assert not re.search(r"account \d+\s+token \d+", exchange.output), "demo secrets are printed once only"
    with MdClient("127.0.0.1", exchange.md_port) as md:
        md.subscribe("depth", "ACME")
        snapshot = md.recv_until(lambda m: m["type"] == "depth_snapshot", timeout=10)[-1]
    assert snapshot["bids"] == [[250, 6]] and snapshot["asks"] == []
    with exchange.sessions(1) as (a,):
        following = a.buy("ACME", 1, 1)
    assert following.order_id > taking.order_id, "order ids resume past the journal's highest"
    assert exchange.stop() == 0


def test_a_second_exchange_on_the_same_data_directory_is_refused(exchange, tmp_path):
    exchange.start()
    second = RunningExchange(exchange.data)
    out = subprocess.run(second.command(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "already running" in out.stderr and str(exchange.proc.pid) in out.stderr
    assert exchange.status()["state"] == "READY", "the refused start must not disturb the running one"


def test_a_bad_config_file_names_the_key_and_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[symbols.ACME]\ntick = 3\nprice_min = 1\nprice_max = 11\n")
    out = _ringex("up", "--config", str(bad), "--data", str(tmp_path / "d"), check=False)
    assert out.returncode == 2
    assert "symbols.ACME.price_max" in out.stderr and "ticks" in out.stderr
    bad.write_text('durability = "later"\n')
    out = _ringex("up", "--config", str(bad), "--data", str(tmp_path / "d"), check=False)
    assert out.returncode == 2 and "durability" in out.stderr and "fsync" in out.stderr


def test_status_without_a_running_exchange_says_so(tmp_path):
    out = _ringex("status", "--data", str(tmp_path), check=False)
    assert out.returncode == 1 and "no exchange is running" in out.stdout


class _Flow(threading.Thread):
    """A client sending orders one after another until stopped, reconnecting after a
    drop, recording every acknowledged order."""

    def __init__(self, port: int, account: int, token: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.account, self.token = port, account, token
        self.rng = random.Random(seed)
        self.acked: list[tuple[str, int, int]] = []  # (symbol, journal seq, order id)
        self.not_ready = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    with OrderClient.connect("127.0.0.1", self.port) as client:
                        client.login(self.account, self.token)
                        while not self.stopping.is_set():
                            symbol = self.rng.choice(("ACME", "BOLT"))
                            side = self.rng.choice(("buy", "sell"))
                            reply = client.new_order(symbol, side, self.rng.randint(1, 20), self.rng.randint(95, 105))
                            if reply.ok:
                                self.acked.append((symbol, reply.seq, reply.order_id))
                            elif reply.reason_name == "NOT_READY":
                                self.not_ready += 1
                                time.sleep(0.01)
                            else:
                                raise AssertionError(f"unexpected reply {reply}")
                except (SessionClosed, ConnectionError):
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.slow
def test_kill_9_of_the_matcher_while_orders_flow_loses_nothing_acknowledged(exchange):
    from ringex.wal import Journal

    exchange.start()
    flows = [
        _Flow(exchange.order_port, account, token, seed)
        for seed, (account, token) in enumerate(exchange.accounts.items())
    ]
    for flow in flows:
        flow.start()
    kills = 1 if QUICK else 3
    try:
        for _ in range(kills):
            time.sleep(random.uniform(0.5, 2.0))
            victim = exchange.pid_of(matcher_role(0))
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while True:
                status = exchange.status()
                matcher = next(p for p in status["processes"] if p["role"] == matcher_role(0))
                if matcher["pid"] != victim and matcher["ready"] and status["state"] == "READY":
                    break
                assert time.monotonic() < deadline, exchange.log_tail()
                time.sleep(0.1)
        time.sleep(1.0)
    finally:
        for flow in flows:
            flow.stopping.set()
        for flow in flows:
            flow.join(30)
    for flow in flows:
        assert flow.error is None, flow.error
    acked = [a for flow in flows for a in flow.acked]
    assert len(acked) > 50, "too little flowed to prove anything"
    restarts = next(p for p in exchange.status()["processes"] if p["role"] == matcher_role(0))["restarts"]
    assert restarts == kills
    assert exchange.stop() == 0
    assert exchange.shared_memory() == []

    with Journal(exchange.data, readonly=True) as journal:
        journaled = {}
        for symbol in ("ACME", "BOLT"):
            for first, commands in journal.read_commands(symbol):
                for i, order_id in enumerate(commands["order_id"].tolist()):
                    journaled[(symbol, first + i)] = order_id
    for symbol, seq, order_id in acked:
        assert journaled.get((symbol, seq)) == order_id, f"acknowledged {symbol} seq {seq} order {order_id} is lost"
    verify = _ringex("recover", "--verify", "--data", str(exchange.data), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_sweep_with_more_events_than_the_out_ring_holds_publishes_each_event_once(tmp_path):
    """A ring of 16 slots and an order that trades with 40 resting orders: the shard
    publishes the 40+ events claim by claim, none lost or doubled, and the journal's
    events replay byte for byte."""
    config = tmp_path / "small.toml"
    config.write_text("ring_capacity = 16\n[symbols.ACME]\n")
    ex = RunningExchange(tmp_path / "data", durability="async", config=config)
    try:
        ex.start()
        with ex.subscribed("trades", "ACME") as md:
            with ex.sessions(2) as (a, b):
                for i in range(40):
                    reply = a.sell("ACME", 1, 100 + i % 5)
                    assert reply.ok, reply
                reply = b.buy("ACME", 40, 104)
                assert reply.ok, reply  # once seen failing under a full suite's load: say why
            trades = md.recv_until(lambda m: m["type"] == "trade" and m["seq"] >= 40, timeout=30)
        trades = [m for m in trades if m["type"] == "trade"]
        assert [m["seq"] for m in trades] == list(range(1, 41))
        assert sorted(m["price"] for m in trades) == sorted(100 + i % 5 for i in range(40))
        assert ex.stop() == 0
    finally:
        ex.stop()
    verify = _ringex("recover", "--verify", "--data", str(ex.data), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
