"""The sans-IO market data core: requests, line framing, WebSocket frames, depth views
and streams, checked against the real ``Matcher`` (whose book is the truth)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import wsproto
import wsproto.events as wse
from support.commands import CommandStream, Mix

from ringex.codes import EventKind, Op, OrderType, Side, Tif
from ringex.config import SymbolSpec
from ringex.engine.matcher import Matcher
from ringex.market_data.client import FeedGap, LocalBook
from ringex.market_data.messages import (
    MAX_LINE_BYTES,
    ClientError,
    LineDecoder,
    Login,
    MarketData,
    Ping,
    Subscribe,
    Unsubscribe,
    encode,
    parse_request,
    ws_text_frame,
)
from ringex.records import COMMAND, make_records

SYMBOLS = ("ACME", "BOLT")
ACME = SymbolSpec("ACME", price_max=1000, capacity=4096)

# ---- requests ---------------------------------------------------------------------

GOOD = [
    ('{"op":"ping"}', Ping()),
    ('{"op":"login","account":7,"token":99}', Login(7, 99)),
    ('{"op":"subscribe","channel":"trades","symbol":"ACME"}', Subscribe("trades", "ACME")),
    ('{"op":"subscribe","channel":"depth","symbol":"BOLT","levels":3}', Subscribe("depth", "BOLT", 3)),
    ('{"op":"subscribe","channel":"orders"}', Subscribe("orders", None)),
    ('{"op":"subscribe","channel":"orders","symbol":"ACME"}', Subscribe("orders", "ACME")),
    ('{"op":"unsubscribe","channel":"bbo","symbol":"ACME"}', Unsubscribe("bbo", "ACME")),
    ('{"op":"subscribe","channel":"trades","symbol":"ACME","last":20}', Subscribe("trades", "ACME", last=20)),
]

BAD = [
    ("{nope", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    ("[1,2]", "JSON object"),
    ('{"op":"dance"}', "unknown op"),
    ('{"channel":"trades"}', "missing op"),
    ('{"op":"subscribe","channel":"news","symbol":"ACME"}', "unknown channel"),
    ('{"op":"subscribe","channel":"trades","symbol":"ZZZ"}', "unknown symbol"),
    ('{"op":"subscribe","channel":"trades"}', "symbol is required"),
    ('{"op":"subscribe","channel":"depth","symbol":"ACME","levels":0}', "levels"),
    ('{"op":"subscribe","channel":"depth","symbol":"ACME","levels":true}', "levels"),
    ('{"op":"subscribe","channel":"trades","symbol":"ACME","last":101}', "last"),
    ('{"op":"subscribe","channel":"trades","symbol":"ACME","last":"5"}', "last"),
    ('{"op":"subscribe","channel":"depth","symbol":"ACME","last":5}', "only the trades channel"),
    ('{"op":"login","account":true,"token":1}', "account"),
    ('{"op":"login","account":1,"token":-1}', "token"),
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_valid_requests_parse(raw, expected):
    assert parse_request(raw, SYMBOLS) == expected


@pytest.mark.parametrize(("raw", "reason"), BAD)
def test_bad_requests_raise_client_error_naming_the_problem(raw, reason):
    with pytest.raises(ClientError) as info:
        parse_request(raw, SYMBOLS)
    assert reason in info.value.reason


# ---- line framing -------------------------------------------------------------------

LINES = [b'{"op":"ping"}', b'{"op":"subscribe","channel":"trades","symbol":"ACME"}', b"x" * 300]
STREAM = b"\n".join(LINES) + b"\r\n" + b'{"op":"pi'


def _drain(decoder: LineDecoder) -> list[bytes]:
    out = []
    while (line := decoder.next_line()) is not None:
        out.append(line)
    return out


@pytest.mark.parametrize("how", ["whole", "byte_by_byte"])
def test_line_decoder_splits_lines_however_the_bytes_arrive_and_keeps_the_tail(how):
    decoder = LineDecoder()
    got: list[bytes] = []
    if how == "whole":
        decoder.receive_data(STREAM)
        got += _drain(decoder)
    else:
        for i in range(len(STREAM)):
            decoder.receive_data(STREAM[i : i + 1])
            got += _drain(decoder)
    assert got == LINES
    decoder.receive_data(b'ng"}\n')
    assert _drain(decoder) == [b'{"op":"ping"}']


def test_line_decoder_rejects_a_line_longer_than_the_limit_without_waiting_for_its_end():
    decoder = LineDecoder()
    decoder.receive_data(b"a" * (MAX_LINE_BYTES + 1))
    with pytest.raises(ClientError, match="longer"):
        decoder.next_line()


# ---- websocket frames -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_ws_text_frame_is_read_back_by_a_websocket_client(size):
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(wse.Request(host="x", target="/")))
    assert isinstance(next(server.events()), wse.Request)
    client.receive_data(server.send(wse.AcceptConnection()))
    assert isinstance(next(client.events()), wse.AcceptConnection)
    payload = json.dumps({"pad": "y" * size}).encode()
    client.receive_data(ws_text_frame(payload))
    text = "".join(e.data for e in client.events() if isinstance(e, wse.TextMessage))
    assert text == payload.decode()


# ---- depth views and streams against the real matcher ---------------------------------


def _book_of(matcher: Matcher, levels: int) -> dict[str, list[tuple[int, int]]]:
    depth = matcher.depth(levels)
    return {side: [(p, q) for p, q, _ in depth[side]] for side in ("bids", "asks")}


def _messages(payloads) -> list[dict]:
    return [json.loads(p) for p in payloads]


@pytest.mark.parametrize("seed", range(4))
def test_depth_snapshot_plus_updates_equals_the_matchers_book_after_every_batch(seed):
    rng = random.Random(seed)
    matcher = Matcher(ACME)
    md = MarketData(SYMBOLS)
    books = {levels: LocalBook() for levels in (1, 3, 10)}
    for levels, book in books.items():
        for msg in _messages(md.subscribe(("s", levels), Subscribe("depth", "ACME", levels), None)):
            book.on_message(msg)
    md.subscribe("bbo-watcher", Subscribe("bbo", "ACME"), None)
    stream = CommandStream(ACME, rng)
    seq = 0
    kinds: set[int] = set()
    for _ in range(60):
        cmds = stream.batch("ACME", rng.randint(1, 12))
        events = matcher.apply(cmds, seq)
        kinds.update(np.unique(events["kind"]).tolist())
        seq += len(cmds)
        out = dict(md.apply(events))
        for levels, book in books.items():
            for msg in _messages(out.get(("depth", "ACME", levels), [])):
                book.on_message(msg)  # raises FeedGap on a gap
            assert book.top(levels) == _book_of(matcher, levels)
        bid, _, ask, _ = md.views["ACME"].bbo()
        assert (bid, ask) == (matcher.best_bid(), matcher.best_ask())
    # a late subscriber's snapshot is the book too
    late = LocalBook()
    for msg in _messages(md.subscribe("late", Subscribe("depth", "ACME", 5), None)):
        late.on_message(msg)
    assert late.top(5) == _book_of(matcher, 5)
    # The views followed fills, cancels and replaces, not only orders coming to rest.
    assert kinds >= {EventKind.TRADE, EventKind.CANCELLED, EventKind.REPLACED, EventKind.ACCEPTED}


def test_view_seeded_from_resting_orders_matches_the_book():
    matcher = Matcher(ACME)
    matcher.apply(CommandStream(ACME, random.Random(9)).batch("ACME", 200), 0)
    md = MarketData(SYMBOLS)
    rest = matcher.resting_orders()
    md.load_book("ACME", zip(rest["order_id"], rest["side"], rest["price"], rest["qty"], strict=True))
    book = LocalBook()
    for msg in _messages(md.subscribe("s", Subscribe("depth", "ACME", 10), None)):
        book.on_message(msg)
    assert book.top(10) == _book_of(matcher, 10)


def _cross(matcher: Matcher) -> np.ndarray:
    cmds = make_records(
        COMMAND,
        2,
        msg_type=Op.NEW,
        symbol="ACME",
        order_type=OrderType.LIMIT,
        tif=Tif.GTC,
        side=(Side.SELL, Side.BUY),
        account=(20, 10),
        order_id=(1, 2),
        client_order_id=(555, 777),
        price=100,
        qty=(10, 4),
    )
    return matcher.apply(cmds, 0)


def test_private_messages_are_byte_for_byte_what_the_json_encoder_makes():
    """Order events are encoded from templates for speed; they must stay exactly the
    encoder's bytes (key order included) for every kind of event and both streams."""
    rng = random.Random(5)
    matcher = Matcher(ACME)
    md = MarketData(SYMBOLS)
    stream = CommandStream(ACME, rng)
    for account in range(1, Mix().accounts + 1):
        md.subscribe(("all", account), Subscribe("orders", None), account)
        md.subscribe(("acme", account), Subscribe("orders", "ACME"), account)
    seq, types = 0, set()
    for _ in range(40):
        cmds = stream.batch("ACME", rng.randint(1, 12))
        events = matcher.apply(cmds, seq)
        seq += len(cmds)
        for (channel, *_), payloads in md.apply(events):
            if channel != "orders":
                continue
            for payload in payloads:
                message = json.loads(payload)
                types.add(message["type"])
                assert encode(message) == payload
    assert types >= {"accepted", "fill", "cancelled", "replaced", "rejected"}


def test_a_trade_goes_to_each_owner_with_their_own_ids_and_to_nobody_else():
    matcher = Matcher(SymbolSpec("ACME", price_max=1000, capacity=64))
    md = MarketData(SYMBOLS)
    for account in (10, 20, 30):
        md.subscribe(account, Subscribe("orders", None), account)
    md.subscribe("tape", Subscribe("trades", "ACME"), None)
    out = dict(md.apply(_cross(matcher)))
    (trade,) = _messages(out[("trades", "ACME")])
    assert (trade["seq"], trade["price"], trade["qty"]) == (1, 100, 4)
    assert (trade["maker_order_id"], trade["taker_order_id"]) == (1, 2)
    taker = [m for m in _messages(out[("orders", 10, None)]) if m["type"] == "fill"]
    maker = [m for m in _messages(out[("orders", 20, None)]) if m["type"] == "fill"]
    assert [(m["order_id"], m["client_order_id"], m["remaining"], m["liquidity"]) for m in taker] == [
        (2, 777, 0, "taker")
    ]
    assert [(m["order_id"], m["client_order_id"], m["remaining"], m["liquidity"]) for m in maker] == [
        (1, 555, 6, "maker")
    ]
    assert ("orders", 30, None) not in out
    for stream, payloads in out.items():
        seqs = [m["seq"] for m in _messages(payloads)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream


def test_orders_channel_requires_a_login():
    md = MarketData(SYMBOLS)
    with pytest.raises(ClientError, match="login"):
        md.subscribe("s", Subscribe("orders", None), None)


def test_subscribed_ack_carries_the_last_seq_so_the_next_message_is_one_more():
    matcher = Matcher(SymbolSpec("ACME", price_max=1000, capacity=64))
    md = MarketData(SYMBOLS)
    md.apply(_cross(matcher))  # trade seq 1 published with nobody listening
    (ack,) = _messages(md.subscribe("s", Subscribe("trades", "ACME"), None))
    assert ack == {"type": "subscribed", "channel": "trades", "symbol": "ACME", "seq": 1}


def test_local_book_raises_on_a_gap():
    book = LocalBook()
    book.on_message({"type": "depth_snapshot", "symbol": "ACME", "seq": 4, "bids": [[99, 1]], "asks": []})
    book.on_message({"type": "depth_update", "symbol": "ACME", "seq": 5, "bids": [[99, 0]], "asks": [[101, 2]]})
    assert book.top() == {"bids": [], "asks": [(101, 2)]}
    with pytest.raises(FeedGap):
        book.on_message({"type": "depth_update", "symbol": "ACME", "seq": 7, "bids": [], "asks": []})


def test_unsubscribe_stops_a_stream_and_a_resubscribe_continues_its_seq():
    matcher = Matcher(SymbolSpec("ACME", price_max=1000, capacity=64))
    md = MarketData(SYMBOLS)
    md.subscribe("s", Subscribe("depth", "ACME", 2), None)
    out = dict(md.apply(_cross(matcher)))
    (update,) = _messages(out[("depth", "ACME", 2)])
    assert update["seq"] == 1 and update["asks"] == [[100, 6]]
    ack = json.loads(md.unsubscribe("s", Unsubscribe("depth", "ACME", 2), None))
    assert (ack["type"], ack["seq"]) == ("unsubscribed", 1)
    with pytest.raises(ClientError, match="not subscribed"):
        md.unsubscribe("s", Unsubscribe("depth", "ACME", 2), None)
    assert md.subscribers == {}
    again = _messages(md.subscribe("s", Subscribe("depth", "ACME", 2), None))
    assert [(m["type"], m["seq"]) for m in again] == [("subscribed", 1), ("depth_snapshot", 1)]
    assert again[1]["asks"] == [[100, 6]]
    with pytest.raises(ClientError, match="already subscribed"):
        md.subscribe("s", Subscribe("depth", "ACME", 2), None)


# ---- order state: open orders, trade history, mass cancels and limits ----------------


def test_an_orders_subscription_starts_with_the_accounts_open_orders():
    rng = random.Random(9)
    matcher = Matcher(ACME)
    md = MarketData(SYMBOLS)
    stream = CommandStream(ACME, rng)
    seq = 0
    for _ in range(30):
        cmds = stream.batch("ACME", rng.randint(1, 20))
        md.apply(matcher.apply(cmds, seq))
        seq += len(cmds)
    rest = matcher.resting_orders()
    for account in range(1, Mix().accounts + 1):
        ack, snap = _messages(md.subscribe(account, Subscribe("orders", None), account))
        assert (snap["type"], snap["seq"], snap["account"]) == ("orders_snapshot", ack["seq"], account)
        mine = rest[rest["account"] == account]
        want = sorted((int(r["order_id"]), int(r["client_order_id"]), int(r["price"]), int(r["qty"])) for r in mine)
        got = [(o["order_id"], o["client_order_id"], o["price"], o["remaining"]) for o in snap["orders"]]
        assert got == want and want
        assert {o["symbol"] for o in snap["orders"]} == {"ACME"}
    _, empty = _messages(md.subscribe("x", Subscribe("orders", "BOLT"), 1))
    assert empty["orders"] == [] and empty["symbol"] == "BOLT"


def test_a_trades_subscription_may_ask_for_the_last_trades_with_their_seqs():
    matcher = Matcher(SymbolSpec("ACME", price_max=1000, capacity=64))
    md = MarketData(SYMBOLS)
    seen = []
    md.subscribe("tape", Subscribe("trades", "ACME"), None)
    for i in range(5):
        cmds = make_records(
            COMMAND, 2, msg_type=Op.NEW, symbol="ACME", order_type=OrderType.LIMIT, tif=Tif.GTC,
            side=(Side.SELL, Side.BUY), account=(20, 10), order_id=(2 * i + 1, 2 * i + 2), price=100 + i, qty=3,
        )  # fmt: skip
        for _, payloads in md.apply(matcher.apply(cmds, 2 * i)):
            seen += _messages(payloads)
    ack, snap = _messages(md.subscribe("late", Subscribe("trades", "ACME", last=3), None))
    assert ack["seq"] == snap["seq"] == 5 and snap["type"] == "trades_snapshot"
    assert snap["trades"] == [{k: v for k, v in t.items() if k not in ("type", "channel", "symbol")} for t in seen[-3:]]
    _, everything = _messages(md.subscribe("later", Subscribe("trades", "ACME", last=100), None))
    assert [t["seq"] for t in everything["trades"]] == [1, 2, 3, 4, 5]


def test_mass_cancel_and_limit_events_reach_the_owners_private_stream():
    from support.book_cases import batch, buy, mass_cancel, set_limit

    from ringex.codes import RiskLimit

    matcher = Matcher(SymbolSpec("ACME", price_max=1000, capacity=64))
    md = MarketData(SYMBOLS)
    md.subscribe("me", Subscribe("orders", None), 10)
    events = matcher.apply(
        batch([buy(1, 100, 5, account=10), mass_cancel(10, coid=42), set_limit(RiskLimit.KILL_SWITCH, 1, target=10)]),
        0,
    )
    messages = _messages(dict(md.apply(events))[("orders", 10, None)])
    assert [m["type"] for m in messages] == ["accepted", "cancelled", "mass_cancelled", "limit_set"]
    assert messages[1]["reason"] == "mass_cancel"
    assert {k: messages[2][k] for k in ("client_order_id", "side", "cancelled")} == {
        "client_order_id": 42,
        "side": "both",
        "cancelled": 1,
    }
    assert {k: messages[3][k] for k in ("limit", "value", "cancelled")} == {
        "limit": "kill_switch",
        "value": 1,
        "cancelled": 0,
    }
    for payload in messages:
        assert encode(payload) == encode(json.loads(encode(payload)))


def test_trade_and_bbo_seqs_depend_only_on_the_history_not_on_the_batches():
    """A follower on another host, or a restarted notifier, reads the same events in
    other batches: cut on command boundaries (``command_end``), the trades and bbo
    streams are numbered the same, message for message."""
    from ringex.market_data.sources import command_end

    rng = random.Random(7)
    matcher = Matcher(ACME)
    stream = CommandStream(ACME, rng)
    history = np.concatenate([matcher.apply(stream.batch("ACME", 8), i * 8) for i in range(80)])
    assert (history["kind"] == EventKind.TRADE).sum() > 20

    def published(cuts: list[int]) -> list[dict]:
        md = MarketData(SYMBOLS)
        md.subscribe("t", Subscribe("trades", "ACME"), None)
        md.subscribe("b", Subscribe("bbo", "ACME"), None)
        out, lo = [], 0
        for hi in [*cuts, len(history)]:
            events = history[lo:hi]
            lo = hi
            if len(events):
                for _, payloads in md.apply(events):
                    out += _messages(payloads)
        return sorted(out, key=lambda m: (m["channel"], m["seq"]))

    one_batch = published([])
    # batches of random sizes, each trimmed back to a command boundary as the ring
    # source and the journal replay trim them
    cuts, at = [], 0
    while at < len(history):
        end = min(len(history), at + rng.randint(1, 40))
        at += command_end(history[at:end]) if end < len(history) else end - at
        cuts.append(at)
    assert published(cuts[:-1]) == one_batch
    bbos = [m for m in one_batch if m["channel"] == "bbo"]
    assert [m["seq"] for m in bbos] == list(range(1, len(bbos) + 1))
