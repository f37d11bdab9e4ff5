"""The order entry gateway: TCP sessions in, each symbol's in-ring out, acks once durable.

::

    clients ──TCP──► selectors loop ──► Session (sans-IO) ──publish──► in-ring[SYM] ──► matcher
                          ▲                                               │
                          │ pipe doorbell ◄── journaler's commit ◄────────┘ journaler's cursor
                          └── K once the journaler's cursor has passed the command

The gateway is the single producer of every in-ring. One thread runs a selectors
(epoll) loop over the listening socket, the sessions, the in-rings' doorbell and an
eventfd (for the login checker thread and ``stop``). Each ``recv``
is handed whole to its ``Session`` (``ringex.order_entry.session``), which parses, validates,
throttles and stamps all its frames with array operations and publishes the valid
ones into each symbol's in-ring in one slice.

Durability: a ``K`` may go out only once the journaler's consumer cursor on that
in-ring has passed the command (the journaler stores it only after the LMDB commit).
The loop cannot sleep on a semaphore, and polling the cursors from the loop is poor
here: epoll's timeout has 1 ms granularity (Python rounds it up), so polling would add
up to 1 ms to every ack while an fsync commit takes ~0.2 ms, and a loop that never
sleeps while acks are pending would burn a core on a 2-core machine. So the in-rings
share one *pipe doorbell* for their producer (``ringex.ring.PipeDoorbell``), a FIFO
the loop polls with its sockets: while acks are pending the loop announces itself on
every in-ring (``Doorbell.announce``), re-checks the cursors, and polls; the
journaler's commit then writes the FIFO and wakes the loop directly.

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
``base + ring sequence``; ``start_position`` reads each in-ring's base, and the next
order id, from the journal before the gateway joins the rings.

Readiness: orders are answered ``X`` NOT_READY unless the control block says the
exchange is READY (``ControlBlock.accepting``).

Requests for every symbol (``M`` and ``Y`` with a blank symbol) go into every in-ring
(``_publish_everywhere``); their ``K`` waits until all of those copies are durable,
tracked as one more entry of the durable array. Before serving, the gateway journals
the config's risk limits into fresh in-rings and cancels the orders of every
cancel-on-disconnect account (``publish_start_commands``); after serving, when such an
account's last session closes, its orders are cancelled (``_cancel_on_disconnect``).

Process entry: ``run_gateway`` (``ringex.roles``).
"""

from __future__ import annotations

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
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from ringex.codes import Op, Reason, ReplyType
from ringex.config import Config, OrderEntryLimits
from ringex.control import ExchangeState, NullControl
from ringex.engine import risk
from ringex.limits import ConnectionLimit, FailedLoginLimit, address_key
from ringex.order_entry.accounts import AccountStore, check_executor
from ringex.order_entry.protocol import FRAME_SIZE, REPLY, SymbolTable, encode_reply
from ringex.order_entry.session import OrderIdCounter, Session, SessionState, SystemClock, warm_up
from ringex.records import encode_symbol
from ringex.ring import Producer, Ring
from ringex.topology import CMD, GATEWAY, JOURNALER, MATCHER, Topology, wait_for_base
from ringex.trace import NullTracer, Stage, tracer_for
from ringex.wait import Doorbell, post_all, wait_until

__all__ = ["Gateway", "GatewayStatistics", "serve", "start_position", "run_gateway"]

log = logging.getLogger("ringex.order_entry.gateway")
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


class Gateway:
    """The gateway's state and loop. ``serve`` builds one and runs it.

    Resource handling: the gateway attaches ``topology``'s in-rings (it does not
    create or unlink them: the supervisor owns their lifetime) and closes its
    mappings, sockets and eventfd in ``close()``.

    Error handling: socket errors of one session close that session only. An
    exception while serving a session (its input, its login, its replies, its timers)
    is a bug; it is logged with its traceback, the session's id and peer, and that
    session is closed, so one client can never stop the gateway.
    """

    def __init__(
        self,
        config: Config,
        topology: Topology,
        accounts: AccountStore,
        *,
        control=None,
        seq_bases: Mapping[str, int] | None = None,
        first_order_id: int | None = None,
        tracer=None,
    ) -> None:
        self.config = config
        self.tracer = tracer or NullTracer()
        self.accounts = accounts
        self.limits: OrderEntryLimits = config.order_entry
        # After publishing, the loop polls for the journaler's commit this long before it
        # sleeps and asks to be woken (see ``OrderEntryLimits.durable_spin_us``).
        self._spin_s = self.limits.durable_spin_us / 1e6
        self._spin_until = 0.0
        # The journaler's doorbell is posted once per loop turn, after every session's
        # input of the turn is in the rings (``_publish`` collects, ``run`` posts).
        self._posts: dict = {}
        self.control = control = control or NullControl()
        self.ready = lambda: control.accepting
        self.connections = ConnectionLimit(self.limits.max_sessions, self.limits.max_sessions_per_address)
        limits = self.limits
        self.failed_logins = FailedLoginLimit(
            limits.failed_logins_per_account,
            limits.failed_logins_per_address,
            limits.failed_logins_total,
            limits.failed_logins_window_s,
        )
        self.session_bugs = 0
        self.table = SymbolTable(config.symbols)
        # the table is sorted by name; traces number symbols as the topology does
        self._trace_index = [topology.symbols.index(spec.name) for spec in self.table.specs]
        self.order_ids = OrderIdCounter(first_order_id)
        self.clock = SystemClock()
        self.rings: list[Ring] = []
        self.producers: list[Producer] = []
        bases = dict(seq_bases or {})
        self.bases = np.array([int(bases.get(s.name, 0)) for s in self.table.specs], dtype=np.int64)
        self._stop = threading.Event()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        try:
            for spec in self.table.specs:
                ring = topology.attach_in(spec.name)
                self.rings.append(ring)
                producer = ring.producer()
                # only the ack consumer's commits mean acks to send: the journaler's, or
                # in sync replication the bridge's (``Topology.ack_consumer``)
                producer.watch(topology.ack_consumer)
                self.producers.append(producer)
            self._journal_probes = [r.cursor_reader(topology.ack_consumer) for r in self.rings]
            self._bell = Doorbell([p.sleeper for p in self.producers])
            self.sel.register(self._bell.semaphore.fileno(), selectors.EVENT_READ, "durable")
            # A previous gateway on these rings may have issued ids the journal has not
            # got yet (the supervisor's first_order_id comes from the journal): start
            # above every new order still in a ring, so no id is ever issued twice.
            in_rings = max((_max_order_id_in(ring) for ring in self.rings), default=0)
            if in_rings >= self.order_ids.next_id:
                log.info("resuming order ids after %d, the highest in the in-rings", in_rings)
                self.order_ids.next_id = in_rings + 1
            # one entry per in-ring, and one more: how many requests for every symbol
            # are durable in every ring (``_publish_everywhere``)
            self.durable = np.zeros(len(self.rings) + 1, dtype=np.int64)
            self._everywhere: collections.deque[np.ndarray] = collections.deque()
            self._everywhere_published = 0
            self._cancel_on_disconnect_accounts = risk.cancel_on_disconnect_accounts(config)
            self._bases_plus_one = self.bases + 1
            self._journaled: list[int] = []
            self._trace_due = False
            self._refresh_durable()
            self.listener = socket.create_server(
                (config.host, config.order_port),
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
        before = self._journaled
        self._journaled = journaled = [probe() for probe in self._journal_probes]
        rings = len(self.rings)
        self.durable[:rings] = journaled
        self.durable[:rings] += self._bases_plus_one
        if self._everywhere:
            self._advance_everywhere()
        if self.tracer.every:
            # acks of sampled commands can go out only once one of those became durable
            self._trace_due = any(
                self.tracer.samples(base + old + 1, base + new)
                for base, old, new in zip(self.bases.tolist(), before or journaled, journaled, strict=True)
            )

    def _advance_everywhere(self) -> None:
        # in publication order: a request for every symbol counts as durable once each
        # ring's copy is (and every earlier such request is)
        rings = len(self.rings)
        while self._everywhere and (self._everywhere[0] < self.durable[:rings]).all():
            self._everywhere.popleft()
            self.durable[rings] += 1

    def _durable_moved(self) -> bool:
        # plain ints, compared as one list: this runs several times per loop turn
        return [probe() for probe in self._journal_probes] != self._journaled

    def _publish(self, sym: int, commands: np.ndarray) -> int | None:
        if sym == len(self.producers):
            return self._publish_everywhere(commands)
        producer = self.producers[sym]
        if len(commands) > self.rings[sym].capacity:
            return None
        batch = producer.try_claim(len(commands))
        if batch is None:
            return None
        batch.fill(commands)
        producer.publish(batch.hi, self._posts)
        self.published += len(commands)
        self._spin_until = time.monotonic() + self._spin_s
        first = int(self.bases[sym]) + batch.lo
        if self.tracer.every:
            index = self._trace_index[sym]
            self.tracer.span(Stage.RECEIVED, index, first, len(commands), int(commands["ts_ns"][0]))
            self.tracer.span(Stage.PUBLISHED, index, first, len(commands))
        return first

    def _publish_everywhere(self, commands: np.ndarray) -> int | None:
        """Put ``commands`` (requests for every symbol) into every in-ring, each copy
        stamped with its ring's symbol; all or nothing, so a full ring refuses them
        everywhere. Returns the number of the first in the count ``durable[-1]`` keeps."""
        n = len(commands)
        for ring, producer in zip(self.rings, self.producers, strict=True):
            # the matcher is the in-ring's last consumer (gated on the journaler)
            if ring.capacity - (producer.claimed - ring.consumer_cursor(MATCHER)) < n:
                return None
        first = self._everywhere_published
        seqs = np.empty((n, len(self.rings)), np.int64)
        for i, spec in enumerate(self.table.specs):
            copy = commands.copy()
            copy["symbol"] = encode_symbol(spec.name)
            seqs[:, i] = np.arange(n) + self._publish(i, copy)
        self._everywhere.extend(seqs)
        self._everywhere_published += n
        return first

    def publish_start_commands(self) -> int:
        """Before serving: journal the config's risk limits into every in-ring that is
        new (a fresh ``ringex up``; a restarted gateway leaves the limits the operator
        may have changed since), and cancel the orders of every cancel-on-disconnect
        account, whose sessions the last gateway took with it. Returns the commands
        published."""
        published = 0
        now = time.time_ns()
        for i, (spec, ring) in enumerate(zip(self.table.specs, self.rings, strict=True)):
            commands = risk.start_commands(self.config, spec.name, fresh=ring.producer_cursor < 0, ts_ns=now)
            if len(commands) and self._publish(i, commands) is None:
                raise RuntimeError(f"{spec.name}: no room in the in-ring for {len(commands)} start-up commands")
            published += len(commands)
        if self._posts:
            post_all(self._posts)
        return published

    def _operator_login(self, account: int) -> bool:
        """Whether a session logging in as ``account`` may set limits; if so, limits may
        now reach the journal, which the next fresh start must know (``risk.LIMITS_USED``)."""
        operator = self.accounts.is_operator(account)
        if operator:
            risk.mark_limits_used(self.config.data_dir)
        return operator

    def _cancel_on_disconnect(self, conn: _Conn) -> None:
        """The account's last session has gone: cancel its orders in every book, if it
        asked for that (``[accounts.ID] cancel_on_disconnect``)."""
        account = conn.session.account
        if account not in self._cancel_on_disconnect_accounts or self._stop.is_set():
            return  # stopping: the next gateway cancels them before it serves anyone
        if any(c.session.account == account for c in self.conns.values()):
            return
        if self._publish(self.table.every, risk.disconnect_commands(account, time.time_ns())) is None:
            log.error("account %d: in-rings full, orders not cancelled on disconnect", account)
            return
        log.info("account %d: last session closed; cancelling its orders", account)

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
        self.control.set_ready(GATEWAY, True)
        next_tick = time.monotonic() + TICK_S
        select = self.sel.select
        bell = self._bell
        yield_cpu = os.sched_yield
        while not self._stop.is_set():
            touched: set[_Conn] = set()
            timeout = max(0.0, next_tick - time.monotonic())
            armed = moved = False
            if self._waiting:
                if self._durable_moved():
                    timeout = 0.0
                    moved = True
                elif time.monotonic() < self._spin_until:
                    # Acks are due any moment: look again soon rather than sleep (see
                    # ``durable_spin_us``); the yield lets a journaler on this core run.
                    timeout = 0.0
                    yield_cpu()
                else:
                    # ask the journaler to ring, then look once more
                    armed = True
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
            if self._posts:
                post_all(self._posts)
            if self._waiting and (moved or armed or events):
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
        self.control.beat(GATEWAY)
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
            session = Session(
                sid, self.table, None, self.order_ids, self.limits, self.clock, is_operator=self._operator_login
            )
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
        if data and self._trace_due:
            self._trace_acks(data)
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

    def _trace_acks(self, data: bytes) -> None:
        replies = np.frombuffer(data, REPLY)
        acks = replies[(replies["msg_type"] == ReplyType.ACK) & (replies["seq"] % self.tracer.every == 0)]
        acks = acks[self.table.index_of(acks["symbol"]) >= 0]  # not the requests for every symbol
        if len(acks):
            now = time.time_ns()
            for table_index, seq in zip(
                self.table.index_of(acks["symbol"]).tolist(), acks["seq"].tolist(), strict=True
            ):
                self.tracer.seqs(Stage.ACKED, self._trace_index[table_index], (seq,), now)

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
        if conn.session.account:
            self._cancel_on_disconnect(conn)
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
            durable=dict(zip(names, self.durable[: len(names)].tolist(), strict=True)),
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
    ids = slots["order_id"][slots["msg_type"] == Op.NEW]
    return int(ids.max()) if len(ids) else 0


def _peer_text(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown peer"


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


def start_position(config: Config, topology: Topology) -> tuple[dict[str, int], int]:
    """``(seq_bases, first_order_id)`` for a gateway (re)starting on ``topology``'s in-rings.

    The gateway is the in-rings' only producer, so while it is down they are still:
    once the journaler has taken all of them, the journal's highest order id is the
    highest ever issued, and the new gateway's ids continue past it.
    """
    from ringex.wal import Journal  # noqa: PLC0415

    bases: dict[str, int] = {}
    for symbol in topology.symbols:
        with topology.attach_in(symbol, readonly=True) as ring:
            wait_until(
                lambda r=ring: r.consumer_cursor(JOURNALER) >= r.producer_cursor,
                f"the journaler to take {ring.name}",
            )
            bases[symbol] = wait_for_base(config.data_dir, CMD, symbol, ring)
    with Journal(config.data_dir, readonly=True) as journal:
        first_order_id = journal.max_order_id() + 1
    return bases, first_order_id


def serve(
    config: Config,
    topology: Topology,
    *,
    control=None,
    accounts: AccountStore | None = None,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit status (0).

    - ``config``: symbols (what is listed and their bands/ticks/max qty), ``host`` and
      ``order_port``, ``data_dir`` (where ``accounts.json`` is, unless ``accounts`` is
      given), ``order_entry`` (the sessions' limits).
    - ``topology``: the in-rings are attached by its names; they must exist.
    - ``control``: the ``ControlBlock``; orders are accepted only while it is READY, and
      the gateway reports ready on it as role ``GATEWAY`` and heartbeats it.
    - ``on_listening(address)``: called once the socket listens.

    Before serving it reads where to continue from the journal (``start_position``).

    Resource handling: attaches (never creates or unlinks) the rings and closes
    everything it opened before returning. Error handling: a missing ring or a busy
    port raises at start-up, before anything is served.
    """
    if accounts is None:
        accounts = AccountStore.open(config.data_dir)
    warm_up()  # compile or load the jitted checks before the first client waits on them
    bases, first_order_id = start_position(config, topology)
    tracer = tracer_for(config, GATEWAY)
    gateway = Gateway(
        config, topology, accounts, control=control, seq_bases=bases, first_order_id=first_order_id, tracer=tracer
    )
    previous = {sig: signal.signal(sig, lambda *_: gateway.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_listening is not None:
            on_listening(gateway.address)
        log.info("listening on %s:%d", *gateway.address)
        # What is allocated by now (numba, numpy, the rings: ~100k objects) lives as long
        # as the process. Out of the collector's way, a full collection scans only what
        # serving allocates: over numba's objects one paused the loop ~55 ms, and the
        # churn of a connection flood set them off (the hostile benchmark's ack tail).
        gc.freeze()
        gateway.publish_start_commands()
        gateway.run()
    finally:
        gateway.control.set_ready(GATEWAY, False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gateway.close()
        tracer.close()
    return 0


def run_gateway(config: Config, topology: Topology, control) -> int:
    """The gateway process (``ringex.roles``)."""
    return serve(config, topology, control=control)
