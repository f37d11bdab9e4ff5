"""A whole exchange's stages (``Stages``) seen from the order entry side: the accounts
the gateway tests log in with, clients, raw sockets, and what reached the rings and the
journal."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from ringex.market_data.client import MdClient
from ringex.order_entry.accounts import AccountStore
from ringex.order_entry.client import OrderClient
from ringex.records import COMMAND, EVENT
from ringex.topology import GATEWAY, JOURNALER
from ringex.wal import Journal

from .stages import Stages

__all__ = [
    "OrderEntry",
    "ACCOUNT",
    "TOKEN",
    "OTHER",
    "OTHER_TOKEN",
    "OPERATOR",
    "OPERATOR_TOKEN",
    "SYMBOLS",
    "CONFIG_TOML",
]

SYMBOLS = ("ACME", "BOLT")
ACCOUNT, TOKEN = 1001, 0x1111_2222_3333
OTHER, OTHER_TOKEN = 1002, 0x4444
OPERATOR, OPERATOR_TOKEN = 9000, 0x9999_0000
RING_CAPACITY = 1 << 14

CONFIG_TOML = """
[symbols.ACME]
tick = 5
price_min = 100
price_max = 1000
max_qty = 500

[symbols.BOLT]
"""


class OrderEntry:
    """``Stages`` running every role, with two accounts, for the gateway and client tests.

    ``limits`` go to the config's ``[order_entry]`` table; the in-rings hold
    ``ring_capacity`` requests (a gateway whose ring is full answers THROTTLED); ``journal_before`` commits
    that many commands per symbol to the journal before anything starts, so the in-rings
    start at those journal sequences (a ``K`` carries the journal's, not the ring's).
    """

    def __init__(
        self,
        data: Path,
        *,
        durability: str = "async",
        journal_before: dict[str, int] | None = None,
        ring_capacity: int = RING_CAPACITY,
        toml: str = "",
        operator: bool = False,
        **limits,
    ) -> None:
        table = "".join(f"{k} = {v}\n" for k, v in limits.items())
        toml = CONFIG_TOML + toml + (f"\n[order_entry]\n{table}" if limits else "")
        self.stages = Stages(data, toml, durability=durability, ring_capacity=ring_capacity)
        try:
            self.stages.add_account(ACCOUNT, TOKEN)
            self.stages.add_account(OTHER, OTHER_TOKEN)
            if operator:
                AccountStore.open(data).add(OPERATOR, OPERATOR_TOKEN, operator=True)
            if journal_before:
                _journal_commands(self.stages, journal_before)
            self.stages.start_all()
        except BaseException:
            self.stages.close()
            raise
        self.control = self.stages.control
        self.port = self.stages.config.order_port

    @property
    def data(self) -> Path:
        return self.stages.data

    def client(self, login: bool = True, account: int = ACCOUNT, token: int = TOKEN) -> OrderClient:
        c = OrderClient.connect("127.0.0.1", self.port, timeout=10)
        if login:
            c.login(account, token)
        return c

    def orders_feed(self, account: int = ACCOUNT, token: int = TOKEN, symbol: str | None = None) -> MdClient:
        """A market data client on ``account``'s private orders channel, subscribed, its
        ``subscribed`` ack and ``orders_snapshot`` read (``.snapshot`` holds the latter)."""
        md = MdClient("127.0.0.1", self.stages.config.md_port, timeout=10)
        md.login(account, token)
        md.subscribe("orders", symbol)
        md.snapshot = md.recv_until(lambda m: m["type"] == "orders_snapshot")[-1]
        return md

    def events(self, symbol: str) -> np.ndarray:
        """Every event the journal holds for ``symbol`` so far."""
        with Journal(self.data, readonly=True) as journal:
            chunks = [chunk for _, chunk in journal.read_events(symbol, 0)]
        return np.concatenate(chunks) if chunks else np.zeros(0, EVENT)

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def published(self, symbol: str) -> np.ndarray:
        """What the gateway published into ``symbol``'s in-ring so far (the tests keep
        to fewer requests than the ring has slots, so none was overwritten)."""
        ring = self.stages.in_ring(symbol)
        return ring.slots[: ring.producer_cursor + 1].copy()

    def journaled(self, symbol: str, seq: int) -> np.void:
        """The command the journal holds at ``seq`` for ``symbol``."""
        with Journal(self.data, readonly=True) as journal:
            ((first, chunk),) = journal.read_commands(symbol, seq, seq + 1)
        assert first == seq
        return chunk[0]

    def pause_journal(self) -> None:
        """Stop durability: the journaler is stopped (SIGSTOP) until ``resume_journal``."""
        self.stages.pause(JOURNALER)

    def resume_journal(self) -> None:
        self.stages.resume(JOURNALER)

    def kill_gateway(self) -> None:
        self.stages.kill(GATEWAY)

    def start_gateway(self) -> None:
        self.stages.start(GATEWAY)

    def alive(self) -> bool:
        return self.stages.alive(GATEWAY)

    def log(self) -> str:
        return (self.data / "ringex.log").read_text()

    def close(self) -> int:
        """Stop everything; the gateway's exit code."""
        code = self.stages.stop(GATEWAY) if GATEWAY in self.stages.procs else 0
        self.stages.close()
        return code


def _journal_commands(stages: Stages, counts: dict[str, int]) -> None:
    from ringex.codes import Op
    from ringex.records import make_records

    with Journal(stages.data, durability="async") as journal:
        oid = journal.max_order_id() + 1
        commands = []
        for symbol, n in counts.items():
            records = make_records(COMMAND, n, msg_type=Op.CANCEL, symbol=symbol, order_id=np.arange(oid, oid + n))
            commands.append((symbol, journal.next_seq(symbol), records))
            oid += n
        journal.commit(commands, [])
