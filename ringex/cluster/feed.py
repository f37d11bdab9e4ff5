"""Reading a stream back: what a follower's and a standby's feeder share.

```
 JetStream <name>_<kind> ──durable push consumer──► Feed.deliveries() ──► Continuity.take ──► the feeder's ring
                          ◄── ack, message by message ── once the feeder's own journal has it
```

A feeder keeps its position twice: JetStream's durable consumer remembers which
messages were acknowledged, and the feeder's own journal knows the next sequence of
every symbol. It acks a message only once its records are in its own journal, so after
a crash JetStream redelivers at most what the journal already has, and ``Continuity``
drops that part: every record reaches the ring exactly once.

A push consumer, because it hands a message over the moment it is stored (a pull
``fetch`` of several messages here waits out its whole timeout once one has come). Its
deliveries are in stream order except when one was lost on the way (a NATS restart):
JetStream redelivers that one after ``ACK_WAIT_S`` while later ones keep coming, so a
message that does not continue the journal (``Gap``) is refused (nak, redelivered a
little later) until the missing one is back. Acks are explicit, message by message,
so acking a later message never covers a refused one. ``MAX_ACK_PENDING`` bounds what
the server pushes ahead of the acks, so the client's buffer is bounded too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from ringex.cluster import jetstream
from ringex.config import ClusterSettings

__all__ = ["Continuity", "Gap", "Feed", "consumer_name"]

log = logging.getLogger("ringex.cluster.feed")

# Messages taken per turn: what has arrived, up to this many (a few MiB at most)
TAKE_BATCH = 64
# How long an idle feeder waits for a message before it looks at its stop flag
IDLE_WAIT_S = 0.5
# Messages JetStream pushes beyond the last ack: with messages of up to 256 KiB, at
# most 64 MiB buffered in the client
MAX_ACK_PENDING = 256
# A delivery lost on the way is redelivered after this; the feeder waits for it meanwhile
ACK_WAIT_S = 2.0
# A refused (out of order) message comes back after this
NAK_DELAY_S = 0.1
# A durable consumer nobody has fetched from for this long is deleted by the server:
# a follower that is gone for good does not pin the stream's state forever
INACTIVE_THRESHOLD_S = 7 * 24 * 3600.0


class Gap(Exception):
    """A message that does not continue the feeder's journal (one before it is missing)."""


class Continuity:
    """Per symbol, the next journal sequence the feeder's own journal expects; ``take``
    trims what it has already and refuses a gap."""

    def __init__(self, next_seq: dict[str, int]) -> None:
        self.next = dict(next_seq)

    def take(self, batch: jetstream.Batch) -> np.ndarray | None:
        """The records of ``batch`` not yet taken (None: all were), and advance."""
        want = self.next.get(batch.symbol)
        if want is None:
            raise ValueError(f"{batch.kind} of {batch.symbol}: not a symbol of this exchange's config")
        if batch.end <= want:
            return None
        if batch.first > want:
            raise Gap(f"{batch.kind} of {batch.symbol}: the message starts at {batch.first}, this journal at {want}")
        self.next[batch.symbol] = batch.end
        return batch.records[want - batch.first :]


def consumer_name(role: str, data_dir: str | os.PathLike[str]) -> str:
    """A durable consumer name for ``role`` on this host and data directory: stable across
    restarts (that is how a feeder resumes), distinct for two feeders."""
    where = f"{socket.gethostname()}:{Path(data_dir).resolve()}"
    return f"{role}-{hashlib.blake2b(where.encode(), digest_size=6).hexdigest()}"


class Feed:
    """The messages of ``kind`` (``CMD`` or ``EVT``) for the durable consumer ``durable``.

    ``deliveries()`` yields lists of ``(batch, msg)`` as they arrive; the caller acks each
    ``msg`` once its journal holds the batch (``ack``), or refuses it (``refuse``). NATS
    errors are handled by the client, which reconnects by itself and resubscribes; the
    feed never ends but on ``stopping``."""

    def __init__(self, cluster: ClusterSettings, kind: str, durable: str, stopping: asyncio.Event) -> None:
        self.cluster = cluster
        self.kind = kind
        self.durable = durable
        self.stopping = stopping
        self.nc = None
        self.sub = None
        self.js = None
        self.idle = False  # nothing arrived during the last IDLE_WAIT_S: caught up, as far as we know
        self.refused = 0

    async def open(self) -> bool:
        from nats.js import api  # noqa: PLC0415

        self.nc = await jetstream.connect(self.cluster, self.durable, self.stopping)
        if self.nc is None:
            return False
        self.js = js = self.nc.jetstream()
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_ACK_PENDING,
            inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        while not self.stopping.is_set():
            try:
                await jetstream.ensure_streams(js, self.cluster)
                self.sub = await js.subscribe(
                    jetstream.subjects(self.cluster, self.kind),
                    durable=self.durable,
                    stream=jetstream.stream_name(self.cluster, self.kind),
                    config=config,
                    manual_ack=True,
                    deliver_policy=api.DeliverPolicy.ALL,
                )
                return True
            except Exception as exc:  # NATS away, JetStream not ready, the old binding not gone yet
                log.warning("%s: cannot subscribe yet (%s: %s); retrying", self.durable, type(exc).__name__, exc)
                await asyncio.sleep(0.25)
        return False

    async def pending(self) -> int:
        """Messages the stream holds that this consumer has not had acknowledged."""
        info = await self.js.consumer_info(jetstream.stream_name(self.cluster, self.kind), self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def deliveries(self) -> AsyncIterator[list[tuple[jetstream.Batch, object]]]:
        import nats.errors  # noqa: PLC0415

        sub = self.sub
        while not self.stopping.is_set():
            try:
                first = await sub.next_msg(timeout=IDLE_WAIT_S)
            except nats.errors.TimeoutError:
                self.idle = True
                continue
            self.idle = False
            msgs = [first]
            while sub.pending_msgs and len(msgs) < TAKE_BATCH:
                msgs.append(await sub.next_msg(timeout=IDLE_WAIT_S))
            yield [(jetstream.decode(self.kind, m.subject, m.headers, m.data), m) for m in msgs]

    async def ack(self, msg) -> None:
        try:
            await msg.ack()
        except Exception as exc:  # disconnected: the message comes back and is dropped as known
            log.debug("%s: ack failed: %s", self.durable, exc)

    async def refuse(self, msg, why: Exception) -> None:
        self.refused += 1
        log.info("%s: %s; waiting for the missing message", self.durable, why)
        try:
            await msg.nak(delay=NAK_DELAY_S)
        except Exception as exc:  # disconnected: it comes back after ACK_WAIT_S anyway
            log.debug("%s: nak failed: %s", self.durable, exc)

    async def close(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception as exc:  # closing a connection that is already broken
                log.debug("closing NATS: %s", exc)
            self.nc = None
