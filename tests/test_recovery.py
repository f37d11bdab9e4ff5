"""Recovery: snapshot + journal tail, ``--verify``, and crash tests with real processes.

The crash tests run the exchange's stages as ``ringex up`` runs them, each its own
process, with a producer process playing the gateway::

    producer ──► in-ring[SYM] ──► matcher-0 ──► out-ring[SYM] ──► notifier
                      │                              │
                      └──────────► journaler ◄───────┘

then kill -9 the journaler, the matcher or every process at a random moment, and
check: every command the journaler's cursor said was durable is in the journal, a book
recovered from snapshot + tail equals a full replay (state_hash), and ``ringex recover
--verify`` passes. This file is also the producer's script (``python
tests/test_recovery.py producer ...``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.commands import CommandStream
from support.stages import Stages

from ringex.config import SymbolSpec
from ringex.records import COMMAND, EVENT, encode_symbol
from ringex.topology import CMD, JOURNALER, MATCHER, NOTIFIER, journaled_base, matcher_role

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
QUICK = os.environ.get("RINGEX_QUICK") == "1"
SPECS = (
    SymbolSpec("ACME", price_min=1, price_max=1000, capacity=4096),
    SymbolSpec("BOLT", tick=5, price_min=100, price_max=2000, capacity=4096),
)
RING_CAPACITY = 1024


# ---------------------------------------------------------------------------------------
# Stage processes (run as scripts)


def producer_main(argv: list[str]) -> None:
    """producer SEED FIRST_ORDER_ID SYM:IN ...: a steady stream of orders until killed."""
    import posix_ipc

    from ringex.ring import Ring, RingTimeout

    rng = random.Random(int(argv[0]))
    stream = CommandStream(SPECS, rng, first_order_id=int(argv[1]), clock=time.time_ns)
    targets = []
    for item in argv[2:]:
        symbol, ring_name = item.split(":")
        targets.append((symbol, Ring.attach(ring_name, COMMAND).producer()))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        for symbol, producer in targets:
            records = stream.batch(symbol, rng.randint(1, 12))
            while not stop:
                try:
                    producer.write(records, timeout=0.2)
                    break
                except (RingTimeout, posix_ipc.SignalError):
                    continue  # no room yet, or SIGTERM while waiting for room
        # ~3,000 commands/s per symbol: a steady stream with group commits of tens,
        # while the journal stays small enough to replay twice after every kill.
        time.sleep(0.002)


# ---------------------------------------------------------------------------------------
# The pipeline harness


SPECS_TOML = """
[symbols.ACME]
price_min = 1
price_max = 1000
capacity = 4096

[symbols.BOLT]
tick = 5
price_min = 100
price_max = 2000
capacity = 4096
"""
STAGES = (JOURNALER, matcher_role(0), NOTIFIER)


class Pipeline:
    """The stages behind the gateway (``Stages``), and a producer process in its place."""

    def __init__(self, data: Path, durability: str = "fsync", snapshot_interval: int = 300) -> None:
        self.data = data
        self.stages = Stages(
            data, SPECS_TOML, durability=durability, snapshot_interval=snapshot_interval, ring_capacity=RING_CAPACITY
        )
        self.producer: subprocess.Popen | None = None
        self.seed = random.randrange(1 << 30)
        self.running = False

    def start_all(self) -> None:
        """The stages on the rings as they are (new after ``kill_all``), then the producer."""
        from ringex.wal import Journal

        with Journal(self.data, readonly=True) as journal:
            first_oid = journal.max_order_id() + 1
        self.stages.start(*STAGES)
        self.seed += 1
        ins = [f"{s}:{self.stages.topology.in_ring(s)}" for s in self.stages.topology.symbols]
        self.producer = subprocess.Popen(
            [PY, __file__, "producer", str(self.seed), str(first_oid), *ins],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(self.data / "producer.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        self.running = True

    def durable(self) -> dict[str, int]:
        """Per symbol, the journal sequence the journaler's in-ring cursor says is durable
        (exclusive end), as the gateway would read it."""
        from ringex.wal import Journal

        out = {}
        with Journal(self.data, readonly=True) as journal:
            for symbol in self.stages.topology.symbols:
                in_ring = self.stages.in_ring(symbol)
                base = journaled_base(journal, CMD, symbol, in_ring)
                cursor = in_ring.consumer_cursor(JOURNALER)
                if base is None:
                    assert cursor == -1, "journaler consumed a ring it never recorded"
                    out[symbol] = 0
                else:
                    out[symbol] = base + cursor + 1
        return out

    def wait_flowing(self, timeout: float = 30.0) -> None:
        """Until the journaler has made some commands of these rings durable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.stages.in_ring(s).consumer_cursor(JOURNALER) >= 20 for s in self.stages.topology.symbols):
                return
            time.sleep(0.02)
        raise AssertionError("pipeline did not start flowing: " + self.logs())

    def kill(self, role: str) -> None:
        self.stages.kill(role)

    def restart(self, role: str) -> None:
        self.stages.start(role)

    def kill_all(self) -> None:
        """kill -9 every process at once, as a machine losing the exchange would; the next
        ``start_all`` runs on new rings, as the supervisor's next start would."""
        if self.producer is not None:
            self.producer.kill()
        self.stages.kill(*list(self.stages.procs))
        if self.producer is not None:
            self.producer.wait()
            self.producer = None
        self.stages.new_shared_memory()

    def stop_cleanly(self) -> None:
        """Stop the producer, let the stages drain, then stop them."""
        self.producer.terminate()
        self.producer.wait(10)
        self.producer = None
        deadline = time.monotonic() + 20
        topology = self.stages.topology
        while time.monotonic() < deadline:
            if all(
                self.stages.in_ring(s).consumer_cursor(JOURNALER) == self.stages.in_ring(s).producer_cursor
                and self.stages.in_ring(s).consumer_cursor(MATCHER) == self.stages.in_ring(s).producer_cursor
                and self.stages.out_ring(s).consumer_cursor(JOURNALER) == self.stages.out_ring(s).producer_cursor
                for s in topology.symbols
            ):
                break
            time.sleep(0.02)
        for role in (matcher_role(0), NOTIFIER, JOURNALER):
            assert self.stages.stop(role) == 0, self.logs()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.data.glob("*.log"))

    def close(self) -> None:
        if self.producer is not None:
            self.producer.kill()
            self.producer.wait()
        self.stages.close()


class TradeTape:
    """A market data subscriber through every crash: on a thread, it subscribes to the
    trades of ``symbols`` on the notifier at ``port``, keeps every trade printed, and
    reconnects whenever the notifier goes away (kill -9, restart)."""

    def __init__(self, port: int, symbols) -> None:
        import threading

        self.port = port
        self.symbols = tuple(symbols)
        self.trades: dict[tuple[str, int], tuple] = {}
        self.conflicts: list = []  # a trade printed twice, differently
        self.sessions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trade tape", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ringex.market_data.client import MdClient

        while not self._stop.is_set():
            try:
                with MdClient("127.0.0.1", self.port, timeout=2.0) as client:
                    for symbol in self.symbols:
                        client.subscribe("trades", symbol)
                    self.sessions += 1
                    while not self._stop.is_set():
                        try:
                            msg = client.recv(timeout=0.2)
                        except TimeoutError:
                            continue
                        if msg.get("type") != "trade":
                            continue
                        key = (msg["symbol"], msg["trade_id"])
                        print_ = (msg["price"], msg["qty"], msg["taker_order_id"], msg["maker_order_id"], msg["ts_ns"])
                        before = self.trades.setdefault(key, print_)
                        if before != print_:
                            self.conflicts.append((key, before, print_))
            except (OSError, ConnectionError, ValueError):
                time.sleep(0.05)  # the notifier is down or restarting

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _check_printed_trades(data: Path, tape: TradeTape) -> None:
    """Every trade a subscriber saw is a trade of the journal, field for field: a crash
    never shows a subscriber an event that recovery does not reproduce."""
    from ringex.codes import EventKind
    from ringex.wal import Journal

    journaled = {}
    with Journal(data, readonly=True) as journal:
        for symbol in tape.symbols:
            for _, events in journal.read_events(symbol):
                for e in events[events["kind"] == EventKind.TRADE].tolist():
                    row = dict(zip(EVENT.names, e, strict=True))
                    journaled[(symbol, row["trade_id"])] = (
                        row["price"],
                        row["qty"],
                        row["order_id"],
                        row["contra_order_id"],
                        row["ts_ns"],
                    )
    assert tape.trades, "the subscriber saw no trade"
    assert not tape.conflicts, tape.conflicts[:3]
    missing = {k: v for k, v in tape.trades.items() if journaled.get(k) != v}
    assert not missing, f"{len(missing)} printed trades recovery does not reproduce, e.g. {list(missing.items())[:3]}"


def _check_recovery(data: Path, durable: dict[str, int]) -> dict[str, str]:
    """Everything durable is journaled; snapshot + tail == full replay == verified replay."""
    from ringex.engine.recovery import recover_all
    from ringex.wal import Journal

    with Journal(data, readonly=True) as journal:
        for symbol, end in durable.items():
            assert journal.next_seq(symbol) >= end, (
                f"{symbol}: durable up to {end}, journal ends at {journal.next_seq(symbol)}"
            )
        from_snapshots = recover_all(str(data), journal=journal)
        full = recover_all(str(data), journal=journal, use_snapshots=False, verify=True)
    hashes = {}
    for symbol, book in from_snapshots.items():
        assert book.matcher.state_hash() == full[symbol].matcher.state_hash(), symbol
        assert book.next_event_seq == full[symbol].next_event_seq
        np.testing.assert_array_equal(book.pending_events, full[symbol].pending_events)
        book.matcher.validate()
        hashes[symbol] = book.matcher.state_hash()
    return hashes


def _copy(events: np.ndarray) -> np.ndarray:
    """A byte-exact copy (a structured ``.copy()`` does not copy padding bytes)."""
    return events.view(np.dtype((np.void, EVENT.itemsize))).copy().view(EVENT)


def _cli_verify(data: Path) -> list[dict]:
    proc = subprocess.run(
        [PY, "-m", "ringex", "recover", "--verify", "--json", "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ---------------------------------------------------------------------------------------
# Tests


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_kill_minus_nine_at_random_moments_loses_nothing_durable(tmp_path, request, durability):
    runs = 4 if QUICK else (12 if durability == "fsync" else 8)  # 20 kills in all
    rng = random.Random()
    pipeline = Pipeline(tmp_path / "data", durability)
    request.addfinalizer(pipeline.close)
    pipeline.start_all()
    kills = []
    tape = TradeTape(pipeline.stages.config.md_port, pipeline.stages.topology.symbols)
    request.addfinalizer(tape.close)
    pipeline.wait_flowing()
    # Readers are safe while the journaler writes: the CLI reads a consistent prefix.
    assert all(row["verified_commands"] > 0 for row in _cli_verify(pipeline.data))
    tail = subprocess.run(
        [PY, "-m", "ringex", "journal", "tail", "ACME", "--data", str(pipeline.data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) >= 20, tail.stderr
    for _ in range(runs):
        pipeline.wait_flowing()
        time.sleep(rng.uniform(0.05, 0.8))
        target = rng.choice((JOURNALER, MATCHER, "all"))
        kills.append(target)
        if target == JOURNALER:
            pipeline.kill(JOURNALER)
            durable = pipeline.durable()
            # Restart the journaler alone on the same rings: it must skip what it
            # committed but had not marked, and journal the rest without a gap.
            pipeline.restart(JOURNALER)
            time.sleep(rng.uniform(0.1, 0.4))
            assert all(v >= durable[k] for k, v in pipeline.durable().items())
            continue
        if target == MATCHER:
            pipeline.kill(matcher_role(0))
            time.sleep(rng.uniform(0, 0.2))  # the journaler keeps journaling commands meanwhile
        pipeline.kill_all()
        durable = pipeline.durable()
        _check_recovery(pipeline.data, durable)
        pipeline.start_all()
    pipeline.wait_flowing()
    pipeline.stop_cleanly()
    durable = pipeline.durable()
    hashes = _check_recovery(pipeline.data, durable)
    rows = {row["symbol"]: row for row in _cli_verify(pipeline.data)}
    assert {s: r["state_hash"] for s, r in rows.items()} == hashes
    # A clean stop leaves no journaled command without its events.
    assert all(r["pending_events"] == 0 for r in rows.values())
    assert all(r["verified_commands"] == r["commands"] > 0 for r in rows.values())
    assert "Traceback" not in pipeline.logs()
    tape.close()
    _check_printed_trades(pipeline.data, tape)
    if any(k != JOURNALER for k in kills):  # the notifier went down with the rest
        assert tape.sessions >= 2, "the subscriber never came back after the notifier was killed"
    print(
        "kills:",
        kills,
        "journal:",
        {s: r["commands"] for s, r in rows.items()},
        "trades printed:",
        len(tape.trades),
        "subscriber sessions:",
        tape.sessions,
    )


def test_recovery_from_snapshot_equals_full_replay_and_returns_unjournaled_events(tmp_path):
    from ringex.engine.matcher import Matcher
    from ringex.engine.recovery import recover_book
    from ringex.wal import Journal, SnapshotStore

    spec = SPECS[0]
    stream = CommandStream(spec, random.Random(7))
    live_book = Matcher(spec)
    store = SnapshotStore(tmp_path)
    seq = ev = 0
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        for i in range(30):
            cmds = stream.batch(spec.name, 50)
            events = _copy(live_book.apply(cmds, seq))
            # The last group journals its commands but only part of their events.
            kept = events if i < 29 else events[: len(events) // 2]
            journal.commit([(spec.name, seq, cmds)], [(spec.name, ev, kept)])
            seq += len(cmds)
            ev += len(events)
            if i in (9, 19):
                store.write(spec.name, seq, ev, live_book.snapshot())
        # A snapshot ahead of the journal (the matcher ran ahead): must be ignored.
        journaled_max_oid = stream.next_order_id - 1
        ahead = Matcher.restore(spec, live_book.snapshot())
        cmds = stream.batch(spec.name, 10)
        ahead.apply(cmds, seq)
        store.write(spec.name, seq + 10, ev + 999, ahead.snapshot())
        tail = events[len(events) // 2 :]

        ahead_path = store.paths(spec.name)[-1]
        recovered = recover_book(journal, spec, store, verify=True)
        assert not ahead_path.exists()  # covered commands the journal does not hold
        assert recovered.snapshot_seq == 20 * 50
        assert recovered.replayed == 10 * 50
        assert recovered.matcher.state_hash() == live_book.state_hash()
        assert recovered.next_event_seq == ev
        assert recovered.pending_events.tobytes() == tail.tobytes()
        full = recover_book(journal, spec, None, verify=True)
        assert full.snapshot_seq is None and full.replayed == seq
        assert full.matcher.state_hash() == live_book.state_hash()
        assert journal.max_order_id() == journaled_max_oid


def test_a_journal_read_ending_in_a_chunk_of_one_command_is_replayed(tmp_path):
    # A chunk of one record came back from the journal as a read-only view of LMDB's
    # bytes (numpy counts one element as contiguous, so nothing copied it), and the
    # jitted book refuses read-only input: a matcher restarting on such a journal died
    # until the supervisor halted the exchange (seen in CI, kill -9 of a matcher).
    from ringex.engine.matcher import Matcher
    from ringex.engine.recovery import recover_book
    from ringex.wal import READ_CHUNK, Journal

    spec = SPECS[0]
    stream = CommandStream(spec, random.Random(11))
    live_book = Matcher(spec)
    seq = ev = 0
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        for size in (READ_CHUNK, 1):
            cmds = stream.batch(spec.name, size)
            events = _copy(live_book.apply(cmds, seq))
            journal.commit([(spec.name, seq, cmds)], [(spec.name, ev, events)])
            seq += len(cmds)
            ev += len(events)
        (_, last), *_ = list(journal.read_commands(spec.name, seq - 1))
        assert len(last) == 1 and not last.flags.writeable
        recovered = recover_book(journal, spec, None, verify=True)
        assert recovered.replayed == seq
        assert recovered.matcher.state_hash() == live_book.state_hash()


def test_a_snapshot_of_commands_that_never_became_durable_is_never_used(tmp_path):
    """After a crash the lost commands' sequences go to new commands: an old snapshot
    covering the lost ones must not be taken once the journal grows past it."""
    from ringex.engine.matcher import Matcher
    from ringex.engine.recovery import recover_book
    from ringex.wal import Journal, SnapshotStore

    spec = SPECS[0]
    rng = random.Random(11)
    store = SnapshotStore(tmp_path)
    before_crash = CommandStream(spec, rng)
    first = before_crash.batch(spec.name, 100)
    oid = before_crash.next_order_id
    lost = before_crash.batch(spec.name, 50)
    crashed = Matcher(spec)
    events = _copy(crashed.apply(first, 0))
    lost_events = len(crashed.apply(lost, 100))  # matched, snapshotted, never journaled
    store.write(spec.name, 150, len(events) + lost_events, crashed.snapshot())
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        journal.commit([(spec.name, 0, first)], [(spec.name, 0, events)])
        restarted = recover_book(journal, spec, store)  # the matcher's restart
        assert restarted.next_seq == 100 and store.paths(spec.name) == []
        # The restarted gateway reuses the lost commands' order ids too.
        again = CommandStream(spec, rng, first_order_id=oid).batch(spec.name, 80)
        more = _copy(restarted.matcher.apply(again, 100))
        journal.commit([(spec.name, 100, again)], [(spec.name, len(events), more)])
        # Without the discard, the old snapshot would now pass every filter.
        assert 150 <= journal.next_seq(spec.name) and len(events) + lost_events <= journal.next_event_seq(spec.name)
        later = recover_book(journal, spec, store, verify=True)
        assert later.matcher.state_hash() == restarted.matcher.state_hash()


def test_verify_names_the_first_event_that_differs(tmp_path):
    from ringex.engine.matcher import Matcher
    from ringex.engine.recovery import VerifyMismatch, verify_symbol
    from ringex.wal import Journal

    spec = SPECS[0]
    book = Matcher(spec)
    cmds = CommandStream(spec, random.Random(3)).batch(spec.name, 200)
    events = _copy(book.apply(cmds, 0))
    bad = 57
    events[bad]["ts_ns"] += 1  # a journaled event the replay will not reproduce
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        journal.commit([(spec.name, 0, cmds)], [(spec.name, 0, events)])
        with pytest.raises(VerifyMismatch) as info:
            verify_symbol(journal, spec)
    assert info.value.symbol == "ACME"
    assert info.value.event_seq == bad
    assert info.value.seq == int(events[bad]["seq"])
    proc = subprocess.run(
        [PY, "-m", "ringex", "recover", "--verify", "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"command seq {int(events[bad]['seq'])}, event {bad}" in proc.stderr.replace("\n", " ")


def test_recover_cli_prints_a_summary_per_symbol(tmp_path):
    from ringex.engine.matcher import Matcher
    from ringex.wal import Journal

    with Journal(tmp_path) as journal:
        journal.ensure_specs(SPECS)
        for spec in SPECS:
            book = Matcher(spec)
            cmds = CommandStream(spec, random.Random(spec.name)).batch(spec.name, 300)
            journal.commit([(spec.name, 0, cmds)], [(spec.name, 0, book.apply(cmds, 0))])
    proc = subprocess.run(
        [PY, "-m", "ringex", "recover", "--json", "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["symbol"] for r in rows] == ["ACME", "BOLT"]
    assert all(r["commands"] == r["replayed"] == 300 for r in rows)
    assert all(r["resting_orders"] > 0 and r["best_bid"] < r["best_ask"] for r in rows)
    table = subprocess.run(
        [PY, "-m", "ringex", "recover", "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert table.returncode == 0 and "ACME" in table.stdout and "BOLT" in table.stdout


def test_recover_stops_at_a_corrupt_record_and_says_where(tmp_path):
    import lmdb

    from ringex.engine.matcher import Matcher
    from ringex.engine.recovery import recover_book
    from ringex.wal import CorruptRecordError, Journal

    spec = SPECS[0]
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        cmds = CommandStream(spec, random.Random(1)).batch(spec.name, 100)
        journal.commit([(spec.name, 0, cmds)], [(spec.name, 0, Matcher(spec).apply(cmds, 0))])
    # Flip one byte of command 42's record behind the journal's back.
    env = lmdb.open(str(tmp_path / "journal"), max_dbs=8)
    db = env.open_db(b"cmd:ACME")
    key = encode_symbol("ACME") + (42).to_bytes(8, "big")
    with env.begin(write=True, db=db) as txn:
        value = bytearray(txn.get(key))
        value[40] ^= 0x01
        txn.put(key, bytes(value))
    env.close()
    with Journal(tmp_path, readonly=True) as journal:
        with pytest.raises(CorruptRecordError) as info:
            recover_book(journal, spec)
    assert (info.value.symbol, info.value.kind, info.value.seq) == ("ACME", "cmd", 42)
    proc = subprocess.run(
        [PY, "-m", "ringex", "recover", "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "record 42 fails its checksum" in proc.stderr


def test_journal_dump_and_tail_print_commands_each_followed_by_its_events(tmp_path):
    from ringex.engine.matcher import Matcher
    from ringex.wal import Journal

    spec = SPECS[0]
    book = Matcher(spec)
    cmds = CommandStream(spec, random.Random(5)).batch(spec.name, 400)
    events = _copy(book.apply(cmds, 0))
    with Journal(tmp_path) as journal:
        journal.ensure_specs([spec])
        journal.commit([(spec.name, 0, cmds)], [(spec.name, 0, events)])

    def cli(*args):
        proc = subprocess.run(
            [PY, "-m", "ringex", "journal", *args, "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
        )
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr

    code, lines, err = cli("dump", "ACME", "--from", "100", "--to", "110")
    assert code == 0, err
    assert [r["seq"] for r in lines if r["type"] == "command"] == list(range(100, 110))
    want = [(i, int(e["seq"])) for i, e in enumerate(events) if 100 <= int(e["seq"]) < 110]
    assert [(r["event_seq"], r["seq"]) for r in lines if r["type"] == "event"] == want
    current = None
    for r in lines:  # each event comes after its command and before the next one
        if r["type"] == "command":
            current = r["seq"]
        else:
            assert r["seq"] == current
    assert lines[0] == {**lines[0], "type": "command", "seq": 100, "order_id": int(cmds[100]["order_id"])}

    code, lines, err = cli("tail", "ACME", "-n", "5")
    assert code == 0, err
    assert [r["seq"] for r in lines if r["type"] == "command"] == [395, 396, 397, 398, 399]
    assert lines[-1]["type"] == "event" and lines[-1]["event_seq"] == len(events) - 1

    code, lines, err = cli("tail", "NOPE")
    assert code == 2 and "NOPE is not in the journal" in err


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    {"producer": producer_main}[role](rest)
