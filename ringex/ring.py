"""A single-producer, multi-consumer ring of fixed-size numpy records in POSIX shared memory.

This is the disruptor every stage of the exchange talks through. One shared-memory
object holds a header and ``capacity`` slots of one structured dtype; the slot of
sequence ``seq`` is ``seq & (capacity - 1)``.

Cursors follow the Disruptor convention: each is the *last* sequence published (the
producer's) or consumed (a consumer's), and a new ring starts them all at -1. So the
first record is sequence 0, a consumer has ``producer - cursor`` records to read, and
``Consumer.cursor + 1`` is the next sequence it will see.

Header layout (int64 words; each cursor on its own 64-byte line so a writer never
shares a cache line with another writer):

====== ===================================================================
bytes  contents
====== ===================================================================
0      magic, version, consumer count, capacity, itemsize, dtype checksum,
       slot offset, creation time
64     creator: pid, process start time, boot id (to tell a stale ring)
128    producer line: cursor, sleeping flag, pid, doorbell, watch mask
192    8 consumer lines: cursor, sleeping flag, pid, gate mask, doorbell, name
4096   the slots
====== ===================================================================

Parts, named as in the Disruptor:

- ``Ring``: create / attach / close / unlink the shared memory, ``statistics()``.
- ``Producer``: the single producer. ``claim(n)`` -> ``Batch`` of writable slots,
  ``publish(hi)``; ``write(records)`` does both.
- ``Consumer``: one named consumer (a sequence barrier plus its cursor).
  ``wait_for(seq)``, ``poll()``, ``wait_batch()`` -> ``Batch``, ``commit(hi)``.
  A consumer gated on others (``gating={"notifier": ["journaler"]}``) never sees past
  the slowest of them.
- wait strategies in ``ringex.wait``; blocking is the default.
- doorbells: a waiter that serves several rings from one thread (the journaler, a
  matcher shard, the gateway's durability watch) is given, when the rings are
  created, one semaphore shared by all of them (``doorbells=``,
  ``producer_doorbell=``), and sleeps on all at once with ``ringex.wait.Doorbell``
  over their ``sleeper``s. The header keeps a 64-bit hash of the doorbell's name; the
  semaphore is ``/ringex-bell.<hash>``. A waiter that is an event loop gets a
  ``PipeDoorbell`` instead (a FIFO ``/dev/shm/ringex-bell.<hash>.pipe`` its selector
  watches). ``Ring.remove`` leaves doorbells alone (other rings may still ring them):
  ``Ring.remove_doorbell`` removes one.

Cursors are read and written from Python through a ``memoryview`` on the header (a
third cheaper than a numpy scalar here), never inside numba code, which could hoist
the load out of a spin loop. Aligned int64 loads and stores are atomic on x86-64.
Slot views may be handed to jitted kernels; cursors may not.

Event-loop processes (the trio notifier, the selectors gateway) must not block their
loop on a semaphore. Use ``Consumer.poll()``, which never waits, or run
``Consumer.wait_for(seq, timeout)`` in a worker thread (it releases the GIL while it
sleeps), e.g. ``await trio.to_thread.run_sync(consumer.wait_for, seq, 0.05,
abandon_on_cancel=True)``, then ``poll()`` and ``commit()`` back on the loop. The
timeout bounds how long an abandoned thread lingers; while it does, a second wait on
the same consumer shares its sleeping flag and may notice a publish up to one
``MAX_SLEEP_S`` late, never lose it. A producer on an event loop uses ``try_claim``,
and may run ``Producer.wait_for_consumer`` (the gateway waiting for the journaler) in
a worker thread.

Stale rings: the header names the creating process (pid, start time, boot id). A ring
whose creator is dead is stale, whoever else still maps it; ``Ring.create(...,
replace_stale=True)`` and ``Ring.remove_stale`` replace or remove only such rings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import posix_ipc

from ringex.wait import BlockingWait, Doorbell, PipeSemaphore, Sleeper, WaitStrategy, Waker

__all__ = [
    "Ring",
    "Producer",
    "Consumer",
    "ConsumerSet",
    "PipeDoorbell",
    "Batch",
    "RingStatistics",
    "ConsumerStatistics",
    "RingError",
    "RingNotFoundError",
    "RingExistsError",
    "RingOwnerAliveError",
    "RingMismatchError",
    "RingConfigError",
    "RingCapacityError",
    "UnknownConsumerError",
    "RingTimeout",
    "RingClosedError",
    "MAX_CONSUMERS",
    "CONSUMER_NAME_LEN",
    "VERSION",
]

MAGIC = int.from_bytes(b"RINGEX\x00\x01", "little")
VERSION = 3
MAX_CONSUMERS = 8
CONSUMER_NAME_LEN = 24
LINE = 64
# Slots start on a page of their own: the header's hot cursor lines never share a
# page (or a cache line) with slot data, and the slots are page-aligned for numpy.
SLOTS_OFFSET = 4096
# Where Linux shows POSIX shared memory objects as files (for ``Ring.names``).
SHM_DIR = "/dev/shm"
# A ring's shared memory and its semaphores share this limit (NAME_MAX minus the
# "sem." prefix and the longest semaphore suffix).
MAX_NAME_LEN = 200

_CONSUMER_LINE = np.dtype(
    {
        "names": ["cursor", "sleeping", "pid", "gate_mask", "bell", "name"],
        "formats": ["<i8", "<i8", "<i8", "<u8", "<u8", f"S{CONSUMER_NAME_LEN}"],
        "offsets": [0, 8, 16, 24, 32, 40],
        "itemsize": LINE,
    }
)

HEADER = np.dtype(
    {
        "names": [
            "magic", "version", "n_consumers", "capacity", "itemsize", "dtype_hash", "slots_offset", "created_ns",
            "creator_pid", "creator_start", "boot_id",
            "producer_cursor", "producer_sleeping", "producer_pid", "producer_bell", "producer_watch",
            "consumers",
        ],
        "formats": [
            "<u8", "<u4", "<u4", "<i8", "<i8", "<u8", "<i8", "<i8",
            "<i8", "<i8", "<u8",
            "<i8", "<i8", "<i8", "<u8", "<i8",
            (_CONSUMER_LINE, (MAX_CONSUMERS,)),
        ],
        "offsets": [0, 8, 12, 16, 24, 32, 40, 48, 64, 72, 80, 128, 136, 144, 152, 160, 192],
        "itemsize": 192 + MAX_CONSUMERS * LINE,
    }
)  # fmt: skip

# Word (int64) indices of the fields touched on the hot path.
_W_PRODUCER_CURSOR = 128 // 8
_W_PRODUCER_SLEEPING = 136 // 8
# Which consumers' commits should wake a sleeping producer (bit i: consumer i): the
# leaves while it waits for space, one consumer while it waits for that one (the
# gateway for the journaler), so other commits do not wake it for nothing.
_W_PRODUCER_WATCH = 160 // 8


def _w_cursor(i: int) -> int:
    return (192 + i * LINE) // 8


def _w_sleeping(i: int) -> int:
    return (192 + i * LINE + 8) // 8


#### Errors


class RingError(Exception):
    """Base of every error the ring raises."""


class RingNotFoundError(RingError, FileNotFoundError):
    """No ring of that name exists."""


class RingExistsError(RingError, FileExistsError):
    """``Ring.create`` found a ring of that name already there."""


class RingOwnerAliveError(RingExistsError):
    """``replace_stale=True`` refused: the process that created the ring is alive."""


class RingMismatchError(RingError):
    """The ring is not what the attacher expects: magic, version, dtype or size differ."""


class RingConfigError(RingError, ValueError):
    """A bad argument to ``Ring.create``: name, consumers or gating."""


class RingCapacityError(RingConfigError):
    """Capacity is not a power of two >= 2."""


class UnknownConsumerError(RingError, LookupError):
    """No consumer of that name is registered in the ring's header."""


class RingClosedError(RingError, ValueError):
    """This process closed the ring; its producer and consumers can do no more. (Cursor
    reads after close raise ``ValueError`` from the released view.)"""


class RingTimeout(RingError, TimeoutError):
    """``Producer.claim`` waited ``timeout`` seconds for space and got none."""


#### Process identity, to tell a stale ring from a live one


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def _boot_id() -> int:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            return _hash64(fh.read().strip())
    except OSError:
        return 0


def _process_alive(pid: int, start: int, boot: int) -> bool:
    """Whether the process that wrote (pid, start, boot) still runs. A zombie (killed
    but not yet reaped) is dead; so is a reused pid with another start time."""
    if pid <= 0 or boot != _boot_id():
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, started = stat
    return state not in ("Z", "X") and started == start


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def dtype_hash(dtype: np.dtype) -> int:
    """A 64-bit checksum of a slot dtype's layout: names, formats, offsets, itemsize."""
    dtype = np.dtype(dtype)
    return _hash64(repr((dtype.descr, dtype.itemsize)).encode())


#### Names


def _shm_name(name: str) -> str:
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or len(bare) > MAX_NAME_LEN or not bare.isprintable():
        raise RingConfigError(f"ring name {name!r}: must be 1-{MAX_NAME_LEN} printable characters without '/'")
    return "/" + bare


def _sem_names(shm_name: str) -> tuple[str, list[str]]:
    """The producer's and each consumer slot's semaphore names, derived from the ring's."""
    return f"{shm_name}.wp", [f"{shm_name}.w{i}" for i in range(MAX_CONSUMERS)]


@dataclasses.dataclass(frozen=True)
class PipeDoorbell:
    """Names a doorbell for an event loop: a FIFO its selector can watch, not a
    semaphore (``ringex.wait.PipeSemaphore``). A plain string names a semaphore."""

    name: str


_PIPE_BIT = 1 << 63


def _bell_id(doorbell: str | PipeDoorbell) -> int:
    name = doorbell.name if isinstance(doorbell, PipeDoorbell) else doorbell
    if not name or not isinstance(name, str) or not name.isprintable():
        raise RingConfigError(f"doorbell name {name!r}: must be printable and not empty")
    bell = (_hash64(name.encode()) & ~_PIPE_BIT) or 1  # 0 means "no doorbell"
    return bell | _PIPE_BIT if isinstance(doorbell, PipeDoorbell) else bell


def _bell_sem_name(bell: int) -> str:
    return f"/ringex-bell.{bell:016x}"


def _bell_pipe_path(bell: int) -> str:
    return os.path.join(SHM_DIR, f"ringex-bell.{bell:016x}.pipe")


def _make_bell(bell: int) -> None:
    """Create doorbell ``bell`` unless a ring of its group already did."""
    if bell & _PIPE_BIT:
        try:
            os.mkfifo(_bell_pipe_path(bell), 0o600)
        except FileExistsError:
            pass
    else:
        posix_ipc.Semaphore(_bell_sem_name(bell), posix_ipc.O_CREAT, mode=0o600, initial_value=0).close()


def _open_bell(bell: int):
    if bell & _PIPE_BIT:
        try:
            return PipeSemaphore(_bell_pipe_path(bell))
        except FileNotFoundError as exc:
            raise posix_ipc.ExistentialError(str(exc)) from None
    return posix_ipc.Semaphore(_bell_sem_name(bell))


def _unlink_quietly(unlink, name: str) -> bool:
    try:
        unlink(name)
        return True
    except posix_ipc.ExistentialError:
        return False


#### Batch


class Batch:
    """Consecutive sequences ``lo..hi`` as at most two numpy views into the slots: one,
    or two when the run wraps past the end of the ring. Empty when ``hi < lo``.

    A producer's batch is writable; a consumer's views are valid until it commits
    past them (after that the producer may overwrite them): copy what you keep.
    """

    __slots__ = ("lo", "hi", "first", "second", "_raw")

    def __init__(self, lo: int, hi: int, first: np.ndarray, second: np.ndarray, raw: np.ndarray | None = None) -> None:
        self.lo = lo
        self.hi = hi
        self.first = first
        self.second = second
        self._raw = raw  # all the ring's slots as opaque bytes, for fill's fast copy

    def __len__(self) -> int:
        return self.hi - self.lo + 1

    def __bool__(self) -> bool:
        return self.hi >= self.lo

    def __repr__(self) -> str:
        return f"Batch(lo={self.lo}, hi={self.hi}, parts={len(self.first)}+{len(self.second)})"

    @property
    def views(self) -> tuple[np.ndarray, ...]:
        return (self.first, self.second) if len(self.second) else (self.first,)

    def segments(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first sequence, view)`` for each part."""
        yield self.lo, self.first
        if len(self.second):
            yield self.lo + len(self.first), self.second

    def fill(self, records: np.ndarray) -> None:
        """Copy ``len(self)`` records into the slots with at most two slice assignments.

        Records of the ring's own dtype are copied as opaque bytes: numpy copies a
        structured dtype field by field, 10x slower here (10 µs for one 64-byte record,
        42 µs for 256, against 2.4 and 3).
        """
        n = len(self)
        if len(records) != n:
            raise ValueError(f"fill of {len(records)} records into a batch of {n}")
        split = len(self.first)
        raw = self._raw
        if raw is not None and records.dtype == self.first.dtype:
            records = records.view(raw.dtype)
            start = self.lo & (len(raw) - 1)
            if split == n:
                raw[start : start + n] = records
            else:
                raw[start:] = records[:split]
                raw[: n - split] = records[split:]
        elif split == n:
            self.first[:] = records
        else:
            self.first[:] = records[:split]
            self.second[:] = records[split:]

    def to_array(self) -> np.ndarray:
        """A copy of the records, in sequence order, byte for byte: copied as opaque
        slots, so padding between fields is kept (a structured copy goes field by
        field, leaves padding as it finds it, and is slower) and the copy compares
        equal to the journal's bytes."""
        raw = self._raw
        n = len(self)
        if raw is None or not n:
            return self.first.copy()
        out = np.empty(n, raw.dtype)
        start = self.lo & (len(raw) - 1)
        split = len(self.first)
        out[:split] = raw[start : start + split]
        out[split:] = raw[: n - split]
        return out.view(self.first.dtype)


#### Statistics


@dataclasses.dataclass(frozen=True)
class ConsumerStatistics:
    name: str
    cursor: int
    lag: int
    """Records published but not yet consumed: producer cursor minus this cursor."""
    gated_on: tuple[str, ...]
    pid: int
    """The process that last attached as this consumer (0 if none), alive or not."""
    sleeping: bool


@dataclasses.dataclass(frozen=True)
class RingStatistics:
    name: str
    capacity: int
    itemsize: int
    producer_cursor: int
    producer_pid: int
    creator_pid: int
    creator_alive: bool
    consumers: tuple[ConsumerStatistics, ...]


#### Ring


class Ring:
    """One ring's shared memory, mapped into this process. Build with ``Ring.create``
    or ``Ring.attach``; get the producer with ``producer()`` and a named consumer with
    ``consumer(name)``.

    Resource handling: ``close()`` unmaps and closes the semaphores of this process;
    ``unlink()`` removes the ring's names from the system (processes that have it
    mapped keep working until they close). ``with Ring.attach(...) as ring:`` closes.
    """

    def __init__(self, shm_name: str, mm: mmap.mmap, dtype: np.dtype | None, readonly: bool) -> None:
        self._shm_name = shm_name
        self._mm = mm
        self.readonly = readonly
        self.header = np.ndarray((), HEADER, buffer=mm)
        # Three memoryviews, all released by close() so the mapping can be closed.
        self._views = [memoryview(mm)]
        self._views.append(self._views[0][:SLOTS_OFFSET])
        self._words = self._views[1].cast("q")
        self._views.append(self._words)
        h = self.header
        self.capacity = int(h["capacity"])
        self.itemsize = int(h["itemsize"])
        n = int(h["n_consumers"])
        self.consumer_names: tuple[str, ...] = tuple(h["consumers"]["name"][i].decode() for i in range(n))
        masks = [int(h["consumers"]["gate_mask"][i]) for i in range(n)]
        self.gating: dict[str, tuple[str, ...]] = {
            name: tuple(self.consumer_names[j] for j in range(n) if masks[i] >> j & 1)
            for i, name in enumerate(self.consumer_names)
        }
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype((np.void, self.itemsize))
        self.slots = np.ndarray((self.capacity,), self.dtype, buffer=mm, offset=int(h["slots_offset"]))
        self._raw_slots = self.slots.view(np.dtype((np.void, self.itemsize)))
        # The slots as a (capacity, itemsize) uint8 matrix: a consumer that hands records
        # on as bytes (the journaler) slices rows from it without a dtype view per batch.
        self.slot_bytes = np.ndarray((self.capacity, self.itemsize), np.uint8, buffer=mm, offset=int(h["slots_offset"]))
        self._no_slots = self.slots[0:0]  # the second part of a batch that does not wrap
        self._sems: list[posix_ipc.Semaphore] = []
        self._producer_sem: posix_ipc.Semaphore | None = None
        self._consumer_sems: list[posix_ipc.Semaphore] = []
        if not readonly:
            p_name, c_names = _sem_names(shm_name)
            p_bell = int(h["producer_bell"])
            bells = [int(h["consumers"]["bell"][i]) for i in range(n)]
            try:
                self._producer_sem = _open_bell(p_bell) if p_bell else posix_ipc.Semaphore(p_name)
                self._sems.append(self._producer_sem)
                for i in range(n):
                    sem = _open_bell(bells[i]) if bells[i] else posix_ipc.Semaphore(c_names[i])
                    self._sems.append(sem)
                    self._consumer_sems.append(sem)
            except posix_ipc.ExistentialError as exc:
                self.close()
                raise RingMismatchError(
                    f"ring {self.name}: a semaphore is missing ({exc}); recreate the ring"
                ) from None

    @property
    def name(self) -> str:
        return self._shm_name[1:]

    def __repr__(self) -> str:
        return f"Ring({self.name!r}, capacity={self.capacity}, dtype itemsize={self.itemsize}, consumers={self.consumer_names})"

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- creating and attaching ---------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        dtype: np.dtype,
        capacity: int,
        consumers: Sequence[str] = (),
        gating: Mapping[str, Iterable[str]] | None = None,
        *,
        replace_stale: bool = False,
        doorbells: Mapping[str, str | PipeDoorbell] | None = None,
        producer_doorbell: str | PipeDoorbell | None = None,
    ) -> Ring:
        """Create the ring ``name`` of ``capacity`` slots of ``dtype``, with its named
        consumers, each optionally gated on others (``{"notifier": ["journaler"]}``).

        ``doorbells`` maps a consumer to the doorbell it sleeps on, and
        ``producer_doorbell`` names the producer's: give every ring that one thread
        waits on the same name for that waiter (see ``ringex.wait.Doorbell``), and a
        ``PipeDoorbell`` to a waiter that is an event loop. The doorbell is created
        if no ring made it yet.

        Error handling: an existing ring of that name is ``RingExistsError``, unless
        ``replace_stale`` is set and the process that created it is dead (a ring left
        by a crash or kill -9), in which case it is removed and made anew. A live
        creator is ``RingOwnerAliveError``: its ring is never taken from under it.
        Bad arguments are ``RingConfigError`` (``RingCapacityError`` for capacity,
        ``UnknownConsumerError`` for a gate that names no consumer).
        """
        shm_name = _shm_name(name)
        dtype = np.dtype(dtype)
        consumers = list(consumers)
        masks = _gate_masks(consumers, gating or {})
        doorbells = dict(doorbells or {})
        unknown = set(doorbells) - set(consumers)
        if unknown:
            raise UnknownConsumerError(f"ring {name}: doorbell for {', '.join(sorted(unknown))}, not a consumer")
        bells = [_bell_id(doorbells[c]) if c in doorbells else 0 for c in consumers]
        p_bell = _bell_id(producer_doorbell) if producer_doorbell is not None else 0
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 2 or capacity & (capacity - 1):
            raise RingCapacityError(f"ring {name}: capacity must be a power of two >= 2, got {capacity!r}")
        if dtype.itemsize == 0:
            raise RingConfigError(f"ring {name}: slot dtype has no size")
        size = SLOTS_OFFSET + capacity * dtype.itemsize
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            if not replace_stale:
                raise RingExistsError(
                    f"ring {name} already exists (pass replace_stale=True to replace a dead owner's)"
                ) from None
            owner = _owner_of(shm_name)
            if owner is not None and _process_alive(*owner):
                raise RingOwnerAliveError(
                    f"ring {name} is owned by live process {owner[0]}; not replacing it"
                ) from None
            cls.remove(name)
            try:
                shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
            except posix_ipc.ExistentialError:
                raise RingExistsError(f"ring {name} was re-created by another process meanwhile") from None
        try:
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        try:
            p_name, c_names = _sem_names(shm_name)
            for sem_name, bell in zip([p_name, *c_names[: len(consumers)]], [p_bell, *bells], strict=True):
                if bell:
                    # Shared with the group's other rings, which may already use it:
                    # open, never re-create. A dead waiter's leftover posts are
                    # drained by its successor's ``Sleeper.reset``.
                    _make_bell(bell)
                    continue
                _unlink_quietly(posix_ipc.unlink_semaphore, sem_name)  # a crash's leftovers
                posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode=0o600, initial_value=0).close()
            h = np.ndarray((), HEADER, buffer=mm)
            h["creator_pid"] = os.getpid()
            h["creator_start"] = _proc_stat(os.getpid())[1]
            h["boot_id"] = _boot_id()
            h["version"] = VERSION
            h["n_consumers"] = len(consumers)
            h["capacity"] = capacity
            h["itemsize"] = dtype.itemsize
            h["dtype_hash"] = dtype_hash(dtype)
            h["slots_offset"] = SLOTS_OFFSET
            h["created_ns"] = time.time_ns()
            h["producer_cursor"] = -1
            h["producer_bell"] = p_bell
            lines = h["consumers"]
            for i, consumer in enumerate(consumers):
                lines["cursor"][i] = -1
                lines["gate_mask"][i] = masks[i]
                lines["bell"][i] = bells[i]
                lines["name"][i] = consumer.encode()
            h["magic"] = MAGIC  # last: an attacher that sees the magic sees a whole header
            del h, lines
            return cls(shm_name, mm, dtype, readonly=False)
        except BaseException:
            cls.remove(name)
            raise

    @classmethod
    def attach(cls, name: str, dtype: np.dtype | None = None, *, readonly: bool = False) -> Ring:
        """Map the existing ring ``name``, checking that it holds ``dtype`` records.

        ``readonly=True`` maps it read-only, opens no semaphore and registers nothing:
        for ``ringex status`` and inspection; ``dtype`` may then be None (slots are raw
        bytes). Error handling: ``RingNotFoundError`` if there is no such ring,
        ``RingMismatchError`` if magic, version, dtype or size do not match.
        """
        shm_name = _shm_name(name)
        if dtype is None and not readonly:
            raise RingConfigError("attach needs the slot dtype unless readonly=True")
        try:
            shm = posix_ipc.SharedMemory(shm_name, read_only=readonly)
        except posix_ipc.ExistentialError:
            raise RingNotFoundError(f"ring {name} does not exist") from None
        try:
            size = shm.size
            if size < SLOTS_OFFSET:
                raise RingMismatchError(f"ring {name}: {size} bytes is too small for a ring header")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(shm.fd, size, prot=prot)
        finally:
            shm.close_fd()
        # No mm.close() on failure: a traceback may still hold a numpy view of the
        # header; the mapping goes with the last reference instead (see ``close``).
        _check_header(name, np.frombuffer(mm, HEADER, count=1)[0], size, dtype)
        return cls(shm_name, mm, dtype, readonly)

    # -- names in the system --------------------------------------------------------

    @staticmethod
    def exists(name: str) -> bool:
        try:
            posix_ipc.SharedMemory(_shm_name(name)).close_fd()
            return True
        except posix_ipc.ExistentialError:
            return False

    @staticmethod
    def names(prefix: str = "") -> list[str]:
        """The rings in this system whose names start with ``prefix``, sorted: shared
        memory objects that carry a ring's magic (so ``ringex status`` and the
        supervisor can find rings a crashed run left)."""
        found = []
        try:
            entries = os.listdir(SHM_DIR)
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.startswith(prefix) or entry.startswith("sem."):
                continue
            try:
                # O_NONBLOCK: opening a FIFO (a pipe doorbell) would otherwise wait for a writer
                fd = os.open(os.path.join(SHM_DIR, entry), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                head = os.pread(fd, 8, 0)
            except OSError:
                continue
            finally:
                os.close(fd)
            if len(head) == 8 and int.from_bytes(head, "little") == MAGIC:
                found.append(entry)
        return sorted(found)

    @staticmethod
    def remove(name: str) -> bool:
        """Unlink the ring ``name`` and its semaphores, whoever owns them. Returns
        whether the shared memory existed. Processes that have it mapped are not hurt."""
        shm_name = _shm_name(name)
        p_name, c_names = _sem_names(shm_name)
        for sem_name in [p_name, *c_names]:
            _unlink_quietly(posix_ipc.unlink_semaphore, sem_name)
        return _unlink_quietly(posix_ipc.unlink_shared_memory, shm_name)

    @staticmethod
    def remove_doorbell(doorbell: str | PipeDoorbell) -> bool:
        """Unlink the doorbell's semaphore or FIFO; whether it existed. For whoever
        made the rings that share it, once they are all removed (or to clear a crash's
        leftovers before making them anew)."""
        bell = _bell_id(doorbell)
        if bell & _PIPE_BIT:
            try:
                os.unlink(_bell_pipe_path(bell))
                return True
            except FileNotFoundError:
                return False
        return _unlink_quietly(posix_ipc.unlink_semaphore, _bell_sem_name(bell))

    @classmethod
    def remove_stale(cls, name: str) -> bool:
        """Remove the ring ``name`` if its creator is dead; the supervisor's clean-up on
        a clean start. Returns whether it removed one; a live owner's ring stays."""
        shm_name = _shm_name(name)
        if not cls.exists(name):
            return False
        owner = _owner_of(shm_name)
        if owner is not None and _process_alive(*owner):
            return False
        return cls.remove(name)

    # -- this process's mapping ------------------------------------------------------

    def close(self) -> None:
        """Close this process's semaphores and views of the ring; its producer and
        consumers stop working (they raise). The mapping itself goes when the last
        numpy view into it is dropped, such as a ``Batch`` the caller still holds:
        numpy keeps no buffer export on the mmap, so an explicit unmap here could
        leave such a view pointing at nothing, and reading it would crash."""
        for sem in self._sems:
            sem.close()
        self._sems.clear()
        for view in reversed(self._views):
            view.release()
        self.header = self.slots = self._raw_slots = self._no_slots = self.slot_bytes = None  # type: ignore[assignment]
        self._mm = None

    def unlink(self) -> None:
        """Remove the ring's shared memory and semaphores from the system."""
        self.remove(self.name)

    # -- parts ---------------------------------------------------------------------

    def producer(self, wait: WaitStrategy | None = None) -> Producer:
        """The ring's producer (one process at a time), resuming after the last publish."""
        self._writable("a producer")
        return Producer(self, wait or BlockingWait())

    def consumer(self, name: str, wait: WaitStrategy | None = None) -> Consumer:
        """The registered consumer ``name``, resuming after its last commit."""
        self._writable("a consumer")
        return Consumer(self, self.consumer_index(name), wait or BlockingWait())

    def consumer_index(self, name: str) -> int:
        try:
            return self.consumer_names.index(name)
        except ValueError:
            raise UnknownConsumerError(
                f"ring {self.name} has no consumer {name!r} (it has: {', '.join(self.consumer_names) or 'none'})"
            ) from None

    def _writable(self, what: str) -> None:
        if self.readonly:
            raise RingError(f"ring {self.name} is attached read-only; it cannot have {what}")

    # -- for operators -------------------------------------------------------------

    @property
    def producer_cursor(self) -> int:
        """The last published sequence, read now."""
        return self._words[_W_PRODUCER_CURSOR]

    def consumer_cursor(self, name: str) -> int:
        """The last sequence consumer ``name`` committed, read now."""
        return self._words[_w_cursor(self.consumer_index(name))]

    def cursor_reader(self, name: str) -> Callable[[], int]:
        """A function that reads consumer ``name``'s cursor: ``consumer_cursor`` without
        the name lookup, for loops that read it every turn (one C call, ~0.1 µs)."""
        return functools.partial(self._words.__getitem__, _w_cursor(self.consumer_index(name)))

    def statistics(self) -> RingStatistics:
        """A snapshot of the cursors and who is attached. Cursors are read one by one
        while the ring runs, so lags are approximate, never negative."""
        words = self._words
        produced = words[_W_PRODUCER_CURSOR]
        lines = self.header["consumers"]
        consumers = []
        for i, name in enumerate(self.consumer_names):
            cursor = words[_w_cursor(i)]
            consumers.append(
                ConsumerStatistics(
                    name=name,
                    cursor=cursor,
                    lag=max(0, produced - cursor),
                    gated_on=self.gating[name],
                    pid=int(lines["pid"][i]),
                    sleeping=bool(words[_w_sleeping(i)]),
                )
            )
        h = self.header
        return RingStatistics(
            name=self.name,
            capacity=self.capacity,
            itemsize=self.itemsize,
            producer_cursor=produced,
            producer_pid=int(h["producer_pid"]),
            creator_pid=int(h["creator_pid"]),
            creator_alive=_process_alive(int(h["creator_pid"]), int(h["creator_start"]), int(h["boot_id"])),
            consumers=tuple(consumers),
        )

    # -- helpers for Producer and Consumer ------------------------------------------

    def _leaf_consumers(self) -> list[int]:
        """Consumers no other consumer is gated on: the slowest of them bounds the
        producer (everyone upstream of a leaf is at least as far)."""
        upstream = {self.consumer_index(g) for gates in self.gating.values() for g in gates}
        return [i for i in range(len(self.consumer_names)) if i not in upstream]

    def _batch(self, lo: int, hi: int) -> Batch:
        mask = self.capacity - 1
        start = lo & mask
        end = (hi & mask) + 1
        try:
            if end > start:
                return Batch(lo, hi, self.slots[start:end], self._no_slots, self._raw_slots)
            return Batch(lo, hi, self.slots[start:], self.slots[:end], self._raw_slots)
        except TypeError:
            if self.slots is None:
                raise RingClosedError(f"ring {self.name} is closed") from None
            raise

    def _empty_batch(self, lo: int) -> Batch:
        return Batch(lo, lo - 1, self._no_slots, self._no_slots)


def _gate_masks(consumers: list[str], gating: Mapping[str, Iterable[str]]) -> list[int]:
    if len(consumers) > MAX_CONSUMERS:
        raise RingConfigError(f"at most {MAX_CONSUMERS} consumers per ring, got {len(consumers)}")
    for name in consumers:
        if not isinstance(name, str) or not 1 <= len(name.encode()) <= CONSUMER_NAME_LEN or "\0" in name:
            raise RingConfigError(f"consumer name {name!r}: must be 1-{CONSUMER_NAME_LEN} bytes")
    if len(set(consumers)) != len(consumers):
        raise RingConfigError(f"consumer names must be distinct: {consumers}")
    index = {name: i for i, name in enumerate(consumers)}
    masks = [0] * len(consumers)
    for name, gates in gating.items():
        for gate in gates:
            for who in (name, gate):
                if who not in index:
                    raise UnknownConsumerError(
                        f"gating names {who!r}, which is not a consumer ({', '.join(consumers)})"
                    )
            masks[index[name]] |= 1 << index[gate]
    # A gating cycle would wait forever; find one by repeatedly removing consumers
    # whose gates are all removed (Kahn).
    done = 0
    while True:
        ready = [i for i in range(len(consumers)) if not done >> i & 1 and masks[i] & ~done == 0]
        if not ready:
            break
        for i in ready:
            done |= 1 << i
    if done != (1 << len(consumers)) - 1:
        stuck = [consumers[i] for i in range(len(consumers)) if not done >> i & 1]
        raise RingConfigError(f"gating has a cycle among {', '.join(stuck)}")
    return masks


def _owner_of(shm_name: str) -> tuple[int, int, int] | None:
    """(creator pid, start, boot) from a ring's header, or None if it is unreadable or
    its creator wrote nothing yet."""
    try:
        shm = posix_ipc.SharedMemory(shm_name, read_only=True)
    except posix_ipc.ExistentialError:
        return None
    try:
        if shm.size < HEADER.itemsize:
            return None
        with mmap.mmap(shm.fd, HEADER.itemsize, prot=mmap.PROT_READ) as mm:
            h = np.frombuffer(mm.read(HEADER.itemsize), HEADER)[0]  # a copy: safe after unmap
        owner = int(h["creator_pid"]), int(h["creator_start"]), int(h["boot_id"])
    finally:
        shm.close_fd()
    return owner if owner[0] > 0 else None


def _check_header(name: str, h: np.ndarray, size: int, dtype: np.dtype | None) -> None:
    if int(h["magic"]) != MAGIC:
        raise RingMismatchError(f"ring {name}: not a ringex ring, or not yet initialised (bad magic)")
    if int(h["version"]) != VERSION:
        raise RingMismatchError(f"ring {name}: layout version {int(h['version'])}, this code speaks {VERSION}")
    capacity, itemsize = int(h["capacity"]), int(h["itemsize"])
    if size < int(h["slots_offset"]) + capacity * itemsize or int(h["n_consumers"]) > MAX_CONSUMERS:
        raise RingMismatchError(f"ring {name}: header does not match its size {size}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.itemsize != itemsize or dtype_hash(dtype) != int(h["dtype_hash"]):
            raise RingMismatchError(
                f"ring {name}: its slot dtype ({itemsize} bytes) differs from the one given ({dtype.itemsize} bytes, checksum {dtype_hash(dtype):#x} vs {int(h['dtype_hash']):#x})"
            )


#### Producer


class Producer:
    """The ring's single producer: ``claim(n)`` slots, fill them, ``publish(hi)``.

    Never overwrites a slot a gating consumer has not passed: ``claim`` waits while
    the slowest leaf consumer is ``capacity`` or more behind. Like Disruptor's
    ``SingleProducerSequencer`` it caches that consumer's cursor and reads the
    consumers' cursors again only when the wrap point passes the cached value.
    """

    def __init__(self, ring: Ring, wait: WaitStrategy) -> None:
        self._ring = ring
        self._wait = wait
        words = self._words = ring._words
        self._capacity = ring.capacity
        self._claimed = words[_W_PRODUCER_CURSOR]
        gates = [_w_cursor(i) for i in ring._leaf_consumers()]
        if not gates:
            self._slowest = lambda: self._claimed  # nobody to wait for
        elif len(gates) == 1:
            (g,) = gates
            self._slowest = lambda: words[g]
        else:
            self._slowest = lambda: min([words[g] for g in gates])
        self._cached_slowest = self._slowest()
        self._leaf_mask = sum(1 << i for i in ring._leaf_consumers()) or -1
        self._sleeper = Sleeper(words, _W_PRODUCER_SLEEPING, ring._producer_sem, _W_PRODUCER_WATCH, self._leaf_mask)
        self._sleeper.reset()
        # Publishing can only wake consumers that read the producer's cursor directly.
        self._waker = Waker(
            words,
            [
                (_w_sleeping(i), ring._consumer_sems[i])
                for i, name in enumerate(ring.consumer_names)
                if not ring.gating[name]
            ],
        )
        ring.header["producer_pid"] = os.getpid()

    @property
    def cursor(self) -> int:
        """The last published sequence."""
        return self._words[_W_PRODUCER_CURSOR]

    @property
    def sleeper(self) -> Sleeper:
        """Where this producer sleeps: for a ``Doorbell`` over several rings' producers."""
        return self._sleeper

    @property
    def claimed(self) -> int:
        """The last claimed sequence; the next claim starts after it."""
        return self._claimed

    def claim(self, n: int = 1, timeout: float | None = None) -> Batch:
        """Claim the next ``n`` slots (1 <= n <= capacity), waiting for space with the
        wait strategy, for ``timeout`` seconds at most (``RingTimeout``)."""
        if not 0 < n <= self._capacity:
            raise ValueError(f"claim of {n} slots from a ring of {self._capacity}")
        current = self._claimed
        hi = current + n
        wrap_point = hi - self._capacity
        cached = self._cached_slowest
        if wrap_point > cached or cached > current:
            slowest = self._slowest()
            if wrap_point > slowest:
                deadline = None if timeout is None else time.monotonic() + timeout
                slowest = self._wait.wait_for(wrap_point, self._slowest, self._sleeper, deadline)
                if wrap_point > slowest:
                    raise RingTimeout(f"ring {self._ring.name}: no space for {n} slots in {timeout} s")
            self._cached_slowest = slowest
        self._claimed = hi
        return self._ring._batch(current + 1, hi)

    def try_claim(self, n: int = 1) -> Batch | None:
        """Claim ``n`` slots if there is space now, else None. Never waits."""
        if not 0 < n <= self._capacity:
            raise ValueError(f"claim of {n} slots from a ring of {self._capacity}")
        hi = self._claimed + n
        wrap_point = hi - self._capacity
        if wrap_point > self._cached_slowest or self._cached_slowest > self._claimed:
            self._cached_slowest = self._slowest()
            if wrap_point > self._cached_slowest:
                return None
        lo = self._claimed + 1
        self._claimed = hi
        return self._ring._batch(lo, hi)

    def wait_for_consumer(self, name: str, seq: int, timeout: float | None = None) -> int:
        """Wait until consumer ``name`` has committed ``seq`` and return its cursor, which
        is below ``seq`` only if ``timeout`` s passed first. For a producer that answers
        only once a downstream stage has a record (the gateway acks once the journaler
        has it): run it in a worker thread while the event loop uses ``try_claim``.

        It sleeps on the producer's own flag and semaphore, so it must not run while
        ``claim`` is waiting for space in another thread: one of the two sleepers could
        miss a wake-up and wait for its timeout (``MAX_SLEEP_S``) instead.
        """
        index = self._ring.consumer_index(name)
        word = _w_cursor(index)
        words = self._words

        def probe() -> int:
            return words[word]

        cursor = probe()
        if cursor >= seq:
            return cursor
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sleeper.watch_mask = 1 << index
        try:
            return self._wait.wait_for(seq, probe, self._sleeper, deadline)
        finally:
            self._sleeper.watch_mask = self._leaf_mask

    def watch(self, name: str) -> None:
        """From now on, sleep to be woken by consumer ``name``'s commits only (not by the
        leaves freeing space): for a producer that never waits for space (``try_claim``)
        and sleeps, through a ``Doorbell``, until a downstream consumer has its records."""
        self._sleeper.watch_mask = 1 << self._ring.consumer_index(name)

    def publish(self, hi: int, posts: dict | None = None) -> None:
        """Make every claimed sequence up to ``hi`` visible to the consumers. With
        ``posts``, the sleeping consumers' semaphores are collected there instead of
        posted (see ``ringex.wait.post_all``): a process that publishes to several rings
        in one turn then posts each doorbell once."""
        if not self._words[_W_PRODUCER_CURSOR] < hi <= self._claimed:
            raise ValueError(f"publish of {hi}: published {self.cursor}, claimed {self._claimed}")
        # The slot writes are done: x86-64 (TSO) makes stores visible in program order,
        # so a consumer that sees this cursor sees the slots. Never reorder these.
        self._words[_W_PRODUCER_CURSOR] = hi
        if posts is None:
            self._waker.wake()
        else:
            self._waker.collect(posts)

    def write(self, records: np.ndarray, timeout: float | None = None) -> int:
        """Claim, copy and publish ``records`` (any length; at most ``capacity`` per
        claim, two slice assignments each). Returns the last sequence written."""
        n = len(records)
        start = 0
        while start < n:
            batch = self.claim(min(n - start, self._capacity), timeout)
            batch.fill(records[start : start + len(batch)])
            self.publish(batch.hi)
            start += len(batch)
        return self._claimed


#### Consumer


class Consumer:
    """One named consumer: waits for sequences, reads them in batches, commits them.

    Sees at most up to the producer's cursor, or, if gated, up to the slowest cursor of
    the consumers it is gated on (a gated consumer never sees past its gate). Its own
    cursor lives in the ring, so a restarted consumer of the same name resumes after
    its last commit: what it read but did not commit, it reads again.
    """

    def __init__(self, ring: Ring, index: int, wait: WaitStrategy) -> None:
        self._ring = ring
        self._wait = wait
        self.name = ring.consumer_names[index]
        self.index = index
        words = self._words = ring._words
        self._w_cursor = _w_cursor(index)
        self._sequence = words[self._w_cursor]
        gated_on = ring.gating[self.name]
        gates = [_w_cursor(ring.consumer_index(g)) for g in gated_on] or [_W_PRODUCER_CURSOR]
        if len(gates) == 1:
            (g,) = gates
            self.available = lambda: words[g]
        else:
            self.available = lambda: min([words[g] for g in gates])
        self.available.__doc__ = "The highest sequence this consumer may read now."
        self._seen = self._sequence
        self._sleeper = Sleeper(words, _w_sleeping(index), ring._consumer_sems[index])
        self._sleeper.reset()
        targets = [
            (_w_sleeping(i), ring._consumer_sems[i])
            for i, other in enumerate(ring.consumer_names)
            if self.name in ring.gating[other]
        ]
        # A commit wakes the producer's sleeper if it watches this consumer (a leaf's
        # commit frees slots; a watched consumer is what ``Producer.wait_for_consumer``
        # or a durability doorbell waits for). The flag is set only while something
        # sleeps, so an awake producer costs one load.
        self._waker = Waker(words, targets, [(_W_PRODUCER_SLEEPING, ring._producer_sem, _W_PRODUCER_WATCH, 1 << index)])
        ring.header["consumers"]["pid"][index] = os.getpid()

    @property
    def cursor(self) -> int:
        """The last committed sequence; the next batch starts after it."""
        return self._sequence

    @property
    def sleeper(self) -> Sleeper:
        """Where this consumer sleeps: for a ``Doorbell`` over several rings' consumers."""
        return self._sleeper

    def wait_for(self, seq: int, timeout: float | None = None) -> int:
        """Wait until sequence ``seq`` is available and return the highest available
        one (often beyond ``seq``: read it all in one batch). After ``timeout`` seconds
        returns what is available then, which may be below ``seq``. Safe to call from a
        worker thread while the event loop's thread does not use this consumer."""
        available = self.available()
        if available >= seq:
            self._seen = available
            return available
        deadline = None if timeout is None else time.monotonic() + timeout
        available = self._wait.wait_for(seq, self.available, self._sleeper, deadline)
        self._seen = max(self._seen, available)
        return available

    def poll(self, max_n: int | None = None) -> Batch:
        """Everything available after the cursor (at most ``max_n``), without waiting:
        possibly an empty batch."""
        lo = self._sequence + 1
        hi = self.available()
        if hi > self._seen:
            self._seen = hi
        if max_n is not None and hi - lo + 1 > max_n:
            hi = lo + max_n - 1
        if hi < lo:
            return self._ring._empty_batch(lo)
        return self._ring._batch(lo, hi)

    def poll_range(self, max_n: int) -> tuple[int, int]:
        """``poll`` as the bounds ``(lo, hi)`` only (``hi < lo``: nothing), for a reader
        that slices the slots itself (``Ring.slot_bytes``) and builds no ``Batch``."""
        lo = self._sequence + 1
        hi = self.available()
        if hi > self._seen:
            self._seen = hi
        if hi - lo + 1 > max_n:
            hi = lo + max_n - 1
        return lo, hi

    def wait_batch(self, timeout: float | None = None, max_n: int | None = None) -> Batch:
        """Wait (up to ``timeout`` s) for the next sequence, then ``poll(max_n)``."""
        self.wait_for(self._sequence + 1, timeout)
        return self.poll(max_n)

    def commit(self, hi: int, posts: dict | None = None) -> None:
        """Mark every sequence up to ``hi`` consumed: the producer may reuse their slots
        and consumers gated on this one may read them. ``posts``: as ``Producer.publish``."""
        if not self._sequence <= hi <= self._seen:
            raise ValueError(f"consumer {self.name}: commit of {hi} outside {self._sequence}..{self._seen}")
        # Reads of the slots came before this store (TSO keeps loads before later
        # stores), so the producer cannot overwrite a slot still being read.
        self._sequence = hi
        self._words[self._w_cursor] = hi
        if posts is None:
            self._waker.wake()
        else:
            self._waker.collect(posts)


#### Several consumers, one thread


# Checks of every ring before sleeping. Low: the rings' producers are other processes
# that rarely publish within microseconds of each other, and each check reads them all.
SET_SPIN_TRIES = 4


class ConsumerSet:
    """The consumers one thread serves on several rings (the journaler's, a matcher
    shard's), and one way to wait until any of them has something to read: the rings
    were made with one doorbell for this consumer (``Ring.create(..., doorbells=)``,
    as ``ringex.topology`` makes them), so ``wait`` sleeps once for all of them.

    Error handling: consumers that do not share a doorbell are a ``ValueError``: one
    thread cannot sleep on several semaphores at once.
    """

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        if not consumers:
            raise ValueError("a consumer set needs at least one consumer")
        self.consumers = tuple(consumers)
        self.doorbell = Doorbell([c.sleeper for c in self.consumers])

    def ready(self) -> bool:
        """Whether any consumer has a record after its cursor, now."""
        return any(c.available() > c.cursor for c in self.consumers)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a record on any ring; whether one came."""
        return self.doorbell.wait(self.ready, timeout, SET_SPIN_TRIES)
