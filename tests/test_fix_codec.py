"""ringex.fix.codec: framing with BodyLength/CheckSum checks, fields, timestamps.

Like h11's tests, every well-formed case is fed whole, one byte at a time, and followed
by trailing data (the start of the next message), and must decode the same each way.
"""

from __future__ import annotations

import pytest
import simplefix

from ringex.codes import SessionRejectReason, Tag
from ringex.fix.codec import (
    NEED_DATA,
    FrameDecoder,
    FramingError,
    Garbled,
    Message,
    encode,
    parse_utc_timestamp,
    utc_timestamp,
)

HEADER = [
    (Tag.SenderCompID, "C1"),
    (Tag.TargetCompID, "RINGEX"),
    (Tag.MsgSeqNum, 7),
    (Tag.SendingTime, "20261130-12:00:00.000"),
]


def frame(msg_type: str = "D", body=((Tag.ClOrdID, "o1"), (Tag.Symbol, "ACME"))) -> bytes:
    return encode(msg_type, HEADER, list(body))


def with_checksum(raw: bytes, checksum: int) -> bytes:
    return raw[:-4] + b"%03d\x01" % checksum


def feed(data: bytes, mode: str, decoder: FrameDecoder | None = None) -> list:
    """Everything ``data`` decodes to, fed whole, byte by byte, or with trailing data."""
    decoder = decoder or FrameDecoder()
    out = []
    chunks = [data[i : i + 1] for i in range(len(data))] if mode == "bytes" else [data]
    if mode == "trailing":
        chunks = [data + b"8=FIX.4.4\x019=12"]
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (item := decoder.next_message()) is not NEED_DATA:
            out.append(item)
    if mode == "trailing":
        assert decoder.buffered == len(b"8=FIX.4.4\x019=12")
    return out


MODES = ["whole", "bytes", "trailing"]


@pytest.mark.parametrize("mode", MODES)
def test_a_message_decodes_to_its_fields(mode):
    raw = frame()
    (m,) = feed(raw, mode)
    assert isinstance(m, Message)
    assert m.raw == raw
    assert m.msg_type == "D"
    assert m.seq == 7
    assert m.text(Tag.ClOrdID) == "o1" and m.text(Tag.Symbol) == "ACME"
    assert [t for t, _ in m.pairs] == [8, 9, 35, 49, 56, 34, 52, 11, 55, 10]
    assert m.problem is None


@pytest.mark.parametrize("mode", MODES)
def test_several_messages_in_one_buffer_decode_in_order(mode):
    raws = [frame(body=[(Tag.ClOrdID, f"o{i}")]) for i in range(5)]
    out = feed(b"".join(raws), mode)
    assert [m.text(Tag.ClOrdID) for m in out] == [f"o{i}" for i in range(5)]


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_checksum_is_garbled_and_the_next_message_still_decodes(mode):
    raw = frame()
    bad = with_checksum(raw, (int(raw[-4:-1]) + 1) % 256)
    out = feed(bad + frame(body=[(Tag.ClOrdID, "next")]), mode)
    assert isinstance(out[0], Garbled) and "CheckSum" in out[0].problem
    assert out[1].text(Tag.ClOrdID) == "next"


@pytest.mark.parametrize(
    "data, why",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "8=FIX.4.4"),
        (b"8=FIX.4.2\x019=5\x0135=0\x0110=000\x01", "8=FIX.4.4"),
        (b"8=FIX.4.4\x0135=0\x01", "9="),
        (b"8=FIX.4.4\x019=abc\x01", "not a number"),
        (b"8=FIX.4.4\x019=99999999", "7 digits"),
        (b"8=FIX.4.4\x019=5\x0135=0\x0155=ACME\x0110=123\x01", "does not end where CheckSum"),
        (b"8=FIX.4.4\x019=0\x0110=123\x01", "does not end where CheckSum"),
    ],
)
@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_what_cannot_be_framed_is_a_framing_error(data, why, mode):
    with pytest.raises(FramingError, match=why):
        feed(data, mode)


def test_a_body_length_beyond_the_limit_fails_before_the_bytes_arrive():
    decoder = FrameDecoder(max_message_bytes=1000)
    decoder.receive_data(b"8=FIX.4.4\x019=5000\x01")
    with pytest.raises(FramingError, match="exceed 1000"):
        decoder.next_message()


def test_a_partial_message_waits_and_the_close_is_noted():
    raw = frame()
    decoder = FrameDecoder()
    decoder.receive_data(raw[:-3])
    assert decoder.next_message() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.peer_closed and decoder.next_message() is NEED_DATA


@pytest.mark.parametrize(
    "body, reason, tag",
    [
        ([(Tag.ClOrdID, "o1"), (Tag.ClOrdID, "o2")], SessionRejectReason.TAG_APPEARS_MORE_THAN_ONCE, Tag.ClOrdID),
        ([(Tag.ClOrdID, "")], SessionRejectReason.TAG_WITHOUT_VALUE, Tag.ClOrdID),
    ],
)
def test_malformed_fields_are_a_problem_to_reject(body, reason, tag):
    (m,) = feed(frame(body=body), "whole")
    assert m.problem[:2] == (reason, tag)
    assert m.seq == 7  # the session can still reject it in sequence


def test_a_field_without_a_numeric_tag_is_a_problem():
    raw = frame()
    hacked = raw.replace(b"\x0155=ACME", b"\x01x5=ACME")
    hacked = with_checksum(hacked, sum(hacked[: hacked.rindex(b"10=")]) & 0xFF)
    (m,) = feed(hacked, "whole")
    assert m.problem[0] == SessionRejectReason.INVALID_TAG_NUMBER


def test_repeating_group_fields_may_repeat():
    # NoPartyIDs (453) with two PartyID (448) entries: not a problem
    (m,) = feed(frame(body=[(Tag.ClOrdID, "o1"), (453, 2), (448, "A"), (447, "D"), (448, "B"), (447, "D")]), "whole")
    assert m.problem is None
    assert [v for t, v in m.pairs if t == 448] == [b"A", b"B"]


@pytest.mark.parametrize("mode", MODES)
def test_a_data_field_may_hold_soh_and_is_split_by_simplefix(mode):
    # RawDataLength (95) / RawData (96): the value holds an SOH and an "="
    message = simplefix.FixMessage()
    message.append_pair(8, "FIX.4.4")
    message.append_pair(35, "D")
    for tag, value in HEADER:
        message.append_pair(tag, value)
    message.append_pair(11, "o1")
    message.append_data(95, 96, b"a\x01b=c")
    message.append_pair(55, "ACME")
    (m,) = feed(message.encode(), mode)
    assert m.get(96) == b"a\x01b=c"
    assert m.text(Tag.Symbol) == "ACME" and m.problem is None


def test_encode_computes_body_length_and_checksum():
    raw = frame("0", [])
    assert raw.startswith(b"8=FIX.4.4\x019=")
    body_start = raw.index(b"35=")
    trailer = raw.rindex(b"10=")
    assert int(raw[raw.index(b"9=") + 2 : body_start - 1]) == trailer - body_start
    assert int(raw[trailer + 3 : trailer + 6]) == sum(raw[:trailer]) % 256


def test_a_large_buffer_is_consumed_in_linear_time():
    raws = b"".join(frame(body=[(Tag.ClOrdID, f"o{i}")]) for i in range(20_000))
    decoder = FrameDecoder()
    decoder.receive_data(raws)
    n = 0
    while decoder.next_message() is not NEED_DATA:
        n += 1
    assert n == 20_000 and decoder.buffered == 0


def test_utc_timestamps_round_trip_with_milliseconds():
    ns = 1_764_504_000_123_456_789
    text = utc_timestamp(ns)
    assert text == b"20251130-12:00:00.123"
    assert parse_utc_timestamp(text) == 1_764_504_000_123_000_000
    assert parse_utc_timestamp(b"20251130-12:00:00") == 1_764_504_000_000_000_000
    assert parse_utc_timestamp(b"20251130-12:00:00.123456") == 1_764_504_000_123_456_000
    for bad in (None, b"", b"2025-11-30 12:00:00", b"20251130-12:00:00.12", b"20251399-12:00:00"):
        assert parse_utc_timestamp(bad) is None


@pytest.mark.parametrize(
    "msg_type, body",
    [
        ("8", [(Tag.OrderID, 1732000000000001), (Tag.ClOrdID, "o-1"), (Tag.ExecType, "F"), (Tag.AvgPx, "112.5")]),
        ("0", []),
        ("A", [(Tag.EncryptMethod, 0), (Tag.HeartBtInt, 30), (Tag.Username, "1001"), (Tag.Password, "12345")]),
        ("j", [(Tag.RefSeqNum, 3), (Tag.Text, "MsgType H is not supported")]),
    ],
)
def test_encode_makes_exactly_what_simplefix_makes_and_simplefix_parses_it_back(msg_type, body):
    reference = simplefix.FixMessage()
    reference.append_pair(8, "FIX.4.4")
    reference.append_pair(35, msg_type)
    for tag, value in HEADER + body:
        reference.append_pair(tag, value)
    raw = encode(msg_type, HEADER, body)
    assert raw == reference.encode()
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    theirs = parser.get_message()
    (ours,) = feed(raw, "whole")
    assert [(int(t), v) for t, v in theirs.pairs] == ours.pairs
