"""A small blocking FIX 4.4 initiator: for tests, tools and ``perf/fix_bench.py``.

It drives the same sans-IO ``Session`` as the acceptor, in the initiator role, and
keeps its ``MemoryStore`` across connections, so a client that drops and connects
again resumes its sequence numbers and recovers what it missed by ResendRequest::

    client = FixClient("127.0.0.1", 7004, "TRADER1")
    client.connect()
    client.logon(1001, token)
    client.new_order("o1", "ACME", FixSide.BUY, 10, price=100)
    report = client.wait_for(lambda m: m.msg_type == "8" and m.text(Tag.ClOrdID) == "o1")
    client.logout()
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable

from ringex.codes import FixMsgType, FixOrdType, Tag
from ringex.fix.codec import NEED_DATA, FrameDecoder, Message, utc_timestamp
from ringex.fix.session import (
    INITIATOR,
    ApplicationMessage,
    Closed,
    LoggedOn,
    MemoryStore,
    RejectReceived,
    Session,
    SessionState,
)

__all__ = ["FixClient", "FixSessionClosed"]


class FixSessionClosed(ConnectionError):
    """The session ended (the acceptor logged out, refused the logon, or the connection dropped)."""


class FixClient:
    """A blocking FIX initiator (see the module docstring). ``timeout`` bounds each wait."""

    def __init__(
        self,
        host: str,
        port: int,
        sender_comp_id: str,
        target_comp_id: str = "RINGEX",
        *,
        store: MemoryStore | None = None,
        timeout: float = 10.0,
        heartbeat_s: int = 30,
    ) -> None:
        self.host, self.port = host, port
        self.sender_comp_id, self.target_comp_id = sender_comp_id, target_comp_id
        self.store = store or MemoryStore()
        self.timeout = timeout
        self.heartbeat_s = heartbeat_s
        self.sock: socket.socket | None = None
        self.session: Session | None = None
        self.inbox: deque[Message] = deque()
        self.received: list[Message] = []  # every application message, in order
        self.rejects: list[Message] = []  # session-level Rejects the acceptor sent us
        self.wire: list[Message] = []  # every message received, admin ones too (for tests)
        self._wire_decoder = FrameDecoder()
        self.closed: Closed | None = None
        self.logged_on = False

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> FixClient:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wire_decoder = FrameDecoder()
        self.session = Session(INITIATOR, self.sender_comp_id, counterparty=self.target_comp_id, store=self.store)
        self.closed = None
        self.logged_on = False
        return self

    def logon(self, account: int, token: int, *, reset: bool = False, heartbeat_s: int | None = None) -> None:
        """Log on and wait for the acceptor's Logon; raises ``FixSessionClosed`` if refused."""
        self.session.start_logon(
            self.heartbeat_s if heartbeat_s is None else heartbeat_s,
            username=str(account),
            password=str(token),
            reset_seq_num=reset,
        )
        self._flush()
        self._wait(lambda: self.logged_on)

    def logout(self) -> None:
        """Log out and wait for the answer, then close."""
        if self.session is not None and self.session.state is SessionState.ACTIVE:
            self.session.logout()
            self._flush()
            try:
                self._wait(lambda: self.session.state is SessionState.CLOSED)
            except FixSessionClosed:
                pass
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def drop(self) -> None:
        """Close the connection without a Logout (a crash, a cable pulled)."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def __enter__(self) -> FixClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------

    def send(self, msg_type: str, body: list) -> int:
        """An application message; returns its MsgSeqNum."""
        seq = self.session.send(msg_type, body)
        self._flush()
        return seq

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (tests of garbage, bad checksums, hand-made messages)."""
        self.sock.sendall(data)

    def new_order(
        self,
        cl_ord_id: str,
        symbol: str,
        side: str,
        qty: int,
        *,
        price: int | None = None,
        ord_type: str = FixOrdType.LIMIT,
        tif: str | None = None,
        exec_inst: str | None = None,
    ) -> int:
        body = [(Tag.ClOrdID, cl_ord_id), (Tag.Symbol, symbol), (Tag.Side, side), (Tag.TransactTime, _now())]
        body += [(Tag.OrderQty, qty), (Tag.OrdType, ord_type)]
        if price is not None:
            body.append((Tag.Price, price))
        if tif is not None:
            body.append((Tag.TimeInForce, tif))
        if exec_inst is not None:
            body.append((Tag.ExecInst, exec_inst))
        return self.send(FixMsgType.NEW_ORDER_SINGLE, body)

    def cancel(self, cl_ord_id: str, orig_cl_ord_id: str, symbol: str, side: str) -> int:
        body = [(Tag.OrigClOrdID, orig_cl_ord_id), (Tag.ClOrdID, cl_ord_id), (Tag.Symbol, symbol), (Tag.Side, side)]
        return self.send(FixMsgType.ORDER_CANCEL_REQUEST, body + [(Tag.TransactTime, _now())])

    def replace(self, cl_ord_id: str, orig_cl_ord_id: str, symbol: str, side: str, qty: int, price: int) -> int:
        body = [(Tag.OrigClOrdID, orig_cl_ord_id), (Tag.ClOrdID, cl_ord_id), (Tag.Symbol, symbol), (Tag.Side, side)]
        body += [(Tag.TransactTime, _now()), (Tag.OrderQty, qty), (Tag.OrdType, FixOrdType.LIMIT), (Tag.Price, price)]
        return self.send(FixMsgType.ORDER_CANCEL_REPLACE_REQUEST, body)

    # -- receiving -----------------------------------------------------------------------------

    def next_message(self, timeout: float | None = None) -> Message:
        """The next application message the acceptor sent (in sequence)."""
        self._wait(lambda: bool(self.inbox), timeout)
        return self.inbox.popleft()

    def wait_for(self, match: Callable[[Message], bool], timeout: float | None = None) -> Message:
        """The first application message not taken yet that ``match``es (the others stay
        for later ``next_message``/``wait_for`` calls)."""
        found: list[Message] = []

        def look() -> bool:
            for message in self.inbox:
                if match(message):
                    self.inbox.remove(message)
                    found.append(message)
                    return True
            return False

        self._wait(look, timeout)
        return found[0]

    def poll(self, seconds: float) -> None:
        """Serve the session (heartbeats, TestRequests, resends) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())

    def _wait(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not done():
            if self.closed is not None and not done():
                raise FixSessionClosed(self.closed.reason)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the FIX acceptor in time")
            self._pump(left)

    def _pump(self, wait: float) -> None:
        self.sock.settimeout(max(0.001, min(wait, 0.2)))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            data = None
        except OSError:
            data = b""
        if data:
            self._wire_decoder.receive_data(data)
            while (message := self._wire_decoder.next_message()) is not NEED_DATA:
                self.wire.append(message)
        events = self.session.receive_data(data) if data is not None else []
        while more := self.session.next_events():
            events += more
        events += self.session.poll_timers()
        for event in events:
            if isinstance(event, ApplicationMessage):
                self.inbox.append(event.message)
                self.received.append(event.message)
            elif isinstance(event, LoggedOn):
                self.logged_on = True
            elif isinstance(event, RejectReceived):
                self.rejects.append(event.message)
            elif isinstance(event, Closed):
                self.closed = event
        self._flush()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.sock is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                pass


def _now() -> bytes:
    return utc_timestamp(time.time_ns())
