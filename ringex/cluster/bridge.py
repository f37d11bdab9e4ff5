"""The bridge: every durable journal record, published to JetStream exactly once.

```
 journaler ──commit──► LMDB ──read──► Bridge (one Lane per symbol and kind) ──► JetStream
     │ cursor (durable)                   ▲  sync: commits its in-ring cursor   <name>.cmd.SYM
     └────────────────────────────────────┘        once JetStream has a command  <name>.evt.SYM
```

A ``Lane`` is one subject: a symbol's commands or its events. Its position (the next
journal sequence to publish, and the stream sequence of the subject's last message) is
read from JetStream when the bridge starts and after any failed publish, never from a
local file: the subject's last message names the journal records it holds
(``ringex.cluster.jetstream``). From there the lane publishes, in journal order,
everything the journal has made durable, in messages of up to ``[cluster] max_batch``
records, each waiting for JetStream's ack before the next (the expected-last-sequence
header needs the previous one's stream sequence; the lanes of different subjects run
concurrently).

- **Never ahead of the journal.** A lane publishes only up to the journaler's cursor on
  the symbol's ring (the journaler stores it after the LMDB commit returned, fsync
  included), translated to journal sequences by the ring's base; the records themselves
  are read back from LMDB, so a bridge that was down, or cut off from NATS, catches up
  from the journal however far behind it is.
- **Events follow their commands.** An event is published only once the command that
  caused it is in JetStream, so the event stream never holds what the command stream
  cannot reproduce: a promoted standby's journal continues both.
- **Exactly once.** ``Nats-Expected-Last-Subject-Sequence`` refuses a publish from a
  stale position (a message of an earlier life of the bridge landed after we read the
  position): the lane reads its position again and goes on from there. ``Nats-Msg-Id``
  drops a retried publish whose first try landed.
- **sync replication.** The bridge is also consumer ``BRIDGE`` of every in-ring, gated on
  the journaler, and the gateway acks on that cursor (``Topology.ack_consumer``): the
  lane commits it once JetStream acked the commands, which wakes the gateway, and also
  each time it reads its position from JetStream (commands an earlier life of the bridge
  published but died before acking). The journaler's commit posts the bridge's pipe
  doorbell, so it wakes on each commit.
- **async replication.** The bridge is no ring's consumer, so a bridge that is down or
  cut off from NATS never holds up trading.
- **Waking.** The bridge wakes when the journal file is written (inotify: every commit
  writes it) and then looks at the journaler's cursors every ``ACTIVE_POLL_S`` while
  records keep coming (the cursor is stored just after the write, and storing it wakes
  only the rings' consumers); in sync mode the journaler's commit also posts it.

Its lag (records and seconds behind the journal, per lane) is written to
``<data_dir>/bridge.json`` every ``STATUS_INTERVAL_S`` for ``ringex status``.

Error handling: NATS errors are handled here, at the one place a lane publishes: the
lane waits ``RETRY_S``, reads its position from JetStream again and carries on; the
client reconnects by itself. A bug propagates and ends the process (the supervisor
restarts it; nothing is lost, the journal holds everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ringex.cluster import jetstream
from ringex.config import Config
from ringex.market_data.sources import command_end
from ringex.topology import BRIDGE, CMD, EVT, JOURNALER, Topology, journaled_base
from ringex.wait import Doorbell, wait_until

__all__ = ["Bridge", "Lane", "run_bridge", "STATUS_FILE", "read_status"]

log = logging.getLogger("ringex.cluster.bridge")

STATUS_FILE = "bridge.json"
STATUS_INTERVAL_S = 0.5
# While records keep coming, look at the journaler's cursors this often (async mode):
# a cursor store wakes nobody who is not its ring's consumer, and this is what the
# copy waits for at most beyond the journal's own commit.
ACTIVE_POLL_S = 0.001
# ...for this long after the last record, then sleep on the journal file's inotify
IDLE_AFTER_S = 1.0
# Longest sleep with nothing to do: bounds a missed wake-up, costs ~nothing when idle.
IDLE_POLL_S = 0.2
# Wait after a failed publish before reading the position again (the client is
# reconnecting meanwhile)
RETRY_S = 0.25
# On SIGTERM: how long the bridge keeps publishing what the journal has before it exits
FINAL_FLUSH_S = 5.0


@dataclasses.dataclass
class Lane:
    """One subject: a symbol's commands (``kind`` ``CMD``) or events (``EVT``)."""

    kind: str
    symbol: str
    subject: str
    stream: str
    base: int  # journal sequence of the ring's slot 0
    journaled: object  # () -> the journaler's cursor on the ring
    next: int = -1  # next journal sequence to publish; -1: position unknown (read it from JetStream)
    last_stream_seq: int = 0  # stream sequence of the subject's last message (0: none)
    confirmed: int = -1  # the last position JetStream confirmed (kept while ``next`` is unknown)
    behind_since: float | None = None  # when the lane last went from caught up to behind
    published: int = 0  # records published by this process
    messages: int = 0

    def durable_end(self) -> int:
        """The journal sequence after the last durable record."""
        return self.base + self.journaled() + 1


class _Inotify:
    """The journal's data file, watched for writes: the journaler's commit writes it
    (LMDB writes through the file descriptor, ``writemap=False``), so this wakes the
    bridge at once when the first record after a quiet spell arrives."""

    IN_MODIFY = 0x2
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path}")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


class Bridge:
    """Publishes ``topology``'s journal (``config.data_dir``) to ``config.cluster``'s
    JetStream. ``run()`` until ``stop()``.

    Resource handling: attaches the rings (never creates them) and opens the journal
    read-only; ``close()`` releases both."""

    def __init__(self, config: Config, topology: Topology) -> None:
        from ringex.wal import Journal  # noqa: PLC0415

        self.config = config
        self.cluster = config.cluster
        self.topology = topology
        self.sync = topology.replication == "sync"
        self.data = Path(config.data_dir)
        self.rings = []
        self.lanes: list[Lane] = []
        self.cmd_lane: dict[str, Lane] = {}
        self.acks = {}  # symbol -> the BRIDGE consumer of its in-ring (sync mode)
        self.journal = Journal(config.data_dir, readonly=True)
        self.connected = False
        self.errors = 0
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        try:
            for symbol in topology.symbols:
                for kind in (CMD, EVT):
                    ring = (
                        topology.attach_in(symbol, readonly=not self.sync)
                        if kind == CMD
                        else topology.attach_out(symbol, readonly=True)
                    )
                    self.rings.append(ring)
                    lane = Lane(
                        kind=kind,
                        symbol=symbol,
                        subject=jetstream.subject(self.cluster, kind, symbol),
                        stream=jetstream.stream_name(self.cluster, kind),
                        base=self._base(kind, symbol, ring),
                        journaled=ring.cursor_reader(JOURNALER),
                    )
                    self.lanes.append(lane)
                    if kind == CMD:
                        self.cmd_lane[symbol] = lane
                        if self.sync:
                            self.acks[symbol] = ring.consumer(BRIDGE)
        except BaseException:
            self.close()
            raise

    def _base(self, kind: str, symbol: str, ring) -> int:
        """``ring``'s base as the journaler recorded it (``wait_for_base``, through our
        journal handle: LMDB allows one per process)."""
        found: list[int] = []

        def recorded() -> bool:
            base = journaled_base(self.journal, kind, symbol, ring)
            if base is not None:
                found.append(base)
            return base is not None

        wait_until(recorded, f"the journaler to attach {ring.name}")
        return found[0]

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    # -- position ----------------------------------------------------------------------

    async def _position(self, js, lane: Lane) -> None:
        """Read the lane's position from JetStream: after its subject's last message."""
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        try:
            msg = await js.get_last_msg(lane.stream, lane.subject)
        except NotFoundError:
            lane.next, lane.last_stream_seq = 0, 0
            lane.confirmed = 0
            return
        batch = jetstream.decode(lane.kind, lane.subject, msg.headers, msg.data)
        lane.next, lane.last_stream_seq = batch.end, msg.seq
        lane.confirmed = lane.next

    # -- publishing --------------------------------------------------------------------

    def _records(self, lane: Lane, lo: int, hi: int) -> np.ndarray:
        read = self.journal.read_commands if lane.kind == CMD else self.journal.read_events
        chunks = [records for _, records in read(lane.symbol, lo, hi)]
        if not chunks:
            return np.empty(0, jetstream.DTYPES[lane.kind])
        return jetstream.join(chunks, jetstream.DTYPES[lane.kind])

    async def _publish_lane(self, js, lane: Lane) -> None:
        """Publish what the journal holds and JetStream does not, up to the durable end."""
        if lane.next == -2:
            return
        if lane.next < 0:
            await self._position(js, lane)
            end = lane.durable_end()
            if lane.next > end:
                # JetStream holds records this journal does not: another exchange's, or
                # this data directory is not the one the streams were written from
                log.critical(
                    "%s: JetStream holds journal records up to %d, this journal only to %d; not publishing it",
                    lane.subject,
                    lane.next,
                    end,
                )
                lane.next = -2  # never again in this process: an operator must look
                return
            if lane.kind == CMD and self.sync:
                # JetStream may hold commands nobody acked: the previous bridge died (or
                # our publish failed) after the message landed and before the cursor was
                # committed. Ack them now; a gateway waiting for them (a client waiting
                # for its ack sends nothing more) would otherwise wait forever
                self._ack_commands(lane)
        while True:
            end = lane.durable_end()
            if lane.kind == EVT:
                # an event only after the command that caused it (module docstring)
                cmd_next = self.cmd_lane[lane.symbol].next
                if cmd_next < 0:
                    return
            if lane.next >= end:
                lane.behind_since = None
                return
            if lane.behind_since is None:
                lane.behind_since = time.monotonic()
            records = self._records(lane, lane.next, min(end, lane.next + self.cluster.max_batch))
            if lane.kind == EVT:
                records = records[: int(np.searchsorted(records["seq"], cmd_next, "left"))]
                if len(records) == self.cluster.max_batch:
                    # a message ends on a command's last event, so a follower's notifier
                    # sees the batches the primary's does (``command_end``)
                    records = records[: command_end(records)]
            if not len(records):
                return
            headers = jetstream.encode_headers(lane.subject, lane.next, len(records), lane.last_stream_seq)
            ack = await js.publish(
                lane.subject, records.tobytes(), timeout=self.cluster.publish_timeout_s, headers=headers
            )
            lane.last_stream_seq = ack.seq
            lane.next += len(records)
            lane.confirmed = lane.next
            lane.published += len(records)
            lane.messages += 1
            if lane.kind == CMD and self.sync:
                self._ack_commands(lane)

    def _ack_commands(self, lane: Lane) -> None:
        """sync mode: move consumer ``BRIDGE`` of the symbol's in-ring to the last command
        JetStream has, which wakes the gateway to ack it."""
        consumer = self.acks[lane.symbol]
        consumer.poll(1)  # learns how far the journaler is: commit may not pass it
        hi = min(lane.next - 1 - lane.base, lane.journaled())
        if hi > consumer.cursor:
            consumer.commit(hi)

    async def _round(self, js) -> bool:
        """Publish every lane up to the journal's durable end; whether all succeeded."""
        from nats.js.errors import APIError  # noqa: PLC0415

        async def one(lane: Lane) -> bool:
            try:
                await self._publish_lane(js, lane)
                return True
            except APIError as exc:
                if exc.err_code == jetstream.WRONG_LAST_SEQUENCE:
                    log.info("%s: JetStream moved past our position (%s); reading it again", lane.subject, exc)
                else:
                    log.warning("%s: publish refused: %s", lane.subject, exc)
            except (jetstream.MessageError, ValueError):
                raise
            except Exception as exc:  # timeouts, connection closed or reconnecting: NATS is away
                log.warning("%s: publish failed (%s: %s); retrying", lane.subject, type(exc).__name__, exc)
            self.errors += 1
            lane.next = -1  # read the position again: the publish may have landed or not
            return False

        # commands first: their lanes decide how far each symbol's events may go
        ok = all(await asyncio.gather(*(one(lane) for lane in self.lanes if lane.kind == CMD)))
        ok = all(await asyncio.gather(*(one(lane) for lane in self.lanes if lane.kind == EVT))) and ok
        return ok

    def behind(self) -> bool:
        return any(lane.next < 0 or lane.next < lane.durable_end() for lane in self.lanes if lane.next != -2)

    # -- waiting -----------------------------------------------------------------------

    async def _sleep(self, timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _wait_for_records(self, doorbell: Doorbell | None, last_busy: float) -> None:
        """Until the journal may have something new (or a timeout: never block long)."""
        idle = time.monotonic() - last_busy > IDLE_AFTER_S
        if doorbell is not None:
            doorbell.announce()
        try:
            if not self.behind():
                await self._sleep(IDLE_POLL_S if idle else ACTIVE_POLL_S)
        finally:
            if doorbell is not None:
                doorbell.withdraw()
                doorbell.semaphore.drain()

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        now = time.monotonic()
        lanes = {}
        for lane in self.lanes:
            end = lane.durable_end()
            lanes.setdefault(lane.symbol, {})[lane.kind] = {
                "published": lane.confirmed,
                "durable": end,
                "lag": None if lane.confirmed < 0 else max(0, end - lane.confirmed),
                "lag_s": 0.0 if lane.behind_since is None else round(now - lane.behind_since, 3),
                "messages": lane.messages,
            }
        return {
            "pid": os.getpid(),
            "nats": self.cluster.nats,
            "replication": self.topology.replication,
            "connected": self.connected,
            "errors": self.errors,
            "updated": time.time(),
            "lanes": lanes,
        }

    def _write_status(self) -> None:
        tmp = self.data / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, self.data / STATUS_FILE)

    async def _status_loop(self) -> None:
        while not self.stopping.is_set():
            self._write_status()
            await self._sleep_status()

    async def _sleep_status(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), STATUS_INTERVAL_S)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, on_ready=None) -> None:
        """Connect (retrying), then publish until ``stop()``; on the way out publish what
        the journal has, for ``FINAL_FLUSH_S`` at most. ``on_ready()`` is called at once:
        a primary starts (and in async mode trades) whether or not NATS is reachable; in
        sync mode acks wait for it anyway."""
        if on_ready is not None:
            on_ready()
        loop = asyncio.get_running_loop()
        doorbell = None
        watch = None
        if self.sync:
            # the journaler's commit of commands posts it: the ack path's wake-up
            doorbell = Doorbell([consumer.sleeper for consumer in self.acks.values()])
            loop.add_reader(doorbell.semaphore.fileno(), self._wake.set)
        try:
            # any commit (events are often committed on their own) writes the file
            watch = _Inotify(self.data / "journal" / "data.mdb")
            loop.add_reader(watch.fd, self._on_journal_written, watch)
        except OSError as exc:
            log.warning("no inotify on the journal (%s): polling it every %.0f ms", exc, IDLE_POLL_S * 1000)
        status = asyncio.create_task(self._status_loop())
        nc = None
        try:
            nc = await jetstream.connect(self.cluster, f"ringex-{BRIDGE}", self.stopping)
            if nc is None:
                return
            js = nc.jetstream(timeout=self.cluster.publish_timeout_s)
            while not self.stopping.is_set():
                try:
                    await jetstream.ensure_streams(js, self.cluster)
                    break
                except Exception as exc:  # NATS away: the same as a failed publish
                    log.warning("cannot create the streams yet (%s); retrying", exc)
                    await self._sleep(RETRY_S)
            last_busy = time.monotonic()
            while not self.stopping.is_set():
                self.connected = nc.is_connected
                if not await self._round(js):
                    await self._sleep(RETRY_S)
                    continue
                if any(lane.behind_since is not None for lane in self.lanes):
                    last_busy = time.monotonic()
                await self._wait_for_records(doorbell, last_busy)
            deadline = time.monotonic() + FINAL_FLUSH_S
            while self.behind() and time.monotonic() < deadline and nc.is_connected:
                if not await self._round(js):
                    await asyncio.sleep(RETRY_S)
        finally:
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            self.connected = False
            self._write_status()
            if doorbell is not None:
                loop.remove_reader(doorbell.semaphore.fileno())
            if watch is not None:
                loop.remove_reader(watch.fd)
                watch.close()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    def _on_journal_written(self, watch: _Inotify) -> None:
        watch.drain()
        self._wake.set()


def read_status(data_dir: str | os.PathLike[str]) -> dict | None:
    """The bridge's last status (``Bridge.status``) on ``data_dir``, or None."""
    try:
        return json.loads((Path(data_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def run_bridge(config: Config, topology: Topology, control) -> int:
    """The bridge process (``ringex.roles``): publish until SIGTERM/SIGINT."""
    return jetstream.run_process(Bridge(config, topology), BRIDGE, control)
