"""Single-symbol matching throughput and latency: the jitted book against the reference.

    seeded workload ──► Matcher.apply(batch of 1024) ─────────► commands/s
    (exchange-core     Matcher.apply(batch of 1 / 16) ────────► call latency p50/p99/p99.9
     mix, 1M cmds)     ReferenceBook.apply (200k prefix) ─────► commands/s, ratio, and the
                                                                  same events byte for byte

The workload is modelled on exchange-core's single-symbol benchmark: ~9% GTC, 3% IOC,
6% cancel and 82% replace (price moves) of live orders, ~1,000 resting orders over
~750 price levels, ~1,000 accounts, and a mid price that drifts, so replaces sometimes
cross and trade. It is generated in chunks, asking a generator-side book which orders
are still live, so cancels and replaces mostly hit live orders.

Also measured: the first and second start of a fresh process (compile, then load from
numba's cache; a private NUMBA_CACHE_DIR makes the first one really cold) and the cost
of the arena grouping against passing the book as separate arrays.

    .venv/bin/python perf/matcher_bench.py [--commands N] [--reference N] [--seed S]

Prints the figures and the machine, writes perf/results/matcher.json. Exits non-zero if
the jitted and reference events differ or the speed-up is under 20x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the reference book lives in tests/support

import numba  # noqa: E402
from numba import njit  # noqa: E402

from ringex.codes import EventKind, Op, OrderType, Side, Tif  # noqa: E402
from ringex.config import SymbolSpec  # noqa: E402
from ringex.engine.matcher import Matcher  # noqa: E402
from ringex.matcher_jit import warm_up  # noqa: E402
from ringex.records import COMMAND  # noqa: E402

SPEC = SymbolSpec("BENCH", tick=1, price_min=1, price_max=200_000, capacity=1 << 14)
TARGET_ORDERS = 1_000
HALF_SPREAD_LEVELS = 650  # orders sit 1..650 ticks from mid on their side: ~1,000 orders occupy ~750 levels
ACCOUNTS = 1_000
CHUNK = 1024


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


# ---- start-up -----------------------------------------------------------------------------

START_SNIPPET = """
import time, json
t0 = time.perf_counter()
from ringex.matcher_jit import warm_up
t1 = time.perf_counter()
w = warm_up()
print(json.dumps({"import_s": t1 - t0, "warm_up_s": w, "total_s": time.perf_counter() - t0}))
"""


def start_times() -> dict:
    """Two fresh processes sharing an empty numba cache dir: the first compiles, the second loads."""
    with tempfile.TemporaryDirectory(prefix="ringex-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", START_SNIPPET], env=env, cwd=ROOT, capture_output=True, text=True, check=True
            )
            runs.append(json.loads(out.stdout))
    return {"first_start": runs[0], "second_start": runs[1]}


# ---- workload -----------------------------------------------------------------------------


def generate(n: int, seed: int) -> np.ndarray:
    rng = random.Random(seed)
    tracker = Matcher(SPEC)
    cmds = np.zeros(n, COMMAND)
    live: list[tuple[int, int, int]] = []  # (order id, account, side) believed resting
    owner: dict[int, tuple[int, int]] = {}
    mid = 100_000
    next_id = 1
    seq = 1
    for start in range(0, n, CHUNK):
        chunk = cmds[start : start + CHUNK]
        rows = []
        for _ in range(len(chunk)):
            if rng.random() < 0.05:
                mid += rng.choice((-1, 1))
            r = rng.random()
            if r < 0.09 and len(live) > TARGET_ORDERS * 1.1:
                r = 0.15  # too many resting: cancel instead
            elif 0.12 <= r < 0.18 and len(live) < TARGET_ORDERS * 0.9:
                r = 0.0  # too few: place instead
            if r < 0.09 or not live:
                account = rng.randrange(1, ACCOUNTS + 1)
                side = rng.choice((Side.BUY, Side.SELL))
                offset = rng.randint(1, HALF_SPREAD_LEVELS)
                price = mid - offset if side == Side.BUY else mid + offset
                rows.append((Op.NEW, side, OrderType.LIMIT, Tif.GTC, next_id, price, rng.randint(1, 100), account))
                live.append((next_id, account, side))
                owner[next_id] = (account, side)
                next_id += 1
            elif r < 0.12:
                account = rng.randrange(1, ACCOUNTS + 1)
                side = rng.choice((Side.BUY, Side.SELL))
                offset = rng.randint(0, 30)
                price = mid + offset if side == Side.BUY else mid - offset
                rows.append((Op.NEW, side, OrderType.LIMIT, Tif.IOC, next_id, price, rng.randint(1, 200), account))
                next_id += 1
            elif r < 0.18:
                k = rng.randrange(len(live))
                oid, account, _ = live[k]
                live[k] = live[-1]
                live.pop()
                rows.append((Op.CANCEL, 0, 0, 0, oid, 0, 0, account))
            else:
                oid, account, side = live[rng.randrange(len(live))]
                offset = rng.randint(1, HALF_SPREAD_LEVELS) - 2  # a little aggression: some moves cross
                price = mid - offset if side == Side.BUY else mid + offset
                rows.append((Op.REPLACE, 0, 0, 0, oid, price, rng.randint(1, 100), account))
        fields = list(zip(*rows, strict=True))
        for name, values in zip(
            ("msg_type", "side", "order_type", "tif", "order_id", "price", "qty", "account"), fields, strict=True
        ):
            chunk[name] = values
        chunk["client_order_id"] = np.arange(start + 1, start + 1 + len(chunk))
        chunk["ts_ns"] = np.arange(start + 1, start + 1 + len(chunk)) * 1_000
        tracker.apply(chunk, seq)
        seq += len(chunk)
        resting = tracker.resting_orders()
        live = [
            (int(o), int(a), int(s))
            for o, a, s in zip(resting["order_id"], resting["account"], resting["side"], strict=True)
        ]
    return cmds


# ---- measurements -------------------------------------------------------------------------


def throughput(cmds: np.ndarray, batch: int) -> dict:
    m = Matcher(SPEC)
    events = trades = 0
    started = time.perf_counter()
    for start in range(0, len(cmds), batch):
        ev = m.apply(cmds[start : start + batch], start + 1)
        events += len(ev)
        trades += int(np.count_nonzero(ev["kind"] == EventKind.TRADE))
    elapsed = time.perf_counter() - started
    m.validate()
    return {
        "batch": batch,
        "commands": len(cmds),
        "seconds": elapsed,
        "commands_per_s": len(cmds) / elapsed,
        "events": events,
        "trades": trades,
        "resting_at_end": m.order_count(),
        "levels_at_end": len(m.depth(100_000)["bids"]) + len(m.depth(100_000)["asks"]),
    }


def latency(cmds: np.ndarray, batch: int) -> dict:
    m = Matcher(SPEC)
    clock = time.perf_counter_ns
    samples = np.zeros(len(cmds) // batch, np.int64)
    for k in range(len(samples)):
        start = k * batch
        part = cmds[start : start + batch]
        t0 = clock()
        m.apply(part, start + 1)
        samples[k] = clock() - t0
    p50, p99, p999 = np.percentile(samples, [50, 99, 99.9]) / 1_000
    return {
        "batch": batch,
        "calls": len(samples),
        "call_us": {"p50": p50, "p99": p99, "p99.9": p999, "max": samples.max() / 1_000},
        "per_command_us": {"p50": p50 / batch, "p99": p99 / batch},
    }


def reference(cmds: np.ndarray, batch: int) -> tuple[dict, bytes]:
    from support.reference_book import ReferenceBook

    book = ReferenceBook(SPEC)
    out = []
    started = time.perf_counter()
    for start in range(0, len(cmds), batch):
        out.append(book.apply(cmds[start : start + batch], start + 1).tobytes())
    elapsed = time.perf_counter() - started
    return {"commands": len(cmds), "seconds": elapsed, "commands_per_s": len(cmds) / elapsed}, b"".join(out)


def jitted_events(cmds: np.ndarray, batch: int) -> bytes:
    m = Matcher(SPEC)
    return b"".join(m.apply(cmds[s : s + batch], s + 1).tobytes() for s in range(0, len(cmds), batch))


# The grouping question: one arena argument against the book as separate arrays.
@njit(cache=True)
def _one_arena(arena, commands, first_seq, events):
    return arena[0] + commands.shape[0] + first_seq + events.shape[0]


@njit(cache=True)
def _separate_arrays(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, commands, first_seq, events):
    return a0[0] + a14[0] + commands.shape[0] + first_seq + events.shape[0]


def grouping(calls: int = 200_000) -> dict:
    arena = np.zeros(1 << 16, np.int64)
    parts = [np.zeros(1 << 12, np.int64) for _ in range(15)]
    commands = np.zeros((16, 8), np.int64)
    events = np.zeros((64, 16), np.int64)
    _one_arena(arena, commands, 1, events)
    _separate_arrays(*parts, commands, 1, events)
    t0 = time.perf_counter()
    for _ in range(calls):
        _one_arena(arena, commands, 1, events)
    t1 = time.perf_counter()
    for _ in range(calls):
        _separate_arrays(*parts, commands, 1, events)
    t2 = time.perf_counter()
    return {
        "one_arena_call_ns": (t1 - t0) / calls * 1e9,
        "fifteen_arrays_call_ns": (t2 - t1) / calls * 1e9,
        "note": "an empty kernel's call overhead: 1 arena + commands + events vs 15 book arrays + commands + events",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=200_000, help="prefix run through the pure-Python reference")
    parser.add_argument(
        "--latency-commands", type=int, default=200_000, help="commands timed one call at a time at batch 1"
    )
    parser.add_argument("--seed", type=int, default=20_251_125)
    parser.add_argument("--out", default=str(ROOT / "perf" / "results" / "matcher.json"))
    args = parser.parse_args()

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, numba {info['numba']}")
    starts = start_times()
    print(
        f"start: first (compile) {starts['first_start']['total_s']:.2f} s, "
        f"second (cache) {starts['second_start']['total_s']:.3f} s (warm_up {starts['second_start']['warm_up_s'] * 1000:.1f} ms)"
    )
    warm_up()

    t0 = time.perf_counter()
    cmds = generate(args.commands, args.seed)
    mix = {
        "gtc": float(np.mean((cmds["msg_type"] == Op.NEW) & (cmds["tif"] == Tif.GTC))),
        "ioc": float(np.mean((cmds["msg_type"] == Op.NEW) & (cmds["tif"] == Tif.IOC))),
        "cancel": float(np.mean(cmds["msg_type"] == Op.CANCEL)),
        "replace": float(np.mean(cmds["msg_type"] == Op.REPLACE)),
    }
    print(
        f"workload: {len(cmds):,} commands generated in {time.perf_counter() - t0:.1f} s; mix "
        + ", ".join(f"{k} {v:.1%}" for k, v in mix.items())
    )

    bulk = throughput(cmds, 1024)
    print(
        f"jitted, batch 1024: {bulk['commands_per_s']:,.0f} commands/s ({bulk['seconds']:.2f} s; "
        f"{bulk['trades']:,} trades, {bulk['events']:,} events; {bulk['resting_at_end']} resting over {bulk['levels_at_end']} levels at the end)"
    )
    lat = {}
    for batch, n in ((1, args.latency_commands), (16, args.commands)):
        lat[batch] = latency(cmds[:n], batch)
        c = lat[batch]["call_us"]
        print(
            f"Matcher.apply, batch {batch:>2}: call p50 {c['p50']:.2f} us, p99 {c['p99']:.2f} us, p99.9 {c['p99.9']:.2f} us; per command p50 {lat[batch]['per_command_us']['p50']:.3f} us"
        )

    ref, ref_bytes = reference(cmds[: args.reference], 1024)
    same = ref_bytes == jitted_events(cmds[: args.reference], 1024)
    ratio = bulk["commands_per_s"] / ref["commands_per_s"]
    print(
        f"reference (pure Python), {ref['commands']:,} commands: {ref['commands_per_s']:,.0f} commands/s; jitted is {ratio:.0f}x; events identical: {same}"
    )

    group = grouping()
    print(
        f"grouping: one arena {group['one_arena_call_ns']:.0f} ns per call vs 15 separate arrays {group['fifteen_arrays_call_ns']:.0f} ns"
    )

    result = {
        "benchmark": "matcher_bench",
        "machine": info,
        "seed": args.seed,
        "workload": {"commands": len(cmds), "mix": mix, "spec": {"levels": SPEC.levels, "capacity": SPEC.capacity}},
        "start": starts,
        "throughput_batch_1024": bulk,
        "latency": {f"batch_{b}": v for b, v in lat.items()},
        "reference": ref,
        "speedup_vs_reference": ratio,
        "reference_events_identical": same,
        "grouping": group,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not same or ratio < 20:
        print("FAILED: events differ from the reference or speed-up under 20x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
