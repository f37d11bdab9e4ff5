"""``ringex journal tail SYMBOL [--follow]`` and ``ringex journal dump SYMBOL --from SEQ``.

Print a symbol's journaled commands and events as JSON lines, in sequence order:
commands and their events interleaved, each command followed by the events it caused.
Reads through a read-only LMDB handle, so it is safe while the journaler runs.

``tail --follow`` keeps printing what the journaler commits, until Ctrl-C. It reads
in rounds (``FOLLOW_S`` apart), each up to a consistent cut of the journal
(``Journal.ends``: every event below the cut has its command below it too). Events are
journaled a little after their commands, so an event may come in the round after
its command, printed before that round's new commands: still in sequence order.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator

import numpy as np

from ringex.cli.common import data_dir_of
from ringex.records import COMMAND, EVENT, decode_symbol
from ringex.wal import CorruptRecordError, Journal

__all__ = ["add_arguments", "run", "command_to_dict", "journal_lines", "FOLLOW_S"]

# How often ``tail --follow`` looks for new records: a person reading, not a consumer
# on the hot path (it wakes nobody and holds no read transaction between rounds).
FOLLOW_S = 0.2


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    tail = sub.add_parser("tail", help="the last commands of a symbol and their events")
    tail.add_argument("symbol")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many commands (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until Ctrl-C")
    dump = sub.add_parser("dump", help="a symbol's commands and events from a sequence on")
    dump.add_argument("symbol")
    dump.add_argument("--from", dest="from_seq", type=int, default=0, help="first command sequence (default 0)")
    dump.add_argument("--to", dest="to_seq", type=int, default=None, help="stop before this command sequence")
    for p in (tail, dump):
        p.add_argument("--data", default=None, help="data directory (default: the config's data_dir)")
        p.add_argument("--config", default=None)
        p.add_argument("--commands-only", action="store_true")


def command_to_dict(seq: int, record: np.void) -> dict:
    out = {"type": "command", "seq": seq}
    for name in COMMAND.names:
        value = record[name]
        if name == "symbol":
            out[name] = decode_symbol(value)
        elif name in ("msg_type", "side", "order_type", "tif"):
            out[name] = chr(int(value)) if int(value) else ""
        else:
            out[name] = int(value)
    return out


def _event_dict(event_seq: int, record: np.void) -> dict:
    try:
        from ringex.events import event_to_dict
    except ImportError:  # not built yet: a plain field dump
        event_to_dict = None
    if event_to_dict is not None:
        body = event_to_dict(record)
    else:
        body = {}
        for name in EVENT.names:
            value = record[name]
            if name == "symbol":
                body[name] = decode_symbol(value)
            elif name in ("kind", "side", "order_type", "tif"):
                body[name] = chr(int(value)) if int(value) else ""
            else:
                body[name] = int(value)
    # The journal's own fields win: "type" says command or event, "seq" is always the
    # causing command's journal sequence; a "type" from event_to_dict moves to "event".
    if "type" in body:
        body["event"] = body.pop("type")
    return {**body, "type": "event", "event_seq": event_seq, "seq": int(record["seq"])}


def _first_event_of(journal: Journal, symbol: str, seq: int) -> int:
    """The event sequence of the first event caused by command ``seq`` or later
    (events' command sequences never decrease, so a binary search over the journal)."""
    lo, hi = 0, journal.next_event_seq(symbol)
    while lo < hi:
        mid = (lo + hi) // 2
        chunk = next(journal.read_events(symbol, mid, mid + 1), None)
        if chunk is None or int(chunk[1][0]["seq"]) >= seq:
            hi = mid
        else:
            lo = mid + 1
    return lo


def journal_lines(
    journal: Journal, symbol: str, from_seq: int, to_seq: int | None, events: bool = True
) -> Iterator[dict]:
    """Commands from ``from_seq`` (each followed by its events) as dicts."""
    event_iter = _events_from(journal, symbol, _first_event_of(journal, symbol, from_seq)) if events else iter(())
    pending = next(event_iter, None)
    for first, commands in journal.read_commands(symbol, from_seq, to_seq):
        for i, record in enumerate(commands):
            seq = first + i
            yield command_to_dict(seq, record)
            while pending is not None and int(pending[1]["seq"]) <= seq:
                yield _event_dict(*pending)
                pending = next(event_iter, None)


def _events_from(journal: Journal, symbol: str, from_event: int) -> Iterator[tuple[int, np.void]]:
    for first, chunk in journal.read_events(symbol, from_event):
        for i, record in enumerate(chunk):
            yield first + i, record


def _window(journal: Journal, symbol: str, cmd_next: int, ev_next: int, events: bool) -> tuple[list[dict], int, int]:
    """Every record from ``cmd_next``/``ev_next`` up to the journal's consistent cut, in
    sequence order (a command, then the events it caused); the next positions."""
    cmd_end, ev_end = journal.ends(symbol)
    keyed: list[tuple[tuple[int, int, int], dict]] = []
    for first, commands in journal.read_commands(symbol, cmd_next, cmd_end):
        for i, record in enumerate(commands):
            keyed.append(((first + i, 0, 0), command_to_dict(first + i, record)))
    if events:
        for event_seq, record in _events_from(journal, symbol, ev_next):
            if event_seq >= ev_end:
                break
            line = _event_dict(event_seq, record)
            keyed.append(((line["seq"], 1, event_seq), line))
    keyed.sort(key=lambda pair: pair[0])
    return [line for _, line in keyed], max(cmd_next, cmd_end), max(ev_next, ev_end)


def _follow(journal: Journal, symbol: str, lines: int, events: bool) -> int:
    """Print rounds until Ctrl-C or SIGTERM. Both get handlers of our own that set a flag
    the loop checks: a process started from a background job inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler, so relying on it left a
    ``tail --follow`` running after its Ctrl-C (seen in CI)."""
    stopping = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cmd_end, _ = journal.ends(symbol)
        cmd_next = max(0, cmd_end - lines)
        ev_next = _first_event_of(journal, symbol, cmd_next)
        while not stopping.is_set():
            out, cmd_next, ev_next = _window(journal, symbol, cmd_next, ev_next, events)
            if out:
                sys.stdout.write("".join(json.dumps(line) + "\n" for line in out))
                sys.stdout.flush()
            stopping.wait(FOLLOW_S)
        return 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run(args) -> int:
    try:
        journal = Journal(data_dir_of(args), readonly=True)
    except FileNotFoundError as exc:
        print(f"ringex journal: {exc}", file=sys.stderr)
        return 2
    with journal:
        if args.symbol not in journal.symbols():
            print(
                f"ringex journal: {args.symbol} is not in the journal ({', '.join(journal.symbols())})", file=sys.stderr
            )
            return 2
        if args.journal_command == "tail" and args.follow:
            try:
                return _follow(journal, args.symbol, args.lines, events=not args.commands_only)
            except CorruptRecordError as exc:
                print(f"ringex journal: {exc}", file=sys.stderr)
                return 1
            except BrokenPipeError:
                return 0
        if args.journal_command == "tail":
            from_seq, to_seq = max(0, journal.next_seq(args.symbol) - args.lines), None
        else:
            from_seq, to_seq = args.from_seq, args.to_seq
        try:
            for line in journal_lines(journal, args.symbol, from_seq, to_seq, events=not args.commands_only):
                sys.stdout.write(json.dumps(line) + "\n")
        except CorruptRecordError as exc:
            print(f"ringex journal: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return 0
    return 0
