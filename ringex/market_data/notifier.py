"""The market data notifier: reads every out-ring, publishes over TCP and WebSocket.

```
 out-ring[SYM] ──► Notifier.pump_rings ──► MarketData.apply ──► fan-out
                                                                             │
                          TCP JSON lines :7002 ◄── Session.write(same bytes) ┤
                          WebSocket      :7003 ◄── Session.write(same bytes) ┘
```

One trio process. What is sent is decided by the sans-IO
``ringex.market_data.messages``, and what a WebSocket client's bytes mean by the
sans-IO ``ringex.market_data.ws_server``; this module owns the sockets, the sessions
and the ring reading, and enforces the limits of the config's ``[market_data]`` table
(``ringex.config.MarketDataSettings``, docs/security.md).

Reading the rings. One task reads every out-ring (``pump_rings``): it takes whatever
is available without waiting, and only when every ring is empty does it wait, on the
rings' shared *pipe doorbell* for the notifier (``ringex.ring.PipeDoorbell``, a FIFO
the matcher's publish writes) with ``trio.lowlevel.wait_readable``, like a socket:
~0% CPU while idle, no worker thread, no hand-off back to trio. Under load there is
always something to read, so the batch grows with the load. Polling with
``trio.sleep`` instead would have to choose between burning CPU while idle and adding
its period to every latency.
The notifier is consumer ``NOTIFIER`` on each out-ring (``ringex.topology``). Every
event there was caused by a durable command (the matcher only sees commands the
journaler has committed), so it is published at once: recovery reproduces it from the
journal whatever happens next. The journaler records the events themselves off this
path.

Fan-out. A batch of events becomes, per stream, one blob of bytes built once; each
subscribed session gets the same blob (a session on several streams that moved gets
their blobs joined, one ``send``). ``Session.write`` tries a non-blocking
``send`` straight from the fan-out loop (one system call, no task switch); only what
the kernel did not take is queued, and the session's writer task flushes it when the
socket becomes writable. The queue is bounded in bytes: a session over the bound is
a slow consumer and is disconnected with an error saying so, so it never slows the
ring reader or any other session, and a session that stays connected never misses a
message. On loopback here a ``send`` costs 15-35 µs of kernel time (the receiver's
TCP path and wake-up run in the sender's system call), so a batch to N sessions costs
about N x 25 µs whatever its size: under load batches grow and the per-message cost
falls. With many sessions the sends are shared with ``fan_out_threads`` threads
(``send`` releases the GIL), and the sessions are swept in slices of
``SLICE_SESSIONS`` with the ring read between two slices, so a new trade joins the
sweep at once instead of waiting for a whole round to end (see ``Notifier._take``).

Start-up book. ``serve`` rebuilds the depth views by replaying the journal up to the
out-ring cursor the notifier starts from (``replay_journal``); with no journal they
start empty, which is right for a fresh exchange.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import gc
import itertools
import json
import logging
import math
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import trio

from ringex.config import Config, MarketDataSettings
from ringex.limits import ConnectionLimit, FailedLoginLimit, KeyedRateLimit, RateLimit, address_key
from ringex.market_data.messages import (
    ClientError,
    LineDecoder,
    Login,
    MarketData,
    Ping,
    Subscribe,
    Unsubscribe,
    parse_request,
    session_message,
    ws_text_frame,
)
from ringex.market_data.ws_server import End, Pong, Refuse, Request, Send, WebSocketServer
from ringex.order_entry.accounts import check_executor
from ringex.ring import Ring
from ringex.topology import EVT, JOURNALER, NOTIFIER, Topology, journaled_base, new_ring_base
from ringex.trace import NullTracer, Stage, tracer_for
from ringex.wait import Doorbell, wait_until

__all__ = [
    "RingEventSource",
    "Notifier",
    "NotifierStats",
    "ring_sources",
    "replay_journal",
    "serve",
    "run_notifier",
    "raise_nofile_limit",
]

log = logging.getLogger("ringex.market_data.notifier")

# The defaults of the config's [market_data] table (``ringex.config.MarketDataSettings``
# says why each is what it is).
DEFAULT_MAX_QUEUE_BYTES = MarketDataSettings.max_queue_bytes
DEFAULT_HEARTBEAT_S = MarketDataSettings.heartbeat_s
DEFAULT_CLOSE_GRACE_S = MarketDataSettings.close_grace_s
# Bad messages a session may send before it is closed: enough for a human typing
# into nc to recover, few enough that a broken client cannot keep us parsing garbage.
MAX_ERRORS = 5
# How long a disconnected session gets to take the tail of its queue plus the final
# error before the socket is closed under it.
DEFAULT_CLOSE_GRACE_S = 2.0
# Longest the ring pump waits on its doorbell before it looks at the rings again: it
# bounds what a post lost to a dying journaler costs, not latency (wake-ups are posted).
RING_WAIT_S = 0.05
# Like trio's ACCEPT_CAPACITY_ERRNOS: out of descriptors or buffers is a reason to
# wait and retry accept, not to die.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Like trio's SocketListener: errors that belong to the one connection being accepted
# (reset before we took it, refused by a firewall hook), never to the listener; a
# flood of connect-then-reset must not end the accept loop.
ACCEPT_IGNORABLE_ERRNOS = {
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET")
    + ("EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH")
    if hasattr(errno, name)
}
LISTEN_BACKLOG = 4096
RECV_BYTES = 65536
# Below this many sessions on a stream, handing sends to another thread costs more
# than it saves (a thread hand-off is ~50-100 µs; a send ~15-35 µs).
PARALLEL_FAN_OUT_MIN = 64
# Sessions per fan-out slice (see ``Notifier.publish``): a slice's sends take a few ms
# (~25 µs each on loopback), short enough that reading the ring between two slices
# puts a new trade into the sweep within that time.
SLICE_SESSIONS = 256
# Threads that share the fan-out sends with the trio thread: one per spare core.
DEFAULT_FAN_OUT_THREADS = max(0, min(3, (os.cpu_count() or 1) - 1))


def raise_nofile_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


####################################################################################
# Sessions
####################################################################################


class SessionClosed(Exception):
    """Raised inside a session's tasks to end it; with ``tell``, ``reason`` goes to the
    client (else there is nobody to tell: the connection is gone)."""

    def __init__(self, reason: str | None, *, tell: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tell = tell


class Session:
    """One subscriber connection: its socket, subscriptions and outgoing queue.

    ``id`` numbers the notifier's sessions (for logs); ``address`` is the key its
    connection and failed logins are counted under (``ringex.limits.address_key``);
    ``ws`` is its ``WebSocketServer`` (None for TCP); ``requests`` its request rate."""

    __slots__ = (
        "sock",
        "ws",
        "id",
        "peer",
        "address",
        "requests",
        "account",
        "streams",
        "errors",
        "active",
        "closing",
        "_pending",
        "_pending_bytes",
        "_max_bytes",
        "_wake",
        "_cancel",
        "fan_out_slice",
        "__weakref__",
    )

    def __init__(
        self,
        sock: socket.socket,
        websocket: bool,
        max_bytes: int,
        *,
        session_id: int = 0,
        peer: Any = None,
        limits: MarketDataSettings | None = None,
    ) -> None:
        limits = limits or MarketDataSettings()
        self.sock = sock
        self.ws: WebSocketServer | None = WebSocketServer(limits.max_line_bytes) if websocket else None
        self.id = session_id
        if peer is None:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
        self.peer = peer
        self.address = address_key(peer)
        self.requests = RateLimit(limits.requests_per_s, limits.request_burst)
        self.account: int | None = None
        self.streams: set[tuple] = set()
        self.errors = 0
        self.active = False  # something was sent since the last heartbeat tick
        self.closing: str | None = None  # why the session is ending, once it is
        self._pending: collections.deque[memoryview] = collections.deque()
        self._pending_bytes = 0
        self._max_bytes = max_bytes
        self._wake = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self.fan_out_slice: _Slice | None = None  # set by the notifier

    @property
    def queued_bytes(self) -> int:
        return self._pending_bytes

    def write(self, data: bytes) -> None:
        """Send ``data`` now if the kernel takes it, else queue it; never blocks.

        Over the queue bound, the session is closed as a slow consumer.
        """
        if self.closing is not None:
            return
        self.active = True
        if self._pending:
            self._queue(memoryview(data))
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(f"connection lost: {exc.strerror or exc}", tell=False)
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:])

    @property
    def direct(self) -> bool:
        """Whether the next write may go straight to the socket (nothing queued)."""
        return self.closing is None and not self._pending

    def sent_elsewhere(self, data: bytes, result: int | OSError) -> None:
        """Finish a write whose ``send`` a fan-out thread made: queue what the kernel
        did not take, or end the session if the socket failed."""
        if isinstance(result, OSError):
            self.close(f"connection lost: {result.strerror or result}", tell=False)
        elif result < len(data):
            self._queue(memoryview(data)[result:])

    def _queue(self, data: memoryview) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self._max_bytes:
            self.close(f"slow consumer: more than {self._max_bytes} bytes queued")
        self._wake.set()

    def send_message(self, payload: bytes) -> None:
        """Send one payload framed for this session's transport."""
        if self.ws is None:
            self.write(payload + b"\n")
        else:
            self.write(ws_text_frame(payload))

    def close(self, reason: str, *, tell: bool = True) -> None:
        """End the session: nothing more is queued for it, its tasks are cancelled, and
        (with ``tell``) an ``error`` naming ``reason`` follows what is already queued."""
        if self.closing is not None:
            return
        self.closing = reason
        if tell:
            # Keep the part of a message already partly on the wire, so the client can
            # still parse the error after it; drop the rest, the session is over.
            head = self._pending[0] if self._pending else None
            self._pending.clear()
            self._pending_bytes = 0
            if head is not None:
                self._pending.append(head)
                self._pending_bytes = len(head)
            err = session_message("error", reason=reason)
            frame = err + b"\n" if self.ws is None else ws_text_frame(err)
            self._pending.append(memoryview(frame))
            self._pending_bytes += len(frame)
        else:
            self._pending.clear()
            self._pending_bytes = 0
        if self._cancel is not None:
            self._cancel.cancel()

    async def flush(self) -> None:
        """Send queued bytes as the socket accepts them, until the queue is empty."""
        pending = self._pending
        while pending:
            await trio.lowlevel.wait_writable(self.sock)
            while pending:
                head = pending[0]
                try:
                    sent = self.sock.send(head)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # a queued send met a dead socket: that ends this session, like a
                    # failed direct ``write`` (a reset peer's OSError used to escape here
                    # and end the whole notifier)
                    self.close(f"connection lost: {exc.strerror or exc}", tell=False)
                    pending.clear()  # also when the session was closing already (linger)
                    self._pending_bytes = 0
                    return
                self._pending_bytes -= sent
                if sent == len(head):
                    pending.popleft()
                else:
                    pending[0] = head[sent:]
                    break

    async def writer(self) -> None:
        """The session's writer task: flush whenever ``write`` queued something. Runs
        until the session's scope is cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()


####################################################################################
# The notifier
####################################################################################


def _tcp_blob(payloads: list[bytes]) -> bytes:
    return b"\n".join(payloads) + b"\n"


def _ws_blob(payloads: list[bytes]) -> bytes:
    return b"".join([ws_text_frame(p) for p in payloads])


def _send_each(socks: list[socket.socket], blob: bytes) -> list[tuple[int, int | OSError]]:
    """``send`` ``blob`` on each socket; returns ``(index, bytes sent or error)`` for
    those that did not take all of it. Runs in fan-out threads: touches only sockets."""
    short: list[tuple[int, int | OSError]] = []
    size = len(blob)
    for i, sock in enumerate(socks):
        try:
            sent = sock.send(blob)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            short.append((i, exc))
            continue
        if sent != size:
            short.append((i, sent))
    return short


class _Batch:
    """One batch of events read from a ring, as the fan-out needs it: the messages per
    stream, their blobs (built once, on first use, for every slice), and how many
    events had been read once it was (for ``fan_out_log``)."""

    __slots__ = ("id", "events", "outputs", "tcp", "ws", "traced")

    def __init__(self, batch_id: int, events: int, outputs: list[tuple[Any, list[bytes]]]) -> None:
        self.id = batch_id
        self.events = events
        self.outputs = outputs
        self.traced: tuple[int, list[int]] | None = None  # (symbol, sampled command seqs)
        self.tcp: list[bytes | None] = [None] * len(outputs)
        self.ws: list[bytes | None] = [None] * len(outputs)

    def blob(self, k: int, websocket: bool) -> bytes:
        blobs = self.ws if websocket else self.tcp
        blob = blobs[k]
        if blob is None:
            payloads = self.outputs[k][1]
            blob = blobs[k] = _ws_blob(payloads) if websocket else _tcp_blob(payloads)
        return blob


class _Slice:
    """Up to ``SLICE_SESSIONS`` sessions that the fan-out serves together: their
    subscriptions by stream, and ``sent``, the id of the first batch not yet sent to
    them, and when it last had a turn."""

    __slots__ = ("subs", "members", "sent", "turn_at")

    def __init__(self, sent: int) -> None:
        self.subs: dict[Any, set[Session]] = {}
        self.members = 0
        self.sent = sent
        self.turn_at = 0.0  # trio.current_time() of its last turn


# Sockets a fan-out thread claims at a time. Threads claim chunks until none is left,
# rather than each taking a fixed share: on two shared cores a thread is often
# preempted, and a fixed share would leave the other waiting for its rest.
FAN_OUT_CHUNK = 32


def _send_claimed(
    socks: list[socket.socket], blob: bytes, claims: Iterator[int], short: list[tuple[int, int | OSError]]
) -> None:
    """``_send_each`` over chunks of ``socks`` claimed from ``claims`` until none is
    left; appends ``(index into socks, result)`` for each short send to ``short``."""
    n = len(socks)
    while (lo := next(claims) * FAN_OUT_CHUNK) < n:
        for i, result in _send_each(socks[lo : lo + FAN_OUT_CHUNK], blob):
            short.append((lo + i, result))


@dataclasses.dataclass(frozen=True)
class NotifierStats:
    """What ``Notifier.statistics()`` reports."""

    sessions: int
    subscriptions: int
    events: int
    batches: int
    slow_consumers: int
    ports: dict[str, int]
    # fan-out ``send`` calls, and those the kernel did not take whole (the rest was
    # queued for the session's writer task)
    sends: int = 0
    short_sends: int = 0
    # connections refused by the connection limits, logins refused by the failed-login
    # limits, and sessions ended by a bug in serving them (each logged with its traceback)
    refused_connections: int = 0
    refused_logins: int = 0
    session_bugs: int = 0


class Notifier:
    """The trio side: listeners, sessions, ring pumps and heartbeats.

    Resource handling: every session's socket is closed when the session ends, and
    every listener when ``run`` returns. Sessions are tracked in ``self.sessions``.

    Error handling: socket errors end the one session they happen on; a client's bad
    message is answered with an ``error`` and counted (``MAX_ERRORS`` closes it). An
    unexpected exception while serving a session is a bug: it is logged with the
    session's id and peer and ends that session only, so no client can end the
    notifier (and, through the supervisor's restart policy, trading). A bug in the
    ring pumps or the fan-out propagates and ends the notifier.

    Limits (``limits``, the config's ``[market_data]``; ``max_queue_bytes``,
    ``heartbeat_s`` and ``close_grace_s`` given here win over it): connections in total
    and per address, a deadline for the WebSocket handshake and for a request that has
    started arriving, a longest request, a request rate per session, and failed logins
    per account, per address and in total before the slow secret check runs.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        sources: Iterable[RingEventSource] = (),
        *,
        host: str = "127.0.0.1",
        tcp_port: int | None = 7002,
        ws_port: int | None = 7003,
        verify: Callable[[int, int], bool] | None = None,
        max_queue_bytes: int | None = None,
        heartbeat_s: float | None = None,
        close_grace_s: float | None = None,
        fan_out_threads: int = DEFAULT_FAN_OUT_THREADS,
        sndbuf: int | None = None,
        slice_sessions: int = SLICE_SESSIONS,
        coalesce_s: float = 0.0,
        tracer=None,
        limits: MarketDataSettings | None = None,
        verify_nowait: Callable[[int, int], bool | None] | None = None,
    ) -> None:
        self.symbols = tuple(symbols)
        self.md = MarketData(self.symbols)
        self.sources = list(sources)
        self.host = host
        self.tcp_port = tcp_port
        self.ws_port = ws_port
        self.verify = verify
        # answers a login verified before without the slow check (AccountStore.verify_nowait)
        self.verify_nowait = verify_nowait
        given = {"max_queue_bytes": max_queue_bytes, "heartbeat_s": heartbeat_s, "close_grace_s": close_grace_s}
        self.limits = limits = dataclasses.replace(
            limits or MarketDataSettings(), **{k: v for k, v in given.items() if v is not None}
        )
        self.max_queue_bytes = limits.max_queue_bytes
        self.heartbeat_s = limits.heartbeat_s
        self.close_grace_s = limits.close_grace_s
        self.connections = ConnectionLimit(limits.max_connections, limits.max_connections_per_address)
        self.address_requests = KeyedRateLimit.per_second(limits.address_requests_per_s, limits.address_request_burst)
        self.failed_logins = FailedLoginLimit(
            limits.failed_logins_per_account,
            limits.failed_logins_per_address,
            limits.failed_logins_total,
            limits.failed_logins_window_s,
        )
        self._session_ids = itertools.count(1)
        self._session_bugs = 0
        self.sessions: set[Session] = set()
        self._fan_out_threads = fan_out_threads
        # Kernel send buffer per session (None: the kernel's autotuning, up to
        # net.ipv4.tcp_wmem's max, 4 MiB here). With 10,000 sessions a bound keeps the
        # worst case memory known and detects slow consumers sooner.
        self.sndbuf = sndbuf
        self._login_checks: concurrent.futures.ThreadPoolExecutor | None = None
        self._login_checks_running: dict[tuple[int, int], concurrent.futures.Future] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(fan_out_threads, "fan-out") if fan_out_threads else None
        self.ports: dict[str, int] = {}
        self._events = 0
        self._batches = 0
        self._slow = 0
        self._sends = 0
        self._short_sends = 0
        # The fan-out: batches applied but not yet sent to every slice, oldest first.
        self._slices: list[_Slice] = []
        self._backlog: collections.deque[_Batch] = collections.deque()
        self._next_batch = 0
        self._turn = 0  # the slice the pump serves next
        self.slice_sessions = slice_sessions
        # A slice's turns are at least this far apart (seconds): what arrives meanwhile
        # goes out in its next turn, in one send per session. It trades that much latency
        # for fewer sends (every send costs both ends ~10-25 µs whatever its size).
        self.coalesce_s = coalesce_s
        self.tracer = tracer or NullTracer()
        # With ``record_fan_out()``: per batch, (events read so far, time.time_ns() once
        # the last fan-out ``send`` of the batch returned). For benchmarks: it tells
        # "the notifier handed it to the kernel" apart from "the client received it".
        self.fan_out_log: list[tuple[int, int]] | None = None

    def statistics(self) -> NotifierStats:
        return NotifierStats(
            sessions=len(self.sessions),
            subscriptions=sum(len(s) for s in self.md.subscribers.values()),
            events=self._events,
            batches=self._batches,
            slow_consumers=self._slow,
            ports=dict(self.ports),
            sends=self._sends,
            short_sends=self._short_sends,
            refused_connections=self.connections.refused,
            refused_logins=self.failed_logins.refused,
            session_bugs=self._session_bugs,
        )

    def record_fan_out(self) -> None:
        """Start keeping ``fan_out_log`` (one tuple per batch: for benchmarks)."""
        if self.fan_out_log is None:
            self.fan_out_log = []

    # -- publishing -----------------------------------------------------------------

    # The fan-out sweeps the sessions slice by slice, reading the ring between two
    # slices. Sending one batch to all 10,000 sessions before reading the next takes a
    # few hundred ms on loopback; a trade that arrived just after such a round started
    # waited for it to end, then for a whole round of its own: up to two rounds. Swept
    # slice by slice, every slice's next turn sends it all that it has not had yet, so
    # a new trade reaches the last session within one sweep. Each session still gets
    # one ``send`` per turn (the same sends per second as whole rounds) and every
    # batch in order: a slice's turn sends the batches it missed oldest first. A
    # session's request (subscribe, unsubscribe, ping) first brings its slice up to
    # date, so an ack or a snapshot comes after every message it already covers.

    def _take(self, events, symbol_index: int = 0) -> None:
        """Apply one batch (of the symbol at ``symbol_index`` in the topology); queue its
        messages for the fan-out. Never awaits, so a snapshot taken later reflects
        exactly the batches queued before it."""
        self._events += len(events)
        self._batches += 1
        outputs = [(stream, payloads) for stream, payloads in self.md.apply(events) if stream in self.md.subscribers]
        if not outputs and (not self._backlog or self.fan_out_log is None):
            # nothing to send (and nothing before it to keep the fan-out log in order)
            if self.fan_out_log is not None:
                self.fan_out_log.append((self._events, time.time_ns()))
            return
        batch = _Batch(self._next_batch, self._events, outputs)
        if self.tracer.every and outputs:
            seqs = events["seq"]
            batch.traced = (symbol_index, np.unique(seqs[seqs % self.tracer.every == 0]).tolist())
        self._backlog.append(batch)
        self._next_batch += 1

    def _serve_next(self) -> float:
        """Give the next slice that is behind its turn (round robin). Returns 0 when one
        was served or none is behind, else the seconds until one may be (``coalesce_s``)."""
        slices = self._slices
        now = trio.current_time() if self.coalesce_s else 0.0
        due = math.inf
        for _ in range(len(slices)):
            sl = slices[self._turn % len(slices)]
            if now and sl.turn_at + self.coalesce_s > now and self._behind(sl):
                due = min(due, sl.turn_at + self.coalesce_s)
            else:
                self._turn = (self._turn + 1) % len(slices)
                if self._serve(sl, now):
                    return 0.0
                continue
            self._turn = (self._turn + 1) % len(slices)
        if due < math.inf:
            return due - now
        self._trim()  # no slice is behind: nothing queued is needed any more
        return 0.0

    def _behind(self, sl: _Slice) -> bool:
        return bool(self._backlog) and self._backlog[-1].id >= sl.sent

    def _serve(self, sl: _Slice, now: float = 0.0) -> bool:
        """Send ``sl``'s sessions every queued batch they have not had; False if it
        had them all."""
        backlog = self._backlog
        if not backlog or backlog[-1].id < sl.sent:
            return False
        sl.turn_at = now or (trio.current_time() if self.coalesce_s else 0.0)
        start = max(0, sl.sent - backlog[0].id)
        pending = list(itertools.islice(backlog, start, None))
        sl.sent = self._next_batch
        self._send_batches(sl, pending)
        self._trim()
        return True

    def _trim(self) -> None:
        """Forget the batches every slice has been sent (and log when that was)."""
        backlog = self._backlog
        low = min((sl.sent for sl in self._slices), default=self._next_batch)
        log = self.fan_out_log
        now = time.time_ns() if log is not None or self.tracer.every else 0
        while backlog and backlog[0].id < low:
            batch = backlog.popleft()
            if log is not None:
                log.append((batch.events, now))
            if batch.traced is not None:
                self.tracer.seqs(Stage.PRINTED, batch.traced[0], batch.traced[1], now)

    def _send_batches(self, sl: _Slice, pending: list[_Batch]) -> None:
        """Send ``pending`` to ``sl``'s subscribers, one ``send`` per session.

        Each stream's messages are one blob per transport, built once per batch. A
        session gets the blobs of its streams, batch after batch, joined; sessions that
        get the same ones are grouped so each joined blob is also built once.
        """
        subs = sl.subs
        items: list[tuple[_Batch, int, set[Session]]] = []
        for batch in pending:
            for k, (stream, _) in enumerate(batch.outputs):
                members = subs.get(stream)
                if members:
                    items.append((batch, k, members))
        if not items:
            return
        groups: dict[tuple[int, ...], list[Session]]
        if all(members is items[0][2] for _, _, members in items):
            # one stream moved (the usual case): everyone gets every item
            groups = {tuple(range(len(items))): list(items[0][2])}
        else:
            got_of: dict[Session, list[int]] = {}
            for j, (_, _, members) in enumerate(items):
                for session in members:
                    got = got_of.get(session)
                    if got is None:
                        got_of[session] = [j]
                    else:
                        got.append(j)
            groups = {}
            for session, js in got_of.items():
                groups.setdefault(tuple(js), []).append(session)
        for js, sessions in groups.items():
            tcp = [s for s in sessions if s.ws is None]
            ws = [s for s in sessions if s.ws is not None]
            for members, websocket in ((tcp, False), (ws, True)):
                if not members:
                    continue
                blobs = [items[j][0].blob(items[j][1], websocket) for j in js]
                self._fan_out(members, blobs[0] if len(blobs) == 1 else b"".join(blobs))

    def _join_slice(self, session: Session) -> None:
        for sl in self._slices:
            if sl.members < self.slice_sessions:
                break
        else:
            sl = _Slice(self._next_batch)
            self._slices.append(sl)
        sl.members += 1
        session.fan_out_slice = sl

    def _leave_slice(self, session: Session) -> None:
        sl = session.fan_out_slice
        if sl is not None:
            sl.members -= 1
            session.fan_out_slice = None

    def _catch_up(self, session: Session) -> None:
        """Bring ``session``'s slice up to date: what it is sent next follows every
        message of every batch applied so far."""
        if session.fan_out_slice is not None:
            self._serve(session.fan_out_slice)

    def _fan_out(self, sessions: list[Session], blob: bytes) -> None:
        """Give ``blob`` to every session. With many sessions, the ``send`` calls are
        split between this thread and the fan-out threads: a loopback ``send`` costs
        ~15-35 µs here (most of it the receiver's TCP path and wake-up, run by the
        sender), far more than the Python around it, and it releases the GIL, so the
        threads overlap on other cores. Sessions with a queue go through ``write``."""
        pool = self._pool
        if pool is None or len(sessions) < PARALLEL_FAN_OUT_MIN:
            for session in sessions:
                if session.direct:
                    self._sends += 1
                    session.write(blob)
                    if session._pending:
                        self._short_sends += 1
                else:
                    session.write(blob)
        else:
            direct = []
            for session in sessions:
                if session.direct:
                    session.active = True
                    direct.append(session)
                else:
                    session.write(blob)
            socks = [s.sock for s in direct]
            short: list[tuple[int, int | OSError]] = []
            claims = itertools.count()  # next() is atomic under the GIL
            futures = [pool.submit(_send_claimed, socks, blob, claims, short) for _ in range(self._fan_out_threads)]
            _send_claimed(socks, blob, claims, short)
            for f in futures:
                f.result()
            self._sends += len(direct)
            self._short_sends += len(short)
            for i, result in short:
                direct[i].sent_elsewhere(blob, result)
        for session in sessions:
            if session.closing is not None:
                self._forget(session)

    async def _serve_one(self) -> None:
        """Give the next slice its turn, then let the sessions run."""
        delay = self._serve_next()
        if delay:
            await trio.sleep(delay)  # every slice that is behind had a turn just now
        else:
            # let sessions run between slices: under a flood the ring is never empty
            await trio.lowlevel.checkpoint()

    async def pump_rings(self, sources: list[RingEventSource], bell: Doorbell) -> None:
        """Read every out-ring in one task (see the module docstring for why this way)."""
        fd = bell.semaphore.fileno()
        consumers = [source.consumer for source in sources]

        def ready() -> bool:
            return any(c.available() > c.cursor for c in consumers)

        while True:
            took = False
            for index, source in enumerate(sources):
                events = source.read_nowait()
                if events is not None and len(events):
                    self._take(events, index)
                    took = True
            if not took and not self._backlog:
                bell.announce()
                try:
                    if not ready():
                        # the timeout only bounds what a post lost to a dying journaler costs
                        with trio.move_on_after(RING_WAIT_S):
                            await trio.lowlevel.wait_readable(fd)
                finally:
                    bell.withdraw()
                bell.semaphore.drain()
                continue
            await self._serve_one()

    async def heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            ping = session_message("heartbeat", ts_ns=time.time_ns())
            for session in tuple(self.sessions):
                if not session.active and session.closing is None:
                    session.send_message(ping)
                session.active = False

    # -- sessions -------------------------------------------------------------------

    def _forget(self, session: Session) -> None:
        self.md.drop(session, session.streams)
        sl = session.fan_out_slice
        if sl is not None:
            for stream in session.streams:
                members = sl.subs.get(stream)
                if members is not None:
                    members.discard(session)
                    if not members:
                        del sl.subs[stream]
        session.streams.clear()

    async def _handle(self, session: Session, request) -> None:
        # a reply follows everything already published (see ``publish``)
        self._catch_up(session)
        if isinstance(request, Ping):
            session.send_message(session_message("pong", ts_ns=time.time_ns()))
        elif isinstance(request, Login):
            if session.account is not None:
                raise ClientError("already logged in")
            ok = await self._check_login(session, request)
            if ok is None:
                return  # refused by the failed-login limits: the session is closing
            if not ok:
                # each failed attempt costs a scrypt: do not let one session retry
                session.close("bad credentials")
                return
            session.account = request.account
            session.send_message(session_message("logged_in", account=request.account))
        elif isinstance(request, Subscribe):
            for payload in self.md.subscribe(session, request, session.account):
                session.send_message(payload)
            stream = self.md.stream_of(request, session.account)
            session.streams.add(stream)
            if session.fan_out_slice is not None:
                session.fan_out_slice.subs.setdefault(stream, set()).add(session)
        elif isinstance(request, Unsubscribe):
            session.send_message(self.md.unsubscribe(session, request, session.account))
            stream = self.md.stream_of(request, session.account)
            session.streams.discard(stream)
            sl = session.fan_out_slice
            if sl is not None and stream in sl.subs:
                sl.subs[stream].discard(session)
                if not sl.subs[stream]:
                    del sl.subs[stream]

    async def _check_login(self, session: Session, request: Login) -> bool | None:
        """Whether the login's token is right; None if the failed-login limits refuse to
        check it (the session is then closed, saying why)."""
        if self.verify is None:
            return False
        if self.verify_nowait is not None:
            quick = self.verify_nowait(request.account, request.token)
            if quick is not None:
                return quick  # verified before, or an unknown account: no scrypt needed
        pair = (request.account, request.token)
        check = self._login_checks_running.get(pair)
        if check is not None:
            # the same pair is being checked already: one scrypt answers them all, at no cost
            return bool(await _wait_for_future(check))
        # A new check is charged as a failure before it runs (refunded if it passes), so
        # however many sessions try at once, at most the limits' worth of checks run.
        refusal = self.failed_logins.try_attempt(request.account, session.address, trio.current_time())
        if refusal is not None:
            session.close(refusal)
            return None
        # scrypt takes tens of ms: off the loop, one at a time, on a low-priority thread
        # (the store is not meant for concurrent callers, and a login flood must not eat
        # the cores trading needs)
        if self._login_checks is None:
            self._login_checks = check_executor()
        check = self._login_checks_running[pair] = self._login_checks.submit(self.verify, *pair)
        try:
            ok = bool(await _wait_for_future(check))
        finally:
            self._login_checks_running.pop(pair, None)
        if ok:
            self.failed_logins.attempt_succeeded(request.account, session.address)
        return ok

    def _within_rate(self, session: Session) -> bool:
        """Count one request (or WebSocket ping) of ``session``; past its rate, answer it
        with an error instead (``MAX_ERRORS`` of them close the session) and say False."""
        now = trio.current_time()
        limits = self.limits
        if not session.requests.try_take(now):
            why = f"too many requests (at most {limits.requests_per_s:g} a second, bursts of {limits.request_burst})"
        elif not self.address_requests.try_take(session.address, now):
            why = f"too many requests from your address (at most {limits.address_requests_per_s:g} a second)"
        else:
            return True
        self._client_error(session, why)
        return False

    async def _request(self, session: Session, raw: bytes | str) -> None:
        if not self._within_rate(session):
            return
        try:
            request = parse_request(raw, self.symbols, max_bytes=self.limits.max_line_bytes)
            await self._handle(session, request)
        except ClientError as exc:
            self._client_error(session, exc.reason)

    def _client_error(self, session: Session, reason: str) -> None:
        """Answer a bad request with an error; the ``MAX_ERRORS``-th closes the session."""
        session.errors += 1
        if session.errors >= MAX_ERRORS:
            session.close(f"too many errors; last: {reason}")
        else:
            session.send_message(session_message("error", reason=reason))

    async def _read_tcp(self, session: Session) -> None:
        decoder = LineDecoder(self.limits.max_line_bytes)
        partial_since = None  # when the line now buffered began to arrive
        while session.closing is None:
            deadline = math.inf if partial_since is None else partial_since + self.limits.partial_request_timeout_s
            data = await self._recv(session, deadline, "a request took too long to arrive", tell=True)
            decoder.receive_data(data)
            completed = False
            try:
                while session.closing is None and (line := decoder.next_line()) is not None:
                    completed = True
                    if line.strip():
                        await self._request(session, line)
                        # one request per turn: a session's burst of them (a depth
                        # snapshot each) must not hold the loop between two ring reads
                        await trio.lowlevel.checkpoint()
            except ClientError as exc:  # a line too long: the stream has lost its place
                session.close(exc.reason)
            if not decoder.buffered:
                partial_since = None
            elif completed or partial_since is None:
                partial_since = trio.current_time()

    async def _read_ws(self, session: Session) -> None:
        server = session.ws
        assert server is not None
        limits = self.limits
        handshake_deadline = trio.current_time() + limits.handshake_timeout_s
        partial_since = None  # when input that did not complete a message began to arrive
        while session.closing is None:
            if not server.open:
                data = await self._recv(session, handshake_deadline, "the WebSocket handshake took too long")
            elif partial_since is not None:
                deadline = partial_since + limits.partial_request_timeout_s
                data = await self._recv(session, deadline, "a message took too long to arrive", tell=True)
            else:
                data = await self._recv(session)
            actions = server.receive_data(data)
            for action in actions:
                if isinstance(action, Send):
                    session.write(action.data)
                elif isinstance(action, Pong):
                    if self._within_rate(session):
                        session.write(action.data)
                elif isinstance(action, Request):
                    await self._request(session, action.text)
                    await trio.lowlevel.checkpoint()  # one request per turn, as on TCP
                elif isinstance(action, Refuse):
                    self._client_error(session, action.reason)
                elif isinstance(action, End):
                    session.close(action.reason, tell=action.tell)
                if session.closing is not None:
                    return
            if not server.incomplete:
                partial_since = None
            elif actions or partial_since is None:
                partial_since = trio.current_time()

    async def _recv(self, session: Session, deadline: float = math.inf, late: str = "", *, tell: bool = False) -> bytes:
        """The next bytes from the session's socket. ``SessionClosed`` at EOF or on a
        socket error, and at ``deadline`` (``trio.current_time()``) with ``late`` as
        the reason, told to the client if ``tell``."""
        while True:
            try:
                data = session.sock.recv(RECV_BYTES)
            except BlockingIOError:
                if deadline == math.inf:
                    await trio.lowlevel.wait_readable(session.sock)
                    continue
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_readable(session.sock)
                    continue
                raise SessionClosed(late, tell=tell) from None
            except OSError as exc:
                raise SessionClosed(None) from exc
            if not data:
                raise SessionClosed(None)
            return data

    async def _run_session(self, sock: socket.socket, websocket: bool, peer: Any, address: str) -> None:
        """Serve one connection until it ends, then close its socket and release the
        connection limit it was admitted under (``_accept_loop``, as ``address``)."""
        try:
            session = Session(
                sock, websocket, self.max_queue_bytes, session_id=next(self._session_ids), peer=peer, limits=self.limits
            )
            await self._serve_session(session)
        finally:
            sock.close()
            self.connections.release(address)

    async def _serve_session(self, session: Session) -> None:
        self.sessions.add(session)
        self._join_slice(session)
        try:
            try:
                with trio.CancelScope() as scope:
                    session._cancel = scope
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._session_reader, session)
                        await session.writer()
            except Exception:
                # Isolation: whatever went wrong is this session's alone. Cancellation
                # (shutdown) is a BaseException and passes.
                self._session_bugs += 1
                log.exception(
                    "session %d (%s, %s): bug while serving it; closing it",
                    session.id,
                    _peer_text(session.peer),
                    "tcp" if session.ws is None else "websocket",
                )
                session.close("internal error; the session is closed")
        finally:
            self._forget(session)
            self._leave_slice(session)
            self.sessions.discard(session)
            if session.closing and session.closing.startswith("slow consumer"):
                self._slow += 1
            try:
                await self._linger(session)
            except Exception:
                log.exception("session %d (%s): bug while closing it", session.id, _peer_text(session.peer))

    async def _session_reader(self, session: Session) -> None:
        try:
            if session.ws is None:
                await self._read_tcp(session)
            else:
                await self._read_ws(session)
        except SessionClosed as exc:
            session.close(exc.reason or "connection closed by the client", tell=exc.tell)

    async def _linger(self, session: Session) -> None:
        """Give a closed session ``close_grace_s`` to take its tail and the error
        message; a client that does not read is cut off after that."""
        if session.closing is None or session.queued_bytes == 0:
            return
        with trio.move_on_after(self.close_grace_s), contextlib.suppress(OSError):
            await session.flush()
            if session.ws is not None and (frame := session.ws.close_frame()):
                with contextlib.suppress(BlockingIOError):
                    session.sock.send(frame)
            session.sock.shutdown(socket.SHUT_WR)

    # -- listeners ------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock

    async def _accept_loop(self, listener: socket.socket, websocket: bool, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_IGNORABLE_ERRNOS:
                    continue
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.warning("accept: %s; retrying in 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            conn.setblocking(False)
            address = address_key(peer)
            refusal = self.connections.admit(address)
            if refusal is not None:
                _refuse_connection(conn, refusal, websocket)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.sndbuf is not None:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            except OSError:  # reset already: nothing to serve
                conn.close()
                self.connections.release(address)
                continue
            nursery.start_soon(self._run_session, conn, websocket, peer, address)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, read the rings and serve until cancelled.

        ``task_status.started(ports)`` reports ``{"tcp": port, "ws": port}`` once both
        listeners are bound (useful with port 0)."""
        listeners: list[tuple[socket.socket, bool]] = []
        try:
            if self.tcp_port is not None:
                listeners.append((self._listen(self.tcp_port), False))
                self.ports["tcp"] = listeners[-1][0].getsockname()[1]
            if self.ws_port is not None:
                listeners.append((self._listen(self.ws_port), True))
                self.ports["ws"] = listeners[-1][0].getsockname()[1]
            async with trio.open_nursery() as nursery:
                for listener, websocket in listeners:
                    nursery.start_soon(self._accept_loop, listener, websocket, nursery)
                if self.sources:
                    bell = Doorbell([source.consumer.sleeper for source in self.sources])
                    nursery.start_soon(self.pump_rings, list(self.sources), bell)
                nursery.start_soon(self.heartbeats)
                task_status.started(dict(self.ports))
        finally:
            for listener, _ in listeners:
                listener.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            if self._login_checks is not None:
                self._login_checks.shutdown(wait=False, cancel_futures=True)


async def _wait_for_future(future: concurrent.futures.Future) -> Any:
    """Wait in trio for a ``concurrent.futures`` future; its result or its exception.
    If the waiter is cancelled the work still finishes on its thread (a running scrypt
    cannot be stopped), and nobody reads its result."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    await done.wait()
    return future.result()


def _peer_text(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown peer"


def _refuse_connection(conn: socket.socket, reason: str, websocket: bool) -> None:
    """Tell a connection over the limits why, in its protocol, and close it: one
    non-blocking send, nothing kept (a flood of them must cost as little as possible)."""
    if websocket:
        body = reason.encode()
        answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
        answer += b"Connection: close\r\n\r\n" + body
    else:
        answer = session_message("error", reason=reason) + b"\n"
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


####################################################################################
# Ring sources and the process
####################################################################################


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
        self.consumer.commit(batch.hi)
        return events

    def close(self) -> None:
        self.consumer = None  # type: ignore[assignment]
        self.ring.close()


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
            for _, events in journal.read_events(source.symbol, 0, upto):
                md.apply(events)
                replayed += len(events)
    finally:
        journal.close()
    return replayed


class _GcPauses:
    """The garbage collector's pauses (for ``stats_out``): ``(generation, start
    time.time_ns(), duration ns)`` each. A full collection walks every object of
    10,000 sessions and stops the fan-out meanwhile."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int, int]] = []
        self._start = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.time_ns()
        else:
            self.pauses.append((info["generation"], self._start, time.time_ns() - self._start))

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


async def serve(
    config: Config,
    topology: Topology,
    *,
    verify: Callable[[int, int], bool] | None = None,
    on_ready: Callable[[dict[str, int]], Any] | None = None,
    stats_out: str | os.PathLike[str] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the notifier for ``config`` on ``topology``'s out-rings until cancelled.

    - ``verify(account, token) -> bool``: checks logins for the orders channel; by
      default the data directory's ``AccountStore``.
    - The depth views are rebuilt from the journal in ``config.data_dir`` up to where
      the out-rings are read from (``replay_journal``); with no journal they start empty.
    - ``on_ready(ports)``: called once the listeners are bound and the pump runs, with
      ``{"tcp": port, "ws": port}``.
    - Listens on ``config.host``, ``config.md_port`` (TCP) and ``config.ws_port``; the
      sessions' limits and the fan-out are ``config.market_data``'s.
    - ``stats_out``: a path; on the way out, ``statistics()``, the garbage collector's
      pauses and the per-batch ``fan_out_log`` are written there as JSON (benchmarks).
    """
    raise_nofile_limit()
    sources = ring_sources(topology)
    tracer = tracer_for(config, NOTIFIER)
    verify_nowait = None
    if verify is None:
        from ringex.order_entry.accounts import AccountStore  # noqa: PLC0415

        store = AccountStore.open(config.data_dir)
        verify, verify_nowait = store.verify, store.verify_nowait
    settings = config.market_data
    notifier = Notifier(
        topology.symbols,
        sources,
        host=config.host,
        tcp_port=config.md_port,
        ws_port=config.ws_port,
        verify=verify,
        max_queue_bytes=settings.max_queue_bytes,
        heartbeat_s=settings.heartbeat_s,
        fan_out_threads=DEFAULT_FAN_OUT_THREADS if settings.fan_out_threads < 0 else settings.fan_out_threads,
        close_grace_s=settings.close_grace_s,
        sndbuf=settings.sndbuf or None,
        slice_sessions=settings.slice_sessions,
        coalesce_s=settings.coalesce_ms / 1000,
        tracer=tracer,
        limits=settings,
        verify_nowait=verify_nowait,
    )
    gc_pauses = _GcPauses() if stats_out else None
    if stats_out:
        notifier.record_fan_out()
    try:
        replayed = replay_journal(notifier.md, config.data_dir, sources)
        log.info("depth views rebuilt from %d journaled events", replayed)
        # What is allocated by now lives as long as the process: out of the collector's
        # way, a full collection scans only what serving allocates (sessions come and go;
        # a connection flood's churn set off full collections over every import's objects)
        gc.freeze()
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(notifier.run)
            if on_ready is not None:
                on_ready(ports)
            task_status.started(notifier)
    finally:
        for source in sources:
            source.close()
        tracer.close()
        if gc_pauses is not None:
            gc_pauses.stop()
            doc = {
                "statistics": dataclasses.asdict(notifier.statistics()),
                "gc_pauses": gc_pauses.pauses,
                "fan_out_log": notifier.fan_out_log,
            }
            with open(stats_out, "w") as fh:
                json.dump(doc, fh)


def run_notifier(config: Config, topology: Topology, control) -> int:
    """The notifier process (``ringex.roles``): serve until SIGINT or SIGTERM."""
    import signal  # noqa: PLC0415

    async def _main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        serve,
                        config,
                        topology,
                        on_ready=lambda ports: control.set_ready(NOTIFIER, True),
                        stats_out=config.market_data.stats_out or None,
                    )
                )
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(_main)
    return 0
