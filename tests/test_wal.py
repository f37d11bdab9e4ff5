"""The LMDB journal and the snapshot files: real LMDB, real files, real processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

from ringex.codes import EventKind, Op
from ringex.config import SymbolSpec
from ringex.records import COMMAND, EVENT, encode_symbol, make_records
from ringex.wal import (
    CorruptRecordError,
    Journal,
    JournalError,
    JournalFullError,
    JournalWriteError,
    SnapshotStore,
    _max_new_order_id,
    _pack,
    checksums,
)

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def commands(first_oid: int, n: int, symbol: str = "ACME") -> np.ndarray:
    return make_records(
        COMMAND,
        n,
        msg_type=Op.NEW,
        symbol=symbol,
        order_id=np.arange(first_oid, first_oid + n),
        price=np.arange(n) % 97 + 1,
        qty=7,
    )


def events(first: int, n: int, symbol: str = "ACME") -> np.ndarray:
    out = np.zeros(n, EVENT)
    out["kind"] = EventKind.ACCEPTED
    out["seq"] = np.arange(first, first + n)
    out["order_id"] = np.arange(first, first + n) + 1
    out["symbol"] = encode_symbol(symbol)
    return out


def read_all(journal: Journal, kind: str, symbol: str, from_seq: int = 0) -> np.ndarray:
    reader = journal.read_commands if kind == "cmd" else journal.read_events
    chunks = [c for _, c in reader(symbol, from_seq)]
    dtype = COMMAND if kind == "cmd" else EVENT
    # Concatenated as raw bytes: np.concatenate would pack the padded EVENT dtype.
    raw = np.dtype((np.void, dtype.itemsize))
    return np.concatenate([c.view(raw) for c in chunks]).view(dtype) if chunks else np.zeros(0, dtype)


def test_a_group_of_several_symbols_reads_back_in_sequence_order(tmp_path):
    with Journal(tmp_path) as journal:
        stats = journal.commit(
            [("BOLT", 0, commands(1, 5, "BOLT")), ("ACME", 0, commands(6, 3)), ("ACME", 3, commands(9, 4))],
            [("ACME", 0, events(0, 10))],
        )
        assert (stats.commands, stats.events) == (12, 10)
        journal.commit([("ACME", 7, commands(13, 1))])
        assert journal.next_seq("ACME") == 8
        assert journal.next_seq("BOLT") == 5
        assert journal.next_seq("CRUX") == 0
        assert journal.next_event_seq("ACME") == 10
        assert journal.max_order_id() == 13
        acme = read_all(journal, "cmd", "ACME")
        assert acme["order_id"].tolist() == list(range(6, 14))
        assert [first for first, _ in journal.read_commands("ACME", 2, 5)] == [2]
        assert read_all(journal, "cmd", "ACME", 5)["order_id"].tolist() == [11, 12, 13]
        assert read_all(journal, "evt", "ACME").tobytes() == events(0, 10).tobytes()


def test_records_are_byte_exact_and_checksummed_with_their_key(tmp_path):
    cmds = commands(1, 3)
    cmds["ts_ns"] = [11, 22, 33]
    with Journal(tmp_path) as journal:
        journal.commit([("ACME", 0, cmds)])
    env = lmdb.open(str(tmp_path / "journal"), max_dbs=8, readonly=True)
    with env.begin(db=env.open_db(b"cmd:ACME")) as txn:
        key = encode_symbol("ACME") + (1).to_bytes(8, "big")
        value = txn.get(key)
    env.close()
    assert value[:64] == cmds[1:2].tobytes()
    assert int.from_bytes(value[64:], "little") == zlib.crc32(value[:64], zlib.crc32(key))


def test_checksums_match_zlib():
    keys = np.frombuffer(os.urandom(16 * 50), dtype="V16")
    recs = np.frombuffer(os.urandom(64 * 50), dtype="V64")
    expect = [zlib.crc32(bytes(r), zlib.crc32(bytes(k))) for k, r in zip(keys, recs, strict=True)]
    assert checksums(keys, recs).tolist() == expect


def test_pack_builds_big_endian_keys_and_checksummed_values():
    from ringex.wal import EVENT_VALUE

    rng = np.random.default_rng(7)
    events = np.frombuffer(rng.integers(0, 256, 128 * 40, dtype=np.uint8).tobytes(), dtype=EVENT)
    first = (1 << 40) + 123
    keys, values = _pack(np.frombuffer(b"DYNE\0\0\0\0", np.uint8), first, events, EVENT_VALUE)
    for i, (key, value) in enumerate(zip(keys.view("V16").tolist(), values.view("V132").tolist(), strict=True)):
        assert key == b"DYNE\0\0\0\0" + (first + i).to_bytes(8, "big")
        assert value[:128] == events[i : i + 1].tobytes()
        assert int.from_bytes(value[128:], "little") == zlib.crc32(value[:128], zlib.crc32(key))


def test_the_highest_new_order_id_ignores_other_commands():
    cmds = commands(10, 5)
    cmds["order_id"] = [10, 99, 12, 13, 14]
    cmds["msg_type"][1] = Op.CANCEL  # a cancel names another order's id: not issued here
    rows = cmds.view(np.uint8).reshape(5, -1)
    assert _max_new_order_id(rows, int(Op.NEW)) == 14
    assert _max_new_order_id(rows[1:2], int(Op.NEW)) == 0


def test_a_gap_or_overlap_is_refused_before_anything_is_written(tmp_path):
    with Journal(tmp_path) as journal:
        journal.commit([("ACME", 0, commands(1, 4))])
        with pytest.raises(JournalError, match="continues at 4"):
            journal.commit([("BOLT", 0, commands(5, 1, "BOLT")), ("ACME", 5, commands(6, 1))])
        with pytest.raises(JournalError, match="continues at 4"):
            journal.commit([("ACME", 2, commands(6, 1))])
        assert journal.next_seq("BOLT") == 0
        assert journal.next_seq("ACME") == 4


@pytest.mark.parametrize(
    "damage, problem",
    [("flip", "fails its checksum"), ("delete", "is missing"), ("truncate", "is truncated")],
)
def test_a_damaged_record_is_found_and_named(tmp_path, damage, problem):
    with Journal(tmp_path) as journal:
        journal.commit([], [("ACME", 0, events(0, 5000))])
    env = lmdb.open(str(tmp_path / "journal"), max_dbs=8)
    key = encode_symbol("ACME") + (4321).to_bytes(8, "big")
    with env.begin(write=True, db=env.open_db(b"evt:ACME")) as txn:
        value = txn.get(key)
        if damage == "flip":
            txn.put(key, value[:9] + bytes([value[9] ^ 0x80]) + value[10:])
        elif damage == "delete":
            txn.delete(key)
        else:
            txn.put(key, value[:100])
    env.close()
    with Journal(tmp_path, readonly=True) as journal:
        seen = 0
        with pytest.raises(CorruptRecordError) as info:
            for _, chunk in journal.read_events("ACME"):
                seen += len(chunk)
        assert (info.value.symbol, info.value.kind, info.value.seq) == ("ACME", "evt", 4321)
        assert problem in str(info.value)
        assert seen == 4096  # the chunk before the damaged one was delivered, nothing after


def test_a_full_map_grows_and_the_same_group_is_retried(tmp_path):
    with Journal(tmp_path, map_size=256 << 10) as journal:
        start = journal.map_size
        grown = 0
        for i in range(20):
            stats = journal.commit([("ACME", i * 2000, commands(i * 2000 + 1, 2000))])
            grown += stats.map_grown
            assert stats.commands == 2000
        assert grown >= 2
        assert journal.map_size >= 8 * start
        assert len(read_all(journal, "cmd", "ACME")) == 40_000


def test_the_map_cap_refuses_the_group_and_keeps_what_was_journaled(tmp_path):
    with Journal(tmp_path, map_size=256 << 10, max_map_size=1 << 20) as journal:
        seq = 0
        with pytest.raises(JournalFullError):
            while True:
                journal.commit([("ACME", seq, commands(seq + 1, 1000))])
                seq += 1000
        assert journal.next_seq("ACME") == seq
    with Journal(tmp_path, readonly=True) as journal:
        assert journal.next_seq("ACME") == seq > 0
        assert read_all(journal, "cmd", "ACME")["order_id"].tolist() == list(range(1, seq + 1))


@contextlib.contextmanager
def tiny_tmpfs(size: str = "1m"):
    """A real small filesystem, so the disk really fills up (needs root)."""
    where = Path(f"/tmp/ringex-tmpfs-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode:
        where.rmdir()
        pytest.skip(
            f"cannot mount a tmpfs here: {proc.stderr.decode().strip()} (the map-cap test covers the halt path)"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)])
        where.rmdir()


def test_a_full_disk_fails_the_commit_and_keeps_every_earlier_commit(tmp_path):
    with tiny_tmpfs() as disk:
        journal = Journal(disk / "data", map_size=64 << 20)
        seq = 0
        with pytest.raises(JournalWriteError):
            while True:
                journal.commit([("ACME", seq, commands(seq + 1, 500))], [("ACME", seq, events(seq, 500))])
                seq += 500
        assert seq > 1000
        with contextlib.suppress(lmdb.Error):
            journal.close()
        with Journal(disk / "data", readonly=True) as reader:
            assert reader.next_seq("ACME") >= seq
            n = reader.next_seq("ACME")
            assert read_all(reader, "cmd", "ACME")["order_id"].tolist() == list(range(1, n + 1))
            assert len(read_all(reader, "evt", "ACME")) == reader.next_event_seq("ACME") >= seq


READER = r"""
import sys, time
from ringex.wal import Journal
journal = Journal(sys.argv[1], readonly=True)
want = int(sys.argv[2])
print("open", flush=True)
deadline = time.monotonic() + 60
while journal.next_seq("ACME") < want and time.monotonic() < deadline:
    time.sleep(0.01)
total = sum(len(c) for _, c in journal.read_commands("ACME"))
print(journal.next_seq("ACME"), total, journal.max_order_id(), flush=True)
"""


def test_a_reader_process_reads_safely_while_the_writer_grows_the_map(tmp_path):
    with Journal(tmp_path, map_size=256 << 10) as journal:
        journal.commit([("ACME", 0, commands(1, 10))])
        reader = subprocess.Popen(
            [PY, "-c", READER, str(tmp_path), "30000"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            assert reader.stdout.readline().strip() == "open"
            seq = 10
            while seq < 30000:
                journal.commit([("ACME", seq, commands(seq + 1, 1000))])
                seq += 1000
            assert journal.map_size > 256 << 10
            out, _ = reader.communicate(timeout=60)
        finally:
            reader.kill()
        assert out.split() == ["30010", "30010", "30010"]


WRITER = r"""
import os, sys, numpy as np
from ringex.wal import Journal
from ringex.records import COMMAND, make_records
journal = Journal(sys.argv[1], durability=sys.argv[2])
c = make_records(COMMAND, 100)
for i in range(50):
    journal.commit([("ACME", i * 100, c)])
print("committed", flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_both_durability_modes_survive_a_process_kill(tmp_path, durability):
    proc = subprocess.run([PY, "-c", WRITER, str(tmp_path), durability], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == -9 and proc.stdout.strip() == "committed", proc.stderr
    with Journal(tmp_path, readonly=True) as journal:
        assert journal.next_seq("ACME") == 5000
        assert len(read_all(journal, "cmd", "ACME")) == 5000


def test_specs_are_stored_once_and_a_journaled_symbol_keeps_its_spec(tmp_path):
    acme = SymbolSpec("ACME", price_max=500, capacity=128)
    with Journal(tmp_path) as journal:
        assert journal.specs() == ()
        assert journal.ensure_specs([acme]) == (acme,)
        journal.commit([("ACME", 0, commands(1, 1))])
        bolt = SymbolSpec("BOLT")
        assert journal.ensure_specs([acme, bolt]) == (acme, bolt)
        with pytest.raises(JournalError, match="ACME"):
            journal.ensure_specs([SymbolSpec("ACME", price_max=600, capacity=128)])
    with Journal(tmp_path, readonly=True) as journal:
        assert journal.specs() == (acme, SymbolSpec("BOLT"))
        assert journal.symbols() == ["ACME", "BOLT"]


def test_snapshots_are_whole_pruned_and_damaged_ones_skipped(tmp_path):
    store = SnapshotStore(tmp_path, keep=2)
    for n in (100, 200, 300):
        store.write("ACME", n, 2 * n, bytes([n % 256]) * n)
    assert [p.name for p in store.paths("ACME")] == ["ACME-00000000000000000200.snap", "ACME-00000000000000000300.snap"]
    assert not list(store.dir.glob("*.tmp"))
    latest = store.latest("ACME")
    assert (latest.next_seq, latest.next_event_seq, latest.blob) == (300, 600, bytes([300 % 256]) * 300)
    assert store.latest("ACME", at_most=250).next_seq == 200
    assert store.latest("ACME", at_most_events=500).next_seq == 200
    assert store.latest("ACME", at_most=150) is None
    path = store.paths("ACME")[-1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.latest("ACME").next_seq == 200
    assert store.latest("BOLT") is None
