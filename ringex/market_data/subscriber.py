"""One subscriber connection of the notifier: its socket, subscriptions and queue.

```
 fan-out ──► Subscriber.write(bytes) ──► sock.send ─────────────────────► client
                     │ (what the kernel did not take)
                     └──► queue ──► Subscriber.writer task ──► sock.send ─┘
```

``Subscriber.write`` tries a non-blocking ``send`` straight from the caller (one
system call, no task switch); only what the kernel did not take is queued, and the
subscriber's writer task flushes it when the socket becomes writable. The queue is
bounded in bytes: a subscriber over the bound is a slow consumer and is closed with
an error saying so, so it never slows the ring reader or any other subscriber, and
one that stays connected never misses a message.

What the bytes a subscriber sends mean is decided elsewhere: by the sans-IO
``ringex.market_data.messages`` (TCP lines, requests) and
``ringex.market_data.ws_server`` (WebSocket); the notifier serves the requests
(``ringex.market_data.notifier``) and the fan-out decides what goes to whom
(``ringex.market_data.fanout``).

Error handling: a socket error ends the one subscriber it happens on. Inside the
subscriber's tasks ``SubscriberGone`` ends it; ``recv`` raises it at end of file, on
a socket error and at a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
from typing import TYPE_CHECKING, Any

import trio

from ringex.config import MarketDataSettings
from ringex.limits import RateLimit, address_key
from ringex.market_data.messages import session_message, ws_text_frame
from ringex.market_data.ws_server import WebSocketServer

if TYPE_CHECKING:
    from ringex.market_data.fanout import Slice

__all__ = ["SubscriberGone", "Subscriber", "peer_text", "refuse_connection"]

RECV_BYTES = 65536


class SubscriberGone(Exception):
    """Raised inside a session's tasks to end it; with ``tell``, ``reason`` goes to the
    client (else there is nobody to tell: the connection is gone)."""

    def __init__(self, reason: str | None, *, tell: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tell = tell


class Subscriber:
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
        "cancel_scope",
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
        self.cancel_scope: trio.CancelScope | None = None  # set by the notifier
        self.fan_out_slice: Slice | None = None  # set by the fan-out

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
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def finish(self, data: bytes, reason: str) -> None:
        """Send ``data`` as the last bytes and end the session; ``linger`` sends what
        the kernel did not take at once. Unlike ``write`` the queue bound does not
        apply: ``data`` is the server's own answer (a file of the web view), not a
        backlog the client failed to read."""
        if self.closing is not None:
            return
        self.closing = reason
        view = memoryview(data)
        if not self._pending:
            try:
                view = view[self.sock.send(data) :]
            except BlockingIOError:
                pass
            except OSError:
                view = view[len(view) :]  # nobody to send to: end without lingering
        if len(view):
            self._pending.append(view)
            self._pending_bytes += len(view)
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

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

    async def recv(self, deadline: float = math.inf, late: str = "", *, tell: bool = False) -> bytes:
        """The next bytes from the socket. ``SubscriberGone`` at end of file or on a
        socket error, and at ``deadline`` (``trio.current_time()``) with ``late`` as
        the reason, told to the client if ``tell``."""
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                if deadline == math.inf:
                    await trio.lowlevel.wait_readable(self.sock)
                    continue
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_readable(self.sock)
                    continue
                raise SubscriberGone(late, tell=tell) from None
            except OSError as exc:
                raise SubscriberGone(None) from exc
            if not data:
                raise SubscriberGone(None)
            return data

    async def linger(self, grace_s: float) -> None:
        """Give a closed subscriber ``grace_s`` to take its tail and the error message;
        a client that does not read is cut off after that."""
        if self.closing is None or self.queued_bytes == 0:
            return
        with trio.move_on_after(grace_s), contextlib.suppress(OSError):
            await self.flush()
            if self.ws is not None and (frame := self.ws.close_frame()):
                with contextlib.suppress(BlockingIOError):
                    self.sock.send(frame)
            self.sock.shutdown(socket.SHUT_WR)


def peer_text(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown peer"


def refuse_connection(conn: socket.socket, reason: str, websocket: bool) -> None:
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
