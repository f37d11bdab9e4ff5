"""Where the notifier's events come from: the out-rings, and the journal at start-up.

```
 matcher ──► out-ring[SYM] ──► RingEventSource.read_nowait ──► notifier
 journal (LMDB) ──► replay_journal ──► MarketData (the depth views, once, at start-up)
```

The notifier is consumer ``NOTIFIER`` on each out-ring (``ringex.topology``). Every
event there was caused by a durable command (the matcher only sees commands the
journaler has committed), so it is published at once: recovery reproduces it from the
journal whatever happens next. The journaler records the events themselves off this
path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from ringex.market_data.messages import MarketData
from ringex.ring import Ring
from ringex.topology import EVT, JOURNALER, NOTIFIER, Topology, journaled_base, new_ring_base
from ringex.wait import wait_until

__all__ = ["RingEventSource", "ring_sources", "replay_journal", "command_end", "MAX_BATCH"]


# Events taken from a ring per read: large enough that a flood is read in a few
# reads, small enough that one batch's fan-out does not starve the sessions' tasks.
MAX_BATCH = 4096


class RingEventSource:
    """An out-ring read as consumer ``NOTIFIER``: every event it returns was caused by a
    command the journal holds (see the module docstring).

    ``read_nowait`` copies the available slots (one memcpy) and commits them at once,
    so the producer may reuse the slots while the fan-out runs.
    """

    def __init__(self, ring: Ring, symbol: str, max_batch: int = MAX_BATCH) -> None:
        self.ring = ring
        self.name = ring.name
        self.symbol = symbol
        self.consumer = ring.consumer(NOTIFIER)
        self.max_batch = max_batch

    def read_nowait(self) -> np.ndarray | None:
        batch = self.consumer.poll(self.max_batch)
        if not batch:
            return None
        events = batch.to_array()  # a copy: the slots may be reused once committed
        if len(events) == self.max_batch:
            # more are waiting: end on a command's last event (the rest comes next read)
            events = events[: command_end(events)]
        self.consumer.commit(batch.lo + len(events) - 1)
        return events

    def close(self) -> None:
        self.consumer = None  # type: ignore[assignment]
        self.ring.close()


def command_end(events: np.ndarray) -> int:
    """How many of ``events`` (one symbol's, in order) make whole commands: all but the
    events of the last command, which may go on in the next batch; all of them if they
    are one command's. ``MarketData.apply`` publishes the book after every batch, so
    batches that end on command boundaries number the ``bbo`` stream the same way on
    every host and after every restart."""
    seqs = events["seq"]
    cut = int(np.searchsorted(seqs, seqs[-1], "left"))
    return cut or len(events)


def ring_sources(topology: Topology) -> list[RingEventSource]:
    """One ``RingEventSource`` per symbol's out-ring."""
    sources: list[RingEventSource] = []
    try:
        for symbol in topology.symbols:
            sources.append(RingEventSource(topology.attach_out(symbol), symbol))
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def replay_journal(md: MarketData, data_dir: str | os.PathLike[str], sources: Iterable[RingEventSource]) -> int:
    """Rebuild the depth views from the journal: every event of each symbol before the
    first one the notifier will read from its out-ring. Returns the events replayed.

    The notifier's next ring sequence ``cursor + 1`` is journal event ``base + cursor
    + 1`` (``ringex.topology``: the base the journaler recorded for this ring, or the
    one it will give a ring it has not attached yet). A previous notifier may have
    published events the journaler has not taken yet (it takes them off the critical
    path, within ``event_delay_ms``): wait for them first. No journal: nothing to
    replay. Replay costs a few µs per event (the whole history; a snapshot of the views
    would bound it, and is not built yet).
    """
    from ringex.wal import Journal, journal_path  # noqa: PLC0415

    if not (journal_path(data_dir) / "data.mdb").exists():
        return 0
    for source in sources:
        ring = source.ring
        wait_until(
            lambda r=ring, c=source.consumer: r.consumer_cursor(JOURNALER) >= c.cursor,
            f"the journaler to take the events already published from {ring.name}",
        )
    journal = Journal(data_dir, readonly=True)
    replayed = 0
    try:
        for source in sources:
            base = journaled_base(journal, EVT, source.symbol, source.ring)
            if base is None:
                base = new_ring_base(journal, EVT, source.symbol, source.ring)
            upto = base + source.consumer.cursor + 1
            carry = None  # the last command's events of a chunk, applied with the next chunk
            for _, events in journal.read_events(source.symbol, 0, upto):
                if carry is not None:
                    events = _joined(carry, events)
                cut = command_end(events)
                if cut < len(events):
                    events, carry = events[:cut], events[cut:]
                else:
                    carry = None
                md.apply(events)
                replayed += len(events)
            if carry is not None:
                md.apply(carry)
                replayed += len(carry)
    finally:
        journal.close()
    return replayed


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # not np.concatenate: it drops a structured dtype's padding (numpy 2)
    out = np.empty(len(first) + len(second), first.dtype)
    out[: len(first)] = first
    out[len(first) :] = second
    return out
