"""The cluster with a real nats-server: a primary, two market data followers and a warm
standby on one machine (their own data directories and ports), under an order flow,
through a kill -9 of the bridge, a restart of nats-server, a restart of a follower,
and, at the end, the loss of the primary and the standby's promotion.

::

    OrderFlow ──► primary ──bridge──► nats-server ──► follower a ◄── Recorders (never restarted)
                    ▲  │                 │     └────► follower b ◄── Recorders (b stopped, restarted)
     promote ───────┘  Recorders         └──────────► standby ──promote──► the new primary
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
from support.cluster import (
    ClusterNode,
    OrderFlow,
    Recorder,
    recover_json,
    remove_shared_memory,
    start_nats,
    stream_batches,
)

from ringex.order_entry.accounts import ACCOUNTS_FILE
from ringex.order_entry.client import OrderClient
from ringex.topology import BRIDGE, CMD, EVT
from ringex.wal import Journal

QUICK = os.environ.get("RINGEX_QUICK") == "1"
PAIRS = 300 if QUICK else 1500
SYMBOLS = ("ACME", "BOLT")

pytestmark = pytest.mark.slow


def cluster_toml(url: str, replication: str) -> str:
    symbols = "".join(f"[symbols.{s}]\n" for s in SYMBOLS)
    return f'{symbols}\n[cluster]\nnats = "{url}"\nreplication = "{replication}"\n'


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def journal_ends(data) -> dict[str, tuple[int, int]]:
    with Journal(data, readonly=True) as journal:
        return {s: journal.ends(s) for s in SYMBOLS}


def assert_stream_is_the_journal(url: str, kind: str, data) -> None:
    """Exactly once: the subject's messages follow each other with no gap and no
    overlap from sequence 0, and their records are the journal's, byte for byte."""
    batches = stream_batches(url, f"ringex_{kind}")
    with Journal(data, readonly=True) as journal:
        for symbol in SYMBOLS:
            mine = [b for b in batches if b[0] == f"ringex.{kind}.{symbol}"]
            expected_first = 0
            for _, first, count, _ in mine:
                assert first == expected_first, f"{kind} {symbol}: a message starts at {first}, not {expected_first}"
                expected_first = first + count
            read = journal.read_commands if kind == CMD else journal.read_events
            journaled = b"".join(records.tobytes() for _, records in read(symbol, 0, expected_first))
            assert journaled == b"".join(b[3] for b in mine), f"{kind} {symbol}: JetStream's records differ"
            if kind == CMD:
                assert expected_first == journal.next_seq(symbol), f"{symbol}: commands missing from JetStream"


def kill_all(node: ClusterNode) -> None:
    for pid in node.pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait()
    node.proc.stdout.close()
    node.proc = None
    remove_shared_memory(node.data)


@pytest.fixture
def nodes():
    made: list = []
    yield made
    for node in reversed(made):
        node.stop()
        if isinstance(node, ClusterNode):
            remove_shared_memory(node.data)


def test_followers_and_a_standby_follow_a_primary_through_faults_and_promotion(tmp_path, nodes):
    nats = start_nats(tmp_path / "nats")
    nodes.append(nats)
    toml = cluster_toml(nats.url, "sync")
    primary = ClusterNode(tmp_path / "primary", "up", toml).start()
    nodes.append(primary)
    followers = {name: ClusterNode(tmp_path / name, "follow", toml).start() for name in ("a", "b")}
    nodes.extend(followers.values())
    standby = ClusterNode(tmp_path / "standby", "standby", toml).start()
    nodes.append(standby)
    account, token = next(iter(primary.accounts.items()))

    watch = {
        (host, symbol): Recorder(node.md_port, symbol)
        for host, node in (("primary", primary), *followers.items())
        for symbol in SYMBOLS
    }
    flow = OrderFlow(primary.order_port, account, token, SYMBOLS, PAIRS).start()

    # faults mid-flow, each at its share of the flow
    wait_for(lambda: flow.done() >= PAIRS * 2 // 5, "a fifth of the flow")
    os.kill(primary.pid_of(BRIDGE), signal.SIGKILL)
    wait_for(lambda: flow.done() >= PAIRS * 4 // 5, "two fifths of the flow")
    nats.stop()
    time.sleep(0.5)
    nats.start()
    wait_for(lambda: flow.done() >= PAIRS * 6 // 5, "three fifths of the flow")
    before_b = {s: watch.pop(("b", s)) for s in SYMBOLS}
    followers["b"].stop()
    for recorder in before_b.values():
        recorder.close()
    time.sleep(0.5)
    followers["b"].start()
    for symbol in SYMBOLS:
        watch["b", symbol] = Recorder(followers["b"].md_port, symbol)
    flow.join()
    assert len(flow.acked) == 2 * PAIRS and flow.rejected == 0

    # every subscriber sees every trade once, in order, with the primary's seq
    for symbol in SYMBOLS:
        reference = watch["primary", symbol].trades()
        assert [m["seq"] for m in reference] == list(range(1, len(reference) + 1))
        last = reference[-1]["seq"]
        assert last >= PAIRS // len(SYMBOLS) // 2
        for host in ("a", "b"):
            watch[host, symbol].wait_trades(last)
        time.sleep(0.3)  # anything extra would have arrived by now
        assert watch["a", symbol].trades() == reference, f"follower a's {symbol} trades differ from the primary's"
        # the bbo stream is numbered per command, so it is the same on every host too
        assert watch["a", symbol].bbos() == watch["primary", symbol].bbos()
        # follower b: until it stopped, a prefix; after its restart, the rest, contiguous
        early = before_b[symbol].trades()
        assert early == reference[: len(early)]
        late = watch["b", symbol].trades()
        assert late and late == reference[late[0]["seq"] - 1 :]
    for recorder in watch.values():
        recorder.close()

    # the bridge's copy is the journal, exactly once (despite the kill -9 and the outage)
    wait_for(
        lambda: all(
            lane["lag"] == 0 for kinds in primary.status()["bridge"]["lanes"].values() for lane in kinds.values()
        ),
        "the bridge to catch up",
    )
    assert_stream_is_the_journal(nats.url, CMD, primary.data)
    assert_stream_is_the_journal(nats.url, EVT, primary.data)

    # the standby: the same journal, the same books at the same sequence
    wait_for(lambda: journal_ends(standby.data) == journal_ends(primary.data), "the standby to catch up")
    on_primary, on_standby = recover_json(primary.data), recover_json(standby.data)
    for symbol in SYMBOLS:
        for key in ("commands", "events", "state_hash", "resting_orders", "best_bid", "best_ask"):
            assert on_standby[symbol][key] == on_primary[symbol][key], f"{symbol} {key}"

    # the primary is lost; the standby is promoted and has every acknowledged order
    kill_all(primary)
    nodes.remove(primary)
    shutil.copy(primary.data / ACCOUNTS_FILE, standby.data / ACCOUNTS_FILE)
    promoted = ClusterNode(standby.data, "promote", toml)
    nodes.append(promoted)
    promoted.start()
    standby.proc.wait(30)
    with Journal(standby.data, readonly=True) as journal:
        for symbol in SYMBOLS:
            commands = np.concatenate([r["order_id"] for _, r in journal.read_commands(symbol)])
            for _, seq, order_id in (a for a in flow.acked if a[0] == symbol):
                assert seq < len(commands) and commands[seq] == order_id, f"acked {symbol} seq {seq} is missing"
            ends = {s: journal.next_seq(s) for s in SYMBOLS}
    with OrderClient.connect("127.0.0.1", promoted.order_port) as client:
        assert client.login(account, token).ok
        reply = client.buy("ACME", 5, 90)
        assert reply.ok and reply.seq == ends["ACME"]
        assert reply.order_id > max(a[2] for a in flow.acked)
    # the new primary's bridge continues the streams where the old one left them
    wait_for(
        lambda: all(
            lane["lag"] == 0 for kinds in promoted.status()["bridge"]["lanes"].values() for lane in kinds.values()
        ),
        "the promoted primary's bridge",
    )
    assert_stream_is_the_journal(nats.url, CMD, standby.data)


def test_async_replication_trades_through_a_nats_outage_and_catches_up(tmp_path, nodes):
    nats = start_nats(tmp_path / "nats")
    nodes.append(nats)
    primary = ClusterNode(tmp_path / "primary", "up", cluster_toml(nats.url, "async")).start()
    nodes.append(primary)
    account, token = next(iter(primary.accounts.items()))
    nats.stop()
    # acks do not wait for JetStream in async mode: trading goes on without it
    flow = OrderFlow(primary.order_port, account, token, SYMBOLS, 50).start()
    flow.join(60)
    assert len(flow.acked) == 100
    time.sleep(0.6)  # one status interval
    bridge = primary.status()["bridge"]
    # ringex status shows the lag: every command of the flow, and for how long
    assert not bridge["connected"]
    assert bridge["lanes"]["ACME"][CMD]["lag"] == 50 and bridge["lanes"]["ACME"][CMD]["lag_s"] > 0.5
    nats.start()
    wait_for(
        lambda: all(
            lane["lag"] == 0 for kinds in primary.status()["bridge"]["lanes"].values() for lane in kinds.values()
        ),
        "the bridge to catch up from the journal",
    )
    assert_stream_is_the_journal(nats.url, CMD, primary.data)
    assert_stream_is_the_journal(nats.url, EVT, primary.data)
