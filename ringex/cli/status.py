"""``ringex status [--watch]``: the operator's view of a running exchange's disruptor.

It reads only shared memory and the journal's metadata, attaching every ring
read-only (registering nothing, waking nobody), so it can run as often as wanted
against a loaded exchange without disturbing it:

- per ring: the producer cursor, each consumer's cursor, its lag behind the producer
  and its rate; a consumer whose lag grows is the stage that costs the time;
- the durable journal position per symbol (the journaler's in-ring cursor mapped to
  journal sequences: what the gateway may acknowledge);
- the exchange state (and why, if halted) and each process: pid, alive, ready,
  restarts;
- with a bridge (``[cluster] nats``): how far JetStream's copy is behind the journal,
  per symbol, in records and seconds (what the bridge last wrote to ``bridge.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from ringex.cli.common import data_dir_of
from ringex.control import ControlBlock
from ringex.ring import Ring, RingError
from ringex.runfile import pid_alive
from ringex.supervisor import RUN_FILE
from ringex.topology import BRIDGE, CMD, JOURNALER, Topology, journaled_base

__all__ = ["add_arguments", "run", "collect"]


def collect(data_dir: str | os.PathLike[str]) -> dict:
    """One reading of the exchange running on ``data_dir``, as plain data (also what
    ``--json`` prints). Raises ``FileNotFoundError`` when no exchange runs there."""
    run_file = Path(data_dir) / RUN_FILE
    try:
        info = json.loads(run_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no exchange is running on {data_dir} (no {RUN_FILE})") from None
    topology = Topology.from_json(info["topology"])
    reading: dict = {"time": time.monotonic(), "data_dir": info["data_dir"], "supervisor_pid": info["pid"]}
    try:
        control = ControlBlock.attach(topology.control)
    except FileNotFoundError:
        raise FileNotFoundError(f"the exchange on {data_dir} is not running (its control block is gone)") from None
    try:
        reading["state"] = control.state.name
        reading["reason"] = control.reason
        reading["processes"] = [dict(r, alive=pid_alive(r["pid"])) for r in control.roles()]
    finally:
        control.close()
    reading["rings"], reading["durable"] = _rings(info["data_dir"], topology)
    reading["mode"] = topology.mode
    if topology.replication:
        from ringex.cluster.bridge import read_status  # noqa: PLC0415

        reading[BRIDGE] = read_status(info["data_dir"])
    return reading


def _rings(data_dir: str, topology: Topology) -> tuple[list[dict], dict[str, int]]:
    """Every ring's cursors, and per symbol the next journal sequence not yet durable
    (the journaler's in-ring cursor mapped through the base it recorded for that ring;
    nothing for a symbol whose ring it has not attached, or if the journal is not
    readable)."""
    from ringex.wal import Journal, JournalError

    try:
        journal = Journal(data_dir, readonly=True)
    except (JournalError, OSError):
        journal = None
    rings: list[dict] = []
    durable: dict[str, int] = {}
    try:
        for symbol, kind, name in topology.ring_names():
            kind_name = "in" if kind == CMD else "out"
            try:
                with Ring.attach(name, readonly=True) as ring:
                    stats = ring.statistics()
                    base = journaled_base(journal, kind, symbol, ring) if journal is not None else None
            except RingError as exc:
                rings.append({"symbol": symbol, "kind": kind_name, "name": name, "error": str(exc)})
                continue
            consumers = {c.name: {"cursor": c.cursor, "lag": c.lag} for c in stats.consumers}
            rings.append(
                {
                    "symbol": symbol,
                    "kind": kind_name,
                    "name": name,
                    "capacity": stats.capacity,
                    "producer": stats.producer_cursor,
                    "consumers": consumers,
                }
            )
            if kind == CMD and base is not None:
                durable[symbol] = base + consumers[JOURNALER]["cursor"] + 1
    finally:
        if journal is not None:
            journal.close()
    rings.sort(key=lambda r: (r["kind"], topology.symbols.index(r["symbol"])))
    return rings, durable


def _rate(now: dict, before: dict | None, ring: dict, consumer: str | None) -> str:
    if before is None:
        return ""
    prev = next((r for r in before["rings"] if r["name"] == ring["name"]), None)
    if prev is None or "error" in prev:
        return ""
    dt = now["time"] - before["time"]
    if dt <= 0:
        return ""
    if consumer is None:
        moved = ring["producer"] - prev["producer"]
    else:
        moved = ring["consumers"][consumer]["cursor"] - prev["consumers"][consumer]["cursor"]
    return f"{moved / dt:,.0f}/s"


def render(now: dict, before: dict | None = None) -> Group:
    state = now["state"] + (f": {now['reason']}" if now["state"] == "HALTED" and now["reason"] else "")
    head = Table.grid(padding=(0, 2))
    head.add_row("exchange", f"{now['data_dir']}  (supervisor pid {now['supervisor_pid']})")
    head.add_row("state", f"[bold]{state}[/bold]")

    procs = Table(title="processes", title_justify="left")
    for col in ("role", "pid", "alive", "ready", "restarts"):
        procs.add_column(col, justify="right" if col in ("pid", "restarts") else "left")
    for p in now["processes"]:
        procs.add_row(
            p["role"], str(p["pid"]), "yes" if p["alive"] else "[red]NO[/red]", "yes" if p["ready"] else "no",
            str(p["restarts"]),
        )  # fmt: skip

    rings = Table(title="rings (cursor = last sequence; lag = records behind the producer)", title_justify="left")
    for col in ("ring", "producer", "rate", "consumer", "cursor", "lag", "rate "):
        rings.add_column(col, justify="left" if col in ("ring", "consumer") else "right")
    for ring in now["rings"]:
        label = f"{ring['symbol']} {ring['kind']}"
        if "error" in ring:
            rings.add_row(label, "[red]" + ring["error"] + "[/red]", "", "", "", "", "")
            continue
        first = True
        for name, c in ring["consumers"].items():
            rings.add_row(
                label if first else "",
                f"{ring['producer']:,}" if first else "",
                _rate(now, before, ring, None) if first else "",
                name,
                f"{c['cursor']:,}",
                f"{c['lag']:,}",
                _rate(now, before, ring, name),
            )
            first = False

    durable = Table(title="journal", title_justify="left")
    durable.add_column("symbol")
    durable.add_column("next seq not yet durable", justify="right")
    for symbol, seq in now["durable"].items():
        durable.add_row(symbol, f"{seq:,}")
    parts = [head, procs, rings, durable]
    if BRIDGE in now:
        parts.append(_bridge_table(now[BRIDGE]))
    return Group(*parts)


def _bridge_table(bridge: dict | None) -> Table:
    """JetStream's copy: per symbol and kind, records and seconds behind the journal."""
    if bridge is None:
        table = Table(title="bridge to JetStream: no report yet", title_justify="left")
        return table
    age = time.time() - bridge["updated"]
    link = "connected" if bridge["connected"] else "[red]NOT connected[/red]"
    stale = f", [red]report {age:.0f} s old[/red]" if age > 5 else ""
    table = Table(
        title=f"bridge to JetStream {bridge['nats']} ({bridge['replication']}): {link}, {bridge['errors']} errors{stale}",
        title_justify="left",
    )
    for col in ("symbol", "kind", "published up to", "durable up to", "lag", "lag s"):
        table.add_column(col, justify="left" if col in ("symbol", "kind") else "right")
    for symbol, kinds in bridge["lanes"].items():
        for kind, lane in kinds.items():
            lag = "?" if lane["lag"] is None else f"{lane['lag']:,}"
            table.add_row(symbol, kind, f"{lane['published']:,}", f"{lane['durable']:,}", lag, f"{lane['lag_s']:.3f}")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="data directory of the exchange (default: the config's)")
    parser.add_argument("--config", metavar="FILE", help="TOML config, for its data_dir")
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print one reading as JSON")


def run(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    console = Console()
    try:
        if args.json:
            print(json.dumps(collect(data_dir), indent=2))
            return 0
        # Two readings a short interval apart give rates even without --watch.
        before = collect(data_dir)
        time.sleep(min(args.interval, 0.5))
        now = collect(data_dir)
        if not args.watch:
            console.print(render(now, before))
            return 0
        from rich.live import Live

        with Live(render(now, before), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                before, now = now, collect(data_dir)
                live.update(render(now, before), refresh=True)
    except FileNotFoundError as exc:
        print(f"ringex status: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
