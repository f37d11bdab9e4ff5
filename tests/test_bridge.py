"""The bridge's lanes against a stand-in for JetStream: what a restarted bridge does
with the position it reads back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from ringex.cluster import jetstream
from ringex.cluster.bridge import Bridge
from ringex.config import ClusterSettings, Config
from ringex.records import COMMAND, make_records
from ringex.topology import BRIDGE, CMD, EVT, JOURNALER, Topology
from ringex.wal import Journal


class HoldsCommands:
    """JetStream as a killed bridge left it: ``held`` commands of each symbol stored
    (every one the journal has), no event; publishing is not expected."""

    def __init__(self, config: Config, held: int) -> None:
        self.config = config
        self.held = held

    async def get_last_msg(self, stream: str, subject: str):
        from nats.js.errors import NotFoundError

        if not subject.startswith(jetstream.subject(self.config.cluster, CMD, "")):
            raise NotFoundError
        records = make_records(COMMAND, self.held, symbol=jetstream.symbol_of(subject))
        headers = jetstream.encode_headers(subject, 0, self.held, 0)
        return SimpleNamespace(headers=headers, data=records.tobytes(), seq=1)

    async def publish(self, *args, **kwargs):
        raise AssertionError("nothing is left to publish")


@pytest.fixture
def sync_primary(tmp_path):
    """A sync-replication primary's rings and journal, the ring bases recorded as the
    journaler records them, and three commands of each symbol journaled (the journaler's
    cursor) but not acked (the bridge's)."""
    config = Config(
        data_dir=str(tmp_path),
        ring_capacity=16,
        cluster=ClusterSettings(nats="nats://127.0.0.1:4222", replication="sync"),
    )
    topology = Topology.for_config(config, prefix=f"rxb{tmp_path.name[-6:]}")
    rings = topology.create()
    try:
        with Journal(config.data_dir) as journal:
            for symbol in topology.symbols:
                for kind, ring in ((CMD, topology.attach_in(symbol)), (EVT, topology.attach_out(symbol))):
                    journal.set_ring_base(kind, symbol, int(ring.header["created_ns"]), 0)
                    ring.close()
        for symbol in topology.symbols:
            ring = topology.attach_in(symbol)
            ring.producer().write(make_records(COMMAND, 3, symbol=symbol))
            journaler = ring.consumer(JOURNALER)
            journaler.poll()
            journaler.commit(2)
            ring.close()
        yield config, topology
    finally:
        for ring in rings:
            ring.close()
        topology.remove()


def test_a_restarted_bridge_acks_the_commands_jetstream_already_holds(sync_primary):
    # The previous bridge was killed after JetStream stored its last message and before
    # it moved consumer BRIDGE: the gateway still waits to ack those commands, and its
    # client sends nothing more until it has its ack. Nothing is left to publish, so
    # the new bridge must ack them when it reads its position back.
    config, topology = sync_primary
    bridge = Bridge(config, topology)
    try:
        assert all(consumer.cursor == -1 for consumer in bridge.acks.values())
        assert asyncio.run(bridge._round(HoldsCommands(config, held=3)))
        for symbol in topology.symbols:
            ring = topology.attach_in(symbol, readonly=True)
            assert ring.consumer_cursor(BRIDGE) == 2, f"{symbol}: the held commands are not acked"
            ring.close()
    finally:
        bridge.close()
