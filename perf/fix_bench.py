"""FIX against protocol v1 in one run: order → ExecutionReport(New) / ack, and → fill report.

Topology (every box a process on the same 2-core machine; one ``ringex up``)::

    v1 sender ──────────────TCP──────────────► gateway ─► in-ring ─► journaler ─► matcher ─► out-ring ─► notifier ─► v1 fill reader
      (K read back on the same socket)            ▲                                             │          (orders channel, JSON)
                                                  │ v1, loopback                                  ▼
    FIX sender ──TCP──► FIX acceptor ─────────────┘          FIX acceptor (consumer "fix-acceptor") ─► ER New, ER Trade ─► FIX reader

A market maker (v1, its own account) rests one sell order far larger than the run
needs; every measured order is a limit buy of 1 at its price, so it trades on arrival:
one acknowledgement (v1 ``K``, FIX ExecutionReport New) and one fill report (v1: the
notifier's ``fill`` on the account's private ``orders`` channel; FIX: ExecutionReport
Trade) per order. Orders go out open loop at the offered rate from a sender thread
(messages encoded before the clock starts, so encoding costs nothing on the path);
latency is from the actual send to the reply's arrival, read by another thread, both
with ``time.perf_counter_ns``. At each rate the phases alternate v1, FIX, v1, FIX
(``--rounds``) on the same exchange, so both see the same machine.

The issue's target: at 1,000 orders/s the FIX New's p50 exceeds v1's ack p50 by at
most 200 µs; the script prints whether it holds and exits 1 if not.

``--trace`` also says where FIX's own time goes: the exchange runs with tracing on, the
acceptor notes its turns (``ringex.fix.turns``), and each FIX order's path is cut at
the acceptor's stamps (the same clock as the client's): the D's wake-up, its turn
(parse and route, store commit, forward), the gateway's leg until the ``K`` wakes the
acceptor, the K's turn (report, store commit, send), and the report's way to the client.

    flock /work/bench.lock .venv/bin/python perf/fix_bench.py            # writes perf/results/fix.json
    .venv/bin/python perf/fix_bench.py --rates 1000 --seconds 2 --no-json    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perf.targets import LocalExchange, scheduler  # noqa: E402
from ringex.codes import ExecType, FixMsgType, FixOrdType, FixSide, ReplyType, Side, Tag  # noqa: E402
from ringex.fix.acceptor import TICK_S  # noqa: E402
from ringex.fix.client import FixClient  # noqa: E402
from ringex.fix.codec import utc_timestamp  # noqa: E402
from ringex.fix.session import compose  # noqa: E402
from ringex.fix.turns import read_turns  # noqa: E402
from ringex.order_entry.client import OrderClient  # noqa: E402
from ringex.order_entry.protocol import REPLY, encode_new_order  # noqa: E402
from ringex.topology import FIX  # noqa: E402
from ringex.trace import FLUSH_S  # noqa: E402
from tests.support.net import free_ports  # noqa: E402

SYMBOL = "ACME"
PRICE = 100
TARGET_US = 200.0  # the bound on FIX's added p50 at 1,000 orders/s
RESULTS = ROOT / "perf" / "results" / "fix.json"


class Phase:
    """One protocol at one rate: send times and reply times per order index."""

    def __init__(self, n: int) -> None:
        self.sent = np.zeros(n, dtype=np.int64)
        self.acked = np.zeros(n, dtype=np.int64)
        self.filled = np.zeros(n, dtype=np.int64)


# The sender wakes this often and sends every order that is due: a pacer that spins
# between orders would hold the GIL and starve the reader threads it is measured by
# (perf/loadgen.py's tick, for the same reason).
SEND_TICK_S = 0.0005


def pace(phase: Phase, frames: list[bytes], rate: float, sendall) -> float:
    """Send ``frames`` open loop at ``rate``/s; returns the worst lateness (µs)."""
    interval = 1e9 / rate
    start = time.perf_counter_ns() + 5_000_000
    worst = 0
    i, n = 0, len(frames)
    while i < n:
        now = time.perf_counter_ns()
        due = min(n, int((now - start) // interval) + 1) if now >= start else 0
        while i < due:
            phase.sent[i] = sent = time.perf_counter_ns()
            sendall(frames[i])
            worst = max(worst, sent - (start + int(i * interval)))
            i += 1
        time.sleep(SEND_TICK_S)
    return worst / 1e3


def wait_done(phase: Phase, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if phase.acked.all() and phase.filled.all():
            return
        time.sleep(0.01)


# -- protocol v1 ---------------------------------------------------------------------------------


class V1Load:
    """A v1 session sending the orders and an orders-channel subscriber reading fills."""

    def __init__(self, host: str, order_port: int, md_port: int, account: int, token: int) -> None:
        self.orders = OrderClient.connect(host, order_port)
        self.orders.login(account, token)
        self.md = socket.create_connection((host, md_port))
        self.md.sendall(json.dumps({"op": "login", "account": account, "token": token}).encode() + b"\n")
        self.md.sendall(b'{"op": "subscribe", "channel": "orders"}\n')
        self._await_md(b'"subscribed"')
        self.phase: Phase | None = None
        self.base = 0
        self.next_id = 1
        threading.Thread(target=self._read_acks, daemon=True).start()
        threading.Thread(target=self._keep_alive, daemon=True).start()
        threading.Thread(target=self._read_fills, daemon=True).start()

    def _await_md(self, marker: bytes) -> None:
        buf = b""
        while marker not in buf:
            buf += self.md.recv(65536)

    def frames(self, n: int) -> list[bytes]:
        self.base = self.next_id
        self.next_id += n
        return [encode_new_order(SYMBOL, Side.BUY, 1, PRICE, client_order_id=self.base + i) for i in range(n)]

    def _read_acks(self) -> None:
        sock = self.orders.sock
        sock.settimeout(None)
        buf = b""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            now = time.perf_counter_ns()
            buf += data
            whole = len(buf) - len(buf) % REPLY.itemsize
            replies, buf = np.frombuffer(buf[:whole], REPLY), buf[whole:]
            phase = self.phase
            for cid, kind in zip(replies["client_order_id"].tolist(), replies["msg_type"].tolist(), strict=True):
                i = cid - self.base
                if phase is not None and 0 <= i < len(phase.acked) and kind == ReplyType.ACK:
                    phase.acked[i] = now

    def _read_fills(self) -> None:
        buf = b""
        while True:
            data = self.md.recv(1 << 16)
            if not data:
                return
            now = time.perf_counter_ns()
            buf += data
            *lines, buf = buf.split(b"\n")
            phase = self.phase
            for line in lines:
                if b'"fill"' not in line:
                    continue
                message = json.loads(line)
                i = message["client_order_id"] - self.base
                if phase is not None and 0 <= i < len(phase.filled) and message["remaining"] == 0:
                    phase.filled[i] = now

    def heartbeat(self) -> None:
        self.orders.heartbeat()

    def _keep_alive(self) -> None:
        # the gateway closes a v1 session silent for 5 s, and the FIX phases are longer:
        # a 64-byte frame is one send(), never split by the sender thread's
        while True:
            time.sleep(1.0)
            if self.phase is None:
                try:
                    self.heartbeat()
                except OSError:
                    return  # the exchange has stopped

    def run(self, rate: float, n: int) -> tuple[Phase, float]:
        frames = self.frames(n)
        self.phase = phase = Phase(n)
        late = pace(phase, frames, rate, self.orders.sock.sendall)
        wait_done(phase, 30)
        self.phase = None
        return phase, late


# -- FIX ----------------------------------------------------------------------------------------


class FixLoad:
    """A FIX session: messages composed ahead (with their sequence numbers), reports read back."""

    def __init__(self, host: str, port: int, account: int, token: int) -> None:
        self.client = FixClient(host, port, "BENCH", heartbeat_s=60).connect()
        self.client.logon(account, token)
        self.phase: Phase | None = None
        self.prefix = ""
        self.round = 0
        threading.Thread(target=self._read, daemon=True).start()

    def frames(self, n: int) -> list[bytes]:
        self.round += 1
        self.prefix = f"r{self.round}-"
        now = time.time_ns()
        stamp = utc_timestamp(now)
        frames = []
        for i in range(n):
            body = [(Tag.ClOrdID, f"{self.prefix}{i}"), (Tag.Symbol, SYMBOL), (Tag.Side, FixSide.BUY)]
            body += [(Tag.TransactTime, stamp), (Tag.OrderQty, 1), (Tag.OrdType, FixOrdType.LIMIT), (Tag.Price, PRICE)]
            frames.append(compose(self.client.store, "BENCH", "RINGEX", FixMsgType.NEW_ORDER_SINGLE, body, now))
        return frames

    def _read(self) -> None:
        # Only ClOrdID and ExecType are needed: found with bytes.find, a few µs per
        # report, so the reader is not what is measured (frames end "<SOH>10=ddd<SOH>").
        sock = self.client.sock
        sock.settimeout(None)
        buf = b""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            now = time.perf_counter_ns()
            buf += data
            phase, prefix = self.phase, b"\x0111=" + self.prefix.encode()
            pos = 0
            while (end := buf.find(b"\x0110=", pos)) >= 0 and len(buf) >= end + 8:
                message, pos = buf[pos : end + 8], end + 8
                if phase is None or b"\x0135=8\x01" not in message:
                    continue
                at = message.find(prefix)
                if at < 0:
                    continue
                at += len(prefix)
                i = int(message[at : message.index(b"\x01", at)])
                kind = message[message.index(b"\x01150=") + 5]
                if kind == ord(ExecType.NEW):
                    phase.acked[i] = now
                elif kind == ord(ExecType.TRADE):
                    phase.filled[i] = now
            buf = buf[pos:]

    def heartbeat(self) -> None:
        self.client.session._send_admin(FixMsgType.HEARTBEAT, [])
        self.client._flush()

    def run(self, rate: float, n: int) -> tuple[Phase, float]:
        frames = self.frames(n)
        self.phase = phase = Phase(n)
        late = pace(phase, frames, rate, self.client.sock.sendall)
        wait_done(phase, 30)
        self.phase = None
        return phase, late


def stats(phases: list[Phase], what: str) -> dict:
    sent = np.concatenate([p.sent for p in phases])
    got = np.concatenate([getattr(p, what) for p in phases])
    ok = got > 0
    us = (got[ok] - sent[ok]) / 1e3
    pct = np.percentile(us, [50, 90, 99, 99.9]) if len(us) else [float("nan")] * 4
    return {
        "n": int(len(sent)),
        "missing": int((~ok).sum()),
        "p50_us": round(float(pct[0]), 1),
        "p90_us": round(float(pct[1]), 1),
        "p99_us": round(float(pct[2]), 1),
        "p999_us": round(float(pct[3]), 1),
        "max_us": round(float(us.max()), 1) if len(us) else None,
    }


# The legs of a FIX order's path, between the client's stamps and the acceptor's.
PATH = (
    ("client sends D -> acceptor wakes", "sent", "d_wake"),
    ("D turn: parse and route", "d_wake", "d_handled"),
    ("D turn: store commit", "d_handled", "d_committed"),
    ("D turn: forward to the gateway", "d_committed", "d_sent"),
    ("gateway, journal, K back -> acceptor wakes", "d_sent", "k_wake"),
    ("K turn: report New", "k_wake", "k_handled"),
    ("K turn: store commit", "k_handled", "k_committed"),
    ("K turn: send", "k_committed", "k_sent"),
    ("report sent -> client has it", "k_sent", "acked"),
    ("total (D -> ER New)", "sent", "acked"),
)


def fix_path(phases: dict[str, list[Phase]], turns: np.ndarray) -> dict[str, dict]:
    """Per rate, the p50 and p90 of each leg of ``PATH`` (µs). The bench's FIX session
    is the acceptor's only one and sends only orders: the turns' orders, in order, are
    the phases' orders, and their replies the orders' K's."""
    d = turns[turns["orders"] > 0]
    d = np.repeat(d, d["orders"])
    k = turns[turns["replies"] > 0]
    k = np.repeat(k, k["replies"])
    n = sum(len(p.sent) for ps in phases.values() for p in ps)
    if len(d) != n or len(k) != n:
        print(f"the turn trace has {len(d)} orders and {len(k)} replies for {n} orders sent; no path figures")
        return {}
    out, start = {}, 0
    for rate, ps in phases.items():
        count = sum(len(p.sent) for p in ps)
        stamps = {
            "sent": np.concatenate([p.sent for p in ps]),
            "acked": np.concatenate([p.acked for p in ps]),
        }
        for side, rows in (("d", d[start : start + count]), ("k", k[start : start + count])):
            for name in ("wake", "handled", "committed", "sent"):
                stamps[f"{side}_{name}"] = rows[name]
        start += count
        if rate == "warm-up":
            continue
        ok = stamps["acked"] > 0
        out[rate] = {}
        for label, a, b in PATH:
            us = (stamps[b][ok] - stamps[a][ok]) / 1e3
            p50, p90 = np.percentile(us, [50, 90]) if len(us) else (float("nan"), float("nan"))
            out[rate][label] = {"p50_us": round(float(p50), 1), "p90_us": round(float(p90), 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,10000", help="orders/s, comma separated (default 1000,10000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="v1/FIX phase pairs per rate (default 2)")
    parser.add_argument("--durability", choices=("fsync", "async"), default="fsync")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the figures (default {RESULTS})")
    parser.add_argument("--no-json", action="store_true", help="print only")
    parser.add_argument("--trace", action="store_true", help="cut each FIX order's path at the acceptor's turns")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    load_before = os.getloadavg()
    (fix_port,) = free_ports(1)
    # any trace_every turns the acceptor's turn trace on; this one samples few commands
    env = {"RINGEX_TRACE_EVERY": "1000000"} if args.trace else None
    with LocalExchange(args.durability, ["--fix-port", str(fix_port)], env=env) as target:
        (maker, maker_token), (v1_account, v1_token), (fix_account, fix_token) = target.accounts[:3]
        with OrderClient.connect(target.host, target.port) as mm:
            mm.login(maker, maker_token)
            assert mm.sell(SYMBOL, 100_000_000, PRICE).ok
            v1 = V1Load(target.host, target.port, target.md_port, v1_account, v1_token)
            fix = FixLoad(target.host, fix_port, fix_account, fix_token)
            # warm both paths (first-use costs: caches, the acceptor's first commit...)
            v1.run(500, 200)
            warm_up, _ = fix.run(500, 200)
            fix_phases = {"warm-up": [warm_up]}  # in the order they ran
            results = {}
            for rate in rates:
                n = int(rate * args.seconds)
                runs = {"v1": [], "fix": []}
                late = {"v1": 0.0, "fix": 0.0}
                for _ in range(args.rounds):
                    for name, side in (("v1", v1), ("fix", fix)):
                        v1.heartbeat()
                        fix.heartbeat()
                        phase, worst = side.run(rate, n)
                        runs[name].append(phase)
                        if name == "fix":
                            fix_phases.setdefault(str(int(rate)), []).append(phase)
                        late[name] = max(late[name], worst)
                        time.sleep(0.5)
                results[str(int(rate))] = {
                    "v1": {
                        "ack": stats(runs["v1"], "acked"),
                        "fill": stats(runs["v1"], "filled"),
                        "sender_late_max_us": late["v1"],
                    },
                    "fix": {
                        "new": stats(runs["fix"], "acked"),
                        "fill": stats(runs["fix"], "filled"),
                        "sender_late_max_us": late["fix"],
                    },
                }
            if args.trace:
                time.sleep(2 * FLUSH_S + TICK_S)  # the acceptor writes its last turns
                turns = read_turns(target.data_dir, FIX)
                for rate, cuts in fix_path(fix_phases, turns).items():
                    results[rate]["fix"]["path"] = cuts
    print(
        f"FIX vs protocol v1, one ringex ({args.durability}), {args.rounds} x {args.seconds:g} s per protocol and rate"
    )
    print(f"{'rate/s':>8} {'what':<22} {'p50 us':>9} {'p90 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'missing':>8}")
    for rate, r in results.items():
        for label, s in (
            ("v1 order -> K", r["v1"]["ack"]),
            ("FIX D -> ER New", r["fix"]["new"]),
            ("v1 order -> fill", r["v1"]["fill"]),
            ("FIX D -> ER Trade", r["fix"]["fill"]),
        ):
            print(
                f"{rate:>8} {label:<22} {s['p50_us']:>9} {s['p90_us']:>9} {s['p99_us']:>9} {s['p999_us']:>9} {s['missing']:>8}"
            )
    for rate, r in results.items():
        if "path" in r["fix"]:
            print(f"where a FIX order's time goes at {rate}/s (p50 / p90 us):")
            for stage, cut in r["fix"]["path"].items():
                print(f"  {stage:<44} {cut['p50_us']:>8} {cut['p90_us']:>8}")
    added = None
    if "1000" in results:
        added = results["1000"]["fix"]["new"]["p50_us"] - results["1000"]["v1"]["ack"]["p50_us"]
        verdict = "holds" if added <= TARGET_US else "MISSED"
        print(f"FIX adds {added:.0f} us at p50 over v1 at 1,000/s (target <= {TARGET_US:.0f} us): {verdict}")
    if not args.no_json:
        doc = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                # the machine is shared: how busy it was (1-minute load average) before and after
                "loadavg_before": round(load_before[0], 2),
                "loadavg_after": round(os.getloadavg()[0], 2),
                # under `chrt -f N` every process of the run is ahead of the machine's other work
                "scheduler": scheduler(),
            },
            "durability": args.durability,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "results": results,
            "fix_added_p50_us_at_1000": added,
            "target_us": TARGET_US,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if added is None or added <= TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
