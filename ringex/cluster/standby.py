"""A warm standby's feeder: the primary's commands, from JetStream into the in-rings of
an exchange that runs without a gateway; and ``promote``.

```
 JetStream <name>_cmd ──► StandbyFeeder ──► in-ring[SYM] ──► journaler ──► LMDB (the standby's own journal)
                              ▲                  └──────────► matcher ──► out-ring ──► notifier
                              └── ack each message once the standby's journaler has its commands
```

The feeder plays the gateway: it is the in-rings' producer, and puts in exactly the
command records the primary's gateway stamped (same sessions, order ids, receive
times). Everything behind it is the exchange's own code: the journaler journals them
into the standby's LMDB, the matcher (deterministic) matches them into the same events
and snapshots its books, so the standby's journal passes ``ringex recover --verify``
and its books equal the primary's at the same sequence.

Position: the standby's journal (``Journal.next_seq`` per symbol, read once the
journaler has taken the in-rings, as the gateway's ``start_position`` does); JetStream's
durable consumer redelivers what was not acked and ``Continuity`` drops what the
journal has.

Promotion (``ringex promote``, ``promote``): SIGUSR1 asks the feeder to drain: it goes
on taking commands until JetStream has none left for it and its journaler has them
all, then writes ``DRAINED_FILE`` (the journal's next sequence per symbol) and idles.
``promote`` then stops the standby cleanly (snapshots, journal closed) and the caller
starts ``ringex up`` on the same data directory: the new primary's gateway continues
order ids past the journal's highest, and its bridge continues the streams where they
end. In ``sync`` replication every acknowledged order was in JetStream before its ack,
so it is in the promoted journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from ringex.cluster import jetstream
from ringex.cluster.feed import Continuity, Feed, Gap, consumer_name
from ringex.config import Config
from ringex.topology import CMD, JOURNALER, STANDBY, Topology, wait_for_base
from ringex.wait import wait_until

__all__ = ["StandbyFeeder", "run_standby", "promote", "DRAINED_FILE", "PromoteError"]

log = logging.getLogger("ringex.cluster.standby")

DRAINED_FILE = "standby.drained.json"
# Waiting for room in an in-ring, or for the journaler to take what we put there
RING_WAIT_S = 0.0005
# How often a draining feeder asks JetStream whether anything is left for it
DRAIN_CHECK_S = 0.2


class PromoteError(RuntimeError):
    """The standby cannot be promoted; the message says why."""


class StandbyFeeder:
    """The commands of ``config.cluster`` into ``topology``'s in-rings.

    Resource handling: attaches the in-rings (the supervisor made them); ``close()``
    releases them."""

    def __init__(self, config: Config, topology: Topology, durable: str | None = None) -> None:
        from ringex.wal import Journal  # noqa: PLC0415

        self.config = config
        self.topology = topology
        self.data = Path(config.data_dir)
        self.durable = durable or consumer_name(STANDBY, config.data_dir)
        self.rings = {}
        self.producers = {}
        self.journaled = {}  # symbol -> () -> the journaler's cursor on its in-ring
        self.stopping = asyncio.Event()
        self.draining = False
        self.drained = asyncio.Event()
        self.commands = 0
        try:
            for symbol in topology.symbols:
                ring = self.rings[symbol] = topology.attach_in(symbol)
                # the in-rings' only producer is us: once the journaler has all of them,
                # the journal's end is where the stream continues
                wait_until(
                    lambda r=ring: r.consumer_cursor(JOURNALER) >= r.producer_cursor,
                    f"the journaler to take {ring.name}",
                )
                wait_for_base(config.data_dir, CMD, symbol, ring)
                self.producers[symbol] = ring.producer()
                self.journaled[symbol] = ring.cursor_reader(JOURNALER)
        except BaseException:
            self.close()
            raise
        with Journal(config.data_dir, readonly=True) as journal:
            self.continuity = Continuity({s: journal.next_seq(s) for s in topology.symbols})

    async def _write(self, symbol: str, records: np.ndarray) -> None:
        producer = self.producers[symbol]
        step = max(1, self.topology.capacity // 2)
        for lo in range(0, len(records), step):
            part = records[lo : lo + step]
            while (batch := producer.try_claim(len(part))) is None:
                await asyncio.sleep(RING_WAIT_S)  # the journaler or the matcher is behind
            batch.fill(part)
            producer.publish(batch.hi)

    async def _wait_journaled(self, symbols) -> None:
        for symbol in symbols:
            target = self.producers[symbol].cursor
            probe = self.journaled[symbol]
            while probe() < target:
                await asyncio.sleep(RING_WAIT_S)

    async def take(self, feed: Feed, deliveries) -> None:
        """One turn: the commands that continue the journal into the in-rings; once the
        journaler has them, ack their messages; refuse those that do not continue it."""
        acks, refusals, touched = [], [], set()
        for batch, msg in deliveries:
            try:
                records = self.continuity.take(batch)
            except Gap as gap:
                refusals.append((msg, gap))
                continue
            acks.append(msg)
            if records is not None:
                await self._write(batch.symbol, records)
                touched.add(batch.symbol)
                self.commands += len(records)
        await self._wait_journaled(touched)
        for msg in acks:
            await feed.ack(msg)
        for msg, gap in refusals:
            await feed.refuse(msg, gap)

    async def _watch_drain(self, feed: Feed) -> None:
        """Once asked to drain: when JetStream has nothing left for us and the journaler
        has all we gave it, say where the journal ends (``DRAINED_FILE``)."""
        while not self.stopping.is_set():
            await asyncio.sleep(DRAIN_CHECK_S)
            if not self.draining or self.drained.is_set() or not feed.idle:
                continue
            try:
                left = await feed.pending()
            except Exception as exc:  # NATS away: the primary is gone, JetStream may not be
                log.warning("cannot ask JetStream what is left (%s); asking again", exc)
                continue
            if left:
                continue
            await self._wait_journaled(self.topology.symbols)
            ends = dict(self.continuity.next)
            tmp = self.data / (DRAINED_FILE + ".tmp")
            tmp.write_text(json.dumps({"next_seq": ends, "commands": self.commands, "at": time.time()}))
            os.replace(tmp, self.data / DRAINED_FILE)
            log.info("drained: the journal holds every command JetStream has (%s)", ends)
            self.drained.set()

    async def run(self, on_ready=None) -> None:
        feed = Feed(self.config.cluster, CMD, self.durable, self.stopping)
        (self.data / DRAINED_FILE).unlink(missing_ok=True)
        if on_ready is not None:
            on_ready()
        try:
            if not await feed.open():
                return
            log.info(
                "standing by on %s as %s from %s",
                jetstream.stream_name(self.config.cluster, CMD),
                self.durable,
                dict(self.continuity.next),
            )
            watch = asyncio.create_task(self._watch_drain(feed))
            try:
                async for deliveries in feed.deliveries():
                    await self.take(feed, deliveries)
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        finally:
            await feed.close()

    def drain(self) -> None:
        log.info("asked to drain for promotion")
        self.draining = True

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings = {}


def run_standby(config: Config, topology: Topology, control) -> int:
    """The standby's feeder process (``ringex.roles``): until SIGTERM/SIGINT; SIGUSR1
    drains it for promotion."""
    feeder = StandbyFeeder(config, topology, durable=config.cluster.consumer or None)
    return jetstream.run_process(feeder, STANDBY, control, {signal.SIGUSR1: feeder.drain})


####################################################################################
# Promotion
####################################################################################


def _lock_free(path: Path) -> bool:
    """Whether no supervisor holds the data directory's lock (``ringex.supervisor``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def promote(data_dir: str | os.PathLike[str], timeout: float = 120.0) -> dict:
    """Drain the standby running on ``data_dir`` and stop it; returns what it drained
    (``DRAINED_FILE``'s content). The caller then starts ``ringex up`` on ``data_dir``.

    Error handling: ``PromoteError`` if nothing runs there, if it is not a standby, or
    if it does not drain within ``timeout`` seconds (JetStream unreachable: promoting
    then could lose acknowledged orders, so it is refused; stop the standby and start
    ``ringex up`` yourself to accept that)."""
    from ringex.control import ControlBlock  # noqa: PLC0415
    from ringex.supervisor import LOCK_FILE, RUN_FILE  # noqa: PLC0415

    data = Path(data_dir)
    try:
        run = json.loads((data / RUN_FILE).read_text())
    except FileNotFoundError:
        raise PromoteError(f"no standby runs on {data} (no {RUN_FILE})") from None
    topology = Topology.from_json(run["topology"])
    if topology.mode != STANDBY:
        raise PromoteError(f"the exchange on {data} is a {topology.mode}, not a standby")
    supervisor = int(run["pid"])
    control = ControlBlock.attach(topology.control)
    try:
        feeder = next((r["pid"] for r in control.roles() if r["role"] == STANDBY and r["ready"]), 0)
    finally:
        control.close()
    if not feeder:
        raise PromoteError(f"the standby on {data} has no running feeder (see {data / 'ringex.log'})")
    drained = data / DRAINED_FILE
    drained.unlink(missing_ok=True)
    os.kill(feeder, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not drained.exists():
        if time.monotonic() > deadline:
            raise PromoteError(f"the standby did not drain JetStream within {timeout:.0f} s (is NATS reachable?)")
        time.sleep(0.05)
    result = json.loads(drained.read_text())
    os.kill(supervisor, signal.SIGTERM)
    # gone once its lock is free (its pid may linger as a zombie its parent has not reaped)
    while not _lock_free(data / LOCK_FILE):
        if time.monotonic() > deadline + 60:
            raise PromoteError(f"the standby's supervisor (pid {supervisor}) did not stop")
        time.sleep(0.05)
    return result
