"""One order entry session, sans-IO: frames in, ring commands and reply bytes out.

The gateway owns the sockets and the rings; a ``Session`` owns everything else about
one client connection, so all of it is tested with a fake clock and no network:

- login state: the first login is checked with ``verify(account, token)``; a wrong
  one is answered ``J`` BAD_CREDENTIALS and the session closes; a second login is
  ``X`` ALREADY_LOGGED_IN; requests before a login are ``X`` NOT_LOGGED_IN. A
  ``verify`` that returns None defers the answer (the gateway runs the slow scrypt
  check off its loop) until ``finish_login(ok, ...)``; input meanwhile waits. A
  ``verify`` that returns a ``Reason`` refuses the login unchecked with that reason
  (``J`` THROTTLED: too many failed logins, ``ringex.limits.FailedLoginLimit``).
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
import enum
import time
from collections.abc import Callable
from typing import Protocol

import numba
import numpy as np

from ringex.codes import MsgType, Reason, ReplyType, Side
from ringex.config import OrderEntryLimits
from ringex.order_entry.protocol import (
    COMMAND,
    FRAME_SIZE,
    NEED_DATA,
    FrameDecoder,
    SymbolTable,
    encode_reply,
    frame_reason,
    frame_words,
)

__all__ = ["Clock", "SystemClock", "TokenBucket", "OrderIdCounter", "SessionState", "Session", "Publish"]


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

    def available(self, now: float) -> int:
        """Whole tokens available at ``now`` (refills first)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return int(self._tokens)

    def consume(self, n: int) -> None:
        self._tokens -= n

    def take(self, n: int, now: float) -> int:
        """Take up to ``n`` whole tokens; returns how many were granted."""
        granted = min(n, self.available(now))
        self.consume(granted)
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
    VERIFYING = "verifying"  # a login is being checked off the loop; input waits
    LOGGED_IN = "logged_in"
    CLOSING = "closing"  # a J or E is queued; close once the queue is sent
    CLOSED = "closed"


Publish = Callable[[int, np.ndarray], "int | None"]
"""``publish(symbol_index, commands) -> seq of the first command``, or None if the
symbol's in-ring has no room for all of them. Commands of one call get consecutive
sequences."""

##########################################################################################
# The batch kernel
##########################################################################################

# _session_batch params (i64), by position
P_LOGGED_IN, P_TOKENS, P_ROOM, P_READY, P_GARBAGE_LEFT, P_SESSION, P_ACCOUNT, P_TS, P_NEXT_ID, P_OPERATOR = range(10)
# _session_batch results (i64), by position
R_END, R_STOP, R_REPLIES, R_VALID, R_TOKENS_USED, R_IDS_USED, R_GARBAGE = range(7)
STOP_END, STOP_LOGIN, STOP_GARBAGE = 0, 1, 2

_ACK, _REJECT = int(ReplyType.ACK), int(ReplyType.REJECT)
_L, _N, _C, _R, _H = (int(m) for m in (MsgType.LOGIN, MsgType.NEW, MsgType.CANCEL, MsgType.REPLACE, MsgType.HEARTBEAT))
_M, _Y, _NOT_PERMITTED = int(MsgType.MASS_CANCEL), int(MsgType.RISK), int(Reason.NOT_PERMITTED)
_THROTTLED, _NOT_READY, _ALREADY_LOGGED_IN, _UNKNOWN_MESSAGE = (
    int(Reason.THROTTLED),
    int(Reason.NOT_READY),
    int(Reason.ALREADY_LOGGED_IN),
    int(Reason.UNKNOWN_MESSAGE),
)


@numba.njit(cache=True)
def _session_batch(
    wu, wi, start, keys, key_index, bounds, params, replies, reply_symbol, valid_rows, valid_frames, results
):
    """Check, throttle and stamp frames ``start..`` of one ``recv`` and write their replies.

    ``wu``/``wi``: the frames as u64/i64[n, 8] views (stamped in place: session in the
    high half of word 0, new order id in word 3, account in 6, receive time in 7).
    ``params``: i64[10], see ``P_*``. Outputs: ``replies`` u64[n, 8] (REPLY frames, seq
    left 0), ``reply_symbol`` i64[n] (symbol index of a valid request, -1 for a reply
    that is ready now), ``valid_rows`` and ``valid_frames`` i64[n] (reply row and
    frame row of each valid request),
    ``results`` i64[7], see ``R_*``. Stops before a login while logged out
    (``STOP_LOGIN``: the caller verifies it) and before the unknown frame that
    exceeds the garbage budget (``STOP_GARBAGE``). Heartbeats get no reply.
    """
    logged_in = params[P_LOGGED_IN] != 0
    tokens = params[P_TOKENS]
    room = params[P_ROOM]
    ready = params[P_READY] != 0
    garbage_left = params[P_GARBAGE_LEFT]
    stamp = np.uint64(params[P_SESSION]) << np.uint64(32)
    account = np.uint64(params[P_ACCOUNT])
    ts = np.uint64(params[P_TS])
    next_id = np.uint64(params[P_NEXT_ID])
    k = 0
    nv = 0
    used = 0
    ids = 0
    garbage = 0
    stop = STOP_END
    r = start
    n = wu.shape[0]
    while r < n:
        w0 = wu[r, 0]
        mt = w0 & 0xFF
        if mt == _H:
            r += 1
            continue
        if mt == _L and not logged_in:
            stop = STOP_LOGIN
            break
        reason, sym = frame_reason(wu, wi, r, logged_in, keys, key_index, bounds)
        if reason == _UNKNOWN_MESSAGE:
            if garbage >= garbage_left:
                stop = STOP_GARBAGE
                break
            garbage += 1
        request = mt == _N or mt == _C or mt == _R or mt == _M or mt == _Y
        if mt == _Y and reason == 0 and params[P_OPERATOR] == 0:
            reason = _NOT_PERMITTED
        if mt == _L:
            reason = _ALREADY_LOGGED_IN
        elif request and logged_in:
            # every request costs a token, valid or not: the rate limit protects the gateway
            if used >= tokens:
                reason = _THROTTLED
            else:
                used += 1
                if not ready:
                    reason = _NOT_READY
                elif reason == 0 and nv >= room:
                    reason = _THROTTLED
        valid = request and reason == 0
        if valid:
            wu[r, 0] = (w0 & np.uint64(0xFFFFFFFF)) | stamp
            if mt == _N:
                wu[r, 3] = next_id + np.uint64(ids)
                ids += 1
            wu[r, 6] = account
            wu[r, 7] = ts
            valid_rows[nv] = k
            valid_frames[nv] = r
            nv += 1
            reply_symbol[k] = sym
        else:
            reply_symbol[k] = -1
        kind = _ACK if valid else _REJECT
        replies[k, 0] = np.uint64(kind) | (w0 & np.uint64(0xFF00)) | (np.uint64(reason) << np.uint64(16))
        replies[k, 1] = wu[r, 1]
        replies[k, 2] = wu[r, 2]
        replies[k, 3] = wu[r, 3]
        replies[k, 4] = wu[r, 4]
        replies[k, 5] = wu[r, 5]
        replies[k, 6] = 0
        replies[k, 7] = ts
        k += 1
        r += 1
    results[R_END] = r
    results[R_STOP] = stop
    results[R_REPLIES] = k
    results[R_VALID] = nv
    results[R_TOKENS_USED] = used
    results[R_IDS_USED] = ids
    results[R_GARBAGE] = garbage


@numba.njit(cache=True)
def _sendable(reply_symbol, seqs, pos, durable):
    """(first row from ``pos`` that must still wait, number of K rows before it): a K
    waits until ``seqs[i] < durable[reply_symbol[i]]``."""
    acks = 0
    for i in range(pos, len(reply_symbol)):
        sym = reply_symbol[i]
        if sym >= 0:
            if seqs[i] >= durable[sym]:
                return i, acks
            acks += 1
    return len(reply_symbol), acks


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels before serving."""
    from ringex.config import SymbolSpec
    from ringex.order_entry.protocol import encode_login, encode_new_order

    s = Session(1, SymbolTable([SymbolSpec("WARM")]), lambda a, t: True, OrderIdCounter(1))
    s.receive_data(encode_login(1, 1) + encode_new_order("WARM", Side.BUY, 1, 1), True, lambda sym, c: 0)
    s.data_to_send(np.ones(1, dtype=np.int64))


def _reply_rows(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype=np.uint64).reshape(1, 8).copy()


_READY_NOW = np.full(1, -1, dtype=np.int64)
# Bytes a client may send while its login is being verified (~1,000 frames).
MAX_HELD_BYTES = 64 * 1024


class Session:
    """The state of one client connection. See the module docstring.

    Use: ``receive_data(data, ready, publish)`` for each ``recv`` (``b""`` at EOF),
    then ``data_to_send(durable)`` for the bytes to write, where ``durable[i]`` is how
    many commands of symbol ``i`` (in ``table`` order) are durable; call
    ``poll_timers()`` now and then. ``state`` says when to close. If ``verify``
    returned None, call ``finish_login(ok, ready, publish)`` with its answer.
    """

    def __init__(
        self,
        session_id: int,
        table: SymbolTable,
        verify: Callable[[int, int], bool | None],
        order_ids: OrderIdCounter,
        limits: OrderEntryLimits | None = None,
        clock: Clock | None = None,
        is_operator: Callable[[int], bool] | None = None,
    ) -> None:
        self.session_id = session_id
        # whether an account may send ``Y`` (risk limits); asked once, at its login
        self.is_operator = is_operator
        self.table = table
        self.verify = verify
        self.order_ids = order_ids
        self.limits = limits = limits or OrderEntryLimits()
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
        # reply queue entries: [REPLY rows as u64[n, 8], symbol index per row (-1: ready
        # now, else a K waiting for its seq, word 6, to be durable), next row to send]
        self._queue: collections.deque[list] = collections.deque()
        self._params = np.zeros(10, dtype=np.int64)
        self._params[P_SESSION] = session_id
        self._results = np.zeros(7, dtype=np.int64)
        self._held: tuple[np.ndarray, int, int] | None = None
        self._urgent = bytearray()  # heartbeats: not replies, so they need not wait in order
        self.pending_acks = 0
        # replies decided but not handed out by ``data_to_send`` yet (K's waiting for
        # the journal and everything queued behind them): the gateway bounds them
        self.queued_replies = 0
        self.requests = 0

    # -- input -------------------------------------------------------------------

    def receive_data(self, data: bytes, ready: bool, publish: Publish) -> None:
        """Process what a ``recv`` returned: every whole frame in it, at once."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        if not data:
            self.state = SessionState.CLOSED
            return
        self._decoder.receive_data(data)
        if self._decoder.buffered >= FRAME_SIZE:
            # only whole frames count as hearing from the client: a trickle of bytes that
            # never completes a frame cannot keep a session open past its idle timeout
            self._last_received = self.clock.monotonic()
        if self.state is SessionState.VERIFYING:
            # frames wait in the decoder until the login is decided; bounded, so a
            # client cannot make us hold its flood while the check runs
            if self._decoder.buffered > MAX_HELD_BYTES:
                self._close_with_error(Reason.THROTTLED, self.clock.time_ns())
            return
        frames = self._decoder.next_frames()
        if frames is not NEED_DATA:
            self._process(frames, 0, self.clock.time_ns(), ready, publish)

    def finish_login(self, ok: bool | Reason, ready: bool, publish: Publish) -> None:
        """The answer to a login ``verify`` deferred (returned None): queue the ``A``
        or ``J``, then process whatever arrived meanwhile."""
        if self.state is not SessionState.VERIFYING:
            return  # closed meanwhile (EOF, timeout): nothing to answer
        frames, index, ts_ns = self._held
        self._held = None
        self._last_received = self.clock.monotonic()  # its silence so far was our delay
        self._answer_login(frames[index], ok, ts_ns)
        if self.state is not SessionState.LOGGED_IN:
            return
        if index + 1 < len(frames):
            self._process(frames, index + 1, ts_ns, ready, publish)
        if self.state is SessionState.LOGGED_IN:
            more = self._decoder.next_frames()
            if more is not NEED_DATA:
                self._process(more, 0, self.clock.time_ns(), ready, publish)

    def _process(self, frames: np.ndarray, start: int, ts_ns: int, ready: bool, publish: Publish) -> None:
        now = self.clock.monotonic()
        wu, wi = frame_words(frames)
        n = len(frames)
        params = self._params
        results = self._results
        table = self.table
        while start < n:
            logged_in = self.state is SessionState.LOGGED_IN
            params[P_LOGGED_IN] = logged_in
            params[P_TOKENS] = self._bucket.available(now) if logged_in else 0
            params[P_ROOM] = self.limits.max_in_flight - self.pending_acks
            params[P_READY] = ready
            params[P_GARBAGE_LEFT] = self.limits.max_garbage - self._garbage
            params[P_TS] = ts_ns
            params[P_NEXT_ID] = self.order_ids.next_id
            rows = n - start
            replies = np.empty((rows, 8), dtype=np.uint64)
            reply_symbol = np.empty(rows, dtype=np.int64)
            valid_rows = np.empty(rows, dtype=np.int64)
            valid_frames = np.empty(rows, dtype=np.int64)
            _session_batch(
                wu,
                wi,
                start,
                table.keys,
                table.key_index,
                table.bounds,
                params,
                replies,
                reply_symbol,
                valid_rows,
                valid_frames,
                results,
            )
            end, stop, k, nv, used, ids, garbage = results.tolist()
            self._bucket.consume(used)
            self.order_ids.take(ids)
            self._garbage += garbage
            self.requests += used
            if k:
                self._publish(frames, replies[:k], reply_symbol[:k], valid_rows[:nv], valid_frames[:nv], publish)
            if stop == STOP_LOGIN:
                frame = frames[end]
                verdict = self.verify(int(frame["account"]), int(frame["ts_ns"]))  # ts_ns is the token field
                if verdict is None:
                    self.state = SessionState.VERIFYING
                    self._held = (frames, end, ts_ns)
                    return
                self._answer_login(frame, verdict, ts_ns)
                if self.state is not SessionState.LOGGED_IN:
                    return
                start = end + 1
            elif stop == STOP_GARBAGE:
                # answered up to the budget; the rest of this stream is noise
                self._close_with_error(Reason.UNKNOWN_MESSAGE, ts_ns)
                return
            else:
                return

    def _publish(
        self,
        frames: np.ndarray,
        replies: np.ndarray,
        reply_symbol: np.ndarray,
        valid_rows: np.ndarray,
        frame_rows: np.ndarray,
        publish: Publish,
    ) -> None:
        nv = len(valid_rows)
        if nv:
            symbols = reply_symbol[valid_rows]
            first_symbol = symbols[0]
            if nv == 1 or (symbols == first_symbol).all():
                groups = [(int(first_symbol), valid_rows, frame_rows)]
            else:
                groups = [
                    (int(sym), valid_rows[symbols == sym], frame_rows[symbols == sym]) for sym in np.unique(symbols)
                ]
            seq_column = replies[:, 6]
            for sym, rows, frows in groups:
                if frows[-1] - frows[0] + 1 == len(frows):
                    commands = frames[frows[0] : frows[-1] + 1]  # contiguous: a view, no copy
                else:
                    commands = frames[frows]
                first_seq = publish(sym, commands)
                if first_seq is None:
                    # the ring is full: the gateway must not wait, so these are throttled
                    replies[rows, 0] = (replies[rows, 0] & np.uint64(0xFF00)) | np.uint64(_REJECT | _THROTTLED << 16)
                    reply_symbol[rows] = -1
                    continue
                seq_column[rows] = np.arange(first_seq, first_seq + len(rows), dtype=np.uint64)
                self.pending_acks += len(rows)
        self._queue.append([replies, reply_symbol, 0])
        self.queued_replies += len(replies)

    def _answer_login(self, frame, verdict: bool | Reason, ts_ns: int) -> None:
        """Queue the ``A``, or the ``J`` (BAD_CREDENTIALS, or the ``Reason`` given) and close."""
        cid = int(frame["client_order_id"])
        refusal = verdict if isinstance(verdict, Reason) else None
        if refusal is None and verdict:
            self.state = SessionState.LOGGED_IN
            self.account = int(frame["account"])
            self._params[P_ACCOUNT] = self.account
            self._params[P_OPERATOR] = self.is_operator is not None and self.is_operator(self.account)
            reply = encode_reply(ReplyType.LOGIN_ACCEPTED, session=self.session_id, client_order_id=cid, ts_ns=ts_ns)
        else:
            self.state = SessionState.CLOSING
            self.close_reason = refusal or Reason.BAD_CREDENTIALS
            reply = encode_reply(ReplyType.LOGIN_REJECTED, reason=self.close_reason, client_order_id=cid, ts_ns=ts_ns)
        self._queue.append([_reply_rows(reply), _READY_NOW, 0])
        self.queued_replies += 1

    # -- output ------------------------------------------------------------------

    def _close_with_error(self, reason: Reason, ts_ns: int) -> None:
        self.state = SessionState.CLOSING
        self.close_reason = reason
        self._queue.append([_reply_rows(encode_reply(ReplyType.ERROR, reason=reason, ts_ns=ts_ns)), _READY_NOW, 0])
        self.queued_replies += 1

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
            replies, reply_symbol, pos = entry
            stop, acks = _sendable(reply_symbol, replies[:, 6].view(np.int64), pos, durable)
            if stop > pos:
                out += replies[pos:stop].tobytes()
                self.pending_acks -= acks
                self.queued_replies -= stop - pos
            if stop < len(replies):
                entry[2] = stop
                break
            queue.popleft()
        if out:
            self._last_sent = self.clock.monotonic()
        if self.state is SessionState.CLOSING and not queue:
            self.state = SessionState.CLOSED
        return bytes(out)

    def refuse_pending(self) -> int:
        """Turn every ``K`` still waiting for the journal into ``X`` NOT_READY; returns how
        many. For a halted exchange: its journaler has stopped, so those commands will
        never be durable (recovery replays only the journal), and the protocol owes each
        request exactly one answer. Never for a journaler that is merely restarting: it
        journals what is in the rings, and the ``K`` follows."""
        refused = 0
        for replies, reply_symbol, pos in self._queue:
            rows = pos + np.flatnonzero(reply_symbol[pos:] >= 0)
            if not len(rows):
                continue
            replies[rows, 0] = (replies[rows, 0] & np.uint64(0xFF00)) | np.uint64(_REJECT | _NOT_READY << 16)
            replies[rows, 6] = 0  # an X carries no journal sequence
            reply_symbol[rows] = -1
            refused += len(rows)
        self.pending_acks -= refused
        return refused

    @property
    def waiting_for_journal(self) -> bool:
        """True while a ``K`` waits for a durable cursor (the gateway then watches them)."""
        return self.pending_acks > 0

    def pending_replies(self) -> int:
        return sum(len(e[0]) - e[2] for e in self._queue)

    # -- timers ------------------------------------------------------------------

    def poll_timers(self) -> None:
        """Queue a heartbeat when idle; close a silent or never-logged-in session."""
        if self.state in (SessionState.CLOSING, SessionState.CLOSED, SessionState.VERIFYING):
            return  # while we verify its login, the client waits for us, not we for it
        now = self.clock.monotonic()
        limits = self.limits
        if self._queue:
            # replies still owed (K's waiting for the journal): the client is waiting
            # for us, so its silence is not idleness; the clock restarts when they go
            self._last_received = now
        if now - self._last_received > limits.idle_timeout_s or (
            self.state is SessionState.AWAITING_LOGIN and now - self._created > limits.login_timeout_s
        ):
            self._close_with_error(Reason.IDLE_TIMEOUT, self.clock.time_ns())
        elif now - self._last_sent >= limits.heartbeat_interval_s and not self._urgent:
            self._urgent += encode_reply(ReplyType.HEARTBEAT, ts_ns=self.clock.time_ns())
