"""Process entry points for the ring tests: a producer and a checking consumer.

Each runs in its own ``spawn``ed process, attaches to a real ring by name and reports
one tuple on a multiprocessing queue: ``("ok", who, details)`` or ``("error", who,
traceback)``, so a failure inside a child fails the test with its traceback.

Records are ``COMMAND`` slots whose ``order_id`` is the record's sequence and whose
``price`` is ``mix(sequence)``, so a consumer checks each batch with two vectorised
comparisons: sequences contiguous from where it stood (nothing lost, duplicated or
reordered) and payload matching its sequence (no slot overwritten under it).
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np

from ringex.records import COMMAND, make_records
from ringex.ring import Ring, RingTimeout
from ringex.wait import wait_strategy


def mix(seqs: np.ndarray) -> np.ndarray:
    """A payload derived from the sequence (Knuth's multiplicative hash, 31 bits)."""
    return (seqs * 2654435761) & 0x7FFFFFFF


class Orphaned(Exception):
    """The test process that started this one is gone: stop, or run forever unseen."""


def _watch_parent():
    """A check that raises ``Orphaned`` once this process's parent has died (it is then
    re-parented, so ``getppid`` changes). Endless producers and consumers call it now
    and then, so a test run that crashes hard leaves nothing running."""
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            raise Orphaned

    return check


def _report(queue, who: str, body) -> None:
    try:
        queue.put(("ok", who, body()))
    except Orphaned:
        pass
    except BaseException:
        queue.put(("error", who, traceback.format_exc()))
        raise


def produce(
    queue,
    name: str,
    total: int | None,
    batch: int,
    wait: str = "blocking",
    create: dict | None = None,
    watch: str | None = None,
    barrier=None,
) -> None:
    """Publish sequences after the ring's cursor, ``batch`` at a time, ``total`` in all
    (None: until killed). With ``create``, create the ring first (this process then
    owns it). Reports the time taken and, if ``watch`` names a consumer, its cursor
    right after the last publish. With ``barrier``, waits there once attached."""

    def body():
        if create is not None:
            ring = Ring.create(name, COMMAND, **create)
        else:
            ring = Ring.attach(name, COMMAND)
        producer = ring.producer(wait_strategy(wait))
        if barrier is not None:
            barrier.wait()
        remaining = total if total is not None else 1 << 62
        check_parent = _watch_parent()
        started = time.perf_counter()
        while remaining:
            try:
                claim = producer.claim(min(batch, remaining), timeout=1.0)
            except RingTimeout:
                check_parent()
                continue
            if claim.lo & 0xFFFF < batch:
                check_parent()
            for first, view in claim.segments():
                seqs = np.arange(first, first + len(view), dtype=np.int64)
                view["order_id"] = seqs
                view["price"] = mix(seqs)
            producer.publish(claim.hi)
            remaining -= len(claim)
        elapsed = time.perf_counter() - started
        watched = ring.consumer_cursor(watch) if watch else None
        return {"hi": producer.cursor, "elapsed": elapsed, "watched_cursor": watched}

    _report(queue, "producer", body)


def consume(
    queue,
    name: str,
    consumer: str,
    last: int | None,
    wait: str = "blocking",
    gate: str | None = None,
    pause: float = 0.0,
    idle_limit: float = 30.0,
    barrier=None,
) -> None:
    """Read and check every record up to sequence ``last`` (None: until killed).

    Checks each batch: its sequences continue exactly where the previous batch ended,
    its payloads match, and, if ``gate`` names the consumer this one is gated on, that
    the batch ends at or before that consumer's cursor. ``pause`` sleeps before each
    commit (a deliberately slow consumer). Fails if nothing arrives for ``idle_limit``
    seconds. With ``barrier``, waits there once attached."""

    def body():
        ring = Ring.attach(name, COMMAND)
        me = ring.consumer(consumer, wait_strategy(wait))
        if barrier is not None:
            barrier.wait()
        first = me.cursor + 1
        expected = first
        checksum = 0
        batches = 0
        idle_since = time.monotonic()
        end = last if last is not None else 1 << 62
        check_parent = _watch_parent()
        while expected <= end:
            batch = me.wait_batch(timeout=0.5)
            if not batch or batches & 0xFF == 0:
                check_parent()
            if not batch:
                if time.monotonic() - idle_since > idle_limit:
                    raise AssertionError(f"{consumer}: nothing after {expected - 1} for {idle_limit} s")
                continue
            idle_since = time.monotonic()
            if gate is not None and batch.hi > ring.consumer_cursor(gate):
                raise AssertionError(f"{consumer}: read up to {batch.hi}, past its gate {gate}")
            if batch.lo != expected:
                raise AssertionError(f"{consumer}: batch starts at {batch.lo}, expected {expected}")
            for start, view in batch.segments():
                seqs = view["order_id"].astype(np.int64)
                if not np.array_equal(seqs, np.arange(start, start + len(view), dtype=np.int64)):
                    raise AssertionError(f"{consumer}: sequences out of order in {start}..{start + len(view) - 1}")
                if not np.array_equal(view["price"], mix(seqs)):
                    raise AssertionError(f"{consumer}: payload overwritten in {start}..{start + len(view) - 1}")
                checksum += int(seqs.sum())
            expected = batch.hi + 1
            if pause:
                time.sleep(pause)
            me.commit(batch.hi)
            batches += 1
        return {"first": first, "last": expected - 1, "checksum": checksum, "batches": batches}

    _report(queue, consumer, body)


def publish_later(queue, name: str, delay: float, count: int, ready=None) -> None:
    """Attach, set ``ready`` (an Event, if given), sleep ``delay`` s, then publish
    ``count`` records in one batch."""

    def body():
        ring = Ring.attach(name, COMMAND)
        producer = ring.producer()
        if ready is not None:
            ready.set()
        time.sleep(delay)
        return producer.write(make_records(COMMAND, count))

    _report(queue, "publisher", body)


def ring_when_all_sleep(queue, names: list[str], consumer: str, target: int) -> None:
    """Wait until ``consumer`` announces its sleep on every ring of ``names``, then
    publish one record on ``names[target]`` only: the doorbell test's other process."""

    def body():
        rings = [Ring.attach(name, COMMAND) for name in names]
        try:
            index = rings[0].consumer_index(consumer)
            alive = _watch_parent()
            while not all(ring.statistics().consumers[index].sleeping for ring in rings):
                alive()
                time.sleep(0.001)
            rings[target].producer().write(make_records(COMMAND))
            return target
        finally:
            for ring in rings:
                ring.close()

    _report(queue, f"ring {target}", body)
