"""The fan-out: the same bytes, built once, to every subscriber of a stream.

```
 batch of events ──► FanOut.take ──► MarketData.apply ──► backlog of batches
                                                               │ one slice per turn
           slice 0: Subscriber.write(joined blobs) ◄───────────┤ (FanOut.serve_next)
           slice 1: Subscriber.write(joined blobs) ◄───────────┤
           ...           (sends shared with the fan-out threads) ┘
```

A batch of events becomes, per stream, one blob of bytes built once per transport;
each subscribed subscriber gets the same blob (one on several streams that moved gets
their blobs joined, one ``send``). On loopback here a ``send`` costs 15-35 µs of
kernel time (the receiver's TCP path and wake-up run in the sender's system call), so
a batch to N subscribers costs about N x 25 µs whatever its size: under load batches
grow and the per-message cost falls. With many subscribers the sends are shared with
``threads`` threads (``send`` releases the GIL).

The subscribers are swept in slices of ``slice_sessions``, and the notifier reads
its rings between two slices, so a new trade joins the sweep at once instead of
waiting for a whole round to end (see ``FanOut``).

This module never awaits: the notifier calls it from its ring pump and its request
handlers, between which it lets the subscribers' tasks run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import math
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import trio

from ringex.market_data.messages import MarketData, ws_text_frame
from ringex.market_data.subscriber import Subscriber
from ringex.trace import NullTracer, Stage

__all__ = ["FanOut", "FanOutStats", "Slice", "SLICE_SESSIONS", "DEFAULT_FAN_OUT_THREADS"]

# Below this many subscribers on a stream, handing sends to another thread costs more
# than it saves (a thread hand-off is ~50-100 µs; a send ~15-35 µs).
PARALLEL_FAN_OUT_MIN = 64
# Subscribers per fan-out slice: a slice's sends take a few ms (~25 µs each on
# loopback), short enough that reading the ring between two slices puts a new trade
# into the sweep within that time.
SLICE_SESSIONS = 256
# Threads that share the fan-out sends with the trio thread: one per spare core.
DEFAULT_FAN_OUT_THREADS = max(0, min(3, (os.cpu_count() or 1) - 1))
# Sockets a fan-out thread claims at a time. Threads claim chunks until none is left,
# rather than each taking a fixed share: on two shared cores a thread is often
# preempted, and a fixed share would leave the other waiting for its rest.
FAN_OUT_CHUNK = 32


def _tcp_blob(payloads: list[bytes]) -> bytes:
    return b"\n".join(payloads) + b"\n"


def _ws_blob(payloads: list[bytes]) -> bytes:
    return b"".join([ws_text_frame(p) for p in payloads])


def _send_each(socks: list[socket.socket], blob: bytes) -> list[tuple[int, int | OSError]]:
    """``send`` ``blob`` on each socket; returns ``(index, bytes sent or error)`` for
    those that did not take all of it. Runs in fan-out threads: touches only sockets."""
    short: list[tuple[int, int | OSError]] = []
    size = len(blob)
    for i, sock in enumerate(socks):
        try:
            sent = sock.send(blob)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            short.append((i, exc))
            continue
        if sent != size:
            short.append((i, sent))
    return short


def _send_claimed(
    socks: list[socket.socket], blob: bytes, claims: Iterator[int], short: list[tuple[int, int | OSError]]
) -> None:
    """``_send_each`` over chunks of ``socks`` claimed from ``claims`` until none is
    left; appends ``(index into socks, result)`` for each short send to ``short``."""
    n = len(socks)
    while (lo := next(claims) * FAN_OUT_CHUNK) < n:
        for i, result in _send_each(socks[lo : lo + FAN_OUT_CHUNK], blob):
            short.append((lo + i, result))


class _Batch:
    """One batch of events read from a ring, as the fan-out needs it: the messages per
    stream, their blobs (built once, on first use, for every slice), and how many
    events had been read once it was (for ``log``)."""

    __slots__ = ("id", "events", "outputs", "tcp", "ws", "traced")

    def __init__(self, batch_id: int, events: int, outputs: list[tuple[Any, list[bytes]]]) -> None:
        self.id = batch_id
        self.events = events
        self.outputs = outputs
        self.traced: tuple[int, list[int]] | None = None  # (symbol, sampled command seqs)
        self.tcp: list[bytes | None] = [None] * len(outputs)
        self.ws: list[bytes | None] = [None] * len(outputs)

    def blob(self, k: int, websocket: bool) -> bytes:
        blobs = self.ws if websocket else self.tcp
        blob = blobs[k]
        if blob is None:
            payloads = self.outputs[k][1]
            blob = blobs[k] = _ws_blob(payloads) if websocket else _tcp_blob(payloads)
        return blob


class Slice:
    """Up to ``slice_sessions`` subscribers that the fan-out serves together: their
    subscriptions by stream, and ``sent``, the id of the first batch not yet sent to
    them, and when it last had a turn."""

    __slots__ = ("subs", "members", "sent", "turn_at")

    def __init__(self, sent: int) -> None:
        self.subs: dict[Any, set[Subscriber]] = {}
        self.members = 0
        self.sent = sent
        self.turn_at = 0.0  # trio.current_time() of its last turn


@dataclasses.dataclass(frozen=True)
class FanOutStats:
    """What ``FanOut.statistics()`` reports."""

    events: int
    batches: int
    # ``send`` calls, and those the kernel did not take whole (the rest was queued for
    # the subscriber's writer task)
    sends: int
    short_sends: int


class FanOut:
    """The batches applied to the depth views and not yet sent to every slice, the
    slices of subscribers, and the threads that share the sends.

    The fan-out sweeps the subscribers slice by slice, and the ring is read between
    two slices. Sending one batch to all 10,000 subscribers before reading the next
    takes a few hundred ms on loopback; a trade that arrived just after such a round
    started waited for it to end, then for a whole round of its own: up to two rounds.
    Swept slice by slice, every slice's next turn sends it all that it has not had
    yet, so a new trade reaches the last subscriber within one sweep. Each subscriber
    still gets one ``send`` per turn (the same sends per second as whole rounds) and
    every batch in order: a slice's turn sends the batches it missed oldest first. A
    subscriber's request (subscribe, unsubscribe, ping) first brings its slice up to
    date (``catch_up``), so an ack or a snapshot comes after every message it already
    covers.

    Use: ``take`` each batch read from a ring, ``serve_next`` while ``pending``;
    ``join``/``leave`` a subscriber when it connects and ends, ``subscribe``/
    ``unsubscribe`` its streams, ``forget`` all of them; ``close`` stops the threads.

    Resource handling: the thread pool lives until ``close``. Error handling: a
    socket error ends the one subscriber it happens on (``Subscriber.close``); the
    fan-out then forgets its streams.
    """

    def __init__(
        self,
        md: MarketData,
        *,
        threads: int = DEFAULT_FAN_OUT_THREADS,
        slice_sessions: int = SLICE_SESSIONS,
        coalesce_s: float = 0.0,
        tracer=None,
    ) -> None:
        self.md = md
        self._threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "fan-out") if threads else None
        self.slice_sessions = slice_sessions
        # A slice's turns are at least this far apart (seconds): what arrives meanwhile
        # goes out in its next turn, in one send per subscriber. It trades that much
        # latency for fewer sends (every send costs both ends ~10-25 µs whatever its size).
        self.coalesce_s = coalesce_s
        self.tracer = tracer or NullTracer()
        self.slices: list[Slice] = []
        self.backlog: collections.deque[_Batch] = collections.deque()  # oldest first
        self._next_batch = 0
        self._turn = 0  # the slice served next
        self._events = 0
        self._batches = 0
        self._sends = 0
        self._short_sends = 0
        # With ``record()``: per batch, (events read so far, time.time_ns() once the
        # last ``send`` of the batch returned). For benchmarks: it tells "the notifier
        # handed it to the kernel" apart from "the client received it".
        self.log: list[tuple[int, int]] | None = None

    def statistics(self) -> FanOutStats:
        return FanOutStats(self._events, self._batches, self._sends, self._short_sends)

    def record(self) -> None:
        """Start keeping ``log`` (one tuple per batch: for benchmarks)."""
        if self.log is None:
            self.log = []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    @property
    def pending(self) -> bool:
        """Some batch has not been sent to every slice yet."""
        return bool(self.backlog)

    # -- batches --------------------------------------------------------------------

    def take(self, events: np.ndarray, symbol_index: int = 0) -> None:
        """Apply one batch (of the symbol at ``symbol_index`` in the topology); queue its
        messages for the fan-out. Never awaits, so a snapshot taken later reflects
        exactly the batches queued before it."""
        self._events += len(events)
        self._batches += 1
        outputs = [(stream, payloads) for stream, payloads in self.md.apply(events) if stream in self.md.subscribers]
        if not outputs and (not self.backlog or self.log is None):
            # nothing to send (and nothing before it to keep the fan-out log in order)
            if self.log is not None:
                self.log.append((self._events, time.time_ns()))
            return
        batch = _Batch(self._next_batch, self._events, outputs)
        if self.tracer.every and outputs and self.tracer.samples(int(events[0]["seq"]), int(events[-1]["seq"])):
            seqs = events["seq"]
            batch.traced = (symbol_index, np.unique(seqs[seqs % self.tracer.every == 0]).tolist())
        self.backlog.append(batch)
        self._next_batch += 1

    def serve_next(self) -> float:
        """Give the next slice that is behind its turn (round robin). Returns 0 when one
        was served or none is behind, else the seconds until one may be (``coalesce_s``)."""
        slices = self.slices
        now = trio.current_time() if self.coalesce_s else 0.0
        due = math.inf
        for _ in range(len(slices)):
            sl = slices[self._turn % len(slices)]
            if now and sl.turn_at + self.coalesce_s > now and self._behind(sl):
                due = min(due, sl.turn_at + self.coalesce_s)
            else:
                self._turn = (self._turn + 1) % len(slices)
                if self._serve(sl, now):
                    return 0.0
                continue
            self._turn = (self._turn + 1) % len(slices)
        if due < math.inf:
            return due - now
        self._trim()  # no slice is behind: nothing queued is needed any more
        return 0.0

    def catch_up(self, subscriber: Subscriber) -> None:
        """Bring ``subscriber``'s slice up to date: what it is sent next follows every
        message of every batch applied so far."""
        if subscriber.fan_out_slice is not None:
            self._serve(subscriber.fan_out_slice)

    def _behind(self, sl: Slice) -> bool:
        return bool(self.backlog) and self.backlog[-1].id >= sl.sent

    def _serve(self, sl: Slice, now: float = 0.0) -> bool:
        """Send ``sl``'s subscribers every queued batch they have not had; False if it
        had them all."""
        backlog = self.backlog
        if not backlog or backlog[-1].id < sl.sent:
            return False
        sl.turn_at = now or (trio.current_time() if self.coalesce_s else 0.0)
        start = max(0, sl.sent - backlog[0].id)
        pending = list(itertools.islice(backlog, start, None))
        sl.sent = self._next_batch
        self._send_batches(sl, pending)
        self._trim()
        return True

    def _trim(self) -> None:
        """Forget the batches every slice has been sent (and log when that was)."""
        backlog = self.backlog
        low = min((sl.sent for sl in self.slices), default=self._next_batch)
        log = self.log
        now = time.time_ns() if log is not None or self.tracer.every else 0
        while backlog and backlog[0].id < low:
            batch = backlog.popleft()
            if log is not None:
                log.append((batch.events, now))
            if batch.traced is not None:
                self.tracer.seqs(Stage.PRINTED, batch.traced[0], batch.traced[1], now)

    def _send_batches(self, sl: Slice, pending: list[_Batch]) -> None:
        """Send ``pending`` to ``sl``'s subscribers, one ``send`` per subscriber.

        Each stream's messages are one blob per transport, built once per batch. A
        subscriber gets the blobs of its streams, batch after batch, joined; those
        that get the same ones are grouped so each joined blob is also built once.
        """
        subs = sl.subs
        items: list[tuple[_Batch, int, set[Subscriber]]] = []
        for batch in pending:
            for k, (stream, _) in enumerate(batch.outputs):
                members = subs.get(stream)
                if members:
                    items.append((batch, k, members))
        if not items:
            return
        groups: dict[tuple[int, ...], list[Subscriber]]
        if all(members is items[0][2] for _, _, members in items):
            # one stream moved (the usual case): everyone gets every item
            groups = {tuple(range(len(items))): list(items[0][2])}
        else:
            got_of: dict[Subscriber, list[int]] = {}
            for j, (_, _, members) in enumerate(items):
                for subscriber in members:
                    got = got_of.get(subscriber)
                    if got is None:
                        got_of[subscriber] = [j]
                    else:
                        got.append(j)
            groups = {}
            for subscriber, js in got_of.items():
                groups.setdefault(tuple(js), []).append(subscriber)
        for js, subscribers in groups.items():
            tcp = [s for s in subscribers if s.ws is None]
            ws = [s for s in subscribers if s.ws is not None]
            for members, websocket in ((tcp, False), (ws, True)):
                if not members:
                    continue
                blobs = [items[j][0].blob(items[j][1], websocket) for j in js]
                self._fan_out(members, blobs[0] if len(blobs) == 1 else b"".join(blobs))

    def _fan_out(self, subscribers: list[Subscriber], blob: bytes) -> None:
        """Give ``blob`` to every subscriber. With many, the ``send`` calls are split
        between this thread and the fan-out threads: a loopback ``send`` costs ~15-35 µs
        here (most of it the receiver's TCP path and wake-up, run by the sender), far
        more than the Python around it, and it releases the GIL, so the threads overlap
        on other cores. Subscribers with a queue go through ``write``."""
        pool = self._pool
        if pool is None or len(subscribers) < PARALLEL_FAN_OUT_MIN:
            for subscriber in subscribers:
                if subscriber.direct:
                    self._sends += 1
                    subscriber.write(blob)
                    if subscriber.queued_bytes:
                        self._short_sends += 1
                else:
                    subscriber.write(blob)
        else:
            direct = []
            for subscriber in subscribers:
                if subscriber.direct:
                    subscriber.active = True
                    direct.append(subscriber)
                else:
                    subscriber.write(blob)
            socks = [s.sock for s in direct]
            short: list[tuple[int, int | OSError]] = []
            claims = itertools.count()  # next() is atomic under the GIL
            futures = [pool.submit(_send_claimed, socks, blob, claims, short) for _ in range(self._threads)]
            _send_claimed(socks, blob, claims, short)
            for f in futures:
                f.result()
            self._sends += len(direct)
            self._short_sends += len(short)
            for i, result in short:
                direct[i].sent_elsewhere(blob, result)
        for subscriber in subscribers:
            if subscriber.closing is not None:
                self.forget(subscriber)

    # -- subscribers ----------------------------------------------------------------

    def join(self, subscriber: Subscriber) -> None:
        """Give a new subscriber a place in the first slice with room (or a new one)."""
        for sl in self.slices:
            if sl.members < self.slice_sessions:
                break
        else:
            sl = Slice(self._next_batch)
            self.slices.append(sl)
        sl.members += 1
        subscriber.fan_out_slice = sl

    def leave(self, subscriber: Subscriber) -> None:
        sl = subscriber.fan_out_slice
        if sl is not None:
            sl.members -= 1
            subscriber.fan_out_slice = None

    def subscribe(self, subscriber: Subscriber, stream: Any) -> None:
        """Send ``subscriber`` the messages of ``stream`` from the next batch on (the
        caller has subscribed it in the depth views)."""
        subscriber.streams.add(stream)
        if subscriber.fan_out_slice is not None:
            subscriber.fan_out_slice.subs.setdefault(stream, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, stream: Any) -> None:
        subscriber.streams.discard(stream)
        self._drop(subscriber, stream)

    def forget(self, subscriber: Subscriber) -> None:
        """Unsubscribe ``subscriber`` from every stream, in the depth views too."""
        self.md.drop(subscriber, subscriber.streams)
        for stream in subscriber.streams:
            self._drop(subscriber, stream)
        subscriber.streams.clear()

    def _drop(self, subscriber: Subscriber, stream: Any) -> None:
        sl = subscriber.fan_out_slice
        if sl is not None and (members := sl.subs.get(stream)) is not None:
            members.discard(subscriber)
            if not members:
                del sl.subs[stream]
