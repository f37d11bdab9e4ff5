"""A matcher shard: the process that owns the books of some symbols.

::

    in-ring[SYM] ──"matcher"──► Matcher.apply (jitted) ──► out-ring[SYM]
                                      │
                                      └── every N commands: snapshot file

For each of its symbols the shard recovers the book from the journal (latest snapshot
plus the tail, ``ringex.engine.recovery``), then matches batches from the in-ring and
publishes their events to the out-ring. It commits its in-ring cursor only after the
batch's events are published, so a shard killed mid-batch leaves its cursor before the
batch and the next incarnation sees every command again.

Restart while the rings live on (the supervisor restarts a shard that died): the old
shard may have matched commands the journaler had not made durable yet, and published
events the journaler had not taken. Before recovering, the new shard waits until the
journaler's cursor on the in-ring has passed the old shard's cursor and the journaler
has taken every event on the out-ring (nobody else writes there while the shard is
down). Then the journal holds every command the old shard matched and every event it
published, recovery replays exactly those, ``pending_events`` are the events that
were never published, and the shard moves its in-ring cursor forward to the end of
what it replayed. Matching is deterministic, so the replayed book equals the book the
old shard had, and no event is published twice or lost.

Sequences: the journal numbers a symbol's commands from its first ever; a ring counts
from 0 when created. The journaler records ``base`` (journal seq of ring seq 0) per
ring in the journal's metadata before it reports ready; the shard reads it from there
(``ringex.topology.wait_for_base``), which is why the supervisor starts the journaler
before the shards.
"""

from __future__ import annotations

import logging
import signal
import time

import posix_ipc

from ringex.config import Config, SymbolSpec
from ringex.control import NullControl
from ringex.engine.recovery import recover_book
from ringex.ring import Consumer, ConsumerSet, Producer, Ring, RingTimeout
from ringex.topology import CMD, JOURNALER, MATCHER, Topology, matcher_role, wait_for_base
from ringex.trace import NullTracer, Stage, tracer_for
from ringex.wait import post_all, wait_strategy, wait_until
from ringex.wal import Journal, SnapshotStore

__all__ = ["Shard", "run_shard"]

log = logging.getLogger("ringex.engine.shard")

# Longest idle sleep before the loop looks at its stop flag and heartbeat. Not a
# latency: each in-ring rings the shard's doorbell when it moves.
IDLE_WAIT_S = 0.05
# How long a restarting shard waits for the journaler to take what the old shard left.
DRAIN_TIMEOUT_S = 60.0
# Commands taken from one ring per turn, so one busy symbol cannot starve the others.
MAX_BATCH = 4096


class _Book:
    """One symbol as the shard sees it: its matcher, rings and sequence bases."""

    def __init__(
        self, spec: SymbolSpec, consumer: Consumer, producer: Producer, capacity: int, base: int, book, index: int
    ) -> None:
        self.spec = spec
        self.index = index  # the symbol's place in the topology (for traces)
        self.consumer = consumer
        self.producer = producer
        self.capacity = capacity  # of the out-ring: the most one claim may take
        self.base = base  # journal seq of in-ring seq 0
        self.matcher = book.matcher
        self.next_event_seq = book.next_event_seq
        self.since_snapshot = 0


class Shard:
    """The matching loop over the symbols of shard ``index`` of ``topology``.
    ``control`` is the exchange's ``ControlBlock`` (a ``NullControl`` when run on its
    own)."""

    def __init__(self, config: Config, topology: Topology, index: int, control=None, tracer=None) -> None:
        self.config = config
        self.control = control or NullControl()
        self.tracer = tracer or NullTracer()
        self.role = matcher_role(index)
        self.snapshots = SnapshotStore(config.data_dir)
        self.rings: list[Ring] = []
        self.books: list[_Book] = []
        self._stop = False
        self._posts: dict = {}
        wait = wait_strategy(config.wait_strategy)
        try:
            for symbol in topology.shards[index]:
                in_ring = topology.attach_in(symbol)
                out_ring = topology.attach_out(symbol)
                self.rings += [in_ring, out_ring]
                book = self._recover(config.symbol(symbol), in_ring, out_ring, wait)
                book.index = topology.symbols.index(symbol)
                self.books.append(book)
        except BaseException:
            self.close()
            raise

    def _recover(self, spec: SymbolSpec, in_ring: Ring, out_ring: Ring, wait) -> _Book:
        data_dir = self.config.data_dir
        consumer = in_ring.consumer(MATCHER, wait)
        producer = out_ring.producer(wait)
        # What a previous incarnation matched or published must be in the journal first.
        matched = consumer.cursor
        wait_until(
            lambda: (
                in_ring.consumer_cursor(JOURNALER) >= matched
                and out_ring.consumer_cursor(JOURNALER) >= out_ring.producer_cursor
            ),
            f"the journaler to take what the previous matcher of {spec.name} left",
            DRAIN_TIMEOUT_S,
        )
        base_in = wait_for_base(data_dir, CMD, spec.name, in_ring)
        with Journal(data_dir, readonly=True) as journal:
            book = recover_book(journal, spec, self.snapshots)
        resume = book.next_seq - base_in - 1  # ring seq of the last command replayed
        if resume < matched:
            raise RuntimeError(f"{spec.name}: journal ends before what the previous matcher matched")
        if resume > matched:
            consumer.wait_for(resume, timeout=0)
            consumer.commit(resume)
        if len(book.pending_events):
            producer.write(book.pending_events)
        log.info(
            "%s: recovered %d commands (%s) in %.3f s; %d resting orders, bid %s ask %s, %d events republished",
            spec.name,
            book.replayed,
            "from snapshot" if book.snapshot_seq is not None else "full replay",
            book.seconds,
            book.matcher.order_count(),
            book.matcher.best_bid(),
            book.matcher.best_ask(),
            len(book.pending_events),
        )
        return _Book(spec, consumer, producer, out_ring.capacity, base_in, book, 0)

    def stop(self) -> None:
        """Finish the current batch and return from ``run`` (safe from a signal handler)."""
        self._stop = True

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []

    def _publish(self, book: _Book, events) -> None:
        """Publish ``events`` claim by claim. A full out-ring means the journaler or the
        notifier is behind: wait for them, looking at the stop flag now and then so
        shutdown is not held up forever. Each claim is published before the next, so a
        retry resumes after what is out and never publishes an event twice."""
        producer = book.producer
        done, n = 0, len(events)
        while done < n:
            want = min(n - done, book.capacity)
            batch = producer.try_claim(want)
            if batch is None:
                # The ring is full: the readers must be awake to make room, so the
                # wake-ups gathered for the end of the turn go out now.
                post_all(self._posts)
            try:
                batch = batch or producer.claim(want, timeout=0.2)
            except RingTimeout:
                if self._stop:
                    raise
                continue
            except posix_ipc.SignalError:
                continue  # SIGTERM while waiting for space: the claim is simply retried
            batch.fill(events[done : done + len(batch)])
            producer.publish(batch.hi, self._posts)
            done += len(batch)

    def turn(self) -> int:
        """Match what every ring has now; returns the number of commands matched."""
        done = 0
        for book in self.books:
            batch = book.consumer.poll(MAX_BATCH)
            if not batch:
                continue
            for ring_seq, view in batch.segments():
                events = book.matcher.apply(view, ring_seq + book.base)
                if len(events):
                    self._publish(book, events)
                    book.next_event_seq += len(events)
                if self.tracer.every:
                    self.tracer.span(Stage.MATCHED, book.index, ring_seq + book.base, len(view))
            # Only now: a shard killed before this line sees the batch again.
            book.consumer.commit(batch.hi, self._posts)
            book.since_snapshot += len(batch)
            done += len(batch)
            if book.since_snapshot >= self.config.snapshot_interval:
                self.snapshot(book)
        if self._posts:
            post_all(self._posts)  # the notifier's doorbell once, whatever rings moved
        return done

    def snapshot(self, book: _Book) -> None:
        started = time.perf_counter()
        matcher = book.matcher
        path = self.snapshots.write(book.spec.name, matcher.last_seq + 1, book.next_event_seq, matcher.snapshot())
        book.since_snapshot = 0
        log.info("%s: snapshot %s in %.1f ms", book.spec.name, path.name, (time.perf_counter() - started) * 1e3)

    def run(self) -> None:
        self.control.set_ready(self.role, True)
        waiting = ConsumerSet([book.consumer for book in self.books])
        while not self._stop:
            if not self.turn():
                try:
                    waiting.wait(IDLE_WAIT_S)
                except posix_ipc.SignalError:
                    pass  # SIGTERM while asleep: the loop looks at the stop flag next
            self.control.beat(self.role)
        # Drain what was published before the stop, then leave a snapshot so the next
        # start replays little.
        while self.turn():
            pass
        for book in self.books:
            if book.since_snapshot:
                self.snapshot(book)


def run_shard(config: Config, topology: Topology, index: int, control) -> int:
    """Matcher shard ``index`` (``ringex.roles``): recover, report ready, match until
    SIGTERM/SIGINT, drain, snapshot, exit 0."""
    from ringex.matcher_jit import warm_up

    log.info("matching kernels ready in %.2f s", warm_up())
    tracer = tracer_for(config, matcher_role(index))
    shard = Shard(config, topology, index, control, tracer)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: shard.stop())
    try:
        shard.run()
    finally:
        shard.close()
        tracer.close()
    return 0
