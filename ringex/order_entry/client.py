"""A small order entry client: blocking (``OrderClient``) and trio (``TrioOrderClient``).

Both wrap the same sans-IO ``ClientConnection`` (requests to bytes, bytes to
``Reply`` objects), so they behave alike and the codec is the one the gateway uses.

Blocking use::

    with OrderClient.connect("127.0.0.1", 7001) as c:
        c.login(1001, token)
        r = c.buy("ACME", 10, 100)              # waits for its K or X
        print(r)                                 # "ACK ACME buy 10 @ 100 order 1732... seq 0"
        c.cancel("ACME", r.order_id)

Every request gets exactly one reply, in request order, so ``submit_*`` methods send
without waiting (pipelining) and ``next_reply()`` returns replies in the same order.
A session is closed by the exchange after a few seconds of silence: a client that
idles calls ``heartbeat()`` now and then.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import time
from collections import deque

import numpy as np

from ringex.codes import OrderType, Reason, ReplyType, Side, Tif
from ringex.order_entry.protocol import (
    NEED_DATA,
    REPLY,
    FrameDecoder,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_mass_cancel,
    encode_new_order,
    encode_replace,
    encode_risk,
)
from ringex.records import decode_symbol

__all__ = [
    "Reply",
    "ClientConnection",
    "OrderClient",
    "TrioOrderClient",
    "LoginRejected",
    "SessionClosed",
]

_KINDS = {
    ReplyType.LOGIN_ACCEPTED: "LOGIN ACCEPTED",
    ReplyType.LOGIN_REJECTED: "LOGIN REJECTED",
    ReplyType.ACK: "ACK",
    ReplyType.REJECT: "REJECT",
    ReplyType.HEARTBEAT: "HEARTBEAT",
    ReplyType.ERROR: "ERROR",
}
_SIDES = {Side.BUY: "buy", Side.SELL: "sell"}


@dataclasses.dataclass(frozen=True)
class Reply:
    """One exchange-to-client frame, decoded."""

    msg_type: str  # one letter: A J K X H E
    reason: int
    side: int
    session: int
    symbol: str
    client_order_id: int
    order_id: int
    price: int
    qty: int
    seq: int
    ts_ns: int

    @classmethod
    def from_record(cls, rec) -> Reply:
        return cls(
            msg_type=chr(int(rec["msg_type"])),
            reason=int(rec["reason"]),
            side=int(rec["side"]),
            session=int(rec["session"]),
            symbol=decode_symbol(rec["symbol"]),
            client_order_id=int(rec["client_order_id"]),
            order_id=int(rec["order_id"]),
            price=int(rec["price"]),
            qty=int(rec["qty"]),
            seq=int(rec["seq"]),
            ts_ns=int(rec["ts_ns"]),
        )

    @property
    def ok(self) -> bool:
        """An ``A`` or ``K``."""
        return self.msg_type in ("A", "K")

    @property
    def reason_name(self) -> str:
        try:
            return Reason(self.reason).name
        except ValueError:
            return f"REASON_{self.reason}"

    def __str__(self) -> str:
        try:
            kind = _KINDS[ReplyType(ord(self.msg_type))]
        except ValueError:
            kind = f"UNKNOWN {self.msg_type!r}"
        if self.msg_type == "A":
            return f"{kind}: session {self.session}"
        if self.msg_type in ("J", "E"):
            return f"{kind}: {self.reason_name}"
        if self.msg_type == "H":
            return kind
        what = " ".join(
            part
            for part in (
                self.symbol,
                _SIDES.get(self.side, ""),
                f"{self.qty}" if self.qty else "",
                f"@ {self.price}" if self.price else "",
                f"order {self.order_id}" if self.order_id else "",
                f"(client id {self.client_order_id})",
            )
            if part
        )
        if self.msg_type == "K":
            return f"{kind} {what}, journal seq {self.seq}"
        return f"{kind} {what}: {self.reason_name}"


class LoginRejected(Exception):
    """The exchange answered the login with ``J`` (and closed the session)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class SessionClosed(ConnectionError):
    """The exchange closed the session (after an ``E``, or the connection dropped)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class ClientConnection:
    """Sans-IO client side: ``new_order``/``cancel``/... return bytes to send;
    ``receive_data`` buffers what came back and ``next_reply`` returns one ``Reply``
    (heartbeats skipped) or None if none is complete yet."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(REPLY)
        self._replies: deque[Reply] = deque()
        self._ids = itertools.count(1)

    def next_client_order_id(self) -> int:
        return next(self._ids)

    def login(self, account: int, token: int) -> bytes:
        return encode_login(account, token)

    def new_order(
        self,
        symbol: str,
        side: str | int,
        qty: int,
        price: int | None = None,
        *,
        tif: str | int = "G",
        market: bool = False,
        client_order_id: int | None = None,
    ) -> tuple[int, bytes]:
        """``side`` "buy"/"sell" (or the letter code); ``tif`` G I F P. Market orders
        default to IOC. Returns (client order id, frame)."""
        side_code = {"buy": Side.BUY, "sell": Side.SELL, "B": Side.BUY, "S": Side.SELL}.get(side, side)
        tif_code = ord(tif) if isinstance(tif, str) else tif
        if market and tif_code == Tif.GTC:
            tif_code = Tif.IOC
        cid = self.next_client_order_id() if client_order_id is None else client_order_id
        frame = encode_new_order(
            symbol,
            int(side_code),
            qty,
            0 if market or price is None else price,
            client_order_id=cid,
            order_type=OrderType.MARKET if market else OrderType.LIMIT,
            tif=tif_code,
        )
        return cid, frame

    def cancel(self, symbol: str, order_id: int, client_order_id: int | None = None) -> tuple[int, bytes]:
        cid = self.next_client_order_id() if client_order_id is None else client_order_id
        return cid, encode_cancel(symbol, order_id, client_order_id=cid)

    def replace(
        self, symbol: str, order_id: int, price: int, qty: int, client_order_id: int | None = None
    ) -> tuple[int, bytes]:
        cid = self.next_client_order_id() if client_order_id is None else client_order_id
        return cid, encode_replace(symbol, order_id, price, qty, client_order_id=cid)

    def mass_cancel(
        self, symbol: str | None = None, side: str | int = 0, client_order_id: int | None = None
    ) -> tuple[int, bytes]:
        """Cancel every order of this session's account (in ``symbol``, None: every
        symbol; on ``side`` "buy"/"sell", 0: both)."""
        side_code = {"buy": Side.BUY, "sell": Side.SELL, "B": Side.BUY, "S": Side.SELL}.get(side, side)
        cid = self.next_client_order_id() if client_order_id is None else client_order_id
        return cid, encode_mass_cancel(symbol, int(side_code), client_order_id=cid)

    def set_limit(
        self,
        limit: int,
        value: int,
        *,
        account: int = 0,
        symbol: str | None = None,
        client_order_id: int | None = None,
    ) -> tuple[int, bytes]:
        """Operators only: set ``limit`` (a ``RiskLimit``) of ``account`` (0: the
        symbol's own) in ``symbol`` (None: every symbol)."""
        cid = self.next_client_order_id() if client_order_id is None else client_order_id
        return cid, encode_risk(limit, value, account=account, symbol=symbol, client_order_id=cid)

    def heartbeat(self) -> bytes:
        return encode_heartbeat()

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        frames = self._decoder.next_frames()
        if frames is NEED_DATA:
            return
        keep = frames[frames["msg_type"] != ReplyType.HEARTBEAT]
        self._replies.extend(Reply.from_record(r) for r in keep)

    def next_reply(self) -> Reply | None:
        return self._replies.popleft() if self._replies else None

    def replies_buffered(self) -> int:
        return len(self._replies)

    @property
    def peer_closed(self) -> bool:
        return self._decoder.peer_closed


##########################################################################################
# blocking
##########################################################################################


class OrderClient:
    """Blocking client over a plain socket. ``timeout`` (s) bounds each wait for a reply
    (``None``: wait for ever) and each send."""

    def __init__(self, sock: socket.socket, timeout: float | None = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.conn = ClientConnection()
        self.session: int | None = None

    @classmethod
    def connect(cls, host: str = "127.0.0.1", port: int = 7001, timeout: float | None = 10.0) -> OrderClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    def __enter__(self) -> OrderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_reply(self) -> Reply:
        """The next reply in request order (heartbeats skipped); waits for it.

        Error handling: ``SessionClosed`` when the exchange closes the connection
        (carrying its ``E`` if one came first), ``TimeoutError`` when no reply has come
        ``timeout`` after the call. The session stays usable after a timeout: the reply,
        when it comes, is the next one returned."""
        # The socket timeout bounds one recv, and every heartbeat ends a recv: so the
        # first recv gets the whole timeout and each later one only what is left of it.
        # (Set only when needed: settimeout is a syscall, and most replies take one recv.)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        waited = shortened = False
        try:
            while (reply := self.conn.next_reply()) is None:
                if waited and deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no reply within {self.timeout} s")
                    self.sock.settimeout(left)
                    shortened = True
                waited = True
                try:
                    data = self.sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError) as exc:
                    raise SessionClosed(f"connection lost: {exc}") from None
                if not data:
                    raise SessionClosed("the exchange closed the session")
                self.conn.receive_data(data)
        finally:
            if shortened:
                self.sock.settimeout(self.timeout)  # for sends and the next call
        if reply.msg_type == "E":
            raise SessionClosed(str(reply), reply)
        return reply

    def login(self, account: int, token: int) -> Reply:
        """Log in; raises ``LoginRejected`` on ``J``."""
        self.send(self.conn.login(account, token))
        reply = self.next_reply()
        if reply.msg_type != "A":
            raise LoginRejected(reply)
        self.session = reply.session
        return reply

    def submit_order(self, symbol: str, side: str, qty: int, price: int | None = None, **kw) -> int:
        """Send a new order without waiting; returns its client order id."""
        cid, frame = self.conn.new_order(symbol, side, qty, price, **kw)
        self.send(frame)
        return cid

    def new_order(self, symbol: str, side: str, qty: int, price: int | None = None, **kw) -> Reply:
        """Send a new order and wait for its ``K`` or ``X``. ``kw``: ``tif`` ("G",
        "I", "F", "P"), ``market=True``, ``client_order_id``."""
        self.submit_order(symbol, side, qty, price, **kw)
        return self.next_reply()

    def buy(self, symbol: str, qty: int, price: int | None = None, **kw) -> Reply:
        return self.new_order(symbol, "buy", qty, price, **kw)

    def sell(self, symbol: str, qty: int, price: int | None = None, **kw) -> Reply:
        return self.new_order(symbol, "sell", qty, price, **kw)

    def cancel(self, symbol: str, order_id: int) -> Reply:
        self.send(self.conn.cancel(symbol, order_id)[1])
        return self.next_reply()

    def replace(self, symbol: str, order_id: int, price: int, qty: int) -> Reply:
        self.send(self.conn.replace(symbol, order_id, price, qty)[1])
        return self.next_reply()

    def mass_cancel(self, symbol: str | None = None, side: str | int = 0) -> Reply:
        """Cancel every order of this account (in ``symbol``; None: every symbol). The
        ``K`` of a request for every symbol comes once it is durable in every one."""
        self.send(self.conn.mass_cancel(symbol, side)[1])
        return self.next_reply()

    def set_limit(self, limit: int, value: int, *, account: int = 0, symbol: str | None = None) -> Reply:
        """Operators only (else ``X`` NOT_PERMITTED): set a risk limit (``RiskLimit``)."""
        self.send(self.conn.set_limit(limit, value, account=account, symbol=symbol)[1])
        return self.next_reply()

    def heartbeat(self) -> None:
        self.send(self.conn.heartbeat())


##########################################################################################
# trio
##########################################################################################


class TrioOrderClient:
    """The same client for trio: ``async with await TrioOrderClient.connect(host, port) as c``."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.conn = ClientConnection()
        self.session: int | None = None

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7001) -> TrioOrderClient:
        import trio

        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(stream)

    async def __aenter__(self) -> TrioOrderClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_reply(self) -> Reply:
        import trio

        while (reply := self.conn.next_reply()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                raise SessionClosed(f"connection lost: {exc}") from None
            if not data:
                raise SessionClosed("the exchange closed the session")
            self.conn.receive_data(data)
        if reply.msg_type == "E":
            raise SessionClosed(str(reply), reply)
        return reply

    async def login(self, account: int, token: int) -> Reply:
        await self.send(self.conn.login(account, token))
        reply = await self.next_reply()
        if reply.msg_type != "A":
            raise LoginRejected(reply)
        self.session = reply.session
        return reply

    async def submit_order(self, symbol: str, side: str, qty: int, price: int | None = None, **kw) -> int:
        cid, frame = self.conn.new_order(symbol, side, qty, price, **kw)
        await self.send(frame)
        return cid

    async def new_order(self, symbol: str, side: str, qty: int, price: int | None = None, **kw) -> Reply:
        await self.submit_order(symbol, side, qty, price, **kw)
        return await self.next_reply()

    async def buy(self, symbol: str, qty: int, price: int | None = None, **kw) -> Reply:
        return await self.new_order(symbol, "buy", qty, price, **kw)

    async def sell(self, symbol: str, qty: int, price: int | None = None, **kw) -> Reply:
        return await self.new_order(symbol, "sell", qty, price, **kw)

    async def cancel(self, symbol: str, order_id: int) -> Reply:
        await self.send(self.conn.cancel(symbol, order_id)[1])
        return await self.next_reply()

    async def replace(self, symbol: str, order_id: int, price: int, qty: int) -> Reply:
        await self.send(self.conn.replace(symbol, order_id, price, qty)[1])
        return await self.next_reply()

    async def mass_cancel(self, symbol: str | None = None, side: str | int = 0) -> Reply:
        await self.send(self.conn.mass_cancel(symbol, side)[1])
        return await self.next_reply()

    async def set_limit(self, limit: int, value: int, *, account: int = 0, symbol: str | None = None) -> Reply:
        await self.send(self.conn.set_limit(limit, value, account=account, symbol=symbol)[1])
        return await self.next_reply()

    async def heartbeat(self) -> None:
        await self.send(self.conn.heartbeat())


def replies_from_bytes(data: bytes) -> list[Reply]:
    """Decode a whole buffer of reply frames (tests and tools)."""
    return [Reply.from_record(r) for r in np.frombuffer(data, dtype=REPLY)]
