"""The journal: every command and every event, in LMDB, and the books' snapshot files.

The exchange is a deterministic function of its journaled commands, so this module is
what makes it survive a crash. One process, the journaler, writes; everyone else
(``ringex recover``, ``ringex journal``, a restarting matcher) reads.

Layout of one LMDB environment in ``<data_dir>/journal``:

- ``cmd:<SYMBOL>`` — the symbol's commands. Key = the 8-byte symbol + big-endian u64
  command sequence (its in-ring position), so a range scan replays a symbol in order.
- ``evt:<SYMBOL>`` — the symbol's events. Key = symbol + big-endian u64 event sequence
  (the out-ring position); the record itself carries the sequence of the command that
  caused it.
- ``meta`` — the format tag, the symbol specs the books were sized by (stored at first
  start, so recovery needs only the data directory) and the highest order id journaled
  (the gateway's order-id counter resumes past it).

One database per symbol and kind rather than one per kind: sequences only grow within
a symbol, so every write is an append (``putmulti(append=True)``, about 30% faster
than an ordered insert here, and a duplicate or out-of-order key is refused instead of
overwriting history), and the keys still sort by symbol then sequence.

Each value is the record's bytes followed by a little-endian u32 CRC-32 of key + record
(the same function as ``zlib.crc32``), so a damaged record is found on read and
recovery stops at it, naming the symbol and sequence.

Group commit: ``Journal.commit`` writes everything the journaler found in its rings in
one transaction, so under load the cost of a commit (an fsync, ~0.2 ms here) is shared
by hundreds of records, and when idle a lone record still commits at once.

Snapshots are files, not LMDB records; see ``SnapshotStore`` for why.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb
import numba
import numpy as np

from ringex.codes import Op
from ringex.config import SymbolSpec
from ringex.records import COMMAND, EVENT, decode_symbol, encode_symbol

__all__ = [
    "Journal",
    "JournalError",
    "JournalWriteError",
    "JournalFullError",
    "CorruptRecordError",
    "CommitStats",
    "Snapshot",
    "SnapshotStore",
    "JOURNAL_KEY",
    "journal_path",
]

log = logging.getLogger("ringex.wal")

FORMAT = b"ringex-journal-1"
_RING_BASE = struct.Struct("<qq")
_OP_NEW = int(Op.NEW)  # an IntEnum member costs an attribute lookup per use on the commit path

JOURNAL_KEY = np.dtype([("symbol", "S8"), ("seq", ">u8")])
"""A record's key: big-endian so LMDB's bytewise order is sequence order."""

COMMAND_VALUE = np.dtype({"names": ["record", "crc"], "formats": ["V64", "<u4"], "offsets": [0, 64], "itemsize": 68})
EVENT_VALUE = np.dtype({"names": ["record", "crc"], "formats": ["V128", "<u4"], "offsets": [0, 128], "itemsize": 132})

# LMDB reserves the whole map as address space but the file only grows as it is used,
# so start modest and double on MapFullError; 64 GiB is a cap a test or a config may lower.
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 64 << 30
# Named databases: two per symbol plus meta. 1,000 symbols is far beyond one machine's books.
MAX_DBS = 2048
# Records per read chunk: big enough to amortise a read transaction, small enough that
# a reader never pins many old pages while the journaler keeps writing.
READ_CHUNK = 4096


class JournalError(Exception):
    """Base of the journal's errors."""


class JournalWriteError(JournalError):
    """A commit failed (disk full, I/O error): nothing of this group is in the journal.

    The journaler must stop acknowledging: earlier commits are intact, this group is not
    durable and must not be reported durable."""


class JournalFullError(JournalWriteError):
    """The map would have to grow past ``max_map_size``."""


class CorruptRecordError(JournalError):
    """A record fails its checksum, is truncated, or a sequence is missing."""

    def __init__(self, symbol: str, kind: str, seq: int, problem: str) -> None:
        super().__init__(f"journal {kind} of {symbol}: record {seq} {problem}")
        self.symbol = symbol
        self.kind = kind
        self.seq = seq
        self.problem = problem


# ---------------------------------------------------------------------------------
# Checksums: CRC-32 of key + record for a whole group in one call (zlib.crc32 from a
# Python loop costs ~0.3 us a record, as much as the LMDB write itself).

_CRC_TABLE = np.zeros(256, dtype=np.uint32)
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xEDB88320 if _c & 1 else _c >> 1
    _CRC_TABLE[_i] = _c


@numba.njit(cache=True, nogil=True)
def _crc_rows(keys, records, out, table):  # pragma: no cover - jitted
    """``out[i] = crc32(keys[i] + records[i])``: keys (n, 16) and records (n, size) as uint8."""
    for i in range(records.shape[0]):
        c = np.uint32(0xFFFFFFFF)
        for j in range(keys.shape[1]):
            c = table[(c ^ keys[i, j]) & 0xFF] ^ (c >> 8)
        for j in range(records.shape[1]):
            c = table[(c ^ records[i, j]) & 0xFF] ^ (c >> 8)
        out[i] = c ^ np.uint32(0xFFFFFFFF)


def checksums(keys: np.ndarray, records: np.ndarray) -> np.ndarray:
    """CRC-32 of each key + record pair (equal to ``zlib.crc32(record, zlib.crc32(key))``)."""
    out = np.empty(len(records), dtype=np.uint32)
    if len(records):
        k = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), -1)
        r = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), -1)
        _crc_rows(k, r, out, _CRC_TABLE)
    return out


@numba.njit(cache=True, nogil=True)
def _pack_rows(symbol, first_seq, records, keys, values, table):  # pragma: no cover - jitted
    """Fill ``keys`` (n, 16: symbol, big-endian seq) and ``values`` (n, size + 4:
    record, little-endian CRC-32 of key + record) from ``records`` (n, size), all
    uint8, in one pass: a commit of one record would otherwise spend more time in a
    dozen small numpy calls than in LMDB."""
    size = records.shape[1]
    for i in range(records.shape[0]):
        seq = np.uint64(first_seq + i)
        c = np.uint32(0xFFFFFFFF)
        for j in range(8):
            b = symbol[j]
            keys[i, j] = b
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        for j in range(8):
            b = np.uint8((seq >> np.uint64(56 - 8 * j)) & np.uint64(0xFF))
            keys[i, 8 + j] = b
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        for j in range(size):
            b = records[i, j]
            values[i, j] = b
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        c = c ^ np.uint32(0xFFFFFFFF)
        for j in range(4):
            values[i, size + j] = np.uint8((c >> np.uint32(8 * j)) & np.uint32(0xFF))


@numba.njit(cache=True, nogil=True)
def _pack_commands(symbol, first_seq, records, keys, values, table, op_new):  # pragma: no cover - jitted
    """``_pack_rows`` for COMMAND rows, returning the highest order id of their new
    orders (0 if none): the journal keeps the highest id ever issued, and one pass
    over a one-record group costs less than two calls."""
    _pack_rows(symbol, first_seq, records, keys, values, table)
    return _max_new_order_id(records, op_new)


@numba.njit(cache=True, nogil=True)
def _max_new_order_id(records, op_new):  # pragma: no cover - jitted
    """The highest ``order_id`` among new orders in COMMAND records (n, 64) as uint8; 0 if none."""
    best = np.uint64(0)
    for i in range(records.shape[0]):
        if records[i, 0] == op_new:
            oid = np.uint64(0)
            for j in range(8):
                oid |= np.uint64(records[i, 24 + j]) << np.uint64(8 * j)
            if oid > best:
                best = oid
    return best


def _pack(symbol: np.ndarray, first_seq: int, records: np.ndarray, value_dtype: np.dtype):
    """``(keys, values)`` for ``records``: ``JOURNAL_KEY`` and ``value_dtype`` arrays."""
    n = len(records)
    rows = np.ascontiguousarray(records).view(np.uint8).reshape(n, -1)
    keys = np.empty(n, JOURNAL_KEY)
    values = np.empty(n, value_dtype)
    _pack_rows(
        symbol, first_seq, rows, keys.view(np.uint8).reshape(n, -1), values.view(np.uint8).reshape(n, -1), _CRC_TABLE
    )
    return keys, values


def warm_up() -> None:
    """Compile (or load from numba's cache) the commit and read kernels now, so the
    first command after start is not the one that waits for them."""
    symbol = np.zeros(8, np.uint8)
    for dtype, value_dtype in ((COMMAND, COMMAND_VALUE), (EVENT, EVENT_VALUE)):
        keys, values = _pack(symbol, 0, np.zeros(1, dtype), value_dtype)
        checksums(keys, np.zeros(1, dtype))
    _max_new_order_id(np.zeros((1, COMMAND.itemsize), np.uint8), _OP_NEW)
    rows = np.zeros((1, COMMAND.itemsize), np.uint8)
    _pack_commands(
        symbol,
        0,
        rows,
        np.empty((1, 16), np.uint8),
        np.empty((1, COMMAND_VALUE.itemsize), np.uint8),
        _CRC_TABLE,
        _OP_NEW,
    )


def _keys(symbol: bytes, first_seq: int, n: int) -> np.ndarray:
    keys = np.empty(n, dtype=JOURNAL_KEY)
    keys["symbol"] = symbol
    keys["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    return keys


# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CommitStats:
    """What one ``Journal.commit`` wrote."""

    commands: int
    events: int
    map_grown: bool


def journal_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "journal"


class Journal:
    """The LMDB journal of one data directory.

    Open it once per process (LMDB's rule): ``Journal(data_dir)`` is the journaler's
    writing handle, ``Journal(data_dir, readonly=True)`` a reader that is safe while
    the journaler runs (it takes a reader slot in LMDB's lock file, so the writer never
    reuses pages it is reading).

    Durability modes (``Config.durability``):

    - ``fsync`` (the default): LMDB flushes data and meta page at every commit. A
      commit that returned survives a process crash, a kernel crash and a power cut.
    - ``async``: no flush at commit; the write is in the OS page cache when commit
      returns. It survives a crash of any ringex process (the kernel still holds and
      later writes the pages) but not a kernel crash or power cut, which may lose the
      latest commits (LMDB's NOSYNC warning: the file may even need restoring from a
      replica). ``close()`` flushes, so a clean shutdown loses nothing.

    Error handling: a failed write raises ``JournalWriteError`` and leaves the journal
    as it was before the group; a damaged record raises ``CorruptRecordError`` on read.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        readonly: bool = False,
        durability: str = "fsync",
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> None:
        if durability not in ("fsync", "async"):
            raise ValueError(f"durability must be fsync or async, got {durability!r}")
        self.path = journal_path(data_dir)
        self.readonly = readonly
        self.durability = durability
        self.max_map_size = max_map_size
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise FileNotFoundError(f"no journal in {data_dir} (expected {self.path}/data.mdb)")
            # lock=True: a reader must register in the lock file while the journaler writes.
            # The journaler may grow the map between our open and its first read
            # transaction (MapResizedError): open again, which maps the new size.
            for attempt in range(5):
                try:
                    self.env = lmdb.open(str(self.path), readonly=True, lock=True, max_dbs=MAX_DBS, map_size=map_size)
                    break
                except lmdb.MapResizedError:
                    if attempt == 4:
                        raise
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            sync = durability == "fsync"
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=MAX_DBS,
                sync=sync,
                metasync=sync,
                # Page-cache writes by the file descriptor, not a writable map: a stray
                # write through the map could corrupt the journal, and a full disk is
                # then an error from commit rather than a SIGBUS.
                writemap=False,
                readahead=False,
            )
        self._dbs: dict[bytes, object] = {}
        self._next: dict[bytes, int] = {}
        if readonly:
            self._meta = self._db(b"meta", create=False)
            if self._meta is None:
                raise FileNotFoundError(f"{self.path} is not a ringex journal (no meta database)")
        else:
            self._meta = self._db(b"meta", create=True)
            with self.env.begin(write=True, db=self._meta) as txn:
                found = txn.get(b"format")
                if found is None:
                    txn.put(b"format", FORMAT)
                elif found != FORMAT:
                    raise JournalError(f"{self.path}: journal format {found!r}, this version reads {FORMAT!r}")
        self._max_order_id = self._read_max_order_id()
        if not readonly:
            self.clear_stale_readers()

    def clear_stale_readers(self) -> int:
        """Free reader slots of dead processes (a ``journal dump`` killed mid-read): a
        stale slot pins the pages of its old snapshot, so the file would only grow."""
        return self.env.reader_check()

    # -- plumbing --------------------------------------------------------------

    def close(self) -> None:
        if self.env is not None:
            if not self.readonly and self.durability == "async":
                self.env.sync(True)
            self.env.close()
            self.env = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _db(self, name: bytes, create: bool):
        db = self._dbs.get(name)
        if db is None:
            if self.readonly:
                try:
                    db = self.env.open_db(name, create=False)
                except lmdb.NotFoundError:
                    return None
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)
                    return self._db(name, create)
            else:
                db = self.env.open_db(name, create=create)
            self._dbs[name] = db
        return db

    def _read_txn(self):
        try:
            return self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            # The journaler grew the map past ours: adopt its size (LMDB: set_mapsize(0)).
            self.env.set_mapsize(0)
            return self.env.begin(buffers=False)

    @staticmethod
    def _name(kind: str, symbol: str) -> bytes:
        return f"{kind}:{symbol}".encode("ascii")

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _symbol_bytes(symbol: str) -> np.ndarray:
        """The symbol's 8 key bytes, for ``_pack_rows``."""
        return np.frombuffer(encode_symbol(symbol), dtype=np.uint8)

    # -- metadata --------------------------------------------------------------

    def specs(self) -> tuple[SymbolSpec, ...]:
        """The symbol specs stored at first start (empty if none were stored yet)."""
        with self._read_txn() as txn:
            raw = txn.get(b"specs", db=self._meta)
        if raw is None:
            return ()
        return tuple(SymbolSpec(**fields) for fields in json.loads(raw))

    def ensure_specs(self, specs: Sequence[SymbolSpec]) -> tuple[SymbolSpec, ...]:
        """Store ``specs`` at first start; afterwards add new symbols, keep journaled ones.

        A journaled symbol keeps the spec its history was matched with: replay must size
        the book exactly as it was, so a changed band or capacity in the config is
        refused with an error naming the symbol rather than silently replayed wrongly.
        """
        stored = {s.name: s for s in self.specs()}
        for spec in specs:
            old = stored.get(spec.name)
            if old is not None and old != spec and self.next_seq(spec.name) > 0:
                raise JournalError(
                    f"symbol {spec.name}: config {spec} differs from the journaled spec {old}; "
                    "its history was matched with the journaled one"
                )
            stored[spec.name] = spec
        merged = tuple(stored.values())
        if merged != self.specs():
            with self.env.begin(write=True, db=self._meta) as txn:
                txn.put(b"specs", json.dumps([dataclasses.asdict(s) for s in merged]).encode())
        return merged

    def symbols(self) -> list[str]:
        return [s.name for s in self.specs()]

    def _read_max_order_id(self) -> int:
        with self._read_txn() as txn:
            raw = txn.get(b"max_order_id", db=self._meta)
        return 0 if raw is None else struct.unpack("<Q", raw)[0]

    def max_order_id(self) -> int:
        """The highest exchange order id of any journaled new order (0 if none): the
        gateway's counter resumes past it."""
        if self.readonly:
            self._max_order_id = self._read_max_order_id()
        return self._max_order_id

    def get_meta(self, key: bytes) -> bytes | None:
        with self._read_txn() as txn:
            return txn.get(key, db=self._meta)

    def put_meta(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True, db=self._meta) as txn:
            txn.put(key, value)

    def ring_base(self, kind: str, symbol: str) -> tuple[int, int] | None:
        """``(ring created_ns, journal seq of ring seq 0)`` the journaler last used for
        the symbol's ``cmd`` (in) or ``evt`` (out) ring; see ``ringex.journal.journaler``."""
        raw = self.get_meta(f"ring-base:{kind}:{symbol}".encode())
        return None if raw is None else _RING_BASE.unpack(raw)

    def set_ring_base(self, kind: str, symbol: str, created_ns: int, base: int) -> None:
        self.put_meta(f"ring-base:{kind}:{symbol}".encode(), _RING_BASE.pack(created_ns, base))

    # -- sequences -------------------------------------------------------------

    def _last_seq(self, name: bytes, txn=None) -> int:
        db = self._db(name, create=False) if self.readonly else self._db(name, create=True)
        if db is None:
            return -1
        if txn is None:
            with self._read_txn() as txn:
                return self._last_seq(name, txn)
        cur = txn.cursor(db=db)
        if not cur.last():
            return -1
        return int(np.frombuffer(cur.key(), dtype=JOURNAL_KEY)[0]["seq"])

    def ends(self, symbol: str) -> tuple[int, int]:
        """``(next_seq, next_event_seq)`` read in one transaction: a consistent cut while
        the journaler writes (every event below the second has its command below the first)."""
        cmd, evt = self._name("cmd", symbol), self._name("evt", symbol)
        self._db(cmd, create=not self.readonly)
        self._db(evt, create=not self.readonly)
        with self._read_txn() as txn:
            return self._last_seq(cmd, txn) + 1, self._last_seq(evt, txn) + 1

    def next_seq(self, symbol: str) -> int:
        """The sequence the symbol's next command will have: the count of journaled commands."""
        return self._next_of(self._name("cmd", symbol))

    def next_event_seq(self, symbol: str) -> int:
        """The sequence the symbol's next event will have."""
        return self._next_of(self._name("evt", symbol))

    def _next_of(self, name: bytes) -> int:
        if self.readonly or name not in self._next:
            self._next[name] = self._last_seq(name) + 1
        return self._next[name]

    # -- writing ---------------------------------------------------------------

    def commit(
        self,
        commands: Sequence[tuple[str, int, np.ndarray]] = (),
        events: Sequence[tuple[str, int, np.ndarray]] = (),
    ) -> CommitStats:
        """Append one group in one transaction: ``(symbol, first_seq, records)`` segments.

        Segments of one symbol must continue exactly where its journal ends (a gap or an
        overlap is a bug upstream and raises ``JournalError`` before anything is written).
        If the map is full, the transaction is aborted, the map doubled and the same
        group retried; past ``max_map_size`` it raises ``JournalFullError``. Any other
        LMDB or OS error raises ``JournalWriteError``. Either way nothing of the group
        is journaled and earlier groups are untouched.
        """
        if self.readonly:
            raise JournalError("journal opened read-only")
        puts = []  # (db name, first seq, keys, values)
        expected: dict[bytes, int] = {}
        max_oid = self._max_order_id
        n_cmd = n_evt = 0
        for kind, segments, value_dtype, dtype in (
            ("cmd", commands, COMMAND_VALUE, COMMAND),
            ("evt", events, EVENT_VALUE, EVENT),
        ):
            for symbol, first_seq, records in segments:
                if not len(records):
                    continue
                if records.dtype.itemsize != dtype.itemsize:
                    raise JournalError(f"{kind} records of {symbol} have itemsize {records.dtype.itemsize}")
                name = self._name(kind, symbol)
                want = expected.get(name, self._next_of(name))
                if first_seq != want:
                    raise JournalError(
                        f"{kind} of {symbol}: segment starts at {first_seq}, journal continues at {want}"
                    )
                expected[name] = first_seq + len(records)
                keys, values = _pack(self._symbol_bytes(symbol), first_seq, records, value_dtype)
                puts.append((name, keys, values))
                if kind == "cmd":
                    n_cmd += len(records)
                    rows = values.view(np.uint8).reshape(len(values), -1)
                    max_oid = max(max_oid, int(_max_new_order_id(rows, _OP_NEW)))
                else:
                    n_evt += len(records)
        if not puts:
            return CommitStats(0, 0, False)
        grown = False
        while True:
            try:
                self._write(puts, max_oid)
                break
            except lmdb.MapFullError:
                grown = True
                self._grow()
            except lmdb.Error as exc:
                raise JournalWriteError(f"journal commit failed: {type(exc).__name__}: {exc}") from exc
            except OSError as exc:
                raise JournalWriteError(f"journal commit failed: {exc}") from exc
        self._next.update(expected)
        self._max_order_id = max_oid
        return CommitStats(n_cmd, n_evt, grown)

    def segment_name(self, kind: str, symbol: str) -> bytes:
        """The database name a ``commit_rows`` segment of ``kind`` ("cmd"/"evt") and
        ``symbol`` goes to; it also looks the journal's end up, once."""
        name = self._name(kind, symbol)
        self._next_of(name)
        return name

    def commit_rows(self, commands, events) -> tuple[int, int]:
        """``commit`` for the journaler's hot path: segments are ``(name, symbol bytes
        (uint8[8]), first_seq, rows)`` with ``name`` from ``segment_name`` and ``rows``
        the records as a uint8 matrix (n, record size), straight out of a ring. The same
        checks, one jitted pass per segment, no structured views. Returns the number of
        (commands, events) committed."""
        if self.readonly:
            raise JournalError("journal opened read-only")
        nxt = self._next
        expected: dict[bytes, int] = {}
        max_oid = self._max_order_id
        puts = []
        counts = [0, 0]
        for which, segments in enumerate((commands, events)):
            value_size = COMMAND_VALUE.itemsize if which == 0 else EVENT_VALUE.itemsize
            for name, symbol, first_seq, rows in segments:
                n = rows.shape[0]
                if not n:
                    continue
                want = expected.get(name, nxt[name])
                if first_seq != want:
                    raise JournalError(f"{name.decode()}: segment starts at {first_seq}, journal continues at {want}")
                expected[name] = first_seq + n
                keys = np.empty((n, JOURNAL_KEY.itemsize), np.uint8)
                values = np.empty((n, value_size), np.uint8)
                if which == 0:
                    oid = int(_pack_commands(symbol, first_seq, rows, keys, values, _CRC_TABLE, _OP_NEW))
                    if oid > max_oid:
                        max_oid = oid
                else:
                    _pack_rows(symbol, first_seq, rows, keys, values, _CRC_TABLE)
                puts.append(
                    (name, keys.reshape(-1).view(f"V{JOURNAL_KEY.itemsize}"), values.reshape(-1).view(f"V{value_size}"))
                )
                counts[which] += n
        if puts:
            while True:
                try:
                    self._write(puts, max_oid)
                    break
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.Error as exc:
                    raise JournalWriteError(f"journal commit failed: {type(exc).__name__}: {exc}") from exc
                except OSError as exc:
                    raise JournalWriteError(f"journal commit failed: {exc}") from exc
            nxt.update(expected)
            self._max_order_id = max_oid
        return counts[0], counts[1]

    def _write(self, puts, max_oid: int) -> None:
        with self.env.begin(write=True) as txn:
            for name, keys, values in puts:
                db = self._dbs[name]  # opened by _next_of before the write txn: LMDB's lock is not re-entrant
                # opaque (void) views: tolist gives one bytes object per record
                if keys.dtype.names is not None:
                    keys = keys.view(f"V{JOURNAL_KEY.itemsize}")
                if values.dtype.names is not None:
                    values = values.view(f"V{values.dtype.itemsize}")
                items = zip(keys.tolist(), values.tolist(), strict=True)
                consumed, added = txn.cursor(db=db).putmulti(items, dupdata=False, overwrite=False, append=True)
                if added != len(keys):
                    # append=True refuses a key not above the last one: history is never rewritten.
                    raise JournalError(f"{name.decode()}: only {added} of {len(keys)} records appended (key exists)")
            if max_oid != self._max_order_id:
                txn.put(b"max_order_id", struct.pack("<Q", max_oid), db=self._meta)

    def _grow(self) -> None:
        size = self.env.info()["map_size"]
        if size >= self.max_map_size:
            raise JournalFullError(f"journal map is full at {size} bytes (max_map_size {self.max_map_size})")
        new = min(size * 2, self.max_map_size)
        log.info("journal map full at %d bytes: growing to %d", size, new)
        self.env.set_mapsize(new)

    @property
    def map_size(self) -> int:
        return self.env.info()["map_size"]

    # -- reading ---------------------------------------------------------------

    def read_commands(
        self, symbol: str, from_seq: int = 0, to_seq: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Chunks ``(first_seq, COMMAND records)`` of the symbol's commands from ``from_seq`` up
        to but excluding ``to_seq``, checksums verified; a bad record raises ``CorruptRecordError``."""
        return self._read("cmd", symbol, from_seq, to_seq, COMMAND_VALUE, COMMAND)

    def read_events(
        self, symbol: str, from_seq: int = 0, to_seq: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Chunks ``(first_event_seq, EVENT records)``, as ``read_commands``."""
        return self._read("evt", symbol, from_seq, to_seq, EVENT_VALUE, EVENT)

    def _read(self, kind, symbol, from_seq, to_seq, value_dtype, dtype):
        db = (
            self._db(self._name(kind, symbol), create=False)
            if self.readonly
            else self._db(self._name(kind, symbol), True)
        )
        if db is None:
            return
        sym8 = encode_symbol(symbol)
        seq = from_seq
        while to_seq is None or seq < to_seq:
            want = READ_CHUNK if to_seq is None else min(READ_CHUNK, to_seq - seq)
            keys, values = [], []
            # One short read transaction per chunk, so a slow reader never pins old pages.
            with self._read_txn() as txn:
                cur = txn.cursor(db=db)
                if not cur.set_range(bytes(_keys(sym8, seq, 1).view("V16")[0])):
                    break
                for key, value in cur:
                    keys.append(key)
                    values.append(value)
                    if len(keys) == want:
                        break
            if not keys:
                break
            yield seq, _check_chunk(kind, symbol, seq, keys, values, value_dtype, dtype)
            seq += len(keys)
            if len(keys) < want:
                break


def _check_chunk(kind, symbol, first_seq, keys, values, value_dtype, dtype) -> np.ndarray:
    n = len(keys)
    raw_keys = b"".join(keys)
    if len(raw_keys) != n * JOURNAL_KEY.itemsize:
        bad = next(i for i, k in enumerate(keys) if len(k) != JOURNAL_KEY.itemsize)
        raise CorruptRecordError(symbol, kind, first_seq + bad, "has a malformed key")
    karr = np.frombuffer(raw_keys, dtype=JOURNAL_KEY)
    expected = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    wrong = np.flatnonzero((karr["seq"] != expected) | (karr["symbol"] != encode_symbol(symbol).rstrip(b"\0")))
    if len(wrong):
        i = int(wrong[0])
        raise CorruptRecordError(
            symbol,
            kind,
            first_seq + i,
            f"is missing (found key {decode_symbol(karr[i]['symbol'])}/{int(karr[i]['seq'])})",
        )
    raw = b"".join(values)
    if len(raw) != n * value_dtype.itemsize:
        bad = next(i for i, v in enumerate(values) if len(v) != value_dtype.itemsize)
        raise CorruptRecordError(symbol, kind, first_seq + bad, f"is truncated ({len(values[bad])} bytes)")
    varr = np.frombuffer(raw, dtype=value_dtype)
    records = np.ascontiguousarray(varr["record"]).view(dtype)
    bad = np.flatnonzero(checksums(karr, records) != varr["crc"])
    if len(bad):
        raise CorruptRecordError(symbol, kind, first_seq + int(bad[0]), "fails its checksum")
    return records


# ---------------------------------------------------------------------------------
# Snapshots


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A book as it was after ``next_seq`` commands and ``next_event_seq`` events of its symbol."""

    symbol: str
    next_seq: int
    next_event_seq: int
    blob: bytes
    path: Path


_SNAP_HEADER = struct.Struct("<8s8sQQQI4x")  # magic, symbol, next_seq, next_event_seq, length, crc32
_SNAP_MAGIC = b"RXSNAP01"


class SnapshotStore:
    """Book snapshots as files ``<data_dir>/snapshots/<SYMBOL>-<next_seq>.snap``.

    Why files and not the LMDB journal: the journaler must stay the only LMDB writer
    (one writer means no write-lock contention on the commit path, and one place that
    decides durability), while the snapshot is taken by the matcher, which owns the
    book. Shipping a book of several megabytes through a ring of fixed 64/128-byte
    slots would stall the events behind it. A file written by the matcher itself, off
    the journaler's path, costs the hot path nothing.

    Atomicity: the matcher writes ``.tmp``, fsyncs it, renames it into place and fsyncs
    the directory, so a snapshot file is whole or absent; each carries a CRC-32 of its
    bytes, and a damaged one is skipped in favour of an older one (or a full replay).

    A snapshot may cover commands the journal never made durable (the matcher runs
    ahead of the journaler); recovery therefore takes the latest snapshot whose
    ``next_seq`` is at most the journal's ``next_seq`` for that symbol, and a restarting
    matcher discards the ones beyond it (``discard_after``): after a crash the same
    sequences are given to new commands, and an old snapshot of them would lie.
    """

    def __init__(self, data_dir: str | os.PathLike[str], keep: int = 3) -> None:
        self.dir = Path(data_dir) / "snapshots"
        self.keep = keep

    def write(self, symbol: str, next_seq: int, next_event_seq: int, blob: bytes) -> Path:
        """Atomically store a snapshot of ``symbol``'s book and prune all but the newest ``keep``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = bytes(blob)
        header = _SNAP_HEADER.pack(
            _SNAP_MAGIC, encode_symbol(symbol), next_seq, next_event_seq, len(blob), zlib.crc32(blob)
        )
        final = self.dir / f"{symbol}-{next_seq:020d}.snap"
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        for old in self.paths(symbol)[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def discard_after(self, symbol: str, next_seq: int) -> list[Path]:
        """Delete the symbol's snapshots with ``next_seq`` above ``next_seq`` (the journal's
        end when the matcher restarts): they describe commands that never became durable.
        Kept, they would look valid once new, *different* commands reach those sequences."""
        gone = []
        for path in self.paths(symbol):
            try:
                covered = int(path.stem.rsplit("-", 1)[1])
            except (IndexError, ValueError):
                continue
            if covered > next_seq:
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def paths(self, symbol: str) -> list[Path]:
        """The symbol's snapshot files, oldest first."""
        if not self.dir.exists():
            return []
        return sorted(self.dir.glob(f"{symbol}-*.snap"))

    def load(self, path: Path) -> Snapshot:
        data = path.read_bytes()
        if len(data) < _SNAP_HEADER.size:
            raise ValueError(f"{path}: truncated header")
        magic, sym, next_seq, next_event_seq, length, crc = _SNAP_HEADER.unpack_from(data)
        blob = data[_SNAP_HEADER.size :]
        if magic != _SNAP_MAGIC:
            raise ValueError(f"{path}: not a ringex snapshot")
        if len(blob) != length or zlib.crc32(blob) != crc:
            raise ValueError(f"{path}: damaged (length or checksum mismatch)")
        return Snapshot(decode_symbol(sym), next_seq, next_event_seq, blob, path)

    def latest(self, symbol: str, at_most: int | None = None, at_most_events: int | None = None) -> Snapshot | None:
        """The newest intact snapshot with ``next_seq <= at_most`` and
        ``next_event_seq <= at_most_events``, or None."""
        for path in reversed(self.paths(symbol)):
            try:
                snap = self.load(path)
            except (OSError, ValueError) as exc:
                log.warning("skipping snapshot: %s", exc)
                continue
            if (at_most is None or snap.next_seq <= at_most) and (
                at_most_events is None or snap.next_event_seq <= at_most_events
            ):
                return snap
        return None
