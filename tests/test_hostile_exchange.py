"""Hostile input over real sockets against a running exchange (``ringex up``).

A stranger's bytes on all three ports: the line that halted the exchange (issue 18)
and its relatives, random bytes, mutated and truncated frames, oversized messages,
broken WebSocket handshakes, floods of short connections and failed logins, and
connections that never finish anything. Afterwards: no child restarted, the
exchange is READY, nothing was logged as a bug, and the clients that were there all
along still trade and receive their market data on TCP and WebSocket.

Hostile clients come from other loopback addresses (127.0.0.2 and up), as strangers
would, so the per-address limits meet them and not the legitimate clients.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np
import pytest
from support.hostile_payloads import (
    DEEP_NESTING,
    HANDSHAKE,
    MD_REQUESTS,
    TOO_LONG_LINE,
    WS_HANDSHAKES,
    md_garbage,
    order_entry_stream,
    ws_frame,
    ws_garbage,
)
from support.inprocess import client_from
from support.running import RunningExchange

from ringex.codes import Side
from ringex.config import load_config
from ringex.control import ControlBlock, ExchangeState
from ringex.market_data.client import MdClient
from ringex.order_entry.protocol import encode_login, encode_new_order
from ringex.topology import Topology

pytestmark = pytest.mark.timeout(600)
QUICK = os.environ.get("RINGEX_QUICK") == "1"


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    ex = RunningExchange(tmp_path_factory.mktemp("hostile") / "data", durability="async").start()
    layout = Topology.for_config(load_config(environ={}, overrides={"data_dir": str(ex.data)}))
    ex.control = ControlBlock.attach(layout.control)
    yield ex
    ex.control.close()
    assert ex.stop() == 0


class Strangers:
    """Loopback addresses to attack from, one after another (127.0.0.2 ... 127.0.9.254)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        i = self.n % 2000
        return f"127.0.{2 + i // 250}.{1 + i % 250}"


def _send_and_drain(source: str, port: int, data: bytes, *, read_for: float = 0.3) -> bytes:
    """Connect from ``source``, send ``data`` (as much as the server takes before it
    closes), read what comes back for a moment, close."""
    got = b""
    with contextlib.suppress(OSError):
        with client_from(source, port, timeout=2.0) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(data)
            sock.settimeout(read_for)
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    got += chunk
    return got


@contextlib.contextmanager
def _heartbeating(*clients):
    """Heartbeat order entry ``clients`` every second meanwhile, as a client must
    (the gateway closes a session silent for ``idle_timeout_s``)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            for client in clients:
                with contextlib.suppress(OSError):
                    client.heartbeat()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _children(ex: RunningExchange) -> dict[str, dict]:
    return {r["role"]: r for r in ex.control.roles()}


def test_hostile_input_on_every_port_takes_nothing_down(exchange):
    ex = exchange
    before = _children(ex)
    assert all(r["restarts"] == 0 for r in before.values())
    rng = np.random.default_rng(18)
    strangers = Strangers()
    (account, token), (other, other_token) = list(ex.accounts.items())[:2]
    rounds = 3 if QUICK else 10
    with (
        MdClient("127.0.0.1", ex.md_port) as tape,
        MdClient("127.0.0.1", ex.ws_port, websocket=True) as ws_tape,
        ex.sessions(2) as (maker, taker),
    ):
        for md in (tape, ws_tape):
            md.subscribe("trades", "ACME")
            md.recv_until(lambda m: m["type"] == "subscribed")
        keepalive = _heartbeating(maker, taker)
        keepalive.__enter__()

        # -- the line of issue 18, more than six times, on both market data transports --
        for _ in range(8):
            got = _send_and_drain(strangers.next(), ex.md_port, DEEP_NESTING + b"\n")
            assert b"a request is one flat JSON object" in got
            ws = _send_and_drain(strangers.next(), ex.ws_port, HANDSHAKE + ws_frame(1, DEEP_NESTING))
            assert ws.startswith(b"HTTP/1.1 101") and b"a request is one flat JSON object" in ws

        # -- every hostile request, then random lines, on TCP and WebSocket ----------------
        for request in [*MD_REQUESTS, TOO_LONG_LINE]:
            assert b'"type":"error"' in _send_and_drain(strangers.next(), ex.md_port, request + b"\n")
        for handshake in WS_HANDSHAKES:
            assert b'"type"' not in _send_and_drain(strangers.next(), ex.ws_port, handshake, read_for=0.1)
        for _ in range(rounds * 5):
            _send_and_drain(strangers.next(), ex.md_port, md_garbage(rng), read_for=0.05)
            _send_and_drain(strangers.next(), ex.ws_port, ws_garbage(rng), read_for=0.05)
            _send_and_drain(strangers.next(), ex.ws_port, rng.bytes(int(rng.integers(1, 2000))), read_for=0.02)

        # -- order entry: random, mutated and truncated frames, logged in or not ------------
        for i in range(rounds * 5):
            logged_in = i % 2 == 0
            stream = order_entry_stream(rng, *((other, other_token) if logged_in else (None, None)))
            cut = len(stream) - int(rng.integers(0, 64))  # often a truncated last frame
            _send_and_drain(strangers.next(), ex.order_port, stream[:cut], read_for=0.05)
        _send_and_drain(strangers.next(), ex.order_port, rng.bytes(1 << 20), read_for=0.1)  # oversized
        _send_and_drain(strangers.next(), ex.order_port, encode_login(other, other_token) + b"Z" * 64 * 5000)

        # -- floods: short connections, failed logins, connections that never finish -------
        for port in (ex.order_port, ex.md_port, ex.ws_port):
            for _ in range(rounds * 20):
                with contextlib.suppress(OSError):
                    client_from(strangers.next(), port, timeout=2.0).close()
        for i in range(rounds * 4):
            reply = _send_and_drain(strangers.next(), ex.order_port, encode_login(other, other_token + 1 + i))
            assert reply[:1] == b"J"
            got = _send_and_drain(
                strangers.next(), ex.md_port, b'{"op":"login","account":%d,"token":%d}\n' % (other, i + 1)
            )
            assert b"bad credentials" in got or b"too many failed logins" in got
        idle = []
        for _ in range(20):  # half a login, half a request, half a handshake: held open
            with contextlib.suppress(OSError):
                idle.append(client_from(strangers.next(), ex.order_port))
                idle[-1].sendall(encode_login(other, other_token)[:30])
                idle.append(client_from(strangers.next(), ex.md_port))
                idle[-1].sendall(b'{"op":"pi')
                idle.append(client_from(strangers.next(), ex.ws_port))
                idle[-1].sendall(HANDSHAKE[:40])

        # -- the clients that were there all along still trade and see it ----------------
        keepalive.__exit__(None, None, None)
        resting = maker.sell("ACME", 5, 777)
        assert resting.ok, resting
        taking = taker.buy("ACME", 5, 777)
        assert taking.ok, taking
        for md in (tape, ws_tape):
            # (the authenticated strangers' valid orders traded too: find ours)
            ours = lambda m: m["type"] == "trade" and m["taker_order_id"] == taking.order_id  # noqa: E731
            trade = md.recv_until(ours, timeout=10)[-1]
            assert (trade["price"], trade["qty"], trade["maker_order_id"]) == (777, 5, resting.order_id)
        for sock in idle:
            sock.close()

    after = _children(ex)
    assert {role: r["restarts"] for role, r in after.items()} == dict.fromkeys(after, 0)
    assert {role: r["pid"] for role, r in after.items()} == {role: r["pid"] for role, r in before.items()}
    assert ex.control.state is ExchangeState.READY
    log = (ex.data / "ringex.log").read_text()
    assert "bug while" not in log and "Traceback" not in log, log[-3000:]


def test_a_legitimate_newcomer_is_served_after_the_storm(exchange):
    """Fresh clients from the loopback address the strangers did not use log in,
    trade and subscribe as usual."""
    (account, token), *_ = exchange.accounts.items()
    with client_from("127.0.0.1", exchange.order_port) as sock:
        sock.sendall(encode_login(account, token) + encode_new_order("BOLT", Side.BUY, 1, 5))
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < 128 and time.monotonic() < deadline:
            got += sock.recv(128 - len(got))
        assert got[:1] == b"A" and got[64:65] == b"K"
    for websocket in (False, True):
        with MdClient("127.0.0.1", exchange.ws_port if websocket else exchange.md_port, websocket=websocket) as md:
            md.ping()
            assert md.recv()["type"] == "pong"
    assert exchange.control.state is ExchangeState.READY


def test_no_stranger_can_hold_a_connection_open_without_finishing_anything(exchange):
    """With the default deadlines: a connection that never logs in (5 s) and a
    WebSocket handshake never finished (5 s) are closed; so is a request left half sent
    (10 s)."""
    started = time.monotonic()
    socks = {
        "order": client_from("127.0.5.1", exchange.order_port),
        "ws": client_from("127.0.5.2", exchange.ws_port),
        "md": client_from("127.0.5.3", exchange.md_port),
    }
    socks["order"].sendall(b"L" * 10)
    socks["ws"].sendall(HANDSHAKE[:20])
    socks["md"].sendall(b'{"op":"subscribe"')
    closed_after = {}
    for name, sock in socks.items():
        sock.settimeout(20)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(4096):
                pass
        closed_after[name] = time.monotonic() - started
        sock.close()
    assert closed_after["order"] < 8 and closed_after["ws"] < 8
    assert 9 < closed_after["md"] < 14


def test_ringex_up_takes_its_limits_from_the_config_file(tmp_path):
    """The [order_entry] and [market_data] tables reach the gateway and the notifier
    the supervisor starts."""
    config = tmp_path / "limits.toml"
    config.write_text("[order_entry]\nmax_sessions_per_address = 1\n[market_data]\nmax_connections_per_address = 1\n")
    ex = RunningExchange(tmp_path / "data", durability="async", config=config).start()
    try:
        with client_from("127.0.7.1", ex.order_port) as first, client_from("127.0.7.1", ex.md_port) as md_first:
            second = _send_and_drain("127.0.7.1", ex.order_port, b"", read_for=2.0)
            assert second[:1] == b"E" and second[2] == 14  # E SESSION_LIMIT
            md_second = _send_and_drain("127.0.7.1", ex.md_port, b"", read_for=2.0)
            assert b"too many connections from your address (the limit is 1)" in md_second
            ws_second = _send_and_drain("127.0.7.1", ex.ws_port, b"", read_for=2.0)
            assert ws_second.startswith(b"HTTP/1.1 503 ")
            assert first.fileno() >= 0 and md_first.fileno() >= 0
    finally:
        ex.stop()
