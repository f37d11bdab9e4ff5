"""A market data follower's feeder: the primary's events, from JetStream into a local
journal and the local out-rings, where the unchanged notifier reads them.

```
 JetStream <name>_evt ──► FollowerFeeder ──► LMDB (events only) ──► out-ring[SYM] ──► notifier ──► subscribers
                               │  (1) commit       (2) publish, then store the
                               │                       JOURNALER cursor itself
                               └── (3) ack each message to JetStream
```

The feeder plays, for the notifier, the matcher (it produces the out-rings) and the
journaler (it journals the events first and stores consumer ``JOURNALER``'s cursor), so
the notifier's own start-up, ``replay_journal``, rebuilds its views from the local
journal exactly as it does on the primary.

Channel sequence numbers. The notifier counts a symbol's ``trades`` from the first
event of the symbol's history (at start-up it replays its journal from event 0), and
the follower's journal holds the same events under the same sequences, from event 0
(the bridge publishes the primary's journal from its start): a trade has the same
``seq`` on the primary and on every follower, however each was restarted. The ``bbo``
and ``depth`` streams count changes per batch the notifier happened to read, and the
``orders`` streams count while subscribed, so those numbers are each host's own (as
they already are across a restart of the primary's notifier); a subscriber that moves
host subscribes again and takes the snapshot (docs/scale-out.md).

Restart: the feeder resumes from its journal. Rings and journal were written in that
order, so a feeder killed between the two finds the ring behind the journal and
refills it from the journal before it takes anything new.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import numpy as np

from ringex.cluster import jetstream
from ringex.cluster.feed import Continuity, Feed, Gap, consumer_name
from ringex.config import Config
from ringex.records import EVENT
from ringex.topology import EVT, FOLLOWER, JOURNALER, Topology, journaled_base, new_ring_base

__all__ = ["FollowerFeeder", "run_follower"]

log = logging.getLogger("ringex.cluster.follower")

# Waiting for room in an out-ring (the notifier is behind): look again this often
RING_FULL_WAIT_S = 0.001


class FollowerFeeder:
    """The events of ``config.cluster`` into ``topology``'s out-rings and the journal in
    ``config.data_dir``.

    Resource handling: attaches the out-rings (the supervisor made them) and owns the
    journal's write handle; ``close()`` releases both."""

    def __init__(self, config: Config, topology: Topology, durable: str | None = None) -> None:
        from ringex.wal import Journal  # noqa: PLC0415

        self.config = config
        self.topology = topology
        self.durable = durable or consumer_name(FOLLOWER, config.data_dir)
        self.journal = Journal(
            config.data_dir,
            durability=config.durability,
            map_size=config.journal.map_size,
            max_map_size=config.journal.max_map_size,
        )
        self.rings = {}
        self.producers = {}
        self.journalers = {}  # symbol -> consumer JOURNALER of its out-ring, stored by us
        self.bases = {}
        self.events = 0
        self.stopping = asyncio.Event()
        try:
            for symbol in topology.symbols:
                ring = self.rings[symbol] = topology.attach_out(symbol)
                self.producers[symbol] = ring.producer()
                self.journalers[symbol] = ring.consumer(JOURNALER)
                base = journaled_base(self.journal, EVT, symbol, ring)
                if base is None:
                    base = new_ring_base(self.journal, EVT, symbol, ring)
                    self.journal.set_ring_base(EVT, symbol, int(ring.header["created_ns"]), base)
                self.bases[symbol] = base
                self._refill(symbol)
        except BaseException:
            self.close()
            raise
        self.continuity = Continuity({s: self.journal.next_event_seq(s) for s in topology.symbols})

    def _refill(self, symbol: str) -> None:
        """Put in the ring what the journal has and the ring has not (a feeder killed
        between its commit and its publish), before anything new."""
        ring_next = self.bases[symbol] + self.producers[symbol].cursor + 1
        for _, records in self.journal.read_events(symbol, ring_next, self.journal.next_event_seq(symbol)):
            self._write_now(symbol, records)

    def _write_now(self, symbol: str, records: np.ndarray) -> None:
        producer = self.producers[symbol]
        producer.write(records, timeout=None)
        self._journaled(symbol)

    def _journaled(self, symbol: str) -> None:
        consumer = self.journalers[symbol]
        consumer.poll(1)
        consumer.commit(self.producers[symbol].cursor)

    async def _write(self, symbol: str, records: np.ndarray) -> None:
        producer = self.producers[symbol]
        step = max(1, self.topology.capacity // 2)
        for lo in range(0, len(records), step):
            part = records[lo : lo + step]
            while (batch := producer.try_claim(len(part))) is None:
                await asyncio.sleep(RING_FULL_WAIT_S)  # the notifier is behind: its slow sessions are cut
            batch.fill(part)
            producer.publish(batch.hi)
            self._journaled(symbol)

    async def take(self, feed: Feed, deliveries) -> None:
        """One turn: journal what continues the journal in one transaction, put it in
        the rings, then ack those messages; refuse the ones that do not continue it."""
        segments: dict[str, list[np.ndarray]] = defaultdict(list)
        firsts: dict[str, int] = {}
        acks, refusals = [], []
        for batch, msg in deliveries:
            try:
                records = self.continuity.take(batch)
            except Gap as gap:
                refusals.append((msg, gap))
                continue
            acks.append(msg)
            if records is None:
                continue
            firsts.setdefault(batch.symbol, batch.end - len(records))
            segments[batch.symbol].append(records)
        joined = {symbol: jetstream.join(parts, EVENT) for symbol, parts in segments.items()}
        if joined:
            self.journal.commit(events=[(symbol, firsts[symbol], records) for symbol, records in joined.items()])
            for symbol, records in joined.items():
                await self._write(symbol, records)
                self.events += len(records)
        for msg in acks:
            await feed.ack(msg)
        for msg, gap in refusals:
            await feed.refuse(msg, gap)

    async def run(self, on_ready=None) -> None:
        feed = Feed(self.config.cluster, EVT, self.durable, self.stopping)
        if on_ready is not None:
            on_ready()
        try:
            if not await feed.open():
                return
            log.info(
                "following %s as %s from %s",
                jetstream.stream_name(self.config.cluster, EVT),
                self.durable,
                dict(self.continuity.next),
            )
            async for deliveries in feed.deliveries():
                await self.take(feed, deliveries)
        finally:
            await feed.close()

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings = {}
        if self.journal is not None:
            self.journal.close()
            self.journal = None


def run_follower(config: Config, topology: Topology, control) -> int:
    """The follower's feeder process (``ringex.roles``): until SIGTERM/SIGINT."""
    return jetstream.run_process(
        FollowerFeeder(config, topology, durable=config.cluster.consumer or None), FOLLOWER, control
    )
