"""Order entry latency and throughput through a gateway process, to the durable ack.

Also the round trip of an order rejected at once (``X``, the journal not involved):
the gateway's own path.

OneClientToGatewayToJournal, ping-pong: one order in flight, time from ``send`` to
its ``K`` (which the gateway sends only once the journaler's cursor has passed it).

```
 bench process                gateway process                      journaler process
  t0 ─► send N ──TCP──► recv ─► validate ─► publish ─► [in-ring ACME] ─► LMDB commit
                                                                          │ cursor store
  t1 ◄─ recv K ◄──TCP── send K ◄─ pipe doorbell ◄──────────────────────────┘
```

Pipelined: the client keeps ``window`` orders in flight and counts K's per second.

Every stage runs as ``ringex up`` runs it (``tests/support/order_entry.py``), in both
durability modes: ``async`` (LMDB without fsync) and ``fsync`` (the default). Each case
checks that every reply was a K for the right client order id, in order.

Also measured: the session logic's CPU per ``recv`` without sockets, a bare TCP echo
of 64-byte frames between two processes (the floor, on the machine as loaded at that
moment: this 2-core machine is shared, so absolute figures move with its load; the
load average is recorded), and how long ``selectors`` really sleeps when asked for 0.2 ms, which is
why the gateway is woken by the journaler (a pipe doorbell) instead of polling the cursors.

    .venv/bin/python perf/gateway_bench.py           # writes perf/results/gateway.json
    .venv/bin/python perf/gateway_bench.py --quick   # fewer orders, no JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from support.order_entry import OrderEntry  # noqa: E402

from ringex.codes import ReplyType, Side  # noqa: E402
from ringex.order_entry.protocol import COMMAND, REPLY, encode_new_order  # noqa: E402

UNLIMITED = dict(rate_per_s=10_000_000.0, burst=1_000_000, max_in_flight=1_000_000, max_output_bytes=64 << 20)
# rings that hold a whole pipelined window many times over
RING_CAPACITY = 1 << 18


def _orders(n: int, qty: int = 1) -> bytes:
    frames = np.frombuffer(encode_new_order("ACME", Side.BUY, qty, 100) * n, dtype=COMMAND).copy()
    frames["client_order_id"] = np.arange(1, n + 1)
    frames["price"] = 100 + 5 * (np.arange(n) % 100)
    return frames.tobytes()


def _connect(ex: OrderEntry) -> socket.socket:
    c = ex.client()
    c.sock.settimeout(30)
    return c.sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = sock.recv(n)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("gateway closed the session")
        buf += chunk
    return buf


def _check(replies: np.ndarray, first_cid: int, want: ReplyType = ReplyType.ACK) -> None:
    replies = replies[replies["msg_type"] != ReplyType.HEARTBEAT]
    bad = replies["msg_type"] != want
    if bad.any():
        raise AssertionError(f"{int(bad.sum())} non-K replies, first reason {int(replies['reason'][bad][0])}")
    want = np.arange(first_cid, first_cid + len(replies))
    if not np.array_equal(replies["client_order_id"], want):
        raise AssertionError("replies out of order")


def ping_pong(ex: OrderEntry, n: int, warmup: int, reject: bool = False) -> dict:
    """``reject``: send orders of qty 0, answered X at once: the gateway without the journal."""
    sock = _connect(ex)
    frames = _orders(n + warmup, qty=0 if reject else 1)
    lat = np.empty(n, dtype=np.int64)
    want = b"X" if reject else b"K"
    for i in range(n + warmup):
        t0 = time.perf_counter_ns()
        sock.sendall(frames[64 * i : 64 * i + 64])
        reply = _recv_exact(sock, 64)
        while reply[:1] == b"H":
            reply = _recv_exact(sock, 64)
        t1 = time.perf_counter_ns()
        # checked with plain bytes: numpy here would add ~20 us to every round trip
        if reply[:1] != want or int.from_bytes(reply[16:24], "little") != i + 1:
            raise AssertionError(
                f"order {i + 1}: got {reply[:1]!r} for client id {int.from_bytes(reply[16:24], 'little')}"
            )
        if i >= warmup:
            lat[i - warmup] = t1 - t0
    sock.close()
    us = lat / 1000
    return {
        "orders": n,
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "p99_9_us": round(float(np.percentile(us, 99.9)), 1),
        "max_us": round(float(us.max()), 1),
    }


def pipelined(ex: OrderEntry, n: int, window: int) -> dict:
    sock = _connect(ex)
    frames = _orders(n)
    sent = received = 0
    buf = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    t0 = time.perf_counter()
    while received < n:
        if sent - received < window and sent < n:
            k = min(window - (sent - received), n - sent)
            sock.sendall(frames[64 * sent : 64 * (sent + k)])
            sent += k
        sel.select(1.0)
        buf += sock.recv(1 << 20)
        whole = len(buf) - len(buf) % 64
        if whole:
            replies = np.frombuffer(bytes(buf[:whole]), dtype=REPLY)
            replies = replies[replies["msg_type"] != ReplyType.HEARTBEAT]
            _check(replies, received + 1)
            received += len(replies)
            del buf[:whole]
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"orders": n, "window": window, "acks_per_s": round(n / elapsed), "seconds": round(elapsed, 3)}


ECHO_SERVER = """
import selectors, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sel = selectors.DefaultSelector()
sel.register(conn, selectors.EVENT_READ)
while True:
    sel.select()
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
"""


def echo_round_trip(n: int, warmup: int) -> dict:
    """A bare selectors echo of 64-byte frames in another process: the floor the
    gateway's round trips are measured against, on the machine as loaded right now."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = bytes(64)
        lat = []
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            sock.sendall(frame)
            _recv_exact(sock, 64)
            if i >= warmup:
                lat.append(time.perf_counter_ns() - t0)
        sock.close()
    finally:
        proc.wait(10)
    us = np.array(lat) / 1000
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "p99_9_us": round(float(np.percentile(us, 99.9)), 1),
    }


def session_cpu(reps: int) -> dict:
    """The gateway's own CPU per ``recv``, without sockets: ``Session.receive_data`` +
    ``data_to_send`` for a recv of 1 and of 256 orders, publishing into a list."""
    from ringex.config import OrderEntryLimits, SymbolSpec
    from ringex.order_entry.protocol import SymbolTable, encode_login
    from ringex.order_entry.session import OrderIdCounter, Session

    table = SymbolTable([SymbolSpec("ACME", tick=5, price_min=100, price_max=1000, max_qty=500)])
    big = 10**12
    session = Session(
        1, table, lambda a, t: True, OrderIdCounter(1), OrderEntryLimits(rate_per_s=big, burst=big, max_in_flight=big)
    )
    count = [0]

    def publish(sym: int, commands: np.ndarray) -> int:
        first = count[0]
        count[0] += len(commands)
        return first

    durable = np.array([big], dtype=np.int64)
    session.receive_data(encode_login(1, 1), True, publish)
    session.data_to_send(durable)
    out = {}
    for n in (1, 256):
        data = _orders(n)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            session.receive_data(data, True, publish)
            sent = session.data_to_send(durable)
            times.append(time.perf_counter_ns() - t0)
            assert len(sent) == 64 * n and sent[0:1] == b"K"
        out[f"recv_of_{n}_p50_us"] = round(float(np.percentile(times, 50)) / 1000, 1)
    return out


def select_granularity() -> dict:
    sel = selectors.DefaultSelector()
    r, w = socket.socketpair()
    sel.register(r, selectors.EVENT_READ)
    naps = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        sel.select(0.0002)
        naps.append(time.perf_counter_ns() - t0)
    r.close()
    w.close()
    return {"asked_us": 200, "p50_slept_us": round(float(np.percentile(naps, 50)) / 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("RINGEX_QUICK") == "1"
    n_ping, warm, n_pipe = (500, 100, 20_000) if quick else (5_000, 500, 200_000)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
        "select_0.2ms": select_granularity(),
        "cases": {},
    }
    print(f"selectors.select(0.0002) sleeps {results['select_0.2ms']['p50_slept_us']} us (p50)")
    results["session_cpu"] = cpu = session_cpu(2000 if quick else 20000)
    print(f"session CPU per recv (no sockets): {cpu}")
    results["tcp_echo_round_trip"] = echo = echo_round_trip(n_ping, warm)
    print(f"bare TCP echo round trip p50 {echo['p50_us']} us, p99 {echo['p99_us']} us, p99.9 {echo['p99_9_us']} us")
    with tempfile.TemporaryDirectory(prefix="rgx-gwbench-") as tmp:
        ex = OrderEntry(Path(tmp), ring_capacity=RING_CAPACITY, **UNLIMITED)
        try:
            results["reject_round_trip"] = rt = ping_pong(ex, n_ping, warm, reject=True)
        finally:
            ex.close()
    print(f"X (no journal) round trip p50 {rt['p50_us']} us, p99 {rt['p99_us']} us, p99.9 {rt['p99_9_us']} us")
    for journaler in ("async", "fsync"):
        with tempfile.TemporaryDirectory(prefix="rgx-gwbench-") as tmp:
            ex = OrderEntry(Path(tmp), durability=journaler, ring_capacity=RING_CAPACITY, **UNLIMITED)
            try:
                case = {"ping_pong": ping_pong(ex, n_ping, warm)}
                for window in (64, 1024):
                    case[f"pipelined_{window}"] = pipelined(ex, n_pipe, window)
            finally:
                ex.close()
        results["cases"][journaler] = case
        pp = case["ping_pong"]
        print(
            f"{journaler:8s} ack round trip p50 {pp['p50_us']} us, p99 {pp['p99_us']} us, "
            f"p99.9 {pp['p99_9_us']} us | pipelined: "
            + ", ".join(
                f"window {c['window']}: {c['acks_per_s']:,} acks/s" for k, c in case.items() if k != "ping_pong"
            )
        )
    if not quick:
        out = HERE / "results" / "gateway.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
