"""Run a whole exchange (``ringex up``) as a subprocess on a temporary data directory
and free loopback ports, for tests and benchmarks that need the real thing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from ringex.processes import stop_process

from .net import free_ports

ROOT = Path(__file__).resolve().parents[1]


class RunningExchange:
    """``ringex up`` in a subprocess. ``start()`` waits for its banner; ``accounts``
    maps the demo accounts to their tokens (printed once, on the first start)."""

    def __init__(self, data: Path, *, durability: str = "fsync", config: Path | None = None, extra=()) -> None:
        self.data = Path(data)
        self.durability = durability
        self.config = config
        self.extra = list(extra)
        self.order_port, self.md_port, self.ws_port, self.fix_port = free_ports(4)
        self.proc: subprocess.Popen | None = None
        self.accounts: dict[int, int] = {}
        self.output = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ringex", "up", "--data", str(self.data), "--durability", self.durability]
        cmd += ["--order-port", str(self.order_port), "--md-port", str(self.md_port), "--ws-port", str(self.ws_port)]
        cmd += ["--fix-port", str(self.fix_port)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + self.extra

    def start(self, timeout: float = 300.0) -> RunningExchange:
        self.output = ""
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=open(self.data.parent / f"{self.data.name}.stderr", "ab"),  # noqa: SIM115 - child owns it
            bufsize=0,
        )
        deadline = time.monotonic() + timeout
        while "stop with Ctrl-C" not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"exchange did not come up:\n{self.output}\n{self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                # raw reads: a buffered readline would hide lines select() cannot see
                self.output += os.read(self.proc.stdout.fileno(), 65536).decode()
        for account, token in re.findall(r"account (\d+)\s+token (\d+)", self.output):
            self.accounts[int(account)] = int(token)
        return self

    @contextlib.contextmanager
    def sessions(self, n: int):
        """``n`` order entry clients, logged in as the first ``n`` demo accounts."""
        from ringex.order_entry.client import OrderClient

        with contextlib.ExitStack() as stack:
            clients = []
            for account, token in list(self.accounts.items())[:n]:
                client = stack.enter_context(OrderClient.connect("127.0.0.1", self.order_port))
                assert client.login(account, token).ok
                clients.append(client)
            yield clients

    @contextlib.contextmanager
    def subscribed(self, channel: str, symbol: str):
        """A market data client whose subscription has taken effect."""
        from ringex.market_data.client import MdClient

        with MdClient("127.0.0.1", self.md_port) as md:
            md.subscribe(channel, symbol)
            md.recv_until(lambda m: m["type"] == "subscribed")
            yield md

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "ringex", "status", "--data", str(self.data), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    def pid_of(self, role: str) -> int:
        return next(p["pid"] for p in self.status()["processes"] if p["role"] == role)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc.stdout.close()
        self.proc = None
        return code

    def log_tail(self, n: int = 4000) -> str:
        path = self.data / "ringex.log"
        return path.read_text()[-n:] if path.exists() else "(no log)"

    def shared_memory(self) -> list[str]:
        """This exchange's shared-memory objects still present in /dev/shm."""
        from ringex.topology import prefix_for

        prefix = prefix_for(self.data)
        return [name for name in os.listdir("/dev/shm") if prefix in name]
