"""Journal group commit: records/s and commit latency by group size and durability mode.

::

    one process:  group of N COMMAND records ──Journal.commit──► LMDB (fsync | async)
                  (keys, CRC-32s and one transaction per group, as the journaler does)

For each durability mode (``fsync``: flush at every commit; ``async``: page cache only)
and group size (1, 100, 1000 records), commits groups for a fixed time and reports
records/s and the commit latency p50/p99/p99.9 (the whole ``Journal.commit`` call:
building keys and checksums, the transaction, the flush). Writes
``perf/results/journal.json``.

Checks its result: every record committed is read back with valid checksums, and
group commit must pay off (1000-record groups reach more records/s than 1-record ones).

Then the journaler's own cost at low rates, where latency lives: CPU per request
of ``Journaler.round`` over the rings of 4 symbols (one round for a command, one for
its event, as each isolated request costs), async mode, measured with the process's
CPU clock (``time.process_time``, steadier than wall time on a shared machine); the
median of 7 repetitions.

Usage: ``python perf/journal_bench.py [--seconds 2] [--dir /path/on/the/disk/to/test]``.
The figures depend on the disk and on neighbours: this machine's disk is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ringex.codes import Op
from ringex.config import SymbolSpec, load_config
from ringex.journal.journaler import Journaler
from ringex.records import COMMAND, EVENT, encode_symbol
from ringex.topology import MATCHER, NOTIFIER, Topology
from ringex.wal import Journal

GROUP_SIZES = (1, 100, 1000)
MODES = ("fsync", "async")


def bench(directory: Path, mode: str, group: int, seconds: float) -> dict:
    records = np.zeros(group, COMMAND)
    records["msg_type"] = Op.NEW
    records["symbol"] = encode_symbol("ACME")
    records["qty"] = 1
    latencies = []
    seq = 0
    with Journal(directory, durability=mode, map_size=1 << 30) as journal:
        journal.commit([("ACME", 0, records)])  # warm: jit, map, db open
        seq = group
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            records["order_id"] = np.arange(seq + 1, seq + group + 1)
            t0 = time.perf_counter_ns()
            journal.commit([("ACME", seq, records)])
            latencies.append(time.perf_counter_ns() - t0)
            seq += group
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    with Journal(directory, readonly=True) as reader:
        read_back = sum(len(chunk) for _, chunk in reader.read_commands("ACME"))
    assert read_back == seq, f"wrote {seq}, read back {read_back}"
    lat = np.array(latencies) / 1000.0
    return {
        "mode": mode,
        "group": group,
        "commits": len(latencies),
        "records": seq - group,
        "records_per_s": round((seq - group) / elapsed),
        "commit_us_p50": round(float(np.percentile(lat, 50)), 1),
        "commit_us_p99": round(float(np.percentile(lat, 99)), 1),
        "commit_us_p999": round(float(np.percentile(lat, 99.9)), 1),
    }


def journaler_rounds(directory: Path, requests: int = 5000, repeats: int = 7) -> dict:
    """CPU µs per request of the journaler's rounds: a command on one in-ring, a
    round; its event on the out-ring, a round (4 symbols, so 8 rings to look at)."""
    symbols = ("ACME", "BOLT", "CRUX", "DYNE")
    config = load_config(
        environ={}, overrides={"symbols": tuple(SymbolSpec(s) for s in symbols), "ring_capacity": 4096}
    )
    topology = Topology.for_config(config, prefix=f"rxjb{os.getpid()}")
    rings = topology.create()
    try:
        with Journal(directory, durability="async") as journal:
            journaler = Journaler(journal, topology)
            producers = [ring.producer() for ring in rings]
            readers = [r.consumer(MATCHER) for r in rings[0::2]] + [r.consumer(NOTIFIER) for r in rings[1::2]]
            command, event = np.zeros(1, COMMAND), np.zeros(1, EVENT)
            command["msg_type"] = Op.NEW
            command["qty"] = 1

            def one(k: int) -> None:
                i = k % len(symbols)
                producers[2 * i].write(command)
                journaler.round()
                producers[2 * i + 1].write(event)
                journaler.round()
                for reader in (readers[i], readers[len(symbols) + i]):  # keep the rings from filling
                    reader.commit(reader.poll().hi)

            for k in range(requests // 5):
                one(k)  # warm: kernels, LMDB pages
            per_request = []
            for _ in range(repeats):
                started = time.process_time()
                for k in range(requests):
                    one(k)
                per_request.append((time.process_time() - started) / requests * 1e6)
            journaler.close()
    finally:
        for ring in rings:
            ring.close()
        topology.remove()
    per_request.sort()
    return {
        "symbols": len(symbols),
        "requests_per_repeat": requests,
        "cpu_us_per_request_median": round(per_request[len(per_request) // 2], 1),
        "cpu_us_per_request_min": round(per_request[0], 1),
        "note": "two rounds per request plus the bench's own ring writes and reads",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", default=None, help="where to put the journals (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ringex-journal-bench-", dir=args.dir))
    results = []
    try:
        for mode in MODES:
            for group in GROUP_SIZES:
                row = bench(root / f"{mode}-{group}", mode, group, args.seconds)
                results.append(row)
                print(
                    f"{mode:5} group {group:5}: {row['records_per_s']:>10,} records/s   commit p50 "
                    f"{row['commit_us_p50']:>8.1f} us  p99 {row['commit_us_p99']:>8.1f} us  "
                    f"p99.9 {row['commit_us_p999']:>8.1f} us  ({row['commits']} commits)"
                )
        rounds = journaler_rounds(root / "rounds")
        print(
            f"journaler rounds: {rounds['cpu_us_per_request_median']} us CPU per request "
            f"(median; min {rounds['cpu_us_per_request_min']})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by = {(r["mode"], r["group"]): r for r in results}
    for mode in MODES:
        assert by[(mode, 1000)]["records_per_s"] > by[(mode, 1)]["records_per_s"], (
            f"{mode}: group commit did not pay off"
        )
    out = {
        "benchmark": "journal group commit",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            # the disk and cores are shared: figures taken under load say so here
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "filesystem_dir": str(args.dir or tempfile.gettempdir()),
        },
        "seconds_per_case": args.seconds,
        "record_bytes": COMMAND.itemsize,
        "results": results,
        "journaler_rounds": rounds,
    }
    path = Path(__file__).resolve().parent / "results" / "journal.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
