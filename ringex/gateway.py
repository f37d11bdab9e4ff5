"""The order entry gateway: TCP sessions in, each symbol's in-ring out, acks once durable.

::

    clients ──TCP──► selectors loop ──► Session (sans-IO) ──publish──► in-ring[SYM] ──► matcher
                          ▲                                               │
                          │ eventfd ◄── journal watcher thread ◄──────────┘ "journaler" cursor
                          └── K once the journaler's cursor has passed the command

The gateway is the single producer of every in-ring. One thread runs a selectors
(epoll) loop over the listening socket, the sessions and an eventfd. Each ``recv``
is handed whole to its ``Session`` (``ringex.session``), which parses, validates,
throttles and stamps all its frames with array operations and publishes the valid
ones into each symbol's in-ring in one slice.

Durability and the watcher threads: a ``K`` may go out only once the journaler's
consumer cursor on that in-ring has passed the command (the journaler stores it only
after the LMDB commit). The loop cannot sleep on the ring's semaphore, and polling
the cursors from the loop is poor here: epoll's timeout has 1 ms granularity
(Python rounds it up), so polling would add up to 1 ms to every ack while an fsync
commit takes ~0.2 ms; a loop that never sleeps while acks are pending would burn a
core on a 2-core machine. So a small thread sleeps in the rings' own wait machinery
(the journaler's commit posts the producer's semaphore) and, when a cursor moves,
writes the eventfd the loop watches.

The supervisor's in-rings do better: they share one *pipe doorbell* for their
producer (``ringex.ring.PipeDoorbell``), a FIFO the loop polls with its sockets.
While acks are pending the loop announces itself on every in-ring
(``Doorbell.announce``), re-checks the cursors, and polls; the journaler's commit
then writes the FIFO and wakes the loop itself, one hop fewer than through a thread.
On rings without it (tests that build their own) the watcher threads remain, one per
semaphore the rings' producer sleeps on; they idle in 50 ms naps.

Logins: a pair the ``AccountStore`` has verified before is answered at once; a new
one needs a scrypt (~80 ms here), which runs on one worker thread (scrypt releases
the GIL) while the session waits in VERIFYING, so a burst of logins, good or bad,
never stalls the loop or the other sessions. Before that check runs, the failed-login
limits (``ringex.limits.FailedLoginLimit``: per account, per address, in total) may
refuse it with ``J`` THROTTLED, so a flood of wrong tokens costs a bounded number of
checks, not a core.

Limits (``config.order_entry``, or ``limits``): sessions in total and per address
(``E`` SESSION_LIMIT), the login deadline, request rate and in-flight cap, garbage
frames, and replies owed to a client that does not read them.

Sequences: the ``seq`` in a ``K`` is the command's sequence in its symbol's journal,
``base + ring sequence``; ``seq_bases`` gives each symbol's base (the supervisor reads
``Journal.next_seq`` before it starts the gateway on new rings).

Readiness: orders are answered ``X`` NOT_READY while ``ready()`` is false; with a
control block that is ``ControlBlock.accepting`` (exchange state READY).

Process entry: ``python -m ringex.gateway --config FILE --ring-prefix P --control NAME``
(see ``main``), or ``serve(config, ...)`` in a spawned child.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import errno
import functools
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from ringex.accounts import AccountStore, check_executor
from ringex.config import Config, load_config
from ringex.control import ExchangeState
from ringex.limits import ConnectionLimit, FailedLoginLimit, address_key
from ringex.protocol import FRAME_SIZE, Reason, ReplyType, SymbolTable, encode_reply
from ringex.records import COMMAND
from ringex.ring import Producer, Ring
from ringex.session import Limits, OrderIdCounter, Session, SessionState, SystemClock, warm_up
from ringex.wait import Doorbell

__all__ = ["Gateway", "GatewayStatistics", "serve", "main", "in_ring_name", "JOURNAL_CONSUMER", "ROLE"]

log = logging.getLogger("ringex.gateway")

JOURNAL_CONSUMER = "journaler"
ROLE = "gateway"
DEFAULT_RING_PREFIX = "ringex"
# Bytes taken per readable event: one recv per session per loop turn keeps a flooding
# session from starving the others, and 256 KiB is 4,096 frames, one ring slice each.
RECV_BYTES = 256 * 1024
# How often timers (heartbeats, idle timeouts, control-block heartbeat) are checked.
TICK_S = 0.1
# A closing session whose last replies cannot be written within this is dropped.
CLOSE_LINGER_S = 2.0
LISTEN_BACKLOG = 1024
# Like trio's SocketListener: errors of the one connection being accepted (reset before
# we took it...), never of the listener; a flood of connect-then-reset must not matter.
ACCEPT_IGNORABLE_ERRNOS = {
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET")
    + ("EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH")
    if hasattr(errno, name)
}


def in_ring_name(symbol: str, prefix: str = DEFAULT_RING_PREFIX) -> str:
    """The shared-memory name of ``symbol``'s in-ring (the supervisor creates it, with
    consumer ``"journaler"`` among its consumers)."""
    return f"{prefix}.in.{symbol}"


@dataclasses.dataclass(frozen=True)
class GatewayStatistics:
    sessions: int
    sessions_total: int
    requests: int
    published: int
    closed_slow: int
    closed_garbage: int
    waiting_sessions: int
    refused_sessions: int
    refused_logins: int
    session_bugs: int
    durable: dict[str, int]
    published_seq: dict[str, int]


class _Conn:
    __slots__ = ("sock", "session", "out", "writing", "closing_since", "peer", "address")

    def __init__(self, sock: socket.socket, session: Session, peer: object = None) -> None:
        self.sock = sock
        self.session = session
        self.out = bytearray()
        self.writing = False
        self.closing_since: float | None = None
        self.peer = peer
        self.address = address_key(peer)  # what the connection and failed-login limits count


class _JournalWatcher(threading.Thread):
    """Sleeps until the journaler's cursor moves on any of its in-rings, then pokes
    the loop.

    It sleeps on the rings' producer semaphore (one doorbell for them all), which
    every consumer commit may post; the loop thread never sleeps on it (it only uses
    ``try_claim``), so this thread may.
    """

    def __init__(self, rings: list[Ring], producers: list[Producer], wake_fd: int, stop: threading.Event) -> None:
        super().__init__(name=f"journal-watch {rings[0].name}+{len(rings) - 1}", daemon=True)
        self._bell = Doorbell([p.sleeper for p in producers])
        self._cursors = [functools.partial(ring.consumer_cursor, JOURNAL_CONSUMER) for ring in rings]
        self._wake_fd = wake_fd
        self._stopping = stop  # not ``_stop``: threading.Thread has a method of that name

    def run(self) -> None:
        cursors = self._cursors
        seen = [cursor() for cursor in cursors]

        def moved() -> bool:
            return any(cursor() > last for cursor, last in zip(cursors, seen, strict=True))

        while not self._stopping.is_set():
            # the timeout only bounds how late a stop is noticed; no spin: the loop
            # thread needs the GIL more than this thread needs a head start
            if self._bell.wait(moved, 0.5, spin_tries=0):
                seen[:] = [cursor() for cursor in cursors]
                os.eventfd_write(self._wake_fd, 1)


class Gateway:
    """The gateway's state and loop. ``serve`` builds one and runs it.

    Resource handling: the gateway attaches the in-rings (it does not create or
    unlink them: the supervisor owns their lifetime) and closes its mappings, sockets
    and eventfd in ``close()``.

    Error handling: socket errors of one session close that session only. An
    exception while serving a session (its input, its login, its replies, its timers)
    is a bug; it is logged with its traceback, the session's id and peer, and that
    session is closed, so one client can never stop the gateway.
    """

    def __init__(
        self,
        config: Config,
        accounts: AccountStore,
        *,
        ring_prefix: str = DEFAULT_RING_PREFIX,
        ready: Callable[[], bool] | None = None,
        limits: Limits | None = None,
        seq_bases: Mapping[str, int] | None = None,
        first_order_id: int | None = None,
        host: str | None = None,
        port: int | None = None,
        control=None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.limits = limits = limits or config.order_entry
        self.connections = ConnectionLimit(limits.max_sessions, limits.max_sessions_per_address)
        self.failed_logins = FailedLoginLimit(
            limits.failed_logins_per_account,
            limits.failed_logins_per_address,
            limits.failed_logins_total,
            limits.failed_logins_window_s,
        )
        self.session_bugs = 0
        self.ready = ready or (lambda: True)
        self.control = control
        self.table = SymbolTable(config.symbols)
        self.order_ids = OrderIdCounter(first_order_id)
        self.clock = SystemClock()
        self.rings: list[Ring] = []
        self.producers: list[Producer] = []
        bases = dict(seq_bases or {})
        self.bases = np.array([int(bases.get(s.name, 0)) for s in self.table.specs], dtype=np.int64)
        self._stop = threading.Event()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._watchers: list[_JournalWatcher] = []
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        try:
            for spec in self.table.specs:
                ring = Ring.attach(in_ring_name(spec.name, ring_prefix), COMMAND)
                self.rings.append(ring)
                self.producers.append(ring.producer())
            self._journal_probes = [functools.partial(r.consumer_cursor, JOURNAL_CONSUMER) for r in self.rings]
            self._bell = Doorbell.for_event_loop([p.sleeper for p in self.producers])
            if self._bell is not None:
                self.sel.register(self._bell.semaphore.fileno(), selectors.EVENT_READ, "durable")
            else:  # one watcher thread per semaphore the producers sleep on
                by_sem: dict[str, list[int]] = {}
                for i, producer in enumerate(self.producers):
                    by_sem.setdefault(producer.sleeper.semaphore_name, []).append(i)
                for group in by_sem.values():
                    rings = [self.rings[i] for i in group]
                    producers = [self.producers[i] for i in group]
                    self._watchers.append(_JournalWatcher(rings, producers, self._wake_fd, self._stop))
            # A previous gateway on these rings may have issued ids the journal has not
            # got yet (the supervisor's first_order_id comes from the journal): start
            # above every new order still in a ring, so no id is ever issued twice.
            in_rings = max((_max_order_id_in(ring) for ring in self.rings), default=0)
            if in_rings >= self.order_ids.next_id:
                log.info("resuming order ids after %d, the highest in the in-rings", in_rings)
                self.order_ids.next_id = in_rings + 1
            self.durable = np.zeros(len(self.rings), dtype=np.int64)
            self._refresh_durable()
            self.listener = socket.create_server(
                (host if host is not None else config.host, port if port is not None else config.order_port),
                backlog=LISTEN_BACKLOG,
                reuse_port=False,
            )
            self.listener.setblocking(False)
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
            self.sel.register(self._wake_fd, selectors.EVENT_READ, "wake")
        except BaseException:
            self.close()
            raise
        self.conns: dict[int, _Conn] = {}
        self._waiting: set[_Conn] = set()
        # Logins whose scrypt check runs off the loop (one worker: a burst of bad logins
        # queues there instead of stalling every session), and their answers.
        self._verifier = check_executor()
        self._verified: collections.deque[tuple[tuple[int, int], bool]] = collections.deque()
        self._verifying: dict[tuple[int, int], list[_Conn]] = {}  # (account, token) -> sessions
        self._check_charged_to: dict[tuple[int, int], str] = {}  # (account, token) -> address charged
        self._next_session = 1
        self.sessions_total = 0
        self.published = 0
        self.closed_slow = 0
        self.closed_garbage = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    # -- durability -----------------------------------------------------------------

    def _refresh_durable(self) -> None:
        # cursor = last durable ring sequence; durable count = cursor + 1, in journal terms
        for i, probe in enumerate(self._journal_probes):
            self.durable[i] = self.bases[i] + probe() + 1

    def _durable_moved(self) -> bool:
        durable, bases = self.durable, self.bases
        return any(bases[i] + probe() + 1 > durable[i] for i, probe in enumerate(self._journal_probes))

    def _publish(self, sym: int, commands: np.ndarray) -> int | None:
        producer = self.producers[sym]
        if len(commands) > self.rings[sym].capacity:
            return None
        batch = producer.try_claim(len(commands))
        if batch is None:
            return None
        batch.fill(commands)
        producer.publish(batch.hi)
        self.published += len(commands)
        return int(self.bases[sym]) + batch.lo

    # -- the loop -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return (safe from a signal handler or another thread)."""
        self._stop.set()
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def run(self) -> None:
        """Serve until ``stop()``."""
        for w in self._watchers:
            w.start()
        if self.control is not None:
            self.control.set_ready(ROLE, True)
        next_tick = time.monotonic() + TICK_S
        select = self.sel.select
        bell = self._bell
        while not self._stop.is_set():
            touched: set[_Conn] = set()
            timeout = max(0.0, next_tick - time.monotonic())
            armed = bell is not None and bool(self._waiting)
            if armed:
                # acks are pending: ask the journaler to ring, then look once more
                bell.announce()
                if self._durable_moved():
                    timeout = 0.0
            events = select(timeout)
            if armed:
                bell.withdraw()
            for key, mask in events:
                what = key.data
                if what == "listen":
                    self._accept()
                elif what == "durable":
                    bell.semaphore.drain()
                elif what == "wake":
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                else:
                    conn: _Conn = what
                    if mask & selectors.EVENT_READ:
                        self._receive(conn)
                    touched.add(conn)
            if self._verified:
                self._finish_logins(touched)
            if self._waiting:
                self._refresh_durable()
                touched |= self._waiting
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._tick(now)
                touched = set(self.conns.values())
            for conn in touched:
                self._flush(conn)

    def _session_bug(self, conn: _Conn, doing: str) -> None:
        """Isolation: log the bug that just struck while ``doing`` something for one
        session, with the session's identity, and close that session only."""
        self.session_bugs += 1
        session = conn.session
        log.exception(
            "session %d (%s, account %d): bug while %s; closing it",
            session.session_id,
            _peer_text(conn.peer),
            session.account,
            doing,
        )
        session.state = SessionState.CLOSED
        self._close(conn)

    def _tick(self, now: float) -> None:
        if self.control is not None:
            self.control.beat(ROLE)
            if self.control.state is ExchangeState.HALTED:
                # The journaler has stopped for good: what waits for it gets its X now.
                for conn in list(self.conns.values()):
                    try:
                        refused = conn.session.waiting_for_journal and conn.session.refuse_pending()
                    except Exception:
                        self._session_bug(conn, "refusing its pending requests")
                        continue
                    if refused:
                        self._flush(conn)
        for conn in list(self.conns.values()):
            try:
                conn.session.poll_timers()
            except Exception:
                self._session_bug(conn, "running its timers")
                continue
            if conn.closing_since is not None and now - conn.closing_since > CLOSE_LINGER_S:
                self._close(conn, why="its last replies were not read in time")

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in ACCEPT_IGNORABLE_ERRNOS:
                    continue  # that one connection was reset before we took it
                # EMFILE and friends: keep serving the sessions we have
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            address = address_key(peer)
            if self.connections.admit(address) is not None:
                try:
                    sock.send(encode_reply(ReplyType.ERROR, reason=Reason.SESSION_LIMIT, ts_ns=time.time_ns()))
                except OSError:
                    pass
                _close_quietly(sock)
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already: nothing to serve
                self.connections.release(address)
                _close_quietly(sock)
                continue
            sid = self._next_session
            self._next_session = (self._next_session + 1) & 0xFFFFFFFF or 1
            session = Session(sid, self.table, None, self.order_ids, self.limits, self.clock)
            conn = _Conn(sock, session, peer)
            session.verify = functools.partial(self._verify, conn)
            self.conns[sock.fileno()] = conn
            self.sessions_total += 1
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _verify(self, conn: _Conn, account: int, token: int) -> bool | Reason | None:
        quick = self.accounts.verify_nowait(account, token)
        if quick is not None:
            return quick
        waiting = self._verifying.get((account, token))
        if waiting is not None:
            # the same pair is being checked already (a fleet of sessions logging in
            # with one account at start-up): one scrypt answers them all, at no cost
            waiting.append(conn)
            return None
        # A new check is charged as a failure before it runs and refunded if it passes
        # (``_finish_logins``): past the limits, the login is refused unchecked.
        refusal = self.failed_logins.try_attempt(account, conn.address, time.monotonic())
        if refusal is not None:
            log.debug(
                "session %d (%s): login of account %d refused: %s",
                conn.session.session_id,
                _peer_text(conn.peer),
                account,
                refusal,
            )
            return Reason.THROTTLED
        self._verifying[(account, token)] = [conn]
        self._check_charged_to[(account, token)] = conn.address
        future = self._verifier.submit(self.accounts.verify, account, token)
        future.add_done_callback(functools.partial(self._verify_done, (account, token)))
        return None  # the session waits in VERIFYING; _finish_logins answers it

    def _verify_done(self, pair: tuple[int, int], future: concurrent.futures.Future) -> None:
        # on the worker thread: hand the answer to the loop and wake it
        try:
            ok = bool(future.result())
        except Exception:
            log.exception("verifying a login failed; refusing it")
            ok = False
        self._verified.append((pair, ok))
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed at shutdown

    def _finish_logins(self, touched: set) -> None:
        while self._verified:
            pair, ok = self._verified.popleft()
            address = self._check_charged_to.pop(pair, None)
            if ok and address is not None:
                self.failed_logins.attempt_succeeded(pair[0], address)
            for conn in self._verifying.pop(pair, ()):
                if conn.sock.fileno() < 0:
                    continue
                try:
                    conn.session.finish_login(ok, bool(self.ready()), self._publish)
                except Exception:
                    self._session_bug(conn, "finishing its login")
                    continue
                self._note_closing(conn)
                touched.add(conn)

    def _note_closing(self, conn: _Conn) -> None:
        if conn.session.state in (SessionState.CLOSING, SessionState.CLOSED) and conn.closing_since is None:
            conn.closing_since = time.monotonic()
            if conn.session.close_reason == Reason.UNKNOWN_MESSAGE:
                self.closed_garbage += 1

    def _receive(self, conn: _Conn) -> None:
        if conn.session.state is SessionState.CLOSED or conn.closing_since is not None:
            self._discard_input(conn)
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        try:
            conn.session.receive_data(data, bool(self.ready()), self._publish)
        except Exception:
            self._session_bug(conn, "processing its input")
            return
        self._note_closing(conn)
        if not data:
            self._close(conn, why="")  # the client closed: nothing to report

    def _discard_input(self, conn: _Conn) -> None:
        # A closing session's further bytes are ignored, but read: closing a socket
        # with unread input makes the kernel send RST, which can destroy the last
        # replies (the J or E) before the client reads them.
        try:
            if not conn.sock.recv(RECV_BYTES):
                self._close(conn, why="")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._close(conn, why=f"socket error {exc}")

    def _flush(self, conn: _Conn) -> None:
        try:
            self._write_replies(conn)
        except Exception:
            self._session_bug(conn, "writing its replies")

    def _write_replies(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        session = conn.session
        data = session.data_to_send(self.durable)
        if session.pending_acks:
            self._waiting.add(conn)
        else:
            self._waiting.discard(conn)
        if data:
            conn.out += data
        if conn.out or conn.writing:
            self._send(conn)
            if conn.sock.fileno() < 0:
                return
        owed = len(conn.out) + FRAME_SIZE * session.queued_replies
        if owed > self.limits.max_output_bytes:
            # unread, or queued behind K's waiting for the journal: either way a client
            # that keeps sending without reading its answers must not grow our memory
            self.closed_slow += 1
            self._close(conn, why=f"{owed} reply bytes owed and unread (slow consumer)")
            return
        if session.state is SessionState.CLOSED and not conn.out and not session.pending_replies():
            reason = session.close_reason
            self._close(conn, graceful=True, why="" if reason == Reason.OK else f"closed with {reason.name}")

    def _send(self, conn: _Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._close(conn, why=f"socket error {exc}")
                return
            del conn.out[:sent]
        # watch for writability only while replies are stuck in the socket buffer
        want = bool(conn.out)
        if want != conn.writing:
            conn.writing = want
            events = selectors.EVENT_READ | selectors.EVENT_WRITE if want else selectors.EVENT_READ
            self.sel.modify(conn.sock, events, conn)

    def _close(self, conn: _Conn, graceful: bool = False, why: str = "") -> None:
        """Close a session; ``why`` (if any) is logged: an operator wants to know why
        the exchange hung up on a client, not that a client left."""
        sock = conn.sock
        if sock.fileno() < 0:
            return
        if why:
            log.info("session %d (account %d): %s", conn.session.session_id, conn.session.account, why)
        self.connections.release(conn.address)
        self.conns.pop(sock.fileno(), None)
        self._waiting.discard(conn)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        conn.session.state = SessionState.CLOSED
        if graceful:
            try:
                while sock.recv(RECV_BYTES):
                    pass
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        _close_quietly(sock)

    def statistics(self) -> GatewayStatistics:
        self._refresh_durable()
        names = [s.name for s in self.table.specs]
        return GatewayStatistics(
            sessions=len(self.conns),
            sessions_total=self.sessions_total,
            requests=sum(c.session.requests for c in self.conns.values()),
            published=self.published,
            closed_slow=self.closed_slow,
            closed_garbage=self.closed_garbage,
            waiting_sessions=len(self._waiting),
            refused_sessions=self.connections.refused,
            refused_logins=self.failed_logins.refused,
            session_bugs=self.session_bugs,
            durable=dict(zip(names, self.durable.tolist(), strict=True)),
            published_seq={n: int(b) + p.cursor + 1 for n, b, p in zip(names, self.bases, self.producers, strict=True)},
        )

    def close(self) -> None:
        self._stop.set()
        if hasattr(self, "_verifier"):
            self._verifier.shutdown(wait=True, cancel_futures=True)
        for conn in list(getattr(self, "conns", {}).values()):
            self._close(conn)
        if self.listener is not None:
            _close_quietly(self.listener)
        for w in self._watchers:
            if w.is_alive():
                w.join(timeout=1.0)
        self.sel.close()
        try:
            os.close(self._wake_fd)
        except OSError:
            pass
        self.producers.clear()
        for ring in self.rings:
            ring.close()
        self.rings.clear()


def _max_order_id_in(ring: Ring) -> int:
    """The highest order id of a new order among the ring's slots (0 if none)."""
    published = ring.producer_cursor + 1
    slots = ring.slots[: min(published, ring.capacity)]
    ids = slots["order_id"][slots["msg_type"] == ord("N")]
    return int(ids.max()) if len(ids) else 0


def _peer_text(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown peer"


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


def serve(
    config: Config,
    *,
    accounts: AccountStore | None = None,
    ring_prefix: str = DEFAULT_RING_PREFIX,
    ready: Callable[[], bool] | None = None,
    control=None,
    limits: Limits | None = None,
    seq_bases: Mapping[str, int] | None = None,
    first_order_id: int | None = None,
    host: str | None = None,
    port: int | None = None,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit status (0).

    Arguments:

    - ``config``: symbols (what is listed and their bands/ticks/max qty), ``host`` and
      ``order_port`` (overridden by ``host``/``port``; port 0 picks a free port),
      ``data_dir`` (where ``accounts.json`` is, unless ``accounts`` is given).
    - ``ring_prefix``: in-rings are attached as ``in_ring_name(symbol, ring_prefix)``;
      they must exist, with a consumer named ``"journaler"``.
    - ``ready``: callable, true while orders may be accepted; else ``control``'s
      ``accepting``; else always true. ``control``: a ``ControlBlock``; the gateway
      reports ready on it as role ``"gateway"`` and heartbeats it.
    - ``limits``: ``ringex.session.Limits`` (sessions, rate, in-flight, timeouts,
      failed logins); default ``config.order_entry``.
    - ``seq_bases``: ``{symbol: journal sequence of ring sequence 0}`` so a ``K``
      carries journal sequences; 0 for a symbol not given.
    - ``first_order_id``: the first exchange order id to issue (default: the clock in
      microseconds, see ``OrderIdCounter``); raised above any new order still in the
      in-rings, which a previous gateway may have issued before the journal had it.
    - ``on_listening(address)``: called once the socket listens (e.g. to print the port).

    Resource handling: attaches (never creates or unlinks) the rings and closes
    everything it opened before returning. Error handling: a missing ring or a busy
    port raises at start-up, before anything is served.
    """
    if accounts is None:
        accounts = AccountStore.open(config.data_dir)
    warm_up()  # compile or load the jitted checks before the first client waits on them
    if ready is None and control is not None:
        ready = lambda: control.accepting  # noqa: E731
    gateway = Gateway(
        config,
        accounts,
        ring_prefix=ring_prefix,
        ready=ready,
        limits=limits,
        seq_bases=seq_bases,
        first_order_id=first_order_id,
        host=host,
        port=port,
        control=control,
    )
    previous = {sig: signal.signal(sig, lambda *_: gateway.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if control is not None:
            control.set_pid(ROLE, os.getpid())
        if on_listening is not None:
            on_listening(gateway.address)
        log.info("listening on %s:%d", *gateway.address)
        # What is allocated by now (numba, numpy, the rings: ~100k objects) lives as long
        # as the process. Out of the collector's way, a full collection scans only what
        # serving allocates: over numba's objects one paused the loop ~55 ms, and the
        # churn of a connection flood set them off (the hostile benchmark's ack tail).
        gc.freeze()
        gateway.run()
    finally:
        if control is not None:
            control.set_ready(ROLE, False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gateway.close()
    return 0


def _limits_from_args(args: argparse.Namespace, config: Config) -> Limits:
    """The config's ``[order_entry]`` limits, with those given as flags replaced."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Limits) if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(config.order_entry, **given)


def main(argv: list[str] | None = None) -> int:
    """``python -m ringex.gateway [--config FILE] [--data DIR] [--host H] [--port N]
    [--ring-prefix P] [--control NAME] [--seq-base SYM=N ...] [--first-order-id N]
    [--<limit> N ...]``: the entry point the supervisor (or a test) spawns. Prints
    ``ringex gateway listening on HOST:PORT`` on stdout once it accepts connections."""
    parser = argparse.ArgumentParser(prog="ringex-gateway")
    parser.add_argument("--config", default=None)
    parser.add_argument("--data", default=None, help="data directory (accounts.json)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--ring-prefix", default=DEFAULT_RING_PREFIX)
    parser.add_argument("--control", default=None, help="control block shm name")
    parser.add_argument("--seq-base", action="append", default=[], metavar="SYMBOL=N")
    parser.add_argument("--first-order-id", type=int, default=None)
    for f in dataclasses.fields(Limits):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    config = load_config(args.config, overrides={"data_dir": args.data})
    control = None
    if args.control:
        from ringex.control import ControlBlock

        control = ControlBlock.attach(args.control)
    bases = {}
    for item in args.seq_base:
        sym, _, n = item.partition("=")
        bases[sym] = int(n)

    def announce(address: tuple[str, int]) -> None:
        print(f"ringex gateway listening on {address[0]}:{address[1]}", flush=True)

    try:
        return serve(
            config,
            ring_prefix=args.ring_prefix,
            control=control,
            limits=_limits_from_args(args, config),
            seq_bases=bases,
            first_order_id=args.first_order_id,
            host=args.host,
            port=args.port,
            on_listening=announce,
        )
    finally:
        if control is not None:
            control.close()


if __name__ == "__main__":
    sys.exit(main())
