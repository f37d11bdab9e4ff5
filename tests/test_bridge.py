"""The bridge against a real nats-server: what a restarted bridge does with the
position it reads back from JetStream."""

from __future__ import annotations

import asyncio

import nats
import pytest
from support.cluster import start_nats

from ringex.cluster import jetstream
from ringex.cluster.bridge import Bridge
from ringex.config import ClusterSettings, Config
from ringex.records import COMMAND, make_records
from ringex.topology import BRIDGE, CMD, EVT, JOURNALER, Topology
from ringex.wal import Journal


async def _as_a_killed_bridge_left_it(url: str, config: Config, held: int) -> int:
    """Publish what a bridge killed between JetStream's ack and its own cursor update
    left behind: the first ``held`` commands of every symbol, each subject's one message,
    with the headers the bridge writes. Returns the command stream's last sequence."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await jetstream.ensure_streams(js, config.cluster)
        for symbol in (s.name for s in config.symbols):
            subject = jetstream.subject(config.cluster, CMD, symbol)
            records = make_records(COMMAND, held, symbol=symbol)
            await js.publish(subject, records.tobytes(), headers=jetstream.encode_headers(subject, 0, held, 0))
        return (await js.stream_info(jetstream.stream_name(config.cluster, CMD))).state.last_seq
    finally:
        await nc.close()


async def _one_round(url: str, bridge: Bridge, config: Config) -> tuple[bool, int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        moved = await bridge._round(js)
        return moved, (await js.stream_info(jetstream.stream_name(config.cluster, CMD))).state.last_seq
    finally:
        await nc.close()


@pytest.fixture
def sync_primary(tmp_path):
    """A real nats-server, and a sync-replication primary's rings and journal: the ring
    bases recorded as the journaler records them, three commands of each symbol
    journaled (the journaler's cursor) but not acked (the bridge's)."""
    server = start_nats(tmp_path / "nats")
    config = Config(
        data_dir=str(tmp_path / "data"),
        ring_capacity=16,
        cluster=ClusterSettings(nats=server.url, replication="sync"),
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
        yield server.url, config, topology
    finally:
        for ring in rings:
            ring.close()
        topology.remove()
        server.stop()


def test_a_restarted_bridge_acks_the_commands_jetstream_already_holds(sync_primary):
    # The previous bridge was killed after JetStream stored its last message and before
    # it moved consumer BRIDGE: the gateway still waits to ack those commands, and its
    # client sends nothing more until it has its ack. Nothing is left to publish, so
    # the new bridge must ack them when it reads its position back.
    url, config, topology = sync_primary
    last_seq = asyncio.run(_as_a_killed_bridge_left_it(url, config, held=3))
    bridge = Bridge(config, topology)
    try:
        assert all(consumer.cursor == -1 for consumer in bridge.acks.values())
        _, after = asyncio.run(_one_round(url, bridge, config))
        assert after == last_seq, "the bridge published commands JetStream already had"
        for symbol in topology.symbols:
            ring = topology.attach_in(symbol, readonly=True)
            assert ring.consumer_cursor(BRIDGE) == 2, f"{symbol}: the held commands are not acked"
            ring.close()
    finally:
        bridge.close()
