"""One session's unexpected exception ends that session only (issue 18).

A bug is injected into the handling of one session (its input, its replies or its
timers in the gateway; its requests or its writes in the notifier); the test shows
that the session is closed and logged with its id and peer, that every other session
carries on, and that the process keeps serving new ones.
"""

from __future__ import annotations

import json
import logging
import socket
import struct

import pytest
import trio
from support.inprocess import ACCOUNT, OTHER, OTHER_TOKEN, TOKEN, InProcessGateway
from support.md_load import MdExchange

from ringex.market_data.messages import Subscribe
from ringex.market_data.notifier import Notifier
from ringex.market_data.sources import RingEventSource
from ringex.order_entry.client import OrderClient, SessionClosed
from ringex.order_entry.session import Session as OrderSession

pytestmark = pytest.mark.timeout(120)


class InjectedBug(RuntimeError):
    """The bug a test plants; nothing in ringex raises it."""


# ---- order entry ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["receive_data", "data_to_send", "poll_timers"])
def test_a_bug_in_one_order_entry_session_closes_it_alone(tmp_path, monkeypatch, caplog, method):
    gw = InProcessGateway(tmp_path)
    try:
        with OrderClient(gw.connect()) as bystander, OrderClient(gw.connect()) as victim:
            bystander.login(ACCOUNT, TOKEN)
            victim.login(OTHER, OTHER_TOKEN)
            assert bystander.buy("ACME", 1, 100).msg_type == "K"

            real = getattr(OrderSession, method)

            def buggy(self, *args, **kwargs):
                if self.account == OTHER:
                    raise InjectedBug(f"planted in {method}")
                return real(self, *args, **kwargs)

            caplog.set_level(logging.ERROR, logger="ringex.order_entry.gateway")
            monkeypatch.setattr(OrderSession, method, buggy)
            with pytest.raises(SessionClosed):  # the bug strikes within a timer tick (0.1 s)
                victim.submit_order("ACME", "buy", 1, 100)
                while True:
                    victim.next_reply()
            monkeypatch.undo()

            assert bystander.buy("ACME", 2, 100).msg_type == "K"
            with OrderClient(gw.connect()) as newcomer:
                newcomer.login(OTHER, OTHER_TOKEN)
                assert newcomer.sell("BOLT", 1, 7).msg_type == "K"
        assert gw.alive
        assert gw.gateway.statistics().session_bugs == 1
        (record,) = [r for r in caplog.records if "bug while" in r.getMessage()]
        text = record.getMessage()
        assert "127.0.0.1:" in text and f"account {OTHER}" in text and record.exc_info[0] is InjectedBug
    finally:
        gw.close()


# ---- market data ------------------------------------------------------------------------


async def _connect(port: int, websocket: bool):
    """A raw trio socket: a TCP line client, or a WebSocket client past its handshake."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    if websocket:
        await sock.send(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += await sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 101")
    return sock


def _ws_frame(text: bytes) -> bytes:
    """A masked client text frame (mask 0: the payload goes as it is)."""
    assert len(text) < 126
    return bytes((0x81, 0x80 | len(text))) + b"\0\0\0\0" + text


async def _send(sock, websocket: bool, message: dict) -> None:
    raw = json.dumps(message).encode()
    await sock.send(_ws_frame(raw) if websocket else raw + b"\n")


async def _read_until(sock, needle: bytes, got: bytes = b"") -> bytes:
    while needle not in got:
        data = await sock.recv(65536)
        if not data:
            raise EOFError(got)
        got += data
    return got


async def _read_to_eof(sock) -> bytes:
    got = b""
    while data := await sock.recv(65536):
        got += data
    return got


@pytest.mark.parametrize("victim_ws", [False, True], ids=["tcp", "websocket"])
async def test_a_bug_in_one_market_data_session_closes_it_alone(tmp_path, monkeypatch, caplog, victim_ws):
    ex = MdExchange(tmp_path, symbols=("ACME", "BOLT"), capacity=1 << 12)
    sources = [RingEventSource(ex.rings[s], s) for s in ("ACME", "BOLT")]
    notifier = Notifier(["ACME", "BOLT"], sources, tcp_port=0, ws_port=0, fan_out_threads=0)
    real = Notifier._handle

    async def buggy(self, session, request):
        # the victim is whoever subscribes to BOLT's trades
        if isinstance(request, Subscribe) and request.symbol == "BOLT":
            raise InjectedBug("planted in _handle")
        await real(self, session, request)

    monkeypatch.setattr(Notifier, "_handle", buggy)
    caplog.set_level(logging.ERROR, logger="ringex.market_data.notifier")
    subscribe = {"op": "subscribe", "channel": "trades", "symbol": "ACME"}
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                ports = await nursery.start(notifier.run)
                tcp = await _connect(ports["tcp"], False)
                ws = await _connect(ports["ws"], True)
                for sock, websocket in ((tcp, False), (ws, True)):
                    await _send(sock, websocket, subscribe)
                    await _read_until(sock, b'"subscribed"')
                victim = await _connect(ports["ws" if victim_ws else "tcp"], victim_ws)
                await _send(victim, victim_ws, {"op": "subscribe", "channel": "trades", "symbol": "BOLT"})
                last_words = await _read_to_eof(victim)
                assert b"internal error" in last_words  # told why, then closed

                ex.cross_burst("ACME", 3)
                for sock in (tcp, ws):
                    got = await _read_until(sock, b'"seq":3,')
                    assert got.count(b'"type":"trade"') == 3
                newcomer = await _connect(ports["tcp"], False)
                await _send(newcomer, False, {"op": "ping"})
                await _read_until(newcomer, b'"pong"')
                assert notifier.statistics().session_bugs == 1
                assert notifier.statistics().sessions == 3
                for sock in (tcp, ws, victim, newcomer):
                    sock.close()
                nursery.cancel_scope.cancel()
    finally:
        for source in sources:
            source.close()
        ex.close()
    (record,) = [r for r in caplog.records if "bug while serving" in r.getMessage()]
    assert "127.0.0.1:" in record.getMessage() and ("websocket" if victim_ws else "tcp") in record.getMessage()
    assert record.exc_info is not None


async def test_a_subscriber_that_resets_while_its_queue_is_flushed_ends_only_itself(tmp_path):
    """The writer task's ``send`` on a reset socket raised out of the session and ended
    the notifier; now it ends that session like any lost connection. The reset must
    reach the writer, not the reader: the reader is kept busy by a login whose check
    takes a while (as scrypt does)."""
    import time

    def slow_verify(account: int, token: int) -> bool:
        time.sleep(0.3)
        return False

    ex = MdExchange(tmp_path, symbols=("ACME",), capacity=1 << 14)
    source = RingEventSource(ex.rings["ACME"], "ACME")
    notifier = Notifier(
        ["ACME"], [source], tcp_port=0, ws_port=None, fan_out_threads=0, sndbuf=4096, verify=slow_verify
    )
    subscribe = {"op": "subscribe", "channel": "trades", "symbol": "ACME"}
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                ports = await nursery.start(notifier.run)
                calm = await _connect(ports["tcp"], False)
                await _send(calm, False, subscribe)
                await _read_until(calm, b'"subscribed"')
                trades = 0
                for _ in range(3):
                    rude = trio.socket.socket()
                    rude.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    await rude.connect(("127.0.0.1", ports["tcp"]))
                    await _send(rude, False, subscribe)
                    await _read_until(rude, b'"subscribed"')
                    # fill its socket so the rest waits in its queue for the writer task
                    events = notifier.statistics().events + len(ex.cross_burst("ACME", 300))
                    trades += 300
                    while notifier.statistics().events < events or notifier.fan_out.pending:
                        await trio.sleep(0.005)
                    assert any(s.queued_bytes for s in notifier.sessions)
                    await _send(rude, False, {"op": "login", "account": 1, "token": 2})
                    await trio.sleep(0.05)  # its reader now waits for the slow check
                    # vanish with a reset (SO_LINGER 0), then give the writer more to send
                    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    rude.close()
                    ex.cross_burst("ACME", 1)
                    trades += 1
                    await trio.sleep(0.4)
                await _read_until(calm, b'"seq":%d,' % trades)
                assert notifier.statistics().sessions == 1
                assert notifier.statistics().session_bugs == 0
                calm.close()
                nursery.cancel_scope.cancel()
    finally:
        source.close()
        ex.close()
