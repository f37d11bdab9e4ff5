"""Each limit that keeps a stranger from exhausting the gateway or the notifier, over
real loopback sockets against the real servers (in-process, with small limits): too
many connections, a connection that never logs in or never finishes its handshake
(slowloris), a request trickled byte by byte, replies or requests piled up, and
failed logins that would each cost a scrypt. Other loopback addresses (127.0.0.2...)
stand for other clients."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import pytest
import trio
from support.inprocess import ACCOUNT, OTHER, OTHER_TOKEN, TOKEN, CountingStore, InProcessGateway

from ringex.codes import Reason, Side
from ringex.config import MarketDataSettings, OrderEntryLimits
from ringex.market_data.notifier import MAX_ERRORS, Notifier
from ringex.order_entry.client import OrderClient, SessionClosed, replies_from_bytes
from ringex.order_entry.protocol import encode_login, encode_new_order

pytestmark = pytest.mark.timeout(120)


def _replies_until_closed(sock: socket.socket, timeout: float = 10.0) -> list:
    sock.settimeout(timeout)
    buf = b""
    try:
        while data := sock.recv(65536):
            buf += data
    except ConnectionResetError:
        pass
    return [r for r in replies_from_bytes(buf[: len(buf) - len(buf) % 64]) if r.msg_type != "H"]


@pytest.fixture
def gateway(tmp_path, request):
    gw = InProcessGateway(tmp_path, request.param)
    yield gw
    gw.close()
    assert gw.error is None


def limits(**kw) -> OrderEntryLimits:
    return dataclasses.replace(OrderEntryLimits(), **kw)


# ---- order entry ------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", [limits(max_sessions=4, max_sessions_per_address=2)], indirect=True)
def test_sessions_are_limited_per_address_and_in_total(gateway):
    held = [gateway.connect("127.0.0.1"), gateway.connect("127.0.0.1")]
    try:
        third = gateway.connect("127.0.0.1")
        assert [(r.msg_type, r.reason) for r in _replies_until_closed(third)] == [("E", Reason.SESSION_LIMIT)]
        held += [gateway.connect("127.0.0.2"), gateway.connect("127.0.0.3")]
        fifth = gateway.connect("127.0.0.4")
        assert [(r.msg_type, r.reason) for r in _replies_until_closed(fifth)] == [("E", Reason.SESSION_LIMIT)]
        with OrderClient(held[0]) as c:  # those admitted are served
            c.login(ACCOUNT, TOKEN)
            assert c.buy("ACME", 1, 100).ok
        held.pop(0)
        time.sleep(0.2)
        with OrderClient(gateway.connect("127.0.0.1")) as again:  # a closed session frees its place
            again.login(ACCOUNT, TOKEN)
        assert gateway.gateway.statistics().refused_sessions == 2
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("gateway", [limits(login_timeout_s=0.5)], indirect=True)
def test_a_connection_that_trickles_its_login_is_closed_at_the_login_deadline(gateway):
    slow = gateway.connect()
    start = time.monotonic()
    login = encode_login(ACCOUNT, TOKEN)
    for i in range(len(login) - 1):  # every byte but the last, one every 0.1 s, for 6 s
        try:
            slow.send(login[i : i + 1])
        except OSError:
            break  # closed under it
        time.sleep(0.1)
        if time.monotonic() - start > 1.5:
            break
    got = _replies_until_closed(slow)
    assert [(r.msg_type, r.reason) for r in got] == [("E", Reason.IDLE_TIMEOUT)]
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("gateway", [limits(idle_timeout_s=0.6, heartbeat_interval_s=0.2)], indirect=True)
def test_a_logged_in_session_that_never_completes_a_frame_is_idle(gateway):
    with OrderClient(gateway.connect()) as keeps_alive, OrderClient(gateway.connect()) as trickles:
        keeps_alive.login(ACCOUNT, TOKEN)
        trickles.login(OTHER, OTHER_TOKEN)
        frame = encode_new_order("ACME", Side.BUY, 1, 100)
        for i in range(15):  # 1.5 s: a byte of a frame every 0.1 s, never a whole one
            if i % 3 == 0:
                keeps_alive.heartbeat()
            try:
                trickles.send(frame[i : i + 1])
            except OSError:
                break  # closed under it
            time.sleep(0.1)
        with pytest.raises(SessionClosed) as info:
            while True:
                trickles.next_reply()
        assert info.value.reply is not None and info.value.reply.reason == Reason.IDLE_TIMEOUT
        assert keeps_alive.buy("ACME", 1, 100).ok  # whole heartbeats kept it alive


@pytest.mark.parametrize("gateway", [limits(max_output_bytes=64 * 1024, max_in_flight=64)], indirect=True)
def test_replies_owed_to_a_client_that_never_reads_are_bounded_while_the_journal_stalls(gateway):
    with OrderClient(gateway.connect()) as bystander:
        bystander.login(ACCOUNT, TOKEN)
        flood = gateway.connect()
        flood.sendall(encode_login(OTHER, OTHER_TOKEN))
        time.sleep(0.2)
        gateway.stall()
        try:
            # 64 wait for the journal; every other one gets an X queued behind them. The
            # client never reads; 1,200 owed replies (76 KiB) pass the 64 KiB bound.
            frames = encode_new_order("BOLT", Side.SELL, 1, 50) * 1200
            with pytest.raises(OSError):
                for _ in range(20):
                    flood.sendall(frames)
                    time.sleep(0.05)
            assert gateway.gateway.statistics().closed_slow == 1
        finally:
            gateway.stall(False)
            flood.close()
        assert bystander.buy("ACME", 1, 100).ok


LOGIN_LIMITS = limits(failed_logins_per_address=3, failed_logins_per_account=4, failed_logins_total=5)


def _login_reply(gateway, account: int, token: int, source: str = "127.0.0.1"):
    """The answer to a wrong login: (J, reason), and the session closed."""
    with gateway.connect(source) as sock:
        sock.sendall(encode_login(account, token))
        (reply,) = _replies_until_closed(sock)
        return reply.msg_type, reply.reason


@pytest.mark.parametrize("gateway", [LOGIN_LIMITS], indirect=True)
def test_failed_logins_are_limited_per_address_per_account_and_in_total_before_the_slow_check(gateway):
    with OrderClient(gateway.connect("127.0.0.9")) as known:  # verified once: a remembered pair
        known.login(ACCOUNT, TOKEN)
    bad = ("J", Reason.BAD_CREDENTIALS)
    throttled = ("J", Reason.THROTTLED)
    store = gateway.accounts
    checks = store.slow_checks
    # per address: 3 wrong tokens are checked, the 4th from there is refused unchecked
    assert [_login_reply(gateway, OTHER, OTHER_TOKEN + i) for i in (1, 2, 3)] == [bad] * 3
    assert _login_reply(gateway, OTHER, OTHER_TOKEN + 3) == throttled
    assert _login_reply(gateway, OTHER, OTHER_TOKEN + 4, "127.0.0.2") == bad  # another address is checked
    # per account: OTHER has failed 4 times now; a 5th attempt is refused from anywhere
    assert _login_reply(gateway, OTHER, OTHER_TOKEN + 5, "127.0.0.3") == throttled
    # in total: 5 checks failed per window on this server, whoever tries next
    assert _login_reply(gateway, ACCOUNT, TOKEN + 1, "127.0.0.4") == bad
    assert _login_reply(gateway, ACCOUNT, TOKEN + 2, "127.0.0.5") == throttled
    assert store.slow_checks - checks == 5  # only the checked ones cost a scrypt
    # an account's holder whose pair was verified before still logs in, even from a throttled address
    with OrderClient(gateway.connect("127.0.0.1")) as again:
        assert again.login(ACCOUNT, TOKEN).msg_type == "A"
        assert again.buy("ACME", 1, 100).ok
    assert gateway.gateway.statistics().refused_logins == 3


@pytest.mark.parametrize("gateway", [limits(failed_logins_per_address=5, failed_logins_total=5)], indirect=True)
def test_a_flood_of_wrong_tokens_costs_a_bounded_number_of_slow_checks(gateway):
    with OrderClient(gateway.connect()) as bystander:
        bystander.login(ACCOUNT, TOKEN)
        flood = [gateway.connect(f"127.0.1.{i % 200 + 1}") for i in range(60)]
        try:
            for i, sock in enumerate(flood):
                sock.sendall(encode_login(OTHER, OTHER_TOKEN + 100 + i))
            assert bystander.buy("ACME", 1, 100).ok
            answers = [_replies_until_closed(sock)[0] for sock in flood]
        finally:
            for sock in flood:
                sock.close()
    assert sum(r.reason == Reason.BAD_CREDENTIALS for r in answers) == 5
    assert sum(r.reason == Reason.THROTTLED for r in answers) == 55
    assert gateway.accounts.slow_checks == 5 + 1  # and the bystander's own first login


@pytest.mark.parametrize("gateway", [limits(failed_logins_per_account=2, failed_logins_per_address=2)], indirect=True)
def test_a_fleet_logging_in_at_once_with_one_account_costs_one_check_and_is_not_throttled(gateway):
    fleet = [gateway.connect() for _ in range(20)]
    try:
        for sock in fleet:  # all at once: they wait for the same check
            sock.sendall(encode_login(OTHER, OTHER_TOKEN))
        for sock in fleet:
            sock.settimeout(10)
            assert sock.recv(64)[:1] == b"A"
    finally:
        for sock in fleet:
            sock.close()
    assert gateway.accounts.slow_checks == 1


# ---- market data ------------------------------------------------------------------------

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _ws_frame(text: bytes) -> bytes:
    """A masked client text frame (mask 0: the payload goes as it is)."""
    assert len(text) < 126
    return bytes((0x81, 0x80 | len(text))) + b"\0\0\0\0" + text


class NotifierRun:
    """A ``Notifier`` with ``limits`` served in the test's trio run; ``connect`` opens a
    trio socket from a given loopback address."""

    def __init__(self, nursery, notifier: Notifier, ports: dict) -> None:
        self.nursery, self.notifier, self.ports = nursery, notifier, ports

    async def connect(self, kind: str = "tcp", source: str = "127.0.0.1"):
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", self.ports[kind]))
        return sock


async def _all_until_eof(sock, timeout: float = 10.0) -> bytes:
    got = b""
    with trio.fail_after(timeout):
        try:
            while data := await sock.recv(65536):
                got += data
        except ConnectionResetError:
            pass
    return got


def _errors(data: bytes) -> list[str]:
    return [json.loads(line)["reason"] for line in data.splitlines() if line.startswith(b'{"type":"error"')]


def serving(md_limits: MarketDataSettings, **kw):
    """Decorate a test body ``async def body(run)`` to run against a fresh notifier."""

    def wrap(body):
        async def test():
            notifier = Notifier(["ACME"], tcp_port=0, ws_port=0, fan_out_threads=0, limits=md_limits, **kw)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    ports = await nursery.start(notifier.run)
                    await body(NotifierRun(nursery, notifier, ports))
                    nursery.cancel_scope.cancel()

        test.__name__ = body.__name__
        return test

    return wrap


MD = MarketDataSettings()


@serving(dataclasses.replace(MD, max_connections=4, max_connections_per_address=2))
async def test_market_data_connections_are_limited_per_address_and_in_total(run):
    held = [await run.connect("tcp"), await run.connect("ws")]
    third_tcp = await run.connect("tcp")
    assert _errors(await _all_until_eof(third_tcp)) == ["too many connections from your address (the limit is 2)"]
    third_ws = await run.connect("ws")
    refused = await _all_until_eof(third_ws)
    assert refused.startswith(b"HTTP/1.1 503 ") and refused.endswith(b"from your address (the limit is 2)")
    held += [await run.connect("tcp", "127.0.0.2"), await run.connect("ws", "127.0.0.3")]
    fifth = await run.connect("tcp", "127.0.0.4")
    assert _errors(await _all_until_eof(fifth)) == ["too many connections (the server's limit is 4)"]
    await held[0].send(b'{"op":"ping"}\n')  # those admitted are served
    assert b'"pong"' in await held[0].recv(4096)
    held.pop(0).close()
    await trio.sleep(0.1)
    again = await run.connect("tcp")
    await again.send(b'{"op":"ping"}\n')
    assert b'"pong"' in await again.recv(4096)
    assert run.notifier.statistics().refused_connections == 3
    for sock in [*held, again]:
        sock.close()


@serving(dataclasses.replace(MD, handshake_timeout_s=0.3))
async def test_a_websocket_client_must_finish_its_handshake_in_time(run):
    silent = await run.connect("ws")
    trickling = await run.connect("ws")
    start = trio.current_time()
    for i in range(0, 20):  # a byte of the handshake every 50 ms, for 1 s
        try:
            await trickling.send(HANDSHAKE[i : i + 1])
        except OSError:
            break  # closed under it
        await trio.sleep(0.05)
    assert await _all_until_eof(trickling) == b""  # it never spoke WebSocket: closed, not told
    assert await _all_until_eof(silent) == b""
    assert trio.current_time() - start < 3
    prompt = await run.connect("ws")
    await prompt.send(HANDSHAKE)
    await trio.sleep(0.5)  # past the deadline: a finished handshake is not held to it
    await prompt.send(_ws_frame(b'{"op":"ping"}'))
    got = b""
    while b"pong" not in got:
        got += await prompt.recv(4096)
    assert got.startswith(b"HTTP/1.1 101")


@serving(dataclasses.replace(MD, partial_request_timeout_s=0.4))
async def test_a_request_trickled_byte_by_byte_is_cut_off_at_the_deadline(run):
    tcp = await run.connect("tcp")
    ws = await run.connect("ws")
    await ws.send(HANDSHAKE)
    assert (await ws.recv(4096)).startswith(b"HTTP/1.1 101")
    steady = await run.connect("tcp")
    line = b'{"op":"ping"}\n'
    frame = _ws_frame(b'{"op":"ping"}')
    for i in range(12):  # 1.2 s, a byte every 0.1 s: never a whole request
        for sock, data in ((tcp, line), (ws, frame)):
            with contextlib.suppress(OSError):  # closed under it
                await sock.send(data[i : i + 1])
        await steady.send(line)  # whole requests, slowly, are fine
        await trio.sleep(0.1)
    assert _errors(await _all_until_eof(tcp)) == ["a request took too long to arrive"]
    assert b"a message took too long to arrive" in await _all_until_eof(ws)
    await steady.send(line)
    assert (await steady.recv(65536)).count(b'"pong"') >= 12
    steady.close()


@serving(dataclasses.replace(MD, max_line_bytes=64))
async def test_a_request_longer_than_max_line_bytes_closes_the_session(run):
    tcp = await run.connect("tcp")
    await tcp.send(b'{"op":"ping","pad":"' + b"x" * 100)  # no newline needed: refused once it is too long
    assert _errors(await _all_until_eof(tcp)) == ["line longer than 64 bytes"]
    ws = await run.connect("ws")
    await ws.send(HANDSHAKE + bytes((0x81, 0x80 | 100)) + b"\0\0\0\0" + b"x" * 100)
    assert b"message longer than 64 bytes" in await _all_until_eof(ws)


@serving(dataclasses.replace(MD, requests_per_s=5, request_burst=5))
async def test_a_session_flooding_requests_gets_errors_then_is_closed(run):
    flood = await run.connect("tcp")
    await flood.send(b'{"op":"ping"}\n' * 1000)
    got = await _all_until_eof(flood)
    assert got.count(b'"pong"') == 5
    reasons = _errors(got)
    assert len(reasons) == MAX_ERRORS and reasons[-1].startswith("too many errors; last: too many requests")
    ws = await run.connect("ws")
    await ws.send(HANDSHAKE + (bytes((0x89, 0x80)) + b"\0\0\0\0") * 50)  # pings count as requests
    got = await _all_until_eof(ws)
    assert got.count(b"\x8a\x00") == 5  # pongs for the burst only
    assert b"too many errors; last: too many requests" in got


async def test_failed_market_data_logins_are_limited_before_the_slow_check(tmp_path):
    store = CountingStore(tmp_path / "accounts.json")
    store.add(ACCOUNT, TOKEN)
    store.add(OTHER, OTHER_TOKEN)
    md_limits = dataclasses.replace(MD, failed_logins_per_address=2, failed_logins_per_account=3, failed_logins_total=4)

    @serving(md_limits, verify=store.verify, verify_nowait=store.verify_nowait)
    async def body(run):
        async def login(account: int, token: int, source: str = "127.0.0.1") -> list[bytes]:
            sock = await run.connect("tcp", source)
            await sock.send(json.dumps({"op": "login", "account": account, "token": token}).encode() + b"\n")
            if token in (TOKEN, OTHER_TOKEN):
                got = await sock.recv(4096)
                sock.close()
                return got
            return _errors(await _all_until_eof(sock))

        assert b"logged_in" in await login(ACCOUNT, TOKEN, "127.0.0.9")  # verified once: remembered
        checks = store.slow_checks
        assert await login(OTHER, 1) == ["bad credentials"]
        assert await login(OTHER, 2) == ["bad credentials"]
        (refused,) = await login(OTHER, 3)
        assert refused.startswith("too many failed logins from your address (at most 2 per 60 s); try again in")
        assert await login(OTHER, 4, "127.0.0.2") == ["bad credentials"]
        (refused,) = await login(OTHER, 5, "127.0.0.3")
        assert refused.startswith("too many failed logins for this account")
        assert await login(ACCOUNT, 6, "127.0.0.4") == ["bad credentials"]
        (refused,) = await login(ACCOUNT, 7, "127.0.0.5")
        assert refused.startswith("too many failed logins on this server")
        assert store.slow_checks - checks == 4
        assert b"logged_in" in await login(ACCOUNT, TOKEN, "127.0.0.1")  # the holder of a known pair gets in
        assert run.notifier.statistics().refused_logins == 3

    await body()


@serving(dataclasses.replace(MD, address_requests_per_s=1, address_request_burst=6))
async def test_the_sessions_of_one_address_share_a_request_budget(run):
    first, second = await run.connect("tcp"), await run.connect("tcp")
    elsewhere = await run.connect("tcp", "127.0.0.2")
    for sock in (first, second):
        await sock.send(b'{"op":"ping"}\n' * 3)
        got = b""
        while got.count(b"\n") < 3:
            got += await sock.recv(4096)
        assert got.count(b'"pong"') == 3
    await second.send(b'{"op":"ping"}\n')
    assert _errors(await second.recv(4096)) == ["too many requests from your address (at most 1 a second)"]
    await elsewhere.send(b'{"op":"ping"}\n')
    assert b'"pong"' in await elsewhere.recv(4096)
    for sock in (first, second, elsewhere):
        sock.close()


def test_the_slow_login_check_runs_at_the_lowest_priority():
    """scrypt runs on CPU nothing more urgent wants: a login flood delays logins, not trading."""
    import threading

    from ringex.order_entry.accounts import CHECK_THREAD_NICE, check_executor

    def nice_of_this_thread() -> int:
        stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[16])

    with check_executor() as executor:
        assert executor.submit(nice_of_this_thread).result() == CHECK_THREAD_NICE == 19
    assert nice_of_this_thread() == os.nice(0)  # the caller's own thread is untouched


async def test_a_fleet_logging_in_to_market_data_at_once_costs_one_check(tmp_path):
    store = CountingStore(tmp_path / "accounts.json")
    store.add(OTHER, OTHER_TOKEN)
    md_limits = dataclasses.replace(MD, failed_logins_per_address=2, failed_logins_per_account=2)

    @serving(md_limits, verify=store.verify, verify_nowait=store.verify_nowait)
    async def body(run):
        fleet = [await run.connect("tcp") for _ in range(10)]
        for sock in fleet:  # all at once: they wait for the same check
            await sock.send(json.dumps({"op": "login", "account": OTHER, "token": OTHER_TOKEN}).encode() + b"\n")
        for sock in fleet:
            assert b"logged_in" in await sock.recv(4096)
            sock.close()
        assert store.slow_checks == 1

    await body()
