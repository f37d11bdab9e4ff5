"""The web view's HTTP side: sans-IO first (``ringex.market_data.web`` and the request
head in ``WebSocketServer``), then fuzzed with hypothesis, then over real sockets
against the notifier stage: it serves the page's files, refuses what it should with
a clear 4xx, and a hostile HTTP client ends only its own connection.

The page itself, in a real browser, is ``tests/test_web_page.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from importlib import resources

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile_payloads import HANDSHAKE, ws_frame
from support.md_load import MdExchange

from ringex.market_data.client import MdClient
from ringex.market_data.web import MAX_HEAD_BYTES, BadRequest, HttpRequest, StaticSite, parse_head
from ringex.market_data.ws_server import End, HttpGet, Request, Send, WebSocketServer

SYMBOLS = ("ACME", "BOLT")
STATIC = resources.files("ringex.market_data") / "static"
PAGE_FILES = ["/index.html", "/app.js", "/style.css", "/vendor/lightweight-charts.standalone.production.js"]


def get(target: bytes = b"/", method: bytes = b"GET", headers: bytes = b"Host: x\r\n") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"


def request(raw: bytes) -> HttpRequest:
    return parse_head(raw)


def response_of(raw: bytes) -> tuple[h11.Response, bytes]:
    """A response parsed by h11 as a client would (so it is valid HTTP/1.1), and its body."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")  # the server closes after each response
    head = client.next_event()
    assert isinstance(head, h11.Response), head
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return head, body


def header(resp: h11.Response, name: bytes) -> bytes:
    return b", ".join(v for k, v in resp.headers if k == name)


@pytest.fixture(scope="module")
def site() -> StaticSite:
    return StaticSite(SYMBOLS)


# ---- sans-IO: what each request gets -----------------------------------------------------


@pytest.mark.parametrize("path", ["/", *PAGE_FILES])
def test_each_file_of_the_page_is_served_exactly_as_shipped(site, path):
    resp, body = response_of(site.respond(request(get(path.encode()))))
    assert resp.status_code == 200
    shipped = (STATIC / ("index.html" if path == "/" else path.lstrip("/"))).read_bytes()
    assert body == shipped and int(header(resp, b"content-length")) == len(shipped)
    kind = {"/": b"text/html", "html": b"text/html", "js": b"text/javascript", "css": b"text/css"}
    assert header(resp, b"content-type").startswith(kind[path.rsplit(".", 1)[-1]])
    assert header(resp, b"connection") == b"close" and header(resp, b"x-content-type-options") == b"nosniff"
    assert b"script-src 'self'" in header(resp, b"content-security-policy")


def test_a_client_that_accepts_gzip_gets_the_same_bytes_compressed(site):
    path = b"/vendor/lightweight-charts.standalone.production.js"
    plain = response_of(site.respond(request(get(path))))[1]
    resp, body = response_of(site.respond(request(get(path, headers=b"Host: x\r\nAccept-Encoding: br, gzip;q=1\r\n"))))
    assert header(resp, b"content-encoding") == b"gzip" and header(resp, b"vary") == b"Accept-Encoding"
    assert len(body) < len(plain) / 2 and gzip.decompress(body) == plain


def test_symbols_json_lists_the_exchanges_symbols(site):
    resp, body = response_of(site.respond(request(get(b"/symbols.json?x=1"))))
    assert resp.status_code == 200 and header(resp, b"content-type") == b"application/json"
    assert json.loads(body) == {"symbols": list(SYMBOLS)}


def test_head_gets_the_headers_of_get_and_no_body(site):
    full = site.respond(request(get(b"/app.js")))
    head_only = site.respond(request(get(b"/app.js", b"HEAD")))
    assert full.startswith(head_only) and head_only.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    "target",
    [b"/nope", b"/../pyproject.toml", b"/static/index.html", b"//etc/passwd", b"/%2e%2e/web.py", b"/web.py", b"*"],
)
def test_anything_but_the_pages_files_is_not_found(site, target):
    resp, body = response_of(site.respond(request(get(target))))
    assert resp.status_code == 404 and body == b"not found\n"


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"BREW"])
def test_other_methods_are_refused_with_405(site, method):
    resp, _ = response_of(site.respond(request(get(b"/", method))))
    assert resp.status_code == 405 and header(resp, b"allow") == b"GET, HEAD"


def test_an_upgrade_is_told_apart_from_a_page_request():
    assert request(HANDSHAKE).is_websocket_upgrade
    assert request(get(headers=b"Host: x\r\nUpgrade: h2c, WebSocket\r\n")).is_websocket_upgrade
    assert not request(get()).is_websocket_upgrade
    assert not request(get(headers=b"Host: x\r\nUpgrade: websockets\r\n")).is_websocket_upgrade


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
    ],
)
def test_a_head_we_cannot_take_gets_a_clear_4xx(raw, status):
    with pytest.raises(BadRequest) as info:
        parse_head(raw)
    assert info.value.status == status


# ---- sans-IO: the head inside WebSocketServer ---------------------------------------------


def feed(data: bytes, cut: int | None = None) -> tuple[WebSocketServer, list]:
    server = WebSocketServer()
    step = cut or len(data) or 1
    actions = []
    for i in range(0, len(data), step):
        actions += server.receive_data(data[i : i + step])
    return server, actions


@pytest.mark.parametrize("cut", [None, 1, 7])
def test_a_page_request_becomes_one_http_get_however_it_arrives(cut):
    server, actions = feed(get(b"/app.js") + b"trailing bytes are never read", cut)
    assert actions == [HttpGet(request(get(b"/app.js")))]
    assert server.ended and not server.open
    assert server.receive_data(b"more") == []


@pytest.mark.parametrize("cut", [None, 1, 7])
def test_an_upgrade_still_becomes_a_websocket_however_it_arrives(cut):
    _, actions = feed(HANDSHAKE + ws_frame(1, b'{"op":"ping"}'), cut)
    assert isinstance(actions[0], Send) and actions[0].data.startswith(b"HTTP/1.1 101 ")
    assert actions[1:] == [Request('{"op":"ping"}')]


def test_a_head_that_never_ends_is_cut_off_at_the_bound():
    server = WebSocketServer()
    actions: list = []
    sent = 0
    while not actions:
        actions = server.receive_data(b"GET / HTTP/1.1\r\nX: " + b"y" * 4000)
        sent += 4019
        assert sent < MAX_HEAD_BYTES + 10_000
    assert actions[0].data.startswith(b"HTTP/1.1 431 ") and isinstance(actions[1], End)
    assert server.ended and server.receive_data(b"\r\n\r\n") == []


# ---- fuzzing: any head, however cut, gives a valid answer ---------------------------------

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

methods = st.one_of(st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"OPTIONS"]), st.binary(max_size=12))
targets = st.one_of(
    st.sampled_from([b"/", b"/app.js", b"/symbols.json", b"/style.css?v=1", b"/vendor/", b"/../x", b"*"]),
    st.binary(max_size=60).map(lambda b: b"/" + b),
)
header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Host: x",
                b"Accept-Encoding: gzip",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Content-Length: 5",
                b"Transfer-Encoding: chunked",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
            ]
        ),
        st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)).map(lambda kv: kv[0] + b": " + kv[1]),
    ),
    max_size=8,
)
heads = st.one_of(
    st.builds(
        lambda m, t, v, hs: m + b" " + t + b" " + v + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n",
        methods,
        targets,
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/9", b"FTP/1.1"]),
        header_lines,
    ),
    st.binary(max_size=300).map(lambda b: b + b"\r\n\r\n"),
)


@FUZZ
@given(head=heads, tail=st.binary(max_size=100), cuts=st.lists(st.integers(1, 64), max_size=20))
def test_fuzz_any_request_head_gets_a_valid_http_answer_or_becomes_a_websocket(site, head, tail, cuts):
    def run(chunks):
        server = WebSocketServer()
        out = []
        for chunk in chunks:
            out += server.receive_data(chunk)
        return out

    data = head + tail
    whole = run([data])
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    assert run([p for p in pieces if p]) == whole  # however it arrives
    assert whole, "a complete head always gets an answer"
    first = whole[0]
    if isinstance(first, HttpGet):
        assert len(whole) == 1 and not first.request.is_websocket_upgrade
        raw = site.respond(first.request)
        resp, body = response_of(raw) if first.request.method != b"HEAD" else (None, b"")
        if resp is not None:
            assert resp.status_code in (200, 404, 405)
            assert int(header(resp, b"content-length")) == len(body)
    elif isinstance(first, Send) and first.data.startswith(b"HTTP/1.1 101 "):
        assert first.data.endswith(b"\r\n\r\n")  # the upgrade went through
    else:
        *sends, end = whole
        assert isinstance(end, End) and not end.tell
        for send in sends:
            assert response_of(send.data)[0].status_code in (400, 426, 431)


# ---- over sockets, against the notifier stage ---------------------------------------------


@pytest.fixture
def exchange(tmp_path):
    ex = MdExchange(tmp_path, symbols=SYMBOLS, capacity=1 << 16)
    try:
        yield ex
    finally:
        ex.close()


def fetch(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_the_notifier_serves_the_page_on_its_websocket_port(exchange):
    notifier = exchange.start_notifier()
    try:
        for path in ["/", *PAGE_FILES]:
            resp, body = response_of(fetch(notifier.ws_port, get(path.encode())))
            assert resp.status_code == 200
            assert body == (STATIC / ("index.html" if path == "/" else path.lstrip("/"))).read_bytes()
        _, body = response_of(fetch(notifier.ws_port, get(b"/symbols.json")))
        assert json.loads(body) == {"symbols": list(SYMBOLS)}
        assert response_of(fetch(notifier.ws_port, get(b"/secret")))[0].status_code == 404
        # and on the same port, the feed
        with MdClient("127.0.0.1", notifier.ws_port, websocket=True) as ws:
            ws.ping()
            assert ws.recv()["type"] == "pong"
    finally:
        notifier.stop()


def test_an_address_over_its_request_rate_gets_429(exchange):
    notifier = exchange.start_notifier(address_requests_per_s=1.0, address_request_burst=3)
    try:
        codes = [response_of(fetch(notifier.ws_port, get(b"/symbols.json")))[0].status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    finally:
        notifier.stop()


def test_hostile_http_clients_end_only_their_own_connections(exchange):
    """While a WebSocket subscriber takes a stream of trades, strangers send broken
    heads, huge heads, bodies, a head that never ends, and a thousand page requests;
    each gets its 4xx (or its deadline), and the subscriber misses nothing."""
    notifier = exchange.start_notifier(handshake_timeout_s=1.0)
    hostile = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 50_000,
        b"GET /\xff\xfe HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 200,  # a TLS hello
        b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
    ]
    try:
        with MdClient("127.0.0.1", notifier.ws_port, websocket=True) as ws:
            ws.subscribe("trades", "ACME")
            start = ws.recv_until(lambda m: m["type"] == "subscribed")[-1]["seq"]
            sent = 0
            for _ in range(20):
                exchange.cross_burst("ACME", 50)
                exchange.journal()
                sent += 50
                for raw in hostile:
                    answer = b""
                    with contextlib.suppress(OSError):
                        answer = fetch(notifier.ws_port, raw, timeout=5.0)
                    # a 4xx, or closed unanswered (a peer that reset mid-send); never a page or JSON
                    assert answer[:10] in (b"HTTP/1.1 4", b""), (raw[:40], answer[:80])
                    assert b'"type"' not in answer
                for _ in range(50):
                    assert fetch(notifier.ws_port, get(b"/style.css")).startswith(b"HTTP/1.1 200 ")
            # a head that never ends is closed at the handshake deadline
            t0 = time.monotonic()
            answer = fetch(notifier.ws_port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=10.0)
            assert answer == b"" and 0.8 < time.monotonic() - t0 < 5.0
            trades = [m for m in ws.recv_until(lambda m: m.get("seq") == start + sent, 60) if m["type"] == "trade"]
            assert [m["seq"] for m in trades] == list(range(start + 1, start + sent + 1))
    finally:
        notifier.stop()


def test_no_heartbeat_reaches_a_connection_before_its_handshake(exchange):
    """A heartbeat is a WebSocket frame: before the 101 it would be garbage to the
    client (it was sent, to sessions idle mid-handshake, before the web view)."""
    notifier = exchange.start_notifier(heartbeat_s=0.1, handshake_timeout_s=1.5)
    try:
        with socket.create_connection(("127.0.0.1", notifier.ws_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a head: still in the handshake
            t0 = time.monotonic()
            assert sock.recv(4096) == b""  # closed at the deadline, with nothing said
            assert time.monotonic() - t0 > 1.0
        with MdClient("127.0.0.1", notifier.ws_port, websocket=True) as ws:  # once open, it beats
            assert ws.recv()["type"] == "heartbeat"
    finally:
        notifier.stop()
