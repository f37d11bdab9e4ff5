"""Harness for the notifier tests and benchmark: a real exchange's out-side, in pieces.

```
 MdExchange (test process)                         notifier (a real stage)        load processes (spawned)
   Matcher(spec).apply(commands) ──► Producer ──► out-ring[SYM] ──► notifier ──► TCP/WS ──► sockets ...
                                     journaler's cursor, committed by journal() ─┘ (gate)
```

- ``MdExchange`` is a whole exchange's shared memory (``Stages``) whose matcher and
  journaler the test plays: it matches commands with the real ``Matcher`` and writes
  its EVENT records into the out-ring as the matcher process would, and
  ``journal()`` commits the journaler's cursor, which is what lets the notifier see
  them. ``start_notifier()`` runs the real notifier stage on it (free ports).
  With ``in_rings=True`` the real journaler runs instead, and the commands go through
  the in-rings first, as from the gateway.
- ``load_main`` is a load process: ``n`` TCP connections in one epoll loop,
  each subscribed to trades of one symbol. It counts the trades each socket got and,
  per trade seq, the last time any of its sockets received it (for fan-out latency).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import resource
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ringex.codes import Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.engine.matcher import Matcher
from ringex.market_data.messages import MarketData, Subscribe
from ringex.records import COMMAND, make_records
from ringex.ring import Ring
from ringex.topology import JOURNALER, MATCHER, NOTIFIER

from .stages import Stages

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

SPEC = {"price_min": 1, "price_max": 20_000, "capacity": 1 << 14}


def command(
    symbol: str,
    op: Op,
    *,
    side: Side = Side.BUY,
    price: int = 0,
    qty: int = 0,
    account: int = 0,
    client_order_id: int = 0,
    order_id: int = 0,
    order_type: OrderType = OrderType.LIMIT,
    tif: Tif = Tif.GTC,
) -> np.ndarray:
    """One command as the gateway would stamp it (a new order's side, type and tif)."""
    new = op == Op.NEW
    return make_records(
        COMMAND,
        msg_type=op,
        side=side if new else 0,
        order_type=order_type if new else 0,
        tif=tif if new else 0,
        symbol=symbol,
        client_order_id=client_order_id,
        order_id=order_id,
        price=price,
        qty=qty,
        account=account,
        ts_ns=time.time_ns(),
    )


class MdExchange:
    """Real out-rings fed by real matchers; the test is matcher and journaler (see the
    module docstring). ``data`` is the exchange's data directory (accounts, journal)."""

    def __init__(
        self, data: Path, symbols=("ACME", "BOLT"), capacity: int = 1 << 14, *, in_rings: bool = False
    ) -> None:
        self.symbols = tuple(symbols)
        toml = "".join(f"[symbols.{s}]\n" + "".join(f"{k} = {v}\n" for k, v in SPEC.items()) for s in self.symbols)
        self.stages = Stages(data, toml, ring_capacity=capacity, durability="async")
        self.data = self.stages.data
        self.rings: dict[str, Ring] = {}
        self.in_producers = {}
        self.in_matchers = {}
        self.producers = {}
        self.journalers = {}
        self.matchers = {s: Matcher(SymbolSpec(s, **SPEC)) for s in self.symbols}
        self.seq = dict.fromkeys(self.symbols, 0)
        self._order_ids = itertools.count(1)
        self._coids = itertools.count(1)
        try:
            for s in self.symbols:
                ring = self.rings[s] = self.stages.out_ring(s)
                self.producers[s] = ring.producer()
                if in_rings:
                    in_ring = self.stages.in_ring(s)
                    self.in_producers[s] = in_ring.producer()
                    self.in_matchers[s] = in_ring.consumer(MATCHER)
                else:
                    self.journalers[s] = ring.consumer(JOURNALER)
            if in_rings:
                self.stages.start(JOURNALER)
        except BaseException:
            self.close()
            raise

    def start_notifier(self, **market_data) -> NotifierProcess:
        """The notifier stage on these rings, its ``[market_data]`` settings changed by
        ``market_data``. Every load process connects from 127.0.0.1: the per-address
        limits (256 connections, 10,000 requests at once by default) would refuse a
        10,000-subscriber run, so they are raised unless given."""
        market_data = {"max_connections_per_address": 20_000, "address_request_burst": 100_000, **market_data}
        settings = dataclasses.replace(self.stages.config.market_data, **market_data)
        self.stages.start(NOTIFIER, config=dataclasses.replace(self.stages.config, market_data=settings))
        return NotifierProcess(self.stages)

    def wait_journaled(self, timeout: float = 30.0) -> None:
        """Wait until the real journaler has committed everything published."""
        deadline = time.monotonic() + timeout
        for s, ring in self.rings.items():
            while ring.consumer_cursor(JOURNALER) < self.producers[s].cursor:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"journaler did not catch up on {s}")
                time.sleep(0.01)

    def close(self) -> None:
        self.stages.close()

    # -- producing --------------------------------------------------------------------

    def submit(self, symbol: str, commands: np.ndarray, *, publish: bool = True) -> np.ndarray:
        """Match ``commands`` and write the events into the out-ring; returns a copy."""
        if symbol in self.in_producers:
            # as the gateway then the matcher would: the command enters the in-ring first
            self.in_producers[symbol].write(commands)
            batch = self.in_matchers[symbol].poll()
            self.in_matchers[symbol].commit(batch.hi)
        events = self.matchers[symbol].apply(commands, self.seq[symbol]).copy()
        self.seq[symbol] += len(commands)
        if publish and len(events):
            self.producers[symbol].write(events)
        return events

    def new(self, symbol, side, price, qty, account, *, tif=Tif.GTC, order_type=OrderType.LIMIT, coid=None):
        """A new order; returns (order_id, client_order_id, events)."""
        oid = next(self._order_ids)
        coid = next(self._coids) if coid is None else coid
        cmd = command(
            symbol,
            Op.NEW,
            side=side,
            price=price,
            qty=qty,
            account=account,
            client_order_id=coid,
            order_id=oid,
            tif=tif,
            order_type=order_type,
        )
        return oid, coid, self.submit(symbol, cmd)

    def cancel(self, symbol, order_id, account):
        return self.submit(symbol, command(symbol, Op.CANCEL, order_id=order_id, account=account))

    def replace(self, symbol, order_id, price, qty, account):
        return self.submit(
            symbol, command(symbol, Op.REPLACE, order_id=order_id, price=price, qty=qty, account=account)
        )

    def cross_burst(
        self, symbol: str, n: int, *, price: int = 100, buyer: int = 1, seller: int = 2, publish: bool = True
    ) -> np.ndarray:
        """``n`` trades of qty 1 in one matcher call: n resting sells, then n buys."""
        cmds = make_records(
            COMMAND,
            2 * n,
            msg_type=Op.NEW,
            order_type=OrderType.LIMIT,
            tif=Tif.GTC,
            symbol=symbol,
            price=price,
            qty=1,
        )
        cmds["side"][:n] = Side.SELL
        cmds["account"][:n] = seller
        cmds["side"][n:] = Side.BUY
        cmds["account"][n:] = buyer
        first = next(self._order_ids)
        cmds["order_id"] = np.arange(first, first + 2 * n, dtype=np.uint64)
        self._order_ids = itertools.count(first + 2 * n)
        cmds["client_order_id"] = cmds["order_id"]
        cmds["ts_ns"] = time.time_ns()
        return self.submit(symbol, cmds, publish=publish)

    def journal(self, symbol: str | None = None, upto: int | None = None) -> None:
        """Commit the "journaler" cursor up to ``upto`` (default: everything published)."""
        for s in [symbol] if symbol else self.symbols:
            consumer = self.journalers[s]
            available = consumer.poll()
            if not available:
                continue
            hi = available.hi if upto is None else min(upto, available.hi)
            if hi > consumer.cursor:
                consumer.commit(hi)

    def published(self, symbol: str) -> int:
        return self.producers[symbol].cursor


class NotifierProcess:
    """The notifier stage an ``MdExchange`` started: its ports, pid and ``stop()``."""

    def __init__(self, stages: Stages) -> None:
        self.stages = stages
        self.tcp_port = stages.config.md_port
        self.ws_port = stages.config.ws_port
        self.pid = stages.pid(NOTIFIER)

    def stop(self) -> None:
        if NOTIFIER in self.stages.procs:
            self.stages.stop(NOTIFIER)


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ringex-md-"))


####################################################################################
# Load process
####################################################################################


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


_SEQ_KEY = b'"seq":'
_ACK = b'{"type":"subscribed"'
_TRADE = b'{"type":"trade"'


def _line_seq(line: bytes) -> int:
    """The seq of one trade line, 0 for the subscribed ack, -1 for anything else."""
    if line.startswith(_ACK):
        return 0
    if not line.startswith(_TRADE):
        return -1
    i = line.find(_SEQ_KEY) + len(_SEQ_KEY)
    return int(line[i : line.find(b",", i)])


def expected_bytes(symbol: str, events: np.ndarray) -> int:
    """What a trades subscriber of ``symbol`` on a fresh exchange receives over TCP
    for ``events``: the subscribed ack and every trade line, as ``MarketData`` encodes
    them (the notifier sends those very bytes)."""
    md = MarketData([symbol])
    stream = ("trades", symbol)
    size = sum(len(p) + 1 for p in md.subscribe("probe", Subscribe("trades", symbol), None))
    for s, payloads in md.apply(events):
        if s == stream:
            size += sum(len(p) + 1 for p in payloads)
    return size


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def reap(loaders, timeout: float = 30.0) -> None:
    """Wait for the load processes to report and exit; kill any still running then."""
    for p in loaders:
        p.join(timeout)
        if p.is_alive():
            p.kill()


def load_main(
    queue, host: str, port: int, n: int, symbol: str, expect: int, max_seq: int, timeout: float, nice: int = 0
):
    """Open ``n`` connections subscribed to ``trades`` of ``symbol``; report
    ``("subscribed", n)`` when every ack arrived, then count trades until every socket
    has ``expect`` of them (or ``timeout`` passes).

    Reports ``("done", counts, last_recv_ns, recvs, cpu_s, bytes, bytes_per_socket)``:
    per socket the seq of the last trade received (= trades received, when
    ``bytes_per_socket`` matches the ack plus every trade line: see
    ``expected_bytes``), per trade seq (index) the latest time any socket here
    received it (0: never), and from the moment every ack had arrived: the ``recv``
    calls made, this process's CPU seconds (user + system) and the bytes received.
    ``nice`` lowers this process's priority by that much.

    Built to cost the machine as little as possible per receive, because it shares
    the two cores with the notifier it measures: ``epoll`` directly (no selector key
    objects), ``recv_into`` one preallocated buffer (a fresh 256 KiB ``bytes`` per
    ``recv`` costs an allocation and page faults each time), only the last line of
    each receive parsed, and per receive only a ``(seq, time)`` mark kept.
    """
    try:
        raise_nofile()
        if nice:
            # a stand-in for subscribers on other machines: yield the cores to the notifier
            os.nice(nice)
        socks: list[socket.socket | None] = []
        sub = (json.dumps({"op": "subscribe", "channel": "trades", "symbol": symbol}) + "\n").encode()
        for _ in range(n):
            for attempt in range(50):
                try:
                    s = socket.create_connection((host, port), timeout=30)
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            s.sendall(sub)
            s.setblocking(False)
            socks.append(s)
        ep = select.epoll(n)
        # by descriptor: the socket's index here (descriptors are small integers)
        index = [-1] * (max(s.fileno() for s in socks) + 1 if socks else 0)
        for i, s in enumerate(socks):
            index[s.fileno()] = i
            ep.register(s.fileno(), select.EPOLLIN)
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        # Per socket: the seq of the last complete line received (-1 until the ack),
        # the bytes received, and the partial line a recv ended in. Only the last
        # complete line of each recv is parsed (an rfind from the end): counting or
        # parsing every line in Python costs more per recv than the kernel's receive
        # itself and would make this process, not the notifier, the bottleneck. The
        # stream is still checked whole: the seq of each recv's last line must exceed
        # the previous one's, the last must be ``expect``, and the caller compares
        # each socket's byte count with what the published trades add up to (a
        # missing, repeated or altered line changes it).
        seqs = [-1] * n
        nbytes = [0] * n
        tails = [b""] * n
        wrong: list[str] = []
        # per socket, (highest trade seq received, receive time): cheap to record per
        # recv, turned into per-trade receive times once the run is over
        marks: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        pending_acks = n
        deadline = time.monotonic() + timeout
        reported = False
        done = 0
        recvs = received = 0
        time_ns = time.time_ns
        while time.monotonic() < deadline:
            if not reported and pending_acks == 0:
                queue.put(("subscribed", n))
                reported = True
                cpu_start = _cpu_s()
                recvs = received = 0
            for fd, _ in ep.poll(0.5):
                i = index[fd]
                try:
                    got = socks[i].recv_into(buf)
                except BlockingIOError:
                    continue
                recvs += 1
                if not got:
                    ep.unregister(fd)
                    continue
                now = time_ns()
                received += got
                nbytes[i] += got
                end = buf.rfind(b"\n", 0, got)
                if end < 0:
                    tails[i] += bytes(view[:got])
                    continue
                start = buf.rfind(b"\n", 0, end) + 1
                line = bytes(view[start:end]) if start else tails[i] + bytes(view[:end])
                tails[i] = bytes(view[end + 1 : got])
                seq = _line_seq(line)
                if seq <= seqs[i]:
                    wrong.append(f"socket {i}: after seq {seqs[i]} came {line[:200]!r}")
                    ep.unregister(fd)
                    continue
                if seqs[i] < 0:
                    pending_acks -= 1
                seqs[i] = seq
                if seq:
                    marks[i].append((seq, now))
                    if seq == expect:
                        done += 1
            if reported and done >= n:
                break
        cpu = _cpu_s() - cpu_start if reported else 0.0
        ep.close()
        if wrong:
            raise AssertionError(f"{len(wrong)} sockets got lines out of order or not trades: {wrong[:3]}")
        counts = [max(seq, 0) for seq in seqs]
        last_recv = np.zeros(max_seq + 2, np.int64)
        seqs = np.arange(max_seq + 2)
        for socket_marks in marks:
            if not socket_marks:
                continue
            his, nows = np.array(socket_marks, np.int64).T
            k = np.searchsorted(his, seqs)  # the chunk that carried each seq
            got = k < len(his)
            last_recv[got] = np.maximum(last_recv[got], nows[k[got]])
        last_recv[0] = 0
        queue.put(("done", counts, last_recv.tolist(), recvs, cpu, received, nbytes))
        for s in socks:
            s.close()
    except BaseException as exc:  # report, so the parent fails with the reason
        import traceback

        queue.put(("error", f"{exc!r}\n{traceback.format_exc()}"))
        raise
