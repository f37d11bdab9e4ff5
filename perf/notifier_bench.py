"""Notifier fan-out: how long from an event's publication until the last subscriber has it.

```
 bench process                          notifier process              load processes (2-4)
  Matcher ─► Producer ─► out-ring ──► "notifier" (gated) ──► TCP ──►  N/k sockets each,
             "journaler" commit = t0                                  epoll loop, recv time t1
```

Each trade is a resting sell and a crossing buy matched by the real ``Matcher``; the
bench writes the events into a real out-ring and commits the "journaler" cursor
(the moment the notifier may publish: t0). Every subscriber is subscribed to trades
of the symbol. Per trade, fan-out latency = max over all subscribers of its receive
time (t1) - t0. Reports p50/p99/p99.9/max of that, the trades every subscriber got,
and messages delivered per second. ``notifier_done_ms`` is the same per trade but up
to the moment the notifier's last ``send`` of it returned (its ``--stats-out`` log):
the notifier's own share, whatever the clients do. Client, producer and machine CPU
(user/system/softirq/idle) are reported per case, and ``loopback_floor`` is what one
200-byte message to N sockets costs this machine with no notifier at all.

    .venv/bin/python perf/notifier_bench.py                 # 1,000 and 10,000 subscribers
    .venv/bin/python perf/notifier_bench.py --subs 1000 --rate 1000 --seconds 5
    .venv/bin/python perf/notifier_bench.py --subs 10 1000 10000 --rate 100 1000 --repeat 3

Writes perf/results/notifier.json. The machine has 2 cores shared by the notifier,
the load processes, this producer and whatever else runs, so latency depends on the
load average (recorded per case). ``notifier_cpu_us_per_message`` (the notifier
process's user + system CPU time over the run, per message delivered) does not: it
says how many cores a fan-out rate needs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from support.md_load import MdExchange, expected_bytes, load_main, raise_nofile, reap, temp_dir  # noqa: E402

from ringex.codes import Side  # noqa: E402

SYMBOL = "ACME"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds by kind, from /proc/stat. Loopback TCP receive
    processing is charged to softirq when the kernel defers it, else to the system
    time of whichever process sent."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    return {name: int(v) / tick for name, v in zip(CPU_FIELDS, fields, strict=False)}


def gc_summary(pauses: list, start_ns: int, end_ns: int) -> dict:
    """The notifier's garbage collector pauses while trading, per generation."""
    out = {}
    for gen in (0, 1, 2):
        ms = [d / 1e6 for g, t, d in pauses if g == gen and start_ns <= t <= end_ns]
        out[f"gen{gen}"] = {"count": len(ms), "total_ms": round(sum(ms), 1), "max_ms": round(max(ms, default=0), 1)}
    return out


def percentiles(ms: np.ndarray) -> dict[str, float]:
    if not len(ms):
        return {}
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "p99.9": round(float(np.percentile(ms, 99.9)), 2),
        "max": round(float(ms.max()), 2),
    }


def run_case(
    subs: int, rate: float, seconds: float, procs: int, tuning: dict | None = None, client_nice: int = 0
) -> dict:
    raise_nofile()
    ctx = mp.get_context("spawn")
    data = temp_dir()
    ex = MdExchange(data, symbols=(SYMBOL,), capacity=1 << 16)
    stats_path = data / "notifier-stats.json"
    notifier = ex.start_notifier(
        max_queue_bytes=8 << 20, stats_out=str(stats_path), heartbeat_s=3600.0, **(tuning or {})
    )
    loaders = []
    try:
        total = int(rate * seconds)
        queue = ctx.Queue()
        per = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
        for n in per:
            p = ctx.Process(
                target=load_main,
                args=(queue, "127.0.0.1", notifier.tcp_port, n, SYMBOL, total, total, seconds + 120, client_nice),
            )
            p.start()
            loaders.append(p)
        subscribed = 0
        t_sub = time.monotonic()
        while subscribed < subs:
            kind, *body = queue.get(timeout=300)
            if kind == "error":
                raise RuntimeError(body[0])
            subscribed += body[0]
        t_sub = time.monotonic() - t_sub
        # warm the matcher kernels before timing anything
        publish_ns = np.zeros(total + 2, np.int64)
        # events in the ring once trade seq i was published: the notifier logs, per
        # batch, the events it had read and when the batch's last send returned
        events_upto = np.zeros(total + 2, np.int64)
        events = 0
        published = []
        period = 1.0 / rate
        # batch trades within one ms, as a busy matcher would hand them over
        per_tick = max(1, int(round(rate / 1000)))
        tick = period * per_tick
        seq = 0
        cpu_before = cpu_seconds(notifier.pid)
        machine_before = machine_cpu()
        producer_cpu = time.process_time()
        start = time.perf_counter()
        next_t = start
        while seq < total:
            k = min(per_tick, total - seq)
            for i in range(k):
                for side, account in ((Side.SELL, 2), (Side.BUY, 1)):
                    out = ex.new(SYMBOL, side, 100, 1, account)[2]
                    published.append(out)
                    events += len(out)
                events_upto[seq + 1 + i] = events
            ex.journal()
            now = time.time_ns()
            publish_ns[seq + 1 : seq + k + 1] = now
            seq += k
            next_t += tick
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        produce_s = time.perf_counter() - start
        producer_cpu = time.process_time() - producer_cpu
        last = np.zeros(total + 2, np.int64)
        counts = []
        client_recvs = 0
        client_cpu = 0.0
        client_bytes = 0
        sizes = []
        for _ in loaders:
            kind, *body = queue.get(timeout=seconds + 180)
            if kind == "error":
                raise RuntimeError(body[0])
            counts.extend(body[0])
            last = np.maximum(last, np.asarray(body[1], np.int64))
            client_recvs += body[2]
            client_cpu += body[3]
            client_bytes += body[4]
            sizes.extend(body[5])
        notifier_cpu = cpu_seconds(notifier.pid) - cpu_before
        machine_after = machine_cpu()
        machine = {k: round(machine_after[k] - machine_before[k], 2) for k in machine_after}
        notifier.stop()
        stats = json.loads(stats_path.read_text())
        log = np.asarray(stats["fan_out_log"], np.int64).reshape(-1, 2)
        k = np.searchsorted(log[:, 0], events_upto[1 : total + 1])  # the batch that carried each trade
        sent = k < len(log)
        done_ms = (log[k[sent], 1] - publish_ns[1 : total + 1][sent]) / 1e6
        nstats = stats["statistics"]
        end_ns = int(last.max())
        counts = np.asarray(counts)
        # the last line each socket got was trade ``counts[i]``; with the right byte
        # count, every line before it came too, once and unaltered
        whole = np.asarray(sizes) == expected_bytes(SYMBOL, np.concatenate(published))
        got_all = last[1 : total + 1] > 0
        lat_ms = (last[1 : total + 1][got_all] - publish_ns[1 : total + 1][got_all]) / 1e6
        delivered = int(counts.sum())
        span_s = (end_ns - publish_ns[1]) / 1e9
        result = {
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "subscribers": subs,
            "load_processes": procs,
            "load_processes_nice": client_nice,
            "trades": total,
            "rate_target_per_s": rate,
            "rate_achieved_per_s": round(total / produce_s, 1),
            "subscribe_all_s": round(t_sub, 2),
            "subscribers_with_every_trade": int(((counts >= total) & whole).sum()),
            "min_trades_per_subscriber": int(counts.min()),
            "fanout_latency_ms": percentiles(lat_ms),
            "notifier_done_ms": percentiles(done_ms),
            # p50/max per second of trading: a start-up transient or a periodic stall shows here
            "fanout_latency_by_second_ms": [
                [round(float(np.percentile(lat_ms[i : i + int(rate)], q)), 1) for q in (50, 100)]
                for i in range(0, len(lat_ms), int(rate))
            ],
            "trades_notifier_done": int(sent.sum()),
            "messages_delivered": delivered,
            "bytes_per_message": round(client_bytes / delivered, 1) if delivered else None,
            "bytes_delivered_per_s": round(client_bytes / span_s) if span_s > 0 else None,
            "messages_delivered_per_s": round(delivered / span_s) if span_s > 0 else None,
            "span_s": round(span_s, 2),
            "notifier_batches": len(log),
            "notifier_sends": nstats["sends"],
            "notifier_short_sends": nstats["short_sends"],
            "notifier_slow_consumers": nstats["slow_consumers"],
            "notifier_gc_pauses": gc_summary(stats["gc_pauses"], int(publish_ns[1]), end_ns),
            "client_recvs": client_recvs,
            "notifier_cpu_s": round(notifier_cpu, 2),
            "notifier_cpu_us_per_send": round(notifier_cpu / nstats["sends"] * 1e6, 2) if nstats["sends"] else None,
            "notifier_cpu_us_per_message": round(notifier_cpu / delivered * 1e6, 3) if delivered else None,
            "client_cpu_s": round(client_cpu, 2),
            "client_cpu_us_per_recv": round(client_cpu / client_recvs * 1e6, 2) if client_recvs else None,
            "producer_cpu_s": round(producer_cpu, 2),
            "machine_cpu_s": machine,
        }
        print(json.dumps(result), flush=True)
        return result
    finally:
        reap(loaders)
        notifier.stop()
        ex.close()
        shutil.rmtree(data, ignore_errors=True)


def _floor_receiver(port: int, n: int, total: int, queue) -> None:
    """``n`` connections that read until each has ``total`` bytes; reports CPU and recvs."""
    import select
    import socket

    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    ep = select.epoll(n)
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    queue.put("ready")
    buf = bytearray(1 << 18)
    got = recvs = 0
    cpu = None
    while got < total * n:
        for fd, _ in ep.poll(1.0):
            if cpu is None:
                cpu = os.times()
            try:
                got += by_fd[fd].recv_into(buf)
            except BlockingIOError:
                continue
            recvs += 1
    end = os.times()
    queue.put((end.user + end.system - cpu.user - cpu.system, recvs))
    for s in socks:
        s.close()


def loopback_floor(subs: int, size: int = 200, rounds: int = 20, procs: int = 4) -> dict:
    """What this machine charges for one message to ``subs`` TCP sockets with no
    notifier at all: one plain Python loop sends ``size`` bytes to every socket per
    round, ``procs`` processes receive as the load processes do. Any notifier's sweep
    over ``subs`` sessions costs at least this, so it bounds fan-out latency."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per = subs // procs
    receivers = [
        ctx.Process(target=_floor_receiver, args=(listener.getsockname()[1], per, size * rounds, queue))
        for _ in range(procs)
    ]
    for p in receivers:
        p.start()
    conns = []
    try:
        while len(conns) < per * procs:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        for _ in receivers:
            queue.get(timeout=120)
        blob = b"x" * size
        machine_before = machine_cpu()
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(rounds):
            for conn in conns:
                conn.sendall(blob)
        send_cpu = time.process_time() - cpu
        results = [queue.get(timeout=120) for _ in receivers]
        wall = time.perf_counter() - start
        machine_after = machine_cpu()
    finally:
        for p in receivers:
            p.join(30)
            if p.is_alive():
                p.kill()
        for conn in conns:
            conn.close()
        listener.close()
    sends = len(conns) * rounds
    recv_cpu = sum(r[0] for r in results)
    softirq = machine_after["softirq"] - machine_before["softirq"]
    out = {
        "subscribers": len(conns),
        "message_bytes": size,
        "rounds": rounds,
        "ms_per_round": round(wall / rounds * 1e3, 1),
        "sender_cpu_us_per_send": round(send_cpu / sends * 1e6, 2),
        "receiver_cpu_us_per_recv": round(recv_cpu / sum(r[1] for r in results) * 1e6, 2),
        "softirq_us_per_send": round(softirq / sends * 1e6, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps({"loopback_floor": out}), flush=True)
    return out


def core_throughput(n_commands: int = 50_000) -> dict:
    """Events/s through ``MarketData.apply`` alone (CPU time, batches of 100): with no
    subscriber, and with trades, bbo, depth and every account's orders subscribed."""
    import random

    from command_streams import CommandStream

    from ringex.config import SymbolSpec
    from ringex.engine.matcher import Matcher
    from ringex.market_data.messages import MarketData, Subscribe

    matcher = Matcher(SymbolSpec(SYMBOL, price_max=1000, capacity=1 << 16))
    events = matcher.apply(CommandStream(matcher.spec, random.Random(1)).batch(SYMBOL, n_commands), 0).copy()
    out = {"events": len(events)}
    for label, subscribed in (("no_subscribers", False), ("all_channels_subscribed", True)):
        md = MarketData([SYMBOL])
        if subscribed:
            md.subscribe("t", Subscribe("trades", SYMBOL), None)
            md.subscribe("b", Subscribe("bbo", SYMBOL), None)
            md.subscribe("d", Subscribe("depth", SYMBOL, 10), None)
            for account in (1, 2, 3):
                md.subscribe(account, Subscribe("orders", None), account)
        start = time.process_time()
        for i in range(0, len(events), 100):
            md.apply(events[i : i + 100])
        cpu = time.process_time() - start
        out[label] = {"events_per_cpu_s": round(len(events) / cpu), "us_per_event": round(cpu / len(events) * 1e6, 2)}
    print(json.dumps({"core": out}), flush=True)
    return out


def summary(results: list[dict]) -> list[dict]:
    """Per case (subscribers, rate), the median over its runs of each headline figure."""
    cases: dict[tuple, list[dict]] = {}
    for r in results:
        cases.setdefault((r["subscribers"], r["rate_target_per_s"]), []).append(r)

    def med(runs, *path):
        values = []
        for r in runs:
            for key in path:
                r = r[key]
            values.append(r)
        return round(float(np.median(values)), 2)

    return [
        {
            "subscribers": subs,
            "rate_per_s": rate,
            "runs": len(runs),
            "all_delivered_every_run": all(r["subscribers_with_every_trade"] == subs for r in runs),
            "load_average_1m": med(runs, "load_average_1m_at_end"),
            "client_received_ms_p50": med(runs, "fanout_latency_ms", "p50"),
            "client_received_ms_p99": med(runs, "fanout_latency_ms", "p99"),
            "notifier_done_ms_p50": med(runs, "notifier_done_ms", "p50"),
            "notifier_done_ms_p99": med(runs, "notifier_done_ms", "p99"),
            "notifier_cpu_s_per_s": round(float(np.median([r["notifier_cpu_s"] / r["span_s"] for r in runs])), 2),
            "notifier_cpu_us_per_send": med(runs, "notifier_cpu_us_per_send"),
            "client_cpu_s_per_s": round(float(np.median([r["client_cpu_s"] / r["span_s"] for r in runs])), 2),
            "client_cpu_us_per_recv": med(runs, "client_cpu_us_per_recv"),
            "softirq_s_per_s": round(float(np.median([r["machine_cpu_s"]["softirq"] / r["span_s"] for r in runs])), 2),
            "idle_s_per_s": round(float(np.median([r["machine_cpu_s"]["idle"] / r["span_s"] for r in runs])), 2),
        }
        for (subs, rate), runs in cases.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--rate", type=float, nargs="*", default=[1000.0], help="trades per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=0, help="load processes (default: 2 up to 5k subs, else 4)")
    parser.add_argument("--out", default=str(HERE / "results" / "notifier.json"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--skip-core", action="store_true", help="skip the MarketData.apply throughput and the loopback floor"
    )
    parser.add_argument("--fan-out-threads", type=int, default=None)
    parser.add_argument("--slice-sessions", type=int, default=None)
    parser.add_argument("--coalesce-ms", type=float, default=None)
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="lower the load processes' priority (stand-ins for subscribers on other machines)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the summary gives their medians")
    args = parser.parse_args()
    core = None if args.skip_core else core_throughput()
    floor = None if args.skip_core else [loopback_floor(n) for n in args.subs if n >= 1000]
    tuning = {
        key: value
        for key, value in (
            ("fan_out_threads", args.fan_out_threads),
            ("slice_sessions", args.slice_sessions),
            ("coalesce_ms", args.coalesce_ms),
        )
        if value is not None
    }
    results = []
    # repeats interleaved, so a burst of other work on the machine hits one run of
    # each case rather than every run of one
    for _ in range(args.repeat):
        for subs in args.subs:
            for rate in args.rate:
                procs = args.procs or (2 if subs <= 5000 else 4)
                results.append(run_case(subs, rate, args.seconds, procs, tuning, args.client_nice))
    doc = {
        "bench": "notifier fan-out: out-ring -> notifier -> N TCP subscribers of trades",
        "note": (
            "fanout latency = per trade, last subscriber's receive time minus the journaler commit that made "
            "it publishable; notifier, load processes and producer share the machine's cores with other "
            "engineers' test runs (see load_average_1m_at_end)"
        ),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": "10,000 subscribers, 1,000 trades/s: p99 fan-out latency < 100 ms",
        "marketdata_apply": core,
        "loopback_floor": floor,
        "summary": summary(results),
        "results": results,
    }
    if not args.no_write:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
