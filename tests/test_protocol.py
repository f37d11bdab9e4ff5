"""The sans-IO order entry codec: framing, validation, encoders."""

from __future__ import annotations

import numpy as np
import pytest
from support.oracles import build_replies, validate_reference

from ringex.codes import MsgType, OrderType, Reason, ReplyType, RiskLimit, Side, Tif
from ringex.config import SymbolSpec
from ringex.order_entry.protocol import (
    COMMAND,
    FRAME_SIZE,
    MAX_COLLAR_BPS,
    NEED_DATA,
    REPLY,
    FrameDecoder,
    SymbolTable,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_mass_cancel,
    encode_new_order,
    encode_replace,
    encode_reply,
    encode_risk,
    validate,
)
from ringex.records import make_records

TABLE = SymbolTable(
    [
        SymbolSpec("ACME", tick=5, price_min=100, price_max=1000, max_qty=500),
        SymbolSpec("BOLT"),
    ]
)

B, S = Side.BUY, Side.SELL
L, M = OrderType.LIMIT, OrderType.MARKET


def raw(msg_type: int, **fields) -> bytes:
    return make_records(COMMAND, msg_type=msg_type, **fields).tobytes()


# (name, frame bytes, expected reason when logged in)
CASES = [
    ("limit buy on tick", encode_new_order("ACME", B, 10, 105), Reason.OK),
    ("limit sell at band edges", encode_new_order("ACME", S, 500, 1000), Reason.OK),
    ("ioc", encode_new_order("ACME", B, 1, 100, tif=Tif.IOC), Reason.OK),
    ("fok", encode_new_order("ACME", B, 1, 100, tif=Tif.FOK), Reason.OK),
    ("post only", encode_new_order("ACME", B, 1, 100, tif=Tif.POST_ONLY), Reason.OK),
    ("market ioc", encode_new_order("ACME", S, 1, 0, order_type=M, tif=Tif.IOC), Reason.OK),
    ("market fok", encode_new_order("BOLT", S, 1, 0, order_type=M, tif=Tif.FOK), Reason.OK),
    ("cancel", encode_cancel("ACME", 77), Reason.OK),
    ("replace", encode_replace("ACME", 77, 110, 3), Reason.OK),
    ("login passes validation", encode_login(1, 2), Reason.OK),
    ("heartbeat", encode_heartbeat(), Reason.OK),
    ("unknown msg type", raw(ord("Z")), Reason.UNKNOWN_MESSAGE),
    ("zero msg type", raw(0), Reason.UNKNOWN_MESSAGE),
    ("unknown symbol", encode_new_order("NOPE", B, 1, 100), Reason.UNKNOWN_SYMBOL),
    ("cancel unknown symbol", encode_cancel("NOPE", 1), Reason.UNKNOWN_SYMBOL),
    (
        "bad side",
        raw(MsgType.NEW, side=ord("X"), order_type=L, tif=Tif.GTC, symbol=b"ACME", qty=1, price=100),
        Reason.BAD_SIDE,
    ),
    (
        "bad order type",
        raw(MsgType.NEW, side=B, order_type=ord("Q"), tif=Tif.GTC, symbol=b"ACME", qty=1, price=100),
        Reason.BAD_ORDER_TYPE,
    ),
    ("bad tif", encode_new_order("ACME", B, 1, 100, tif=ord("Z")), Reason.BAD_ORDER_TYPE),
    ("market gtc", encode_new_order("ACME", B, 1, 0, order_type=M, tif=Tif.GTC), Reason.BAD_ORDER_TYPE),
    ("market post only", encode_new_order("ACME", B, 1, 0, order_type=M, tif=Tif.POST_ONLY), Reason.BAD_ORDER_TYPE),
    ("zero qty", encode_new_order("ACME", B, 0, 100), Reason.BAD_QTY),
    ("negative qty", encode_new_order("ACME", B, -5, 100), Reason.BAD_QTY),
    ("qty above max", encode_new_order("ACME", B, 501, 100), Reason.BAD_QTY),
    ("zero price", encode_new_order("ACME", B, 1, 0), Reason.BAD_PRICE),
    ("negative price", encode_new_order("ACME", B, 1, -100), Reason.BAD_PRICE),
    ("below band", encode_new_order("ACME", B, 1, 95), Reason.BAD_PRICE),
    ("above band", encode_new_order("ACME", B, 1, 1005), Reason.BAD_PRICE),
    ("off tick", encode_new_order("ACME", B, 1, 101), Reason.BAD_PRICE),
    ("market with a price", encode_new_order("ACME", B, 1, 100, order_type=M, tif=Tif.IOC), Reason.BAD_PRICE),
    ("cancel order id 0", encode_cancel("ACME", 0), Reason.BAD_ORDER_ID),
    ("replace order id 0", encode_replace("ACME", 0, 100, 1), Reason.BAD_ORDER_ID),
    ("replace zero qty", encode_replace("ACME", 9, 100, 0), Reason.BAD_QTY),
    ("replace off tick", encode_replace("ACME", 9, 102, 1), Reason.BAD_PRICE),
    ("mass cancel everywhere", encode_mass_cancel(), Reason.OK),
    ("mass cancel of one symbol's bids", encode_mass_cancel("BOLT", Side.BUY), Reason.OK),
    ("mass cancel of an unknown symbol", encode_mass_cancel("NOPE"), Reason.UNKNOWN_SYMBOL),
    ("mass cancel with a bad side", encode_mass_cancel(side=ord("X")), Reason.BAD_SIDE),
    ("account's max qty everywhere", encode_risk(RiskLimit.MAX_ORDER_QTY, 10, account=5), Reason.OK),
    ("symbol's collar", encode_risk(RiskLimit.COLLAR_BPS, 500, symbol="ACME"), Reason.OK),
    ("an account's collar", encode_risk(RiskLimit.COLLAR_BPS, 500, account=5), Reason.BAD_LIMIT),
    ("kill switch", encode_risk(RiskLimit.KILL_SWITCH, 1, account=5), Reason.OK),
    ("kill switch of nobody", encode_risk(RiskLimit.KILL_SWITCH, 1), Reason.BAD_LIMIT),
    ("kill switch of 2", encode_risk(RiskLimit.KILL_SWITCH, 2, account=5), Reason.BAD_LIMIT),
    ("negative limit", encode_risk(RiskLimit.MAX_NOTIONAL, -1), Reason.BAD_LIMIT),
    ("unknown limit", encode_risk(ord("?"), 1), Reason.BAD_LIMIT),
    ("clear", encode_risk(RiskLimit.CLEAR, 0), Reason.OK),
]


def feed(decoder: FrameDecoder, data: bytes, mode: str) -> list[np.ndarray]:
    """Feed ``data`` whole, one byte at a time, or followed by a partial trailing frame."""
    got = []
    chunks = {"whole": [data], "bytewise": [data[i : i + 1] for i in range(len(data))], "trailing": [data + b"Nxyz"]}[
        mode
    ]
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (frames := decoder.next_frames()) is not NEED_DATA:
            got.append(frames)
    return got


@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_every_case_decodes_and_validates_the_same_however_fed(mode):
    stream = b"".join(c[1] for c in CASES)
    dec = FrameDecoder()
    batches = feed(dec, stream, mode)
    frames = np.concatenate(batches)
    assert len(frames) == len(CASES)
    assert frames.tobytes() == stream
    reasons = validate(frames, TABLE, logged_in=True)
    for (name, _, want), got in zip(CASES, reasons, strict=True):
        assert Reason(got) == want, name
    assert dec.buffered == (4 if mode == "trailing" else 0)


@pytest.mark.parametrize("name,data,want", CASES, ids=[c[0] for c in CASES])
def test_each_case_alone(name, data, want):
    frames = np.frombuffer(data, dtype=COMMAND)
    assert Reason(validate(frames, TABLE, logged_in=True)[0]) == want


def test_requests_before_login_are_not_logged_in_but_login_and_heartbeat_pass():
    data = (
        encode_login(1, 2)
        + encode_heartbeat()
        + encode_new_order("ACME", B, 1, 100)
        + encode_cancel("NOPE", 0)
        + raw(ord("?"))
    )
    reasons = validate(np.frombuffer(data, dtype=COMMAND), TABLE, logged_in=False)
    assert list(reasons) == [0, 0, Reason.NOT_LOGGED_IN, Reason.NOT_LOGGED_IN, Reason.UNKNOWN_MESSAGE]


def test_partial_frame_waits_for_the_rest():
    dec = FrameDecoder()
    frame = encode_new_order("ACME", B, 1, 100, client_order_id=42)
    dec.receive_data(frame[:63])
    assert dec.next_frames() is NEED_DATA
    assert dec.buffered == 63
    dec.receive_data(frame[63:] + frame[:1])
    got = dec.next_frames()
    assert len(got) == 1 and got["client_order_id"][0] == 42
    assert dec.buffered == 1


def test_decoded_frames_are_writable_copies():
    dec = FrameDecoder()
    data = encode_new_order("ACME", B, 1, 100) * 3
    dec.receive_data(data)
    frames = dec.next_frames()
    frames["session"] = 7  # the gateway stamps in place
    assert frames.flags.writeable
    assert data[4:8] == b"\0\0\0\0"


def test_empty_data_marks_peer_closed():
    dec = FrameDecoder()
    dec.receive_data(b"")
    assert dec.peer_closed
    assert dec.next_frames() is NEED_DATA


def test_encoders_put_fields_at_the_protocol_offsets():
    f = encode_new_order("ACME", S, 7, 105, client_order_id=0x1122, order_type=L, tif=Tif.IOC)
    assert len(f) == FRAME_SIZE
    assert f[0:4] == b"NSLI"
    assert f[8:16] == b"ACME\0\0\0\0"
    assert int.from_bytes(f[16:24], "little") == 0x1122
    assert int.from_bytes(f[32:40], "little", signed=True) == 105
    assert int.from_bytes(f[40:48], "little", signed=True) == 7
    login = encode_login(1001, 2**64 - 1)
    assert login[0:1] == b"L"
    assert int.from_bytes(login[48:56], "little") == 1001
    assert int.from_bytes(login[56:64], "little") == 2**64 - 1
    c = encode_cancel("BOLT", 99)
    assert c[0:1] == b"C" and c[8:12] == b"BOLT" and int.from_bytes(c[24:32], "little") == 99


def test_reply_dtype_matches_the_protocol_offsets():
    r = encode_reply(
        ReplyType.REJECT, reason=Reason.BAD_PRICE, side=B, symbol=b"ACME", client_order_id=5, seq=9, ts_ns=11
    )
    assert r[0:1] == b"X" and r[1:2] == b"B" and int.from_bytes(r[2:4], "little") == 7
    rec = np.frombuffer(r, dtype=REPLY)[0]
    assert rec["reason"] == 7 and rec["symbol"] == b"ACME" and rec["seq"] == 9 and rec["ts_ns"] == 11


def test_build_replies_echoes_fields_and_picks_k_or_x():
    data = encode_new_order("ACME", B, 1, 105, client_order_id=1) + encode_new_order(
        "ACME", S, 0, 105, client_order_id=2
    )
    frames = np.frombuffer(data, dtype=COMMAND)
    reasons = validate(frames, TABLE, logged_in=True)
    out = build_replies(frames, reasons, 123)
    assert bytes(out["msg_type"]) == b"KX"
    assert list(out["reason"]) == [0, Reason.BAD_QTY]
    assert list(out["client_order_id"]) == [1, 2]
    assert list(out["ts_ns"]) == [123, 123]
    assert list(out["price"]) == [105, 105]


def test_symbol_table_index():
    assert TABLE.index("ACME") == 0 and TABLE.index("BOLT") == 1
    with pytest.raises(KeyError):
        TABLE.index("ZZZ")
    idx = TABLE.index_of(np.array([b"BOLT", b"A", b"ZZZZZZZZ", b"ACME"], dtype="S8"))
    assert list(idx) == [1, -1, -1, 0]


def test_random_bytes_never_raise():
    rng = np.random.default_rng(1)
    dec = FrameDecoder()
    for _ in range(200):
        dec.receive_data(rng.bytes(int(rng.integers(1, 300))))
        frames = dec.next_frames()
        if frames is not NEED_DATA:
            reasons = validate(frames, TABLE, logged_in=bool(rng.integers(2)))
            assert reasons.shape == frames.shape
            assert set(np.unique(reasons)) <= {int(r) for r in Reason}


@pytest.mark.parametrize("logged_in", [True, False])
def test_jitted_validate_matches_the_numpy_reference_on_random_frames(logged_in):
    rng = np.random.default_rng(11)
    n = 20_000
    frames = make_records(COMMAND, n)
    frames["msg_type"] = rng.choice(np.frombuffer(b"LNCRHZ\0", np.uint8), n)
    frames["side"] = rng.choice(np.frombuffer(b"BSX\0", np.uint8), n)
    frames["order_type"] = rng.choice(np.frombuffer(b"LMQ\0", np.uint8), n)
    frames["tif"] = rng.choice(np.frombuffer(b"GIFPZ\0", np.uint8), n)
    frames["symbol"] = rng.choice(np.array([b"ACME", b"BOLT", b"NOPE", b""], dtype="S8"), n)
    frames["order_id"] = rng.choice([0, 1, 2**63], n)
    frames["price"] = rng.choice([-5, 0, 95, 100, 101, 105, 1000, 1005, 2**62], n)
    frames["qty"] = rng.choice([-1, 0, 1, 500, 501, 2**62], n)
    assert np.array_equal(validate(frames, TABLE, logged_in), validate_reference(frames, TABLE, logged_in))
    assert set(validate(frames, TABLE, logged_in).tolist()) == ({0, 3, 4, 5, 6, 7, 8, 12} if logged_in else {0, 1, 8})


@pytest.mark.parametrize("logged_in", [True, False])
def test_jitted_validate_matches_the_numpy_reference_on_random_mass_cancels_and_limits(logged_in):
    rng = np.random.default_rng(12)
    n = 20_000
    frames = make_records(COMMAND, n)
    frames["msg_type"] = rng.choice([MsgType.MASS_CANCEL, MsgType.RISK, MsgType.NEW], n)
    frames["side"] = rng.choice(np.frombuffer(b"BSXQVOCPKX?\0", np.uint8), n)
    frames["symbol"] = rng.choice(np.array([b"ACME", b"BOLT", b"NOPE", b""], dtype="S8"), n)
    frames["order_id"] = rng.choice([0, 1, 2**63], n)
    frames["price"] = rng.choice([-1, 0, 1, 2, 500, MAX_COLLAR_BPS, MAX_COLLAR_BPS + 1], n)
    frames["qty"] = rng.choice([0, 1], n)
    got = validate(frames, TABLE, logged_in)
    assert np.array_equal(got, validate_reference(frames, TABLE, logged_in))
    assert {0, 3, 4, 16} <= set(got.tolist()) if logged_in else set(got.tolist()) == {1}


def test_the_users_docs_name_every_reason_code():
    """Every reason an ``X``/``J``/``E`` or a private message can carry is in the docs,
    with its code for the order entry reasons and the risk refusals."""
    from pathlib import Path

    from ringex.codes import EventReason

    docs = Path(__file__).resolve().parents[1] / "docs"
    protocol = (docs / "protocol.md").read_text()
    market_data = (docs / "market-data.md").read_text()
    for reason in Reason:
        if reason != Reason.OK:
            assert f"| {int(reason)} | {reason.name} |" in protocol, reason
    for reason in EventReason:
        if reason == EventReason.NONE:
            continue
        name = reason.name.lower()
        assert f"`{name}`" in protocol or f"| {name} |" in protocol, reason
        if reason.name.startswith("RISK_"):
            assert f"| {int(reason)} | {name} |" in protocol, reason
            if reason != EventReason.RISK_TABLE_FULL:
                assert f"`{name}`" in market_data, reason
        else:
            assert f"`{name}`" in market_data, reason
