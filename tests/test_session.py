"""Sans-IO session logic with a fake clock and an in-memory ring (a list per symbol)."""

from __future__ import annotations

import numpy as np
import pytest

from ringex.codes import Reason, ReplyType, Side
from ringex.config import OrderEntryLimits, SymbolSpec
from ringex.order_entry.protocol import (
    COMMAND,
    REPLY,
    SymbolTable,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_new_order,
    encode_replace,
)
from ringex.order_entry.session import OrderIdCounter, Session, SessionState, TokenBucket
from ringex.records import make_records

TABLE = SymbolTable([SymbolSpec("ACME", tick=1, price_min=1, price_max=1000, max_qty=100), SymbolSpec("BOLT")])
ACME, BOLT = TABLE.index("ACME"), TABLE.index("BOLT")
ACCOUNT, TOKEN = 1001, 0xDEADBEEF


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)


class ListRings:
    """In-memory stand-in for the in-rings: a list of published commands per symbol."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.published: dict[int, list[np.ndarray]] = {ACME: [], BOLT: []}
        self.room = room

    def count(self, sym: int) -> int:
        return sum(len(a) for a in self.published[sym])

    def publish(self, sym: int, commands: np.ndarray) -> int | None:
        if self.count(sym) + len(commands) > self.room:
            return None
        first = self.count(sym)
        self.published[sym].append(commands.copy())
        return first

    def commands(self, sym: int) -> np.ndarray:
        return np.concatenate(self.published[sym]) if self.published[sym] else make_records(COMMAND, 0)

    def all_durable(self) -> np.ndarray:
        return np.array([self.count(ACME), self.count(BOLT)], dtype=np.int64)


NOTHING_DURABLE = np.zeros(2, dtype=np.int64)


def make(
    limits: OrderEntryLimits | None = None, clock: FakeClock | None = None, first_id: int = 500
) -> tuple[Session, FakeClock, ListRings]:
    clock = clock or FakeClock()
    s = Session(
        7, TABLE, lambda a, t: (a, t) == (ACCOUNT, TOKEN), OrderIdCounter(first_id), limits or OrderEntryLimits(), clock
    )
    return s, clock, ListRings()


def replies(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=REPLY)


def logged_in(**kw) -> tuple[Session, FakeClock, ListRings]:
    s, clock, rings = make(**kw)
    s.receive_data(encode_login(ACCOUNT, TOKEN), True, rings.publish)
    r = replies(s.data_to_send(NOTHING_DURABLE))
    assert bytes(r["msg_type"]) == b"A" and r["session"][0] == 7
    return s, clock, rings


def test_login_then_order_is_stamped_published_and_acked_once_durable():
    s, clock, rings = logged_in()
    s.receive_data(encode_new_order("ACME", Side.BUY, 5, 10, client_order_id=1), True, rings.publish)
    cmd = rings.commands(ACME)
    assert len(cmd) == 1
    assert cmd["session"][0] == 7 and cmd["account"][0] == ACCOUNT and cmd["order_id"][0] == 500
    assert cmd["ts_ns"][0] == clock.time_ns()
    assert s.data_to_send(NOTHING_DURABLE) == b""  # not durable yet: no K
    assert s.pending_acks == 1
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"K"
    assert (r["client_order_id"][0], r["order_id"][0], r["seq"][0]) == (1, 500, 0)
    assert s.pending_acks == 0


def test_wrong_token_gets_j_and_closes_dropping_the_rest():
    s, _, rings = make()
    s.receive_data(encode_login(ACCOUNT, TOKEN + 1) + encode_new_order("ACME", Side.BUY, 1, 1), True, rings.publish)
    r = replies(s.data_to_send(NOTHING_DURABLE))
    assert bytes(r["msg_type"]) == b"J" and r["reason"][0] == Reason.BAD_CREDENTIALS
    assert s.state is SessionState.CLOSED
    assert rings.count(ACME) == 0


def test_requests_before_login_and_second_login():
    s, _, rings = make()
    data = encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=1) + encode_heartbeat()
    data += encode_login(ACCOUNT, TOKEN) + encode_login(ACCOUNT, TOKEN, client_order_id=3)
    data += encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=4)
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"XAXK"
    assert list(r["reason"]) == [Reason.NOT_LOGGED_IN, 0, Reason.ALREADY_LOGGED_IN, 0]
    assert list(r["client_order_id"]) == [1, 0, 3, 4]


def test_an_x_waits_behind_an_earlier_pending_k():
    s, _, rings = logged_in()
    data = encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=1) + encode_new_order(
        "ACME", Side.BUY, 0, 1, client_order_id=2
    )
    data += encode_new_order("BOLT", Side.SELL, 1, 1, client_order_id=3)
    s.receive_data(data, True, rings.publish)
    assert s.data_to_send(NOTHING_DURABLE) == b""
    # BOLT durable but ACME not: still nothing, order is per session
    assert s.data_to_send(np.array([0, 1])) == b""
    r = replies(s.data_to_send(np.array([1, 0])))
    assert bytes(r["msg_type"]) == b"KX" and r["reason"][1] == Reason.BAD_QTY
    r = replies(s.data_to_send(np.array([1, 1])))
    assert bytes(r["msg_type"]) == b"K" and r["client_order_id"][0] == 3


def test_batch_across_symbols_gets_per_symbol_sequences():
    s, _, rings = logged_in()
    data = b"".join(encode_new_order("ACME" if i % 2 else "BOLT", Side.BUY, 1, 1, client_order_id=i) for i in range(6))
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert list(r["client_order_id"]) == list(range(6))
    assert list(r["seq"]) == [0, 0, 1, 1, 2, 2]
    assert list(r["order_id"]) == list(range(500, 506))
    assert list(rings.commands(BOLT)["client_order_id"]) == [0, 2, 4]


def test_cancel_and_replace_keep_the_target_order_id():
    s, _, rings = logged_in()
    s.receive_data(encode_cancel("ACME", 99, client_order_id=1) + encode_replace("ACME", 98, 5, 6), True, rings.publish)
    cmd = rings.commands(ACME)
    assert list(cmd["order_id"]) == [99, 98]
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"KK" and list(r["order_id"]) == [99, 98]


def test_rate_limit_throttles_beyond_the_burst_and_refills_with_time():
    s, clock, rings = logged_in(limits=OrderEntryLimits(rate_per_s=10, burst=5))
    data = b"".join(encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=i) for i in range(8))
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"KKKKKXXX"
    assert set(r["reason"][5:]) == {Reason.THROTTLED}
    clock.now += 0.2  # two tokens
    s.receive_data(data[:192], True, rings.publish)
    assert bytes(replies(s.data_to_send(rings.all_durable()))["msg_type"]) == b"KKX"


def test_in_flight_limit_counts_unacknowledged_requests():
    s, _, rings = logged_in(limits=OrderEntryLimits(max_in_flight=3))
    data = b"".join(encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=i) for i in range(4))
    s.receive_data(data, True, rings.publish)
    assert s.pending_acks == 3
    s.receive_data(data[:64], True, rings.publish)  # still 3 pending: throttled
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"KKKXX"
    s.receive_data(data[:64], True, rings.publish)  # acks sent: room again
    assert bytes(replies(s.data_to_send(rings.all_durable()))["msg_type"]) == b"K"


def test_not_ready_rejects_requests_but_not_login():
    s, _, rings = make()
    s.receive_data(encode_login(ACCOUNT, TOKEN) + encode_new_order("ACME", Side.BUY, 1, 1), False, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"AX" and r["reason"][1] == Reason.NOT_READY
    assert rings.count(ACME) == 0


def test_full_ring_is_throttled_not_blocked():
    s, _, rings = logged_in()
    rings.room = 2
    data = b"".join(encode_new_order("ACME", Side.BUY, 1, 1) for _ in range(3))
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"XXX" and set(r["reason"]) == {Reason.THROTTLED}


def test_garbage_is_answered_then_the_session_closed_with_e():
    s, _, rings = logged_in(limits=OrderEntryLimits(max_garbage=3))
    junk = b"\xff" * 64
    s.receive_data(junk * 2 + encode_new_order("ACME", Side.BUY, 1, 1), True, rings.publish)
    assert s.state is SessionState.LOGGED_IN
    s.receive_data(junk * 5 + encode_new_order("ACME", Side.BUY, 1, 1), True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"XXKXE"
    assert r["reason"][-1] == Reason.UNKNOWN_MESSAGE
    assert s.state is SessionState.CLOSED
    assert rings.count(ACME) == 1


def test_partial_frames_wait_for_their_bytes():
    s, _, rings = logged_in()
    frame = encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=9)
    for b in frame[:-1]:
        s.receive_data(bytes([b]), True, rings.publish)
    assert rings.count(ACME) == 0
    s.receive_data(frame[-1:], True, rings.publish)
    assert rings.count(ACME) == 1


def test_heartbeat_when_quiet_and_close_when_silent():
    s, clock, rings = logged_in(limits=OrderEntryLimits(heartbeat_interval_s=1, idle_timeout_s=3))
    clock.now += 1.5
    s.poll_timers()
    assert bytes(replies(s.data_to_send(NOTHING_DURABLE))["msg_type"]) == b"H"
    clock.now += 0.5
    s.poll_timers()
    assert s.data_to_send(NOTHING_DURABLE) == b""
    s.receive_data(encode_heartbeat(), True, rings.publish)  # client heartbeats keep it alive
    clock.now += 2.9
    s.poll_timers()
    assert s.state is SessionState.LOGGED_IN
    clock.now += 0.2
    s.poll_timers()
    r = replies(s.data_to_send(NOTHING_DURABLE))
    assert r["msg_type"][-1] == ReplyType.ERROR and r["reason"][-1] == Reason.IDLE_TIMEOUT
    assert s.state is SessionState.CLOSED


def test_no_login_within_timeout_closes():
    s, clock, _ = make(limits=OrderEntryLimits(login_timeout_s=2, idle_timeout_s=100))
    clock.now += 2.5
    s.poll_timers()
    assert replies(s.data_to_send(NOTHING_DURABLE))["reason"][-1] == Reason.IDLE_TIMEOUT


def test_eof_closes():
    s, _, rings = logged_in()
    s.receive_data(b"", True, rings.publish)
    assert s.state is SessionState.CLOSED


@pytest.mark.parametrize("n,granted", [(0, 0), (3, 3), (10, 5)])
def test_token_bucket(n, granted):
    assert TokenBucket(100, 5, 0.0).take(n, 0.0) == granted


def test_heartbeats_and_rejects_interleaved_with_valid_orders_keep_rows_aligned():
    s, _, rings = logged_in()
    data = encode_heartbeat() + encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=1)
    data += encode_new_order("ACME", Side.BUY, 0, 1, client_order_id=2) + encode_heartbeat()
    data += encode_new_order("BOLT", Side.SELL, 2, 3, client_order_id=3) + encode_new_order(
        "ACME", Side.SELL, 4, 5, client_order_id=4
    )
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"KXKK"
    assert list(r["client_order_id"]) == [1, 2, 3, 4]
    acme = rings.commands(ACME)
    assert list(acme["client_order_id"]) == [1, 4] and list(acme["qty"]) == [1, 4]
    assert list(r["seq"]) == [0, 0, 0, 1]
    assert list(r["order_id"][[0, 2, 3]]) == [
        acme["order_id"][0],
        rings.commands(BOLT)["order_id"][0],
        acme["order_id"][1],
    ]


def deferred() -> tuple[Session, FakeClock, ListRings, list]:
    asked = []
    clock = FakeClock()
    s = Session(7, TABLE, lambda a, t: asked.append((a, t)), OrderIdCounter(1), OrderEntryLimits(), clock)
    return s, clock, ListRings(), asked


def test_deferred_login_holds_input_until_the_answer():
    s, _, rings, asked = deferred()
    s.receive_data(
        encode_login(ACCOUNT, TOKEN) + encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=1), True, rings.publish
    )
    assert asked == [(ACCOUNT, TOKEN)] and s.state is SessionState.VERIFYING
    s.receive_data(encode_new_order("BOLT", Side.BUY, 1, 1, client_order_id=2)[:40], True, rings.publish)
    assert s.data_to_send(rings.all_durable()) == b"" and rings.count(ACME) == 0
    s.receive_data(encode_new_order("BOLT", Side.BUY, 1, 1, client_order_id=2)[40:], True, rings.publish)
    s.finish_login(True, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"AKK" and list(r["client_order_id"]) == [0, 1, 2]


def test_deferred_login_refused_drops_what_waited():
    s, _, rings, _ = deferred()
    s.receive_data(encode_login(ACCOUNT, 1) + encode_new_order("ACME", Side.BUY, 1, 1), True, rings.publish)
    s.finish_login(False, True, rings.publish)
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"J" and s.state is SessionState.CLOSED and rings.count(ACME) == 0


def test_flood_while_the_login_is_verified_closes_the_session():
    s, _, rings, _ = deferred()
    s.receive_data(encode_login(ACCOUNT, TOKEN), True, rings.publish)
    s.receive_data(encode_heartbeat() * 2000, True, rings.publish)
    s.finish_login(True, True, rings.publish)  # too late: the session is closing
    r = replies(s.data_to_send(rings.all_durable()))
    assert bytes(r["msg_type"]) == b"E" and r["reason"][0] == Reason.THROTTLED


def test_a_slow_login_check_does_not_count_as_client_silence():
    s, clock, rings, _ = deferred()
    s.receive_data(encode_login(ACCOUNT, TOKEN), True, rings.publish)
    clock.now += 10  # far past the idle timeout, all spent verifying
    s.poll_timers()
    assert s.state is SessionState.VERIFYING
    s.finish_login(True, True, rings.publish)
    s.poll_timers()
    assert s.state is SessionState.LOGGED_IN
    assert bytes(replies(s.data_to_send(rings.all_durable()))["msg_type"]).replace(b"H", b"") == b"A"


def test_a_client_waiting_for_its_acks_is_not_idle():
    s, clock, rings = logged_in(limits=OrderEntryLimits(heartbeat_interval_s=1, idle_timeout_s=3))
    s.receive_data(encode_new_order("ACME", Side.BUY, 1, 1), True, rings.publish)
    for _ in range(10):  # 10 s of a stalled journal
        clock.now += 1
        s.poll_timers()
        assert s.state is SessionState.LOGGED_IN
        s.data_to_send(NOTHING_DURABLE)
    assert bytes(replies(s.data_to_send(rings.all_durable()))["msg_type"]) == b"K"
    clock.now += 2.9  # then the idle clock runs from the moment the replies were owed no more
    s.poll_timers()
    assert s.state is SessionState.LOGGED_IN
    clock.now += 0.5
    s.poll_timers()
    assert s.close_reason == Reason.IDLE_TIMEOUT


def test_a_halt_turns_pending_acks_into_not_ready_in_request_order():
    s, _, rings = logged_in()
    data = encode_new_order("ACME", Side.BUY, 1, 1, client_order_id=1) + encode_new_order(
        "ACME", Side.BUY, 0, 1, client_order_id=2
    )
    data += encode_new_order("BOLT", Side.SELL, 1, 1, client_order_id=3)
    s.receive_data(data, True, rings.publish)
    r = replies(s.data_to_send(np.array([1, 0])))  # ACME's order became durable before the halt
    assert bytes(r["msg_type"]) == b"KX"
    assert s.refuse_pending() == 1
    assert not s.waiting_for_journal
    r = replies(s.data_to_send(NOTHING_DURABLE))
    assert bytes(r["msg_type"]) == b"X"
    assert (r["client_order_id"][0], r["reason"][0], r["seq"][0]) == (3, Reason.NOT_READY, 0)
    assert s.data_to_send(rings.all_durable()) == b"", "each request is answered exactly once"
