"""A real gateway and a real notifier inside the test process, over real loopback sockets,
for tests that must reach into them (inject a bug into one session, read statistics)
or set their limits small.

- ``InProcessGateway``: ``ringex.order_entry.gateway.Gateway`` in this process (its loop
  on a thread), on the rings of a ``Stages`` whose journaler, matcher and notifier run
  as ``ringex up`` runs them (``stall()`` stops the journaler, so acks wait).
- ``client_from(address)``: a socket bound to another loopback address (127.0.0.2, ...):
  Linux routes all of 127/8 to the loopback device, so one test can be many clients
  as far as per-address limits can tell.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

from ringex.config import OrderEntryLimits
from ringex.order_entry.accounts import AccountStore
from ringex.order_entry.gateway import Gateway, start_position
from ringex.order_entry.session import warm_up
from ringex.topology import JOURNALER, NOTIFIER, matcher_role

from .stages import Stages

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
    def __init__(self, tmp: Path, limits: OrderEntryLimits | None = None) -> None:
        warm_up()
        toml = "".join(f"[symbols.{s}]\n" for s in SYMBOLS)
        self.stages = Stages(tmp, toml, durability="async", ring_capacity=1 << 12)
        self.accounts = CountingStore(tmp / "accounts.json")
        self.accounts.add(ACCOUNT, TOKEN)
        self.accounts.add(OTHER, OTHER_TOKEN)
        try:
            self.stages.start(JOURNALER, matcher_role(0), NOTIFIER)
            config = self.stages.config
            if limits is not None:
                config = dataclasses.replace(config, order_entry=limits)
            bases, first_order_id = start_position(config, self.stages.topology)
            self.gateway = Gateway(
                config,
                self.stages.topology,
                self.accounts,
                control=self.stages.control,
                seq_bases=bases,
                first_order_id=first_order_id,
            )
        except BaseException:
            self.stages.close()
            raise
        self.port = self.gateway.address[1]
        self._loop = threading.Thread(target=self._run, name="gateway loop", daemon=True)
        self.error: BaseException | None = None
        self._loop.start()

    def _run(self) -> None:
        try:
            self.gateway.run()
        except BaseException as exc:  # the test asserts there was none
            self.error = exc

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) making commands durable: acks wait meanwhile."""
        if stalled:
            self.stages.pause(JOURNALER)
        else:
            self.stages.resume(JOURNALER)

    @property
    def alive(self) -> bool:
        return self._loop.is_alive() and self.error is None

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return client_from(source, self.port)

    def close(self) -> None:
        self.gateway.stop()
        self._loop.join(10)
        self.gateway.close()
        self.stages.close()
