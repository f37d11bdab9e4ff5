"""The server side of one connection to the market data WebSocket port, sans-IO.

wsproto speaks the protocol (the HTTP upgrade, frames, masking, fragments, close);
``WebSocketServer`` decides what the notifier does with what a client sends, so the
notifier's WebSocket reader is a loop over ``receive_data`` and this whole path is
fuzzed without a socket (``tests/test_hostile_input.py``, ``tests/test_web.py``).
The port also serves the web view over plain HTTP: a request head that is not a
WebSocket upgrade becomes one ``HttpGet`` for ``ringex.market_data.web`` to answer.
Bytes in, actions out:

- ``Send(data)``: write these bytes (the handshake's answer, a close reply);
- ``Pong(data)``: write these bytes, the answer to a ping (a request like any other
  for the notifier's request rate);
- ``Request(text)``: one complete text message, a request for ``parse_request``;
- ``Refuse(reason)``: a message we do not understand; answer it with an ``error`` and
  count it, the session goes on;
- ``End(reason, tell)``: the connection is over; with ``tell`` the client still speaks
  WebSocket and gets a final ``error`` before the close, without it there is nobody
  to tell (a failed handshake, a client that closed).
- ``HttpGet(request)``: a plain HTTP request (``web.HttpRequest``, any method): answer
  it and close the connection. Nothing comes after it either.

Error handling: every failure a client can cause ends up as an action, at this one
boundary. wsproto raises ``RemoteProtocolError`` for a bad handshake and reports a bad
frame as a ``CloseConnection`` with the reason; it also lets ``UnicodeError`` escape
when the ``Host`` header is not valid IDNA or the request target is not ASCII
(wsproto 1.2-1.3: a one-line handshake that killed the notifier, issue 18), so that is
translated here too. Anything else would be a bug in this module or in wsproto and
propagates, to be caught by the notifier's per-session isolation.

Resource handling: a text or binary message longer than ``max_message_bytes`` ends
the connection as soon as that many bytes of it have arrived, so nothing unbounded is
held. ``incomplete`` says when bytes have arrived that did not complete a message or
control frame, for the notifier's deadline on partial input (slowloris).

The request head is read here, whole, before wsproto sees any of it: it is at most
``web.MAX_HEAD_BYTES`` (a longer one is answered 431), and ``web.parse_head`` says
whether it is an upgrade. That also keeps a first frame sent without waiting for the
101: wsproto 1.3's server drops whatever follows the upgrade request in the same
segment (``_accept`` does not pass h11's trailing data on), so it gets the head alone
and the rest once it is open.
"""

from __future__ import annotations

import dataclasses

import wsproto
import wsproto.events as wse
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ringex.market_data.messages import MAX_LINE_BYTES
from ringex.market_data.web import MAX_HEAD_BYTES, BadRequest, HttpRequest, bad_request_response, parse_head

__all__ = ["Send", "Pong", "Request", "Refuse", "End", "HttpGet", "Action", "WebSocketServer"]


@dataclasses.dataclass(frozen=True)
class Send:
    data: bytes


@dataclasses.dataclass(frozen=True)
class Pong:
    data: bytes


@dataclasses.dataclass(frozen=True)
class Request:
    text: str


@dataclasses.dataclass(frozen=True)
class Refuse:
    reason: str


@dataclasses.dataclass(frozen=True)
class End:
    reason: str
    tell: bool


@dataclasses.dataclass(frozen=True)
class HttpGet:
    request: HttpRequest


Action = Send | Pong | Request | Refuse | End | HttpGet

# RFC 6455 7.4.1: 1008 "policy violation" (our limits), 1009 "message too big".
# The end of an HTTP request's head.
_END_OF_HEAD = b"\r\n\r\n"
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


class WebSocketServer:
    """One connection's WebSocket state. See the module docstring.

    Use: ``receive_data(data)`` for each ``recv`` (non-empty), act on the returned
    actions in order; after an ``End`` or ``HttpGet`` nothing more comes out.
    ``close_frame(reason)`` is the frame to send when the server ends an open
    connection.
    """

    def __init__(self, max_message_bytes: int = MAX_LINE_BYTES) -> None:
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.max_message_bytes = max_message_bytes
        self._text: list[str] = []
        self._size = 0  # bytes of the message being received (text or binary)
        self._ended = False
        self._close_code = POLICY_VIOLATION
        self._head: bytearray | None = bytearray()  # the request head so far; None once read
        self.incomplete = False

    @property
    def open(self) -> bool:
        """The handshake is done: the client speaks WebSocket."""
        return self._ws.state is ConnectionState.OPEN

    @property
    def ended(self) -> bool:
        return self._ended

    def receive_data(self, data: bytes) -> list[Action]:
        if self._ended:
            return []
        actions: list[Action] = []
        completed = False
        if self._head is None:
            chunks: tuple[bytes, ...] = (data,)
        else:
            head, rest = self._split_head(data)
            if head is None:
                self.incomplete = True
                if len(self._head) > MAX_HEAD_BYTES:
                    self._refuse(BadRequest(431, f"request head longer than {MAX_HEAD_BYTES} bytes"), actions)
                return actions
            try:
                request = parse_head(head)
            except BadRequest as exc:
                self._refuse(exc, actions)
                return actions
            if not request.is_websocket_upgrade:
                self._ended = True
                actions.append(HttpGet(request))
                return actions
            chunks = (head, rest)
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                self._ws.receive_data(chunk)
                for event in self._ws.events():
                    completed |= self._on_event(event, actions)
                    if self._ended:
                        return actions
        except (RemoteProtocolError, LocalProtocolError, UnicodeError) as exc:
            self._fail(exc, actions)
            return actions
        if completed:
            self.incomplete = self._size > 0
        elif data:
            self.incomplete = True
        return actions

    def _split_head(self, data: bytes) -> tuple[bytes | None, bytes]:
        """The whole request head and what follows it, once its end has arrived; else
        ``(None, b"")`` with ``data`` kept (the caller bounds what is kept)."""
        assert self._head is not None
        searched = max(0, len(self._head) - len(_END_OF_HEAD) + 1)
        self._head += data
        end = self._head.find(_END_OF_HEAD, searched)
        if end < 0:
            return (None, b"")
        cut = end + len(_END_OF_HEAD)
        head, rest = bytes(self._head[:cut]), bytes(self._head[cut:])
        self._head = None
        return (head, rest)

    def _refuse(self, exc: BadRequest, actions: list[Action]) -> None:
        """Answer a request head we cannot take with its 4xx, and end: the peer does not
        speak WebSocket (yet), so a text frame would mean nothing to it."""
        self._ended = True
        self._head = None
        actions.append(Send(bad_request_response(exc)))
        actions.append(End(f"websocket handshake failed: {exc.reason}", tell=False))

    def _on_event(self, event: wse.Event, actions: list[Action]) -> bool:
        """Act on one wsproto event; True if it completed a message or control frame."""
        ws = self._ws
        if isinstance(event, wse.Request):
            actions.append(Send(ws.send(wse.AcceptConnection())))
            return True
        if isinstance(event, wse.TextMessage | wse.BytesMessage):
            text = isinstance(event, wse.TextMessage)
            self._size += len(event.data.encode()) if text else len(event.data)
            if self._size > self.max_message_bytes:
                # like an over-long TCP line: refuse it without buffering the rest
                self._end(f"message longer than {self.max_message_bytes} bytes", MESSAGE_TOO_BIG, actions)
                return True
            if text:
                self._text.append(event.data)
            if not event.message_finished:
                return False
            self._size = 0
            if text:
                raw, self._text = "".join(self._text), []
                actions.append(Request(raw))
            else:
                actions.append(Refuse("binary messages are not understood; send JSON text"))
            return True
        if isinstance(event, wse.Ping):
            actions.append(Pong(ws.send(event.response())))
            return True
        if isinstance(event, wse.CloseConnection):
            if ws.state is ConnectionState.REMOTE_CLOSING:
                # the client closed: answer its close frame
                actions.append(Send(ws.send(event.response())))
                self._ended = True
                actions.append(End("closed by the client", tell=False))
            else:
                # wsproto found a bad frame (its code says which rule it broke): fail the
                # connection with that code; the client broke the protocol, so no error text
                actions.append(Send(self._close_bytes(event.code, event.reason or "protocol error")))
                self._ended = True
                actions.append(End(f"websocket protocol error: {event.reason}", tell=False))
            return True
        return True  # Pong and anything else: nothing to do

    def _end(self, reason: str, code: int, actions: list[Action]) -> None:
        """End an open connection ourselves: the error text goes first (``tell``),
        then the caller sends ``close_frame``."""
        self._ended = True
        self._close_code = code
        actions.append(End(reason, tell=True))

    def _fail(self, exc: Exception, actions: list[Action]) -> None:
        self._ended = True
        if not self.open:
            # the handshake failed: the peer does not speak WebSocket (yet), so a text
            # frame would mean nothing to it; answer with an HTTP 400 if wsproto can
            try:
                actions.append(Send(self._ws.send(wse.RejectConnection(status_code=400))))
            except (LocalProtocolError, RemoteProtocolError):
                pass
            actions.append(End(f"websocket handshake failed: {exc}", tell=False))
        else:
            actions.append(End(f"websocket protocol error: {exc}", tell=True))

    def _close_bytes(self, code: int, reason: str) -> bytes:
        # a close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 5.5)
        reason = reason.encode()[:120].decode(errors="ignore")
        try:
            return self._ws.send(wse.CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""

    def close_frame(self, reason: str = "closed by server") -> bytes:
        """The close frame for a connection the server ends: code 1009 after an
        over-long message, else 1008 (policy). ``b""`` if the connection is not open or
        a close was sent already."""
        return self._close_bytes(self._close_code, reason)
