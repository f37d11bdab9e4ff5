"""The market data notifier: reads every out-ring, publishes over TCP and WebSocket.

```
 out-ring[SYM] ──► sources.RingEventSource ──► Notifier.pump_rings ──► fanout.FanOut.take
                                                                      (MarketData.apply)
                                                                                │
                    TCP JSON lines :7002 ◄── subscriber.Subscriber.write ◄──────┤ FanOut.serve_next
                    WebSocket      :7003 ◄── subscriber.Subscriber.write ◄──────┘ (same bytes)
```

One trio process, in four modules with one job each:

- ``ringex.market_data.sources``: the out-rings as event sources, and the journal
  replay that rebuilds the depth views at start-up;
- ``ringex.market_data.fanout``: which bytes go to which subscriber, built once, sent
  slice by slice, with threads sharing the sends;
- ``ringex.market_data.subscriber``: one connection's socket, its bounded outgoing
  queue and its writer task;
- this module: the listeners, the sessions' requests (login, subscribe, ping) and the
  limits of the config's ``[market_data]`` table (``ringex.config.MarketDataSettings``,
  docs/security.md), the ring pump and the heartbeats, and the process entry.

What is sent is decided by the sans-IO ``ringex.market_data.messages``, and what a
WebSocket client's bytes mean by the sans-IO ``ringex.market_data.ws_server``.

Reading the rings. One task reads every out-ring (``pump_rings``): it takes whatever
is available without waiting, and only when every ring is empty does it wait, on the
rings' shared *pipe doorbell* for the notifier (``ringex.ring.PipeDoorbell``, a FIFO
the matcher's publish writes) with ``trio.lowlevel.wait_readable``, like a socket:
~0% CPU while idle, no worker thread, no hand-off back to trio. Under load there is
always something to read, so the batch grows with the load. Polling with
``trio.sleep`` instead would have to choose between burning CPU while idle and adding
its period to every latency. Between two slices of the fan-out the pump reads the
rings again and lets the sessions run (``FanOut``).

Start-up book. ``serve`` rebuilds the depth views by replaying the journal up to the
out-ring cursor the notifier starts from (``replay_journal``); with no journal they
start empty, which is right for a fresh exchange.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ringex.config import Config, MarketDataSettings
from ringex.limits import ConnectionLimit, FailedLoginLimit, KeyedRateLimit, address_key
from ringex.market_data.fanout import DEFAULT_FAN_OUT_THREADS, SLICE_SESSIONS, FanOut
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
)
from ringex.market_data.sources import RingEventSource, replay_journal, ring_sources
from ringex.market_data.subscriber import Subscriber, SubscriberGone, peer_text, refuse_connection
from ringex.market_data.web import StaticSite, too_many_requests_response
from ringex.market_data.ws_server import End, HttpGet, Pong, Refuse, Request, Send
from ringex.order_entry.accounts import check_executor
from ringex.topology import NOTIFIER, Topology
from ringex.trace import tracer_for
from ringex.wait import Doorbell

__all__ = [
    "Notifier",
    "NotifierStats",
    "serve",
    "run_notifier",
    "raise_nofile_limit",
    # re-exported: what a caller builds a Notifier from
    "RingEventSource",
    "ring_sources",
    "replay_journal",
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


def raise_nofile_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


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
    """The trio side: listeners, sessions and their requests, the ring pump and
    heartbeats; what goes to whom is the fan-out's (``self.fan_out``, a ``FanOut``).

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
        self.sessions: set[Subscriber] = set()
        # Kernel send buffer per session (None: the kernel's autotuning, up to
        # net.ipv4.tcp_wmem's max, 4 MiB here). With 10,000 sessions a bound keeps the
        # worst case memory known and detects slow consumers sooner.
        self.sndbuf = sndbuf
        self._login_checks: concurrent.futures.ThreadPoolExecutor | None = None
        self._login_checks_running: dict[tuple[int, int], concurrent.futures.Future] = {}
        self.ports: dict[str, int] = {}
        self._slow = 0
        self.fan_out = FanOut(
            self.md, threads=fan_out_threads, slice_sessions=slice_sessions, coalesce_s=coalesce_s, tracer=tracer
        )
        # the web view, served on the WebSocket port (``ringex.market_data.web``)
        self.site = StaticSite(self.symbols) if ws_port is not None else None

    def statistics(self) -> NotifierStats:
        fan_out = self.fan_out.statistics()
        return NotifierStats(
            sessions=len(self.sessions),
            subscriptions=sum(len(s) for s in self.md.subscribers.values()),
            events=fan_out.events,
            batches=fan_out.batches,
            slow_consumers=self._slow,
            ports=dict(self.ports),
            sends=fan_out.sends,
            short_sends=fan_out.short_sends,
            refused_connections=self.connections.refused,
            refused_logins=self.failed_logins.refused,
            session_bugs=self._session_bugs,
        )

    def record_fan_out(self) -> None:
        """Start keeping the fan-out's per-batch log (``FanOut.log``: for benchmarks)."""
        self.fan_out.record()

    # -- publishing -----------------------------------------------------------------

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
                    self.fan_out.take(events, index)
                    took = True
            if not took and not self.fan_out.pending:
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
            # give the next slice its turn, then let the sessions run
            delay = self.fan_out.serve_next()
            if delay:
                await trio.sleep(delay)  # every slice that is behind had a turn just now
            else:
                # let sessions run between slices: under a flood the ring is never empty
                await trio.lowlevel.checkpoint()

    async def heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            ping = session_message("heartbeat", ts_ns=time.time_ns())
            for session in tuple(self.sessions):
                # not to a WebSocket client mid-handshake: a frame before the 101 would
                # be garbage to it (and to a page request, a JSON reply)
                if not session.active and session.closing is None and (session.ws is None or session.ws.open):
                    session.send_message(ping)
                session.active = False

    # -- sessions -------------------------------------------------------------------

    async def _handle(self, session: Subscriber, request) -> None:
        # a reply follows everything already published (see ``FanOut``)
        self.fan_out.catch_up(session)
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
            self.fan_out.subscribe(session, self.md.stream_of(request, session.account))
        elif isinstance(request, Unsubscribe):
            session.send_message(self.md.unsubscribe(session, request, session.account))
            self.fan_out.unsubscribe(session, self.md.stream_of(request, session.account))

    async def _check_login(self, session: Subscriber, request: Login) -> bool | None:
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

    def _within_rate(self, session: Subscriber) -> bool:
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

    async def _request(self, session: Subscriber, raw: bytes | str) -> None:
        if not self._within_rate(session):
            return
        try:
            request = parse_request(raw, self.symbols, max_bytes=self.limits.max_line_bytes)
            await self._handle(session, request)
        except ClientError as exc:
            self._client_error(session, exc.reason)

    def _client_error(self, session: Subscriber, reason: str) -> None:
        """Answer a bad request with an error; the ``MAX_ERRORS``-th closes the session."""
        session.errors += 1
        if session.errors >= MAX_ERRORS:
            session.close(f"too many errors; last: {reason}")
        else:
            session.send_message(session_message("error", reason=reason))

    async def _read_tcp(self, session: Subscriber) -> None:
        decoder = LineDecoder(self.limits.max_line_bytes)
        partial_since = None  # when the line now buffered began to arrive
        while session.closing is None:
            deadline = math.inf if partial_since is None else partial_since + self.limits.partial_request_timeout_s
            data = await session.recv(deadline, "a request took too long to arrive", tell=True)
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

    async def _read_ws(self, session: Subscriber) -> None:
        server = session.ws
        assert server is not None
        limits = self.limits
        handshake_deadline = trio.current_time() + limits.handshake_timeout_s
        partial_since = None  # when input that did not complete a message began to arrive
        while session.closing is None:
            if not server.open:
                data = await session.recv(handshake_deadline, "the WebSocket handshake took too long")
            elif partial_since is not None:
                deadline = partial_since + limits.partial_request_timeout_s
                data = await session.recv(deadline, "a message took too long to arrive", tell=True)
            else:
                data = await session.recv()
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
                elif isinstance(action, HttpGet):
                    self._serve_http(session, action)
                if session.closing is not None:
                    return
            if not server.incomplete:
                partial_since = None
            elif actions or partial_since is None:
                partial_since = trio.current_time()

    def _serve_http(self, session: Subscriber, get: HttpGet) -> None:
        """Answer a plain HTTP request (the web view's files) and end the connection.
        Each counts against its address's request rate, like a feed request."""
        if self.address_requests.try_take(session.address, trio.current_time()) and self.site is not None:
            response = self.site.respond(get.request)
        else:
            rate = self.limits.address_requests_per_s
            response = too_many_requests_response(f"too many requests from your address (at most {rate:g} a second)")
        session.finish(response, "served an HTTP request")

    async def _run_session(self, sock: socket.socket, websocket: bool, peer: Any, address: str) -> None:
        """Serve one connection until it ends, then close its socket and release the
        connection limit it was admitted under (``_accept_loop``, as ``address``)."""
        try:
            session = Subscriber(
                sock, websocket, self.max_queue_bytes, session_id=next(self._session_ids), peer=peer, limits=self.limits
            )
            await self._serve_session(session)
        finally:
            sock.close()
            self.connections.release(address)

    async def _serve_session(self, session: Subscriber) -> None:
        self.sessions.add(session)
        self.fan_out.join(session)
        try:
            try:
                with trio.CancelScope() as scope:
                    session.cancel_scope = scope
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
                    peer_text(session.peer),
                    "tcp" if session.ws is None else "websocket",
                )
                session.close("internal error; the session is closed")
        finally:
            self.fan_out.forget(session)
            self.fan_out.leave(session)
            self.sessions.discard(session)
            if session.closing and session.closing.startswith("slow consumer"):
                self._slow += 1
            try:
                await session.linger(self.close_grace_s)
            except Exception:
                log.exception("session %d (%s): bug while closing it", session.id, peer_text(session.peer))

    async def _session_reader(self, session: Subscriber) -> None:
        try:
            if session.ws is None:
                await self._read_tcp(session)
            else:
                await self._read_ws(session)
        except SubscriberGone as exc:
            session.close(exc.reason or "connection closed by the client", tell=exc.tell)

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
                refuse_connection(conn, refusal, websocket)
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
            self.fan_out.close()
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
      pauses and the per-batch fan-out log (``FanOut.log``) are written there as JSON (benchmarks).
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
                "fan_out_log": notifier.fan_out.log,
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
