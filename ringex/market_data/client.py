"""A small blocking client for the market data notifier, and a local book kept from it.

Used by ``ringex watch``, the tests and anyone scripting against the notifier:

    with MdClient("127.0.0.1", 7002) as md:          # or websocket=True, port 7003
        md.subscribe("depth", "ACME", levels=5)
        book = LocalBook()
        while True:
            book.on_message(md.recv())               # FeedGap -> resubscribe

Both transports give the same dicts: TCP carries one JSON object per line, WebSocket
one per text message (wsproto drives the handshake and the framing).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import wsproto
import wsproto.events as wse

__all__ = ["MdClient", "ConnectionClosed", "LocalBook", "FeedGap"]


class ConnectionClosed(ConnectionError):
    """The notifier closed the connection (or the socket broke)."""


class FeedGap(Exception):
    """A stream's seq jumped: the local state is stale; resubscribe for a snapshot."""


class MdClient:
    """One connection to the notifier. ``recv`` returns the next server message as a
    dict; ``TimeoutError`` if none arrives within the timeout."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7002, *, websocket: bool = False, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = bytearray()
        self._messages: list[str | bytes] = []
        self._closed = False
        self.ws: wsproto.WSConnection | None = None
        if websocket:
            self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            self.sock.sendall(self.ws.send(wse.Request(host=f"{host}:{port}", target="/")))
            self._text: list[str] = []
            deadline = time.monotonic() + timeout
            while not self._accepted():
                self._fill(deadline)

    def _accepted(self) -> bool:
        return self.ws is not None and self.ws.state is wsproto.connection.ConnectionState.OPEN

    def __enter__(self) -> MdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending ------------------------------------------------------------------

    def send(self, message: dict[str, Any] | bytes | str) -> None:
        """Send a request: a dict is JSON-encoded; bytes/str go as they are (for tests
        of malformed input)."""
        if isinstance(message, dict):
            raw = json.dumps(message)
        else:
            raw = message.decode() if isinstance(message, bytes) else message
        if self.ws is None:
            self.sock.sendall(raw.encode() + b"\n")
        else:
            self.sock.sendall(self.ws.send(wse.TextMessage(data=raw)))

    def login(self, account: int, token: int) -> None:
        self.send({"op": "login", "account": account, "token": token})

    def subscribe(
        self, channel: str, symbol: str | None = None, levels: int | None = None, last: int | None = None
    ) -> None:
        """``levels``: depth only; ``last``: trades only, that many past trades first
        (a ``trades_snapshot``). An ``orders`` subscription starts with ``orders_snapshot``."""
        msg: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if symbol is not None:
            msg["symbol"] = symbol
        if levels is not None:
            msg["levels"] = levels
        if last:
            msg["last"] = last
        self.send(msg)

    def unsubscribe(self, channel: str, symbol: str | None = None, levels: int | None = None) -> None:
        msg: dict[str, Any] = {"op": "unsubscribe", "channel": channel}
        if symbol is not None:
            msg["symbol"] = symbol
        if levels is not None:
            msg["levels"] = levels
        self.send(msg)

    def ping(self) -> None:
        self.send({"op": "ping"})

    # -- receiving ----------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        if self._closed:
            raise ConnectionClosed("connection closed by the notifier")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no message from the notifier in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no message from the notifier in time") from None
        except OSError as exc:
            self._closed = True
            raise ConnectionClosed(f"connection broken: {exc}") from None
        if not data:
            self._closed = True
            if self.ws is not None:
                self.ws.receive_data(None)
        if self.ws is None:
            self._buf += data
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            self._messages.extend(line for line in lines if line)
        else:
            if data:
                self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, wse.TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        self._messages.append("".join(self._text))
                        self._text = []
                elif isinstance(event, wse.Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except (OSError, wsproto.utilities.LocalProtocolError):
                        pass
                    self._closed = True
        if not data and not self._messages:
            raise ConnectionClosed("connection closed by the notifier")

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; ``TimeoutError`` after ``timeout`` s (default: the
        client's), ``ConnectionClosed`` once the notifier has closed and all is read."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._messages:
            self._fill(deadline)
        return json.loads(self._messages.pop(0))

    def recv_until(self, predicate, timeout: float | None = None) -> list[dict[str, Any]]:
        """Messages up to and including the first for which ``predicate(msg)`` holds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            out.append(msg)
            if predicate(msg):
                return out

    def drain(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Every message until none arrives for ``quiet`` seconds."""
        out = []
        while True:
            try:
                out.append(self.recv(quiet))
            except TimeoutError:
                return out


class LocalBook:
    """A client's copy of one depth stream, kept by the recipe in docs/market-data.md:
    take the snapshot, apply each update whose seq is the last one plus one, and on a
    gap raise ``FeedGap`` so the caller resubscribes."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.seq: int | None = None

    def on_message(self, msg: dict[str, Any]) -> bool:
        """Apply a depth message; returns False for messages of other kinds."""
        kind = msg.get("type")
        if kind == "depth_snapshot":
            self.bids = {p: q for p, q in msg["bids"]}
            self.asks = {p: q for p, q in msg["asks"]}
            self.seq = msg["seq"]
            return True
        if kind != "depth_update":
            return False
        if self.seq is None:
            return True  # updates before our snapshot are already inside it
        if msg["seq"] <= self.seq:
            return True
        if msg["seq"] != self.seq + 1:
            raise FeedGap(f"depth {msg['symbol']}: expected seq {self.seq + 1}, got {msg['seq']}")
        self.seq = msg["seq"]
        for side, levels in (("bids", self.bids), ("asks", self.asks)):
            for price, qty in msg[side]:
                if qty:
                    levels[price] = qty
                else:
                    levels.pop(price, None)
        return True

    def top(self, levels: int = 10) -> dict[str, list[tuple[int, int]]]:
        return {
            "bids": sorted(self.bids.items(), reverse=True)[:levels],
            "asks": sorted(self.asks.items())[:levels],
        }
