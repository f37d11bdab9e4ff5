"""The cluster's sans-IO parts: the JetStream message format, the feeders' continuity
check, the [cluster] config and the topology of each mode."""

from __future__ import annotations

import numpy as np
import pytest

from ringex.cluster import jetstream
from ringex.cluster.feed import Continuity, Gap, consumer_name
from ringex.config import ClusterSettings, Config, ConfigError, load_config
from ringex.records import COMMAND, EVENT, make_records
from ringex.topology import (
    BRIDGE,
    CMD,
    EVT,
    FOLLOWER,
    GATEWAY,
    JOURNALER,
    NOTIFIER,
    STANDBY,
    Topology,
)

CLUSTER = ClusterSettings(nats="nats://127.0.0.1:4222")


def test_a_batch_round_trips_through_a_message():
    records = make_records(EVENT, 5, symbol="ACME", seq=np.arange(5), qty=7)
    subject = jetstream.subject(CLUSTER, EVT, "ACME")
    headers = jetstream.encode_headers(subject, 40, 5, 12)
    batch = jetstream.decode(EVT, subject, headers, records.tobytes())
    assert (batch.symbol, batch.first, batch.end) == ("ACME", 40, 45)
    assert batch.records.tobytes() == records.tobytes()
    # what makes it exactly once: the stream refuses a stale position, and drops a retry
    assert headers["Nats-Expected-Last-Subject-Sequence"] == "12"
    assert headers["Nats-Msg-Id"] == "ringex.evt.ACME:40:5"


@pytest.mark.parametrize(
    "headers, size",
    [(None, 64), ({}, 64), ({jetstream.FIRST_HEADER: "0", jetstream.COUNT_HEADER: "2"}, 64 * 3)],
)
def test_a_message_that_is_not_a_batch_is_refused(headers, size):
    with pytest.raises(jetstream.MessageError):
        jetstream.decode(CMD, "ringex.cmd.ACME", headers, bytes(size))


def test_join_keeps_the_records_padding():
    parts = [make_records(EVENT, 2, symbol="ACME", seq=1), make_records(EVENT, 3, symbol="ACME", seq=2)]
    joined = jetstream.join(parts, EVENT)
    assert joined.dtype.itemsize == EVENT.itemsize == 128
    assert joined.tobytes() == b"".join(p.tobytes() for p in parts)


def test_continuity_drops_what_the_journal_has_and_refuses_a_gap():
    cont = Continuity({"ACME": 10})
    records = make_records(COMMAND, 6, symbol="ACME", order_id=np.arange(6))

    def batch(first, n):
        return jetstream.Batch(CMD, "ACME", first, records[:n])

    assert cont.take(batch(4, 6)) is None  # a redelivery of what is journaled
    tail = cont.take(batch(8, 5))  # overlaps: only 10..12 are new
    assert tail.tobytes() == records[2:5].tobytes() and cont.next["ACME"] == 13
    with pytest.raises(Gap):
        cont.take(batch(14, 2))  # 13 is missing: wait for it
    assert cont.next["ACME"] == 13
    assert len(cont.take(batch(13, 2))) == 2


def test_consumer_names_are_stable_per_data_directory_and_distinct(tmp_path):
    a = consumer_name(FOLLOWER, tmp_path / "a")
    assert a == consumer_name(FOLLOWER, tmp_path / "a") != consumer_name(FOLLOWER, tmp_path / "b")
    assert a.startswith(FOLLOWER) and "." not in a


@pytest.mark.parametrize(
    "text, named",
    [
        ('nats = "localhost:4222"', "cluster.nats"),
        ('replication = "maybe"', "cluster.replication"),
        ('name = "a.b"', "cluster.name"),
        ("max_batch = 0", "cluster.max_batch"),
        ('consumer = "x y"', "cluster.consumer"),
        ("colour = 1", "cluster.colour"),
    ],
)
def test_bad_cluster_settings_name_the_key(tmp_path, text, named):
    path = tmp_path / "c.toml"
    path.write_text(f"[cluster]\n{text}\n")
    with pytest.raises(ConfigError, match=named):
        load_config(path, environ={})


def test_each_mode_runs_its_roles_and_sync_replication_acks_on_the_bridge():
    plain = Topology.for_config(Config())
    assert GATEWAY in plain.roles and BRIDGE not in plain.roles
    assert plain.ack_consumer == JOURNALER
    config = Config(cluster=ClusterSettings(nats="nats://127.0.0.1:4222", replication="sync"))
    primary = Topology.for_config(config)
    roles = primary.roles
    assert roles[roles.index(GATEWAY) - 1] == BRIDGE and primary.ack_consumer == BRIDGE
    standby = Topology.for_config(config, mode=STANDBY)
    assert standby.roles[-1] == STANDBY and GATEWAY not in standby.roles and BRIDGE not in standby.roles
    assert standby.entry == STANDBY and standby.ack_consumer == JOURNALER
    follower = Topology.for_config(config, mode=FOLLOWER)
    assert follower.roles == (FOLLOWER, NOTIFIER) and follower.entry == FOLLOWER
    assert Topology.from_json(primary.to_json()) == primary


def test_sync_in_rings_gate_the_bridge_on_the_journaler(tmp_path):
    config = Config(
        data_dir=str(tmp_path),
        ring_capacity=16,
        cluster=ClusterSettings(nats="nats://127.0.0.1:4222", replication="sync"),
    )
    topology = Topology.for_config(config, prefix=f"rxj{tmp_path.name[-6:]}")
    rings = topology.create()
    try:
        ring = topology.attach_in("ACME")
        producer = ring.producer()
        producer.write(make_records(COMMAND, 3, symbol="ACME"))
        bridge = ring.consumer(BRIDGE)
        assert not bridge.poll()  # the journaler has not taken them: nothing for the bridge
        journaler = ring.consumer(JOURNALER)
        journaler.poll()
        journaler.commit(1)
        assert len(bridge.poll()) == 2
        ring.close()
    finally:
        for r in rings:
            r.close()
        topology.remove()
