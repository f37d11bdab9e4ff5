"""End to end: ringex against the single-process baseline, open loop, both durability modes.

Topology (every box a process on the same 2-core machine)::

                       ┌──► ringex: gateway ─► in-ring ─► journaler/matcher ─► out-ring ─► notifier ─┐
  loadgen (C loop) ────┤                       (run A)                                               ├──► loadgen
   orders, acks, md    └──► baseline: one asyncio loop, LMDB commit per loop turn (run B) ───────────┘

At each offered rate the same load runs against ringex and the baseline alternately
(A, B, A, B, ... ``--repeats`` each), both exchanges up for the whole durability mode,
the idle one using ~0% CPU. Per run: ack and trade print latency from each request's
intended send time (p50 ... max), the ack from the actual send, accepted requests/s, the
sender's lateness, CPU per process (both exchanges' and the load generator's), and for
ringex the split at the gateway's receive stamp (and ring lag with ``--ring-lag``).
Repeats are merged per (mode, rate, design) through their histograms; the ratio is
ringex / baseline.

    .venv/bin/python perf/e2e.py            # full sweep: perf/results/e2e.{json,png}, perf/RESULTS.md
    .venv/bin/python perf/e2e.py --quick    # a smoke run (1k and 10k/s, async, short steps), nothing written
    .venv/bin/python perf/e2e.py --rates 1k,10k --durability async --repeats 3 --json /tmp/ab.json
    .venv/bin/python perf/e2e.py --from-json perf/results/e2e.json   # redraw plot and RESULTS.md

``ringex bench`` runs the same sweep from a checkout (printing, writing only what
``--json``/``--plot`` name). Run benchmarks one at a time: ``flock /work/bench.lock ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: make ``perf`` and ``ringex`` importable
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from perf import analysis  # noqa: E402
from perf.loadgen import LoadgenProcess  # noqa: E402
from perf.targets import BaselineExchange, LocalExchange, RingLagSampler, Target, cpu_ns, scheduler  # noqa: E402
from perf.workload import MIX  # noqa: E402
from ringex.trace import FLUSH_S, read_traces, stage_latencies  # noqa: E402

__all__ = ["StepConfig", "run_step", "sweep", "add_arguments", "execute", "run", "main"]

RESULTS = HERE / "results"
BEGIN, END = "<!-- e2e:begin (perf/e2e.py writes this part) -->", "<!-- e2e:end -->"
DESIGNS = ("ringex", "baseline")
# Requests due less than this apart go out together, in one write of one session
# (``workload.make_workload``'s tick). On this VM every wake-up of the load generator
# costs 20-45 µs of CPU (nested virtualisation): one per request took 29-46% of a core at
# 10,000/s, this tick 8-11% (2,000 wake-ups/s at most). Below 2,000/s nothing changes;
# above, orders arrive in bursts of rate/2,000, which the exchanges batch (at 10,000/s it
# halved the baseline's CPU per request and doubled its ack p50): perf/RESULTS.md, "The
# load generator", has the measurements. 0 sends every request at its own instant.
DEFAULT_TICK_US = 500.0
# ringex's stage trace: every 64th command of a symbol is a few records per ms at
# 50,000/s, too few to cost anything measurable, and thousands of samples per step.
DEFAULT_TRACE_EVERY = 64
# Every design runs every rate up to here; above it, a design that saturated stops.
ALWAYS_UP_TO = 50_000
# A design "keeps up" at a rate while neither its acks nor its trade prints queue for
# longer than this at p99 within a run (picked: ~100x an unloaded ack).
KEEPS_UP_MS = 100


@dataclasses.dataclass(frozen=True)
class StepConfig:
    rate: float  # offered requests per second, all sessions together
    seconds: float = 5.0  # measured time (after the warm-up)
    warmup: float = 1.0
    symbols: int = 4
    sessions: int = 0  # 0: enough that each stays well under the 20k/s session limit
    seed: int = 1
    drain: float = 5.0  # how long to wait for the last acks after the last send
    tick_us: float = DEFAULT_TICK_US
    eager_acks: bool = False

    def session_count(self) -> int:
        return self.sessions or max(4, math.ceil(self.rate / 10_000))


def _cpu(pids: dict[str, int]) -> dict[str, int | None]:
    return {role: cpu_ns(pid) for role, pid in pids.items()}


def run_step(
    target: Target,
    loadgen: LoadgenProcess,
    step: StepConfig,
    symbols: list[str],
    *,
    idle_pids: dict[str, int] | None = None,
    lag: RingLagSampler | None = None,
) -> dict:
    """Drive one open-loop step against ``target`` and return its figures. ``idle_pids``
    (the other exchange's processes) are measured too: their CPU is ``idle_other``."""
    with tempfile.TemporaryDirectory(prefix="ringex-e2e-step-") as workdir:
        cfg = {
            "host": target.host,
            "port": target.port,
            "md_port": target.md_port,
            "accounts": target.accounts,
            "symbols": symbols[: step.symbols],
            "rate": step.rate,
            "seconds": step.warmup + step.seconds,
            "sessions": step.session_count(),
            "seed": step.seed,
            "drain_s": step.drain,
            "tick_us": step.tick_us,
            "eager_acks": step.eager_acks,
            "workdir": workdir,
        }
        t0 = loadgen.start_step(cfg)
        groups = {"exchange": target.pids, "loadgen": {"loadgen": loadgen.pid}, "idle": idle_pids or {}}
        measure_from = t0 + int(step.warmup * 1e9)
        measure_to = measure_from + int(step.seconds * 1e9)
        cpu0 = cpu1 = None
        wall_from = wall_to = None
        while not loadgen.conn.poll(0.02):
            now = time.monotonic_ns()
            if cpu0 is None and now >= measure_from:
                cpu0 = {g: _cpu(p) for g, p in groups.items()}, now
                wall_from = time.time_ns()
                if lag is not None:
                    lag.start(measure_to / 1e9)
            elif cpu0 is not None and cpu1 is None and now >= measure_to:
                cpu1 = {g: _cpu(p) for g, p in groups.items()}, now
                wall_to = time.time_ns()
                load = os.getloadavg()
        if cpu0 is not None and cpu1 is None:  # the step ended right at the end of the window
            cpu1 = {g: _cpu(p) for g, p in groups.items()}, time.monotonic_ns()
            load = os.getloadavg()
        path = loadgen.expect("done", 120)
        rec = dict(np.load(path))
    result = {
        "design": target.design,
        "rate": step.rate,
        "symbols": step.symbols,
        "sessions": step.session_count(),
        "seconds": step.seconds,
        "tick_us": step.tick_us,
        **analysis.analyse(rec, int(step.warmup * 1e9)),
    }
    result["accepted_per_s"] = analysis.accepted_rate(result)
    result["saturated"] = analysis.is_saturated(result)
    if cpu0 is not None:
        (c0, w0), (c1, w1) = cpu0, cpu1
        wall = (w1 - w0) / 1e9

        def pct(group, role):
            a, b = c0[group].get(role), c1[group].get(role)
            return None if a is None or b is None else round(100 * (b - a) / 1e9 / wall, 1)

        cpu = {role: pct("exchange", role) for role in target.pids}
        cpu["loadgen"] = pct("loadgen", "loadgen")
        idle = [pct("idle", role) for role in groups["idle"]]
        cpu["idle_other"] = round(sum(v for v in idle if v is not None), 1) if idle else None
        result["cpu_percent"] = {k: v for k, v in cpu.items() if v is not None}
        result["loadavg"] = [round(x, 2) for x in load]
    else:
        result["cpu_percent"] = {}
        result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    result["ring_lag"] = lag.result() if lag is not None and cpu0 is not None else None
    # ringex's stage trace (``ringex trace``): where its time went in this window
    result["stages_us"] = None
    if target.design == "ringex" and target.data_dir and wall_from is not None:
        time.sleep(FLUSH_S)  # the processes write their trace records at most this late
        result["stages_us"] = stage_latencies(read_traces(target.data_dir), wall_from, wall_to) or None
    return result


##########################################################################################
# the sweep
##########################################################################################


def _step_line(r: dict) -> str:
    a, t, late = r["latency_us"]["ack"], r["latency_us"]["trade"], r["sender_lateness_us"]
    cpu = r.get("cpu_percent", {})
    exchange = sum(v for k, v in cpu.items() if k not in ("loadgen", "idle_other"))
    return (
        f"{r['durability']:5} {r['rate']:>9,.0f}/s {r['design']:8} #{r['repeat'] + 1}  "
        f"accepted {r['accepted_per_s']:>9,.0f}/s  ack p50/p99/max {a.get('p50')}/{a.get('p99')}/{a.get('max')} µs  "
        f"trade p50/p99 {t.get('p50')}/{t.get('p99')} µs  late p99 {late.get('p99')} µs  "
        f"CPU exchange {exchange:.0f}% loadgen {cpu.get('loadgen', 0):.0f}%  load {r['loadavg'][0]}"
        + ("  SATURATED" if r["saturated"] else "")
    )


def _point(mode: str, rate: float, runs: list[dict]) -> dict:
    """The runs of one (mode, rate), repeats merged per design."""
    designs = {}
    for design in DESIGNS:
        mine = [r for r in runs if r["design"] == design]
        if not mine:
            continue
        cpu: dict[str, list[float]] = {}
        for r in mine:
            for k, v in r.get("cpu_percent", {}).items():
                cpu.setdefault(k, []).append(v)
        designs[design] = {
            "ack": analysis.merge([r["latency_us"]["ack"] for r in mine]),
            "trade": analysis.merge([r["latency_us"]["trade"] for r in mine]),
            "ack_p50_per_repeat_us": [r["latency_us"]["ack"].get("p50") for r in mine],
            "ack_p99_per_repeat_us": [r["latency_us"]["ack"].get("p99") for r in mine],
            "trade_p99_per_repeat_us": [r["latency_us"]["trade"].get("p99") for r in mine],
            "accepted_per_s": round(float(np.mean([r["accepted_per_s"] for r in mine])), 1),
            "saturated": any(r["saturated"] for r in mine),
            "sender_late_p99_us": max(r["sender_lateness_us"].get("p99", 0) for r in mine),
            "cpu_percent_mean": {k: round(float(np.mean(v)), 1) for k, v in cpu.items()},
        }
    return {"durability": mode, "rate": rate, "designs": designs}


def sweep(
    modes: list[str],
    rates: list[float],
    step: StepConfig,
    *,
    designs=DESIGNS,
    repeats: int = 2,
    stop_when_saturated: bool = True,
    ring_lag: bool = False,
    ringex_args: list[str] | None = None,
    ringex_root: Path | None = None,
    trace_every: int = 0,
    remote: Target | None = None,
    console=None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Every (mode, rate) step, designs alternating within each repeat; returns the runs,
    the merged points and the unmeasured warm-up runs."""
    from ringex.config import DEFAULT_SYMBOLS

    say = console.print if console is not None else (lambda *a, **k: None)
    names = [s.name for s in DEFAULT_SYMBOLS]
    runs: list[dict] = []
    points: list[dict] = []
    warmups: list[dict] = []
    with LoadgenProcess() as loadgen:
        for mode in modes:
            with contextlib.ExitStack() as stack:
                targets: dict[str, Target] = {}
                if remote is not None:
                    targets[remote.design] = remote
                else:
                    for design in designs:
                        if design == "ringex":
                            env = {"RINGEX_TRACE_EVERY": str(trace_every)} if trace_every else {}
                            targets[design] = stack.enter_context(
                                LocalExchange(mode, ringex_args, root=ringex_root, env=env)
                            )
                        else:
                            targets[design] = stack.enter_context(BaselineExchange(mode))
                lag = None
                if ring_lag and "ringex" in targets and targets["ringex"].data_dir:
                    lag = RingLagSampler(targets["ringex"].data_dir)
                    stack.callback(lag.close)

                def others(design, targets=targets):
                    return {f"{d}.{r}": p for d, t in targets.items() if d != design for r, p in t.pids.items()}

                # The first orders after start-up are slow (lazy set-up in the exchanges'
                # processes, a fresh book): an unmeasured step pays for that first.
                for design, target in targets.items():
                    warm = run_step(target, loadgen, dataclasses.replace(step, rate=1000, seconds=2, warmup=0.5), names)
                    warmups.append(
                        {"durability": mode, "design": design, "ack_max_us": warm["latency_us"]["ack"].get("max")}
                    )
                    say(f"{mode} {design}: warm-up step, ack max {warmups[-1]['ack_max_us']} µs")
                saturated: set[str] = set()
                for rate in sorted(rates):
                    mine = []
                    for rep in range(repeats):
                        for design, target in targets.items():
                            if design in saturated:
                                continue
                            r = run_step(
                                target,
                                loadgen,
                                dataclasses.replace(step, rate=rate),
                                names,
                                idle_pids=others(design),
                                lag=lag if design == "ringex" else None,
                            )
                            r["durability"], r["repeat"] = mode, rep
                            mine.append(r)
                            say(_step_line(r))
                    runs += mine
                    points.append(_point(mode, rate, mine))
                    if stop_when_saturated and rate >= ALWAYS_UP_TO:
                        saturated |= {d for d, v in points[-1]["designs"].items() if v["saturated"]}
                    if saturated >= set(targets):
                        break
    return runs, points, warmups


##########################################################################################
# verdicts and the report
##########################################################################################


def verdicts(points: list[dict]) -> list[str]:
    """Issue 12's "must show" items, checked against the sweep (merged repeats)."""
    out = []
    for mode in dict.fromkeys(p["durability"] for p in points):
        mine = [p for p in points if p["durability"] == mode and len(p["designs"]) == 2]
        lost = []
        for p in mine:
            rx, bl = p["designs"]["ringex"], p["designs"]["baseline"]
            if p["rate"] > ALWAYS_UP_TO:
                continue
            for k in ("p50", "p99"):
                a, b = rx["ack"].get(k), bl["ack"].get(k)
                if a is not None and b is not None and a > b:
                    lost.append(f"{p['rate']:,.0f}/s {k} {a / 1000:.2f} > {b / 1000:.2f} ms")
        status = "not measured" if not mine else "no (" + "; ".join(lost) + ")" if lost else "yes"
        out.append(
            f"{mode}: ringex ack p50 and p99 at or below the baseline's at every rate up to {ALWAYS_UP_TO:,}/s: {status}"
        )
        over = []
        for p in mine:
            rx = p["designs"]["ringex"]
            a, t = rx["ack"].get("p99"), rx["trade"].get("p99")
            if p["rate"] <= 20_000 and a and t and t > 2 * a:
                over.append(f"{p['rate']:,.0f}/s trade p99 {t / 1000:.2f} ms > 2 x ack p99 {a / 1000:.2f} ms")
        status = "not measured" if not mine else "no (" + "; ".join(over) + ")" if over else "yes"
        out.append(f"{mode}: ringex trade print p99 at most 2x its ack p99 up to 20,000/s: {status}")

        def best(design, keeps_up, mode=mode):
            ok = [
                d["accepted_per_s"]
                for p in points
                if p["durability"] == mode and (d := p["designs"].get(design)) and keeps_up(d)
            ]
            return max(ok) if ok else None

        for what, keeps_up in (
            ("answered (all requests, 90% accepted, ack p99 < 1 s)", lambda d: not d["saturated"]),
            (
                f"with ack and trade print p99 < {KEEPS_UP_MS} ms",
                lambda d: (
                    not d["saturated"]
                    and d["ack"].get("p99", math.inf) < KEEPS_UP_MS * 1000
                    and d["trade"].get("p99", math.inf) < KEEPS_UP_MS * 1000
                ),
            ),
        ):
            rx_max, bl_max = best("ringex", keeps_up), best("baseline", keeps_up)
            ratio = f" ({rx_max / bl_max:.1f}x)" if rx_max and bl_max else ""
            out.append(
                f"{mode}: highest accepted rate {what}: ringex {rx_max or 0:,.0f}/s, baseline {bl_max or 0:,.0f}/s{ratio}"
            )
    targets = {
        ("async", 1000, "p50"): 150,
        ("async", 10000, "p99"): 1000,
        ("fsync", 1000, "p50"): 600,
        ("fsync", 10000, "p99"): 3000,
    }
    for (mode, rate, k), limit in targets.items():
        p = next((p for p in points if p["durability"] == mode and p["rate"] == rate), None)
        v = p and p["designs"].get("ringex", {}).get("ack", {}).get(k)
        if v is not None:
            out.append(
                f"target {mode} ack {k} at {rate:,}/s <= {limit:,} µs: ringex {v:,.0f} µs "
                + ("met" if v <= limit else "missed")
            )
    return out


def _loadgen_line(steps: list[dict]) -> str:
    at10k = [s for s in steps if s["rate"] == 10_000 and s.get("cpu_percent", {}).get("loadgen") is not None]
    if not at10k:
        return ""
    cpu = [s["cpu_percent"]["loadgen"] for s in at10k]
    late50 = [s["sender_lateness_us"].get("p50", 0) for s in at10k]
    late99 = [s["sender_lateness_us"].get("p99", 0) for s in at10k]
    return (
        f"The load generator at 10,000/s: {min(cpu):.1f}-{max(cpu):.1f}% of one core, late by "
        f"{min(late50):.0f}-{max(late50):.0f} µs at p50 and {min(late99):,.0f}-{max(late99):,.0f} µs at p99 "
        "(its lateness is in every latency above)."
    )


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "scheduler": scheduler(),
    }


def results_section(result: dict) -> str:
    m, cfg = result["machine"], result["config"]
    lines = [
        BEGIN,
        "## End to end: ringex against the single-process baseline (perf/e2e.py)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, Linux {m['kernel']}; load average "
        f"{m['loadavg_at_start'][0]} at the start and {m.get('loadavg_at_end', ['?'])[0]} at the end (other "
        "engineers' work shares the machine; each run's own is in the last column below); scheduling: "
        f"{m.get('scheduler', 'normal (SCHED_OTHER)')}.",
        "",
        "Load: " + ", ".join(f"{v:.0%} {k}" for k, v in result["mix"].items()) + " (cancels and replaces target the"
        f" session's own resting orders, learned from acks) over {cfg['symbols']} symbols, "
        f"max(4, rate/10k) sessions, open loop; requests due less than {cfg['tick_us']:g} µs apart are sent"
        f" together (the load generator's tick, see below); {cfg['seconds']:g} s measured after"
        f" {cfg['warmup']:g} s of warm-up per run; {cfg['repeats']} runs per design and rate, alternating ringex"
        " and the baseline. Latency is from each request's intended send time to the kernel's receive time on the"
        " client's socket. Both exchanges run for the whole mode; the idle one costs ~0% CPU.",
        "",
        "Ringex against the baseline (ms; repeats merged; ratio = ringex / baseline, below 1 ringex is faster):",
        "",
        analysis.compare_table(result["points"]),
        "Checks (issue 12):",
        "",
        *(f"- {v}" for v in verdicts(result["points"])),
        "",
        "Every run (µs; `from send` is the ack measured from the actual send, without the load generator's"
        " lateness; CPU is % of one core over the measured window: ringex gateway/journaler/matcher/notifier/"
        "supervisor, or the baseline's one process):",
        "",
        analysis.runs_table(result["steps"]),
        "Where the time goes (µs; split at the exchange's receive stamp, ringex's gateway or the baseline's loop:"
        " `to exchange` is the load generator's lateness plus TCP plus the wait for the exchange to read; ring lag"
        " in records, with `--ring-lag` only):",
        "",
        analysis.breakdown_table(result["steps"]),
    ]
    if line := _loadgen_line(result["steps"]):
        lines += [line, ""]
    for w in result.get("exchange_warmup", []):
        lines.append(
            f"- {w['durability']} {w['design']}: the unmeasured warm-up step after start-up saw ack max {w['ack_max_us']} µs"
        )
    if (RESULTS / "e2e-before.json").exists():
        lines += [
            "",
            "The reference sweep of ringex before issue 12's changes: `results/e2e-before.json`, "
            "plot `results/e2e-before.png`.",
        ]
    lines += ["", f"![latency against offered rate](results/{result.get('plot', 'e2e.png')})", "", END]
    return "\n".join(lines) + "\n"


def write_results_md(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Performance results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


##########################################################################################
# command line
##########################################################################################


def _floats(text: str) -> list[float]:
    return [float(x.replace("k", "e3")) for x in text.split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates",
        type=_floats,
        default=_floats("1k,5k,10k,20k,50k,100k,150k,200k"),
        help="offered orders/s, comma separated (1k = 1000)",
    )
    parser.add_argument("--durability", default="fsync,async", help="modes to sweep (default fsync,async)")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="exchanges to run (default ringex,baseline)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per design and rate, alternating (default 2)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent before measuring, per run")
    parser.add_argument("--symbols", type=int, default=4, help="symbols the flow is spread over")
    parser.add_argument("--sessions", type=int, default=0, help="order entry sessions (default: max(4, rate/10k))")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tick-us",
        type=float,
        default=DEFAULT_TICK_US,
        help=f"send requests due less than this apart together (default {DEFAULT_TICK_US:g}; 0: each on its own)",
    )
    parser.add_argument(
        "--eager-acks", action="store_true", help="wake the load generator for every reply (more accurate, more CPU)"
    )
    parser.add_argument("--no-stop", action="store_true", help="run every rate even after saturation")
    parser.add_argument("--ring-lag", action="store_true", help="sample ringex's ring lag (~1 ms of CPU per reading)")
    parser.add_argument("--ringex-args", default="", help="more flags for `ringex up`, e.g. '--config my.toml'")
    parser.add_argument(
        "--trace",
        type=int,
        default=DEFAULT_TRACE_EVERY,
        metavar="N",
        help="trace every N-th command of ringex's stages (ringex trace) and report them per step; 0: off "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--ringex-root",
        type=Path,
        default=None,
        help="run the ringex of this checkout (e.g. a worktree of an earlier commit) instead of this one's",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1k and 10k/s, async, 2 s runs")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON (a side run: nothing else written)")
    parser.add_argument("--plot", metavar="PNG", help="write the plot (needs matplotlib: pip install -e '.[perf]')")
    parser.add_argument(
        "--host", help="instead: measure a running exchange at this address (reported as the first of --designs)"
    )
    parser.add_argument("--port", type=int, default=7001, help="with --host: its order entry port")
    parser.add_argument("--md-port", type=int, default=7002, help="with --host: its market data port")
    parser.add_argument("--account", type=int, action="append", help="with --host: account to log in (repeatable)")
    parser.add_argument("--token", type=int, action="append", help="with --host: its token (same order)")


def execute(args: argparse.Namespace, console=None, command: str = "") -> dict:
    """Run the sweep ``args`` describe (see ``add_arguments``); the whole result."""
    if args.quick:
        args.rates, args.durability, args.duration, args.warmup, args.repeats = [1000.0, 10_000.0], "async", 2.0, 0.5, 1
    modes = [m for m in args.durability.split(",") if m]
    designs = [d for d in args.designs.split(",") if d]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        raise SystemExit(f"unknown design(s) {', '.join(sorted(unknown))}: choose from {', '.join(DESIGNS)}")
    remote = None
    if args.host:
        if not args.account or len(args.account) != len(args.token or []):
            raise SystemExit("--host needs --account and --token (as many of each)")
        accounts = list(zip(args.account, args.token, strict=True))
        # reported as the first of --designs (ringex unless told otherwise); no process CPU
        remote = Target(designs[0], args.host, args.port, args.md_port, accounts, {})
        modes = modes[:1]

    def interrupted(signum, frame):
        raise KeyboardInterrupt  # so the exchanges and the load generator are stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    step = StepConfig(
        rate=0,
        seconds=args.duration,
        warmup=args.warmup,
        symbols=args.symbols,
        sessions=args.sessions,
        seed=args.seed,
        tick_us=args.tick_us,
        eager_acks=args.eager_acks,
    )
    info = machine()
    runs, points, warmups = sweep(
        modes,
        args.rates,
        step,
        designs=designs,
        repeats=args.repeats,
        stop_when_saturated=not args.no_stop,
        ring_lag=args.ring_lag,
        ringex_args=args.ringex_args.split(),
        ringex_root=args.ringex_root,
        trace_every=args.trace,
        remote=remote,
        console=console,
    )
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": info,
        "command": command,
        "mix": MIX,
        "config": {**dataclasses.asdict(step), "repeats": args.repeats, "designs": designs, "modes": modes},
        "verdicts": verdicts(points),
        "points": points,
        "exchange_warmup": warmups,
        "steps": runs,
    }


def _report(result: dict) -> None:
    print(analysis.compare_table(result["points"]))
    for v in result["verdicts"]:
        print("- " + v)
    if line := _loadgen_line(result["steps"]):
        print(line)


def run(args: argparse.Namespace) -> int:
    """``ringex bench``: the sweep, printed; files only where ``--json``/``--plot`` say."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    result = execute(args, console, "ringex " + " ".join(sys.argv[1:]))
    _report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        analysis.plot(result["points"], args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--from-json", metavar="FILE", help="redraw the plot and RESULTS.md from a saved run")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(soft_wrap=True)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        analysis.plot(result["points"], RESULTS / "e2e.png")
        write_results_md(HERE / "RESULTS.md", results_section(result))
        return 0
    command = ("python perf/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    result = execute(args, console, command)
    _report(result)
    if args.quick:
        return 0
    if args.json:  # a side run (an A/B, a trial): its JSON only, the committed results untouched
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.plot:
            analysis.plot(result["points"], Path(args.plot))
        console.print(f"wrote {args.json}")
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    analysis.plot(result["points"], RESULTS / "e2e.png")
    write_results_md(HERE / "RESULTS.md", results_section(result))
    console.print(f"wrote {RESULTS / 'e2e.json'}, {RESULTS / 'e2e.png'} and {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
