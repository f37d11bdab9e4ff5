"""``perf/loadgen.py`` (+ ``loadgen.c``): the build, what the C loop sends and records
against a fake exchange it cannot see through, and short real steps of the harness
against the baseline and against ``ringex up``."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from perf import analysis, e2e, loadgen
from perf.targets import BaselineExchange, LocalExchange, RingLagSampler
from perf.workload import CANCEL, GTC, IOC, REPLACE
from ringex.config import DEFAULT_SYMBOLS
from ringex.order_entry.protocol import COMMAND, encode_reply

SYMBOLS = [s.name for s in DEFAULT_SYMBOLS]


def test_build_is_reused_until_the_source_changes():
    first = loadgen.build()
    assert first.exists() and first.parent == loadgen.BUILD_DIR
    assert loadgen.build() == first
    assert loadgen.SOURCE.read_bytes()[:2] == b"/*"


class FakeExchange:
    """Order entry that acks everything at once (new orders get ids 1000, 1001, ...) and
    market data that prints a trade for every IOC, with the IOC's id and stamp: enough
    to check what the load generator sends, how it learns targets and what it records."""

    def __init__(self, accounts: int = 2) -> None:
        self.order_server = socket.create_server(("127.0.0.1", 0))
        self.md_server = socket.create_server(("127.0.0.1", 0))
        self.port = self.order_server.getsockname()[1]
        self.md_port = self.md_server.getsockname()[1]
        self.received: list[tuple[int, np.ndarray]] = []  # (session, frame)
        self.issued: dict[int, tuple[int, bytes, int]] = {}  # order id -> (session, symbol, tif) of its N
        self.cancelled: set[int] = set()
        self.violations: list[str] = []  # C/R naming an id its session was not told of, or cancelled
        self.next_id = 1000
        self.lock = threading.Lock()
        self.md_clients: list[socket.socket] = []
        self.trades: socket.socket | None = None
        self.stop = False
        self.threads = [
            threading.Thread(target=self._accept, args=(self.order_server, self._order_session), daemon=True),
            threading.Thread(target=self._accept, args=(self.md_server, self._md_session), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _accept(self, server, handler):
        server.settimeout(0.2)
        n = 0
        while not self.stop:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            n += 1
            threading.Thread(target=handler, args=(conn, n), daemon=True).start()

    def _order_session(self, conn, session):
        buf = b""
        while chunk := conn.recv(65536):
            buf += chunk
            whole = len(buf) - len(buf) % 64
            frames, buf = np.frombuffer(buf[:whole], dtype=COMMAND), buf[whole:]
            out = []
            for f in frames:
                mt = chr(f["msg_type"])
                if mt == "L":
                    out.append(encode_reply(ord("A"), session=session))
                    continue
                with self.lock:
                    self.received.append((session, f.copy()))
                    oid = int(f["order_id"])
                    if mt == "N":
                        oid, self.next_id = self.next_id, self.next_id + 1
                        self.issued[oid] = (session, bytes(f["symbol"]), int(f["tif"]))
                    elif self.issued.get(oid) != (session, bytes(f["symbol"]), ord("G")) or oid in self.cancelled:
                        self.violations.append(f"session {session}: {mt} of {oid} ({self.issued.get(oid)})")
                    if mt == "C":
                        self.cancelled.add(oid)
                    stamp = time.time_ns()
                    if mt == "N" and chr(f["tif"]) == "I" and self.trades is not None:
                        line = {"type": "trade", "channel": "trades", "taker_order_id": oid, "ts_ns": stamp}
                        self.trades.sendall(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                out.append(
                    encode_reply(
                        ord("K"), side=int(f["side"]), symbol=bytes(f["symbol"]).ljust(8, b"\0"),
                        client_order_id=int(f["client_order_id"]), order_id=oid, ts_ns=stamp,
                    )
                )  # fmt: skip
            conn.sendall(b"".join(out))

    def _md_session(self, conn, n):
        buf = b""
        while chunk := conn.recv(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                req = json.loads(line)
                if req["op"] == "subscribe":
                    if req["channel"] == "trades":
                        self.trades = conn
                    conn.sendall(b'{"type":"subscribed","channel":"x","symbol":null,"seq":0}\n')

    def close(self):
        self.stop = True
        for t in self.threads:
            t.join()
        self.order_server.close()
        self.md_server.close()


def test_sender_sends_on_time_and_targets_only_its_own_acked_resting_orders(tmp_path):
    fake = FakeExchange()
    try:
        cfg = {
            "host": "127.0.0.1", "port": fake.port, "md_port": fake.md_port, "accounts": [(1, 11), (2, 22)],
            "symbols": SYMBOLS, "rate": 2000, "seconds": 1.0, "sessions": 3, "seed": 5, "drain_s": 2,
            "tick_us": 0, "linger_s": 0.1, "workdir": str(tmp_path),
        }  # fmt: skip
        rec = dict(np.load(loadgen.send_step(cfg)))
    finally:
        fake.close()
    n = len(rec["intended_ns"])
    assert n == 2000 and np.all(rec["ack_ns"] > 0) and np.all(rec["sent_ns"] > 0)
    assert np.all(rec["ack_type"] == ord("K")) and rec["stray_replies"] == 0
    # sent at (or just after) its intended time, never before; acked after it was sent
    late = rec["sent_ns"] - rec["intended_ns"]
    assert late.min() >= 0 and np.median(late) < 2_000_000
    assert np.all(rec["ack_ns"] >= rec["sent_ns"])
    # every cancel or replace names an id this session learned from its own ack of a
    # GTC order on the same symbol (acked before the C/R was sent); none after its cancel
    assert set(rec["kind"].tolist()) == {GTC, IOC, CANCEL, REPLACE}
    assert fake.violations == []
    assert sum(chr(f["msg_type"]) in "CR" for _, f in fake.received) == np.count_nonzero(rec["kind"] >= CANCEL)
    # the trade prints join their IOCs by (order id, stamp)
    md = analysis.parse_md(rec["md_kept"].tobytes(), rec["md_kept_ns"])
    iocs = np.flatnonzero(rec["kind"] == IOC)
    idx, seen = analysis.first_seen(rec["order_id"][iocs], rec["ts_ns"][iocs], md["trades"])
    assert len(idx) == len(iocs) > 0
    assert np.all(seen >= rec["sent_ns"][iocs[idx]])


def test_a_tick_sends_what_is_due_within_it_together(tmp_path):
    fake = FakeExchange()
    try:
        cfg = {
            "host": "127.0.0.1", "port": fake.port, "md_port": 0, "accounts": [(1, 11)], "symbols": SYMBOLS,
            "rate": 8000, "seconds": 0.5, "sessions": 4, "seed": 1, "drain_s": 2, "tick_us": 1000,
            "workdir": str(tmp_path),
        }  # fmt: skip
        rec = dict(np.load(loadgen.send_step(cfg)))
    finally:
        fake.close()
    # 8 requests per 1 ms tick, each tick's on one session: one send per tick
    assert len(rec["intended_ns"]) == 4000 and np.all(rec["ack_ns"] > 0)
    assert len(np.unique(rec["intended_ns"])) == 500
    assert rec["sends"] <= 510
    for t in np.unique(rec["intended_ns"])[:50]:
        assert len(np.unique(rec["session"][rec["intended_ns"] == t])) == 1


@pytest.fixture(scope="module")
def loadgen_process():
    with loadgen.LoadgenProcess() as lg:
        yield lg


def _check_short_run(r: dict, requests: int) -> None:
    assert r["requests"] == requests
    assert r["acked"] == r["requests"] and r["not_acked"] == 0 and r["rejected"] == {}
    assert r["kinds"]["replace"] > 0 and r["kinds"]["cancel"] > 0  # targets learned from acks
    for name in ("ack", "trade"):
        lat = r["latency_us"][name]
        assert lat["count"] > 0, name
        values = [lat[k] for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max")]
        assert values == sorted(values) and values[0] > 0, (name, values)
    assert r["latency_us"]["ack"]["count"] == requests
    assert r["requests_that_traded"] > 0 and r["trades_seen"] >= r["requests_that_traded"]
    assert r["sender_lateness_us"]["count"] == requests and r["sender_lateness_us"]["p50"] >= 0
    assert r["loadgen"]["unstamped_reads"] == 0  # receive times are the kernel's
    assert r["cpu_percent"]["loadgen"] > 0
    assert r["split_at_gateway_us"]["gateway_to_ack"]["count"] == requests


def test_a_short_step_against_the_baseline(loadgen_process):
    with BaselineExchange("async") as target:
        # one symbol, so the few orders of a short run meet (the warm-up fills the book)
        e2e.run_step(target, loadgen_process, e2e.StepConfig(1000, 1.0, 0.2, symbols=1), SYMBOLS)
        r = e2e.run_step(target, loadgen_process, e2e.StepConfig(1000, 1.0, 0.3, symbols=1, seed=2), SYMBOLS)
    _check_short_run(r, 1000)
    assert r["design"] == "baseline" and r["cpu_percent"]["baseline"] > 0


def test_a_short_step_against_ringex(loadgen_process):
    with LocalExchange("async") as target:
        assert len(target.accounts) >= 2
        assert {"gateway", "journaler", "matcher-0", "notifier", "supervisor"} <= set(target.pids)
        e2e.run_step(target, loadgen_process, e2e.StepConfig(1000, 1.0, 0.2, symbols=1), SYMBOLS)
        lag = RingLagSampler(target.data_dir, interval=0.1)
        try:
            step = e2e.StepConfig(1000, 1.0, 0.3, symbols=1, seed=2)
            r = e2e.run_step(target, loadgen_process, step, SYMBOLS, lag=lag)
        finally:
            lag.close()
    _check_short_run(r, 1000)
    assert {"gateway", "journaler", "matcher-0", "notifier"} <= set(r["cpu_percent"])
    assert {"in.journaler", "in.matcher", "out.notifier"} <= set(r["ring_lag"])


def test_the_frame_layout_the_c_loop_assumes():
    # loadgen.c reads and writes these offsets in the 64-byte frames
    assert COMMAND.fields["client_order_id"][1] == 16 and COMMAND.fields["order_id"][1] == 24
    assert COMMAND.fields["price"][1] == 32 and COMMAND.fields["qty"][1] == 40
    reply = encode_reply(ord("K"), reason=3, client_order_id=7, order_id=9, ts_ns=11)
    assert struct.unpack_from("<BBH", reply) == (ord("K"), 0, 3)
    assert struct.unpack_from("<QQ", reply, 16) == (7, 9) and struct.unpack_from("<Q", reply, 56) == (11,)
