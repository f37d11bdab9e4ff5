"""One order entry session, sans-IO: frames in, ring commands and reply bytes out.

The gateway owns the sockets and the rings; a ``Session`` owns everything else about
one client connection, so all of it is tested with a fake clock and no network:

- login state: the first login is checked with ``verify(account, token)``; a wrong
  one is answered ``J`` BAD_CREDENTIALS and the session closes; a second login is
  ``X`` ALREADY_LOGGED_IN; requests before a login are ``X`` NOT_LOGGED_IN.
- limits: a token bucket on requests (``X`` THROTTLED beyond the rate), a cap on
  requests waiting for their ``K`` (in flight, also THROTTLED), a budget of frames
  with unknown message types after which the session is closed with ``E``.
- the ordered reply queue: every request gets exactly one reply, in request order.
  An ``X`` is decided at once but waits behind any earlier ``K`` that is waiting for
  the journal. A ``K`` becomes sendable when the durable count of its symbol (how
  many of that symbol's commands the journaler has committed) passes its sequence.
- timers: heartbeats when nothing was sent for a while, and a close with ``E``
  IDLE_TIMEOUT when the client sent nothing (heartbeats count) for too long.

Each ``recv`` is processed as one batch of frames with array operations: validate,
throttle, stamp (session id, account, receive time, new order ids) and hand the
valid commands to ``publish`` one symbol at a time, so the gateway copies them into
that symbol's in-ring in one slice.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ringex.protocol import (
    COMMAND,
    NEED_DATA,
    REPLY,
    FrameDecoder,
    MsgType,
    Reason,
    ReplyType,
    SymbolTable,
    build_replies,
    encode_reply,
    validate,
)

__all__ = ["Limits", "Clock", "SystemClock", "TokenBucket", "OrderIdCounter", "SessionState", "Session", "Publish"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-gateway and per-session limits. The defaults are picked for this 2-core
    machine and a handful of clients, not derived: a session may sustain 20,000
    requests/s with bursts of 2,000, and keep 4,096 waiting for the journal (a few ms
    of a stalled fsync at that rate)."""

    max_sessions: int = 1000
    max_in_flight: int = 4096
    rate_per_s: float = 20_000.0
    burst: int = 2000
    heartbeat_interval_s: float = 1.0
    # three missed heartbeats (a client should heartbeat at our interval or faster)
    idle_timeout_s: float = 5.0
    login_timeout_s: float = 5.0
    # a few stray frames are tolerated (answered X UNKNOWN_MESSAGE); a stream that
    # keeps sending them has lost its framing or is hostile
    max_garbage: int = 16
    # replies a slow reader may leave unread before it is cut off (16k replies)
    max_output_bytes: int = 1 << 20


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


class SystemClock:
    """Monotonic seconds for limits and timers; wall-clock ns for the receive stamp."""

    monotonic = staticmethod(time.monotonic)
    time_ns = staticmethod(time.time_ns)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, n: int, now: float) -> int:
        """Take up to ``n`` whole tokens; returns how many were granted."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        granted = min(n, int(self._tokens))
        self._tokens -= granted
        return granted


class OrderIdCounter:
    """The gateway's exchange order ids, shared by its sessions.

    The default start is the wall clock in microseconds: a restarted gateway then
    issues ids above the previous run's unless that run averaged more than one new
    order per microsecond. The supervisor may pass the exact next id from the journal.
    """

    __slots__ = ("next_id",)

    def __init__(self, first: int | None = None) -> None:
        self.next_id = time.time_ns() // 1000 if first is None else first

    def take(self, n: int) -> int:
        first = self.next_id
        self.next_id += n
        return first


class SessionState(enum.Enum):
    AWAITING_LOGIN = "awaiting_login"
    LOGGED_IN = "logged_in"
    CLOSING = "closing"  # a J or E is queued; close once the queue is sent
    CLOSED = "closed"


Publish = Callable[[int, np.ndarray], "int | None"]
"""``publish(symbol_index, commands) -> seq of the first command``, or None if the
symbol's in-ring has no room for all of them. Commands of one call get consecutive
sequences."""

_NO_SYMBOL = -1
_EMPTY_REPLIES = np.zeros(0, dtype=REPLY)


class Session:
    """The state of one client connection. See the module docstring.

    Use: ``receive_data(data, ready, publish)`` for each ``recv`` (``b""`` at EOF),
    then ``data_to_send(durable)`` for the bytes to write, where ``durable[i]`` is how
    many commands of symbol ``i`` (in ``table`` order) are durable; call
    ``poll_timers()`` now and then. ``state`` says when to close.
    """

    def __init__(
        self,
        session_id: int,
        table: SymbolTable,
        verify: Callable[[int, int], bool],
        order_ids: OrderIdCounter,
        limits: Limits = Limits(),
        clock: Clock | None = None,
    ) -> None:
        self.session_id = session_id
        self.table = table
        self.verify = verify
        self.order_ids = order_ids
        self.limits = limits
        self.clock = clock = clock or SystemClock()
        self.state = SessionState.AWAITING_LOGIN
        self.account = 0
        self.close_reason = Reason.OK
        self._decoder = FrameDecoder(COMMAND)
        now = clock.monotonic()
        self._bucket = TokenBucket(limits.rate_per_s, limits.burst, now)
        self._created = now
        self._last_received = now
        self._last_sent = now
        self._garbage = 0
        self._garbage_exceeded = False
        # reply queue: [replies, symbol index per row (-1 = ready now), seq per row, next row]
        self._queue: collections.deque[list] = collections.deque()
        self._urgent = bytearray()  # heartbeats: not replies, so they need not wait in order
        self.pending_acks = 0
        self.requests = 0

    # -- input -------------------------------------------------------------------

    def receive_data(self, data: bytes, ready: bool, publish: Publish) -> None:
        """Process what a ``recv`` returned: every whole frame in it, at once."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        if not data:
            self.state = SessionState.CLOSED
            return
        self._last_received = self.clock.monotonic()
        self._decoder.receive_data(data)
        frames = self._decoder.next_frames()
        if frames is NEED_DATA:
            return
        ts_ns = self.clock.time_ns()
        frames = self._cut_at_garbage_limit(frames)
        if self.state is SessionState.AWAITING_LOGIN:
            logins = np.flatnonzero(frames["msg_type"] == MsgType.LOGIN)
            if len(logins) == 0:
                self._batch(frames, ts_ns, ready, publish)
            else:
                first = int(logins[0])
                self._batch(frames[:first], ts_ns, ready, publish)
                self._login(frames[first], ts_ns)
                if self.state is SessionState.LOGGED_IN:
                    self._batch(frames[first + 1 :], ts_ns, ready, publish)
        else:
            self._batch(frames, ts_ns, ready, publish)
        if self._garbage_exceeded and self.state not in (SessionState.CLOSING, SessionState.CLOSED):
            self._close_with_error(Reason.UNKNOWN_MESSAGE, ts_ns)

    def _cut_at_garbage_limit(self, frames: np.ndarray) -> np.ndarray:
        known = np.isin(frames["msg_type"], _KNOWN_TYPES)
        if known.all():
            return frames
        seen = self._garbage + np.cumsum(~known)
        over = np.flatnonzero(seen > self.limits.max_garbage)
        if len(over) == 0:
            self._garbage = int(seen[-1])
            return frames
        # answer up to the limit, then close: the rest of this stream is noise
        self._garbage = self.limits.max_garbage
        self._garbage_exceeded = True
        return frames[: int(over[0])]

    def _login(self, frame, ts_ns: int) -> None:
        account, token = int(frame["account"]), int(frame["ts_ns"])  # ts_ns is the token field
        cid = int(frame["client_order_id"])
        if self.verify(account, token):
            self.state = SessionState.LOGGED_IN
            self.account = account
            reply = encode_reply(ReplyType.LOGIN_ACCEPTED, session=self.session_id, client_order_id=cid, ts_ns=ts_ns)
        else:
            self.state = SessionState.CLOSING
            self.close_reason = Reason.BAD_CREDENTIALS
            reply = encode_reply(
                ReplyType.LOGIN_REJECTED, reason=Reason.BAD_CREDENTIALS, client_order_id=cid, ts_ns=ts_ns
            )
        self._enqueue_ready(np.frombuffer(reply, dtype=REPLY).copy())

    def _batch(self, frames: np.ndarray, ts_ns: int, ready: bool, publish: Publish) -> None:
        if len(frames) == 0:
            return
        mt = frames["msg_type"]
        logged_in = self.state is SessionState.LOGGED_IN
        symbol_index = self.table.index_of(frames["symbol"])
        reasons = validate(frames, self.table, logged_in, symbol_index)
        request = (mt == MsgType.NEW) | (mt == MsgType.CANCEL) | (mt == MsgType.REPLACE)
        replied = mt != MsgType.HEARTBEAT
        if logged_in:
            reasons[mt == MsgType.LOGIN] = Reason.ALREADY_LOGGED_IN
            n_requests = int(request.sum())
            self.requests += n_requests
            if n_requests:
                granted = self._bucket.take(n_requests, self.clock.monotonic())
                over_rate = request & (np.cumsum(request) > granted)
                reasons[over_rate] = Reason.THROTTLED
                if not ready:
                    reasons[request & ~over_rate] = Reason.NOT_READY
                valid = request & (reasons == 0)
                room = self.limits.max_in_flight - self.pending_acks
                over_flight = valid & (np.cumsum(valid) > room)
                reasons[over_flight] = Reason.THROTTLED
        valid = request & (reasons == 0)

        # stamp what the client may not choose, on the frames themselves (our copy)
        n_valid = int(valid.sum())
        if n_valid:
            frames["session"][valid] = self.session_id
            frames["account"][valid] = self.account
            frames["ts_ns"][valid] = ts_ns
            new = valid & (mt == MsgType.NEW)
            n_new = int(new.sum())
            if n_new:
                first_id = self.order_ids.take(n_new)
                frames["order_id"][new] = np.arange(first_id, first_id + n_new, dtype=np.uint64)
        rows = np.flatnonzero(replied)
        replies = build_replies(frames[rows], reasons[rows], ts_ns)
        row_symbol = np.full(len(rows), _NO_SYMBOL, dtype=np.int64)
        row_seq = np.zeros(len(rows), dtype=np.int64)
        if n_valid:
            # position of each valid frame among the replied rows
            valid_rows = np.flatnonzero(valid[rows])
            valid_symbols = symbol_index[rows[valid_rows]]
            for sym in np.unique(valid_symbols):
                these = valid_rows[valid_symbols == sym]
                first_seq = publish(int(sym), frames[rows[these]])
                if first_seq is None:
                    replies["msg_type"][these] = ReplyType.REJECT
                    replies["reason"][these] = Reason.THROTTLED
                    continue
                seqs = first_seq + np.arange(len(these), dtype=np.int64)
                row_symbol[these] = sym
                row_seq[these] = seqs
                replies["seq"][these] = seqs
                self.pending_acks += len(these)
        if len(rows):
            self._queue.append([replies, row_symbol, row_seq, 0])

    # -- output ------------------------------------------------------------------

    def _enqueue_ready(self, replies: np.ndarray) -> None:
        self._queue.append(
            [replies, np.full(len(replies), _NO_SYMBOL, dtype=np.int64), np.zeros(len(replies), np.int64), 0]
        )

    def _close_with_error(self, reason: Reason, ts_ns: int) -> None:
        self.state = SessionState.CLOSING
        self.close_reason = reason
        self._enqueue_ready(
            np.frombuffer(encode_reply(ReplyType.ERROR, reason=reason, ts_ns=ts_ns), dtype=REPLY).copy()
        )

    def data_to_send(self, durable: np.ndarray) -> bytes:
        """Every reply that may go out now, in request order, plus any heartbeat.

        ``durable[i]``: commands of symbol ``i`` committed by the journaler, i.e. every
        sequence below it is durable. Marks the session CLOSED once a closing session
        has nothing left to send.
        """
        out = self._urgent
        self._urgent = bytearray()
        queue = self._queue
        while queue:
            entry = queue[0]
            replies, symbols, seqs, pos = entry
            sym = symbols[pos:]
            ok = (sym == _NO_SYMBOL) | (seqs[pos:] < durable[np.maximum(sym, 0)])
            stop = len(sym) if ok.all() else int(np.argmin(ok))
            if stop:
                out += replies[pos : pos + stop].tobytes()
                self.pending_acks -= int(np.count_nonzero(sym[:stop] != _NO_SYMBOL))
            if pos + stop < len(replies):
                entry[3] = pos + stop
                break
            queue.popleft()
        if out:
            self._last_sent = self.clock.monotonic()
        if self.state is SessionState.CLOSING and not queue:
            self.state = SessionState.CLOSED
        return bytes(out)

    @property
    def waiting_for_journal(self) -> bool:
        """True while a ``K`` waits for a durable cursor (the gateway then watches them)."""
        return self.pending_acks > 0

    def pending_replies(self) -> int:
        return sum(len(e[0]) - e[3] for e in self._queue)

    # -- timers ------------------------------------------------------------------

    def poll_timers(self) -> None:
        """Queue a heartbeat when idle; close a silent or never-logged-in session."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        now = self.clock.monotonic()
        limits = self.limits
        if now - self._last_received > limits.idle_timeout_s or (
            self.state is SessionState.AWAITING_LOGIN and now - self._created > limits.login_timeout_s
        ):
            self._close_with_error(Reason.IDLE_TIMEOUT, self.clock.time_ns())
        elif now - self._last_sent >= limits.heartbeat_interval_s and not self._urgent:
            self._urgent += encode_reply(ReplyType.HEARTBEAT, ts_ns=self.clock.time_ns())


_KNOWN_TYPES = np.array(list(MsgType), dtype=np.uint8)
