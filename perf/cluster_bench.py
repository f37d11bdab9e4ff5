"""Past one machine on NATS JetStream: the bridge's throughput, how long a trade takes
from the primary's print to a follower's, and subscribers served by followers.

```
                       ┌─ notifier ──► probe (t_primary), N subscribers ("one notifier")
 bench order flow ──► primary (ringex up) ── bridge ──► nats-server ──► follower 1 ──► probe (t_follower), N/2 subscribers
   (t_sent per trade)                                     (JetStream) ──► follower 2 ──► N/2 subscribers
```

1. ``bridge``: a journal of E events (and E/2 commands) written beforehand; a ``Bridge``
   publishes it all to an empty JetStream. Reports events/s (the commands are published
   meanwhile too: records/s counts both).
2. ``latency``: a primary in ``async`` replication and a follower; one crossing pair per
   trade at 1,000 and 10,000 trades/s; per trade, the follower probe's receive time
   minus the primary probe's: p50/p99/p99.9/max.
3. ``ack``: what ``sync`` replication adds to an order's ack: one session, one order at
   a time (send, wait for the ack), against a primary in ``async`` and then in ``sync``
   replication, with the journal in each durability mode. p50/p99/p99.9 of send to ack.
4. ``subscribers``: at 1,000 trades/s, N trades subscribers on the primary's notifier,
   then N/2 on each of two followers (and none on the primary). Each case reports
   whether every subscriber got every trade, and the print latency from the order's
   send to the last subscriber's receive.

    .venv/bin/python perf/cluster_bench.py                  # defaults below
    .venv/bin/python perf/cluster_bench.py --quick          # small sizes, to see it work

Writes perf/results/cluster.json. Everything shares this machine's 2 cores (exchange,
nats-server, followers, probes, subscribers and the bench), so figures are upper bounds
of what separate hosts would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from support.cluster import ClusterNode, remove_shared_memory, start_nats  # noqa: E402
from support.md_load import load_main, raise_nofile, reap  # noqa: E402

from ringex.cluster.bridge import Bridge  # noqa: E402
from ringex.config import ClusterSettings, Config, SymbolSpec  # noqa: E402
from ringex.records import COMMAND, EVENT, make_records  # noqa: E402
from ringex.topology import CMD, Topology  # noqa: E402
from ringex.wal import Journal  # noqa: E402

# the parts a run may be limited to (--only): the bridge's publish throughput, live
# prints on followers, and what sync replication adds to acks
PARTS = ("throughput", "live", "ack")

SYMBOL = "ACME"
RESULTS = HERE / "results" / "cluster.json"


def percentiles(ms: np.ndarray) -> dict[str, float]:
    if not len(ms):
        return {}
    return {q: round(float(np.percentile(ms, float(q[1:]))), 3) for q in ("p50", "p99", "p99.9")} | {
        "max": round(float(ms.max()), 3),
        "n": int(len(ms)),
    }


####################################################################################
# 1. the bridge alone
####################################################################################


def bridge_throughput(events: int, max_batch: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ringex-bridge-"))
    nats = start_nats(work / "nats")
    try:
        config = Config(
            data_dir=str(work / "data"),
            symbols=(SymbolSpec(SYMBOL),),
            durability="async",
            cluster=ClusterSettings(nats=nats.url, max_batch=max_batch),
        )
        commands = events // 2
        with Journal(config.data_dir, durability="async") as journal:
            journal.ensure_specs(config.symbols)
            step = 1 << 16
            for lo in range(0, events, step):
                n = min(step, events - lo)
                cmd_lo, cmd_n = lo // 2, n // 2
                journal.commit(
                    commands=[(SYMBOL, cmd_lo, make_records(COMMAND, cmd_n, symbol=SYMBOL, order_id=cmd_lo + 1))],
                    events=[(SYMBOL, lo, make_records(EVENT, n, symbol=SYMBOL, seq=(lo + np.arange(n)) // 2))],
                )
        topology = Topology.for_config(config, prefix=f"rxcb{secrets.token_hex(3)}")
        rings = topology.create()
        try:
            # as if the journaler had taken everything: each ring's base is the journal's end
            with Journal(config.data_dir, durability="async") as journal:
                for ring_symbol, kind, name in topology.ring_names():
                    ring = next(r for r in rings if r.name == name)
                    end = commands if kind == CMD else events
                    journal.set_ring_base(kind, ring_symbol, int(ring.header["created_ns"]), end)
            bridge = Bridge(config, topology)

            async def run() -> float:
                task = asyncio.create_task(bridge.run())
                started = time.perf_counter()
                while not bridge.lanes[0].next == commands or bridge.behind():
                    await asyncio.sleep(0.01)
                    if task.done():
                        task.result()
                elapsed = time.perf_counter() - started
                bridge.stop()
                await task
                return elapsed

            try:
                elapsed = asyncio.run(run())
            finally:
                bridge.close()
            messages = sum(lane.messages for lane in bridge.lanes)
        finally:
            for ring in rings:
                ring.close()
            topology.remove()
        return {
            "events": events,
            "commands": commands,
            "max_batch": max_batch,
            "seconds": round(elapsed, 3),
            "events_per_s": round(events / elapsed),
            "records_per_s": round((events + commands) / elapsed),
            "messages": messages,
            "note": "includes connecting and reading the streams' last messages; commands published alongside",
        }
    finally:
        nats.stop()


####################################################################################
# 2-3. a live cluster
####################################################################################


def cluster_toml(url: str) -> str:
    return f"""
[symbols.{SYMBOL}]

[order_entry]
rate_per_s = 1000000.0
burst = 100000
max_in_flight = 100000

[market_data]
max_connections_per_address = 20000
heartbeat_s = 3600.0

[cluster]
nats = "{url}"
replication = "async"
"""


class Flow:
    """Crossing pairs at ``rate`` trades/s for ``seconds`` on one session, pipelined: a
    buy then a sell that trades with it, sent together every millisecond tick; a
    reader thread takes the acks. ``sent_ns[i]`` is when the sell of trade i went."""

    def __init__(self, port: int, account: int, token: int) -> None:
        from ringex.order_entry.client import OrderClient

        self.client = OrderClient.connect("127.0.0.1", port, timeout=60.0)
        assert self.client.login(account, token).ok
        self.acks = 0
        self.rejects = 0

    @classmethod
    def send(cls, port: int, account: int, token: int, rate: float, seconds: float) -> tuple[np.ndarray, int]:
        """One session for one run (an idle session is closed by the exchange after a
        few seconds): ``(sent_ns, rejects)``."""
        flow = cls(port, account, token)
        try:
            return flow.run(rate, seconds), flow.rejects
        finally:
            flow.close()

    def run(self, rate: float, seconds: float) -> np.ndarray:
        total = int(rate * seconds)
        per_tick = max(1, int(round(rate / 1000)))
        tick = per_tick / rate
        sent = np.zeros(total, np.int64)

        def read() -> None:
            for _ in range(2 * total):
                reply = self.client.next_reply()
                if reply.ok:
                    self.acks += 1
                else:
                    self.rejects += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        start = time.perf_counter()
        i = 0
        while i < total:
            due = start + (i // per_tick) * tick
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for _ in range(min(per_tick, total - i)):
                self.client.submit_order(SYMBOL, "buy", 1, 100)
                self.client.submit_order(SYMBOL, "sell", 1, 100)
                sent[i] = time.time_ns()
                i += 1
        reader.join(120)
        return sent

    def close(self) -> None:
        self.client.close()


def subscribe(ctx, queue, port: int, n: int, procs: int, expect: int, timeout: float) -> list:
    """``n`` trades subscribers on ``port`` in ``procs`` load processes; returns them
    once every subscription is acknowledged."""
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    loaders = []
    for k in per:
        if not k:
            continue
        p = ctx.Process(target=load_main, args=(queue, "127.0.0.1", port, k, SYMBOL, expect, expect, timeout))
        p.start()
        loaders.append(p)
    subscribed = 0
    while subscribed < n:
        kind, *body = queue.get(timeout=300)
        if kind == "error":
            raise RuntimeError(body[0])
        subscribed += body[0]
    return loaders


def collect(queue, loaders, expect: int) -> tuple[np.ndarray, int, int]:
    """(per trade seq the latest receive time over all subscribers, sockets that got
    every trade, sockets)."""
    last = np.zeros(expect + 2, np.int64)
    complete = sockets = 0
    for _ in loaders:
        kind, *body = queue.get(timeout=600)
        if kind == "error":
            raise RuntimeError(body[0])
        counts, last_recv = body[0], np.array(body[1], np.int64)
        sockets += len(counts)
        complete += sum(1 for c in counts if c == expect)
        last = np.maximum(last, last_recv[: len(last)])
    reap(loaders)
    return last, complete, sockets


def live(args) -> dict:
    raise_nofile()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    work = Path(tempfile.mkdtemp(prefix="ringex-cluster-"))
    nats = start_nats(work / "nats")
    nodes: list[ClusterNode] = []
    out: dict = {"latency": [], "subscribers": []}
    try:
        toml = cluster_toml(nats.url)
        primary = ClusterNode(work / "primary", "up", toml).start()
        nodes.append(primary)
        followers = [ClusterNode(work / f"f{i}", "follow", toml).start() for i in (1, 2)]
        nodes.extend(followers)
        account, token = next(iter(primary.accounts.items()))
        rejects = 0

        def send(rate: float, seconds: float) -> np.ndarray:
            nonlocal rejects
            sent, rejected = Flow.send(primary.order_port, account, token, rate, seconds)
            rejects += rejected
            return sent

        trades = 0
        # warm-up: the first orders load the kernels' caches, the follower's first fetch
        send(200, 1.0)
        trades += 200
        for rate in args.rates:
            n = int(rate * args.seconds)
            expect = trades + n
            probes = [
                subscribe(ctx, queue, node.md_port, 1, 1, expect, args.seconds + 120)
                for node in (primary, followers[0])
            ]
            sent = send(rate, args.seconds)
            (t_primary, ok_p, _), (t_follower, ok_f, _) = (collect(queue, p, expect) for p in probes)
            seqs = np.arange(trades + 1, expect + 1)
            got = (t_primary[seqs] > 0) & (t_follower[seqs] > 0)
            hop_ms = (t_follower[seqs][got] - t_primary[seqs][got]) / 1e6
            print_ms = (t_primary[seqs][got] - sent[got]) / 1e6
            case = {
                "trades_per_s": rate,
                "trades": n,
                "primary_to_follower_ms": percentiles(hop_ms),
                "send_to_primary_print_ms": percentiles(print_ms),
                "probes_complete": [ok_p, ok_f],
                "load_avg": os.getloadavg()[0],
            }
            print(json.dumps(case), flush=True)
            out["latency"].append(case)
            trades = expect
        for where, ports in (
            ("one notifier (the primary's)", [primary.md_port]),
            ("two followers", [f.md_port for f in followers]),
        ):
            n = int(args.sub_rate * args.seconds)
            expect = trades + n
            share = args.subscribers // len(ports)
            groups = [subscribe(ctx, queue, port, share, 2, expect, args.seconds + 300) for port in ports]
            sent = send(args.sub_rate, args.seconds)
            last = np.zeros(expect + 2, np.int64)
            complete = sockets = 0
            for group in groups:
                t, ok, count = collect(queue, group, expect)
                last = np.maximum(last, t)
                complete += ok
                sockets += count
            seqs = np.arange(trades + 1, expect + 1)
            got = last[seqs] > 0
            case = {
                "where": where,
                "subscribers": sockets,
                "subscribers_with_every_trade": complete,
                "trades_per_s": args.sub_rate,
                "trades": n,
                "send_to_last_subscriber_ms": percentiles((last[seqs][got] - sent[got]) / 1e6),
                "load_avg": os.getloadavg()[0],
            }
            print(json.dumps(case), flush=True)
            out["subscribers"].append(case)
            trades = expect
        out["rejected_orders"] = rejects
    finally:
        for node in reversed(nodes):
            node.stop()
            remove_shared_memory(node.data)
        nats.stop()
    return out


def ack_latency(durability: str, replication: str, orders: int) -> dict:
    from ringex.order_entry.client import OrderClient

    work = Path(tempfile.mkdtemp(prefix="ringex-ack-"))
    nats = start_nats(work / "nats")
    node = None
    try:
        toml = cluster_toml(nats.url).replace('replication = "async"', f'replication = "{replication}"')
        node = ClusterNode(work / "primary", "up", toml, durability=durability).start()
        account, token = next(iter(node.accounts.items()))
        rtt = np.zeros(orders, np.int64)
        with OrderClient.connect("127.0.0.1", node.order_port) as client:
            assert client.login(account, token).ok
            for i in range(-200, orders):  # 200 to warm up
                side = "buy" if i % 2 else "sell"
                t0 = time.perf_counter_ns()
                reply = client.new_order(SYMBOL, side, 1, 100)
                if i >= 0:
                    rtt[i] = time.perf_counter_ns() - t0
                assert reply.ok, reply
        return {
            "durability": durability,
            "replication": replication,
            "orders": orders,
            "ack_ms": percentiles(rtt / 1e6),
            "load_avg": os.getloadavg()[0],
        }
    finally:
        if node is not None:
            node.stop()
            remove_shared_memory(node.data)
        nats.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: to see it work")
    parser.add_argument("--events", type=int, default=1_000_000, help="events the bridge publishes")
    parser.add_argument("--max-batch", type=int, default=2048)
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 10000.0], help="trades/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--subscribers", type=int, default=2000, help="in total, per case")
    parser.add_argument("--sub-rate", type=float, default=1000.0, help="trades/s of the subscriber cases")
    parser.add_argument("--orders", type=int, default=3000, help="orders per ack latency case")
    parser.add_argument(
        "--only", choices=PARTS, nargs="+", default=list(PARTS), help="parts to run"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds, args.subscribers, args.orders = 100_000, 2.0, 200, 300
    out = Path(args.out)
    # parts run separately add to what an earlier run of the others wrote
    result = json.loads(out.read_text()) if out.exists() and set(args.only) != set(PARTS) else {}
    result.update(
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        when=time.strftime("%Y-%m-%dT%H:%M:%S"),
        args=vars(args),
    )
    ok = True
    if "throughput" in args.only:
        result["throughput"] = bridge_throughput(args.events, args.max_batch)
        print(json.dumps(result["throughput"]), flush=True)
    if "live" in args.only:
        result.update(live(args))
        # the bar: two followers serve at least the subscribers one notifier does
        one, two = result["subscribers"]
        ok = result["two_followers_serve_at_least_one_notifier"] = (
            two["subscribers_with_every_trade"] >= one["subscribers_with_every_trade"]
        )
    if "ack" in args.only:
        result["ack"] = []
        for durability in ("async", "fsync"):
            for replication in ("async", "sync"):
                case = ack_latency(durability, replication, args.orders)
                print(json.dumps(case), flush=True)
                result["ack"].append(case)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
