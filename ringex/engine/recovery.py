"""Rebuilding the books from the journal, and ``ringex recover [--verify] [--data DIR]``.

Recovery = the latest usable snapshot + the journal's tail replayed through the same
jitted kernels that matched it live. Matching is deterministic, so:

- a book recovered from a snapshot equals the book of a replay from the first command
  (``Matcher.state_hash`` compares them);
- replayed events equal the journaled events byte for byte; ``--verify`` replays every
  symbol from its first command and checks that, stopping at the first difference with
  the symbol and sequence.

The journal may end with commands whose events it does not hold yet (the journaler
took the commands in its last round, the matcher had not published their events, then
everything stopped). Recovery returns those events as ``pending_events``: a restarted
matcher publishes them first, so the out-ring continues at ``next_event_seq`` exactly
where the journal's events end and no event is lost or duplicated.

A snapshot taken by the matcher may cover commands the journaler never made durable
(the matcher runs ahead of the journaler); those are not in the journal, so such a
snapshot is skipped in favour of an older one or a full replay.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

import numpy as np

from ringex.config import SymbolSpec
from ringex.engine.matcher import Matcher
from ringex.records import EVENT
from ringex.wal import Journal, SnapshotStore

__all__ = [
    "RecoveredBook",
    "VerifyMismatch",
    "recover_book",
    "recover_all",
    "verify_symbol",
]

log = logging.getLogger("ringex.engine.recovery")

Progress = Callable[[int], None]
_RAW_EVENT = np.dtype((np.void, EVENT.itemsize))


@dataclasses.dataclass
class RecoveredBook:
    """One symbol's book rebuilt from the journal.

    ``next_seq``: the sequence of the next command (the journal's end);
    ``next_event_seq``: of the next event, counting ``pending_events`` as published
    (the journal's event end + len(pending_events)).
    """

    symbol: str
    matcher: Matcher
    next_seq: int
    next_event_seq: int
    snapshot_seq: int | None
    replayed: int
    pending_events: np.ndarray
    seconds: float


class VerifyMismatch(Exception):
    """A replayed event differs from the journaled one (or the journal has an event
    the replay does not produce)."""

    def __init__(self, symbol: str, seq: int, event_seq: int, detail: str) -> None:
        super().__init__(f"{symbol}: replay differs from the journal at command seq {seq}, event {event_seq}: {detail}")
        self.symbol = symbol
        self.seq = seq
        self.event_seq = event_seq


class _JournaledEvents:
    """The journaled events of one symbol from ``from_seq`` on, taken ``n`` at a time."""

    def __init__(self, journal: Journal, symbol: str, from_seq: int) -> None:
        self._chunks: Iterator[tuple[int, np.ndarray]] = journal.read_events(symbol, from_seq)
        self._buf = np.zeros(0, EVENT)
        self.next_seq = from_seq  # of the first event not yet taken

    def take(self, n: int) -> np.ndarray:
        while len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf = _join((self._buf, chunk[1]))
        out, self._buf = self._buf[:n], self._buf[n:]
        self.next_seq += len(out)
        return out


def recover_book(
    journal: Journal,
    spec: SymbolSpec,
    snapshots: SnapshotStore | None = None,
    *,
    verify: bool = False,
    progress: Progress | None = None,
    ends: tuple[int, int] | None = None,
    discard_stale: bool = True,
) -> RecoveredBook:
    """Rebuild ``spec.name``'s book: latest usable snapshot (unless ``snapshots`` is None)
    plus the journal tail. With ``verify``, also compare every replayed event with the
    journaled one (``VerifyMismatch`` on the first difference).

    ``ends``: replay up to this ``Journal.ends()`` cut (default: the journal's ends now).
    While the journaler runs, give two recoveries the same cut to compare their books.

    ``discard_stale``: delete snapshots beyond the journal's end (the default, for the
    matcher restarting after a crash: they cover commands that were never durable and
    whose sequences new commands will take). A reader next to a running exchange
    (``ringex recover``) passes False: there, a snapshot ahead of the journal is only
    the matcher running ahead of the journaler.

    Error handling: a damaged journal record raises ``CorruptRecordError`` naming the
    symbol and sequence; recovery never skips past it.
    """
    started = time.perf_counter()
    symbol = spec.name
    if ends is None:
        ends = journal.ends(symbol)
    end, journaled_events_end = ends
    if snapshots is not None and discard_stale:
        for path in snapshots.discard_after(symbol, end):
            log.info("%s: discarded snapshot %s: it covers commands the journal does not hold", symbol, path.name)
    snap = snapshots.latest(symbol, at_most=end, at_most_events=journaled_events_end) if snapshots else None
    if snap is not None:
        matcher = Matcher.restore(spec, snap.blob)
        if matcher.last_seq + 1 != snap.next_seq:
            raise ValueError(f"snapshot {snap.path}: book is at seq {matcher.last_seq}, file says {snap.next_seq - 1}")
        seq, event_seq, snapshot_seq = snap.next_seq, snap.next_event_seq, snap.next_seq
    else:
        matcher = Matcher(spec)
        seq, event_seq, snapshot_seq = 0, 0, None
    journaled = _JournaledEvents(journal, symbol, event_seq) if verify else None
    pending: list[np.ndarray] = []
    replayed = 0
    for first_seq, commands in journal.read_commands(symbol, seq, end):
        events = matcher.apply(commands, first_seq)
        replayed += len(commands)
        if journaled is not None:
            _compare(symbol, journaled.take(len(events)), events, event_seq)
        # Events past the journal's end were never journaled: hand them back to publish.
        skip = max(0, journaled_events_end - event_seq)
        if skip < len(events):
            pending.append(_join([events[skip:]]))
        event_seq += len(events)
        if progress is not None:
            progress(len(commands))
    if event_seq < journaled_events_end:
        raise VerifyMismatch(
            symbol,
            end,
            event_seq,
            f"the journal holds {journaled_events_end - event_seq} events that no journaled command produces",
        )
    return RecoveredBook(
        symbol=symbol,
        matcher=matcher,
        next_seq=end,
        next_event_seq=event_seq,
        snapshot_seq=snapshot_seq,
        replayed=replayed,
        pending_events=_join(pending),
        seconds=time.perf_counter() - started,
    )


def _join(parts) -> np.ndarray:
    """Concatenate EVENT arrays byte for byte. ``np.concatenate`` promotes the padded
    dtype to a packed one, and a structured copy skips the padding bytes (leaving
    whatever the new buffer held), either of which would break byte comparison."""
    out = np.zeros(sum(len(p) for p in parts), EVENT)
    raw = out.view(_RAW_EVENT)
    at = 0
    for part in parts:
        raw[at : at + len(part)] = np.ascontiguousarray(part).view(_RAW_EVENT)
        at += len(part)
    return out


def _compare(symbol: str, journaled: np.ndarray, replayed: np.ndarray, event_seq: int) -> None:
    n = len(journaled)  # may be short at the journal's end: the rest are pending events
    a = journaled.view(np.uint8).reshape(n, EVENT.itemsize)
    b = replayed[:n].view(np.uint8).reshape(n, EVENT.itemsize)
    differs = np.flatnonzero((a != b).any(axis=1))
    if len(differs):
        i = int(differs[0])
        fields = [f for f in EVENT.names if journaled[i][f] != replayed[i][f]]
        raise VerifyMismatch(
            symbol, int(replayed[i]["seq"]), event_seq + i, f"fields {', '.join(fields)} differ (journaled vs replayed)"
        )


def recover_all(
    data_dir: str,
    *,
    journal: Journal | None = None,
    use_snapshots: bool = True,
    verify: bool = False,
    discard_stale: bool = False,
    progress: Callable[[str, int, int], Progress] | None = None,
) -> dict[str, RecoveredBook]:
    """Every journaled symbol's book (specs from the journal's metadata).

    ``progress(symbol, start, total)`` may return a per-chunk callback."""
    own = journal is None
    journal = journal or Journal(data_dir, readonly=True)
    try:
        snapshots = SnapshotStore(data_dir) if use_snapshots else None
        books = {}
        for spec in journal.specs():
            callback = progress(spec.name, 0, journal.next_seq(spec.name)) if progress else None
            books[spec.name] = recover_book(
                journal, spec, snapshots, verify=verify, progress=callback, discard_stale=discard_stale
            )
        return books
    finally:
        if own:
            journal.close()


def verify_symbol(
    journal: Journal, spec: SymbolSpec, progress: Progress | None = None, ends: tuple[int, int] | None = None
) -> RecoveredBook:
    """Replay ``spec.name`` from its very first command, comparing every event."""
    return recover_book(journal, spec, None, verify=True, progress=progress, ends=ends)
