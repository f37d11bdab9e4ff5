"""A cluster on one machine: a real nats-server and ``ringex up`` / ``follow`` /
``standby`` / ``promote`` as subprocesses, each on its own data directory and free
loopback ports, plus the readers a test checks them with.

::

    OrderFlow ──► primary (ringex up, bridge) ──► nats-server (JetStream) ──► follower(s) ◄── Recorder(s)
                                                                     └──────► standby
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from ringex.cluster.server import NatsServer

from .net import free_ports
from .running import ROOT, RunningExchange

__all__ = [
    "start_nats",
    "ClusterNode",
    "Recorder",
    "OrderFlow",
    "stream_batches",
    "recover_json",
    "remove_shared_memory",
]


def start_nats(store: Path) -> NatsServer:
    (port,) = free_ports(1)
    return NatsServer(store, port, log=str(store.parent / f"{store.name}.log")).start()


class ClusterNode(RunningExchange):
    """``ringex COMMAND`` (up, follow, standby, promote) on ``data``, with a config file
    holding ``toml`` (symbols, ``[cluster]``)."""

    def __init__(self, data: Path, command: str, toml: str, *, durability: str = "async", extra=()) -> None:
        data = Path(data)
        data.parent.mkdir(parents=True, exist_ok=True)
        config = data.parent / f"{data.name}.toml"
        config.write_text(toml)
        super().__init__(data, durability=durability, config=config, extra=extra)
        self.subcommand = command

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ringex", self.subcommand, "--data", str(self.data)]
        cmd += ["--durability", self.durability, "--config", str(self.config)]
        cmd += ["--order-port", str(self.order_port), "--md-port", str(self.md_port), "--ws-port", str(self.ws_port)]
        if self.subcommand == "up":  # the FIX acceptor runs in a primary only
            cmd += ["--fix-port", str(self.fix_port)]
        return cmd + self.extra

    def pids(self) -> list[int]:
        """The supervisor's and every child's pid."""
        status = self.status()
        return [status["supervisor_pid"], *(p["pid"] for p in status["processes"] if p["pid"] > 0)]


class Recorder:
    """A market data subscriber on its own thread: subscribes to ``channels`` of
    ``symbol`` and keeps every message until ``close()``."""

    def __init__(self, port: int, symbol: str, channels=("trades", "bbo")) -> None:
        from ringex.market_data.client import MdClient

        self.client = MdClient("127.0.0.1", port, timeout=30.0)
        self.symbol = symbol
        self.messages: list[dict] = []
        self.closed = False
        for channel in channels:
            self.client.subscribe(channel, symbol)
        self.client.recv_until(lambda m: m["type"] == "subscribed" and m["channel"] == channels[-1], timeout=30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ringex.market_data.client import ConnectionClosed

        while not self._stop.is_set():
            try:
                self.messages.append(self.client.recv(timeout=0.2))
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                self.closed = True
                return

    def trades(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "trade"]

    def bbos(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "bbo"]

    def wait_trades(self, seq: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(m["seq"] >= seq for m in self.trades()):
            if time.monotonic() > deadline or self.closed:
                have = self.trades()[-1]["seq"] if self.trades() else None
                kinds = collections.Counter(m["type"] for m in self.messages)
                raise AssertionError(
                    f"{self.symbol}: trade seq {seq} never came (last {have}, closed {self.closed}; got {dict(kinds)})"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


class OrderFlow:
    """One trader on its own thread: on each symbol in turn a buy, then a sell that
    trades with it, ``pairs`` times, waiting for each ack. ``acked`` keeps
    ``(symbol, journal seq, order id)`` of every ack."""

    def __init__(self, port: int, account: int, token: int, symbols, pairs: int, pause_s: float = 0.0) -> None:
        self.port, self.account, self.token = port, account, token
        self.symbols = list(symbols)
        self.pairs = pairs
        self.pause_s = pause_s
        self.acked: list[tuple[str, int, int]] = []
        self.rejected = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OrderFlow:
        self._thread.start()
        return self

    def _run(self) -> None:
        from ringex.order_entry.client import OrderClient

        try:
            with OrderClient.connect("127.0.0.1", self.port, timeout=60.0) as client:
                assert client.login(self.account, self.token).ok
                for i in range(self.pairs):
                    symbol = self.symbols[i % len(self.symbols)]
                    price = 100 + i % 7
                    for side in ("buy", "sell"):
                        reply = client.new_order(symbol, side, 1 + i % 3, price)
                        if reply.ok:
                            self.acked.append((symbol, reply.seq, reply.order_id))
                        else:
                            self.rejected += 1
                    if self.pause_s:
                        time.sleep(self.pause_s)
        except BaseException as exc:
            self.error = exc

    def done(self) -> int:
        return len(self.acked) + self.rejected

    def join(self, timeout: float = 300.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the order flow did not finish"
        if self.error is not None:
            raise self.error


def stream_batches(url: str, stream: str) -> list[tuple[str, int, int, bytes]]:
    """Every message of ``stream``: ``(subject, first journal seq, count, payload)``,
    in stream order."""
    import nats
    from nats.js.errors import NotFoundError

    from ringex.cluster.jetstream import COUNT_HEADER, FIRST_HEADER

    async def read() -> list:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                with contextlib.suppress(NotFoundError):
                    msg = await js.get_msg(stream, seq)
                    out.append((msg.subject, int(msg.headers[FIRST_HEADER]), int(msg.headers[COUNT_HEADER]), msg.data))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def recover_json(data: Path) -> dict[str, dict]:
    """``ringex recover --verify --json`` on ``data``: per symbol its summary (commands,
    events, state_hash...)."""
    out = subprocess.run(
        [sys.executable, "-m", "ringex", "recover", "--verify", "--json", "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {row["symbol"]: row for row in rows}


def remove_shared_memory(data: Path) -> None:
    """Unlink what an exchange killed with -9 on ``data`` left in shared memory (its run
    file names it); nothing if it stopped cleanly."""
    from ringex.control import ControlBlock
    from ringex.supervisor import RUN_FILE
    from ringex.topology import Topology

    run = Path(data) / RUN_FILE
    if not run.exists():
        return
    topology = Topology.from_json(json.loads(run.read_text())["topology"])
    topology.remove()
    with contextlib.suppress(FileNotFoundError):
        block = ControlBlock.attach(topology.control)
        block.close()
        block.unlink()
