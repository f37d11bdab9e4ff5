"""The journaler process: drains every in-ring and out-ring into the LMDB journal.

::

    in-ring[SYM]  ──► journaler ──► LMDB (one transaction per round)
    out-ring[SYM] ──┘      │
                           └── stores its cursor on each ring only after the commit:
                               that cursor IS the durable cursor

The journal's job on the critical path is the *input*: an order is acknowledged, and
matched, only once its command is durable (the gateway acks on the journaler's cursor
on the in-ring, and the topology gates the matcher on it). The events are a
deterministic function of the journaled commands (recovery replays them and
``ringex recover --verify`` proves it), so they are journaled too, for ``journal
dump``, ``--verify`` and a quick restart, but off the critical path: the notifier
publishes them without waiting for that, and the journaler takes them along with the
next commands rather than paying a commit (and an fsync) for them alone.

One round:

1. Take every in-ring's commands. Take the out-rings' events too when there are
   commands (they share the commit), or when events have waited ``event_delay_ms``
   (an idle exchange still journals its last events promptly), or when an out-ring is
   half full (its producer, the matcher, must never wait for us), or on the way out.
2. Commit them in one transaction (group commit: a round takes everything there is,
   so under load one fsync covers thousands of records).
3. Only then store the journaler's consumer cursor on each ring. Hence "in-ring
   sequence s is durable" is exactly "the journaler's cursor on that in-ring has
   passed s".

The journaler sleeps on its doorbell for the in-rings only: a command wakes it at
once; events wait for the next command or for their delay.

Sequences: a ring counts from 0 when it is created, the journal counts from the first
command ever. The journaler keeps, per ring, ``base`` = the journal sequence of ring
sequence 0, in the journal's metadata together with the ring's creation time. A
journaler restarted on the same rings (same creation time) reuses the base and skips
what a previous incarnation committed but had no time to mark in the ring (a kill
between commit and cursor store); on new rings the base is the journal's next
sequence, so the supervisor must start every producer on a new ring at journal
sequence ``Journal.next_seq(symbol)`` (and the matcher's out-ring at
``Journal.next_event_seq(symbol)`` plus any events recovery hands it to republish).

Error handling: a commit that fails (disk full, I/O error, the map cap) halts the
exchange: the control block goes to HALTED with the reason (the gateway answers
NOT_READY from it), a critical log line says what failed and where the journal ends,
the cursors stay where they were (nothing unjournaled is ever reported durable) and
the process exits with status 3. Earlier commits are intact.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import numpy as np
import posix_ipc

from ringex import wal
from ringex.config import Config
from ringex.control import NullControl
from ringex.records import EVENT, encode_symbol
from ringex.ring import Consumer, ConsumerSet, Ring
from ringex.topology import CMD, EVT, JOURNALER, Topology, journaled_base, new_ring_base
from ringex.trace import NullTracer, Stage, tracer_for
from ringex.wait import post_all
from ringex.wal import Journal, JournalError, JournalWriteError

__all__ = ["Journaler", "JournalerHalted", "EXIT_HALTED", "run_journaler"]

log = logging.getLogger("ringex.journal.journaler")

EXIT_HALTED = 3
# Longest idle sleep before the loop looks at its stop flag and heartbeat. Not a
# latency: every ring rings the journaler's doorbell when it moves.
IDLE_WAIT_S = 0.05
# Where an EVENT record keeps the sequence of the command that caused it.
EVENT_SEQ_OFFSET = EVENT.fields["seq"][1]
# Cap on records per ring per round, so one commit stays well under a map growth step
# and a burst on one ring cannot starve the others' acks for long. Picked, not measured.
MAX_PER_RING = 65536


# Rounds between sweeps for dead readers' LMDB slots (a sweep reads the lock table,
# microseconds): often enough that a killed reader pins old pages only briefly.
READER_CHECK_ROUNDS = 10_000


class JournalerHalted(RuntimeError):
    """A commit failed; the exchange is halted."""


class _Feed:
    """One ring as the journaler sees it: consumer, base and the journal's kind.

    The hot path (``take``, ``segments``, ``commit``) reads two cursors, slices the
    ring's slots as bytes and hands them to ``Journal.commit_rows``: no ``Batch``, no
    structured view, so a round that journals one record costs little more than the
    LMDB commit itself.
    """

    def __init__(self, kind: str, symbol: str, ring: Ring, journal: Journal, index: int = 0) -> None:
        self.kind = kind  # CMD or EVT
        self.symbol = symbol
        self.index = index  # the symbol's place in the topology (for traces)
        self.ring = ring
        self.consumer: Consumer = ring.consumer(JOURNALER)
        self.name = journal.segment_name(kind, symbol)
        self.symbol8 = np.frombuffer(encode_symbol(symbol), np.uint8)
        self._slots = ring.slot_bytes
        self._mask = ring.capacity - 1
        journal_next = journal.next_seq(symbol) if kind == CMD else journal.next_event_seq(symbol)
        base = journaled_base(journal, kind, symbol, ring)
        if base is None:
            base = new_ring_base(journal, kind, symbol, ring)
            journal.set_ring_base(kind, symbol, int(ring.header["created_ns"]), base)
        self.base = base
        # Resume where the journal ends; a previous incarnation may have committed
        # records but died before storing the cursor: skip them, never journal twice.
        ring_next = journal_next - self.base
        cursor = self.consumer.cursor
        if cursor + 1 > ring_next:
            raise JournalError(
                f"{kind} ring {ring.name}: journaler cursor {cursor} is past the journal end "
                f"(ring seq {ring_next - 1}); the journal lost records or belongs to other rings"
            )
        if cursor + 1 < ring_next:
            self.consumer.wait_for(ring_next - 1, timeout=0)
            log.info(
                "%s ring %s: skipping ring seqs %d..%d, already journaled", kind, ring.name, cursor + 1, ring_next - 1
            )
            self.consumer.commit(ring_next - 1)
        self.lo = 0
        self.hi = -1  # the range taken by the last ``take``; empty when hi < lo

    def pending(self) -> int:
        """How many records wait to be journaled (two cursor reads)."""
        consumer = self.consumer
        return consumer.available() - consumer.cursor

    def take(self) -> bool:
        """Take this ring's unread records (at most ``MAX_PER_RING``); whether there
        were any (checked first with two cursor reads: most rounds find most rings empty)."""
        consumer = self.consumer
        if consumer.available() <= consumer.cursor:
            self.hi = self.lo - 1
            return False
        self.lo, self.hi = consumer.poll_range(MAX_PER_RING)
        return True

    def segments(self, out: list) -> None:
        """Append the taken records as ``commit_rows`` segments (two if they wrap)."""
        lo, hi, mask = self.lo, self.hi, self._mask
        start, end = lo & mask, (hi & mask) + 1
        if end > start:
            out.append((self.name, self.symbol8, self.base + lo, self._slots[start:end]))
        else:
            out.append((self.name, self.symbol8, self.base + lo, self._slots[start:]))
            out.append((self.name, self.symbol8, self.base + lo + mask + 1 - start, self._slots[:end]))

    def trace(self, tracer) -> None:
        """Note the sampled commands this round made durable (or whose events it did)."""
        if self.kind == CMD:
            tracer.span(Stage.JOURNALED, self.index, self.base + self.lo, self.hi - self.lo + 1)
            return
        rows: list = []
        self.segments(rows)
        for _, _, _, block in rows:
            # events are in command order: the first and last name the range they cover
            first, last = (int.from_bytes(block[i, EVENT_SEQ_OFFSET : EVENT_SEQ_OFFSET + 8], "little") for i in (0, -1))
            if not tracer.samples(first, last):
                continue
            seqs = block[:, EVENT_SEQ_OFFSET : EVENT_SEQ_OFFSET + 8].copy().view("<u8").ravel()
            tracer.seqs(Stage.EVENTS, self.index, np.unique(seqs[seqs % tracer.every == 0]).tolist())

    def commit(self, posts: dict) -> None:
        if self.hi >= self.lo:
            self.consumer.commit(self.hi, posts)
        self.hi = self.lo - 1


class Journaler:
    """The journaler loop over every ring of ``topology``, writing to ``journal``.

    ``control`` is the exchange's ``ControlBlock`` (a ``NullControl`` when run on its
    own): the journaler reports ready and heartbeats on it, and halts it when a commit
    fails.
    """

    def __init__(
        self, journal: Journal, topology: Topology, control=None, *, event_delay_s: float = 0.005, tracer=None
    ) -> None:
        self.journal = journal
        self.control = control or NullControl()
        self.tracer = tracer or NullTracer()
        self.event_delay_s = event_delay_s
        self.rings: list[Ring] = []
        self.out_feeds: list[_Feed] = []
        self.in_feeds: list[_Feed] = []
        try:
            for index, symbol in enumerate(topology.symbols):
                out_ring = topology.attach_out(symbol)
                in_ring = topology.attach_in(symbol)
                self.rings += [out_ring, in_ring]
                self.out_feeds.append(_Feed(EVT, symbol, out_ring, journal, index))
                self.in_feeds.append(_Feed(CMD, symbol, in_ring, journal, index))
        except BaseException:
            self.close()
            raise
        self.rounds = 0
        self.records = 0
        # An out-ring this full is journaled at once: its producer must never wait.
        self._events_high_water = topology.capacity // 2
        self._events_since: float | None = None  # when events were first seen waiting
        self._posts: dict = {}
        self._stop = threading.Event()
        # Woken by commands only (see the module docstring); events wait on a timeout.
        self._waiting = ConsumerSet([f.consumer for f in self.in_feeds])

    def stop(self) -> None:
        """Ask the loop to finish its round and return (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []

    def round(self, *, all_events: bool = False) -> int:
        """Journal the commands available now, and the events when it is their turn (see
        the module docstring; ``all_events``: take them whatever). Returns how many
        records it committed."""
        ins = [f for f in self.in_feeds if f.take()]
        outs = [f for f in self.out_feeds if f.take()] if ins or all_events or self._events_due() else []
        if not outs and not ins:
            return 0
        commands: list = []
        for feed in ins:
            feed.segments(commands)
        events: list = []
        for feed in outs:
            feed.segments(events)
        try:
            n_commands, n_events = self.journal.commit_rows(commands, events)
        except JournalWriteError as exc:
            self._halt(exc)
            raise JournalerHalted(str(exc)) from exc
        tracer = self.tracer
        if tracer.every:
            for feed in ins + outs:
                feed.trace(tracer)
        # Durable now: only from here may anyone treat these sequences as journaled.
        posts = self._posts
        for feed in ins:
            feed.commit(posts)
        for feed in outs:
            feed.commit(posts)
        post_all(posts)  # the gateway's and the matcher's doorbells, once each
        if outs:
            self._events_since = None
        self.rounds += 1
        self.records += n_commands + n_events
        return n_commands + n_events

    def _events_due(self) -> bool:
        """Whether the waiting events should be journaled now, without commands."""
        pending = [f.pending() for f in self.out_feeds]
        if not any(pending):
            self._events_since = None
            return False
        now = time.monotonic()
        if self._events_since is None:
            self._events_since = now
        return now - self._events_since >= self.event_delay_s or max(pending) >= self._events_high_water

    def _sleep_for(self) -> float:
        """How long the loop may sleep: until the waiting events are due, if any."""
        if self._events_since is None:
            return IDLE_WAIT_S
        return max(0.0, min(IDLE_WAIT_S, self._events_since + self.event_delay_s - time.monotonic()))

    def _halt(self, exc: Exception) -> None:
        ends = ", ".join(f"{f.symbol} commands < {self.journal.next_seq(f.symbol)}" for f in self.in_feeds)
        reason = f"journal write failed, exchange halted: {exc}"
        log.critical("%s; journal intact up to %s", reason, ends)
        self.control.halt(reason)
        self.control.set_ready(JOURNALER, False)

    def _idle_wait(self) -> None:
        try:
            self._waiting.wait(self._sleep_for())
        except posix_ipc.SignalError:
            pass  # SIGTERM while asleep: the loop checks the stop flag next

    def run(self) -> None:
        """Loop until ``stop()``; raises ``JournalerHalted`` after halting the exchange."""
        wal.warm_up()
        self.control.set_ready(JOURNALER, True)
        check_readers_at = READER_CHECK_ROUNDS
        while not self._stop.is_set():
            if not self.round():
                self._idle_wait()
            self.control.beat(JOURNALER)
            if self.rounds >= check_readers_at:
                self.journal.clear_stale_readers()
                check_readers_at = self.rounds + READER_CHECK_ROUNDS
        # Last rounds so a clean stop leaves nothing published but unjournaled.
        while self.round(all_events=True):
            pass
        self.tracer.flush()


# -- the process ---------------------------------------------------------------------------


def run_journaler(config: Config, topology: Topology, control) -> int:
    """The journaler process (``ringex.roles``): open the journal, journal until
    SIGTERM/SIGINT, return the exit status (``EXIT_HALTED`` after a failed commit)."""
    settings = config.journal
    journal = Journal(
        config.data_dir,
        durability=config.durability,
        map_size=settings.map_size,
        max_map_size=settings.max_map_size,
    )
    tracer = tracer_for(config, JOURNALER)
    try:
        journaler = Journaler(journal, topology, control, event_delay_s=settings.event_delay_ms / 1000, tracer=tracer)
    except BaseException:
        journal.close()
        tracer.close()
        raise
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: journaler.stop())
    try:
        journaler.run()
    except JournalerHalted:
        return EXIT_HALTED
    finally:
        journaler.close()
        tracer.close()
        try:
            journal.close()
        except Exception:  # the env may be unusable after a failed write; the halt is logged
            log.exception("closing the journal after a halt")
    log.info("stopped after %d rounds, %d records", journaler.rounds, journaler.records)
    return 0
