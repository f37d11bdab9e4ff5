"""The gateway process over real sockets, with the real exchange behind it.

Every test here runs the stages ``ringex up`` runs (``tests/support/order_entry.py``),
so a ``K`` waits for the real journaler's LMDB commit; a test that needs durability to
stall stops the journaler process (SIGSTOP) and watches the acks wait.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
from support.order_entry import ACCOUNT, OTHER, OTHER_TOKEN, SYMBOLS, TOKEN, OrderEntry

from ringex.codes import OrderType, Reason, Side, Tif
from ringex.control import ExchangeState
from ringex.order_entry.client import Reply, SessionClosed, replies_from_bytes
from ringex.order_entry.protocol import (
    COMMAND,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_new_order,
    encode_replace,
)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    ex = OrderEntry(
        tmp_path_factory.mktemp("gw"),
        journal_before={"ACME": 1000},
        rate_per_s=5000,
        burst=300,
        max_output_bytes=256 * 1024,
    )
    yield ex
    assert ex.close() == 0
    assert "Traceback" not in ex.log(), ex.log()


@pytest.fixture
def make_exchange(tmp_path):
    made = []

    def make(**kwargs) -> OrderEntry:
        ex = OrderEntry(tmp_path / f"x{len(made)}", **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.close()
        assert "Traceback" not in ex.log(), ex.log()


def read_replies(sock: socket.socket, n: int, timeout: float = 10.0) -> list[Reply]:
    buf = bytearray()
    sock.settimeout(timeout)
    while len(buf) < 64 * n:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    whole = len(buf) - len(buf) % 64
    return [r for r in replies_from_bytes(bytes(buf[:whole])) if r.msg_type != "H"]


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> list[Reply]:
    buf = bytearray()
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
    whole = len(buf) - len(buf) % 64
    return [r for r in replies_from_bytes(bytes(buf[:whole])) if r.msg_type != "H"]


##########################################################################################
# login rules
##########################################################################################


def test_login_accepted_then_orders_acked_with_journal_seq(exchange):
    with exchange.client() as c:
        assert c.session and c.session > 0
        r = c.buy("ACME", 10, 105)
        assert r.msg_type == "K" and r.reason == 0 and r.order_id > 0
        assert r.seq >= 1000  # ACME's journal had 1,000 commands: K carries the journal sequence
        slot = exchange.journaled("ACME", r.seq)
        assert slot["order_id"] == r.order_id and slot["account"] == ACCOUNT and slot["session"] == c.session
        assert slot["ts_ns"] == r.ts_ns and slot["qty"] == 10 and slot["price"] == 105
        b = c.sell("BOLT", 1, 7)
        assert b.msg_type == "K" and b.seq < 1000 and b.order_id > r.order_id


@pytest.mark.parametrize("account,token", [(ACCOUNT, TOKEN + 1), (999_999, TOKEN), (0, 0)])
def test_bad_credentials_get_j_and_the_session_is_closed(exchange, account, token):
    with exchange.raw() as s:
        s.sendall(encode_login(account, token) + encode_new_order("ACME", Side.BUY, 1, 100))
        replies = read_until_closed(s)
    assert [(r.msg_type, r.reason) for r in replies] == [("J", Reason.BAD_CREDENTIALS)]


def test_requests_before_login_and_a_second_login_are_rejected(exchange):
    with exchange.raw() as s:
        s.sendall(encode_new_order("ACME", Side.BUY, 1, 100, client_order_id=1))
        s.sendall(encode_heartbeat() + encode_login(ACCOUNT, TOKEN) + encode_login(ACCOUNT, TOKEN, client_order_id=3))
        replies = read_replies(s, 3)
    assert [(r.msg_type, r.reason) for r in replies] == [
        ("X", Reason.NOT_LOGGED_IN),
        ("A", 0),
        ("X", Reason.ALREADY_LOGGED_IN),
    ]
    assert replies[0].client_order_id == 1 and replies[2].client_order_id == 3


def test_slow_login_checks_run_off_the_loop_and_delay_no_one(exchange):
    with exchange.client() as bystander:
        attackers = [exchange.raw() for _ in range(8)]
        try:
            for i, a in enumerate(attackers):
                a.sendall(encode_login(ACCOUNT, TOKEN + 100 + i))  # each costs a full scrypt
            r = bystander.buy("ACME", 1, 100)
            assert r.msg_type == "K"
            # the bystander was answered while bad logins still queue for their check
            for a in attackers:
                a.setblocking(False)
            pending = 0
            early = {}
            for a in attackers:
                try:
                    early[a] = a.recv(64)
                except BlockingIOError:
                    pending += 1
            assert pending > 0
            for a in attackers:
                a.setblocking(True)
                got = replies_from_bytes(early[a]) if a in early else read_until_closed(a)
                assert [(x.msg_type, x.reason) for x in got] == [("J", Reason.BAD_CREDENTIALS)]
        finally:
            for a in attackers:
                a.close()


##########################################################################################
# every reject reason, over the wire
##########################################################################################

REJECTS = [
    (encode_new_order("NOPE", Side.BUY, 1, 100), Reason.UNKNOWN_SYMBOL),
    (
        encode_new_order("ACME", Side.BUY, 1, 100)[:1] + b"Q" + encode_new_order("ACME", Side.BUY, 1, 100)[2:],
        Reason.BAD_SIDE,
    ),
    (encode_new_order("ACME", Side.BUY, 1, 0, order_type=OrderType.MARKET, tif=Tif.GTC), Reason.BAD_ORDER_TYPE),
    (encode_new_order("ACME", Side.BUY, 1, 100, tif=b"Z"[0]), Reason.BAD_ORDER_TYPE),
    (encode_new_order("ACME", Side.BUY, 0, 100), Reason.BAD_QTY),
    (encode_new_order("ACME", Side.BUY, 501, 100), Reason.BAD_QTY),
    (encode_new_order("ACME", Side.BUY, 1, 103), Reason.BAD_PRICE),
    (encode_new_order("ACME", Side.BUY, 1, 1005), Reason.BAD_PRICE),
    (b"Z" + bytes(63), Reason.UNKNOWN_MESSAGE),
    (encode_cancel("ACME", 0), Reason.BAD_ORDER_ID),
    (encode_replace("ACME", 0, 100, 1), Reason.BAD_ORDER_ID),
    (encode_replace("ACME", 5, 100, 0), Reason.BAD_QTY),
]


def test_every_validation_reject_is_answered_with_its_code_in_order(exchange):
    with exchange.client() as c:
        before = exchange.stages.in_ring("ACME").producer_cursor
        for i, (frame, _) in enumerate(REJECTS):
            rec = np.frombuffer(frame, dtype=COMMAND).copy()
            rec["client_order_id"] = 100 + i
            c.send(rec.tobytes())
        got = [c.next_reply() for _ in REJECTS]
        assert [(r.msg_type, r.reason) for r in got] == [("X", want) for _, want in REJECTS]
        assert [r.client_order_id for r in got] == [100 + i for i in range(len(REJECTS))]
        assert exchange.stages.in_ring("ACME").producer_cursor == before  # nothing invalid reached the ring
        assert c.buy("ACME", 1, 100).msg_type == "K"  # a few unknown frames do not close a session


def test_not_ready_while_the_exchange_is_not_ready(exchange):
    with exchange.client() as c:
        for state in (ExchangeState.STARTING, ExchangeState.HALTED, ExchangeState.STOPPING):
            exchange.control.set_state(state)
            try:
                r = c.buy("ACME", 1, 100)
            finally:
                exchange.control.set_state(ExchangeState.READY)
            assert (r.msg_type, r.reason) == ("X", Reason.NOT_READY)
        assert c.buy("ACME", 1, 100).msg_type == "K"


def test_flood_is_throttled_while_another_session_is_acked(exchange):
    with exchange.client() as flood, exchange.client(account=OTHER, token=OTHER_TOKEN) as calm:
        n = 3000
        flood.send(b"".join(encode_new_order("BOLT", Side.SELL, 1, 50, client_order_id=i) for i in range(n)))
        calm_replies = [calm.buy("ACME", 1, 100) for _ in range(5)]
        flooded = [flood.next_reply() for _ in range(n)]
    assert all(r.msg_type == "K" for r in calm_replies)
    assert [r.client_order_id for r in flooded] == list(range(n))  # one reply each, in order
    kinds = {(r.msg_type, r.reason) for r in flooded}
    assert kinds == {("K", 0), ("X", Reason.THROTTLED)}
    assert sum(r.msg_type == "K" for r in flooded) < n


def test_in_flight_limit_throttles_while_the_journal_is_stalled(make_exchange):
    ex = make_exchange(max_in_flight=4)
    with ex.client() as c:
        ex.pause_journal()
        try:
            for i in range(6):
                c.submit_order("ACME", "buy", 1, 100, client_order_id=i)
            c.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.next_reply()  # the first four wait for the journal, the X's wait behind them
        finally:
            ex.resume_journal()
        c.sock.settimeout(10)
        got = [c.next_reply() for _ in range(6)]
    assert [(r.msg_type, r.reason) for r in got] == [("K", 0)] * 4 + [("X", Reason.THROTTLED)] * 2


def test_a_restarted_gateway_never_reissues_an_order_id(make_exchange):
    """A gateway killed while its orders wait for the journal: the next one starts only
    once the journaler has taken everything in the in-rings, and continues after the
    highest order id the journal then holds."""
    ex = make_exchange()
    with ex.client() as c:
        ex.pause_journal()  # nothing becomes durable: no K
        for i in range(5):
            c.submit_order("BOLT", "buy", 1, 10, client_order_id=i)
        deadline = time.monotonic() + 10
        while len(ex.published("BOLT")) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        ids_before = [int(x) for x in ex.published("BOLT")["order_id"]]
    assert len(ids_before) == 5
    ex.kill_gateway()
    ex.resume_journal()
    ex.start_gateway()
    with ex.client() as c:
        r = c.buy("ACME", 1, 100)
    assert r.msg_type == "K" and r.order_id == max(ids_before) + 1


##########################################################################################
# framing over TCP
##########################################################################################


def test_a_request_split_across_many_sends(exchange):
    with exchange.client() as c:
        frame = encode_new_order("ACME", Side.SELL, 3, 110, client_order_id=77) + encode_cancel("ACME", 5)
        for i in range(0, len(frame), 5):
            c.send(frame[i : i + 5])
            time.sleep(0.002)
        a, b = c.next_reply(), c.next_reply()
    assert (a.msg_type, a.client_order_id, a.qty, a.price) == ("K", 77, 3, 110)
    assert (b.msg_type, b.order_id) == ("K", 5)


def test_many_requests_in_one_send(exchange):
    with exchange.client(account=OTHER, token=OTHER_TOKEN) as c:
        n = 250  # below the burst, so none is throttled
        c.send(b"".join(encode_new_order("ACME", Side.BUY, 1, 100 + 5 * (i % 10), client_order_id=i) for i in range(n)))
        got = [c.next_reply() for _ in range(n)]
    assert [r.client_order_id for r in got] == list(range(n))
    assert all(r.msg_type == "K" for r in got)
    seqs = [r.seq for r in got]
    assert seqs == list(range(seqs[0], seqs[0] + n))
    assert len({r.order_id for r in got}) == n


def test_random_bytes_and_truncated_frames_never_hurt_the_gateway_or_other_sessions(exchange):
    rng = np.random.default_rng(7)
    with exchange.client() as bystander:
        for trial in range(20):
            with exchange.raw() as s:
                if trial % 3 == 0:
                    s.sendall(encode_login(ACCOUNT, TOKEN))
                if trial % 2:
                    s.sendall(rng.bytes(int(rng.integers(1, 5000))))
                else:
                    s.sendall(encode_new_order("ACME", Side.BUY, 1, 100)[: int(rng.integers(1, 64))])
            assert bystander.buy("ACME", 1, 100).msg_type == "K"
        # a logged-in session that keeps sending garbage is answered, then closed with E
        with exchange.client(account=OTHER, token=OTHER_TOKEN) as noisy:
            noisy.send(b"\xee" * 64 * 40)
            got = []
            with pytest.raises(SessionClosed) as closed:
                while True:
                    got.append(noisy.next_reply())
            assert closed.value.reply is not None and closed.value.reply.reason == Reason.UNKNOWN_MESSAGE
            assert all(r.reason == Reason.UNKNOWN_MESSAGE for r in got) and 0 < len(got) < 40
        assert bystander.buy("ACME", 1, 100).msg_type == "K"
    assert exchange.alive()


def test_a_reader_that_never_reads_is_cut_off_without_delaying_others(exchange):
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", exchange.port))
    slow.sendall(encode_login(ACCOUNT, TOKEN))
    junk = encode_cancel("NOPE", 1) * 4096  # each answered with an X the slow reader never reads
    with exchange.client(account=OTHER, token=OTHER_TOKEN) as other:
        cut = False
        slow.settimeout(5)
        for _ in range(200):
            try:
                slow.sendall(junk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                cut = True
                break
            assert other.buy("ACME", 1, 100).msg_type == "K"
        assert cut
    slow.close()
    assert exchange.alive()


##########################################################################################
# session limits and timers
##########################################################################################


def test_session_limit_answers_e_and_closes(make_exchange):
    ex = make_exchange(max_sessions=3)
    clients = [ex.client() for _ in range(3)]
    try:
        with ex.raw() as extra:
            replies = read_until_closed(extra)
        assert [(r.msg_type, r.reason) for r in replies] == [("E", Reason.SESSION_LIMIT)]
        assert clients[0].buy("ACME", 1, 100).msg_type == "K"
    finally:
        for c in clients:
            c.close()


def test_idle_session_gets_heartbeats_then_is_closed(make_exchange):
    ex = make_exchange(heartbeat_interval_s=0.2, idle_timeout_s=1.0)
    with ex.raw() as s:
        s.sendall(encode_login(ACCOUNT, TOKEN))
        t0 = time.monotonic()
        buf = bytearray()
        s.settimeout(5)
        while data := s.recv(4096):
            buf += data
        elapsed = time.monotonic() - t0
    kinds = [r.msg_type for r in replies_from_bytes(bytes(buf))]
    assert kinds[0] == "A" and kinds[-1] == "E" and kinds.count("H") >= 2
    assert replies_from_bytes(bytes(buf))[-1].reason == Reason.IDLE_TIMEOUT
    assert elapsed >= 0.9


def test_client_heartbeats_keep_a_session_alive(make_exchange):
    ex = make_exchange(heartbeat_interval_s=0.2, idle_timeout_s=1.2)
    with ex.client() as c:
        for _ in range(10):
            time.sleep(0.25)
            c.heartbeat()
        assert c.buy("ACME", 1, 100).msg_type == "K"


##########################################################################################
# with the real journaler
##########################################################################################


def test_every_k_is_already_in_the_lmdb_journal_when_it_arrives(make_exchange):
    from ringex.wal import Journal

    ex = make_exchange(durability="fsync")
    acked = []
    with ex.client() as c:
        for i in range(30):
            sym = SYMBOLS[i % 2]
            r = c.buy(sym, 1 + i, 100 + 5 * i)
            assert r.msg_type == "K"
            acked.append(r)
            if i % 10 == 9:
                # read the journal right after the K: it must hold the command already
                with Journal(ex.data, readonly=True) as journal:
                    for k in acked:
                        chunks = list(journal.read_commands(k.symbol, k.seq, k.seq + 1))
                        assert len(chunks) == 1 and chunks[0][0] == k.seq, (k, chunks)
                        rec = chunks[0][1][0]
                        assert (rec["order_id"], rec["qty"], rec["price"]) == (k.order_id, k.qty, k.price)
                        assert rec["account"] == ACCOUNT and rec["client_order_id"] == k.client_order_id
    assert [r.seq for r in acked if r.symbol == "ACME"] == list(range(15))


##########################################################################################
# volume
##########################################################################################


@pytest.mark.slow
def test_many_sessions_pipelining_at_once_each_get_every_ack_in_order(make_exchange):
    import concurrent.futures

    quick = os.environ.get("RINGEX_QUICK") == "1"
    sessions, orders = (8, 300) if quick else (40, 3000)
    # rings that hold the whole flood: a full ring is THROTTLED, and the matcher and the
    # notifier behind it may fall behind a burst this size on a busy machine
    ex = make_exchange(rate_per_s=1_000_000.0, burst=100_000, max_in_flight=100_000, ring_capacity=1 << 18)

    def run(k: int) -> list[Reply]:
        rng = np.random.default_rng(k)
        frames = np.frombuffer(
            b"".join(
                encode_new_order(
                    SYMBOLS[i % 2], Side.BUY if i % 3 else Side.SELL, 1 + i % 7, 100 + 5 * (i % 50), client_order_id=i
                )
                for i in range(orders)
            ),
            dtype=COMMAND,
        )
        with ex.client(account=ACCOUNT if k % 2 else OTHER, token=TOKEN if k % 2 else OTHER_TOKEN) as c:
            raw = frames.tobytes()
            pos = 0
            while pos < len(raw):
                step = int(rng.integers(1, 64 * 200))
                c.send(raw[pos : pos + step])
                pos += step
            return [c.next_reply() for _ in range(orders)]

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        results = list(pool.map(run, range(sessions)))
    by_symbol: dict[str, list[int]] = {s: [] for s in SYMBOLS}
    for got in results:
        assert [r.client_order_id for r in got] == list(range(orders))
        assert all(r.msg_type == "K" for r in got)
        for sym in SYMBOLS:
            seqs = [r.seq for r in got if r.symbol == sym]
            assert seqs == sorted(seqs)
            by_symbol[sym] += seqs
    for sym in SYMBOLS:
        seqs = sorted(by_symbol[sym])
        assert len(set(seqs)) == len(seqs) == sessions * orders // 2  # no sequence acked twice
        assert seqs == list(range(len(seqs)))  # every published command acked once
        assert ex.stages.in_ring(sym).producer_cursor + 1 == len(seqs)
    assert ex.alive()
