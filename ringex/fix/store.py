"""The FIX acceptor's persistent state: one LMDB environment under ``<data_dir>/fix-sessions/``.

Written only by the FIX process (``ringex.fix.acceptor``), read by it and by tests.
What it keeps, in named databases:

============  ==================================  ==========================================
database      key                                 value
============  ==================================  ==========================================
sessions      counterparty CompID                 account, next sender/target MsgSeqNum (3 u64 BE)
outbox        CompID, NUL, MsgSeqNum (u64 BE)     an application message as sent (for resends)
orders        order key (u64 BE)                  an ``Order``'s fields (``ringex.fix.orders``)
live          order key                           empty: the orders still open
clordids      account (u64 BE), ClOrdID           order key: every ClOrdID an account used
requests      v1 client_order_id (u64 BE)         a cancel's or replace's ``Request``: unanswered
meta          name                                counters and each symbol's next event
============  ==================================  ==========================================

Orders are pickled tuples of their fields' values (older stores: dicts), requests
pickled dicts: a tuple pickles in under 1 µs, a dict in 2, JSON in 8. Orders are
written on every order's path; only this process writes or reads them.

One write transaction per turn of the acceptor's loop: everything a turn changed
(sequence numbers, sent messages, orders, requests, positions in the event stream) is
committed together, and only then does the turn's output leave the process, so what a
counterparty or the gateway was told is always in the store.

Writes go through LMDB's writable map (``writemap``): a commit is then a memory
store and one page, about 1 µs against 16-20 for writing the dirty pages through the
file descriptor, and the acceptor commits twice on every order's path. The map's file
is sparse, and a page written where the disk has no block left would kill the process
with SIGBUS mid-turn, so the store keeps ``ROOM`` bytes of the file allocated
(``posix_fallocate``) ahead of what it may write: on a full disk a commit raises
``OSError`` (nothing of that turn is committed or sent) and the supervisor restarts the
acceptor, which then says at start-up that the disk is full. A copy-on-write
filesystem (btrfs, ZFS) cannot promise room for overwrites: set ``[fix] store_writemap
= false`` there.

Durability: the environment is opened with ``sync=store_sync`` (``[fix]``). Without
sync (the default, like QuickFIX/J's ``FileStoreSync=N``), a commit is in the page
cache: it survives a crash of any process, not a power cut. The orders themselves are
always as durable as the journal: an execution report is derived from journaled
events, and the acceptor replays the journal from its last committed position.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import lmdb

__all__ = ["FixStore", "SessionRecord", "STORE_DIR"]

STORE_DIR = "fix-sessions"
_U64 = struct.Struct(">Q")
_NUMBERS = struct.Struct(">QQQ")
# Bytes of the map file kept allocated ahead of the used pages (see the module docstring).
ROOM = 16 << 20
_DBS = (b"sessions", b"outbox", b"orders", b"live", b"clordids", b"requests", b"meta")


class SessionRecord:
    """A session's persisted numbers and outbox: the ``SessionStore`` of
    ``ringex.fix.session`` for the acceptor. Changes go into the store's current
    transaction (the numbers when the store commits)."""

    __slots__ = ("store", "comp_id", "account", "next_sender_seq", "next_target_seq", "_prefix", "written")

    def __init__(self, store: FixStore, comp_id: str, account: int, next_sender_seq: int = 1, next_target_seq: int = 1):
        self.store = store
        self.comp_id = comp_id
        self.account = account
        self.next_sender_seq = next_sender_seq
        self.next_target_seq = next_target_seq
        self._prefix = comp_id.encode() + b"\0"
        self.written: tuple[int, int] | None = None  # the numbers last written

    def to_bytes(self) -> bytes:
        # Packed, not JSON: written on every turn that sends or receives a message (a
        # JSON dump cost a fifth of the acceptor's time on the order path).
        return _NUMBERS.pack(self.account, self.next_sender_seq, self.next_target_seq)

    @staticmethod
    def numbers(raw: bytes) -> tuple[int, int, int]:
        """(account, next sender MsgSeqNum, next target MsgSeqNum) as ``to_bytes`` wrote
        them, or as JSON (a store written before they were packed)."""
        if raw[:1] == b"{":
            doc = json.loads(raw)
            return doc["account"], doc["next_sender_seq"], doc["next_target_seq"]
        return _NUMBERS.unpack(raw)

    def save_sent(self, seq: int, raw: bytes) -> None:
        self.store._put(b"outbox", self._prefix + _U64.pack(seq), raw)

    def sent_messages(self, begin: int, end: int) -> Iterator[tuple[int, bytes]]:
        txn = self.store._txn_for_read()
        cursor = txn.cursor(db=self.store._dbs[b"outbox"])
        if not cursor.set_range(self._prefix + _U64.pack(begin)):
            return
        n = len(self._prefix)
        for key, value in cursor:
            if key[:n] != self._prefix:
                return
            seq = _U64.unpack(key[n:])[0]
            if seq > end:
                return
            yield seq, bytes(value)

    def reset(self) -> None:
        """Both numbers back to 1 and the outbox emptied (ResetSeqNumFlag)."""
        self.next_sender_seq = 1
        self.next_target_seq = 1
        txn = self.store._write_txn()
        cursor = txn.cursor(db=self.store._dbs[b"outbox"])
        if cursor.set_range(self._prefix):
            while cursor.key()[: len(self._prefix)] == self._prefix:
                if self.store._file is not None:
                    self.store._spend(0)
                if not cursor.delete():
                    break


class FixStore:
    """The LMDB environment of the FIX acceptor (see the module docstring).

    Resource handling: ``close()`` (or ``with``) commits nothing: call ``commit()``
    first; an open transaction is aborted.
    """

    def __init__(self, data_dir: str | Path, *, sync: bool = False, map_size: int = 1 << 30, writemap: bool = True):
        self.path = Path(data_dir) / STORE_DIR
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=len(_DBS),
            sync=sync,
            metasync=sync,
            writemap=writemap,
        )
        self._dbs = {name: self.env.open_db(name) for name in _DBS}
        self._live = self._live_keys()
        self._txn: lmdb.Transaction | None = None
        self._records: dict[str, SessionRecord] = {}
        self.commits = 0
        self._page = self.env.stat()["psize"]
        self._map_size = self.env.info()["map_size"]
        self._file: int | None = None
        self._allocated = 0  # bytes of the map file allocated on disk, from its start
        self._budget = 1 << 62  # bytes that may still be written before the allocation is topped up
        self._spent = 0  # bytes the open transaction may have written (an upper bound)
        self._failure: OSError | None = None
        if writemap:
            try:
                self._file = os.open(self.path / "data.mdb", os.O_RDWR | os.O_CLOEXEC)
                self._make_room()
            except BaseException:
                self.close()
                raise

    # -- room on disk (writemap) -------------------------------------------------------------

    def _make_room(self) -> None:
        """Allocate the map file up to ``ROOM`` bytes beyond what may be written: the
        committed pages and what the open transaction has spent."""
        used = (self.env.info()["last_pgno"] + 1) * self._page + self._spent
        want = min(used + ROOM, self._map_size)
        if want > self._allocated:
            try:
                os.posix_fallocate(self._file, self._allocated, want - self._allocated)
            except OSError as exc:
                raise OSError(exc.errno, f"no room for the FIX store in {self.path}: {exc.strerror}") from exc
            self._allocated = want
        self._budget = self._allocated - used

    def _spend(self, nbytes: int) -> None:
        # Before LMDB writes: at most a fresh page (and the bytes) per change.
        cost = nbytes + self._page
        self._spent += cost
        self._budget -= cost
        if self._budget < 0:
            # a turn larger than ROOM / 2 (never in practice); if this fails, the
            # transaction must not be committed: commit() raises instead
            try:
                self._make_room()
            except OSError as exc:
                self._failure = exc
                raise

    # -- transactions ----------------------------------------------------------------------

    def _write_txn(self) -> lmdb.Transaction:
        if self._txn is None:
            self._txn = self.env.begin(write=True)
        return self._txn

    def _txn_for_read(self) -> lmdb.Transaction:
        # reads see this turn's writes: the one write transaction, once open
        return self._txn if self._txn is not None else self.env.begin()

    def _put(self, db: bytes, key: bytes, value: bytes) -> None:
        if self._file is not None:
            self._spend(len(key) + len(value))
        self._write_txn().put(key, value, db=self._dbs[db])

    def _get(self, db: bytes, key: bytes) -> bytes | None:
        value = self._txn_for_read().get(key, db=self._dbs[db])
        return None if value is None else bytes(value)

    def _delete(self, db: bytes, key: bytes) -> None:
        if self._file is not None:
            self._spend(0)
        self._write_txn().delete(key, db=self._dbs[db])

    def commit(self) -> None:
        """Write the session numbers and commit everything the turn changed."""
        for record in self._records.values():
            numbers = (record.next_sender_seq, record.next_target_seq)
            if numbers != record.written:
                self._put(b"sessions", record.comp_id.encode(), record.to_bytes())
                record.written = numbers
        if self._failure is not None:
            failure, self._failure = self._failure, None
            if self._txn is not None:
                self._txn.abort()
                self._txn = None
            self._spent = 0
            self._live = self._live_keys()  # as the aborted transaction left them
            raise failure
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self._spent = 0
            self.commits += 1
            if self._file is not None and self._budget < ROOM // 2:
                self._make_room()

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._spent = 0
        if self._file is not None:
            os.close(self._file)
            self._file = None
        self.env.close()

    def __enter__(self) -> FixStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- sessions ----------------------------------------------------------------------------

    def session(self, comp_id: str) -> SessionRecord | None:
        """The record of the session whose counterparty is ``comp_id``, if it ever logged on."""
        record = self._records.get(comp_id)
        if record is not None:
            return record
        raw = self._get(b"sessions", comp_id.encode())
        if raw is None:
            return None
        record = SessionRecord(self, comp_id, *SessionRecord.numbers(raw))
        record.written = (record.next_sender_seq, record.next_target_seq)
        self._records[comp_id] = record
        return record

    def create_session(self, comp_id: str, account: int) -> SessionRecord:
        record = SessionRecord(self, comp_id, account)
        self._records[comp_id] = record
        self._put(b"sessions", comp_id.encode(), record.to_bytes())
        return record

    def sessions(self) -> list[str]:
        with self.env.begin() as txn:
            return [bytes(k).decode() for k, _ in txn.cursor(db=self._dbs[b"sessions"])]

    # -- orders, requests, ClOrdIDs, counters -------------------------------------------------

    def put_order(self, key: int, doc: tuple | dict, live: bool) -> None:
        k = _U64.pack(key)
        self._put(b"orders", k, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))
        # ``live`` changes twice in an order's life; it is written only then
        if live:
            if k not in self._live:
                self._put(b"live", k, b"")
                self._live.add(k)
        elif k in self._live:
            self._delete(b"live", k)
            self._live.discard(k)

    def _live_keys(self) -> set[bytes]:
        """The keys of the open orders, as the store has them."""
        with self.env.begin() as txn:
            return {bytes(k) for k, _ in txn.cursor(db=self._dbs[b"live"])}

    def order(self, key: int) -> tuple | dict | None:
        raw = self._get(b"orders", _U64.pack(key))
        return None if raw is None else pickle.loads(raw)

    def live_orders(self) -> Iterator[tuple | dict]:
        with self.env.begin() as txn:
            orders = self._dbs[b"orders"]
            for key, _ in txn.cursor(db=self._dbs[b"live"]):
                yield pickle.loads(txn.get(key, db=orders))

    def bind_cl_ord_id(self, account: int, cl_ord_id: str, key: int) -> None:
        self._put(b"clordids", _U64.pack(account) + cl_ord_id.encode(), _U64.pack(key))

    def order_key(self, account: int, cl_ord_id: str) -> int | None:
        # In the write transaction, not a read transaction of its own: the lookup is on
        # every order's path, and that turn writes anyway.
        raw = self._write_txn().get(_U64.pack(account) + cl_ord_id.encode(), db=self._dbs[b"clordids"])
        return None if raw is None else _U64.unpack(raw)[0]

    def put_request(self, cid: int, doc: dict) -> None:
        self._put(b"requests", _U64.pack(cid), pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))

    def delete_request(self, cid: int) -> None:
        self._delete(b"requests", _U64.pack(cid))

    def requests(self) -> Iterator[dict]:
        with self.env.begin() as txn:
            for _, value in txn.cursor(db=self._dbs[b"requests"]):
                yield pickle.loads(value)

    def get_int(self, name: str) -> int | None:
        raw = self._get(b"meta", name.encode())
        return None if raw is None else int(raw)

    def put_int(self, name: str, value: int) -> None:
        self._put(b"meta", name.encode(), str(value).encode())
