"""The notifier as a running process, fed by real out-rings.

Each test makes an exchange's real shared memory, runs the notifier stage on it as
``ringex up`` does, matches orders with the real ``Matcher`` and writes its events
into the out-ring, then commits the journaler's cursor as the journaler would after
its LMDB commit. Clients connect over real loopback TCP and WebSocket
(``tests/support/md_load.py`` has the harness). One test runs the real journaler
instead and restarts the notifier on the same rings; two drive ``Notifier``
in-process through its ring pump, to fill its sockets and to watch its slices.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import socket
import time

import pytest
from support.md_load import MdExchange, NotifierProcess, command, expected_bytes, load_main, raise_nofile, reap
from support.reference_book import ReferenceBook

from ringex.codes import EventKind, Op, OrderType, Side, Tif
from ringex.market_data.client import ConnectionClosed, LocalBook, MdClient
from ringex.order_entry.accounts import AccountStore
from ringex.records import COMMAND, encode_symbol, make_records
from ringex.topology import JOURNALER

pytestmark = pytest.mark.timeout(300)

TAKER, MAKER, THIRD = 1001, 1002, 1003


@pytest.fixture
def exchange(tmp_path):
    ex = MdExchange(tmp_path, symbols=("ACME", "BOLT"), capacity=1 << 16)
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture
def accounts(tmp_path):
    store = AccountStore.open(tmp_path)
    return {acct: store.add(acct) for acct in (TAKER, MAKER, THIRD)}


def start(exchange, heartbeat=5.0, **market_data) -> NotifierProcess:
    return exchange.start_notifier(heartbeat_s=heartbeat, **market_data)


@pytest.fixture
def notifier(exchange, accounts):
    proc = start(exchange)
    try:
        yield proc
    finally:
        proc.stop()


def client(notifier, *, websocket=False) -> MdClient:
    return MdClient("127.0.0.1", notifier.ws_port if websocket else notifier.tcp_port, websocket=websocket)


def logged_in(notifier, account, token, **kw) -> MdClient:
    c = client(notifier, **kw)
    c.login(account, token)
    assert c.recv()["type"] == "logged_in"
    c.subscribe("orders")
    assert c.recv()["type"] == "subscribed"
    snapshot = c.recv()  # the account's open orders, before any event after them
    assert (snapshot["type"], snapshot["account"]) == ("orders_snapshot", account)
    return c


def until(client_, predicate, timeout=30.0):
    """Messages up to the first that satisfies ``predicate`` (robust on a loaded box,
    unlike waiting for a quiet period)."""
    return client_.recv_until(predicate, timeout)


def up_to_pong(client_):
    """Everything the session was sent before its pong. The notifier publishes a batch
    to every session in one synchronous step, so after another session has seen a
    batch, this shows whether the batch had anything for this one."""
    client_.ping()
    msgs = until(client_, lambda m: m["type"] == "pong")
    return msgs[:-1]


def trades_in(events) -> int:
    return int((events["kind"] == EventKind.TRADE).sum())


def assert_no_gaps(messages):
    last: dict[tuple, int] = {}
    for m in messages:
        if m.get("seq") is None or m["type"] in ("subscribed", "unsubscribed"):
            if m["type"] == "subscribed":
                last[(m["channel"], m["symbol"], m.get("levels"))] = m["seq"]
            continue
        key = (m["channel"], m["symbol"] if m["channel"] != "orders" else None, m.get("levels"))
        if m["type"] in ("bbo", "depth_snapshot") and m["seq"] == last.get(key):
            continue  # a snapshot repeats the seq of the ack before it
        assert m["seq"] == last[key] + 1, (key, last[key], m)
        last[key] = m["seq"]


def test_crossing_orders_yield_one_trade_and_a_fill_for_each_owner_and_nothing_for_a_third(
    exchange, notifier, accounts
):
    tape = client(notifier)
    tape.subscribe("trades", "ACME")
    assert tape.recv()["type"] == "subscribed"
    taker, maker, third = (logged_in(notifier, a, accounts[a]) for a in (TAKER, MAKER, THIRD))
    maker_oid, maker_coid, _ = exchange.new("ACME", Side.SELL, 100, 10, MAKER)
    taker_oid, taker_coid, _ = exchange.new("ACME", Side.BUY, 100, 4, TAKER)
    exchange.journal()

    (trade,) = [m for m in until(tape, lambda m: m["type"] == "trade") if m["type"] == "trade"]
    assert trade["price"] == 100 and trade["qty"] == 4 and trade["seq"] == 1
    assert (trade["maker_order_id"], trade["taker_order_id"]) == (maker_oid, taker_oid)
    assert trade["ts_ns"] > 0 and trade["trade_id"] > 0

    taker_msgs = until(taker, lambda m: m["type"] == "fill")
    maker_msgs = until(maker, lambda m: m["type"] == "fill")
    assert up_to_pong(taker) == [] and up_to_pong(maker) == []
    (taker_fill,) = [m for m in taker_msgs if m["type"] == "fill"]
    (maker_fill,) = [m for m in maker_msgs if m["type"] == "fill"]
    assert (taker_fill["order_id"], taker_fill["client_order_id"], taker_fill["remaining"]) == (
        taker_oid,
        taker_coid,
        0,
    )
    assert (maker_fill["order_id"], maker_fill["client_order_id"], maker_fill["remaining"]) == (
        maker_oid,
        maker_coid,
        6,
    )
    assert [m["type"] for m in maker_msgs] == ["accepted", "fill"]
    assert all(m["account"] == TAKER for m in taker_msgs)
    assert all(m["account"] == MAKER for m in maker_msgs)
    assert up_to_pong(third) == []

    # cancel and replace reach the owner with the order's ids; a stranger's cancel is rejected
    exchange.replace("ACME", maker_oid, 101, 5, MAKER)
    exchange.cancel("ACME", maker_oid, THIRD)
    exchange.cancel("ACME", maker_oid, MAKER)
    exchange.journal()
    assert [m["type"] for m in until(maker, lambda m: m["type"] == "cancelled")] == ["replaced", "cancelled"]
    (rejected,) = until(third, lambda m: m["type"] == "rejected")
    assert rejected["type"] == "rejected" and rejected["reason"] == "not_owner"
    assert rejected["order_id"] == maker_oid


def _random_commands(rng, symbol, n, live, ids):
    cmds = make_records(COMMAND, n)
    for i in range(n):
        rec = cmds[i]
        rec["symbol"] = encode_symbol(symbol)
        rec["account"] = rng.choice((TAKER, MAKER, THIRD))
        rec["client_order_id"] = rng.randrange(1, 1 << 30)
        r = rng.random()
        if r < 0.6 or not live:
            ids[0] += 1
            rec["msg_type"] = Op.NEW
            rec["order_id"] = ids[0]
            rec["side"] = rng.choice((Side.BUY, Side.SELL))
            rec["order_type"] = OrderType.LIMIT
            rec["tif"] = Tif.GTC
            rec["price"] = rng.randint(90, 110)
            rec["qty"] = rng.randint(1, 50)
            live.append(ids[0])
        elif r < 0.85:
            rec["msg_type"] = Op.CANCEL
            rec["order_id"] = rng.choice(live)
        else:
            rec["msg_type"] = Op.REPLACE
            rec["order_id"] = rng.choice(live)
            rec["price"] = rng.randint(90, 110)
            rec["qty"] = rng.randint(1, 50)
        rec["ts_ns"] = time.time_ns()
    return cmds


def test_depth_snapshot_plus_updates_equals_the_book_after_a_random_stream_without_seq_gaps(exchange, notifier):
    rng = random.Random(1234)
    live: list[int] = []
    ids = [10_000]
    early = client(notifier)
    early.subscribe("depth", "ACME", levels=5)
    early.subscribe("trades", "ACME")
    early.subscribe("bbo", "ACME")
    # Subscriptions take effect when the notifier reads them: wait for that before
    # trading, or the first trades are (rightly) published before the session wanted them.
    received = up_to_pong(early)
    late = None
    n_trades = 0
    reference = ReferenceBook(exchange.matchers["ACME"].spec)
    for step in range(40):
        cmds = _random_commands(rng, "ACME", rng.randint(1, 30), live, ids)
        reference.apply(cmds, exchange.seq["ACME"])
        n_trades += trades_in(exchange.submit("ACME", cmds))
        exchange.journal()
        if step == 20:
            late = client(notifier, websocket=True)
            late.subscribe("depth", "ACME", levels=20)
        if step % 10 == 0:
            received += early.drain(0.05)
    # a last trade marks the end: once it is in, so is everything before it
    ids[0] += 1
    marker = command("ACME", Op.NEW, side=Side.SELL, price=1, qty=1, account=MAKER, order_id=ids[0])
    reference.apply(marker, exchange.seq["ACME"])
    marked = trades_in(exchange.submit("ACME", marker))
    assert marked == 1  # a sell at the lowest price trades with the best bid
    exchange.journal()
    n_trades += marked
    if not any(m["type"] == "trade" and m["seq"] == n_trades for m in received):
        received += until(early, lambda m: m["type"] == "trade" and m["seq"] == n_trades)
    received += up_to_pong(early)  # the depth and bbo updates of that last batch
    late_msgs = up_to_pong(late)
    matcher = exchange.matchers["ACME"]
    # the oracle: the slow, obviously correct book, fed the same commands
    levels_of = {Side.BUY: {}, Side.SELL: {}}
    for _, _, _, side, price, qty in reference.resting():
        levels_of[side][price] = levels_of[side].get(price, 0) + qty
    for msgs, levels in ((received, 5), (late_msgs, 20)):
        book = LocalBook()
        for m in msgs:
            book.on_message(m)
        want = {
            "bids": sorted(levels_of[Side.BUY].items(), reverse=True)[:levels],
            "asks": sorted(levels_of[Side.SELL].items())[:levels],
        }
        assert book.top(levels) == want
        got = matcher.depth(levels)
        assert want == {s: [(p, q) for p, q, _ in got[s]] for s in ("bids", "asks")}
        assert_no_gaps(msgs)
    bbo = [m for m in received if m["type"] == "bbo"][-1]
    assert (bbo["bid_price"], bbo["ask_price"]) == (matcher.best_bid(), matcher.best_ask())
    trades = [m for m in received if m["type"] == "trade"]
    assert [t["seq"] for t in trades] == list(range(1, n_trades + 1))
    assert [t["trade_id"] for t in trades] == sorted(t["trade_id"] for t in trades)


def test_events_are_published_without_waiting_for_the_journaler(exchange, notifier):
    """The matcher only sees durable commands, so an event may go out at once: the
    notifier does not wait for the journaler to have recorded the event itself."""
    tape = client(notifier)
    tape.subscribe("trades", "BOLT")
    assert tape.recv()["type"] == "subscribed"
    exchange.new("BOLT", Side.SELL, 100, 1, MAKER)
    exchange.new("BOLT", Side.BUY, 100, 1, TAKER)  # nobody plays the journaler here
    assert [m["seq"] for m in until(tape, lambda m: m["type"] == "trade")] == [1]
    assert exchange.rings["BOLT"].consumer_cursor(JOURNALER) == -1


def test_websocket_and_tcp_give_the_same_messages(exchange, notifier, accounts):
    tcp = logged_in(notifier, MAKER, accounts[MAKER])
    ws = logged_in(notifier, MAKER, accounts[MAKER], websocket=True)
    for c in (tcp, ws):
        c.subscribe("trades", "ACME")
        c.subscribe("depth", "ACME", levels=3)
        c.subscribe("bbo", "ACME")
    # Both subscribed before anything trades: otherwise one session's subscriptions
    # could take effect after the batch and the other's before, and they would
    # rightly differ (a snapshot that includes the trade instead of the trade).
    before_tcp, before_ws = (up_to_pong(c) for c in (tcp, ws))
    assert before_tcp == before_ws
    exchange.new("ACME", Side.SELL, 101, 5, MAKER)
    exchange.new("ACME", Side.SELL, 102, 5, MAKER)
    exchange.new("ACME", Side.BUY, 102, 7, TAKER)
    exchange.journal()

    # The notifier may take the three commands' events in one batch or several (it reads
    # whatever the matcher has published); either way every session is sent the same
    # batches, and the last one ends with the depth update that leaves 3 at 102.
    def last(m):
        return m["type"] == "depth_update" and [102, 3] in m["asks"]

    got_tcp, got_ws = (until(c, last) + up_to_pong(c) for c in (tcp, ws))
    assert got_tcp == got_ws
    assert {m["type"] for m in before_tcp + got_tcp} >= {"trade", "fill", "depth_update", "bbo", "depth_snapshot"}


def test_malformed_json_and_unknown_ops_get_errors_and_a_session_that_keeps_sending_them_is_closed(notifier):
    for websocket in (False, True):
        c = client(notifier, websocket=websocket)
        c.send(b"{not json")
        assert c.recv() == {"type": "error", "channel": None, "symbol": None, "seq": None, "reason": "malformed JSON"}
        c.send({"op": "teleport"})
        assert "unknown op" in c.recv()["reason"]
        c.subscribe("trades", "NOPE")
        assert "unknown symbol" in c.recv()["reason"]
        c.subscribe("orders")
        assert "login" in c.recv()["reason"]
        c.ping()
        assert c.recv()["type"] == "pong"  # still served after errors
        c.send(b"]")
        last = c.recv()
        assert last["type"] == "error" and "too many errors" in last["reason"]
        with pytest.raises(ConnectionClosed):
            c.recv(5)


def test_bad_credentials_close_the_session(notifier, accounts):
    c = client(notifier)
    c.login(TAKER, accounts[TAKER] ^ 1)
    msg = c.recv()
    assert msg["type"] == "error" and msg["reason"] == "bad credentials"
    with pytest.raises(ConnectionClosed):
        c.recv(5)


def test_idle_sessions_get_heartbeats(exchange, tmp_path, accounts):
    proc = start(exchange, heartbeat=0.3)
    try:
        c = client(proc)
        beats = [c.recv(3) for _ in range(3)]
        assert [b["type"] for b in beats] == ["heartbeat"] * 3
    finally:
        proc.stop()


def test_a_stalled_subscriber_is_disconnected_while_the_others_receive_everything(exchange, tmp_path, accounts):
    # a long grace: the stalled client reads only after every burst, and must then
    # find the error after the part of the stream it was sent
    proc = start(exchange, max_queue_bytes=65536, close_grace_s=120.0)
    try:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", proc.tcp_port))
        stalled.sendall(b'{"op":"subscribe","channel":"trades","symbol":"ACME"}\n')
        readers = [client(proc) for _ in range(3)]
        for r in readers:
            r.subscribe("trades", "ACME")
            assert r.recv()["type"] == "subscribed"
        total = 0
        got = [0] * len(readers)
        for _ in range(12):
            exchange.cross_burst("ACME", 2000)
            exchange.journal()
            total += 2000
            for i, r in enumerate(readers):  # keep up, as a healthy subscriber does
                while got[i] < total:
                    m = r.recv(20)
                    if m["type"] == "trade":
                        assert m["seq"] == got[i] + 1
                        got[i] += 1
        assert got == [total] * len(readers)
        # now read what the stalled one was sent: a prefix of the trades, then the reason
        stalled.settimeout(20)
        data = b""
        while chunk := stalled.recv(1 << 20):
            data += chunk
        lines = [json.loads(line) for line in data.splitlines()]
        trades = [m for m in lines if m["type"] == "trade"]
        assert len(trades) < total
        assert [t["seq"] for t in trades] == list(range(1, len(trades) + 1))
        assert lines[-1]["type"] == "error" and "slow consumer" in lines[-1]["reason"]
    finally:
        proc.stop()


@pytest.mark.slow
def test_ten_thousand_subscribers_all_receive_every_trade_of_a_burst(exchange, tmp_path, accounts):
    quick = os.environ.get("RINGEX_QUICK") == "1"
    subs = 1000 if quick else 10_000
    procs = 2 if quick else 4
    trades = 50
    raise_nofile()
    proc = start(exchange, heartbeat=3600)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    loaders = [
        ctx.Process(
            target=load_main, args=(queue, "127.0.0.1", proc.tcp_port, subs // procs, "ACME", trades, trades, 240)
        )
        for _ in range(procs)
    ]
    try:
        for p in loaders:
            p.start()
        ready = 0
        while ready < subs:
            kind, *body = queue.get(timeout=240)
            assert kind != "error", body[0]
            ready += body[0]
        events = exchange.cross_burst("ACME", trades)
        exchange.journal()
        counts, sizes = [], []
        for _ in loaders:
            kind, *body = queue.get(timeout=240)
            assert kind != "error", body[0]
            counts += body[0]
            sizes += body[5]
        assert len(counts) == subs
        assert min(counts) == trades and max(counts) == trades
        # the last line each socket got was trade ``trades``; the byte count says
        # every line before it came too, once and unaltered
        assert set(sizes) == {expected_bytes("ACME", events)}
    finally:
        reap(loaders)
        proc.stop()


def test_watch_shows_trades_and_the_top_of_the_book_and_an_accounts_orders(exchange, notifier, accounts):
    import subprocess
    import sys

    exchange.new("ACME", Side.SELL, 105, 9, MAKER)
    exchange.new("ACME", Side.BUY, 99, 4, TAKER)
    exchange.new("ACME", Side.BUY, 105, 2, TAKER)
    exchange.journal()
    base = [sys.executable, "-m", "ringex", "watch", "--port", str(notifier.tcp_port), "--duration", "6"]
    env = {**os.environ, "COLUMNS": "120", "RINGEX_ACCOUNT": str(TAKER), "RINGEX_TOKEN": str(accounts[TAKER])}
    book = subprocess.run([*base, "ACME"], capture_output=True, text=True, timeout=60, env=env)
    assert book.returncode == 0, book.stderr
    assert "ACME top 5" in book.stdout
    assert "105" in book.stdout and "99" in book.stdout  # the resting levels
    orders = subprocess.Popen([*base, "--orders"], stdout=subprocess.PIPE, text=True, env=env)
    # trade until the watch ends: however long it takes to start and subscribe on a
    # loaded machine, fills arrive while it is subscribed
    while orders.poll() is None:
        exchange.new("ACME", Side.SELL, 105, 1, MAKER)
        exchange.new("ACME", Side.BUY, 105, 1, TAKER)
        exchange.journal()
        time.sleep(0.3)
    out, _ = orders.communicate(timeout=60)
    assert orders.returncode == 0
    assert "my orders" in out and "fill" in out
    assert "[live]" in out and "[connecting]" not in out.splitlines()[-1]
    # the resting buy at 99 came first, from the orders snapshot
    assert "open orders when subscribed (1)" in out
    assert any(" buy " in line and " 99 " in line and " 4 " in line for line in out.splitlines())


def _depth_of(notifier, symbol, levels):
    c = client(notifier)
    c.subscribe("depth", symbol, levels=levels)
    book = LocalBook()
    for m in c.recv_until(lambda m: m["type"] == "depth_snapshot"):
        book.on_message(m)
    c.close()
    return book.top(levels)


def _depth_becomes(notifier, exchange, symbol, levels, timeout=30.0):
    """The notifier's depth snapshot once it equals the matcher's book (it may still be
    reading the ring tail); fails after ``timeout``."""
    want = _matcher_top(exchange, symbol, levels)
    deadline = time.monotonic() + timeout
    while (got := _depth_of(notifier, symbol, levels)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == want


def _matcher_top(exchange, symbol, levels):
    want = exchange.matchers[symbol].depth(levels)
    return {s: [(p, q) for p, q, _ in want[s]] for s in ("bids", "asks")}


def test_with_the_real_journaler_a_restarted_notifier_rebuilds_the_book_from_the_journal(tmp_path, accounts):
    ex = MdExchange(tmp_path, symbols=("ACME", "BOLT"), capacity=1 << 14, in_rings=True)
    first = second = None
    try:
        first = start(ex)
        tape = client(first)
        tape.subscribe("trades", "ACME")
        assert tape.recv()["type"] == "subscribed"
        rng = random.Random(77)
        live: list[int] = []
        ids = [50_000]
        n_trades = 0
        for _ in range(15):
            n_trades += trades_in(ex.submit("ACME", _random_commands(rng, "ACME", 20, live, ids)))
        ex.wait_journaled()
        assert n_trades > 0
        msgs = until(tape, lambda m: m["type"] == "trade" and m["seq"] == n_trades)
        assert [m["seq"] for m in msgs if m["type"] == "trade"] == list(range(1, n_trades + 1))
        _depth_becomes(first, ex, "ACME", 10)
        first.stop()
        # events published while no notifier runs, then a new notifier on the same rings
        for _ in range(10):
            ex.submit("ACME", _random_commands(rng, "ACME", 20, live, ids))
        ex.wait_journaled()
        second = start(ex)
        _depth_becomes(second, ex, "ACME", 10)
        # and it keeps the view in step with new events
        ex.submit("ACME", _random_commands(rng, "ACME", 40, live, ids))
        ex.wait_journaled()
        _depth_becomes(second, ex, "ACME", 10)
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.stop()
        ex.close()


async def test_fan_out_threads_and_full_sockets_lose_nothing_for_sessions_that_stay(tmp_path):
    """In-process: many sessions whose sockets fill up (they read nothing while the
    batches go out) are served from their queues, in order, by the threaded fan-out."""
    import trio

    from ringex.market_data.notifier import Notifier
    from ringex.market_data.sources import RingEventSource

    ex = MdExchange(tmp_path, symbols=("ACME",), capacity=1 << 16)
    source = RingEventSource(ex.rings["ACME"], "ACME")
    notifier = Notifier(
        ["ACME"], [source], tcp_port=0, ws_port=None, fan_out_threads=1, max_queue_bytes=64 << 20, sndbuf=4096
    )
    n_sessions, bursts, per_burst = 80, 4, 1000
    try:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(notifier.run)
            clients = []
            for _ in range(n_sessions):
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up fast
                await sock.connect(("127.0.0.1", ports["tcp"]))
                await sock.send(b'{"op":"subscribe","channel":"trades","symbol":"ACME"}\n')
                clients.append(sock)
            while notifier.statistics().subscriptions < n_sessions:
                await trio.sleep(0.01)
            for b in range(bursts):
                ex.cross_burst("ACME", per_burst)
                ex.journal()
                with trio.fail_after(60):
                    while notifier.statistics().events < 2 * per_burst * (b + 1) or notifier.fan_out.pending:
                        await trio.sleep(0.01)
                # after the first burst every socket is full: all later sends are queued
                assert min(s.queued_bytes for s in notifier.sessions) > 0

            counts = [0] * n_sessions

            async def read_all(i, sock):
                # the ack carries seq 0, then trades 1, 2, ...: check them all in C-speed scans
                buf = b""
                expect = 0
                while expect <= bursts * per_burst:
                    buf += await sock.recv(1 << 20)
                    cut = buf.rfind(b"\n") + 1
                    seqs = [int(x) for x in re.findall(rb'"seq":(\d+)', buf[:cut])]
                    assert seqs == list(range(expect, expect + len(seqs)))
                    expect += len(seqs)
                    buf = buf[cut:]
                counts[i] = expect - 1

            with trio.fail_after(120):
                async with trio.open_nursery() as readers:
                    for i, sock in enumerate(clients):
                        readers.start_soon(read_all, i, sock)
            assert counts == [bursts * per_burst] * n_sessions
            assert notifier.statistics().slow_consumers == 0
            for sock in clients:
                sock.close()
            nursery.cancel_scope.cancel()
    finally:
        source.close()
        ex.close()


def test_the_websocket_port_closes_a_client_that_does_not_speak_http(notifier):
    with socket.create_connection(("127.0.0.1", notifier.ws_port), timeout=10) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")  # neither a handshake nor an HTTP request
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 ") and b'"type"' not in data  # closed, no JSON
    c = client(notifier, websocket=True)  # and the port still serves real clients
    c.ping()
    assert c.recv()["type"] == "pong"


@pytest.mark.parametrize("coalesce_s", [0.0, 0.005])
async def test_a_sliced_fan_out_gives_every_session_every_trade_in_order_and_replies_after_what_it_covers(
    tmp_path, coalesce_s
):
    """In-process, through the ring pump, with 3 sessions per slice so the sweep has
    many slices and trades arrive while it is mid-sweep: every session gets every
    trade once and in seq order; a session subscribing mid-stream continues exactly
    from its ack's seq; and a pong comes after every trade applied before the ping,
    even for a session whose slice the sweep had not reached yet. With a coalescing
    window too (turns of a slice at least 5 ms apart, so batches pile up per turn)."""
    import trio

    from ringex.market_data.notifier import Notifier
    from ringex.market_data.sources import RingEventSource

    ex = MdExchange(tmp_path, symbols=("ACME",), capacity=1 << 16)
    source = RingEventSource(ex.rings["ACME"], "ACME")
    notifier = Notifier(
        ["ACME"], [source], tcp_port=0, ws_port=None, fan_out_threads=1, slice_sessions=3, coalesce_s=coalesce_s
    )
    n_sessions, bursts, per_burst = 30, 40, 25
    total = bursts * per_burst
    subscribe = b'{"op":"subscribe","channel":"trades","symbol":"ACME"}\n'

    async def lines_of(sock, buf=b""):
        while True:
            data = await sock.recv(1 << 16)
            assert data, "connection closed"
            buf += data
            *complete, buf = buf.split(b"\n")
            for line in complete:
                yield json.loads(line)

    async def read_trades(sock, got, key):
        """Trades up to seq ``total``, checked contiguous from the ack's seq."""
        expect = None
        async for m in lines_of(sock):
            if m["type"] == "subscribed":
                expect = m["seq"] + 1
                got[key] = []
                continue
            assert m["type"] == "trade" and m["seq"] == expect, (key, expect, m)
            got[key].append(m["seq"])
            expect += 1
            if m["seq"] == total:
                return

    async def connect(port):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        await sock.send(subscribe)
        return sock

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                ports = await nursery.start(notifier.run)
                socks = [await connect(ports["tcp"]) for _ in range(n_sessions)]
                while notifier.statistics().subscriptions < n_sessions:
                    await trio.sleep(0.01)
                assert len(notifier.fan_out.slices) == n_sessions // 3
                got: dict[object, list[int]] = {}
                async with trio.open_nursery() as readers:
                    for i, sock in enumerate(socks):
                        readers.start_soon(read_trades, sock, got, i)
                    for b in range(bursts):
                        ex.cross_burst("ACME", per_burst)
                        ex.journal()
                        if b == bursts // 2:
                            late = await connect(ports["tcp"])
                            readers.start_soon(read_trades, late, got, "late")
                        await trio.sleep(0.002)
                assert all(got[i] == list(range(1, total + 1)) for i in range(n_sessions))
                # it joined mid-stream: from its ack's seq + 1 (checked by read_trades) to the end
                assert 1 < got["late"][0] <= total and got["late"] == list(range(got["late"][0], total + 1))

                # a pong follows every trade applied before the ping
                events = ex.published("ACME") + 1
                ex.cross_burst("ACME", per_burst)
                ex.journal()
                while notifier.statistics().events < events + 2 * per_burst:
                    await trio.sleep(0)
                last = socks[-1]  # in the last slice: the one the sweep reaches last
                await last.send(b'{"op":"ping"}\n')
                seen = []
                async for m in lines_of(last):
                    seen.append(m["type"] if m["type"] != "trade" else m["seq"])
                    if m["type"] == "pong":
                        break
                assert seen == [*range(total + 1, total + per_burst + 1), "pong"]
                for sock in [*socks, late]:
                    sock.close()
                nursery.cancel_scope.cancel()
    finally:
        source.close()
        ex.close()
        ex.close()
