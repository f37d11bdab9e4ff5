"""The journaler loop over real shared-memory rings and a real LMDB journal.

The rings are the topology's (``ringex.topology``), as the supervisor makes them; the
test plays the other stages through them: it produces commands and events, and moves
the matcher's cursor. The process tests start the journaler as ``ringex up`` does.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import numpy as np
import pytest
from support.stages import Stages

from ringex.codes import EventKind, Op
from ringex.config import SymbolSpec, load_config
from ringex.control import ControlBlock, ExchangeState
from ringex.journal import journaler as journaler_module
from ringex.journal.journaler import EXIT_HALTED, IDLE_WAIT_S, Journaler, JournalerHalted, _Feed
from ringex.records import COMMAND, EVENT, make_records
from ringex.topology import GATEWAY, JOURNALER, MATCHER, Topology
from ringex.wal import Journal

SYMBOLS = ("ACME", "BOLT")


def commands(first_oid: int, n: int, symbol: str) -> np.ndarray:
    return make_records(COMMAND, n, msg_type=Op.NEW, symbol=symbol, order_id=np.arange(first_oid, first_oid + n), qty=1)


def events_for(first_seq: int, n: int, symbol: str) -> np.ndarray:
    return make_records(EVENT, n, kind=EventKind.ACCEPTED, seq=np.arange(first_seq, first_seq + n), symbol=symbol)


class Rings:
    """The topology's rings for ``SYMBOLS`` (256 slots each), by symbol: ``(in, out)``."""

    def __init__(self) -> None:
        config = load_config(
            environ={}, overrides={"symbols": tuple(SymbolSpec(s) for s in SYMBOLS), "ring_capacity": 256}
        )
        self.topology = Topology.for_config(config, prefix=f"rxj{os.getpid()}{uuid.uuid4().hex[:6]}")
        made = self.topology.create()
        self.by_symbol = {s: (made[2 * i], made[2 * i + 1]) for i, s in enumerate(SYMBOLS)}

    def __getitem__(self, symbol: str):
        return self.by_symbol[symbol]

    def close(self) -> None:
        for pair in self.by_symbol.values():
            for ring in pair:
                ring.close()
        self.topology.remove()


@pytest.fixture
def rings():
    made = Rings()
    try:
        yield made
    finally:
        made.close()


def test_a_round_journals_both_rings_in_one_group_then_moves_the_cursors(tmp_path, rings):
    acme_in, acme_out = rings["ACME"]
    producer = acme_in.producer()
    producer.write(commands(1, 200, "ACME"))
    rings["BOLT"][0].producer().write(commands(1000, 5, "BOLT"))
    acme_out.producer().write(events_for(0, 40, "ACME"))
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, rings.topology)
        try:
            assert acme_in.consumer_cursor(JOURNALER) == -1
            assert journaler.round() == 200 + 5 + 40
            assert acme_in.consumer_cursor(JOURNALER) == 199
            assert rings["BOLT"][0].consumer_cursor(JOURNALER) == 4
            assert acme_out.consumer_cursor(JOURNALER) == 39
            assert journaler.round() == 0
            matcher = acme_in.consumer(MATCHER)
            matcher.commit(matcher.wait_for(0, 0))
            producer.write(commands(201, 100, "ACME"))  # wraps past the end of the 256 slots
            assert journaler.round() == 100
            assert journal.next_seq("ACME") == 300 and journal.next_seq("BOLT") == 5
            assert journal.next_event_seq("ACME") == 40
            assert journal.max_order_id() == 1004
            got = np.concatenate([c for _, c in journal.read_commands("ACME")])
            assert got["order_id"].tolist() == list(range(1, 301))
        finally:
            journaler.close()


def test_the_matcher_only_sees_commands_the_journaler_made_durable(tmp_path, rings):
    acme_in, _ = rings["ACME"]
    matcher = acme_in.consumer(MATCHER)
    acme_in.producer().write(commands(1, 3, "ACME"))
    assert not matcher.poll()
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, rings.topology)
        try:
            journaler.round()
        finally:
            journaler.close()
    assert len(matcher.poll()) == 3


def test_events_ride_with_the_next_commands_or_wait_their_delay(tmp_path, rings, monkeypatch):
    """Events are journaled off the critical path: with the next commands' commit, or
    alone once they have waited ``event_delay_s``; never a commit of their own at once."""
    acme_in, acme_out = rings["ACME"]
    now = [100.0]
    monkeypatch.setattr(journaler_module.time, "monotonic", lambda: now[0])
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, rings.topology, event_delay_s=0.005)
        try:
            acme_in.producer().write(commands(1, 2, "ACME"))
            assert journaler.round() == 2  # the commands at once
            acme_out.producer().write(events_for(0, 2, "ACME"))
            assert journaler.round() == 0  # their events wait...
            assert journaler._sleep_for() == pytest.approx(0.005)
            acme_in.producer().write(commands(3, 1, "ACME"))
            assert journaler.round() == 3  # ...for the next commands, and share their commit
            assert journal.next_event_seq("ACME") == 2
            acme_out.producer().write(events_for(2, 1, "ACME"))
            assert journaler.round() == 0
            now[0] += 0.004
            assert journaler.round() == 0
            now[0] += 0.001
            assert journaler.round() == 1  # or alone, once they have waited their delay
            assert journal.next_event_seq("ACME") == 3 and acme_out.consumer_cursor(JOURNALER) == 2
            assert journaler._sleep_for() == IDLE_WAIT_S  # nothing waits: sleep until woken
        finally:
            journaler.close()


def test_a_half_full_out_ring_is_journaled_at_once(tmp_path, rings):
    _, acme_out = rings["ACME"]
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, rings.topology, event_delay_s=3600)
        try:
            acme_out.producer().write(events_for(0, 127, "ACME"))
            assert journaler.round() == 0
            acme_out.producer().write(events_for(127, 1, "ACME"))  # 128 of 256 slots
            assert journaler.round() == 128
        finally:
            journaler.close()


def test_a_restart_skips_what_was_committed_but_not_marked(tmp_path, rings, monkeypatch):
    acme_in, acme_out = rings["ACME"]
    producer = acme_in.producer()
    producer.write(commands(1, 10, "ACME"))
    acme_out.producer().write(events_for(0, 4, "ACME"))
    with Journal(tmp_path) as journal:
        # Crash point: the LMDB commit happened, the cursor stores did not.
        with monkeypatch.context() as patch:
            patch.setattr(_Feed, "commit", lambda self, posts: None)
            first = Journaler(journal, rings.topology)
            first.round()
            first.close()
        assert acme_in.consumer_cursor(JOURNALER) == -1
        assert journal.next_seq("ACME") == 10
        producer.write(commands(11, 5, "ACME"))
        second = Journaler(journal, rings.topology)
        try:
            assert acme_in.consumer_cursor(JOURNALER) == 9  # skipped, not journaled twice
            assert acme_out.consumer_cursor(JOURNALER) == 3
            assert second.round() == 5
        finally:
            second.close()
        got = np.concatenate([c for _, c in journal.read_commands("ACME")])
        assert got["order_id"].tolist() == list(range(1, 16))


def test_new_rings_continue_the_journal_sequence(tmp_path, rings):
    with Journal(tmp_path) as journal:
        journal.commit([("ACME", 0, commands(1, 7, "ACME"))], [("ACME", 0, events_for(0, 9, "ACME"))])
        acme_in, acme_out = rings["ACME"]
        acme_in.producer().write(commands(8, 2, "ACME"))
        acme_out.producer().write(events_for(7, 2, "ACME"))
        journaler = Journaler(journal, rings.topology)
        try:
            journaler.round()
        finally:
            journaler.close()
        assert journal.ring_base("cmd", "ACME") == (int(acme_in.header["created_ns"]), 7)
        assert journal.next_seq("ACME") == 9
        assert journal.next_event_seq("ACME") == 11


def test_a_failed_commit_halts_the_exchange_and_keeps_cursors_at_the_durable_end(tmp_path, rings):
    control = ControlBlock.create(f"/rxj{os.getpid()}{uuid.uuid4().hex[:6]}-control")
    try:
        control.set_state(ExchangeState.READY)
        acme_in, _ = rings["ACME"]
        producer = acme_in.producer()
        matcher = acme_in.consumer(MATCHER)
        with Journal(tmp_path, map_size=256 << 10, max_map_size=512 << 10) as journal:
            journaler = Journaler(journal, rings.topology, control)
            try:
                oid = 1
                with pytest.raises(JournalerHalted):
                    while True:
                        producer.write(commands(oid, 200, "ACME"), timeout=5)
                        oid += 200
                        journaler.round()
                        matcher.commit(matcher.wait_for(0, 0))  # it may read what is durable
                durable_end = journal.next_seq("ACME")
                assert acme_in.consumer_cursor(JOURNALER) == durable_end - 1
                assert acme_in.producer_cursor > durable_end - 1
            finally:
                journaler.close()
        assert control.state == ExchangeState.HALTED
        assert not control.accepting
        assert "journal write failed" in control.reason
        with Journal(tmp_path, readonly=True) as journal:
            got = np.concatenate([c for _, c in journal.read_commands("ACME")])
            assert got["order_id"].tolist() == list(range(1, durable_end + 1))
    finally:
        control.unlink()
        control.close()


@pytest.fixture
def small_disk(tmp_path):
    """``tmp_path / "data"`` whose journal directory is a real 1 MiB filesystem (needs
    root for the mount; skipped without)."""
    data = tmp_path / "data"
    disk = data / "journal"
    disk.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (the map-cap test covers the halt path)")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_the_journaler_process_halts_on_a_full_disk(small_disk):
    """A real full filesystem under a real journaler process."""
    with Stages(small_disk, ring_capacity=256) as stages:
        stages.start(JOURNALER)
        in_ring = stages.in_ring("ACME")
        producer = in_ring.producer()
        matcher = in_ring.consumer(MATCHER)
        oid = 1
        deadline = time.monotonic() + 60
        while stages.alive(JOURNALER) and time.monotonic() < deadline:
            matcher.commit(matcher.wait_for(0, 0))  # what the journaler made durable
            try:
                producer.write(commands(oid, 100, "ACME"), timeout=0.2)
                oid += 100
            except TimeoutError:
                pass  # the ring is full: the journaler stopped consuming
        assert stages.wait_exit(JOURNALER) == EXIT_HALTED
        log = stages.log_tail(100_000)
        assert "CRITICAL" in log and "journal write failed, exchange halted" in log
        assert stages.control.state == ExchangeState.HALTED
        durable = in_ring.consumer_cursor(JOURNALER) + 1
        assert durable > 0
        with Journal(small_disk, readonly=True) as journal:
            assert journal.next_seq("ACME") >= durable
            got = np.concatenate([c for _, c in journal.read_commands("ACME")])
            assert got["order_id"].tolist() == list(range(1, journal.next_seq("ACME") + 1))


def test_the_journaler_process_drains_and_stops_on_sigterm(tmp_path):
    with Stages(tmp_path / "data", ring_capacity=256) as stages:
        stages.start(JOURNALER)
        acme_in, acme_out = stages.in_ring("ACME"), stages.out_ring("ACME")
        acme_in.producer().write(commands(1, 50, "ACME"))
        acme_out.producer().write(events_for(0, 60, "ACME"))
        deadline = time.monotonic() + 30
        while acme_out.consumer_cursor(JOURNALER) < 59 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acme_in.consumer_cursor(JOURNALER) == 49
        assert stages.stop(JOURNALER) == 0
    with Journal(tmp_path / "data", readonly=True) as journal:
        assert journal.next_seq("ACME") == 50 and journal.next_event_seq("ACME") == 60


GATEWAY_CONFIG = """
[symbols.ACME]
price_min = 1
price_max = 1000
"""


def test_a_full_disk_turns_new_orders_into_not_ready_and_loses_no_acked_order(small_disk):
    """The whole exchange on a real full filesystem: every K'd order is in the journal,
    and once the journaler halts the gateway answers NOT_READY."""
    from ringex.order_entry.client import OrderClient

    with Stages(small_disk, GATEWAY_CONFIG, ring_capacity=4096) as stages:
        stages.add_account(7, 77)
        stages.start_all()
        port = stages.config.order_port
        acked: dict[int, int] = {}  # journal seq -> order id
        with OrderClient.connect("127.0.0.1", port, timeout=5) as client:
            assert client.login(7, 77).ok
            deadline = time.monotonic() + 120
            halted = False
            while not halted and time.monotonic() < deadline:
                # Bursts of 50, then their replies: fills the disk in seconds, not minutes.
                for _ in range(50):
                    client.submit_order("ACME", "buy", 1, 10)
                for _ in range(50):
                    try:
                        reply = client.next_reply()
                    except TimeoutError:
                        # published before the halt, never durable: it must still be answered
                        raise AssertionError("a request got neither K nor X after the halt") from None
                    if not reply.ok:
                        # THROTTLED: the in-ring filled while the journaler was failing
                        # (or the rate limit bit); a refusal either way, never an ack.
                        assert reply.reason_name in ("NOT_READY", "THROTTLED"), reply
                        halted = halted or reply.reason_name == "NOT_READY"
                        continue
                    assert not halted, "an ack after a refusal"
                    acked[reply.seq] = reply.order_id
        assert stages.alive(GATEWAY), stages.log_tail()
        with OrderClient.connect("127.0.0.1", port, timeout=5) as client:
            assert client.login(7, 77).ok
            for _ in range(3):
                refusal = client.buy("ACME", 1, 10)
                assert not refusal.ok and refusal.reason_name == "NOT_READY", refusal
        assert stages.wait_exit(JOURNALER) == EXIT_HALTED
        assert "journal write failed, exchange halted" in stages.log_tail(100_000)
        assert stages.control.state == ExchangeState.HALTED
        assert len(acked) > 1000
    with Journal(small_disk, readonly=True) as journal:
        got = np.concatenate([c for _, c in journal.read_commands("ACME")])
    assert max(acked) < len(got)
    assert all(int(got[seq]["order_id"]) == oid for seq, oid in acked.items())
