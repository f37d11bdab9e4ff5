"""ringex.fix.session: the FIX 4.4 session layer, sans-IO, with a fake clock.

Most tests connect an acceptor and an initiator ``Session`` back to back (``Pair``):
both ends are the code under test, and the bytes between them are inspected or
tampered with. Hand-made frames check what the acceptor does with a counterparty
that is not ringex.
"""

from __future__ import annotations

import pytest

from ringex.codes import FixMsgType, SessionRejectReason, Tag
from ringex.fix.codec import NEED_DATA, FrameDecoder, encode, utc_timestamp
from ringex.fix.session import (
    ACCEPTOR,
    INITIATOR,
    ApplicationMessage,
    Closed,
    GarbledIgnored,
    LocalProtocolError,
    LoggedOn,
    LogonRequested,
    MemoryStore,
    RejectReceived,
    Session,
    SessionState,
)

T0 = 1_764_504_000_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return T0 + int((self.now - 1000.0) * 1e9)


def decode_all(data: bytes) -> list:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    out = []
    while (m := decoder.next_message()) is not NEED_DATA:
        out.append(m)
    return out


def drain(session: Session, events: list) -> list:
    """``events`` and every event of the input the session still holds."""
    while more := session.next_events():
        events += more
    return events


class Pair:
    """An acceptor and an initiator wired back to back; ``run()`` moves bytes both ways
    until neither has anything to say, collecting each side's events."""

    def __init__(self, clock: FakeClock | None = None, acceptor_store=None, initiator_store=None) -> None:
        self.clock = clock or FakeClock()
        self.acceptor_store = acceptor_store or MemoryStore()
        self.initiator_store = initiator_store or MemoryStore()
        self.acceptor = Session(ACCEPTOR, "RINGEX", clock=self.clock)
        self.initiator = Session(INITIATOR, "C1", counterparty="RINGEX", store=self.initiator_store, clock=self.clock)
        self.acceptor_events: list = []
        self.initiator_events: list = []
        self.to_acceptor: list[bytes] = []  # every chunk, for inspection
        self.to_initiator: list[bytes] = []

    def run(self, drop_to_initiator=None) -> None:
        while True:
            a = self.initiator.data_to_send()
            b = self.acceptor.data_to_send()
            if not a and not b:
                return
            if a:
                self.to_acceptor.append(a)
                events = drain(self.acceptor, self.acceptor.receive_data(a))
                for event in events:
                    if isinstance(event, LogonRequested):
                        events += drain(self.acceptor, self.acceptor.accept_logon(self.acceptor_store))
                self.acceptor_events += events
            if b:
                self.to_initiator.append(b)
                if drop_to_initiator is None or not drop_to_initiator(b):
                    self.initiator_events += drain(self.initiator, self.initiator.receive_data(b))

    def logon(self, **kw) -> None:
        self.initiator.start_logon(kw.pop("heartbeat_s", 30), username="1001", password="42", **kw)
        self.run()

    def app(self, events) -> list:
        return [e.message for e in events if isinstance(e, ApplicationMessage)]


def header(seq: int) -> list:
    return [
        (Tag.SenderCompID, "C1"),
        (Tag.TargetCompID, "RINGEX"),
        (Tag.MsgSeqNum, seq),
        (Tag.SendingTime, utc_timestamp(T0)),
    ]


def order(i: int = 1) -> list:
    return [(Tag.ClOrdID, f"o{i}"), (Tag.Symbol, "ACME")]


def sent_types(chunks) -> list[str]:
    return [m.msg_type for m in decode_all(b"".join(chunks))]


# -- logon ----------------------------------------------------------------------------------


def test_logon_is_announced_then_answered_and_both_ends_are_active():
    pair = Pair()
    pair.logon()
    requested = [e for e in pair.acceptor_events if isinstance(e, LogonRequested)]
    assert requested == [LogonRequested("C1", "1001", "42", 30, False)]
    assert pair.acceptor.state is SessionState.ACTIVE and pair.initiator.state is SessionState.ACTIVE
    assert LoggedOn(False) in pair.initiator_events
    assert (pair.acceptor_store.next_sender_seq, pair.acceptor_store.next_target_seq) == (2, 2)
    assert pair.acceptor.heartbeat_s == 30


def test_input_after_the_logon_waits_until_the_logon_is_accepted():
    clock = FakeClock()
    acceptor = Session(ACCEPTOR, "RINGEX", clock=clock)
    initiator = Session(INITIATOR, "C1", counterparty="RINGEX", store=MemoryStore(), clock=clock)
    initiator.start_logon(30)
    initiator.state = SessionState.ACTIVE  # pretend it was answered, to send an order at once
    initiator.send(FixMsgType.NEW_ORDER_SINGLE, order())
    events = acceptor.receive_data(initiator.data_to_send())
    assert [type(e) for e in events] == [LogonRequested]
    events = acceptor.accept_logon(MemoryStore())
    assert [type(e) for e in events] == [LoggedOn, ApplicationMessage]


def test_a_refused_logon_gets_a_logout_with_the_reason_and_closes():
    pair = Pair()
    pair.initiator.start_logon(30)
    events = pair.acceptor.receive_data(pair.initiator.data_to_send())
    assert isinstance(events[0], LogonRequested)
    events = pair.acceptor.reject_logon("bad credentials")
    assert events == [Closed("logon refused: bad credentials", error=True)]
    (logout,) = decode_all(pair.acceptor.data_to_send())
    assert logout.msg_type == FixMsgType.LOGOUT and logout.text(Tag.Text) == "bad credentials"
    initiator_events = pair.initiator.receive_data(logout.raw)
    assert initiator_events == [Closed("logon refused: bad credentials", error=True)]


@pytest.mark.parametrize(
    "change, why",
    [
        ({Tag.HeartBtInt: "abc"}, "HeartBtInt"),
        ({Tag.EncryptMethod: "1"}, "EncryptMethod"),
        ({Tag.TargetCompID: "OTHER"}, "TargetCompID"),
    ],
)
def test_a_bad_logon_is_refused_by_the_session_itself(change, why):
    fields = {Tag.EncryptMethod: "0", Tag.HeartBtInt: "30"}
    header = {Tag.SenderCompID: "C1", Tag.TargetCompID: "RINGEX", Tag.MsgSeqNum: 1, Tag.SendingTime: utc_timestamp(T0)}
    for tag, value in change.items():
        (header if tag in header else fields)[tag] = value
    acceptor = Session(ACCEPTOR, "RINGEX", clock=FakeClock())
    events = acceptor.receive_data(encode("A", list(header.items()), list(fields.items())))
    assert len(events) == 1 and isinstance(events[0], Closed) and why in events[0].reason
    (logout,) = decode_all(acceptor.data_to_send())
    assert logout.msg_type == FixMsgType.LOGOUT and why in logout.text(Tag.Text)


def test_a_first_message_that_is_not_a_logon_closes_without_a_word():
    clock = FakeClock()
    acceptor = Session(ACCEPTOR, "RINGEX", clock=clock)
    raw = encode(
        "D",
        [
            (Tag.SenderCompID, "C1"),
            (Tag.TargetCompID, "RINGEX"),
            (Tag.MsgSeqNum, 1),
            (Tag.SendingTime, utc_timestamp(T0)),
        ],
        order(),
    )
    events = acceptor.receive_data(raw)
    assert isinstance(events[-1], Closed) and "not a Logon" in events[-1].reason
    assert acceptor.data_to_send() == b""


def test_no_logon_in_time_closes_the_connection():
    clock = FakeClock()
    acceptor = Session(ACCEPTOR, "RINGEX", clock=clock, logon_timeout_s=5)
    clock.now += 4.9
    assert acceptor.poll_timers() == []
    clock.now += 0.2
    (closed,) = acceptor.poll_timers()
    assert isinstance(closed, Closed) and "no Logon" in closed.reason


def test_reset_seq_num_flag_starts_both_ends_again_at_one():
    pair = Pair()
    pair.logon()
    for i in range(3):
        pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(i))
    pair.run()
    assert pair.acceptor_store.next_target_seq == 5
    pair.initiator.state = SessionState.AWAITING_LOGON  # a new connection
    pair.acceptor = Session(ACCEPTOR, "RINGEX", clock=pair.clock)
    pair.acceptor_store.save_sent(2, b"an old message")
    pair.logon(reset_seq_num=True)
    (reply,) = [m for m in decode_all(b"".join(pair.to_initiator[-1:])) if m.msg_type == FixMsgType.LOGON]
    assert reply.seq == 1 and reply.get(Tag.ResetSeqNumFlag) == b"Y"
    assert (pair.acceptor_store.next_sender_seq, pair.acceptor_store.next_target_seq) == (2, 2)
    assert pair.acceptor_store.messages == {}


# -- application messages and sequence numbers -------------------------------------------------------


def test_application_messages_flow_both_ways_in_sequence():
    pair = Pair()
    pair.logon()
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    pair.run()
    (m,) = pair.app(pair.acceptor_events)
    assert m.text(Tag.ClOrdID) == "o1" and m.seq == 2
    seq = pair.acceptor.send(FixMsgType.EXECUTION_REPORT, [(Tag.ClOrdID, "o1")])
    pair.run()
    assert seq == 2 and pair.app(pair.initiator_events)[0].seq == 2
    assert pair.acceptor_store.messages.keys() == {2}  # kept for resends; the Logon was not


def test_a_gap_from_the_counterparty_is_answered_with_one_resend_request_and_recovered():
    pair = Pair()
    pair.logon()
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    pair.initiator.data_to_send()  # lost on the way
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(2))
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(3))
    pair.run()
    # the acceptor saw 3 and 4 while expecting 2: one ResendRequest(2, 0), and then
    # the initiator's resend brings 2, 3 and 4 in order
    (request,) = [m for m in decode_all(b"".join(pair.to_initiator)) if m.msg_type == FixMsgType.RESEND_REQUEST]
    assert (request.integer(Tag.BeginSeqNo), request.integer(Tag.EndSeqNo)) == (2, 0)
    received = pair.app(pair.acceptor_events)
    assert [m.text(Tag.ClOrdID) for m in received] == ["o1", "o2", "o3"]
    assert all(m.poss_dup for m in received)
    assert pair.acceptor.gaps_detected == 1 and pair.acceptor_store.next_target_seq == 5


def test_a_resend_request_gets_stored_messages_as_duplicates_and_gap_fills_for_the_rest():
    pair = Pair()
    pair.logon()
    pair.acceptor.send(FixMsgType.EXECUTION_REPORT, [(Tag.ClOrdID, "r2")])  # seq 2
    pair.clock.now += 31
    pair.acceptor.poll_timers()  # a Heartbeat (3): admin
    pair.clock.now += 6
    pair.acceptor.poll_timers()  # a TestRequest (4): admin
    pair.acceptor.send(FixMsgType.EXECUTION_REPORT, [(Tag.ClOrdID, "r5")])  # seq 5
    pair.acceptor.data_to_send()  # all lost
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))  # ... so the acceptor's next message shows the gap
    pair.run()
    pair.acceptor.send(FixMsgType.EXECUTION_REPORT, [(Tag.ClOrdID, "r7")])
    pair.run()
    resent = decode_all(b"".join(pair.to_initiator))
    by_seq = [(m.seq, m.msg_type, m.poss_dup) for m in resent if m.poss_dup]
    # 2 again, 3-4 as one gap fill (to 5), 5 again
    assert by_seq[:3] == [(2, "8", True), (3, "4", True), (5, "8", True)]
    gap_fill = [m for m in resent if m.msg_type == "4"][0]
    assert gap_fill.get(Tag.GapFillFlag) == b"Y" and gap_fill.integer(Tag.NewSeqNo) == 5
    original = [m for m in resent if m.text(Tag.ClOrdID) == "r2" and m.poss_dup][0]
    assert original.get(Tag.OrigSendingTime) == utc_timestamp(T0)
    assert [m.text(Tag.ClOrdID) for m in pair.app(pair.initiator_events)] == ["r2", "r5", "r7"]
    assert pair.initiator_store.next_target_seq == pair.acceptor_store.next_sender_seq


def test_a_sequence_number_too_low_without_possdup_ends_the_session():
    pair = Pair()
    pair.logon()
    pair.initiator_store.next_sender_seq = 1  # a counterparty that forgot its numbers
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    pair.run()
    closed = [e for e in pair.acceptor_events if isinstance(e, Closed)]
    assert closed and "MsgSeqNum too low, expecting 2 but received 1" in closed[0].reason
    assert decode_all(pair.to_initiator[-1])[-1].msg_type == FixMsgType.LOGOUT


def test_a_possdup_duplicate_below_the_expected_number_is_ignored():
    pair = Pair()
    pair.logon()
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    pair.run()
    dup = encode(
        "D",
        [
            (Tag.SenderCompID, "C1"),
            (Tag.TargetCompID, "RINGEX"),
            (Tag.MsgSeqNum, 2),
            (Tag.PossDupFlag, "Y"),
            (Tag.SendingTime, utc_timestamp(T0)),
            (Tag.OrigSendingTime, utc_timestamp(T0)),
        ],
        order(1),
    )
    assert pair.acceptor.receive_data(dup) == []
    assert pair.acceptor.state is SessionState.ACTIVE and pair.acceptor.data_to_send() == b""


def test_sequence_reset_moves_the_expected_number_and_refuses_to_lower_it():
    pair = Pair()
    pair.logon()
    pair.acceptor.receive_data(encode("4", header(99), [(Tag.NewSeqNo, 10)]))
    assert pair.acceptor_store.next_target_seq == 10
    pair.acceptor.receive_data(encode("4", header(10), [(Tag.NewSeqNo, 5)]))
    (reject,) = decode_all(pair.acceptor.data_to_send())
    assert (
        reject.msg_type == FixMsgType.REJECT
        and reject.get(Tag.SessionRejectReason) == SessionRejectReason.VALUE_INCORRECT.encode()
    )
    pair.acceptor.receive_data(encode("4", header(10), [(Tag.GapFillFlag, "Y"), (Tag.NewSeqNo, 15)]))
    assert pair.acceptor_store.next_target_seq == 15


# -- heartbeats ----------------------------------------------------------------------------------------


def test_heartbeats_test_requests_and_a_dead_peer():
    pair = Pair()
    pair.logon(heartbeat_s=10)
    pair.clock.now += 10
    pair.acceptor.poll_timers()
    heartbeat = pair.acceptor.data_to_send()
    assert sent_types([heartbeat]) == [FixMsgType.HEARTBEAT]
    pair.initiator.receive_data(heartbeat)
    pair.clock.now += 2.1  # 12.1 s since the acceptor last heard anything: > 10 * 1.2
    pair.acceptor.poll_timers()
    (test_request,) = decode_all(pair.acceptor.data_to_send())
    assert test_request.msg_type == FixMsgType.TEST_REQUEST
    # the initiator answers a TestRequest with a Heartbeat carrying its TestReqID
    pair.initiator.receive_data(test_request.raw)
    (answer,) = decode_all(pair.initiator.data_to_send())
    assert answer.msg_type == FixMsgType.HEARTBEAT and answer.get(Tag.TestReqID) == test_request.get(Tag.TestReqID)
    pair.acceptor.receive_data(answer.raw)
    pair.clock.now += 10
    assert not [e for e in pair.acceptor.poll_timers() if isinstance(e, Closed)]
    pair.clock.now += 2.1
    pair.acceptor.poll_timers()  # a second TestRequest, never answered
    pair.clock.now += 10
    (closed,) = [e for e in pair.acceptor.poll_timers() if isinstance(e, Closed)]
    assert "no answer to TestRequest" in closed.reason and closed.error


# -- bad input -------------------------------------------------------------------------------------


def test_a_garbled_message_is_ignored_and_recovered_through_the_gap():
    pair = Pair()
    pair.logon()
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    raw = pair.initiator.data_to_send()
    garbled = raw[:-4] + b"%03d\x01" % ((int(raw[-4:-1]) + 1) % 256)
    events = pair.acceptor.receive_data(garbled)
    assert isinstance(events[0], GarbledIgnored) and pair.acceptor_store.next_target_seq == 2
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(2))
    pair.run()
    assert [m.text(Tag.ClOrdID) for m in pair.app(pair.acceptor_events)] == ["o1", "o2"]


def test_garbage_ends_the_session_with_a_logout_saying_why():
    pair = Pair()
    pair.logon()
    events = pair.acceptor.receive_data(b"\x16\x03\x01 a TLS hello, say")
    assert isinstance(events[-1], Closed) and events[-1].error and "unparsable" in events[-1].reason
    assert decode_all(pair.acceptor.data_to_send())[-1].msg_type == FixMsgType.LOGOUT
    assert pair.acceptor.receive_data(b"more") == [] or pair.acceptor.state is SessionState.CLOSED


@pytest.mark.parametrize(
    "msg_type, header_change, reason",
    [
        ("ZZ", {}, SessionRejectReason.INVALID_MSG_TYPE),
        ("D", {Tag.SenderCompID: "SOMEONE"}, SessionRejectReason.COMP_ID_PROBLEM),
        ("D", {Tag.SendingTime: utc_timestamp(T0 - 600 * 10**9)}, SessionRejectReason.SENDING_TIME_ACCURACY),
        ("D", {Tag.PossDupFlag: "Y"}, SessionRejectReason.REQUIRED_TAG_MISSING),
    ],
)
def test_session_level_rejects_name_the_reason_and_still_count(msg_type, header_change, reason):
    pair = Pair()
    pair.logon()
    header = {Tag.SenderCompID: "C1", Tag.TargetCompID: "RINGEX", Tag.MsgSeqNum: 2, Tag.SendingTime: utc_timestamp(T0)}
    header.update(header_change)
    pair.acceptor.receive_data(encode(msg_type, list(header.items()), order()))
    out = decode_all(pair.acceptor.data_to_send())
    assert out[0].msg_type == FixMsgType.REJECT
    assert out[0].get(Tag.SessionRejectReason) == reason.encode() and out[0].integer(Tag.RefSeqNum) == 2
    assert pair.acceptor_store.next_target_seq == 3
    fatal = reason in (SessionRejectReason.COMP_ID_PROBLEM, SessionRejectReason.SENDING_TIME_ACCURACY)
    assert (out[-1].msg_type == FixMsgType.LOGOUT) == fatal


def test_a_reject_from_the_counterparty_is_reported():
    pair = Pair()
    pair.logon()
    pair.initiator._send_admin(FixMsgType.REJECT, [(Tag.RefSeqNum, 2), (Tag.SessionRejectReason, 5)])
    pair.run()
    assert [type(e) for e in pair.acceptor_events if isinstance(e, RejectReceived)] == [RejectReceived]


# -- logout and misuse ------------------------------------------------------------------------------


def test_logout_either_way_ends_both_sessions_cleanly():
    pair = Pair()
    pair.logon()
    pair.initiator.logout("done")
    pair.run()
    assert Closed("the counterparty logged out: done", error=False) in pair.acceptor_events
    assert [e for e in pair.initiator_events if isinstance(e, Closed)] == [Closed("logged out", error=False)]


def test_an_unanswered_logout_closes_after_its_timeout():
    pair = Pair()
    pair.logon()
    pair.acceptor.logout()
    pair.clock.now += 2.5
    (closed,) = pair.acceptor.poll_timers()
    assert closed == Closed("no answer to our Logout", error=False)


def test_misuse_is_a_local_protocol_error():
    acceptor = Session(ACCEPTOR, "RINGEX", clock=FakeClock())
    with pytest.raises(LocalProtocolError):
        acceptor.send(FixMsgType.EXECUTION_REPORT, [])
    with pytest.raises(LocalProtocolError):
        acceptor.accept_logon(MemoryStore())
    with pytest.raises(LocalProtocolError):
        Session(INITIATOR, "C1")


def test_a_logon_above_the_expected_number_is_answered_then_the_gap_is_asked_for():
    pair = Pair()
    pair.logon()
    pair.initiator.send(FixMsgType.NEW_ORDER_SINGLE, order(1))
    pair.initiator.data_to_send()  # lost, and then the connection too
    pair.acceptor = Session(ACCEPTOR, "RINGEX", clock=pair.clock)
    pair.initiator.state = SessionState.AWAITING_LOGON
    pair.logon()
    answers = decode_all(b"".join(pair.to_initiator[-2:]))
    assert [m.msg_type for m in answers][-2:] == [FixMsgType.LOGON, FixMsgType.RESEND_REQUEST]
    assert answers[-1].integer(Tag.BeginSeqNo) == 2
    assert [m.text(Tag.ClOrdID) for m in pair.app(pair.acceptor_events)] == ["o1"]
    assert pair.acceptor_store.next_target_seq == pair.initiator_store.next_sender_seq
