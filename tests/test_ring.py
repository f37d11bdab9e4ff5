"""The shared-memory ring: real POSIX shared memory and semaphores, real processes.

In-process tests pin down the rules (wrapping, gating, never overwriting, errors);
the multi-process tests run a producer and consumers as spawned processes
(``tests/ring_procs.py``) and check every record they see.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import time

import numpy as np
import posix_ipc
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ring_procs

from ringex.records import COMMAND, EVENT, make_records
from ringex.ring import (
    MAX_CONSUMERS,
    Batch,
    PipeDoorbell,
    Ring,
    RingCapacityError,
    RingClosedError,
    RingConfigError,
    RingError,
    RingExistsError,
    RingMismatchError,
    RingNotFoundError,
    RingOwnerAliveError,
    RingTimeout,
    UnknownConsumerError,
)
from ringex.wait import BlockingWait, BusySpinWait, Doorbell, PipeSemaphore, YieldingWait, post_all, wait_strategy

SPAWN = multiprocessing.get_context("spawn")
QUICK = os.environ.get("RINGEX_QUICK") == "1"
RESULT_TIMEOUT = 120


@pytest.fixture
def ring_name():
    name = f"rx-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    Ring.remove(name)


@pytest.fixture
def procs():
    """Start spawned processes; any still running at the end are killed."""
    started: list[multiprocessing.Process] = []

    def start(target, *args, **kwargs):
        proc = SPAWN.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


@pytest.fixture
def results():
    queue = SPAWN.Queue()
    yield queue
    queue.close()


def collect(queue, count: int) -> dict[str, dict]:
    """``count`` reports from child processes, by who sent them; a child's error fails here."""
    got = {}
    for _ in range(count):
        status, who, body = queue.get(timeout=RESULT_TIMEOUT)
        if status != "ok":
            pytest.fail(f"{who} failed:\n{body}")
        got[who] = body
    return got


def wait_until(predicate, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def records(seqs) -> np.ndarray:
    """``COMMAND`` records as ``ring_procs`` writes and checks them."""
    seqs = np.asarray(seqs, dtype=np.int64)
    out = np.zeros(len(seqs), COMMAND)
    out["order_id"] = seqs
    out["price"] = ring_procs.mix(seqs)
    return out


#### Layout and the producer's rules, in one process


def test_claims_wrap_into_two_views_in_sequence_order(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        producer.write(records(range(6)))
        consumer.commit(consumer.poll().hi)
        claim = producer.claim(5)
        assert (claim.lo, claim.hi, len(claim.first), len(claim.second)) == (6, 10, 2, 3)
        claim.fill(records(range(6, 11)))
        producer.publish(claim.hi)
        batch = consumer.poll()
        assert (batch.lo, batch.hi, len(batch.views)) == (6, 10, 2)
        assert batch.to_array()["order_id"].tolist() == [6, 7, 8, 9, 10]
        assert [(start, len(view)) for start, view in batch.segments()] == [(6, 2), (8, 3)]
        assert ring.slots["order_id"].tolist() == [8, 9, 10, 3, 4, 5, 6, 7]  # slot = seq & 7
        del claim, batch


def test_fill_converts_other_dtypes_and_checks_the_length(ring_name):
    loose = np.dtype([(name, "S8" if name == "symbol" else "<i8") for name in COMMAND.names])  # 96 bytes
    with Ring.create(ring_name, COMMAND, 4, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        producer.write(records(range(3)))
        consumer.commit(consumer.poll().hi)
        claim = producer.claim(2)  # slots 3 and 0: wraps
        with pytest.raises(ValueError):
            claim.fill(records(range(3)))
        foreign = np.zeros(2, loose)
        foreign["order_id"] = [30, 40]
        foreign["symbol"] = b"ACME"
        claim.fill(foreign)
        assert ring.slots["order_id"][[3, 0]].tolist() == [30, 40]
        assert ring.slots["symbol"][[3, 0]].tolist() == [b"ACME", b"ACME"]
        del claim


def test_cursors_start_at_minus_one_and_name_the_last_sequence(ring_name):
    with Ring.create(ring_name, COMMAND, 4, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        assert (producer.cursor, consumer.cursor) == (-1, -1)
        assert not consumer.poll()
        assert producer.write(records([0, 1, 2])) == 2
        assert consumer.wait_for(0) == 2
        consumer.commit(1)
        assert (ring.producer_cursor, ring.consumer_cursor("c")) == (2, 1)


def test_producer_never_overwrites_a_slot_the_slowest_consumer_has_not_passed(ring_name):
    with Ring.create(ring_name, COMMAND, 4, consumers=["fast", "slow"]) as ring:
        producer, fast, slow = ring.producer(), ring.consumer("fast"), ring.consumer("slow")
        producer.write(records(range(4)))
        fast.commit(fast.poll().hi)
        assert producer.try_claim(1) is None  # "slow" still needs slot of sequence 0
        slow.commit(slow.poll(max_n=1).hi)
        claim = producer.try_claim(1)
        assert claim is not None and claim.lo == 4
        assert producer.try_claim(1) is None
        with pytest.raises(RingTimeout):
            producer.claim(1, timeout=0.05)
        del claim


def test_producer_rescans_consumers_only_when_the_wrap_point_passes_its_cache(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        producer.write(records(range(8)))
        consumer.poll()
        consumer.commit(7)
        assert producer.try_claim(4) is not None  # rescans: the cache said -1
        ring.header["consumers"]["cursor"][0] = -1  # hide the consumer's progress
        assert producer.try_claim(4) is not None  # wrap point 3 <= cached 7: no rescan
        assert producer.try_claim(1) is None  # wrap point 8 > cached 7: rescans, sees -1


def test_gated_consumer_never_sees_past_its_gate(ring_name):
    gating = {"notifier": ["journaler"], "audit": ["journaler", "matcher"]}
    with Ring.create(
        ring_name, COMMAND, 16, consumers=["journaler", "matcher", "notifier", "audit"], gating=gating
    ) as ring:
        producer = ring.producer()
        journaler, matcher = ring.consumer("journaler"), ring.consumer("matcher")
        notifier, audit = ring.consumer("notifier"), ring.consumer("audit")
        producer.write(records(range(10)))
        assert not notifier.poll() and not audit.poll()
        assert notifier.wait_for(0, timeout=0.05) == -1
        journaler.poll()
        journaler.commit(3)
        assert notifier.poll().hi == 3
        assert not audit.poll()  # still waits for the matcher too
        matcher.poll()
        matcher.commit(8)
        assert audit.poll().hi == 3
        journaler.commit(9)
        assert audit.poll().hi == 8 and notifier.poll().hi == 9
        with pytest.raises(ValueError):
            notifier.commit(10)  # beyond what it was shown


def test_producer_waits_only_for_consumers_at_the_end_of_the_chain(ring_name):
    with Ring.create(
        ring_name, COMMAND, 4, consumers=["journaler", "notifier"], gating={"notifier": ["journaler"]}
    ) as ring:
        producer, journaler, notifier = ring.producer(), ring.consumer("journaler"), ring.consumer("notifier")
        producer.write(records(range(4)))
        journaler.commit(journaler.poll().hi)
        assert producer.try_claim(1) is None  # the notifier, behind the journaler, holds slot 0
        notifier.commit(notifier.poll().hi)
        assert producer.try_claim(4) is not None


def test_consumer_of_the_same_name_resumes_after_its_last_commit(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        ring.producer().write(records(range(6)))
        first = ring.consumer("c")
        first.poll()
        first.commit(2)
        second = ring.consumer("c")
        assert second.cursor == 2
        assert second.poll().lo == 3


def test_producer_of_a_reattached_ring_continues_the_sequence(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        ring.producer().write(records(range(3)))
        with Ring.attach(ring_name, COMMAND) as again:
            assert again.producer().claim(1).lo == 3


def test_statistics_report_cursors_lag_and_owner(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["j", "n"], gating={"n": ["j"]}) as ring:
        ring.producer().write(records(range(5)))
        j = ring.consumer("j")
        j.poll()
        j.commit(1)
        stats = ring.statistics()
        assert (stats.capacity, stats.producer_cursor, stats.creator_pid, stats.creator_alive) == (
            8,
            4,
            os.getpid(),
            True,
        )
        assert [(c.name, c.cursor, c.lag, c.gated_on) for c in stats.consumers] == [
            ("j", 1, 3, ()),
            ("n", -1, 5, ("j",)),
        ]
        with pytest.raises(AttributeError):
            stats.producer_cursor = 0  # immutable record


def test_readonly_attach_reads_statistics_and_registers_nothing(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        ring.producer().write(records(range(3)))
        with Ring.attach(ring_name, readonly=True) as view:
            assert view.statistics().producer_cursor == 2
            assert view.statistics().consumers[0].pid == 0  # nobody attached as "c"
            assert view.slots.dtype.itemsize == COMMAND.itemsize and not view.slots.flags.writeable
            with pytest.raises(RingError):
                view.consumer("c")
            with pytest.raises(RingError):
                view.producer()


def test_a_batch_outlives_its_closed_ring_and_the_closed_parts_refuse_work(ring_name):
    ring = Ring.create(ring_name, COMMAND, 8, consumers=["c"])
    producer, consumer = ring.producer(), ring.consumer("c")
    producer.write(records(range(3)))
    batch = consumer.poll()
    ring.close()
    assert batch.to_array()["order_id"].tolist() == [0, 1, 2]  # still mapped, not a crash
    with pytest.raises(RingClosedError):
        producer.claim(1)
    with pytest.raises(ValueError):  # its cursor's view is released
        consumer.poll()


def test_names_lists_rings_by_prefix_and_nothing_else(ring_name):
    with Ring.create(ring_name + ".in", COMMAND, 4, consumers=["c"]), Ring.create(ring_name + ".out", EVENT, 4):
        not_a_ring = posix_ipc.SharedMemory(f"/{ring_name}.junk", posix_ipc.O_CREX, size=4096)
        try:
            assert Ring.names(ring_name) == [ring_name + ".in", ring_name + ".out"]
        finally:
            not_a_ring.close_fd()
            not_a_ring.unlink()
            Ring.remove(ring_name + ".in")
            Ring.remove(ring_name + ".out")
    assert Ring.names(ring_name) == []


def test_remove_stale_keeps_a_ring_whose_owner_lives(ring_name):
    assert not Ring.exists(ring_name)
    with Ring.create(ring_name, COMMAND, 4):
        assert Ring.exists(ring_name)
        assert not Ring.remove_stale(ring_name)
        assert Ring.exists(ring_name)
    assert Ring.remove(ring_name) and not Ring.exists(ring_name)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["produce", "journaler", "matcher", "notifier"]), st.integers(1, 9)), max_size=80
    )
)
def test_any_interleaving_keeps_order_and_never_overwrites_unread_slots(ops):
    """A model check: random claims, polls and partial commits on a ring of 8 where the
    notifier is gated on the journaler. Every consumer reads each sequence once, in
    order, with its own payload; the producer never runs a lap ahead of a leaf."""
    name = f"rx-test-{os.getpid()}-{secrets.token_hex(4)}"
    gating = {"notifier": ["journaler"]}
    try:
        with Ring.create(name, COMMAND, 8, consumers=["journaler", "matcher", "notifier"], gating=gating) as ring:
            producer = ring.producer()
            consumers = {c: ring.consumer(c) for c in ring.consumer_names}
            claim = batch = None
            for who, k in ops:
                if who == "produce":
                    slowest = min(ring.consumer_cursor("matcher"), ring.consumer_cursor("notifier"))
                    full = producer.claimed + k - slowest > 8
                    claim = producer.try_claim(k) if k <= 8 else None
                    assert (claim is None) == full
                    if claim is not None:
                        claim.fill(records(range(claim.lo, claim.hi + 1)))
                        producer.publish(claim.hi)
                    continue
                consumer = consumers[who]
                batch = consumer.poll(max_n=k)
                limit = ring.consumer_cursor("journaler") if who == "notifier" else ring.producer_cursor
                assert batch.lo == consumer.cursor + 1 and batch.hi <= limit
                if batch:
                    data = batch.to_array()
                    assert data["order_id"].tolist() == list(range(batch.lo, batch.hi + 1))
                    assert np.array_equal(data["price"], ring_procs.mix(data["order_id"].astype(np.int64)))
                    consumer.commit(batch.lo + (len(batch) - 1) * k // 9)  # sometimes only part
            assert producer.claimed - min(ring.consumer_cursor("matcher"), ring.consumer_cursor("notifier")) <= 8
            del claim, batch
    finally:
        Ring.remove(name)


#### Error paths


def test_attaching_a_missing_ring_is_not_found(ring_name):
    with pytest.raises(RingNotFoundError):
        Ring.attach(ring_name, COMMAND)
    with pytest.raises(FileNotFoundError):  # also the builtin it refines
        Ring.attach(ring_name, readonly=True)


@pytest.mark.parametrize("capacity", [0, 1, 3, 1000, -8, 2.0, True])
def test_capacity_must_be_a_power_of_two(ring_name, capacity):
    with pytest.raises(RingCapacityError):
        Ring.create(ring_name, COMMAND, capacity)
    assert not Ring.exists(ring_name)


def test_attaching_with_another_dtype_is_a_mismatch(ring_name):
    same_size = np.dtype([("a", "<u8")] * 1 + [(f"f{i}", "<u8") for i in range(7)])
    with Ring.create(ring_name, COMMAND, 4):
        for other in (EVENT, same_size):
            with pytest.raises(RingMismatchError, match="dtype"):
                Ring.attach(ring_name, other)


def test_attaching_another_layout_version_or_garbage_is_a_mismatch(ring_name):
    with Ring.create(ring_name, COMMAND, 4) as ring:
        ring.header["version"] = 99
        with pytest.raises(RingMismatchError, match="version 99"):
            Ring.attach(ring_name, COMMAND)
        ring.header["magic"] = 0
        with pytest.raises(RingMismatchError, match="magic"):
            Ring.attach(ring_name, COMMAND)


def test_attaching_a_ring_whose_semaphore_was_removed_is_a_mismatch(ring_name):
    with Ring.create(ring_name, COMMAND, 4, consumers=["c"]):
        posix_ipc.unlink_semaphore(f"/{ring_name}.w0")
        with pytest.raises(RingMismatchError, match="semaphore"):
            Ring.attach(ring_name, COMMAND)
        with Ring.attach(ring_name, readonly=True) as view:  # status still works
            assert view.statistics().consumers[0].name == "c"


def test_unknown_consumer_names_are_errors(ring_name):
    with Ring.create(ring_name, COMMAND, 4, consumers=["journaler"]) as ring:
        with pytest.raises(UnknownConsumerError, match="nobody"):
            ring.consumer("nobody")
        with pytest.raises(UnknownConsumerError):
            ring.consumer_cursor("nobody")
    with pytest.raises(UnknownConsumerError, match="ghost"):
        Ring.create(ring_name + "x", COMMAND, 4, consumers=["a"], gating={"a": ["ghost"]})


@pytest.mark.parametrize(
    "consumers, gating",
    [
        (["a", "b"], {"a": ["b"], "b": ["a"]}),
        (["a"], {"a": ["a"]}),
        (["a", "a"], {}),
        ([f"c{i}" for i in range(MAX_CONSUMERS + 1)], {}),
        (["x" * 25], {}),
        ([""], {}),
    ],
)
def test_bad_consumer_lists_are_refused(ring_name, consumers, gating):
    with pytest.raises(RingConfigError):
        Ring.create(ring_name, COMMAND, 4, consumers=consumers, gating=gating)
    assert not Ring.exists(ring_name)


def test_creating_over_an_existing_ring_needs_a_dead_owner(ring_name):
    with Ring.create(ring_name, COMMAND, 4):
        with pytest.raises(RingExistsError):
            Ring.create(ring_name, COMMAND, 4)
        with pytest.raises(RingOwnerAliveError, match=str(os.getpid())):
            Ring.create(ring_name, COMMAND, 4, replace_stale=True)


def test_misuse_of_claim_publish_and_commit_is_refused(ring_name):
    with Ring.create(ring_name, COMMAND, 4, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        with pytest.raises(ValueError):
            producer.claim(5)
        with pytest.raises(ValueError):
            producer.publish(0)  # nothing claimed
        producer.publish(producer.claim(2).hi)
        with pytest.raises(ValueError):
            consumer.commit(0)  # not yet seen
        with pytest.raises(ValueError):
            wait_strategy("sleepy")


def test_attaching_to_write_needs_the_dtype(ring_name):
    with Ring.create(ring_name, COMMAND, 4):
        with pytest.raises(RingConfigError):
            Ring.attach(ring_name)


def test_bad_ring_names_are_refused():
    for name in ("", "/", "a/b", "x" * 300):
        with pytest.raises(RingConfigError):
            Ring.create(name, COMMAND, 4)


#### Processes


@pytest.mark.slow
def test_one_producer_three_consumers_see_every_record_once_in_order(ring_name, procs, results):
    """1P -> 3C through 1,024 slots: journaler and matcher read the producer's cursor,
    the notifier is gated on the journaler. 10 M records (1 M with RINGEX_QUICK=1)."""
    total = 1_000_000 if QUICK else 10_000_000
    consumers = ["journaler", "matcher", "notifier"]
    ring = Ring.create(ring_name, COMMAND, 1024, consumers=consumers, gating={"notifier": ["journaler"]})
    try:
        for name, gate in (("journaler", None), ("matcher", None), ("notifier", "journaler")):
            procs(ring_procs.consume, results, ring_name, name, total - 1, "blocking", gate)
        procs(ring_procs.produce, results, ring_name, total, 256)
        got = collect(results, 4)
        expected_sum = total * (total - 1) // 2
        for name in consumers:
            assert (got[name]["first"], got[name]["last"], got[name]["checksum"]) == (0, total - 1, expected_sum)
            assert got[name]["batches"] < total // 16  # read in batches, not one by one
        assert got["producer"]["hi"] == total - 1
        stats = ring.statistics()
        assert stats.producer_cursor == total - 1 and {c.cursor for c in stats.consumers} == {total - 1}
    finally:
        ring.close()


def test_slow_consumer_stalls_the_producer_instead_of_losing_data(ring_name, procs, results):
    capacity, total = 64, 2_000
    ring = Ring.create(ring_name, COMMAND, capacity, consumers=["fast", "slow"])
    try:
        procs(ring_procs.consume, results, ring_name, "fast", total - 1)
        procs(ring_procs.consume, results, ring_name, "slow", total - 1, "blocking", None, 0.002)
        procs(ring_procs.produce, results, ring_name, total, 16, "blocking", None, "slow")
        deadline = time.monotonic() + RESULT_TIMEOUT
        max_lag = 0
        while ring.consumer_cursor("slow") < total - 1 and time.monotonic() < deadline:
            max_lag = max(max_lag, ring.producer_cursor - ring.consumer_cursor("slow"))
            time.sleep(0.001)
        got = collect(results, 3)
        assert got["slow"]["last"] == got["fast"]["last"] == total - 1
        # When the producer finished, the slow consumer was at most one ring behind.
        assert got["producer"]["watched_cursor"] >= total - 1 - capacity
        assert 0 < max_lag <= capacity
    finally:
        ring.close()


def test_consumer_killed_mid_stream_stalls_producer_and_a_restart_resumes(ring_name, procs, results):
    capacity, total = 256, 200_000 if not QUICK else 60_000
    ring = Ring.create(ring_name, COMMAND, capacity, consumers=["steady", "victim"])
    try:
        procs(ring_procs.consume, results, ring_name, "steady", total - 1)
        victim = procs(ring_procs.consume, results, ring_name, "victim", None)
        procs(ring_procs.produce, results, ring_name, total, 32)
        wait_until(lambda: ring.consumer_cursor("victim") > total // 10, what="victim to get going")
        victim.kill()  # SIGKILL: no clean-up of any kind
        victim.join(10)
        at_death = ring.consumer_cursor("victim")
        # The producer fills the ring up to the dead consumer (less than one 32-record
        # claim short of a full lap) and stops there.
        full = at_death + capacity
        wait_until(lambda: ring.producer_cursor > full - 32, what="producer to fill the ring")
        stalled_at = ring.producer_cursor
        time.sleep(0.2)
        assert ring.producer_cursor == stalled_at <= full
        procs(ring_procs.consume, results, ring_name, "victim", total - 1)
        got = collect(results, 3)
        assert got["victim"]["first"] == at_death + 1 and got["victim"]["last"] == total - 1
        assert got["steady"]["checksum"] == total * (total - 1) // 2
        assert got["producer"]["hi"] == total - 1
    finally:
        ring.close()


def test_producer_and_consumer_killed_leave_a_stale_ring_that_can_be_replaced(ring_name, procs, results):
    """A crash of the whole pipeline: the producer (which created the ring) and a
    consumer die by SIGKILL mid-stream; the ring is re-created over the stale one and
    a fresh pipeline runs on it."""
    create = {"capacity": 128, "consumers": ["c"]}
    producer = procs(ring_procs.produce, results, ring_name, None, 16, "blocking", create)
    wait_until(lambda: Ring.exists(ring_name), what="the producer to create the ring")
    consumer = procs(ring_procs.consume, results, ring_name, "c", None)
    with Ring.attach(ring_name, COMMAND, readonly=True) as old:
        wait_until(lambda: old.consumer_cursor("c") > 2_000, what="records to flow")
        assert old.statistics().creator_pid == producer.pid
        consumer.kill()
        consumer.join(10)
        wait_until(lambda: old.producer_cursor == old.consumer_cursor("c") + 128, what="the producer to stall")
        producer.kill()  # asleep in claim, its sleeping flag set
        producer.join(10)
        assert not old.statistics().creator_alive
    with pytest.raises(RingExistsError):
        Ring.create(ring_name, COMMAND, 128, consumers=["c"])
    ring = Ring.create(ring_name, COMMAND, 128, consumers=["c"], replace_stale=True)
    try:
        stats = ring.statistics()
        assert (stats.producer_cursor, stats.consumers[0].cursor, stats.creator_pid) == (-1, -1, os.getpid())
        total = 20_000
        procs(ring_procs.consume, results, ring_name, "c", total - 1)
        procs(ring_procs.produce, results, ring_name, total, 64)
        got = collect(results, 2)
        assert got["c"]["first"] == 0 and got["c"]["checksum"] == total * (total - 1) // 2
    finally:
        ring.close()


def test_remove_stale_cleans_up_after_a_killed_creator(ring_name, procs, results):
    producer = procs(ring_procs.produce, results, ring_name, None, 16, "blocking", {"capacity": 16, "consumers": ["c"]})
    wait_until(lambda: Ring.exists(ring_name), what="the producer to create the ring")
    producer.kill()
    producer.join(10)
    assert Ring.remove_stale(ring_name)
    assert not Ring.exists(ring_name)
    assert not [f for f in os.listdir("/dev/shm") if ring_name in f]  # semaphores gone too


@pytest.mark.parametrize(
    "wait, total",
    [("blocking", 50_000), ("yielding", 50_000), ("busy_spin", 5_000)],
)
def test_each_wait_strategy_carries_a_stream_between_processes(ring_name, procs, results, wait, total):
    with Ring.create(ring_name, COMMAND, 64, consumers=["c"]):
        start = SPAWN.Barrier(2)  # so a spinning consumer does not spin while the producer starts
        procs(ring_procs.consume, results, ring_name, "c", total - 1, wait, barrier=start)
        procs(ring_procs.produce, results, ring_name, total, 8, wait, barrier=start)
        got = collect(results, 2)
        assert got["c"]["checksum"] == total * (total - 1) // 2


@pytest.mark.parametrize("wait", [BlockingWait(max_sleep=60.0), YieldingWait(), BusySpinWait()])
def test_waiting_consumer_is_woken_by_another_process_publishing(ring_name, procs, results, wait):
    """A sleep of up to 60 s: if the publish's wake-up were lost, this would time out.
    The spinning strategies spin only for the publisher's 0.1 s delay."""
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        consumer = ring.consumer("c", wait)
        ready = SPAWN.Event()
        procs(ring_procs.publish_later, results, ring_name, 0.1, 3, ready)
        assert ready.wait(60)
        assert consumer.wait_for(0, timeout=30.0) == 2
        collect(results, 1)


def test_blocked_producer_is_woken_by_a_consumer_commit_in_another_process(ring_name, procs, results):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        producer = ring.producer(BlockingWait(max_sleep=60.0))
        producer.write(records(range(8)))
        procs(ring_procs.consume, results, ring_name, "c", 7, "blocking", None, 0.2)
        assert producer.claim(4, timeout=30.0).lo == 8
        collect(results, 1)


def test_producer_waiting_for_a_consumer_is_woken_by_its_commit(ring_name, procs, results):
    """The gateway's question "has the journaler got it?", asked of a consumer that is
    not at the end of the chain (the notifier is gated on it)."""
    with Ring.create(
        ring_name, COMMAND, 8, consumers=["journaler", "notifier"], gating={"notifier": ["journaler"]}
    ) as ring:
        producer = ring.producer(BlockingWait(max_sleep=60.0))
        producer.write(records(range(3)))
        assert producer.wait_for_consumer("journaler", 2, timeout=0.05) == -1
        procs(ring_procs.consume, results, ring_name, "journaler", 2, "blocking", None, 0.2)
        assert producer.wait_for_consumer("journaler", 2, timeout=30.0) == 2
        collect(results, 1)
        with pytest.raises(UnknownConsumerError):
            producer.wait_for_consumer("nobody", 0)


def test_idle_blocking_consumer_uses_almost_no_cpu(ring_name):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        consumer = ring.consumer("c", BlockingWait())
        cpu = time.process_time()
        assert consumer.wait_for(0, timeout=0.5) == -1
        assert time.process_time() - cpu < 0.1


async def test_event_loop_waits_in_a_worker_thread_without_blocking(ring_name, procs, results):
    with Ring.create(ring_name, COMMAND, 8, consumers=["c"]) as ring:
        consumer = ring.consumer("c")
        procs(ring_procs.publish_later, results, ring_name, 0.3, 2)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            available = await trio.to_thread.run_sync(consumer.wait_for, 0, 30.0, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
        assert available == 1 and isinstance(consumer.poll(), Batch) and len(consumer.poll()) == 2
        assert ticks > 5  # the loop ran while the thread slept
        collect(results, 1)


#### Doorbells: one sleep over several rings


def _ring_group(make_bell, create):
    """Three rings sharing one doorbell, ``create(bell)`` giving the ``Ring.create``
    arguments; yields (names, rings, bell) and removes them all afterwards."""
    stem = f"rx-test-{os.getpid()}-{secrets.token_hex(4)}"
    names = [f"{stem}-{i}" for i in range(3)]
    bell = make_bell(f"{stem}.bell")
    rings = [Ring.create(n, COMMAND, 16, **create(bell)) for n in names]
    yield names, rings, bell
    for ring in rings:
        ring.close()
    for n in names:
        Ring.remove(n)
    Ring.remove_doorbell(bell)


@pytest.fixture
def bell_group():
    """Three rings whose consumer "c" sleeps on one doorbell."""
    yield from _ring_group(str, create=lambda bell: {"consumers": ["c", "d"], "doorbells": {"c": bell}})


@pytest.mark.parametrize("target", [0, 2])
def test_a_doorbell_wakes_its_waiter_for_a_publish_on_any_of_its_rings(bell_group, procs, results, target):
    names, rings, _ = bell_group
    consumers = [ring.consumer("c") for ring in rings]
    bell = Doorbell([c.sleeper for c in consumers])
    procs(ring_procs.ring_when_all_sleep, results, names, "c", target)
    # One long sleep: were the post lost, this would time out after a minute with
    # ``rung`` still 0, not pass late.
    woke = bell.wait(lambda: any(c.available() > c.cursor for c in consumers), 60, spin_tries=0, max_sleep=60)
    assert collect(results, 1) == {f"ring {target}": target}
    assert woke and bell.rung == 1
    assert [c.available() for c in consumers] == [0 if i == target else -1 for i in range(3)]
    # every flag is down again: nobody posts for a waiter that is awake
    assert not any(ring.statistics().consumers[0].sleeping for ring in rings)


def test_a_doorbell_times_out_when_no_ring_moves(bell_group):
    _, rings, _ = bell_group
    consumers = [ring.consumer("c") for ring in rings]
    bell = Doorbell([c.sleeper for c in consumers])
    assert not bell.wait(lambda: any(c.available() > c.cursor for c in consumers), 0.02, spin_tries=0)
    assert bell.sleeps >= 1


def test_a_doorbell_refuses_waiters_on_separate_semaphores(bell_group):
    _, rings, _ = bell_group
    with pytest.raises(ValueError, match="different semaphores"):
        Doorbell([rings[0].consumer("c").sleeper, rings[1].consumer("d").sleeper])
    with pytest.raises(ValueError):
        Doorbell([])


def test_a_doorbell_for_an_unknown_consumer_is_refused(ring_name):
    with pytest.raises(UnknownConsumerError):
        Ring.create(ring_name, COMMAND, 8, consumers=["c"], doorbells={"x": "some.bell"})


def test_removing_a_ring_leaves_its_doorbell_to_the_other_rings(bell_group):
    names, rings, bell = bell_group
    Ring.remove(names[0])
    again = Ring.attach(names[1], COMMAND)  # opens the doorbell by name: still there
    again.close()
    assert Ring.remove_doorbell(bell)
    with pytest.raises(RingMismatchError, match="semaphore is missing"):
        Ring.attach(names[2], COMMAND)


@pytest.fixture
def pipe_bell_group():
    """Three rings whose producer's doorbell is a FIFO (an event loop's)."""
    yield from _ring_group(PipeDoorbell, create=lambda bell: {"consumers": ["c"], "producer_doorbell": bell})


def test_an_event_loop_polls_a_pipe_doorbell_and_a_commit_on_any_ring_wakes_it(pipe_bell_group):
    import select

    names, rings, _ = pipe_bell_group
    producers = [ring.producer() for ring in rings]
    bell = Doorbell([p.sleeper for p in producers])
    assert isinstance(bell.semaphore, PipeSemaphore)
    for p in producers:
        p.write(make_records(COMMAND))
    poller = select.poll()
    poller.register(bell.semaphore.fileno(), select.POLLIN)

    # Announced: a commit in another process posts the FIFO, and the poll sees it.
    bell.announce()
    committer = Ring.attach(names[1], COMMAND)
    try:
        consumer = committer.consumer("c")
        consumer.wait_for(0, timeout=5)
        consumer.commit(0)
        assert poller.poll(60_000), "the commit did not ring the doorbell"
    finally:
        committer.close()
    bell.withdraw()
    assert bell.semaphore.drain() and not bell.semaphore.drain()

    # Withdrawn: commits cost no post, so the loop is not woken for nothing.
    other = rings[2].consumer("c")
    other.wait_for(0, timeout=5)
    other.commit(0)
    assert poller.poll(0) == []


@pytest.fixture
def watched_pipe_bell_group():
    """Three rings with consumers "up" and "down" (gated on "up"), whose producer's
    doorbell is a FIFO: the gateway's in-rings, with "up" the journaler."""
    yield from _ring_group(
        PipeDoorbell,
        create=lambda bell: {"consumers": ["up", "down"], "gating": {"down": ["up"]}, "producer_doorbell": bell},
    )


def test_a_producer_watching_one_consumer_is_woken_by_its_commits_only(watched_pipe_bell_group):
    """The gateway sleeps for the journaler's commits; the matcher's commits on the same
    rings must not wake it for nothing."""
    _, rings, _ = watched_pipe_bell_group
    producers = [ring.producer() for ring in rings]
    for p in producers:
        p.watch("up")
        p.write(make_records(COMMAND))
    up, down = rings[0].consumer("up"), rings[0].consumer("down")
    bell = Doorbell([p.sleeper for p in producers])
    bell.announce()
    up.wait_for(0, timeout=5)
    up.commit(0)  # watched: posts
    assert bell.semaphore.drain()
    bell.announce()
    down.wait_for(0, timeout=5)
    down.commit(0)  # not watched: no post, the flag stays up for the one that counts
    assert not bell.semaphore.drain()
    assert rings[0].header["producer_sleeping"] == 1
    bell.withdraw()


def test_a_process_moving_several_rings_posts_each_doorbell_once(watched_pipe_bell_group):
    _, rings, _ = watched_pipe_bell_group
    producers = [ring.producer() for ring in rings]
    for p in producers:
        p.watch("up")
        p.write(make_records(COMMAND))
    consumers = [ring.consumer("up") for ring in rings]
    bell = Doorbell([p.sleeper for p in producers])
    bell.announce()
    posts: dict = {}
    for consumer in consumers:
        consumer.wait_for(0, timeout=5)
        consumer.commit(0, posts)  # collected, not posted yet
    assert len(posts) == 1 and not bell.semaphore.drain()
    post_all(posts)
    assert posts == {}
    assert os.read(bell.semaphore.fileno(), 100) == b"\x01"  # one byte: one post for three rings
    bell.withdraw()


def test_a_pipe_doorbell_acquires_like_a_semaphore(pipe_bell_group):
    _, rings, _ = pipe_bell_group
    sem = rings[0].producer().sleeper.semaphore
    with pytest.raises(posix_ipc.BusyError):
        sem.acquire(0)
    with pytest.raises(posix_ipc.BusyError):
        sem.acquire(0.01)
    sem.release()
    sem.release()
    sem.acquire(0)  # takes both posts: the protocol posts once per announced sleep
    with pytest.raises(posix_ipc.BusyError):
        sem.acquire(0)


def test_names_skips_a_pipe_doorbell_instead_of_blocking_on_it(pipe_bell_group):
    names, _, _ = pipe_bell_group
    # the FIFO lives in /dev/shm beside the rings; opening it for reading would block
    assert Ring.names("ringex-bell.") == []
    assert Ring.names(names[0][:-2]) == sorted(names)


def test_to_array_copies_whole_slots_padding_included(ring_name):
    padded = np.dtype({"names": ["a", "b"], "formats": ["<i8", "<i8"], "offsets": [0, 16], "itemsize": 32})
    with Ring.create(ring_name, padded, 4, consumers=["c"]) as ring:
        producer, consumer = ring.producer(), ring.consumer("c")
        raw = ring.slots.view(np.uint8).reshape(4, 32)
        raw[:] = np.arange(128, dtype=np.uint8).reshape(4, 32)  # padding bytes included
        for _ in range(3):  # the next batch wraps: slots 3, 0, 1
            producer.publish(producer.claim(1).hi)
            consumer.commit(consumer.poll().hi)
        batch = producer.claim(3)
        producer.publish(batch.hi)
        batch = consumer.poll()
        assert len(batch.second) == 2
        copy = batch.to_array()
        assert copy.dtype == padded
        assert copy.view(np.uint8).reshape(3, 32).tolist() == raw[[3, 0, 1]].tolist()
