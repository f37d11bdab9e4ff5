"""Ring throughput and latency, one producer process and one consumer process.

OneToOneThroughput: records/s through one ring, per producer batch size and wait
strategy. The producer claims ``batch`` slots, copies prepared ``COMMAND`` records in
(``Batch.fill``) and publishes; the consumer reads everything available in one batch,
sums the ``order_id`` column (touching the data, and checking it) and commits.

```
 producer process                                   consumer process
  claim(batch) ─► fill ─► publish ─► [ring: 4,096 × 64-byte COMMAND] ─► poll ─► sum ─► commit
        ▲                                                                             │
        └──────────────── waits for space (blocking / yielding) ◄──────────────────────┘
```

OneToThreePipeline: the same with three consumer processes, one of them gated on
another, as an exchange's rings are read (batch 256, blocking).

```
                                 ┌─► journaler ──┐ (gate)
 producer ─► [ring: 4,096] ──────┼─► matcher     ▼
                                 └──────────► notifier (reads only what the journaler passed)
```

OneToOnePingPong: round-trip latency, one record at a time.

```
 pinger process                                       ponger process
  t0 ─► claim(1) ─► publish ─► [ping ring: 1,024] ─► wait_for ─┐
                                                              │ claim(1) ─► publish
  t1 ◄─ wait_for ◄────────────── [pong ring: 1,024] ◄──────────┘
```

Throughput = records / (consumer's last receive - producer's first claim), both on
CLOCK_MONOTONIC. Latency = t1 - t0 per round trip after a warm-up; p50/p99/p99.9.
Each case checks what arrived (count and ``order_id`` sum) and fails loudly if not.

    .venv/bin/python perf/ring_bench.py            # full run, writes perf/results/ring.json
    .venv/bin/python perf/ring_bench.py --quick    # a tenth of the records, no JSON

Each throughput case runs ``--repeat`` times (3): the best run and the median are
reported, and ``ns_per_record`` and the batch figures are the best run's.

The machine has 2 cores shared with other work: the two processes take both, so a
neighbour's load shows up directly in these figures; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import secrets
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ringex.records import COMMAND  # noqa: E402
from ringex.ring import Ring  # noqa: E402
from ringex.topology import JOURNALER, MATCHER, NOTIFIER  # noqa: E402
from ringex.wait import wait_strategy  # noqa: E402

CAPACITY = 4096
PING_CAPACITY = 1024
# Records per throughput case, by batch size: about a second of work each here.
RECORDS = {1: 300_000, 16: 3_000_000, 256: 10_000_000}
# The exchange's own shape: journaler and matcher read the producer's cursor, the
# notifier is gated on the journaler.
PIPELINE_CONSUMERS = (JOURNALER, MATCHER, NOTIFIER)
PIPELINE_GATING = {NOTIFIER: [JOURNALER]}
PIPELINE_RECORDS = 10_000_000
ROUND_TRIPS = 20_000
WARMUP_TRIPS = 2_000


def _name(kind: str) -> str:
    return f"rx-bench-{kind}-{os.getpid()}-{secrets.token_hex(3)}"


#### OneToOneThroughput


def _produce(name, total, batch, wait, ready, go, queue) -> None:
    ring = Ring.attach(name, COMMAND)
    producer = ring.producer(wait_strategy(wait))
    source = np.zeros(batch, COMMAND)
    source["order_id"] = np.arange(batch)
    ready.set()
    go.wait()
    started = time.perf_counter_ns()
    remaining = total
    while remaining:
        n = batch if remaining >= batch else remaining
        claim = producer.claim(n)
        claim.fill(source[:n])
        producer.publish(claim.hi)
        remaining -= n
    queue.put(("producer", started))


def _consume(name, consumer_name, total, wait, ready, queue) -> None:
    ring = Ring.attach(name, COMMAND)
    consumer = ring.consumer(consumer_name, wait_strategy(wait))
    ready.set()
    got = checksum = batches = 0
    while got < total:
        batch = consumer.wait_batch(timeout=1.0)
        if not batch:
            continue
        for view in batch.views:
            checksum += int(view["order_id"].sum())
        got += len(batch)
        batches += 1
        consumer.commit(batch.hi)
    queue.put((consumer_name, time.perf_counter_ns(), got, checksum, batches, consumer._sleeper.sleeps))


def throughput(topology: str, batch: int, wait: str, total: int, consumers=("c",), gating=None) -> dict:
    """One producer process and a process per consumer; records/s until the last
    consumer has the last record."""
    ctx = mp.get_context("spawn")
    name = _name("tput")
    ring = Ring.create(name, COMMAND, CAPACITY, consumers=list(consumers), gating=gating)
    queue = ctx.Queue()
    go = ctx.Event()
    ready = [ctx.Event() for _ in range(len(consumers) + 1)]
    procs = [
        ctx.Process(target=_consume, args=(name, c, total, wait, ready[i], queue), daemon=True)
        for i, c in enumerate(consumers)
    ]
    procs.append(ctx.Process(target=_produce, args=(name, total, batch, wait, ready[-1], go, queue), daemon=True))
    try:
        for proc in procs:
            proc.start()
        if not all(event.wait(60) for event in ready):
            raise RuntimeError("bench processes did not start")
        go.set()
        reports = {msg[0]: msg for msg in (queue.get(timeout=600) for _ in procs)}
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        ring.close()
        ring.unlink()
    _, started = reports["producer"]
    full, rest = divmod(total, batch)
    expected = full * (batch * (batch - 1) // 2) + rest * (rest - 1) // 2
    for c in consumers:
        _, finished, got, checksum, batches, sleeps = reports[c]
        if got != total or checksum != expected:
            raise AssertionError(
                f"{topology} batch {batch} {wait}: {c} got {got} records, checksum {checksum},"
                f" expected {total}, {expected}"
            )
    finished = max(reports[c][1] for c in consumers)
    batches = sum(reports[c][4] for c in consumers)
    seconds = (finished - started) / 1e9
    return {
        "topology": topology,
        "wait": wait,
        "batch": batch,
        "records": total,
        "seconds": round(seconds, 4),
        "records_per_s": round(total / seconds),
        "ns_per_record": round(seconds / total * 1e9, 1),
        "consumer_batches": batches,
        "mean_consumer_batch": round(total * len(consumers) / batches, 1),
        "consumer_sleeps": sum(reports[c][5] for c in consumers),
    }


#### OneToOnePingPong


def _pong(ping_name, pong_name, trips, wait, ready) -> None:
    ping = Ring.attach(ping_name, COMMAND)
    pong = Ring.attach(pong_name, COMMAND)
    inbox = ping.consumer("ponger", wait_strategy(wait))
    outbox = pong.producer(wait_strategy(wait))
    ready.set()
    for seq in range(trips):
        inbox.wait_for(seq)
        claim = outbox.claim(1)
        claim.first["ts_ns"] = inbox.poll(1).first["ts_ns"]
        outbox.publish(claim.hi)
        inbox.commit(seq)


def one_to_one_ping_pong(wait: str, trips: int, warmup: int) -> dict:
    ctx = mp.get_context("spawn")
    ping_name, pong_name = _name("ping"), _name("pong")
    ping = Ring.create(ping_name, COMMAND, PING_CAPACITY, consumers=["ponger"])
    pong = Ring.create(pong_name, COMMAND, PING_CAPACITY, consumers=["pinger"])
    ready = ctx.Event()
    total = warmup + trips
    proc = ctx.Process(target=_pong, args=(ping_name, pong_name, total, wait, ready), daemon=True)
    try:
        proc.start()
        if not ready.wait(60):
            raise RuntimeError("ponger did not start")
        outbox = ping.producer(wait_strategy(wait))
        inbox = pong.consumer("pinger", wait_strategy(wait))
        rtt = np.empty(total, np.int64)
        clock = time.perf_counter_ns
        for seq in range(total):
            t0 = clock()
            claim = outbox.claim(1)
            claim.first["ts_ns"] = t0
            outbox.publish(seq)
            if inbox.wait_for(seq, timeout=10.0) < seq:
                raise AssertionError(f"no pong for ping {seq}")
            t1 = clock()
            echoed = int(inbox.poll(1).first["ts_ns"][0])
            inbox.commit(seq)
            if echoed != t0:
                raise AssertionError(f"pong {seq} carries {echoed}, sent {t0}")
            rtt[seq] = t1 - t0
        proc.join(10)
        del claim
    finally:
        if proc.is_alive():
            proc.kill()
        for ring in (ping, pong):
            ring.close()
            ring.unlink()
    sample = rtt[warmup:] / 1000.0
    p50, p99, p999 = np.percentile(sample, [50, 99, 99.9])
    return {
        "topology": "OneToOnePingPong",
        "wait": wait,
        "round_trips": trips,
        "rtt_us_p50": round(float(p50), 2),
        "rtt_us_p99": round(float(p99), 2),
        "rtt_us_p99_9": round(float(p999), 2),
        "rtt_us_max": round(float(sample.max()), 2),
    }


#### Report


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the records; do not write the JSON")
    parser.add_argument("--out", default=str(HERE / "results" / "ring.json"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput case (best and median reported)")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    report = {"bench": "ring", "machine": machine(), "ring_capacity": CAPACITY, "throughput": [], "latency": []}
    print(f"machine: {report['machine']}")
    print(
        f"{'topology':<20} {'wait':<9} {'batch':>5} {'records':>10} {'best rec/s':>12} {'median':>12}"
        f" {'ns/rec':>8} {'cons. batch':>11}"
    )
    cases = [
        ("OneToOneThroughput", wait, batch, total)
        for wait in ("blocking", "yielding")
        for batch, total in RECORDS.items()
    ]
    cases.append(("OneToThreePipeline", "blocking", 256, PIPELINE_RECORDS))
    for topology, wait, batch, total in cases:
        shape = (PIPELINE_CONSUMERS, PIPELINE_GATING) if topology == "OneToThreePipeline" else ()
        runs = [throughput(topology, batch, wait, total // scale, *shape) for _ in range(args.repeat)]
        # Neighbours' load only ever slows a run down, so the best run is the closest
        # to what the ring can do; the median says what to expect on a busy machine.
        row = max(runs, key=lambda r: r["records_per_s"])
        row["runs"] = args.repeat
        row["median_records_per_s"] = sorted(r["records_per_s"] for r in runs)[len(runs) // 2]
        report["throughput"].append(row)
        print(
            f"{row['topology']:<20} {wait:<9} {batch:>5} {row['records']:>10,} {row['records_per_s']:>12,}"
            f" {row['median_records_per_s']:>12,} {row['ns_per_record']:>8} {row['mean_consumer_batch']:>11}"
        )
    print(f"{'topology':<20} {'wait':<9} {'trips':>7} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'max µs':>9}")
    for wait in ("blocking", "yielding"):
        row = one_to_one_ping_pong(wait, ROUND_TRIPS // scale, WARMUP_TRIPS // scale)
        report["latency"].append(row)
        print(
            f"{row['topology']:<20} {wait:<9} {row['round_trips']:>7} {row['rtt_us_p50']:>8} {row['rtt_us_p99']:>8}"
            f" {row['rtt_us_p99_9']:>9} {row['rtt_us_max']:>9}"
        )
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
