"""A real gateway and a real notifier inside the test process, over real loopback sockets,
for tests that must reach into them (inject a bug into one session, read statistics)
or set their limits small.

- ``InProcessGateway``: ``ringex.gateway.Gateway`` on its own shared-memory in-rings,
  its loop on a thread, and a stand-in journaler thread that commits each in-ring's
  "journaler" cursor as it reads (``stall()`` stops it, so acks wait).
- ``client_from(address)``: a socket bound to another loopback address (127.0.0.2, ...):
  Linux routes all of 127/8 to the loopback device, so one test can be many clients
  as far as per-address limits can tell.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

from ringex.accounts import AccountStore
from ringex.config import Config, SymbolSpec
from ringex.gateway import Gateway, in_ring_name
from ringex.records import COMMAND
from ringex.ring import Ring
from ringex.session import Limits, warm_up

SYMBOLS = ("ACME", "BOLT")
ACCOUNT, TOKEN = 1001, 0x1111_2222_3333
OTHER, OTHER_TOKEN = 1002, 0x4444


def client_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source``."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class CountingStore(AccountStore):
    """The real account store, counting the slow checks it runs (``verify`` calls that
    ``verify_nowait`` could not answer)."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.slow_checks = 0

    def verify(self, account: int, token: int) -> bool:
        if self.verify_nowait(account, token) is None:
            self.slow_checks += 1
        return super().verify(account, token)


class InProcessGateway:
    def __init__(self, tmp: Path, limits: Limits | None = None) -> None:
        warm_up()
        tmp.mkdir(parents=True, exist_ok=True)
        self.accounts = CountingStore(tmp / "accounts.json")
        self.accounts.add(ACCOUNT, TOKEN)
        self.accounts.add(OTHER, OTHER_TOKEN)
        self.prefix = f"rgxi{os.getpid()}{secrets.token_hex(3)}"
        self.rings = [Ring.create(in_ring_name(s, self.prefix), COMMAND, 1 << 12, ["journaler"]) for s in SYMBOLS]
        self._stalled = threading.Event()
        self._stop = threading.Event()
        config = Config(symbols=tuple(SymbolSpec(s) for s in SYMBOLS), data_dir=str(tmp))
        try:
            self.gateway = Gateway(
                config, self.accounts, ring_prefix=self.prefix, limits=limits, host="127.0.0.1", port=0
            )
        except BaseException:
            self._unlink()
            raise
        self.port = self.gateway.address[1]
        self._journaler = threading.Thread(target=self._journal, name="stand-in journaler", daemon=True)
        self._loop = threading.Thread(target=self._run, name="gateway loop", daemon=True)
        self.error: BaseException | None = None
        self._journaler.start()
        self._loop.start()

    def _run(self) -> None:
        try:
            self.gateway.run()
        except BaseException as exc:  # the test asserts there was none
            self.error = exc

    def _journal(self) -> None:
        consumers = [ring.consumer("journaler") for ring in self.rings]
        while not self._stop.is_set():
            if not self._stalled.is_set():
                for consumer in consumers:
                    batch = consumer.poll()
                    if batch:
                        consumer.commit(batch.hi)
            time.sleep(0.001)

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) making commands durable: acks wait meanwhile."""
        if stalled:
            self._stalled.set()
        else:
            self._stalled.clear()

    @property
    def alive(self) -> bool:
        return self._loop.is_alive() and self.error is None

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return client_from(source, self.port)

    def close(self) -> None:
        self.gateway.stop()
        self._loop.join(10)
        self._stop.set()
        self._journaler.join(10)
        self.gateway.close()
        self._unlink()

    def _unlink(self) -> None:
        for ring in self.rings:
            ring.close()
            ring.unlink()
