"""One FIX 4.4 session's state machine, sans-IO: bytes in, events and bytes out.

The acceptor (``ringex.fix.acceptor``) and the Python initiator (``ringex.fix.client``)
both drive a ``Session``; neither the session nor its tests see a socket::

    session = Session(ACCEPTOR, "RINGEX", clock=clock)
    events = session.receive_data(data)     # LogonRequested, ApplicationMessage, Closed...
    while events:                           # (one application message at a time)
        handle(events)
        events = session.next_events()
    sock.sendall(session.data_to_send())
    events += session.poll_timers()         # heartbeats, TestRequest, timeouts

States: ``AWAITING_LOGON`` → (acceptor: ``LOGON_RECEIVED`` until the application calls
``accept_logon(store)`` or ``reject_logon(text)``) → ``ACTIVE`` → (``LOGGING_OUT``) →
``CLOSED``. Once CLOSED the owner flushes ``data_to_send()`` and closes the socket.

What the session does by itself, per the FIX 4.4 session layer:

- **Sequence numbers.** Every message it sends takes ``store.next_sender_seq``; every
  message in sequence moves ``store.next_target_seq``. A message above the expected
  number is a gap: one ResendRequest(expected, 0) is sent and messages are dropped
  until the gap is filled (the counterparty resends them; queueing them instead would
  only save bandwidth). A ResendRequest, a Logout and a SequenceReset-Reset are acted
  on even across a gap. A message below the expected number is ignored if it is a
  PossDupFlag=Y duplicate, and is otherwise fatal (Logout "MsgSeqNum too low").
- **ResendRequest** from the counterparty: the stored application messages in the
  range are sent again with PossDupFlag=Y and OrigSendingTime, every run of admin
  messages (and of anything no longer stored) becomes one SequenceReset-GapFill.
- **SequenceReset**: GapFill moves the expected number forward; Reset sets it,
  whatever MsgSeqNum says; lowering it is rejected (SessionRejectReason 5).
- **Heartbeats**: a Heartbeat after HeartBtInt seconds of sending nothing; after
  HeartBtInt + 20% of receiving nothing a TestRequest; no answer in another HeartBtInt
  and the session ends. A TestRequest is answered with its TestReqID.
- **Checks** on every message: CompIDs (SessionRejectReason 9 and Logout), SendingTime
  within ``max_latency_s`` (10 and Logout), MsgSeqNum present, OrigSendingTime on
  PossDupFlag=Y, malformed fields (the codec's ``problem``), unknown MsgType (11).
  A rejected message still counts: its sequence number is consumed.
- **ResetSeqNumFlag=Y** on Logon: both sides start again at 1 and the stored messages
  are forgotten (the acceptor answers with 141=Y).

Persistence: ``store`` (``SessionStore``) holds the two numbers and the sent
application messages; the acceptor's store writes them to LMDB in the same
transaction as the orders they are about, before the bytes go out
(``ringex.fix.store``); ``MemoryStore`` keeps them in memory (clients, tests).

Error handling: bad input from the counterparty is answered on the wire (Reject,
Logout) or ends the session with a ``Closed`` event saying why; it never raises.
Misuse by the owner (sending before logon, accepting a logon twice) raises
``LocalProtocolError``.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable
from typing import Protocol

from ringex.codes import FIX44_MSG_TYPES, FixMsgType, SessionRejectReason, Tag
from ringex.fix.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    NEED_DATA,
    FrameDecoder,
    FramingError,
    Garbled,
    Message,
    encode,
    parse_frame,
    parse_utc_timestamp,
    utc_timestamp,
)

__all__ = [
    "ACCEPTOR",
    "INITIATOR",
    "SessionState",
    "SessionStore",
    "MemoryStore",
    "Session",
    "LocalProtocolError",
    "LogonRequested",
    "LoggedOn",
    "ApplicationMessage",
    "RejectReceived",
    "GarbledIgnored",
    "Closed",
    "SystemClock",
    "ADMIN_MSG_TYPES",
    "compose",
]

ACCEPTOR = "acceptor"
INITIATOR = "initiator"

# Session-level messages: never stored, gap-filled on a ResendRequest.
ADMIN_MSG_TYPES = frozenset(
    {
        FixMsgType.HEARTBEAT,
        FixMsgType.TEST_REQUEST,
        FixMsgType.RESEND_REQUEST,
        FixMsgType.REJECT,
        FixMsgType.SEQUENCE_RESET,
        FixMsgType.LOGOUT,
        FixMsgType.LOGON,
    }
)
# HeartBtInt accepted on a Logon (seconds); 0 means no heartbeats.
MAX_HEARTBEAT_S = 3600
# The spec's "reasonable transmission time" added to HeartBtInt before a TestRequest.
TEST_REQUEST_MARGIN = 1.2


class LocalProtocolError(Exception):
    """The session's owner misused it (a bug in ringex, not the counterparty's fault)."""


class SessionState(enum.Enum):
    AWAITING_LOGON = "awaiting logon"
    LOGON_RECEIVED = "logon received"
    ACTIVE = "active"
    LOGGING_OUT = "logging out"
    CLOSED = "closed"


class SessionStore(Protocol):
    """What a session persists: its two sequence numbers and the application messages
    it sent (for ResendRequest). Attribute writes must be kept (``MemoryStore``,
    ``ringex.fix.store.SessionRecord``)."""

    next_sender_seq: int
    next_target_seq: int

    def save_sent(self, seq: int, raw: bytes) -> None: ...

    def sent_messages(self, begin: int, end: int) -> Iterable[tuple[int, bytes]]: ...

    def reset(self) -> None: ...


class MemoryStore:
    """A ``SessionStore`` in memory: for initiators and tests."""

    def __init__(self) -> None:
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.messages: dict[int, bytes] = {}

    def save_sent(self, seq: int, raw: bytes) -> None:
        self.messages[seq] = raw

    def sent_messages(self, begin: int, end: int) -> Iterable[tuple[int, bytes]]:
        return [(seq, self.messages[seq]) for seq in range(begin, end + 1) if seq in self.messages]

    def reset(self) -> None:
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.messages.clear()


class SystemClock:
    """Monotonic seconds for timers, wall-clock ns for SendingTime."""

    monotonic = staticmethod(time.monotonic)
    time_ns = staticmethod(time.time_ns)


####################################################################################
# Events
####################################################################################


@dataclasses.dataclass(frozen=True)
class LogonRequested:
    """(acceptor) A Logon arrived: the owner authenticates it and calls
    ``accept_logon(store)`` or ``reject_logon(text)``; input waits meanwhile."""

    sender_comp_id: str
    username: str | None
    password: str | None
    heartbeat_s: int
    reset_seq_num: bool


@dataclasses.dataclass(frozen=True)
class LoggedOn:
    """The session is active; ``reset``: sequence numbers started again at 1."""

    reset: bool


@dataclasses.dataclass(frozen=True)
class ApplicationMessage:
    """An application message, in sequence, checked at the session level."""

    message: Message


@dataclasses.dataclass(frozen=True)
class RejectReceived:
    """The counterparty rejected one of our messages (Reject 3)."""

    message: Message


@dataclasses.dataclass(frozen=True)
class GarbledIgnored:
    """A frame with a bad CheckSum was ignored (the next message's gap recovers it)."""

    problem: str


@dataclasses.dataclass(frozen=True)
class Closed:
    """The session is over: flush ``data_to_send()`` and close the connection.
    ``error``: it ended on a protocol error (``reason`` says which), not a Logout."""

    reason: str
    error: bool


def compose(
    store: SessionStore,
    sender: str,
    target: str,
    msg_type: str,
    body: list[tuple[int, object]],
    now_ns: int,
) -> bytes:
    """An application message with the next sequence number of ``store``, kept in it for
    resends: what ``Session.send`` does, usable while no connection is open (the
    acceptor writes execution reports for a disconnected session this way)."""
    seq = store.next_sender_seq
    raw = encode(
        msg_type,
        [
            (Tag.SenderCompID, sender),
            (Tag.TargetCompID, target),
            (Tag.MsgSeqNum, seq),
            (Tag.SendingTime, utc_timestamp(now_ns)),
        ],
        body,
    )
    store.save_sent(seq, raw)
    store.next_sender_seq = seq + 1
    return raw


class Session:
    """One FIX 4.4 session; see the module docstring.

    ``role``: ``ACCEPTOR`` or ``INITIATOR``; ``comp_id``: ours (SenderCompID of what we
    send). An initiator names ``counterparty`` (the TargetCompID) and its ``store`` at
    once; an acceptor learns both from the Logon.
    """

    def __init__(
        self,
        role: str,
        comp_id: str,
        *,
        counterparty: str | None = None,
        store: SessionStore | None = None,
        clock=None,
        logon_timeout_s: float = 5.0,
        logout_timeout_s: float = 2.0,
        max_latency_s: float = 120.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if role not in (ACCEPTOR, INITIATOR):
            raise LocalProtocolError(f"role must be {ACCEPTOR!r} or {INITIATOR!r}")
        if role == INITIATOR and (counterparty is None or store is None):
            raise LocalProtocolError("an initiator needs its counterparty and store")
        self.role = role
        self.comp_id = comp_id
        self.counterparty = counterparty
        self.store = store
        self.clock = clock or SystemClock()
        self.logon_timeout_s = logon_timeout_s
        self.logout_timeout_s = logout_timeout_s
        self.max_latency_s = max_latency_s
        self.state = SessionState.AWAITING_LOGON
        self.heartbeat_s = 0
        self._decoder = FrameDecoder(max_message_bytes)
        self._out: list[bytes] = []
        now = self.clock.monotonic()
        self._started = now
        self._last_sent = now
        self._last_received = now
        self._logon: Message | None = None
        self._reset_requested = False
        self._resend_upto: int | None = None  # highest MsgSeqNum seen beyond a gap being resent
        self._test_request: tuple[str, float] | None = None  # (TestReqID, sent at)
        self._test_requests = 0
        self._logout_deadline: float | None = None
        self.messages_received = 0
        self.rejects_sent = 0
        self.rejects_received = 0
        self.gaps_detected = 0

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything the session has to send since the last call."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def write(self, raw: bytes) -> None:
        """Queue an already composed message (``compose``) for sending."""
        self._out.append(raw)
        self._last_sent = self.clock.monotonic()

    def _now_ns(self) -> int:
        return self.clock.time_ns()

    def _header(self, seq: int, *extra: tuple[int, object]) -> list[tuple[int, object]]:
        return [
            (Tag.SenderCompID, self.comp_id),
            (Tag.TargetCompID, self.counterparty),
            (Tag.MsgSeqNum, seq),
            *extra,
            (Tag.SendingTime, utc_timestamp(self._now_ns())),
        ]

    def _send_admin(self, msg_type: str, body: list[tuple[int, object]]) -> None:
        seq = self.store.next_sender_seq
        self.store.next_sender_seq = seq + 1
        self.write(encode(msg_type, self._header(seq), body))

    def send(self, msg_type: str, body: list[tuple[int, object]]) -> int:
        """Send an application message (kept for resends); returns its MsgSeqNum. Only
        while ACTIVE: before the Logon completes a message could only be resent."""
        if self.state is not SessionState.ACTIVE:
            raise LocalProtocolError(f"cannot send {msg_type} while the session is {self.state.value}")
        seq = self.store.next_sender_seq
        self.write(compose(self.store, self.comp_id, self.counterparty, msg_type, body, self._now_ns()))
        return seq

    # -- the owner's decisions -----------------------------------------------------------------

    def start_logon(
        self,
        heartbeat_s: int = 30,
        *,
        username: str | None = None,
        password: str | None = None,
        reset_seq_num: bool = False,
    ) -> None:
        """(initiator) Send the Logon."""
        if self.role != INITIATOR or self.state is not SessionState.AWAITING_LOGON:
            raise LocalProtocolError("start_logon is for an initiator that has not logged on")
        if reset_seq_num:
            self.store.reset()
        self._reset_requested = reset_seq_num
        self.heartbeat_s = heartbeat_s
        body: list[tuple[int, object]] = [(Tag.EncryptMethod, 0), (Tag.HeartBtInt, heartbeat_s)]
        if reset_seq_num:
            body.append((Tag.ResetSeqNumFlag, "Y"))
        if username is not None:
            body.append((Tag.Username, username))
        if password is not None:
            body.append((Tag.Password, password))
        self._send_admin(FixMsgType.LOGON, body)

    def accept_logon(self, store: SessionStore) -> list:
        """(acceptor) Accept the Logon ``LogonRequested`` announced, with the session's
        ``store``; answers it and processes any input that waited. Returns events."""
        if self.state is not SessionState.LOGON_RECEIVED:
            raise LocalProtocolError(f"accept_logon while the session is {self.state.value}")
        logon = self._logon
        self.store = store
        events: list = []
        seq = logon.seq
        reset = logon.fields.get(Tag.ResetSeqNumFlag) == b"Y"
        if reset:
            if seq != 1:
                self._fatal(f"ResetSeqNumFlag=Y needs MsgSeqNum 1, got {seq}", events, logout=True)
                return events
            store.reset()
        expected = store.next_target_seq
        if seq < expected:
            self._fatal(f"MsgSeqNum too low, expecting {expected} but received {seq}", events, logout=True)
            return events
        body: list[tuple[int, object]] = [(Tag.EncryptMethod, 0), (Tag.HeartBtInt, self.heartbeat_s)]
        if reset:
            body.append((Tag.ResetSeqNumFlag, "Y"))
        self._send_admin(FixMsgType.LOGON, body)
        self.state = SessionState.ACTIVE
        events.append(LoggedOn(reset))
        if seq > expected:
            self._request_resend(expected, seq)
        else:
            store.next_target_seq = seq + 1
        events += self.next_events()
        return events

    def reject_logon(self, text: str) -> list:
        """(acceptor) Refuse the Logon: a Logout saying why, then the session ends."""
        if self.state is not SessionState.LOGON_RECEIVED:
            raise LocalProtocolError(f"reject_logon while the session is {self.state.value}")
        # Not counted in any store: the session was never established (spec: Logout,
        # then disconnect); an initiator does not check a Logout's MsgSeqNum.
        self.write(encode(FixMsgType.LOGOUT, self._header(1), [(Tag.Text, text)]))
        self.state = SessionState.CLOSED
        return [Closed(f"logon refused: {text}", error=True)]

    def logout(self, text: str | None = None) -> None:
        """Start a Logout; the session ends when the counterparty answers, or after
        ``logout_timeout_s``."""
        if self.state is not SessionState.ACTIVE:
            raise LocalProtocolError(f"logout while the session is {self.state.value}")
        self._send_admin(FixMsgType.LOGOUT, [(Tag.Text, text)] if text else [])
        self.state = SessionState.LOGGING_OUT
        self._logout_deadline = self.clock.monotonic() + self.logout_timeout_s

    def test_request(self, test_id: str) -> None:
        """Ask the counterparty for a Heartbeat carrying ``test_id`` (TestRequest 1)."""
        if self.state is not SessionState.ACTIVE:
            raise LocalProtocolError(f"test_request while the session is {self.state.value}")
        self._send_admin(FixMsgType.TEST_REQUEST, [(Tag.TestReqID, test_id)])

    def reject(self, message: Message, reason: str, tag: int | None = None, text: str | None = None) -> None:
        """A session-level Reject (3) of ``message`` (already counted in sequence)."""
        body: list[tuple[int, object]] = [(Tag.RefSeqNum, message.seq or 0)]
        if tag is not None:
            body.append((Tag.RefTagID, tag))
        if message.msg_type:
            body.append((Tag.RefMsgType, message.msg_type))
        body.append((Tag.SessionRejectReason, reason))
        if text:
            body.append((Tag.Text, text))
        self.rejects_sent += 1
        self._send_admin(FixMsgType.REJECT, body)

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list:
        """Feed bytes from the connection (``b""``: it closed); returns the first events
        they cause. Input is handled up to and including the next application message
        only, so what the owner does about it comes before anything the session says
        about later input: call ``next_events()`` until it returns nothing."""
        self._decoder.receive_data(data)
        if data:
            self._last_received = self.clock.monotonic()
        return self.next_events()

    def next_events(self) -> list:
        """The events of the buffered input after those returned so far (see ``receive_data``)."""
        events: list = []
        exhausted = self._process(events)
        if exhausted and self._decoder.peer_closed and self.state is not SessionState.CLOSED:
            clean = self.state is SessionState.LOGGING_OUT
            self.state = SessionState.CLOSED
            events.append(Closed("the counterparty closed the connection", error=not clean))
        return events

    def _process(self, events: list) -> bool:
        """Handle buffered messages until an application message; True if the input ran out."""
        decoder = self._decoder
        while self.state not in (SessionState.CLOSED, SessionState.LOGON_RECEIVED):
            try:
                item = decoder.next_message()
            except FramingError as exc:
                self._fatal(f"unparsable input: {exc}", events, logout=self.state is SessionState.ACTIVE)
                return True
            if item is NEED_DATA:
                return True
            if isinstance(item, Garbled):
                events.append(GarbledIgnored(item.problem))
                continue
            self.messages_received += 1
            self._handle(item, events)
            if events and isinstance(events[-1], ApplicationMessage):
                return False
        return True

    def _fatal(self, reason: str, events: list, *, logout: bool) -> None:
        if logout and self.store is not None and self.counterparty is not None:
            self._send_admin(FixMsgType.LOGOUT, [(Tag.Text, reason[:200])])
        self.state = SessionState.CLOSED
        events.append(Closed(reason, error=True))

    def _handle(self, m: Message, events: list) -> None:
        mt = m.msg_type
        if self.state is SessionState.AWAITING_LOGON:
            if mt == FixMsgType.LOGOUT and self.role == INITIATOR:
                self.state = SessionState.CLOSED
                events.append(Closed(f"logon refused: {m.text(Tag.Text) or 'no reason given'}", error=True))
            elif mt != FixMsgType.LOGON:
                # The spec: the first message must be a Logon, else disconnect without a word.
                self._fatal(f"first message is MsgType {mt!r}, not a Logon", events, logout=False)
            elif self.role == ACCEPTOR:
                self._on_logon_request(m, events)
            else:
                self._on_logon_reply(m, events)
            return
        if not self._check_header(m, events):
            return
        seq = m.seq
        if mt == FixMsgType.SEQUENCE_RESET and m.fields.get(Tag.GapFillFlag) != b"Y":
            self._on_sequence_reset(m, events)
            return
        expected = self.store.next_target_seq
        if seq > expected:
            if mt == FixMsgType.LOGOUT:
                self._on_logout(m, events)
                return
            if mt == FixMsgType.RESEND_REQUEST:
                self._on_resend_request(m)
            self._request_resend(expected, seq)
            return
        if seq < expected:
            if m.poss_dup:
                return  # a duplicate of what we have processed: ignore it
            self._fatal(f"MsgSeqNum too low, expecting {expected} but received {seq}", events, logout=True)
            return
        # In sequence.
        if self._resend_upto is not None and seq >= self._resend_upto:
            self._resend_upto = None
        if m.poss_dup and mt != FixMsgType.SEQUENCE_RESET:
            orig = parse_utc_timestamp(m.fields.get(Tag.OrigSendingTime))
            sending = parse_utc_timestamp(m.fields.get(Tag.SendingTime))
            if orig is None:
                self.store.next_target_seq = seq + 1
                self.reject(
                    m,
                    SessionRejectReason.REQUIRED_TAG_MISSING,
                    Tag.OrigSendingTime,
                    "PossDupFlag=Y without OrigSendingTime",
                )
                return
            if orig > sending:
                self.store.next_target_seq = seq + 1
                self.reject(
                    m,
                    SessionRejectReason.SENDING_TIME_ACCURACY,
                    Tag.OrigSendingTime,
                    "OrigSendingTime after SendingTime",
                )
                self._fatal("OrigSendingTime after SendingTime", events, logout=True)
                return
        if mt == FixMsgType.SEQUENCE_RESET:  # a gap fill in sequence
            self._on_gap_fill(m)
            return
        self.store.next_target_seq = seq + 1
        if m.problem is not None:
            reason, tag, text = m.problem
            self.reject(m, reason, tag, text)
            return
        if mt == FixMsgType.HEARTBEAT:
            if self._test_request is not None and m.text(Tag.TestReqID) == self._test_request[0]:
                self._test_request = None
        elif mt == FixMsgType.TEST_REQUEST:
            test_id = m.get(Tag.TestReqID)
            if test_id is None:
                self.reject(m, SessionRejectReason.REQUIRED_TAG_MISSING, Tag.TestReqID, "TestReqID missing")
            else:
                self._send_admin(FixMsgType.HEARTBEAT, [(Tag.TestReqID, test_id)])
        elif mt == FixMsgType.RESEND_REQUEST:
            self._on_resend_request(m)
        elif mt == FixMsgType.REJECT:
            self.rejects_received += 1
            events.append(RejectReceived(m))
        elif mt == FixMsgType.LOGOUT:
            self._on_logout(m, events)
        elif mt == FixMsgType.LOGON:
            self._fatal("a Logon on a session already logged on", events, logout=True)
        elif mt not in FIX44_MSG_TYPES:
            self.reject(m, SessionRejectReason.INVALID_MSG_TYPE, Tag.MsgType, f"MsgType {mt!r} is not FIX 4.4")
        else:
            events.append(ApplicationMessage(m))

    def _check_header(self, m: Message, events: list) -> bool:
        """CompIDs, MsgSeqNum and SendingTime of a message after the Logon."""
        if m.seq is None:
            # Without a sequence number it cannot even be rejected in order.
            self._fatal("a message without a valid MsgSeqNum (34)", events, logout=True)
            return False
        sender, target = m.text(Tag.SenderCompID), m.text(Tag.TargetCompID)
        if sender != self.counterparty or target != self.comp_id:
            if m.seq == self.store.next_target_seq:
                self.store.next_target_seq += 1
            self.reject(m, SessionRejectReason.COMP_ID_PROBLEM, Tag.SenderCompID, f"CompIDs {sender}->{target}")
            self._fatal(f"wrong CompIDs {sender!r} -> {target!r}", events, logout=True)
            return False
        sending = parse_utc_timestamp(m.fields.get(Tag.SendingTime))
        if sending is None or (not m.poss_dup and abs(sending - self._now_ns()) > self.max_latency_s * 1_000_000_000):
            if m.seq == self.store.next_target_seq:
                self.store.next_target_seq += 1
            problem = "SendingTime missing or malformed" if sending is None else "SendingTime accuracy problem"
            self.reject(m, SessionRejectReason.SENDING_TIME_ACCURACY, Tag.SendingTime, problem)
            self._fatal(problem, events, logout=True)
            return False
        return True

    # -- logon ------------------------------------------------------------------------------

    def _logon_problem(self, m: Message) -> str | None:
        if m.problem is not None:
            return m.problem[2]
        if m.seq is None:
            return "Logon without a valid MsgSeqNum (34)"
        if m.get(Tag.EncryptMethod) != b"0":
            return "EncryptMethod (98) must be 0"
        heartbeat = m.integer(Tag.HeartBtInt)
        if heartbeat is None or heartbeat > MAX_HEARTBEAT_S:
            return f"HeartBtInt (108) must be 0 to {MAX_HEARTBEAT_S}"
        if parse_utc_timestamp(m.fields.get(Tag.SendingTime)) is None:
            return "SendingTime (52) missing or malformed"
        if not m.get(Tag.SenderCompID):
            return "SenderCompID (49) missing"
        return None

    def _on_logon_request(self, m: Message, events: list) -> None:
        self.counterparty = m.text(Tag.SenderCompID) or ""
        problem = self._logon_problem(m)
        target = m.text(Tag.TargetCompID)
        if problem is None and target != self.comp_id:
            problem = f"TargetCompID must be {self.comp_id}, got {target}"
        if problem is not None:
            self._logon = m
            self.state = SessionState.LOGON_RECEIVED
            events.extend(self.reject_logon(problem))
            return
        self._logon = m
        self.heartbeat_s = m.integer(Tag.HeartBtInt)
        self.state = SessionState.LOGON_RECEIVED
        events.append(
            LogonRequested(
                sender_comp_id=self.counterparty,
                username=m.text(Tag.Username),
                password=m.text(Tag.Password),
                heartbeat_s=self.heartbeat_s,
                reset_seq_num=m.fields.get(Tag.ResetSeqNumFlag) == b"Y",
            )
        )

    def _on_logon_reply(self, m: Message, events: list) -> None:
        problem = self._logon_problem(m)
        if problem is None and (
            m.text(Tag.SenderCompID) != self.counterparty or m.text(Tag.TargetCompID) != self.comp_id
        ):
            problem = "the Logon reply has the wrong CompIDs"
        if problem is not None:
            self._fatal(f"bad Logon reply: {problem}", events, logout=False)
            return
        reset = m.fields.get(Tag.ResetSeqNumFlag) == b"Y"
        seq = m.seq
        if reset and not self._reset_requested:
            # the acceptor reset: so do we (its Logon is 1 and our next is 2)
            self.store.next_target_seq = 1
        expected = self.store.next_target_seq
        if seq < expected:
            self.state = SessionState.ACTIVE
            self._fatal(f"MsgSeqNum too low, expecting {expected} but received {seq}", events, logout=True)
            return
        self.state = SessionState.ACTIVE
        events.append(LoggedOn(reset))
        if seq > expected:
            self._request_resend(expected, seq)
        else:
            self.store.next_target_seq = seq + 1

    # -- sequence recovery ----------------------------------------------------------------

    def _request_resend(self, expected: int, seen: int) -> None:
        if self._resend_upto is not None:
            self._resend_upto = max(self._resend_upto, seen)
            return  # already asked for everything from the gap on (EndSeqNo 0)
        self._resend_upto = seen
        self.gaps_detected += 1
        self._send_admin(FixMsgType.RESEND_REQUEST, [(Tag.BeginSeqNo, expected), (Tag.EndSeqNo, 0)])

    def _on_resend_request(self, m: Message) -> None:
        begin, end = m.integer(Tag.BeginSeqNo), m.integer(Tag.EndSeqNo)
        if begin is None or end is None or begin < 1:
            self.reject(
                m,
                SessionRejectReason.VALUE_INCORRECT,
                Tag.BeginSeqNo,
                "BeginSeqNo/EndSeqNo must be integers, BeginSeqNo >= 1",
            )
            return
        last = self.store.next_sender_seq - 1
        if end == 0 or end > last:
            end = last
        if begin > end:
            return  # nothing sent in that range yet
        now = utc_timestamp(self._now_ns())
        position = begin
        for seq, raw in self.store.sent_messages(begin, end):
            if seq > position:
                self._gap_fill(position, seq, now)
            self.write(self._as_possible_duplicate(raw, now))
            position = seq + 1
        if position <= end:
            self._gap_fill(position, end + 1, now)

    def _gap_fill(self, seq: int, new_seq: int, now: bytes) -> None:
        header = [
            (Tag.SenderCompID, self.comp_id),
            (Tag.TargetCompID, self.counterparty),
            (Tag.MsgSeqNum, seq),
            (Tag.PossDupFlag, "Y"),
            (Tag.SendingTime, now),
            (Tag.OrigSendingTime, now),
        ]
        self.write(encode(FixMsgType.SEQUENCE_RESET, header, [(Tag.GapFillFlag, "Y"), (Tag.NewSeqNo, new_seq)]))

    def _as_possible_duplicate(self, raw: bytes, now: bytes) -> bytes:
        """A stored message as a resend: PossDupFlag=Y, OrigSendingTime = its SendingTime."""
        original = parse_frame(raw)
        header: list[tuple[int, object]] = []
        body: list[tuple[int, object]] = []
        orig_time = b""
        for tag, value in original.pairs[3:-1]:  # after 8, 9, 35; before 10
            if tag == Tag.SendingTime:
                orig_time = value
            elif tag in (Tag.SenderCompID, Tag.TargetCompID, Tag.MsgSeqNum):
                header.append((tag, value))
            else:
                body.append((tag, value))
        header += [(Tag.PossDupFlag, "Y"), (Tag.SendingTime, now), (Tag.OrigSendingTime, orig_time)]
        return encode(original.msg_type, header, body)

    def _on_gap_fill(self, m: Message) -> None:
        new = m.integer(Tag.NewSeqNo)
        seq = m.seq
        if new is None or new <= seq:
            self.store.next_target_seq = seq + 1
            self.reject(m, SessionRejectReason.VALUE_INCORRECT, Tag.NewSeqNo, f"NewSeqNo must be above {seq}")
            return
        self.store.next_target_seq = new
        if self._resend_upto is not None and new > self._resend_upto:
            self._resend_upto = None

    def _on_sequence_reset(self, m: Message, events: list) -> None:
        new = m.integer(Tag.NewSeqNo)
        expected = self.store.next_target_seq
        if new is None:
            self.reject(m, SessionRejectReason.REQUIRED_TAG_MISSING, Tag.NewSeqNo, "NewSeqNo missing")
        elif new < expected:
            self.reject(
                m, SessionRejectReason.VALUE_INCORRECT, Tag.NewSeqNo, f"NewSeqNo {new} is below the expected {expected}"
            )
        else:
            self.store.next_target_seq = new
            if self._resend_upto is not None and new > self._resend_upto:
                self._resend_upto = None

    def _on_logout(self, m: Message, events: list) -> None:
        if m.seq == self.store.next_target_seq:
            self.store.next_target_seq = m.seq + 1
        text = m.text(Tag.Text) or ""
        if self.state is SessionState.LOGGING_OUT:
            self.state = SessionState.CLOSED
            events.append(Closed(f"logged out{': ' + text if text else ''}", error=False))
            return
        self._send_admin(FixMsgType.LOGOUT, [])
        self.state = SessionState.CLOSED
        events.append(Closed(f"the counterparty logged out{': ' + text if text else ''}", error=False))

    # -- timers -----------------------------------------------------------------------------

    def poll_timers(self) -> list:
        """Heartbeats, TestRequests and timeouts due now; returns the events."""
        events: list = []
        now = self.clock.monotonic()
        state = self.state
        if state is SessionState.AWAITING_LOGON or state is SessionState.LOGON_RECEIVED:
            if (
                self.role == ACCEPTOR
                and state is SessionState.AWAITING_LOGON
                and now - self._started > self.logon_timeout_s
            ):
                self._fatal(f"no Logon within {self.logon_timeout_s:g} s", events, logout=False)
            return events
        if state is SessionState.LOGGING_OUT:
            if now >= self._logout_deadline:
                self.state = SessionState.CLOSED
                events.append(Closed("no answer to our Logout", error=False))
            return events
        if state is not SessionState.ACTIVE or not self.heartbeat_s:
            return events
        hb = self.heartbeat_s
        if self._test_request is not None:
            if now - self._test_request[1] >= hb:
                self._fatal(f"no answer to TestRequest {self._test_request[0]} within {hb} s", events, logout=True)
                return events
        elif now - self._last_received >= hb * TEST_REQUEST_MARGIN:
            self._test_requests += 1
            test_id = f"TEST-{self._test_requests}"
            self._test_request = (test_id, now)
            self._send_admin(FixMsgType.TEST_REQUEST, [(Tag.TestReqID, test_id)])
        if now - self._last_sent >= hb:
            self._send_admin(FixMsgType.HEARTBEAT, [])
        return events

    def next_deadline(self) -> float:
        """The monotonic time by which ``poll_timers`` should next be called."""
        now = self.clock.monotonic()
        if self.state is SessionState.AWAITING_LOGON:
            return self._started + self.logon_timeout_s
        if self.state is SessionState.LOGGING_OUT:
            return self._logout_deadline
        if self.state is not SessionState.ACTIVE or not self.heartbeat_s:
            return now + 1.0
        hb = self.heartbeat_s
        due = [self._last_sent + hb]
        if self._test_request is not None:
            due.append(self._test_request[1] + hb)
        else:
            due.append(self._last_received + hb * TEST_REQUEST_MARGIN)
        return min(due)
