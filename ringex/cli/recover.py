"""``ringex recover [--verify]``: rebuild every book from the journal, as the exchange
would on a start; ``--verify`` also replays each symbol from its first command and
checks every event byte for byte (``ringex.engine.recovery``)."""

from __future__ import annotations

import json

from ringex.cli.common import data_dir_of
from ringex.engine.recovery import RecoveredBook, VerifyMismatch, recover_book, verify_symbol
from ringex.wal import CorruptRecordError, Journal, SnapshotStore

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("--data", default=None, help="data directory (default: the config's data_dir)")
    parser.add_argument("--config", default=None, help="TOML config, only to find data_dir")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also replay every symbol from its first command and check every event byte for byte",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON lines")


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True)
    data_dir = data_dir_of(args)
    try:
        journal = Journal(data_dir, readonly=True)
    except FileNotFoundError as exc:
        console.print(f"ringex recover: {exc}")
        return 2
    rows = []
    status = 0
    with (
        journal,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
        snapshots = SnapshotStore(data_dir)
        max_order_id = journal.max_order_id()
        for spec in journal.specs():
            cut = journal.ends(spec.name)  # one cut for both replays: the journaler may be running
            total = cut[0]
            try:
                task = bar.add_task(f"{spec.name} recover", total=total)
                book = recover_book(
                    journal,
                    spec,
                    snapshots,
                    progress=lambda n, t=task: bar.advance(t, n),
                    ends=cut,
                    discard_stale=False,
                )
                row = _summary(book)
                if args.verify:
                    task = bar.add_task(f"{spec.name} verify", total=total)
                    full = verify_symbol(journal, spec, progress=lambda n, t=task: bar.advance(t, n), ends=cut)
                    if full.matcher.state_hash() != book.matcher.state_hash():
                        raise VerifyMismatch(
                            spec.name, total - 1, full.next_event_seq, "snapshot-based book differs from a full replay"
                        )
                    row["verified_commands"] = full.replayed
                    row["verified_events"] = full.next_event_seq - len(full.pending_events)
                rows.append(row)
            except (CorruptRecordError, VerifyMismatch) as exc:
                console.print(f"[bold red]ringex recover: {exc}[/]")
                rows.append({"symbol": spec.name, "error": str(exc)})
                status = 1
                break
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        table = Table(title=f"journal {journal.path} (max order id {max_order_id})")
        for column in ("symbol", "commands", "from snapshot", "replayed", "resting", "best bid", "best ask", "seconds"):
            table.add_column(column)
        for row in rows:
            if "error" in row:
                table.add_row(row["symbol"], "[red]" + row["error"] + "[/]")
                continue
            table.add_row(
                row["symbol"],
                str(row["commands"]),
                "-" if row["snapshot_seq"] is None else str(row["snapshot_seq"]),
                str(row["replayed"]),
                str(row["resting_orders"]),
                str(row["best_bid"]),
                str(row["best_ask"]),
                f"{row['seconds']:.3f}",
            )
        Console().print(table)
        if args.verify and status == 0:
            Console().print("verify: every replayed event equals the journaled one")
    return status


def _summary(book: RecoveredBook) -> dict:
    m = book.matcher
    return {
        "symbol": book.symbol,
        "commands": book.next_seq,
        "snapshot_seq": book.snapshot_seq,
        "replayed": book.replayed,
        "resting_orders": m.order_count(),
        "best_bid": m.best_bid(),
        "best_ask": m.best_ask(),
        "events": book.next_event_seq,
        "pending_events": len(book.pending_events),
        "state_hash": m.state_hash(),
        "seconds": round(book.seconds, 6),
    }
