"""What one stage costs per wake-up, warm and with its caches evicted.

At low rates every request wakes each stage once, and on this 2-core machine the
stages (and the load generator) take turns on the same cores: between two turns of the
matcher, the gateway, the journaler and the notifier have run there. The stage trace
(``ringex trace``) shows a journaler round taking ~135 µs in the running exchange while
the same round costs ~20 µs in a loop. This benchmark measures why, one stage at a time:

- **wake**: the operating system's part. One process posts a POSIX semaphore another
  sleeps on; the time to the sleeper running, and what the post costs the poster.
- **matcher turn**: ``Shard.turn`` for one command (poll the in-ring, match, publish the
  events, commit, post), in this process, with the journaler a real process making the
  command durable first, as in ``ringex up``.
- **journaler round**: ``Journaler.round`` for one command on one of 4 in-rings (take,
  pack, LMDB commit, cursor stores), in this process, async durability.

Each turn is measured warm (back to back) and after touching ``--evict-mb`` MB of other
memory, which is what the other stages do to the caches between two turns. CPU time of
the turn only (``time.thread_time_ns``), medians of repeats; the process runs under
SCHED_FIFO when allowed so the machine's other work does not land inside a turn.

    .venv/bin/python perf/wake_bench.py            # writes perf/results/wake.json
    .venv/bin/python perf/wake_bench.py --quick    # fewer turns, no JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import posix_ipc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # Stages starts a real journaler as ringex up does

from support.stages import Stages  # noqa: E402

from ringex.codes import Op, Side  # noqa: E402
from ringex.config import SymbolSpec, load_config  # noqa: E402
from ringex.engine.shard import Shard  # noqa: E402
from ringex.journal.journaler import Journaler  # noqa: E402
from ringex.matcher_jit import warm_up  # noqa: E402
from ringex.records import COMMAND  # noqa: E402
from ringex.topology import JOURNALER, MATCHER, NOTIFIER, Topology  # noqa: E402
from ringex.wal import Journal  # noqa: E402

SYMBOLS = ("ACME", "BOLT", "CRUX", "DYNE")


def _fifo() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return True
    except (PermissionError, OSError):
        return False


class Evictor:
    """Touches ``mb`` MB of memory: what the other stages' turns do to this one's caches."""

    def __init__(self, mb: int) -> None:
        self.block = np.zeros(mb * 131072) if mb else None

    def __call__(self) -> None:
        if self.block is not None:
            self.block += 1.0


def wake_latency(turns: int) -> dict:
    """Post → the sleeper runs, and the post's own cost, across two processes."""
    name = f"/rxwake{os.getpid()}"
    ping = posix_ipc.Semaphore(name + "a", posix_ipc.O_CREX)
    pong = posix_ipc.Semaphore(name + "b", posix_ipc.O_CREX)
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        out = os.fdopen(wr, "w")
        woke = []
        for _ in range(turns):
            ping.acquire()
            woke.append(time.perf_counter_ns())
            pong.release()
        out.write(json.dumps(woke))
        out.close()
        os._exit(0)
    os.close(wr)
    posted, costs = [], []
    for _ in range(turns):
        time.sleep(0.0005)  # let the other side fall asleep, as at 1,000 requests/s
        t0 = time.perf_counter_ns()
        ping.release()
        t1 = time.perf_counter_ns()
        posted.append(t0)
        costs.append(t1 - t0)
        pong.acquire()
    with os.fdopen(rd) as f:
        woke = json.loads(f.read())
    os.waitpid(pid, 0)
    for sem in (ping, pong):
        sem.unlink()
    latency = np.array(woke) - np.array(posted)
    return {
        "wake_us_p50": round(float(np.percentile(latency, 50)) / 1e3, 1),
        "wake_us_p99": round(float(np.percentile(latency, 99)) / 1e3, 1),
        "post_to_sleeper_us_p50": round(float(np.percentile(costs, 50)) / 1e3, 1),
    }


def matcher_turns(tmp: Path, turns: int, repeats: int, evict: Evictor) -> float:
    warm_up()
    toml = "".join(f"[symbols.{s}]\n" for s in SYMBOLS)
    with Stages(tmp / "shard", toml, durability="async", ring_capacity=1 << 12) as stages:
        stages.start(JOURNALER)
        shard = Shard(stages.config, stages.topology, 0)
        ins = [stages.topology.attach_in(s) for s in SYMBOLS]
        outs = [stages.topology.attach_out(s) for s in SYMBOLS]
        try:
            producers = [ring.producer() for ring in ins]
            readers = [ring.consumer(NOTIFIER) for ring in outs]
            command = np.zeros(1, COMMAND)
            command["msg_type"] = Op.NEW
            command["qty"] = 1
            command["account"] = 1
            medians = []
            order_id = 0
            for repeat in range(repeats + 1):
                costs = []
                for k in range(turns):
                    i = k % len(SYMBOLS)
                    order_id += 1
                    command["order_id"] = order_id
                    command["side"] = Side.BUY if k % 2 else Side.SELL
                    command["price"] = 100 + k % 7
                    producers[i].write(command)
                    while ins[i].consumer_cursor(JOURNALER) < producers[i].cursor:
                        pass  # the journaler makes it durable: only then may the matcher see it
                    evict()
                    t0 = time.thread_time_ns()
                    shard.turn()
                    costs.append(time.thread_time_ns() - t0)
                    batch = readers[i].poll()
                    if batch:
                        readers[i].commit(batch.hi)
                if repeat:  # the first repeat warms the kernels and the book
                    medians.append(statistics.median(costs) / 1e3)
        finally:
            shard.close()
            for ring in ins + outs:
                ring.close()
    return round(statistics.median(medians), 1)


def journaler_rounds(tmp: Path, turns: int, repeats: int, evict: Evictor) -> float:
    config = load_config(
        environ={}, overrides={"symbols": tuple(SymbolSpec(s) for s in SYMBOLS), "ring_capacity": 4096}
    )
    topology = Topology.for_config(config, prefix=f"rxwb{os.getpid()}")
    rings = topology.create()
    try:
        with Journal(tmp / "journal", durability="async") as journal:
            journaler = Journaler(journal, topology)
            ins = rings[0::2]
            producers = [ring.producer() for ring in ins]
            readers = [ring.consumer(MATCHER) for ring in ins]
            command = np.zeros(1, COMMAND)
            command["msg_type"] = Op.NEW
            command["qty"] = 1
            medians = []
            for repeat in range(repeats + 1):
                costs = []
                for k in range(turns):
                    i = k % len(SYMBOLS)
                    producers[i].write(command)
                    evict()
                    t0 = time.thread_time_ns()
                    journaler.round()
                    costs.append(time.thread_time_ns() - t0)
                    readers[i].commit(readers[i].poll().hi)
                if repeat:
                    medians.append(statistics.median(costs) / 1e3)
            journaler.close()
    finally:
        for ring in rings:
            ring.close()
        topology.remove()
    return round(statistics.median(medians), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--evict-mb", default="0,8,32", help="MB touched between turns, comma separated")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.repeats = 300, 2
    fifo = _fifo()
    load_before = os.getloadavg()
    wake = wake_latency(args.turns)
    print(
        f"wake: post -> sleeper runs p50 {wake['wake_us_p50']} us, p99 {wake['wake_us_p99']} us; "
        f"a post to a sleeper costs the poster {wake['post_to_sleeper_us_p50']} us"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (int(x) for x in args.evict_mb.split(",")):
            evict = Evictor(mb)
            row = {
                "evict_mb": mb,
                "matcher_turn_us": matcher_turns(Path(tmp) / f"m{mb}", args.turns, args.repeats, evict),
                "journaler_round_us": journaler_rounds(Path(tmp) / f"j{mb}", args.turns, args.repeats, evict),
            }
            rows.append(row)
            print(
                f"caches {'warm' if not mb else f'after touching {mb} MB':>22}: matcher turn "
                f"{row['matcher_turn_us']:6.1f} us, journaler round {row['journaler_round_us']:6.1f} us (CPU, median)"
            )
    if args.quick:
        return
    out = {
        "benchmark": "one stage's cost per wake-up, warm and with its caches evicted",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "sched_fifo": fifo,
        },
        "turns": args.turns,
        "repeats": args.repeats,
        "wake": wake,
        "turns_by_eviction": rows,
    }
    path = ROOT / "perf" / "results" / "wake.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
