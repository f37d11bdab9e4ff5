"""``ringex bench``: end-to-end latency of a whole exchange under an open-loop order flow.

Topology (one process per role, so the load generator is not the bottleneck)::

  sender process ──N/C/R frames──► gateway ─► in-ring ─► journaler ─► matcher ─► out-ring
   (S sessions, open loop)   ◄── K/X ──┘                                            │
                                                          notifier ◄─ journaler ◄───┘
  md process ◄── trades (public) + fills (each account's orders channel) ──┘

Open loop: request ``i`` has an intended send time ``t0 + i/rate``, fixed before the
step starts. The sender sends whatever is due whenever it wakes, never waiting for a
reply, and every latency is measured from the *intended* time: a stall of the
exchange (or of the sender) shows as latency of every request that should have gone
out during it, instead of being hidden by sending less (no coordinated omission).

Three latencies per request, each to the first time the client could see it:

- ack: intended send -> its ``K`` (the gateway acks only once the journal has it);
- trade: intended send -> the first public trade whose taker is that request (an
  aggressive new order, or a replace that crossed), matched by (taker_order_id,
  ts_ns): the exchange stamps the receive time of the causing command on both;
- fill: the same to the taker's ``fill`` on its owner's private ``orders`` channel.

The order flow is the matcher benchmark's mix (``MIX``): mostly price moves of live
orders, so the book churns and trades happen. The gateway assigns exchange order ids,
so cancels and replaces pick their targets at send time from the ids the session
learned from its own acks of resting (GTC) orders; when it knows none yet for that
symbol, the request goes as a new GTC order instead.

Per step the parent also reads each exchange process's CPU time (``/proc/PID/stat``)
and samples ``ringex status`` ring cursors, so a missed target can be pinned to a stage.

    ringex bench                                 # sweep both durability modes on temp exchanges
    ringex bench --rates 1000,10000 --durability async --duration 3
    ringex bench --host 127.0.0.1 --port 7001 --md-port 7002 --account 1001 --token T --data DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ringex.codes import OrderType, Side, Tif
from ringex.records import COMMAND

__all__ = [
    "MIX",
    "PERCENTILES",
    "StepConfig",
    "Target",
    "LocalExchange",
    "make_workload",
    "run_step",
    "sweep",
    "plot",
    "markdown_table",
    "breakdown_table",
    "add_arguments",
    "run",
]

# request kinds of the generated flow
GTC, IOC, CANCEL, REPLACE = 0, 1, 2, 3
# the matcher benchmark's mix: 9% resting orders, 3% aggressive IOC, 6% cancels, 82%
# replaces (price/quantity moves of live orders)
MIX = {"gtc": 0.09, "ioc": 0.03, "cancel": 0.06, "replace": 0.82}
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
# live order ids a session remembers per symbol to cancel/replace (a ring: the newest
# replace the oldest). Picked so a target is usually still resting, not derived.
POOL = 256
# Prices as in perf/matcher_bench.py (modelled on exchange-core's benchmark): resting
# orders sit 1..650 ticks from a drifting mid on their side, replaces move them to
# -1..648 ticks (so a few cross), IOCs cross by 0..30 ticks and take up to 200 lots. Kept
# wide on purpose: orders placed near the mid trade away quickly, and the sender (which
# does not read fills) would keep replacing dead orders (a 1-3 tick spread left ~75% of
# requests answered "unknown order" by the matcher).
MID = 100_000  # starting mid price in ticks (well inside the default 1..1,000,000 band)
HALF_SPREAD_LEVELS = 650
IOC_REACH = 30
# latencies are recorded in ns from 1 ns to 2 minutes at 3 significant digits
HDR_MAX_NS = 120_000_000_000
_MSG = {"N": ord("N"), "C": ord("C"), "R": ord("R"), "L": ord("L")}
_ACK, _REJECT = ord("K"), ord("X")


##########################################################################################
# workload
##########################################################################################


@dataclasses.dataclass
class SessionPlan:
    """One session's pre-generated requests, in send order. Arrays have one row per
    request: ``t_ns`` (i8, intended send time from the step start), ``frames``
    (COMMAND, ready to send; C/R get their target order id at send time), ``kind``
    (u1), ``sym`` (u1 index), ``side`` (u1, the side if it goes as a new order),
    ``mid`` (i8, the symbol's mid when it is sent), ``dist`` (i8, a replace's distance
    from the mid on the passive side; negative crosses), ``slot`` (u2, which
    remembered order a C/R targets), ``gtc_price``/``qty`` (i8, used when a C/R has
    no target and goes as a new GTC order)."""

    t_ns: np.ndarray
    frames: np.ndarray
    kind: np.ndarray
    sym: np.ndarray
    side: np.ndarray
    mid: np.ndarray
    dist: np.ndarray
    slot: np.ndarray
    gtc_price: np.ndarray
    qty: np.ndarray


def make_workload(rate: float, seconds: float, sessions: int, symbols: list[str], seed: int = 1) -> list[SessionPlan]:
    """The seeded flow of ``rate * seconds`` requests, evenly spaced in time, dealt out
    round robin to ``sessions`` sessions over ``symbols``. Each symbol's mid price is
    a random walk (a tick every 20 requests on average); prices and quantities follow
    the matcher benchmark (see ``HALF_SPREAD_LEVELS``), so the flow trades mostly
    through its IOCs."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    t_ns = (np.arange(n, dtype=np.float64) * (1e9 / rate)).astype(np.int64)
    kind = rng.choice(4, size=n, p=[MIX["gtc"], MIX["ioc"], MIX["cancel"], MIX["replace"]]).astype(np.uint8)
    sym = rng.integers(0, len(symbols), size=n).astype(np.uint8)
    side = np.where(rng.random(n) < 0.5, Side.BUY, Side.SELL).astype(np.uint8)
    buy = side == Side.BUY
    steps = rng.choice(np.array([-1, 0, 1]), size=n, p=[0.025, 0.95, 0.025])
    mid = np.empty(n, dtype=np.int64)
    for s in range(len(symbols)):
        mask = sym == s
        mid[mask] = MID + np.cumsum(steps[mask])
    passive = rng.integers(1, HALF_SPREAD_LEVELS + 1, size=n)
    gtc_price = np.where(buy, mid - passive, mid + passive)
    reach = rng.integers(0, IOC_REACH + 1, size=n)
    ioc_price = np.where(buy, mid + reach, mid - reach)
    dist = rng.integers(1, HALF_SPREAD_LEVELS + 1, size=n) - 2  # <= 0 crosses the mid
    qty = np.where(kind == IOC, rng.integers(1, 201, size=n), rng.integers(1, 101, size=n))
    slot = rng.integers(0, POOL, size=n).astype(np.uint16)

    frames = np.zeros(n, dtype=COMMAND)
    new = kind <= IOC
    frames["msg_type"] = np.select([new, kind == CANCEL], [_MSG["N"], _MSG["C"]], _MSG["R"])
    frames["side"] = np.where(new, side, 0)
    frames["order_type"] = np.where(new, OrderType.LIMIT, 0)
    frames["tif"] = np.select([kind == GTC, kind == IOC], [Tif.GTC, Tif.IOC], 0)
    frames["symbol"] = np.array([s.encode() for s in symbols], dtype="S8")[sym]
    frames["price"] = np.select([kind == GTC, kind == IOC, kind == REPLACE], [gtc_price, ioc_price, mid], 0)
    frames["qty"] = np.where(kind == CANCEL, 0, qty)

    plans = []
    for s in range(sessions):
        rows = slice(s, n, sessions)
        f = frames[rows].copy()
        f["client_order_id"] = np.arange(1, len(f) + 1)
        plans.append(
            SessionPlan(
                t_ns=t_ns[rows].copy(),
                frames=f,
                kind=kind[rows].copy(),
                sym=sym[rows].copy(),
                side=side[rows].copy(),
                mid=mid[rows].copy(),
                dist=dist[rows].copy(),
                slot=slot[rows].copy(),
                gtc_price=gtc_price[rows].copy(),
                qty=qty[rows].copy(),
            )
        )
    return plans


##########################################################################################
# sender process
##########################################################################################


class _Session:
    """One order entry session of the sender: its plan, socket, buffers, the ids of
    its own resting orders (per symbol) and what happened to each request."""

    def __init__(self, plan: SessionPlan, sock: socket.socket, n_symbols: int) -> None:
        self.plan = plan
        self.sock = sock
        self.next = 0
        self.out = bytearray()
        self.inbuf = b""
        n = len(plan.t_ns)
        self.sent_ns = np.zeros(n, dtype=np.int64)
        self.ack_ns = np.zeros(n, dtype=np.int64)
        self.ack_type = np.zeros(n, dtype=np.uint8)
        self.reason = np.zeros(n, dtype=np.uint16)
        self.order_id = np.zeros(n, dtype=np.uint64)
        self.ts_ns = np.zeros(n, dtype=np.uint64)
        self.acked = 0
        self.pool_oid = np.zeros((n_symbols, POOL), dtype=np.uint64)
        self.pool_side = np.zeros((n_symbols, POOL), dtype=np.uint8)
        self.pool_head = np.zeros(n_symbols, dtype=np.int64)

    def take_due(self, rel_ns: int, now: int) -> None:
        """Move every request due by ``rel_ns`` into the output buffer, choosing the
        targets of its cancels and replaces from the ids learned so far."""
        p = self.plan
        hi = int(np.searchsorted(p.t_ns, rel_ns, side="right"))
        lo = self.next
        if hi <= lo:
            return
        cr = np.flatnonzero(p.kind[lo:hi] >= CANCEL) + lo
        if cr.size:
            s = p.sym[cr]
            filled = np.minimum(self.pool_head[s], POOL)
            slot = p.slot[cr] % np.maximum(filled, 1)
            oid = self.pool_oid[s, slot]
            ok = oid != 0
            f = p.frames
            good, gs, gslot = cr[ok], s[ok], slot[ok]
            f["order_id"][good] = oid[ok]
            rep = p.kind[good] == REPLACE
            rows = good[rep]
            f["price"][rows] = p.mid[rows] + np.where(
                self.pool_side[gs[rep], gslot[rep]] == Side.BUY, -p.dist[rows], p.dist[rows]
            )
            cancel = ~rep
            self.pool_oid[gs[cancel], gslot[cancel]] = 0  # cancelled: no longer a target
            bad = cr[~ok]
            if bad.size:  # nothing known to cancel/replace yet: rest a new order instead
                p.kind[bad] = GTC
                f["msg_type"][bad] = _MSG["N"]
                f["side"][bad] = p.side[bad]
                f["order_type"][bad] = OrderType.LIMIT
                f["tif"][bad] = Tif.GTC
                f["price"][bad] = p.gtc_price[bad]
                f["qty"][bad] = p.qty[bad]
        self.out += p.frames[lo:hi].tobytes()
        self.sent_ns[lo:hi] = now
        self.next = hi

    def flush(self) -> None:
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:sent]

    def receive(self, reply_dtype: np.dtype) -> bool:
        """Read what is there; False when the exchange closed the session."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        now = time.monotonic_ns()
        if not data:
            return False
        buf = self.inbuf + data
        whole = len(buf) - len(buf) % 64
        self.inbuf = buf[whole:]
        if not whole:
            return True
        replies = np.frombuffer(buf[:whole], dtype=reply_dtype)
        replies = replies[(replies["msg_type"] == _ACK) | (replies["msg_type"] == _REJECT)]
        idx = replies["client_order_id"].astype(np.int64) - 1
        self.ack_ns[idx] = now
        self.ack_type[idx] = replies["msg_type"]
        self.reason[idx] = replies["reason"]
        self.order_id[idx] = replies["order_id"]
        self.ts_ns[idx] = replies["ts_ns"]
        self.acked += len(idx)
        # remember our acked resting orders as cancel/replace targets
        resting = idx[(replies["msg_type"] == _ACK) & (self.plan.kind[idx] == GTC)]
        if resting.size:
            syms = self.plan.sym[resting]
            for s in np.unique(syms):
                ids = resting[syms == s]
                pos = (self.pool_head[s] + np.arange(len(ids))) % POOL
                self.pool_oid[s, pos] = self.order_id[ids]
                self.pool_side[s, pos] = self.plan.side[ids]
                self.pool_head[s] += len(ids)
        return True


def _login(host: str, port: int, account: int, token: int) -> socket.socket:
    from ringex.order_entry.protocol import encode_login

    sock = socket.create_connection((host, port), timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_login(account, token))
    reply = b""
    while len(reply) < 64 or reply[0] == ord("H"):  # heartbeats may come before the answer
        if len(reply) >= 64:
            reply = reply[64:]
            continue
        chunk = sock.recv(64 - len(reply))
        if not chunk:
            raise ConnectionError(f"account {account}: the exchange closed the session at login")
        reply += chunk
    if reply[0] != ord("A"):
        raise ConnectionError(f"account {account}: login answered {chr(reply[0])!r}")
    sock.setblocking(False)
    return sock


def _sender_main(conn) -> None:
    """Sender worker: for each step config from the parent, log sessions in, report
    the start time, run the open loop, then save what happened to an .npz."""
    from ringex.order_entry.protocol import REPLY

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    while (cfg := conn.recv()) is not None:
        try:
            conn.send(("done", _send_step(cfg, conn, REPLY)))
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _send_step(cfg: dict, conn, reply_dtype) -> str:
    plans = make_workload(cfg["rate"], cfg["seconds"], cfg["sessions"], cfg["symbols"], cfg["seed"])
    accounts = cfg["accounts"]
    sessions = []
    for i, plan in enumerate(plans):
        account, token = accounts[i % len(accounts)]
        sessions.append(_Session(plan, _login(cfg["host"], cfg["port"], account, token), len(cfg["symbols"])))
    t0 = time.monotonic_ns() + 200_000_000
    conn.send(("started", t0))
    last_due = max(int(s.plan.t_ns[-1]) for s in sessions)
    drain_until = None
    by_fd = {s.sock.fileno(): s for s in sessions}
    total = sum(len(s.plan.t_ns) for s in sessions)
    while True:
        now = time.monotonic_ns()
        rel = now - t0
        for s in sessions:
            if s.next < len(s.plan.t_ns):
                s.take_due(rel, now)
            s.flush()
        if rel > last_due:
            if sum(s.acked for s in sessions) >= total:
                break
            if drain_until is None:
                drain_until = now + int(cfg["drain_s"] * 1e9)
            elif now > drain_until:
                break
        upcoming = [int(s.plan.t_ns[s.next]) for s in sessions if s.next < len(s.plan.t_ns)]
        timeout = max(0.0, (min(upcoming) - rel) / 1e9) if upcoming else 0.05
        writers = [s.sock for s in sessions if s.out]
        readable, _, _ = select.select([s.sock for s in sessions], writers, [], min(timeout, 0.05))
        for sock in readable:
            if not by_fd[sock.fileno()].receive(reply_dtype):
                raise ConnectionError("the exchange closed an order entry session during the step")
    out = {
        "t0": np.int64(t0),
        # the exchange stamps wall-clock receive times; this maps our monotonic times to them
        "wall_minus_mono": np.int64(time.time_ns() - time.monotonic_ns()),
        "intended_ns": np.concatenate([t0 + s.plan.t_ns for s in sessions]),
        "sent_ns": np.concatenate([s.sent_ns for s in sessions]),
        "ack_ns": np.concatenate([s.ack_ns for s in sessions]),
        "ack_type": np.concatenate([s.ack_type for s in sessions]),
        "reason": np.concatenate([s.reason for s in sessions]),
        "order_id": np.concatenate([s.order_id for s in sessions]),
        "ts_ns": np.concatenate([s.ts_ns for s in sessions]),
        "kind": np.concatenate([s.plan.kind for s in sessions]),
    }
    for s in sessions:
        s.sock.close()
    path = os.path.join(cfg["workdir"], f"sender-{os.getpid()}.npz")
    np.savez(path, **out)
    return path


##########################################################################################
# market data process
##########################################################################################

# the notifier writes compact JSON with a fixed key order (ringex/marketdata.py)
_TRADE_RE = re.compile(rb'"type":"trade"[^\n]*?"taker_order_id":(\d+),"ts_ns":(\d+)')
_FILL_RE = re.compile(rb'"type":"fill"[^\n]*?"order_id":(\d+)[^\n]*?"liquidity":"taker"[^\n]*?"ts_ns":(\d+)')
_REJECTED = b'"type":"rejected"'


def _md_main(conn) -> None:
    """Market data worker: per step, subscribe to trades (every symbol) and to each
    account's orders channel, say ready, and record (taker order id, ts_ns, receive
    time) of each trade and taker fill until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (cfg := conn.recv()) is not None:
        try:
            conn.send(("done", _md_step(cfg, conn)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _md_connect(host: str, port: int, requests: list[dict], expect: int) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # room for a burst while this process waits for a core: the notifier cuts off a
    # subscriber more than 1 MiB behind, on top of what the kernel buffers
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.settimeout(10.0)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
    buf = b""
    while buf.count(b'"type":"subscribed"') < expect:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the notifier closed the session while subscribing: {buf[-300:]!r}")
        if b'"type":"error"' in chunk:
            raise ConnectionError(f"the notifier refused a subscription: {chunk[:300]!r}")
        buf += chunk
    sock.setblocking(False)
    # whatever followed the acks (trades of an earlier step) belongs to nobody here
    return sock, b""


def _md_step(cfg: dict, conn) -> str:
    host, port = cfg["host"], cfg["md_port"]
    socks = [
        _md_connect(
            host,
            port,
            [{"op": "subscribe", "channel": "trades", "symbol": s} for s in cfg["symbols"]],
            len(cfg["symbols"]),
        )[0]
    ]
    for account, token in {a: t for a, t in cfg["accounts"]}.items():
        login = {"op": "login", "account": account, "token": token}
        socks.append(_md_connect(host, port, [login, {"op": "subscribe", "channel": "orders"}], 1)[0])
    conn.send(("ready", None))
    rests = {s.fileno(): b"" for s in socks}
    trades, fills = [], []
    lines = rejected = 0
    closed, tails = [], {}
    stop = False
    while not stop:
        if not socks:
            time.sleep(0.05)
        readable = select.select(socks, [], [], 0.05)[0] if socks else []
        for sock in readable:
            try:
                data = sock.recv(4 << 20)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not data:  # cut off (a slow consumer at saturation): keep what we have
                closed.append(tails.get(sock.fileno(), b"").decode(errors="replace").strip())
                socks.remove(sock)
                sock.close()
                continue
            buf = rests[sock.fileno()] + data
            cut = buf.rfind(b"\n") + 1
            rests[sock.fileno()] = buf[cut:]
            chunk = buf[:cut]
            if chunk:
                tails[sock.fileno()] = chunk[-200:]  # the notifier's last words, if it cuts us off
            lines += chunk.count(b"\n")
            rejected += chunk.count(_REJECTED)
            for regex, out in ((_TRADE_RE, trades), (_FILL_RE, fills)):
                found = regex.findall(chunk)
                if found:
                    arr = np.array(found, dtype="S20").astype(np.uint64)
                    out.append(np.column_stack([arr, np.full(len(arr), now, dtype=np.uint64)]))
        stop = conn.poll()
    conn.recv()  # the stop message
    for sock in socks:
        sock.close()

    def stack(parts):
        return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)

    path = os.path.join(cfg["workdir"], f"md-{os.getpid()}.npz")
    np.savez(path, trades=stack(trades), fills=stack(fills), lines=lines, rejected=rejected, closed=json.dumps(closed))
    return path


##########################################################################################
# analysis
##########################################################################################


def _key(order_id: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
    """One u64 per (order id, exchange ts): a hash, checked field by field after lookup."""
    with np.errstate(over="ignore"):
        return order_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ ts_ns.astype(np.uint64)


def first_seen(req_oid, req_ts, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For requests keyed by (order id, ts_ns), the receive time of the first event
    (rows of order id, ts_ns, receive ns) with the same key: (request indices, times)."""
    if len(events) == 0 or len(req_oid) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(events[:, 2], kind="stable")
    ev = events[order]
    ekey = _key(ev[:, 0], ev[:, 1])
    ukey, first = np.unique(ekey, return_index=True)  # earliest receive per key
    ev = ev[first]
    rkey = _key(req_oid, req_ts)
    pos = np.minimum(np.searchsorted(ukey, rkey), len(ukey) - 1)
    hit = (ukey[pos] == rkey) & (ev[pos, 0] == req_oid) & (ev[pos, 1] == req_ts)
    return np.flatnonzero(hit), ev[pos[hit], 2].astype(np.int64)


def summarize(latencies_ns: np.ndarray) -> dict:
    """p50..p99.99 and max (µs) through an HdrHistogram, and the histogram itself
    (base64 of its compressed encoding) so a reader can re-plot it."""
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, HDR_MAX_NS, 3)
    for v in np.clip(latencies_ns, 1, HDR_MAX_NS).tolist():
        hist.record_value(v)
    out = {"count": int(len(latencies_ns))}
    if len(latencies_ns):
        for p in PERCENTILES:
            out[f"p{p:g}"] = round(hist.get_value_at_percentile(p) / 1000, 1)
        out["max"] = round(hist.get_max_value() / 1000, 1)
        encoded = hist.encode()  # base64 of the compressed histogram
        out["hdr"] = encoded.decode() if isinstance(encoded, bytes) else encoded
    return out


def analyse(sender: dict, md: dict, warmup_ns: int) -> dict:
    """Latency summaries and counts of one step (warm-up requests left out)."""
    measured = sender["intended_ns"] >= sender["t0"] + warmup_ns
    acked = sender["ack_ns"] > 0
    is_k = sender["ack_type"] == _ACK
    ack_lat = (sender["ack_ns"] - sender["intended_ns"])[measured & acked]
    lateness = (sender["sent_ns"] - sender["intended_ns"])[measured & (sender["sent_ns"] > 0)]
    # requests that may take liquidity: new orders and replaces that were acked
    takers = np.flatnonzero(measured & is_k & (sender["kind"] != CANCEL))
    oid, ts = sender["order_id"][takers], sender["ts_ns"][takers]
    out = {}
    offset = int(sender["wall_minus_mono"])
    for name, events in (("trade", md["trades"]), ("fill", md["fills"])):
        idx, seen = first_seen(oid, ts, events)
        out[name] = (seen - sender["intended_ns"][takers[idx]]), len(idx)
        out[f"gateway_to_{name}"] = seen + offset - ts[idx].astype(np.int64), len(idx)
    # split at the gateway's receive stamp: what the client side and TCP cost, and what
    # the exchange took from reading the request to the client reading its reply
    stamped = measured & acked
    out["to_gateway"] = sender["ts_ns"][stamped].astype(np.int64) - offset - sender["intended_ns"][stamped], 0
    out["gateway_to_ack"] = sender["ack_ns"][stamped] + offset - sender["ts_ns"][stamped].astype(np.int64), 0
    reasons: dict[str, int] = {}
    from ringex.codes import Reason

    for r in np.unique(sender["reason"][measured & acked & ~is_k]):
        reasons[Reason(int(r)).name] = int(np.count_nonzero(sender["reason"][measured & acked & ~is_k] == r))
    return {
        "requests": int(np.count_nonzero(measured)),
        "acked": int(np.count_nonzero(measured & acked)),
        "not_acked": int(np.count_nonzero(measured & ~acked)),
        "rejected": reasons,
        "kinds": {
            k: int(np.count_nonzero(sender["kind"][measured] == v))
            for k, v in (("gtc", GTC), ("ioc", IOC), ("cancel", CANCEL), ("replace", REPLACE))
        },
        "trades_seen": int(len(md["trades"])),
        "taker_fills_seen": int(len(md["fills"])),
        "md_lines": int(md["lines"]),
        "matcher_rejects_seen": int(md["rejected"]),
        "md_sessions_cut_off": json.loads(str(md["closed"])),
        "requests_that_traded": out["trade"][1],
        "latency_us": {
            "ack": summarize(ack_lat),
            "trade": summarize(out["trade"][0]),
            "fill": summarize(out["fill"][0]),
        },
        "sender_lateness_us": summarize(lateness),
        "split_at_gateway_us": {
            name: {k: v for k, v in summarize(out[name][0]).items() if k != "hdr"}
            for name in ("to_gateway", "gateway_to_ack", "gateway_to_trade", "gateway_to_fill")
        },
    }


##########################################################################################
# the exchange under test
##########################################################################################


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class Target:
    """Where the exchange under test listens, who may log in, and (optionally) its
    data directory for ``ringex status`` readings and process CPU."""

    host: str
    port: int
    md_port: int
    accounts: list[tuple[int, int]]
    data_dir: str | None = None


class LocalExchange:
    """``ringex up`` on a fresh temporary data directory and free loopback ports, as a
    context manager; stopped (SIGTERM, then SIGKILL after 60 s) on exit, and its data
    directory removed."""

    def __init__(self, durability: str, extra: list[str] | None = None) -> None:
        self.durability = durability
        self.extra = extra or []
        self.tmp = tempfile.TemporaryDirectory(prefix=f"ringex-bench-{os.getpid()}-")
        self.data = Path(self.tmp.name) / "data"
        self.proc: subprocess.Popen | None = None
        self.output = ""

    def __enter__(self) -> Target:
        order, md, ws = free_ports(3)
        cmd = [sys.executable, "-m", "ringex", "up", "--data", str(self.data), "--durability", self.durability]
        cmd += ["--order-port", str(order), "--md-port", str(md), "--ws-port", str(ws), *self.extra]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=open(Path(self.tmp.name) / "stderr", "ab"),  # noqa: SIM115 - the child owns it
            start_new_session=True,  # a Ctrl-C of the bench reaches the exchange only through us
        )
        deadline = time.monotonic() + 300
        while "stop with Ctrl-C" not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"the exchange did not come up:\n{self.output}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                self.output += os.read(self.proc.stdout.fileno(), 65536).decode()
        accounts = [(int(a), int(t)) for a, t in re.findall(r"account (\d+)\s+token (\d+)", self.output)]
        return Target("127.0.0.1", order, md, accounts, str(self.data))

    def __exit__(self, *exc_info) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        self.tmp.cleanup()


##########################################################################################
# one step and the sweep
##########################################################################################


@dataclasses.dataclass(frozen=True)
class StepConfig:
    rate: float  # offered requests per second, all sessions together
    seconds: float = 5.0  # measured time (after the warm-up)
    warmup: float = 1.0
    symbols: int = 4
    sessions: int = 0  # 0: enough that each stays well under the gateway's 20k/s session limit
    seed: int = 1
    drain: float = 5.0  # how long to wait for the last acks after the last send
    first_symbol: int = 0  # the flow uses listed symbols first_symbol .. first_symbol + symbols - 1

    def session_count(self) -> int:
        return self.sessions or max(2, math.ceil(self.rate / 10_000))


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime of every thread


class Workers:
    """The sender and market data processes (spawned once, reused by every step)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.sender_conn, sender_end = ctx.Pipe()
        self.md_conn, md_end = ctx.Pipe()
        self.sender = ctx.Process(target=_sender_main, args=(sender_end,), name="bench-sender", daemon=True)
        self.md = ctx.Process(target=_md_main, args=(md_end,), name="bench-md", daemon=True)
        self.sender.start()
        self.md.start()

    def close(self) -> None:
        for conn, proc in ((self.sender_conn, self.sender), (self.md_conn, self.md)):
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _expect(conn, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not conn.poll(0.5):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench worker: no {what!r} within {timeout} s")
    kind, value = conn.recv()
    if kind == "error":
        raise RuntimeError(f"bench worker failed: {value}")
    if kind != what:
        raise RuntimeError(f"bench worker said {kind!r}, expected {what!r}")
    return value


def _process_pids(target: Target) -> dict[str, int]:
    if target.data_dir is None:
        return {}
    from ringex.cli.status import collect

    reading = collect(target.data_dir)
    pids = {p["role"]: p["pid"] for p in reading["processes"]}
    pids["supervisor"] = reading["supervisor_pid"]
    return pids


def _ring_sample(target: Target) -> dict | None:
    if target.data_dir is None:
        return None
    from ringex.cli.status import collect

    try:
        return collect(target.data_dir)
    except (FileNotFoundError, OSError):
        return None


def _stage_lags(samples: list[dict]) -> dict:
    """Per stage (ring kind + consumer, every symbol together): the mean and max of
    the records it was behind its producer over the samples, and how far it moved."""
    lags: dict[str, list[int]] = {}
    for reading in samples:
        per: dict[str, int] = {}
        for ring in reading["rings"]:
            for name, c in ring.get("consumers", {}).items():
                stage = f"{ring['kind']}.{name}"
                per[stage] = per.get(stage, 0) + c["lag"]
        for stage, lag in per.items():
            lags.setdefault(stage, []).append(lag)
    return {stage: {"mean": round(float(np.mean(v)), 1), "max": int(np.max(v))} for stage, v in lags.items()}


def run_step(target: Target, workers: Workers, step: StepConfig, symbols: list[str], progress=None) -> dict:
    """Drive one open-loop step against ``target`` and return its figures."""
    pids = _process_pids(target)
    with tempfile.TemporaryDirectory(prefix="ringex-bench-step-") as workdir:
        cfg = {
            "host": target.host,
            "port": target.port,
            "md_port": target.md_port,
            "accounts": target.accounts,
            "symbols": symbols[step.first_symbol : step.first_symbol + step.symbols],
            "rate": step.rate,
            "seconds": step.warmup + step.seconds,
            "sessions": step.session_count(),
            "seed": step.seed,
            "drain_s": step.drain,
            "workdir": workdir,
        }
        workers.md_conn.send(cfg)
        _expect(workers.md_conn, "ready", 30)
        workers.sender_conn.send(cfg)
        t0 = _expect(workers.sender_conn, "started", 30)
        pids["bench-sender"] = workers.sender.pid
        pids["bench-md"] = workers.md.pid
        measure_from = t0 + int(step.warmup * 1e9)
        measure_to = measure_from + int(step.seconds * 1e9)
        samples, cpu0, cpu1, load = [], {}, {}, None
        while not workers.sender_conn.poll(0.2):
            now = time.monotonic_ns()
            if progress is not None:
                progress(min(1.0, (now - t0) / (measure_to - t0)))
            if measure_from <= now <= measure_to:
                if not cpu0:
                    cpu0 = {role: _cpu_ticks(pid) for role, pid in pids.items()}
                    t_cpu0 = now
                if (sample := _ring_sample(target)) is not None:
                    samples.append(sample)
            elif now > measure_to and not cpu1 and cpu0:
                cpu1 = {role: _cpu_ticks(pid) for role, pid in pids.items()}
                t_cpu1 = now
                load = os.getloadavg()
        if cpu0 and not cpu1:  # the sender finished right at the end of the window
            cpu1 = {role: _cpu_ticks(pid) for role, pid in pids.items()}
            t_cpu1 = time.monotonic_ns()
            load = os.getloadavg()
        sender_path = _expect(workers.sender_conn, "done", 60)
        time.sleep(0.5)  # the last trades and fills are on their way
        workers.md_conn.send("stop")
        md_path = _expect(workers.md_conn, "done", 60)
        sender = dict(np.load(sender_path))
        md = dict(np.load(md_path))
    result = {
        "rate": step.rate,
        "symbols": step.symbols,
        "symbol_names": symbols[step.first_symbol : step.first_symbol + step.symbols],
        "sessions": step.session_count(),
        "seconds": step.seconds,
        **analyse(sender, md, int(step.warmup * 1e9)),
    }
    measured = sender["intended_ns"] >= sender["t0"] + int(step.warmup * 1e9)
    acks = np.sort(sender["ack_ns"][measured & (sender["ack_ns"] > 0)])
    if len(acks) > 1:
        # acks per second over the measured sends: from the first measured ack to the last
        result["achieved_acks_per_s"] = round((len(acks) - 1) / ((acks[-1] - acks[0]) / 1e9), 1)
    else:
        result["achieved_acks_per_s"] = 0.0
    result["accepted_per_s"] = accepted_rate(result)
    if cpu0 and cpu1:
        hz = os.sysconf("SC_CLK_TCK")
        wall = (t_cpu1 - t_cpu0) / 1e9
        result["cpu_percent"] = {
            role: round(100 * (cpu1[role] - cpu0[role]) / hz / wall, 1)
            for role in pids
            if cpu0.get(role) is not None and cpu1.get(role) is not None
        }
    result["ring_lag"] = _stage_lags(samples)
    result["loadavg"] = [round(x, 2) for x in (load or os.getloadavg())]
    result["saturated"] = is_saturated(result)
    return result


def accepted_rate(result: dict) -> float:
    """Requests answered ``K`` (not rejected, e.g. THROTTLED) per second of the step."""
    return round((result["acked"] - sum(result["rejected"].values())) / result["seconds"], 1)


def is_saturated(result: dict) -> bool:
    """The exchange did not keep up: a request never answered, under 90% of the offered
    rate accepted, or acks a second late at p99."""
    return bool(
        result["not_acked"] > 0
        or result["accepted_per_s"] < 0.9 * result["rate"]
        or result["latency_us"]["ack"].get("p99", 0) > 1_000_000
    )


def prioritize(pids, *, nice: int | None = None, realtime: int | None = None) -> None:
    """Give every thread of ``pids`` a nice value or the SCHED_FIFO ``realtime``
    priority (both per thread on Linux; threads started later inherit them; both need
    root). On a machine shared with other work, the fair scheduler delays a woken
    process by tens of ms whatever its nice value (measured: a 1 ms sleep overshoots by
    4 ms at p99 and 80 ms at worst at nice -10, by 0.2 ms and 5 ms under SCHED_FIFO), so
    only a real-time class measures the exchange rather than its neighbours. The
    exchange blocks when idle (the default wait strategy), and the kernel's RT
    throttling keeps 5% of each core for everything else even at saturation."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                if realtime is not None:
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(realtime))
                elif nice is not None:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
            except (ProcessLookupError, PermissionError):
                pass


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def sweep(
    targets,
    modes: list[str],
    rates: list[float],
    *,
    seconds: float,
    warmup: float,
    symbols: int,
    one_symbol_rates: list[float],
    sessions: int = 0,
    seed: int = 1,
    stop_when_saturated: bool = True,
    nice: int | None = None,
    realtime: int | None = None,
    console=None,
) -> tuple[list[dict], list[dict]]:
    """Run every (mode, rate) step; ``targets(mode)`` is a context manager giving the
    ``Target`` for that mode. Within a mode the rates rise and the sweep moves on
    after the first saturated step. ``one_symbol_rates`` adds steps on one symbol
    only (the first listed, then the last), to compare with ``symbols`` symbols."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ringex.config import DEFAULT_SYMBOLS

    names = [s.name for s in DEFAULT_SYMBOLS]
    steps: list[dict] = []
    warmups: list[dict] = []
    with Workers() as workers:
        for mode in modes:
            # one symbol: the first listed (the ring the journaler and the matcher sleep on
            # when idle) and the last (any other ring), to show what that sleep costs
            plan = [
                StepConfig(r, seconds, warmup, 1, sessions, seed, first_symbol=first)
                for r in one_symbol_rates
                for first in (0, len(names) - 1)
            ]
            plan += [StepConfig(r, seconds, warmup, symbols, sessions, seed) for r in sorted(rates)]
            with targets(mode) as target:
                if nice is not None or realtime is not None:
                    pids = [*_process_pids(target).values(), workers.sender.pid, workers.md.pid]
                    prioritize(pids, nice=nice, realtime=realtime)
                with Progress(
                    TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
                ) as progress:
                    # The first orders after start-up stall for seconds (lazy set-up in the
                    # exchange's processes): a short unmeasured step pays for that first.
                    warm = run_step(target, workers, StepConfig(1000, 2.0, 0.5, symbols, 0, seed + 1), names)
                    if console is not None:
                        console.print(f"{mode}: warm-up step, ack max {warm['latency_us']['ack'].get('max')} µs")
                    warmups.append({"durability": mode, "ack_max_us": warm["latency_us"]["ack"].get("max")})
                    for step in plan:
                        label = f"{mode:5} {step.rate:>9,.0f}/s on {step.symbols} symbol(s) from #{step.first_symbol}"
                        task = progress.add_task(label, total=1.0)
                        result = run_step(
                            target, workers, step, names, progress=lambda f, t=task: progress.update(t, completed=f)
                        )
                        progress.remove_task(task)
                        result["durability"] = mode
                        steps.append(result)
                        if console is not None:
                            console.print(_step_line(result))
                        # the targets are stated at 10k/s: steps up to there always run
                        if (
                            stop_when_saturated
                            and result["saturated"]
                            and step.symbols == symbols
                            and step.rate > 10_000
                        ):
                            break
    return steps, warmups


def _step_line(r: dict) -> str:
    lat = r["latency_us"]
    parts = [
        f"{r['durability']:5} {r['rate']:>9,.0f}/s {','.join(r['symbol_names'])}",
        f"acks {r['achieved_acks_per_s']:>9,.0f}/s",
        *(
            f"{name} p50/p99/max {lat[name].get('p50', '-')}/{lat[name].get('p99', '-')}/{lat[name].get('max', '-')} µs"
            for name in ("ack", "trade")
        ),
        f"load {r['loadavg'][0]}",
        "SATURATED" if r["saturated"] else "",
    ]
    return "  ".join(parts)


##########################################################################################
# report
##########################################################################################


def summary(steps: list[dict]) -> dict:
    """The figures the targets are stated in."""
    out: dict = {}
    for mode in sorted({s["durability"] for s in steps}):
        mine = [s for s in steps if s["durability"] == mode and s["symbols"] > 1]
        ok = [s["rate"] for s in mine if s["latency_us"]["ack"].get("p99", math.inf) < 10_000 and not s["saturated"]]
        at10k = next((s for s in mine if s["rate"] == 10_000), None)
        out[mode] = {
            "highest_rate_ack_p99_under_10ms": max(ok) if ok else None,
            "at_10k": None
            if at10k is None
            else {name: at10k["latency_us"][name].get("p99") for name in ("ack", "trade", "fill")},
        }
    return out


def markdown_table(steps: list[dict]) -> str:
    head = (
        "| mode | rate/s | sym | sess | accepted/s | ack p50 | p90 | p99 | p99.9 | p99.99 | max "
        "| trade p50 | p99 | p99.9 | max | fill p50 | p99 | max | sender late p99 | CPU % (gw/jn/mt/nt/snd/md) | load |\n"
    )
    head += "|" + "---|" * 22 + "\n"
    rows = []
    for s in steps:
        late = s["sender_lateness_us"]
        a, t, f = (s["latency_us"][k] for k in ("ack", "trade", "fill"))
        cpu = s.get("cpu_percent", {})
        cpus = "/".join(
            f"{cpu.get(r, 0):.0f}"
            for r in ("gateway", "journaler", "matcher-0", "notifier", "bench-sender", "bench-md")
        )

        def g(d, k):
            v = d.get(k)
            return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:g}"

        rows.append(
            f"| {s['durability']} | {s['rate']:,.0f} | {s['symbol_names'][0] if s['symbols'] == 1 else s['symbols']} | {s['sessions']} | {s['accepted_per_s']:,.0f}"
            f"{' (sat.)' if s['saturated'] else ''} | "
            + " | ".join(g(a, k) for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max"))
            + " | "
            + " | ".join(g(t, k) for k in ("p50", "p99", "p99.9", "max"))
            + " | "
            + " | ".join(g(f, k) for k in ("p50", "p99", "max"))
            + f" | {g(late, 'p99')} | {cpus} | {s['loadavg'][0]} |"
        )
    return head + "\n".join(rows) + "\n"


def breakdown_table(steps: list[dict]) -> str:
    """Where the time goes, per step: latency split at the gateway's receive stamp, and
    the mean/max records each ring consumer was behind its producer (all symbols)."""
    stages = ("in.journaler", "in.matcher", "out.journaler", "out.notifier")
    head = "| mode | rate/s | sym | to gateway p50/p99 | gateway→ack p50/p99 | gateway→trade p50/p99 | "
    head += " | ".join(f"{st} lag mean/max" for st in stages) + " |\n"
    head += "|" + "---|" * (6 + len(stages)) + "\n"
    rows = []
    for s in steps:
        split = s.get("split_at_gateway_us", {})

        def pair(name, split=split):
            d = split.get(name, {})
            return f"{d.get('p50', '-'):,} / {d.get('p99', '-'):,}" if d.get("count") else "-"

        lags = " | ".join(
            f"{s['ring_lag'][st]['mean']:,.0f} / {s['ring_lag'][st]['max']:,}" if st in s["ring_lag"] else "-"
            for st in stages
        )
        sym = s["symbol_names"][0] if s["symbols"] == 1 else s["symbols"]
        rows.append(
            f"| {s['durability']} | {s['rate']:,.0f} | {sym} | {pair('to_gateway')} | {pair('gateway_to_ack')} | "
            f"{pair('gateway_to_trade')} | {lags} |"
        )
    return head + "\n".join(rows) + "\n"


def _percentile_curve(hist, pct: np.ndarray) -> np.ndarray:
    """Values at many percentiles in one pass over the histogram's buckets (asking
    ``get_value_at_percentile`` for each walks every bucket each time)."""
    values, counts = [], []
    for item in hist.get_recorded_iterator():
        values.append(item.value_iterated_to)
        counts.append(item.count_at_value_iterated_to)
    cumulative = np.cumsum(counts)
    wanted = np.maximum(1, np.ceil(pct / 100 * cumulative[-1]))
    return np.asarray(values, dtype=np.float64)[np.searchsorted(cumulative, wanted)]


def plot(steps: list[dict], path: str | os.PathLike[str]) -> None:
    """Latency by percentile, one line per step, HDR style: x is 1/(1-p) on a log
    axis (so 99% and 99.99% are as far apart as 90% and 99.9%), y is latency (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hdrh.histogram import HdrHistogram

    kinds = ("ack", "trade")
    modes = list(dict.fromkeys(s["durability"] for s in steps))  # in sweep order
    fig, axes = plt.subplots(len(kinds), len(modes), figsize=(7 * len(modes), 10), squeeze=False)
    nines = np.linspace(0, 5, 200)  # 0 .. 99.999%
    pct = 100 * (1 - 10.0 ** (-nines))
    for col, mode in enumerate(modes):
        mine = [s for s in steps if s["durability"] == mode]
        for row, kind in enumerate(kinds):
            ax = axes[row][col]
            for s in mine:
                enc = s["latency_us"][kind].get("hdr")
                if not enc:
                    continue
                ys = _percentile_curve(HdrHistogram.decode(enc), pct) / 1000
                label = f"{s['rate']:,.0f}/s" + (f" {s['symbol_names'][0]} only" if s["symbols"] == 1 else "")
                ax.plot(10.0**nines, ys, label=label, linestyle="--" if s["symbols"] == 1 else "-")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [1, 10, 100, 1000, 10_000, 100_000]
            ax.set_xticks(ticks, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
            ax.set_title(f"{mode}: order -> {'ack' if kind == 'ack' else 'trade print'}")
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency (µs)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


##########################################################################################
# command line
##########################################################################################


def _floats(text: str) -> list[float]:
    return [float(x.replace("k", "e3")) for x in text.split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates",
        type=_floats,
        default=_floats("1k,10k,25k,50k,100k,150k,200k"),
        help="offered orders/s, comma separated (1k = 1000)",
    )
    parser.add_argument(
        "--durability",
        help="modes to sweep, each on its own temporary exchange (default fsync,async); with --host, only a label",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent before measuring, per step")
    parser.add_argument("--symbols", type=int, default=4, help="symbols the flow is spread over")
    parser.add_argument("--one-symbol-rates", type=_floats, default=_floats("1k,10k"), help="extra steps on one symbol")
    parser.add_argument("--sessions", type=int, default=0, help="order entry sessions (default: max(2, rate/10k))")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-stop", action="store_true", help="run every rate even after saturation")
    parser.add_argument(
        "--nice", type=int, help="renice the exchange and the load generator (e.g. -10, as root) on a busy machine"
    )
    parser.add_argument(
        "--realtime",
        type=int,
        metavar="PRIO",
        help="run the exchange and the load generator under SCHED_FIFO at PRIO (as root; see prioritize())",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--plot", metavar="PNG", help="write the percentile plot (needs matplotlib: pip install .[perf])"
    )
    parser.add_argument("--host", help="target a running exchange instead of starting one")
    parser.add_argument("--port", type=int, default=7001, help="its order entry port")
    parser.add_argument("--md-port", type=int, default=7002, help="its market data port")
    parser.add_argument("--account", type=int, action="append", help="account to log in with (repeatable)")
    parser.add_argument("--token", type=int, action="append", help="its token (same order as --account)")
    parser.add_argument("--data", help="the running exchange's data directory (for ring lags and CPU)")


def execute(args: argparse.Namespace, console, command: str) -> dict:
    """Run the sweep ``args`` describe (see ``add_arguments``); the whole result."""
    from contextlib import contextmanager

    modes = [m for m in (args.durability or ("remote" if args.host else "fsync,async")).split(",") if m]
    if args.host:

        @contextmanager
        def targets(mode):
            accounts = list(zip(args.account, args.token, strict=True))
            yield Target(args.host, args.port, args.md_port, accounts, args.data)

        modes = modes[:1]
    else:

        def targets(mode):
            return LocalExchange(mode)

    def interrupted(signum, frame):
        raise KeyboardInterrupt  # so the exchange and the workers are stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    info = machine()
    steps, warmups = sweep(
        targets,
        modes,
        args.rates,
        seconds=args.duration,
        warmup=args.warmup,
        symbols=args.symbols,
        one_symbol_rates=args.one_symbol_rates,
        sessions=args.sessions,
        seed=args.seed,
        stop_when_saturated=not args.no_stop,
        nice=args.nice,
        realtime=args.realtime,
        console=console,
    )
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": info,
        "command": command,
        "mix": MIX,
        "nice": args.nice,
        "realtime": args.realtime,
        "summary": summary(steps),
        "exchange_warmup": warmups,
        "steps": steps,
    }


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.host and (not args.account or len(args.account) != len(args.token or [])):
        console.print("ringex bench: --host needs --account and --token (as many of each)")
        return 2
    result = execute(args, console, "ringex " + " ".join(sys.argv[1:]))
    console.print(markdown_table(result["steps"]))
    console.print_json(json.dumps(result["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result["steps"], args.plot)
    return 0
