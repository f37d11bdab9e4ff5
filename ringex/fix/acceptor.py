"""The FIX 4.4 acceptor process: FIX sessions in, protocol v1 to the gateway, reports from the out-rings.

::

    FIX client ──TCP──► Session (sans-IO) ──► OrderRouter ──v1 frames (loopback)──► gateway ──► in-rings
        ▲                                        ▲      ▲
        │ ExecutionReports                       │      └── K / X (the gateway's replies)
        └────────── FixStore (LMDB) ◄────────────┴────── out-ring[SYM] as consumer "fix"
                    committed before anything leaves        (and the journal, to catch up)

Why a process of its own that enters orders through the gateway (``docs/fix.md``):
the gateway stays the single producer of the in-rings, keeps its array-at-a-time hot
loop, and cannot be stalled or crashed by FIX parsing; the acceptor inherits the
gateway's checks, throttles and its guarantee (a ``K`` means durable) for free, and
the supervisor restarts it on its own. Its execution reports come from the matcher's
events, read from the out-rings as their own consumer: no JSON, no subscription to
lose, and a position in the event stream that is committed with the reports.

One selectors loop (as the gateway's, ``ringex.order_entry.gateway``) over the
listening socket, the FIX connections, one protocol v1 connection to the gateway per
logged-on FIX session, the out-rings' pipe doorbell and an eventfd for ``stop``. Each
turn: read what is ready, take the events the out-rings hold, commit the store (one
LMDB transaction: sequence numbers, sent messages, orders, requests, event
positions), commit the ring cursors, then send. So nothing is said to a FIX client
or the gateway that the store could forget, and an event is never taken twice.

Recovery:

- **Events missed while down.** The store keeps, per symbol, the journal sequence of
  the next event to take. At start, events between it and the out-ring's first
  unread one (a new ring after an exchange restart starts at the journal's end) are
  read from the journal; events the store took already are skipped.
- **Requests in doubt.** A request sent to the gateway with no ``K``/``X`` when its
  connection (or this process) went away either reached the in-ring or never will.
  A *fence* settles it: once the matcher has passed every in-ring's end as it was
  when the connection went, and the acceptor has taken every event published by
  then, a request still unanswered never reached the exchange and is rejected
  ("not entered ... safe to send it again"). Nothing is ever entered twice.

Process entry: ``run_fix_acceptor`` (``ringex.roles``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable

from ringex.codes import FixMsgType, Reason, ReplyType
from ringex.config import Config
from ringex.control import NullControl
from ringex.fix.codec import printable
from ringex.fix.orders import OrderRouter
from ringex.fix.session import (
    ACCEPTOR,
    ApplicationMessage,
    Closed,
    GarbledIgnored,
    LoggedOn,
    LogonRequested,
    RejectReceived,
    Session,
    SessionState,
    compose,
)
from ringex.fix.store import FixStore
from ringex.fix.turns import turn_file
from ringex.limits import FailedLoginLimit
from ringex.order_entry.accounts import AccountStore
from ringex.order_entry.protocol import NEED_DATA, REPLY, FrameDecoder, encode_heartbeat, encode_login
from ringex.ring import Ring
from ringex.topology import EVT, FIX, MATCHER, Topology, wait_for_base
from ringex.wait import Doorbell, wait_until

__all__ = ["Acceptor", "AcceptorStatistics", "serve", "run_fix_acceptor"]

log = logging.getLogger("ringex.fix.acceptor")

RECV_BYTES = 256 * 1024
# Timers (heartbeats, timeouts, fences, gateway heartbeats) are looked at this often.
TICK_S = 0.05
# Events taken from one ring per turn: a burst is read in a few turns and the
# sessions are served between them.
MAX_BATCH = 4096
# The gateway closes a v1 session silent for 5 s; it hears from us at least this often.
UPSTREAM_HEARTBEAT_S = 1.0
# A FIX session whose gateway connection dropped tries again this often.
UPSTREAM_RETRY_S = 0.5
# A closing FIX connection whose last bytes cannot be written in this long is dropped.
CLOSE_LINGER_S = 2.0
# How often the event positions are saved when no event concerned a FIX order (a
# crash then re-reads at most this much of the journal, harmlessly: ``OrderRouter``).
POSITION_SAVE_S = 1.0
# Out-rings at least this large are read on the tick while no FIX order is in flight:
# 16,384 events in one 50 ms tick is 330,000 events/s, beyond what the exchange
# sustains end to end (perf/RESULTS.md); a backlog of a quarter ring wakes it anyway.
LAZY_MIN_CAPACITY = 16_384
# A session that leaves more than this unread is cut off (seconds of reports).
MAX_OUTPUT_BYTES = 4 << 20
# positions of the REPLY fields in a frame's tuple
_R_MSG_TYPE = REPLY.names.index("msg_type")
_R_CLIENT_ORDER_ID = REPLY.names.index("client_order_id")
_R_ORDER_ID = REPLY.names.index("order_id")
_R_REASON = REPLY.names.index("reason")
_R_TS_NS = REPLY.names.index("ts_ns")


@dataclasses.dataclass(frozen=True)
class AcceptorStatistics:
    connections: int
    logged_on: int
    upstreams: int
    in_doubt: int
    requests: int
    reports: int
    commits: int


class _Connection:
    """One FIX TCP connection."""

    __slots__ = (
        "sock",
        "session",
        "out",
        "writing",
        "comp_id",
        "account",
        "token",
        "closing_since",
        "peer",
        "address",
    )

    def __init__(self, sock: socket.socket, session: Session, peer: str, address: str = "") -> None:
        self.sock = sock
        self.session = session
        self.out = bytearray()
        self.writing = False
        self.comp_id: str | None = None  # once its Logon is accepted (or being checked)
        self.account = 0
        self.token = 0
        self.closing_since: float | None = None
        self.peer = peer
        self.address = address  # the client's IP: failed logons are counted per address


class _Upstream:
    """One protocol v1 session to the gateway, on behalf of a FIX session."""

    __slots__ = ("sock", "decoder", "inflight", "state", "comp_id", "account", "out", "last_sent", "writing")

    def __init__(self, sock: socket.socket, comp_id: str, account: int) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(REPLY)
        self.inflight: collections.deque[int] = collections.deque()
        self.state = "login"  # login -> ready -> closed
        self.comp_id = comp_id
        self.account = account
        self.out = bytearray()
        self.last_sent = time.monotonic()
        self.writing = False


class _EventSource:
    """One out-ring read as consumer ``FIX``; its cursor is committed after the store."""

    __slots__ = ("symbol", "ring", "consumer", "base", "_hi")

    def __init__(self, symbol: str, ring: Ring, base: int) -> None:
        self.symbol = symbol
        self.ring = ring
        self.consumer = ring.consumer(FIX)
        self.base = base
        self._hi: int | None = None

    def take(self, router: OrderRouter) -> bool:
        if self.consumer.available() == self.consumer.cursor:
            return False  # most turns, for most rings: no Batch built
        batch = self.consumer.poll(MAX_BATCH)
        if not batch:
            return False
        for lo, view in batch.segments():
            router.on_events(self.symbol, self.base + lo, view)
        self._hi = batch.hi
        return True

    def commit(self) -> None:
        if self._hi is not None:
            self.consumer.commit(self._hi)
            self._hi = None

    def taken(self) -> int:
        """The last ring sequence handed to the router (committed or not)."""
        return self._hi if self._hi is not None else self.consumer.cursor

    def backlog(self) -> int:
        """Events published and not taken yet."""
        return self.consumer.available() - self.consumer.cursor


class _Fence:
    """Requests in doubt and the ring positions that settle them (module docstring)."""

    __slots__ = ("cids", "why", "in_ends", "out_ends")

    def __init__(self, cids: list[int], why: str, in_ends: dict[str, int]) -> None:
        self.cids = cids
        self.why = why
        self.in_ends = in_ends
        self.out_ends: dict[str, int] | None = None


class Acceptor:
    """The acceptor's state and loop; ``serve`` builds one and runs it.

    Resource handling: attaches the out-rings (as consumer ``FIX``) and, read-only, the
    in-rings (to watch the matcher for fences); never creates or unlinks them. Owns
    its listening socket, connections and ``FixStore``; ``close()`` releases them.

    Error handling: socket errors close that connection only. An exception while
    handling one connection's input is a bug: it is logged with its traceback and that
    connection is closed; the loop goes on.
    """

    def __init__(self, config: Config, topology: Topology, *, control=None) -> None:
        self.config = config
        self.settings = config.fix
        self.topology = topology
        self.control = control or NullControl()
        self.store = FixStore(
            config.data_dir,
            sync=self.settings.store_sync,
            map_size=self.settings.store_map_size,
            writemap=self.settings.store_writemap,
        )
        # Credentials are checked here before the gateway sees them: every FIX session's
        # gateway connection comes from this process's address, so the gateway's limits
        # on failed logins per address would let one FIX client with a wrong password
        # lock every FIX session out. The same limits apply here per FIX client address.
        self.accounts = AccountStore.open(config.data_dir)
        limits = config.order_entry
        self.failed_logins = FailedLoginLimit(
            limits.failed_logins_per_account,
            limits.failed_logins_per_address,
            limits.failed_logins_total,
            limits.failed_logins_window_s,
        )
        self._verifier = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fix-login")
        self._verified: collections.deque[tuple[_Connection, bool]] = collections.deque()
        self.router = OrderRouter(config.symbols, self.store, self)
        # with tracing on, where each turn that carried orders or replies spent its time
        self.turns = turn_file(config.data_dir, FIX) if config.trace_every else None
        self._orders_in_turn = 0
        self._replies_in_turn = 0
        self.sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.connections: dict[int, _Connection] = {}
        self.by_comp_id: dict[str, _Connection] = {}
        self.upstreams: dict[int, _Upstream] = {}
        self.active_upstream: dict[str, _Upstream] = {}
        self._retry_upstream: dict[str, float] = {}
        self.fences: list[_Fence] = []
        self._dirty: set[_Connection] = set()
        self._next_position_save = 0.0
        self._dirty_up: set[_Upstream] = set()
        self.sources: list[_EventSource] = []
        self.in_rings: dict[str, Ring] = {}
        self.listener: socket.socket | None = None
        self.upstream_host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
        try:
            for symbol in topology.symbols:
                ring = topology.attach_out(symbol)
                base = wait_for_base(config.data_dir, EVT, symbol, ring)
                self.sources.append(_EventSource(symbol, ring, base))
                self.in_rings[symbol] = topology.attach_in(symbol, readonly=True)
            # Rings this small could fill between two ticks at the exchange's peak event
            # rate: then every event wakes the acceptor, as it does the notifier.
            capacity = min((source.ring.capacity for source in self.sources), default=0)
            self._eager = capacity < LAZY_MIN_CAPACITY
            self._lazy_backlog = capacity // 4
            sleepers = [source.consumer.sleeper for source in self.sources]
            self._bell = Doorbell.for_event_loop(sleepers)
            if self._bell is not None:
                self.sel.register(self._bell.semaphore.fileno(), selectors.EVENT_READ, "events")
            self.sel.register(self._wake_fd, selectors.EVENT_READ, "wake")
        except BaseException:
            self.close()
            raise

    # -- start-up -----------------------------------------------------------------------------

    def catch_up(self) -> int:
        """Take the events the store has not taken and the out-rings no longer hold, from
        the journal; returns how many were read (see the module docstring)."""
        from ringex.wal import Journal, journal_path  # noqa: PLC0415

        read = 0
        for source in self.sources:
            ring_next = source.base + source.consumer.cursor + 1
            position = self.router.position(source.symbol)
            if position is None:
                self.router.skip_to(source.symbol, ring_next)
                continue
            if position >= ring_next:
                continue
            if not (journal_path(self.config.data_dir) / "data.mdb").exists():
                raise RuntimeError(f"the FIX store is at event {position} of {source.symbol}, but there is no journal")
            with Journal(self.config.data_dir, readonly=True) as journal:
                wait_until(
                    lambda j=journal, s=source.symbol, n=ring_next: j.next_event_seq(s) >= n,
                    f"the journal to hold {source.symbol}'s events up to {ring_next}",
                )
                for first, events in journal.read_events(source.symbol, position, ring_next):
                    self.router.on_events(source.symbol, first, events)
                    read += len(events)
        self.router.flush()
        self.store.commit()
        unanswered = self.router.unanswered()
        if unanswered:
            log.info("%d requests of a previous run are in doubt; settling them", len(unanswered))
            self._fence(unanswered, "the FIX acceptor restarted before the exchange answered")
        return read

    def listen(self) -> tuple[str, int]:
        self.listener = socket.create_server((self.config.host, self.config.fix_port), backlog=128)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        return self.listener.getsockname()[:2]

    # -- Outbox (for the router) -----------------------------------------------------------------

    def report(self, comp_id: str, msg_type: str, body: list) -> None:
        conn = self.by_comp_id.get(comp_id)
        if conn is not None and conn.session.state is SessionState.ACTIVE:
            conn.session.send(msg_type, body)
            self._dirty.add(conn)
            return
        record = self.store.session(comp_id)
        if record is None:  # cannot happen: a report is about an order a session entered
            log.error("a report for %s, which never logged on, is dropped", comp_id)
            return
        compose(record, self.settings.comp_id, comp_id, msg_type, body, time.time_ns())

    def forward(self, comp_id: str, cid: int, frame: bytes) -> bool:
        upstream = self.active_upstream.get(comp_id)
        if upstream is None or upstream.state != "ready":
            return False
        upstream.inflight.append(cid)
        upstream.out += frame
        self._dirty_up.add(upstream)
        return True

    # -- the loop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return (safe from a signal handler or another thread)."""
        self._stop.set()
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def run(self) -> None:
        """Serve until ``stop()``, then log every session out."""
        self.control.set_ready(FIX, True)
        next_tick = time.monotonic() + TICK_S
        bell = self._bell
        turns = self.turns
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            # Woken by every event only while a FIX order may be concerned, or while a
            # ring could fill before the next tick: otherwise the acceptor costs the
            # matcher no doorbell and itself no wake-up per event, and reads the rings
            # on its tick (it must never be the consumer that holds the matcher back).
            backlog = max(source.backlog() for source in self.sources) if self.sources else 0
            armed = bell is not None and (self.router.waiting or self._eager or backlog > self._lazy_backlog)
            if armed:
                bell.announce()
            if backlog:
                timeout = 0.0
            ready = self.sel.select(timeout)
            wake = time.perf_counter_ns() if turns is not None else 0
            if armed:
                bell.withdraw()
            for key, mask in ready:
                what = key.data
                if what == "events":
                    bell.semaphore.drain()
                elif what == "listen":
                    self._accept()
                elif what == "wake":
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                    self._finish_logons()
                elif isinstance(what, _Connection):
                    if mask & selectors.EVENT_READ:
                        self._receive(what)
                    self._dirty.add(what)
                else:
                    if mask & selectors.EVENT_READ:
                        self._receive_upstream(what)
                    self._dirty_up.add(what)
            if self._dirty or self._dirty_up:
                # What the sockets brought goes out before the events are taken: a K's
                # ExecutionReport New (and a D's v1 frame) do not wait for the
                # reports of a batch of events (the gateway posts its acks first too).
                if turns is not None and (self._orders_in_turn or self._replies_in_turn):
                    handled = time.perf_counter_ns()
                    self._commit()
                    committed = time.perf_counter_ns()
                    self._send()
                    sent = time.perf_counter_ns()
                    turns.append((wake, handled, committed, sent, self._orders_in_turn, self._replies_in_turn))
                else:
                    self._commit_and_send()
                self._orders_in_turn = self._replies_in_turn = 0
            self._take_events()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._tick(now)
            self._commit_and_send()
        self._shutdown()

    def _take_events(self) -> None:
        for source in self.sources:
            source.take(self.router)
        if self.fences:
            self._check_fences()

    def _commit_and_send(self) -> None:
        # The order matters: the store first (what we are about to say is kept), then
        # the ring cursors (the events taken are in the store), then the sockets.
        self._commit()
        self._send()

    def _commit(self) -> None:
        self.router.flush()
        self.store.commit()
        for source in self.sources:
            source.commit()

    def _send(self) -> None:
        dirty_up, self._dirty_up = self._dirty_up, set()
        for upstream in dirty_up:
            self._flush_upstream(upstream)
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            self._flush(conn)

    def _tick(self, now: float) -> None:
        self.control.beat(FIX)
        if self.turns is not None:
            self.turns.flush_due()
        if now >= self._next_position_save:
            self._next_position_save = now + POSITION_SAVE_S
            self.router.save_positions()
        for conn in list(self.connections.values()):
            self._on_session_events(conn, conn.session.poll_timers())
            self._dirty.add(conn)
            if conn.closing_since is not None and now - conn.closing_since > CLOSE_LINGER_S:
                self._close(conn, "its last messages were not read in time")
        for upstream in list(self.upstreams.values()):
            if upstream.state == "ready" and now - upstream.last_sent >= UPSTREAM_HEARTBEAT_S:
                upstream.out += encode_heartbeat()
                self._dirty_up.add(upstream)
            if (
                upstream.state == "ready"
                and not upstream.inflight
                and self.active_upstream.get(upstream.comp_id) is not upstream
            ):
                self._close_upstream(upstream, "")  # a former session's: drained
        for comp_id, when in list(self._retry_upstream.items()):
            if now >= when:
                del self._retry_upstream[comp_id]
                conn = self.by_comp_id.get(comp_id)
                if (
                    conn is not None
                    and conn.session.state is SessionState.ACTIVE
                    and comp_id not in self.active_upstream
                    and not self._open_upstream(conn)
                ):
                    self._retry_upstream[comp_id] = now + UPSTREAM_RETRY_S

    # -- FIX connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            if len(self.connections) >= self.settings.max_sessions:
                log.warning("refusing a FIX connection from %s: %d sessions already", address, len(self.connections))
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = Session(
                ACCEPTOR,
                self.settings.comp_id,
                logon_timeout_s=self.settings.logon_timeout_s,
                logout_timeout_s=self.settings.logout_timeout_s,
                max_latency_s=self.settings.max_latency_s,
                max_message_bytes=self.settings.max_message_bytes,
            )
            conn = _Connection(sock, session, f"{address[0]}:{address[1]}", address[0])
            self.connections[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _receive(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.closing_since is not None or conn.session.state is SessionState.CLOSED:
            if not data:
                self._close(conn, "")
            return  # a closing session's further input is read and dropped
        try:
            events = conn.session.receive_data(data)
            while events:
                self._on_session_events(conn, events)
                events = conn.session.next_events()
        except Exception:
            log.exception("FIX session %s: bug while processing its input; closing it", conn.comp_id or conn.peer)
            self._close(conn, "")
            return
        if not data:
            self._close(conn, "")

    def _on_session_events(self, conn: _Connection, events: list) -> None:
        for event in events:
            if isinstance(event, ApplicationMessage):
                self._on_application(conn, event.message)
            elif isinstance(event, LogonRequested):
                self._on_logon(conn, event)
            elif isinstance(event, Closed):
                who = conn.comp_id or conn.peer
                if event.error:
                    log.warning("FIX session %s closed: %s", who, event.reason)
                else:
                    log.info("FIX session %s: %s", who, event.reason)
                self._closing(conn)
            elif isinstance(event, GarbledIgnored):
                log.warning("FIX session %s: ignored a garbled message (%s)", conn.comp_id or conn.peer, event.problem)
            elif isinstance(event, RejectReceived):
                log.warning("FIX session %s rejected our message: %s", conn.comp_id, printable(event.message.raw))
            elif isinstance(event, LoggedOn):
                log.info(
                    "FIX session %s logged on (account %d)%s",
                    conn.comp_id,
                    conn.account,
                    " with a reset" if event.reset else "",
                )

    def _on_application(self, conn: _Connection, message) -> None:
        if message.msg_type == FixMsgType.NEW_ORDER_SINGLE:
            self._orders_in_turn += 1
        self.router.on_message(conn.comp_id, conn.account, conn.session, message)

    def _on_logon(self, conn: _Connection, logon: LogonRequested) -> None:
        comp_id = logon.sender_comp_id
        try:
            account = int(logon.username or "")
            token = int(logon.password or "")
            if not (0 < account < 1 << 64 and 0 < token < 1 << 64):
                raise ValueError
        except ValueError:
            return self._refuse_logon(conn, "Username (553) must be the account number and Password (554) its token")
        record = self.store.session(comp_id)
        if record is not None and record.account != account:
            return self._refuse_logon(conn, f"SenderCompID {comp_id} belongs to another account")
        other = self.by_comp_id.get(comp_id)
        if other is not None and other is not conn:
            return self._refuse_logon(conn, f"session {comp_id} is logged on already")
        conn.comp_id, conn.account, conn.token = comp_id, account, token
        self.by_comp_id[comp_id] = conn
        quick = self.accounts.verify_nowait(account, token)
        if quick is None:
            # A new check is charged as a failure before the scrypt runs, refunded if it passes.
            refusal = self.failed_logins.try_attempt(account, conn.address, time.monotonic())
            if refusal is not None:
                self.by_comp_id.pop(comp_id, None)
                return self._refuse_logon(conn, refusal)
            future = self._verifier.submit(self.accounts.verify, account, token)
            future.add_done_callback(lambda f, c=conn: self._verify_done(c, f))
            return None  # the Logon waits; _finish_logons goes on
        return self._credentials_checked(conn, quick)

    def _verify_done(self, conn: _Connection, future: concurrent.futures.Future) -> None:
        # on the worker thread: hand the answer to the loop and wake it
        try:
            ok = bool(future.result())
        except Exception:
            log.exception("verifying a FIX logon failed; refusing it")
            ok = False
        self._verified.append((conn, ok))
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed at shutdown

    def _finish_logons(self) -> None:
        while self._verified:
            conn, ok = self._verified.popleft()
            if ok:
                self.failed_logins.attempt_succeeded(conn.account, conn.address)
            if conn.sock.fileno() < 0 or self.by_comp_id.get(conn.comp_id) is not conn:
                continue  # gone meanwhile
            self._credentials_checked(conn, ok)
            self._dirty.add(conn)

    def _credentials_checked(self, conn: _Connection, ok: bool) -> None:
        if not ok:
            self.by_comp_id.pop(conn.comp_id, None)
            return self._refuse_logon(conn, "bad credentials")
        # The gateway checks them again (a verified pair costs it a dict lookup): the FIX
        # Logon is answered once the v1 login is.
        if not self._open_upstream(conn):
            self.by_comp_id.pop(conn.comp_id, None)
            self._refuse_logon(conn, "the exchange's order entry is not reachable; try again")
        return None

    def _refuse_logon(self, conn: _Connection, text: str) -> None:
        self._on_session_events(conn, conn.session.reject_logon(text))

    def _logon_answered(self, upstream: _Upstream, ok: bool) -> None:
        conn = self.by_comp_id.get(upstream.comp_id)
        if conn is None:
            return
        session = conn.session
        if session.state is SessionState.LOGON_RECEIVED:
            if not ok:
                self.by_comp_id.pop(upstream.comp_id, None)
                self._refuse_logon(conn, "bad credentials")
                return
            record = self.store.session(conn.comp_id) or self.store.create_session(conn.comp_id, conn.account)
            events = session.accept_logon(record)
            while events:
                self._on_session_events(conn, events)
                events = session.next_events()
            self._dirty.add(conn)
        elif not ok:
            log.error("FIX session %s: the gateway refused its credentials again; logging it out", conn.comp_id)
            if session.state is SessionState.ACTIVE:
                session.logout("the exchange refused the session's credentials")
                self._dirty.add(conn)

    def _closing(self, conn: _Connection) -> None:
        if conn.closing_since is None:
            conn.closing_since = time.monotonic()
        if conn.comp_id is not None and self.by_comp_id.get(conn.comp_id) is conn:
            del self.by_comp_id[conn.comp_id]
            upstream = self.active_upstream.pop(conn.comp_id, None)
            if upstream is not None and upstream.state == "login":
                self._close_upstream(upstream, "")
            # a ready one drains its requests in flight, then the tick closes it

    def _flush(self, conn: _Connection) -> None:
        if conn.sock.fileno() < 0:
            return
        data = conn.session.data_to_send()
        if data:
            conn.out += data
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._close(conn, f"socket error {exc}")
                return
            del conn.out[:sent]
        if len(conn.out) > MAX_OUTPUT_BYTES:
            self._close(conn, f"{len(conn.out)} bytes unread (slow consumer)")
            return
        want = bool(conn.out)
        if want != conn.writing:
            conn.writing = want
            self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), conn)
        if conn.session.state is SessionState.CLOSED and not conn.out:
            self._close(conn, "")

    def _close(self, conn: _Connection, why: str) -> None:
        sock = conn.sock
        if sock.fileno() < 0:
            return
        if why:
            log.info("FIX session %s: %s", conn.comp_id or conn.peer, why)
        if conn.session.state is not SessionState.CLOSED:
            conn.session.state = SessionState.CLOSED
        self._closing(conn)
        self.connections.pop(sock.fileno(), None)
        self._dirty.discard(conn)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    # -- the gateway connections -------------------------------------------------------------------

    def _open_upstream(self, conn: _Connection) -> bool:
        try:
            sock = socket.create_connection((self.upstream_host, self.config.order_port), timeout=1.0)
        except OSError as exc:
            log.warning("FIX session %s: cannot reach the gateway: %s", conn.comp_id, exc)
            return False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = _Upstream(sock, conn.comp_id, conn.account)
        upstream.out += encode_login(conn.account, conn.token)
        self.upstreams[sock.fileno()] = upstream
        self.active_upstream[conn.comp_id] = upstream
        self.sel.register(sock, selectors.EVENT_READ, upstream)
        self._dirty_up.add(upstream)
        return True

    def _receive_upstream(self, upstream: _Upstream) -> None:
        try:
            data = upstream.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_upstream(upstream, "the gateway closed the connection")
            return
        upstream.decoder.receive_data(data)
        frames = upstream.decoder.next_frames()
        if frames is NEED_DATA:
            return
        # rows as tuples: plain ints, a fraction of the cost of numpy scalar fields
        for frame in frames.tolist():
            kind = frame[_R_MSG_TYPE]
            if kind == ReplyType.ACK or kind == ReplyType.REJECT:
                if not upstream.inflight:
                    log.error("a reply from the gateway with nothing in flight; closing that connection")
                    self._close_upstream(upstream, "out of step")
                    return
                cid = upstream.inflight.popleft()
                self._replies_in_turn += 1
                if frame[_R_CLIENT_ORDER_ID] != cid:
                    log.error(
                        "the gateway answered %d, expected %d; closing that connection", frame[_R_CLIENT_ORDER_ID], cid
                    )
                    upstream.inflight.appendleft(cid)
                    self._close_upstream(upstream, "out of step")
                    return
                self.router.on_reply(cid, kind == ReplyType.ACK, frame[_R_ORDER_ID], frame[_R_REASON], frame[_R_TS_NS])
            elif kind == ReplyType.LOGIN_ACCEPTED:
                upstream.state = "ready"
                self._logon_answered(upstream, True)
            elif kind == ReplyType.LOGIN_REJECTED:
                self._logon_answered(upstream, False)
                self._close_upstream(upstream, "")
                return
            elif kind == ReplyType.ERROR:
                self._close_upstream(upstream, f"the gateway ended the session: {_reason_name(frame[_R_REASON])}")
                return

    def _flush_upstream(self, upstream: _Upstream) -> None:
        if upstream.state == "closed" or not upstream.out:
            return
        try:
            sent = upstream.sock.send(upstream.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close_upstream(upstream, f"socket error {exc}")
            return
        del upstream.out[:sent]
        upstream.last_sent = time.monotonic()
        want = bool(upstream.out)
        if want != upstream.writing:
            upstream.writing = want
            self.sel.modify(upstream.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), upstream)

    def _close_upstream(self, upstream: _Upstream, why: str) -> None:
        if upstream.state == "closed":
            return
        if why:
            log.warning("gateway connection of FIX session %s: %s", upstream.comp_id, why)
        was_ready = upstream.state == "ready"
        upstream.state = "closed"
        self.upstreams.pop(upstream.sock.fileno(), None)
        try:
            self.sel.unregister(upstream.sock)
        except (KeyError, ValueError):
            pass
        upstream.sock.close()
        if upstream.inflight:
            self._fence(list(upstream.inflight), "the connection to the exchange's order entry dropped")
            upstream.inflight.clear()
        if self.active_upstream.get(upstream.comp_id) is upstream:
            del self.active_upstream[upstream.comp_id]
            conn = self.by_comp_id.get(upstream.comp_id)
            if conn is not None and was_ready and conn.session.state is SessionState.ACTIVE:
                self._retry_upstream[upstream.comp_id] = time.monotonic() + UPSTREAM_RETRY_S
            elif conn is not None and conn.session.state is SessionState.LOGON_RECEIVED:
                self.by_comp_id.pop(upstream.comp_id, None)
                self._refuse_logon(conn, "the exchange's order entry closed the connection")
                self._dirty.add(conn)

    # -- requests in doubt ----------------------------------------------------------------------

    def _fence(self, cids: list[int], why: str) -> None:
        in_ends = {symbol: ring.producer_cursor for symbol, ring in self.in_rings.items()}
        self.fences.append(_Fence(cids, why, in_ends))

    def _check_fences(self) -> None:
        for fence in list(self.fences):
            if fence.out_ends is None:
                if any(self.in_rings[s].consumer_cursor(MATCHER) < end for s, end in fence.in_ends.items()):
                    continue
                # The matcher has taken everything: its events are published by now.
                fence.out_ends = {source.symbol: source.ring.producer_cursor for source in self.sources}
            if any(source.taken() < fence.out_ends[source.symbol] for source in self.sources):
                continue
            self.fences.remove(fence)
            for cid in fence.cids:
                self.router.lost(cid, fence.why)

    # -- the end -----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        for conn in list(self.connections.values()):
            if conn.session.state is SessionState.ACTIVE:
                conn.session.logout("the exchange is shutting down")
            self._dirty.add(conn)
        self._commit_and_send()

    def statistics(self) -> AcceptorStatistics:
        return AcceptorStatistics(
            connections=len(self.connections),
            logged_on=sum(1 for c in self.connections.values() if c.session.state is SessionState.ACTIVE),
            upstreams=len(self.upstreams),
            in_doubt=sum(len(f.cids) for f in self.fences),
            requests=len(self.router.requests),
            reports=self.router.reports,
            commits=self.store.commits,
        )

    def close(self) -> None:
        self._stop.set()
        if hasattr(self, "_verifier"):
            self._verifier.shutdown(wait=True, cancel_futures=True)
        for conn in list(getattr(self, "connections", {}).values()):
            self._close(conn, "")
        for upstream in list(getattr(self, "upstreams", {}).values()):
            upstream.state = "closed"
            upstream.sock.close()
        if self.listener is not None:
            self.listener.close()
        self.sel.close()
        try:
            os.close(self._wake_fd)
        except OSError:
            pass
        for source in self.sources:
            source.consumer = None
            source.ring.close()
        self.sources = []
        for ring in self.in_rings.values():
            ring.close()
        self.in_rings = {}
        if getattr(self, "turns", None) is not None:
            self.turns.close()
        self.store.close()


def _reason_name(reason: int) -> str:
    try:
        return Reason(reason).name
    except ValueError:
        return f"reason {reason}"


def serve(
    config: Config,
    topology: Topology,
    *,
    control=None,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Run the FIX acceptor until SIGTERM/SIGINT; returns the exit status (0).

    - ``config``: ``host`` and ``fix_port`` to listen on, ``order_port`` (the gateway it
      enters orders through, on loopback), ``symbols``, ``data_dir`` (the journal, and
      the store under ``fix-sessions/``), ``[fix]``.
    - ``topology``: the out-rings, which must have consumer ``FIX``.
    - ``control``: the ``ControlBlock``; the acceptor reports ready as role ``FIX`` once
      it has caught up with the journal and listens.

    Resource handling: everything it opens is closed before it returns. Error
    handling: a missing ring, a busy port or an unreadable store raise at start-up.
    """
    acceptor = Acceptor(config, topology, control=control)
    previous = {sig: signal.signal(sig, lambda *_: acceptor.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        caught_up = acceptor.catch_up()
        if caught_up:
            log.info("caught up with %d events from the journal", caught_up)
        address = acceptor.listen()
        if on_listening is not None:
            on_listening(address)
        log.info("FIX 4.4 acceptor listening on %s:%d as %s", *address, config.fix.comp_id)
        # What is allocated by now (numba's and numpy's objects, the open orders caught
        # up: ~55,000 objects) lives as long as the process. Out of the collector's way,
        # a full collection scans only what serving allocates: over all of it one
        # stopped the acceptor for 12 ms in the middle of fix_bench's load.
        gc.freeze()
        acceptor.run()
    finally:
        acceptor.control.set_ready(FIX, False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        acceptor.close()
    return 0


def run_fix_acceptor(config: Config, topology: Topology, control) -> int:
    """The FIX acceptor process (``ringex.roles``)."""
    return serve(config, topology, control=control)
