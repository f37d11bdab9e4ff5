"""End-to-end latency of the whole exchange, open loop, both durability modes.

Topology (the driver is ``ringex.bench``; this script runs its sweep and writes the
results where the project keeps them)::

  sender process ──orders──► gateway ─► in-ring ─► journaler ─► matcher ─► out-ring
   (open loop, S sessions)  ◄──K/X──┘          (durable)                      │
  md process ◄──── trades + private fills ◄──── notifier ◄── journaler ◄───────┘

Per offered rate: ack, trade print and taker fill latency from each request's
intended send time (p50 ... p99.99, max), accepted requests/s, each process's CPU and
the ring lag per stage; one exchange per durability mode on a temporary data dir.

    .venv/bin/python perf/e2e.py            # full sweep: perf/results/e2e.{json,png}, perf/RESULTS.md
    .venv/bin/python perf/e2e.py --quick    # two short steps, async only, nothing written

Any ``ringex bench`` option may be given too (``--rates``, ``--durability``, ``--nice``...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rich.console import Console  # noqa: E402

from ringex import bench  # noqa: E402

RESULTS = HERE / "results"
BEGIN, END = "<!-- e2e:begin (perf/e2e.py writes this part) -->", "<!-- e2e:end -->"


def results_section(result: dict) -> str:
    m = result["machine"]
    s = result["summary"]
    lines = [
        BEGIN,
        "## End to end (perf/e2e.py)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, Linux {m['kernel']}; "
        f"load average {m['loadavg_at_start'][0]} at the start and {m['loadavg_at_end'][0]} at the end "
        "(other engineers' test runs share the machine)"
        + (f"; exchange and load generator reniced to {result['nice']}" if result.get("nice") is not None else "")
        + (
            f"; exchange and load generator under SCHED_FIFO {result['realtime']}"
            if result.get("realtime") is not None
            else ""
        )
        + ".",
        "",
        "Mix: " + ", ".join(f"{v:.0%} {k}" for k, v in result["mix"].items()) + " (cancels and replaces target"
        " the session's own resting orders, learned from acks); 4 symbols unless `sym` says 1; "
        "latency from each request's intended send time (open loop); times in µs. `accepted/s`"
        " is requests answered K per second (the rest were rejected, e.g. THROTTLED); `sender late` is how late the load generator itself sent (included in every"
        " latency); CPU is % of one core over the measured window.",
        "",
        bench.markdown_table(result["steps"]),
        "Where the time goes (µs; the split uses the gateway's receive stamp, so `to gateway` is the"
        " load generator's lateness plus TCP plus the gateway's read; ring lag in records, sampled"
        " every 0.2 s with `ringex status`):",
        "",
        bench.breakdown_table(result["steps"]),
        "Targets:",
        "",
    ]
    for mode, fig in s.items():
        at = fig["at_10k"] or {}
        lines.append(
            f"- {mode}: at 10,000/s ack p99 {at.get('ack')} µs, trade p99 {at.get('trade')} µs, fill p99 "
            f"{at.get('fill')} µs; highest offered rate with ack p99 under 10 ms: "
            f"{fig['highest_rate_ack_p99_under_10ms']}"
        )
    for w in result.get("exchange_warmup", []):
        lines.append(
            f"- {w['durability']}: the unmeasured warm-up step right after start-up saw ack max {w['ack_max_us']} µs"
        )
    if result.get("note"):
        lines.append(f"- note: {result['note']}")
    lines += ["", "![latency by percentile](results/e2e.png)", "", END]
    return "\n".join(lines) + "\n"


def write_results_md(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Performance results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="two short async steps; write nothing")
    parser.add_argument("--from-json", metavar="FILE", help="redraw the plot and RESULTS.md from a saved run")
    args = parser.parse_args()
    console = Console()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        bench.plot(result["steps"], RESULTS / "e2e.png")
        write_results_md(HERE / "RESULTS.md", results_section(result))
        return 0
    if args.quick:
        args.rates, args.durability, args.duration, args.warmup = [1000.0, 10_000.0], "async", 2.0, 0.5
        args.one_symbol_rates = []
    command = "python perf/e2e.py " + " ".join(sys.argv[1:])
    result = bench.execute(args, console, command.strip())
    console.print(bench.markdown_table(result["steps"]))
    console.print_json(json.dumps(result["summary"]))
    if args.quick:
        return 0
    if args.json:
        # a side run (an A/B, a trial): its JSON only, the committed results untouched
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.plot:
            bench.plot(result["steps"], Path(args.plot))
        console.print(f"wrote {args.json}")
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    bench.plot(result["steps"], RESULTS / "e2e.png")
    write_results_md(HERE / "RESULTS.md", results_section(result))
    console.print(f"wrote {RESULTS / 'e2e.json'}, {RESULTS / 'e2e.png'} and {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
