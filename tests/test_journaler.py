"""The journaler loop over real shared-memory rings and a real LMDB journal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ringex.control import ControlBlock, ExchangeState
from ringex.journal.journaler import EXIT_HALTED, Journaler, JournalerHalted, RingPair, _Feed
from ringex.records import COMMAND, EVENT, Op, encode_symbol
from ringex.ring import Ring
from ringex.wal import Journal

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("ACME", "BOLT")


def commands(first_oid: int, n: int, symbol: str) -> np.ndarray:
    out = np.zeros(n, COMMAND)
    out["msg_type"] = Op.NEW
    out["symbol"] = encode_symbol(symbol)
    out["order_id"] = np.arange(first_oid, first_oid + n)
    out["qty"] = 1
    return out


def events_for(first_seq: int, n: int, symbol: str) -> np.ndarray:
    out = np.zeros(n, EVENT)
    out["kind"] = ord("A")
    out["seq"] = np.arange(first_seq, first_seq + n)
    out["symbol"] = encode_symbol(symbol)
    return out


@pytest.fixture
def rings():
    """Per symbol an in-ring (matcher, journaler) and an out-ring (journaler, notifier
    gated on the journaler), as the supervisor lays them out."""
    prefix = f"rxj{os.getpid()}{uuid.uuid4().hex[:6]}"
    made = {}
    try:
        for s in SYMBOLS:
            made[s] = (
                Ring.create(f"{prefix}-{s}-in", COMMAND, 256, consumers=["matcher", "journaler"]),
                Ring.create(
                    f"{prefix}-{s}-out",
                    EVENT,
                    256,
                    consumers=["journaler", "notifier"],
                    gating={"notifier": ["journaler"]},
                ),
            )
        yield made
    finally:
        for pair in made.values():
            for ring in pair:
                ring.unlink()
                ring.close()


def pairs_of(rings) -> list[RingPair]:
    return [RingPair(s, i.name, o.name) for s, (i, o) in rings.items()]


def test_a_round_journals_both_rings_in_one_group_then_moves_the_cursors(tmp_path, rings):
    acme_in, acme_out = rings["ACME"]
    producer = acme_in.producer()
    producer.write(commands(1, 200, "ACME"))
    rings["BOLT"][0].producer().write(commands(1000, 5, "BOLT"))
    acme_out.producer().write(events_for(0, 40, "ACME"))
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, pairs_of(rings))
        try:
            assert acme_in.consumer_cursor("journaler") == -1
            assert journaler.round() == 200 + 5 + 40
            assert acme_in.consumer_cursor("journaler") == 199
            assert rings["BOLT"][0].consumer_cursor("journaler") == 4
            assert acme_out.consumer_cursor("journaler") == 39
            assert journaler.round() == 0
            matcher = acme_in.consumer("matcher")
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


def test_the_notifier_only_sees_events_the_journaler_made_durable(tmp_path, rings):
    acme_in, acme_out = rings["ACME"]
    notifier = acme_out.consumer("notifier")
    acme_in.producer().write(commands(1, 3, "ACME"))
    acme_out.producer().write(events_for(0, 3, "ACME"))
    assert not notifier.poll()
    with Journal(tmp_path) as journal:
        journaler = Journaler(journal, pairs_of(rings))
        try:
            journaler.round()
        finally:
            journaler.close()
    assert len(notifier.poll()) == 3


def test_a_restart_skips_what_was_committed_but_not_marked(tmp_path, rings, monkeypatch):
    acme_in, acme_out = rings["ACME"]
    producer = acme_in.producer()
    producer.write(commands(1, 10, "ACME"))
    acme_out.producer().write(events_for(0, 4, "ACME"))
    with Journal(tmp_path) as journal:
        # Crash point: the LMDB commit happened, the cursor stores did not.
        with monkeypatch.context() as patch:
            patch.setattr(_Feed, "commit", lambda self: None)
            first = Journaler(journal, pairs_of(rings))
            first.round()
            first.close()
        assert acme_in.consumer_cursor("journaler") == -1
        assert journal.next_seq("ACME") == 10
        producer.write(commands(11, 5, "ACME"))
        second = Journaler(journal, pairs_of(rings))
        try:
            assert acme_in.consumer_cursor("journaler") == 9  # skipped, not journaled twice
            assert acme_out.consumer_cursor("journaler") == 3
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
        journaler = Journaler(journal, pairs_of(rings))
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
        matcher = acme_in.consumer("matcher")
        with Journal(tmp_path, map_size=256 << 10, max_map_size=512 << 10) as journal:
            journaler = Journaler(journal, pairs_of(rings), control)
            try:
                oid = 1
                with pytest.raises(JournalerHalted):
                    while True:
                        producer.write(commands(oid, 200, "ACME"), timeout=5)
                        matcher.commit(matcher.wait_for(0, 0))
                        oid += 200
                        journaler.round()
                durable_end = journal.next_seq("ACME")
                assert acme_in.consumer_cursor("journaler") == durable_end - 1
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


def test_the_journaler_process_halts_on_a_full_disk(tmp_path, rings):
    """A real full filesystem under a real journaler process (needs root for the mount)."""
    disk = Path(f"/tmp/ringex-tmpfs-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        disk.rmdir()
        pytest.skip("cannot mount a tmpfs here (the map-cap test covers the halt path)")
    control = ControlBlock.create(f"/rxj{os.getpid()}{uuid.uuid4().hex[:6]}-control")
    proc = None
    try:
        control.register("journaler")
        control.set_state(ExchangeState.READY)
        pairs = [f"{p.symbol}:{p.in_ring}:{p.out_ring}" for p in pairs_of(rings)]
        proc = subprocess.Popen(
            [PY, "-m", "ringex.journal.journaler", "--data", str(disk / "data"), "--control", control.name, *pairs],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        producer = rings["ACME"][0].producer()
        matcher = rings["ACME"][0].consumer("matcher")
        oid = 1
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                producer.write(commands(oid, 100, "ACME"), timeout=0.2)
                matcher.commit(matcher.wait_for(0, 0))
                oid += 100
            except TimeoutError:
                pass  # the ring is full: the journaler stopped consuming
        assert proc.wait(10) == EXIT_HALTED
        log = proc.stderr.read()
        assert "CRITICAL" in log and "journal write failed, exchange halted" in log
        assert control.state == ExchangeState.HALTED
        durable = rings["ACME"][0].consumer_cursor("journaler") + 1
        assert durable > 0
        with Journal(disk / "data", readonly=True) as journal:
            assert journal.next_seq("ACME") >= durable
            got = np.concatenate([c for _, c in journal.read_commands("ACME")])
            assert got["order_id"].tolist() == list(range(1, journal.next_seq("ACME") + 1))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        control.unlink()
        control.close()
        subprocess.run(["umount", "-l", str(disk)])
        disk.rmdir()


def test_the_journaler_process_drains_and_stops_on_sigterm(tmp_path, rings):
    pairs = [f"{p.symbol}:{p.in_ring}:{p.out_ring}" for p in pairs_of(rings)]
    proc = subprocess.Popen([PY, "-m", "ringex.journal.journaler", "--data", str(tmp_path), *pairs], cwd=ROOT)
    try:
        acme_in, acme_out = rings["ACME"]
        acme_in.producer().write(commands(1, 50, "ACME"))
        acme_out.producer().write(events_for(0, 60, "ACME"))
        deadline = time.monotonic() + 30
        while acme_out.consumer_cursor("journaler") < 59 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acme_in.consumer_cursor("journaler") == 49
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    with Journal(tmp_path, readonly=True) as journal:
        assert journal.next_seq("ACME") == 50 and journal.next_event_seq("ACME") == 60


GATEWAY_CONFIG = """
[symbols.ACME]
price_min = 1
price_max = 1000
"""


def _reply_within(client, seconds: float):
    """The client's next reply, or TimeoutError after ``seconds`` in all (the gateway's
    heartbeats keep ``OrderClient.next_reply`` waiting past its socket timeout)."""
    deadline = time.monotonic() + seconds
    while (reply := client.conn.next_reply()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no reply")
        try:
            data = client.sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            raise ConnectionError("the gateway closed the session")
        client.conn.receive_data(data)
    return reply


def test_a_full_disk_turns_new_orders_into_not_ready_and_loses_no_acked_order(tmp_path):
    """Real gateway, real journaler, real full filesystem: every K'd order is in the
    journal, and once the journaler halts the gateway answers NOT_READY."""
    from ringex.order_entry.accounts import AccountStore
    from ringex.order_entry.client import OrderClient
    from ringex.order_entry.gateway import in_ring_name

    disk = Path(f"/tmp/ringex-tmpfs-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        disk.rmdir()
        pytest.skip("cannot mount a tmpfs here (the map-cap test covers the halt path)")
    prefix = f"rxjg{os.getpid()}{uuid.uuid4().hex[:6]}"
    rings, procs = [], []
    control = ControlBlock.create(f"/{prefix}-control")
    try:
        (tmp_path / "ringex.toml").write_text(GATEWAY_CONFIG)
        AccountStore.open(tmp_path).add(7, 77)
        rings.append(Ring.create(in_ring_name("ACME", prefix), COMMAND, 4096, ["journaler"]))
        rings.append(Ring.create(f"{prefix}.out.ACME", EVENT, 64, ["journaler"]))
        control.register("journaler")
        control.set_state(ExchangeState.READY)
        journaler = subprocess.Popen(
            [PY, "-m", "ringex.journal.journaler", "--data", str(disk / "data"), "--control", control.name]
            + [f"ACME:{rings[0].name}:{rings[1].name}"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(journaler)
        gateway = subprocess.Popen(
            [PY, "-m", "ringex.order_entry.gateway", "--config", str(tmp_path / "ringex.toml"), "--data", str(tmp_path)]
            + ["--host", "127.0.0.1", "--port", "0", "--ring-prefix", prefix, "--control", control.name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(gateway)
        line = gateway.stdout.readline()
        assert "listening on" in line, gateway.stderr.read()
        acked: dict[int, int] = {}  # journal seq -> order id
        port = int(line.rsplit(":", 1)[1])
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
                        reply = _reply_within(client, 5.0)
                    except TimeoutError:
                        # published before the halt, never durable: it must still be answered
                        raise AssertionError("a request got neither K nor X after the halt") from None
                    except ConnectionError:
                        gateway.kill()
                        raise AssertionError("gateway closed the session:\n" + gateway.stderr.read()) from None
                    if not reply.ok:
                        # THROTTLED: the in-ring filled while the journaler was failing
                        # (or the rate limit bit); a refusal either way, never an ack.
                        assert reply.reason_name in ("NOT_READY", "THROTTLED"), reply
                        halted = halted or reply.reason_name == "NOT_READY"
                        continue
                    assert not halted, "an ack after a refusal"
                    acked[reply.seq] = reply.order_id
        assert journaler.wait(10) == EXIT_HALTED
        with OrderClient.connect("127.0.0.1", port, timeout=5) as client:
            assert client.login(7, 77).ok
            for _ in range(3):
                refusal = client.buy("ACME", 1, 10)
                assert not refusal.ok and refusal.reason_name == "NOT_READY", refusal
        assert journaler.wait(10) == EXIT_HALTED
        assert "journal write failed, exchange halted" in journaler.stderr.read()
        assert control.state == ExchangeState.HALTED
        assert len(acked) > 1000
        with Journal(disk / "data", readonly=True) as journal:
            got = np.concatenate([c for _, c in journal.read_commands("ACME")])
        assert max(acked) < len(got)
        assert all(int(got[seq]["order_id"]) == oid for seq, oid in acked.items())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for ring in rings:
            ring.unlink()
            ring.close()
        control.unlink()
        control.close()
        subprocess.run(["umount", "-l", str(disk)])
        disk.rmdir()
