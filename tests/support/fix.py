"""A whole exchange with its FIX acceptor (``Stages(fix=True)``), seen from FIX clients."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ringex.codes import Tag
from ringex.fix.client import FixClient
from ringex.fix.codec import Message
from ringex.fix.session import MemoryStore
from ringex.order_entry.client import OrderClient

from .stages import Stages

__all__ = ["FixExchange", "ALICE", "BOB", "CONFIG_TOML", "report", "reports_for"]

# (account, token)
ALICE = (1001, 0x1111_2222_3333)
BOB = (1002, 0x4444_5555)

CONFIG_TOML = """
[symbols.ACME]
tick = 5
price_min = 100
price_max = 1000
max_qty = 500

[symbols.BOLT]
"""


class FixExchange:
    """Every role of an exchange, the FIX acceptor included, with accounts ``ALICE`` and
    ``BOB``; ``client(comp_id, account)`` opens a logged-on ``FixClient``."""

    def __init__(self, data: Path, *, durability: str = "async", toml: str = CONFIG_TOML, **overrides) -> None:
        self.stages = Stages(data, toml, fix=True, durability=durability, **overrides)
        try:
            for account, token in (ALICE, BOB):
                self.stages.add_account(account, token)
            self.stages.start_all()
        except BaseException:
            self.stages.close()
            raise
        self.port = self.stages.config.fix_port
        self.clients: list[FixClient] = []

    @property
    def data(self) -> Path:
        return self.stages.data

    def client(
        self,
        comp_id: str,
        who: tuple[int, int] = ALICE,
        *,
        store: MemoryStore | None = None,
        logon: bool = True,
        heartbeat_s: int = 30,
    ) -> FixClient:
        client = FixClient("127.0.0.1", self.port, comp_id, store=store, heartbeat_s=heartbeat_s).connect()
        self.clients.append(client)
        if logon:
            client.logon(*who)
        return client

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def v1(self, who: tuple[int, int] = BOB) -> OrderClient:
        client = OrderClient.connect("127.0.0.1", self.stages.config.order_port)
        client.login(*who)
        return client

    def log(self) -> str:
        path = self.data / "ringex.log"
        return path.read_text() if path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.stages.close()


def report(
    client: FixClient, cl_ord_id: str, exec_type: str | None = None, msg_type: str = "8", timeout=10.0
) -> Message:
    """The next report about ``cl_ord_id`` (of ``exec_type``, if given)."""

    def match(m: Message) -> bool:
        return (
            m.msg_type == msg_type
            and m.text(Tag.ClOrdID) == cl_ord_id
            and (exec_type is None or m.text(Tag.ExecType) == exec_type)
        )

    return client.wait_for(match, timeout)


def reports_for(messages: list[Message], cl_ord_id: str) -> list[str]:
    """``ExecType``s (or ``9`` for an OrderCancelReject) of the messages about ``cl_ord_id``."""
    return [
        m.text(Tag.ExecType) if m.msg_type == "8" else m.msg_type for m in messages if m.text(Tag.ClOrdID) == cl_ord_id
    ]
