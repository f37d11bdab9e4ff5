"""Hostile input to every decoder, sans-IO: the cases that broke something, then
property-based fuzzing (hypothesis) of each decoder a stranger's bytes reach.

Each property is "bad input gets its documented error, never a crash": an order entry
session answers every frame or closes with a reason; a market data request parses or
raises ``ClientError``; the WebSocket server side turns any bytes into actions; the
offline CSV and the config file fail with ``OrderFileError`` / ``ConfigError``.
The same inputs over real sockets against a running exchange are in
``tests/test_hostile_exchange.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile_payloads import DEEP_NESTING, FUZZ_SESSION, HANDSHAKE, MD_REQUESTS, WS_HANDSHAKES, ws_frame

from ringex.config import ConfigError, load_config
from ringex.engine.offline import OrderFileError, match_orders, parse_orders
from ringex.market_data.messages import (
    MAX_DEPTH_LEVELS,
    MAX_LINE_BYTES,
    STANDARD_DEPTH_LEVELS,
    ClientError,
    LineDecoder,
    Login,
    MarketData,
    Ping,
    Subscribe,
    Unsubscribe,
    parse_request,
    session_message,
)
from ringex.market_data.ws_server import End, HttpGet, Pong, Refuse, Request, Send, WebSocketServer

SYMBOLS = ("ACME", "BOLT")


def _error_of(raw) -> str:
    """The ``error`` a client gets for ``raw``: parse_request must raise ClientError,
    and its reason must make a valid, bounded ``error`` message."""
    with pytest.raises(ClientError) as info:
        parse_request(raw, SYMBOLS)
    reason = info.value.reason
    message = json.loads(session_message("error", reason=reason))
    assert message["type"] == "error" and len(reason) < 200
    return reason


# ---- the line that halted the exchange (issue 18) and its relatives --------------------

HOSTILE_REQUESTS = [
    (b"[" * 3000, "flat JSON object"),
    ("[" * 3000, "flat JSON object"),
    (b'{"op":' + b"[" * 2000 + b"]" * 2000 + b"}", "flat JSON object"),
    (b'{"op":{"op":{"op":{"op":{"op":{"op":{"op":{"op":{"op":{}}}}}}}}}}', "flat JSON object"),
    (b"{" * 4096, "flat JSON object"),
    (b"{" * 4097, "longer than"),
    (b"9" * 4000, "JSON object"),
    (b'{"op":"login","account":' + b"9" * 4000 + b',"token":1}', "account"),
    (b'{"op":"login","account":1e999999,"token":1}', "account"),
    (b'{"op":"login","account":18446744073709551616,"token":1}', "account"),
    (b'{"op":"login","account":-0,"token":NaN}', "token"),
    (b'{"op":"subscribe","channel":["trades"],"symbol":"ACME"}', "unknown channel"),
    (b'{"op":"subscribe","channel":{"a":1},"symbol":"ACME"}', "unknown channel"),
    (b'{"op":"subscribe","channel":"trades","symbol":["ACME"]}', "unknown symbol"),
    (b'{"op":"subscribe","channel":"trades","symbol":"' + b"Z" * 3000 + b'"}', "unknown symbol"),
    (b'{"op":"subscribe","channel":"depth","symbol":"ACME","levels":1e308}', "levels"),
    (b'{"op":"' + b"x" * 4000 + b'"}', "unknown op"),
    (b'{"op":null}', "missing op"),
    (b"\xff\xfe\x00\x00", "malformed JSON"),
    (b"\xef\xbb\xbf{}", "missing op"),  # json.loads skips a UTF-8 byte order mark
    (b'{"op":"\xed\xa0\x80"}', "unknown op"),  # json.loads lets an encoded surrogate through
    ('{"op":"\\ud800"}', "unknown op"),  # an escaped lone surrogate is valid JSON
    (b"\x00" * 100, "malformed JSON"),
    (b"", "malformed JSON"),
    (b" " * 4096, "malformed JSON"),
    (b"x" * (MAX_LINE_BYTES + 1), "longer than"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_REQUESTS)
def test_hostile_market_data_requests_get_their_error_message(raw, reason):
    assert reason in _error_of(raw)


def test_an_error_quotes_at_most_a_little_of_what_the_client_sent():
    reason = _error_of(b'{"op":"' + b"x" * 4000 + b'"}')
    assert reason.startswith("unknown op 'xxx") and reason.endswith("...") and len(reason) < 60


@pytest.mark.parametrize("handshake", WS_HANDSHAKES, ids=range(len(WS_HANDSHAKES)))
def test_a_broken_websocket_handshake_is_refused_or_waits_for_its_deadline(handshake):
    """Each is answered with an HTTP 4xx and ended unheard (no JSON for a peer that does
    not speak WebSocket), or is a plain HTTP request for the web view to answer
    (tests/test_web.py), or is incomplete, and then the handshake deadline ends it."""
    server = WebSocketServer()
    actions = server.receive_data(handshake + ws_frame(1, DEEP_NESTING))
    assert not server.open
    if actions and isinstance(actions[0], HttpGet):
        assert len(actions) == 1 and not actions[0].request.is_websocket_upgrade and server.ended
    elif actions:
        *sends, end = actions
        assert isinstance(end, End) and not end.tell and "handshake failed" in end.reason
        assert all(isinstance(a, Send) and a.data[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4") for a in sends), sends
    else:
        assert server.incomplete


def test_a_frame_sent_with_the_handshake_is_not_lost():
    """wsproto 1.3 drops bytes that follow the upgrade request in the same segment."""
    server = WebSocketServer()
    actions = server.receive_data(HANDSHAKE + ws_frame(1, b'{"op":"ping"}') + ws_frame(9, b"hi"))
    assert [type(a) for a in actions] == [Send, Request, Pong]
    assert actions[1] == Request('{"op":"ping"}')


def test_one_client_cannot_make_every_batch_recompute_a_hundred_depth_views():
    """Each distinct depth size is recomputed per batch; besides the standard sizes at
    most MAX_EXTRA_DEPTH_SIZES others exist per symbol, and the standard ones are always
    served, so squatting the extras denies nobody the usual sizes."""
    md = MarketData(SYMBOLS)
    refused = []
    for levels in range(1, MAX_DEPTH_LEVELS + 1):
        try:
            md.subscribe(("attacker", levels), Subscribe("depth", "ACME", levels), None)
        except ClientError as exc:
            refused.append(levels)
            assert "levels may be 1, 2, 3, 4, 5, 6, 10, 20, 50, 100" in exc.reason
    served = {levels for symbol, levels in md._depth if symbol == "ACME"}
    assert served == {*STANDARD_DEPTH_LEVELS, 2, 3, 4, 6} and len(refused) == 90
    md.subscribe("someone", Subscribe("depth", "ACME", 10), None)  # a standard size: always
    md.subscribe("someone", Subscribe("depth", "BOLT", 7), None)  # per symbol
    md.unsubscribe(("attacker", 6), Unsubscribe("depth", "ACME", 6), None)
    md.subscribe("someone", Subscribe("depth", "ACME", 7), None)  # a freed extra size is free again


##########################################################################################
# Property-based fuzzing, one decoder at a time
##########################################################################################

# Fast and repeatable: no example database on disk, no per-example deadline (a loaded
# 2-core machine), a bounded number of examples per decoder (the whole module runs in
# well under a minute). RINGEX_FUZZ_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("RINGEX_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- order entry frames: FrameDecoder + Session ------------------------------------------


def _mutated(frame: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(frame)
    for at, value in edits:
        b[at] = value
    return bytes(b)


order_frames = st.one_of(
    st.sampled_from(FUZZ_SESSION.SEEDS),
    st.builds(
        _mutated,
        st.sampled_from(FUZZ_SESSION.SEEDS),
        st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6),
    ),
    # any frame with a known message type: every field takes any value
    st.builds(lambda t, rest: bytes([t]) + rest, st.sampled_from(b"LNCRHXZ\0"), st.binary(min_size=63, max_size=63)),
    st.binary(min_size=1, max_size=130),  # loses the framing
)


@FUZZ
@given(
    login=st.sampled_from(["right", "wrong", "none"]),
    frames=st.lists(order_frames, max_size=40),
    chunking=st.integers(0, 2**32 - 1),
)
def test_fuzz_order_entry_session(login, frames, chunking):
    first = {
        "right": FUZZ_SESSION.encode_login(FUZZ_SESSION.ACCOUNT, FUZZ_SESSION.TOKEN),
        "wrong": FUZZ_SESSION.encode_login(FUZZ_SESSION.ACCOUNT, FUZZ_SESSION.TOKEN + 1),
        "none": b"",
    }[login]
    FUZZ_SESSION.check_stream(np.random.default_rng(chunking), first + b"".join(frames))


# ---- market data requests: LineDecoder + parse_request ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["ping", "login", "subscribe", "unsubscribe", "dance"]) | json_values,
        "channel": st.sampled_from(["trades", "bbo", "depth", "orders", "news"]) | json_values,
        "symbol": st.sampled_from(["ACME", "BOLT", "ZZZ", ""]) | json_values,
        "levels": st.integers(-5, 200) | json_values,
        "account": st.integers(-(2**70), 2**70) | json_values,
        "token": st.integers(-(2**70), 2**70) | json_values,
    },
)
raw_requests = st.one_of(
    st.sampled_from(MD_REQUESTS),
    st.binary(max_size=5000),
    st.text(max_size=300),
    json_values.map(json.dumps),
    request_like.map(json.dumps),
    request_like.map(lambda d: json.dumps(d).encode("utf-16")),
    st.builds(lambda n, c: c * n, st.integers(1, 6000), st.sampled_from(["[", "{", '{"a":', "[1,"])),
    st.builds(lambda d: d.encode("utf-8", "surrogatepass"), st.text(max_size=50)),
)


@FUZZ
@given(raw=raw_requests)
def test_fuzz_market_data_requests_parse_or_get_their_error(raw):
    try:
        request = parse_request(raw, SYMBOLS)
    except ClientError as exc:
        assert isinstance(exc.reason, str) and 0 < len(exc.reason) < 200
        json.loads(session_message("error", reason=exc.reason))  # always sendable
        return
    assert isinstance(request, Ping | Login | Subscribe | Unsubscribe)
    if isinstance(request, Login):
        assert 0 <= request.account < 2**64 and 0 <= request.token < 2**64
    elif isinstance(request, Subscribe | Unsubscribe):
        assert request.symbol in (*SYMBOLS, None) and 1 <= request.levels <= 100


@FUZZ
@given(
    lines=st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(1, 300), max_size=40),
    max_line=st.integers(16, 150),
)
def test_fuzz_line_decoder_gives_back_the_lines_however_cut(lines, cuts, max_line):
    stream = b"".join(line + b"\n" for line in lines)
    decoder = LineDecoder(max_line)
    got: list[bytes] = []
    pos = 0
    cuts = [*cuts, len(stream)]
    try:
        for cut in cuts:
            decoder.receive_data(stream[pos : pos + cut])
            pos += cut
            while (line := decoder.next_line()) is not None:
                assert len(line) <= max_line
                got.append(line)
            assert decoder.buffered <= max_line + 300  # a partial line is bounded
            if pos >= len(stream):
                break
    except ClientError as exc:
        assert "longer than" in exc.reason
        assert any(len(line.rstrip(b"\r")) > max_line or len(line) > max_line for line in lines)
        return
    assert got == [line.rstrip(b"\r") for line in lines]


# ---- WebSocket: handshakes and frames through the sans-IO server side ----------------------

ws_frames = st.one_of(
    st.builds(lambda t: ws_frame(1, t.encode()), st.text(max_size=200)),  # text
    st.builds(lambda t: ws_frame(1, t), st.binary(max_size=200)),  # text that may not be UTF-8
    st.builds(lambda b: ws_frame(2, b), st.binary(max_size=200)),  # binary
    st.builds(lambda b: ws_frame(9, b), st.binary(max_size=125)),  # ping
    st.builds(lambda b: ws_frame(10, b), st.binary(max_size=125)),  # pong
    st.builds(lambda b: ws_frame(8, b), st.binary(max_size=125)),  # close, any payload
    st.builds(lambda op, b, fin: ws_frame(op, b, fin), st.integers(0, 15), st.binary(max_size=140), st.booleans()),
    st.builds(lambda b, rsv: ws_frame(1, b, rsv=rsv), st.binary(max_size=20), st.integers(1, 7)),
    st.binary(min_size=1, max_size=100),  # raw garbage
    st.builds(lambda n: bytes([0x81, 0xFF]) + struct.pack("!Q", n) + b"\0\0\0\0", st.integers(0, 2**64 - 1)),
)


def _mutated_handshake(edits: list[tuple[int, int]]) -> bytes:
    return _mutated(HANDSHAKE, [(at % len(HANDSHAKE), v) for at, v in edits])


handshakes = st.one_of(
    st.just(HANDSHAKE),
    st.sampled_from(WS_HANDSHAKES),
    st.builds(_mutated_handshake, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)),
    st.builds(lambda host: HANDSHAKE.replace(b"Host: x", b"Host: " + host), st.binary(max_size=80)),
    st.builds(lambda target: HANDSHAKE.replace(b"GET /", b"GET /" + target), st.binary(max_size=80)),
    st.binary(max_size=300),
)


def _feed(data: bytes, cuts: list[int], max_message: int) -> list:
    server = WebSocketServer(max_message)
    actions = []
    pos = 0
    for cut in [*cuts, len(data)]:
        chunk = data[pos : pos + cut]
        pos += cut
        if chunk:
            actions += server.receive_data(chunk)
        if pos >= len(data):
            break
    return actions


def _check_actions(actions: list, max_message: int) -> None:
    for i, action in enumerate(actions):
        assert isinstance(action, Send | Pong | Request | Refuse | End | HttpGet)
        if isinstance(action, Request):
            assert len(action.text.encode("utf-8", "surrogatepass")) <= max_message
        if isinstance(action, End | HttpGet):
            assert i == len(actions) - 1, "nothing comes after the end"


def _merged(actions: list) -> list:
    """Actions with consecutive Send bytes joined (how they are cut is not behaviour)."""
    out: list = []
    for action in actions:
        if isinstance(action, Send) and out and isinstance(out[-1], Send):
            out[-1] = Send(out[-1].data + action.data)
        else:
            out.append(action)
    return out


@FUZZ
@given(
    handshake=handshakes,
    frames=st.lists(ws_frames, max_size=12),
    cuts=st.lists(st.integers(1, 400), max_size=30),
    max_message=st.integers(20, 300),
)
def test_fuzz_websocket_server_side_turns_any_bytes_into_actions_however_cut(handshake, frames, cuts, max_message):
    data = handshake + b"".join(frames)
    whole = _feed(data, [], max_message)
    _check_actions(whole, max_message)
    cut = _feed(data, cuts, max_message)
    _check_actions(cut, max_message)
    # the same bytes mean the same thing however they arrive
    assert _merged(cut) == _merged(whole)


@FUZZ
@given(texts=st.lists(st.text(max_size=60), max_size=10), cuts=st.lists(st.integers(1, 50), max_size=30))
def test_fuzz_websocket_text_messages_arrive_whole_and_in_order(texts, cuts):
    data = HANDSHAKE
    for text in texts:
        # a message in two frames: the fragments must be joined (opcode 0: continuation)
        raw = text.encode()
        half = len(raw) // 2
        data += ws_frame(1, raw[:half], fin=False) + ws_frame(0, raw[half:], fin=True)
    actions = _feed(data, cuts, 4096)
    assert isinstance(actions[0], Send) and actions[0].data.startswith(b"HTTP/1.1 101 ")
    assert [a.text for a in actions if isinstance(a, Request)] == texts
    assert not any(isinstance(a, End) for a in actions)


# ---- `ringex match` order files --------------------------------------------------------------

csv_cells = st.one_of(
    st.sampled_from(["new", "cancel", "replace", "buy", "sell", "limit", "market", "gtc", "ioc", "fok", "post_only"]),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 50).map(str),
    st.sampled_from(["", "ACME", "BOLT", "TOOLONGSYMBOL", "é", '"', '""', ",", "\r", "\n", "\0"]),
    st.text(max_size=12),
)
csv_rows = st.lists(st.lists(csv_cells, min_size=7, max_size=10), max_size=12)
HEADER = "op,order_id,account,symbol,side,type,tif,price,qty"


def _csv(rows: list[list[str]]) -> str:
    return HEADER + "\n" + "".join(",".join(row) + "\n" for row in rows)


def _match_file(content: bytes):
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as fh:
        fh.write(content)
    try:
        return parse_orders(fh.name)
    finally:
        Path(fh.name).unlink()


@FUZZ
@given(content=st.one_of(st.binary(max_size=2000), csv_rows.map(lambda rows: _csv(rows).encode())))
def test_fuzz_order_files_parse_or_name_the_bad_line(content):
    try:
        rows = _match_file(content)
    except OrderFileError as exc:
        assert " line " in str(exc) or "empty file" in str(exc)
        return
    # what parses is matched without error: the book rejects what breaks its rules
    args = argparse.Namespace(
        price_min=1, price_max=1000, tick=1, capacity=64, max_qty=10**9, stp="off", orders=None, output=None
    )
    events = match_orders(rows, args)
    assert all(event["line"] >= 2 for event in events)


# ---- the TOML config -----------------------------------------------------------------------

toml_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True).map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(f), repr(f))),
    st.sampled_from(['"fsync"', '"async"', '"halt"', '"continue"', '"info"', "true", "false", "[]", "{}", '""']),
    st.sampled_from(["1979-05-27T07:32:00Z", "[1, [2, [3]]]", "{a = 1}", "0x10", "1_000", '"\\u00e9"']),
    st.text(max_size=10).map(json.dumps),
)
toml_keys = st.sampled_from(
    ["data_dir", "host", "order_port", "md_port", "ws_port", "durability", "wait_strategy", "ring_capacity"]
    + ["shards", "snapshot_interval", "log_level", "market_data_outage", "colour"]
)
section_keys = st.sampled_from(
    ["max_sessions", "rate_per_s", "burst", "max_garbage", "login_timeout_s", "max_connections"]
    + ["handshake_timeout_s", "max_line_bytes", "failed_logins_total", "failed_logins_window_s", "bogus"]
)


@st.composite
def toml_documents(draw) -> bytes:
    lines = [f"{draw(toml_keys)} = {draw(toml_values)}" for _ in range(draw(st.integers(0, 4)))]
    for table in draw(st.lists(st.sampled_from(["order_entry", "market_data", "symbols.ACME", "symbols"]), max_size=3)):
        lines.append(f"[{table}]")
        keys = section_keys if not table.startswith("symbols") else st.sampled_from(["tick", "price_max", "stp", "x"])
        lines += [f"{draw(keys)} = {draw(toml_values)}" for _ in range(draw(st.integers(0, 3)))]
    return "\n".join(lines).encode() + b"\n"


@FUZZ
@given(content=st.one_of(toml_documents(), st.binary(max_size=600)))
def test_fuzz_config_files_load_or_name_the_problem(content):
    with tempfile.NamedTemporaryFile(suffix=".toml", delete=False) as fh:
        fh.write(content)
    try:
        config = load_config(fh.name, environ={})
    except ConfigError as exc:
        assert str(exc)
        return
    finally:
        Path(fh.name).unlink()
    assert config.symbols and config.order_entry.max_sessions >= 1
