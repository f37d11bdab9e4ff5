"""The client library (blocking and trio) and ``ringex order``, against a gateway process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
from support.order_entry import ACCOUNT, TOKEN, OrderEntry

from ringex.codes import Op, Reason, ReplyType, Side
from ringex.order_entry.client import ClientConnection, LoginRejected, OrderClient, Reply, TrioOrderClient
from ringex.order_entry.protocol import encode_reply

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    ex = OrderEntry(tmp_path_factory.mktemp("client"))
    yield ex
    assert ex.close() == 0
    assert "Traceback" not in ex.log(), ex.log()


def test_sans_io_connection_skips_heartbeats_and_waits_for_whole_frames():
    conn = ClientConnection()
    data = encode_reply(ReplyType.HEARTBEAT) + encode_reply(ReplyType.REJECT, reason=Reason.BAD_QTY, symbol=b"ACME")
    conn.receive_data(data[:100])
    assert conn.next_reply() is None
    conn.receive_data(data[100:])
    r = conn.next_reply()
    assert (r.msg_type, r.reason_name, r.symbol, r.ok) == ("X", "BAD_QTY", "ACME", False)
    assert conn.next_reply() is None


def test_reply_in_words():
    k = Reply("K", 0, Side.BUY, 0, "ACME", 3, 99, 105, 10, 1000, 1)
    assert str(k) == "ACK ACME buy 10 @ 105 order 99 (client id 3), journal seq 1000"
    x = Reply("X", Reason.BAD_PRICE, Side.SELL, 0, "ACME", 4, 0, 103, 1, 0, 1)
    assert str(x) == "REJECT ACME sell 1 @ 103 (client id 4): BAD_PRICE"
    assert str(Reply("J", 2, 0, 0, "", 0, 0, 0, 0, 0, 0)) == "LOGIN REJECTED: BAD_CREDENTIALS"


def test_blocking_client_new_cancel_replace(exchange):
    with OrderClient.connect("127.0.0.1", exchange.port) as c:
        assert c.login(ACCOUNT, TOKEN).msg_type == "A"
        k = c.buy("ACME", 10, 105)
        assert k.ok and k.order_id and k.symbol == "ACME" and k.qty == 10 and k.price == 105
        assert c.sell("ACME", 5, tif="P", price=110).ok
        assert c.sell("ACME", 5, market=True).ok
        assert c.buy("ACME", 5, market=True, tif="F").ok
        r = c.replace("ACME", k.order_id, 110, 8)
        assert (r.msg_type, r.order_id, r.price, r.qty) == ("K", k.order_id, 110, 8)
        x = c.cancel("ACME", k.order_id)
        assert (x.msg_type, x.order_id) == ("K", k.order_id)
        bad = c.buy("ACME", 10, 103)
        assert (bad.msg_type, bad.reason_name) == ("X", "BAD_PRICE")
    assert [exchange.journaled("ACME", k.seq + i)["msg_type"] for i in range(6)] == [
        Op.NEW,
        Op.NEW,
        Op.NEW,
        Op.NEW,
        Op.REPLACE,
        Op.CANCEL,
    ]


def test_blocking_client_pipelines_and_gets_replies_in_order(exchange):
    with OrderClient.connect("127.0.0.1", exchange.port) as c:
        c.login(ACCOUNT, TOKEN)
        ids = [c.submit_order("BOLT", "buy", 1, 10 + i) for i in range(50)]
        assert [c.next_reply().client_order_id for _ in ids] == ids


def test_blocking_client_login_rejected(exchange):
    with OrderClient.connect("127.0.0.1", exchange.port) as c, pytest.raises(LoginRejected) as exc:
        c.login(ACCOUNT, TOKEN + 1)
    assert exc.value.reply.reason == Reason.BAD_CREDENTIALS


class HeartbeatingGateway:
    """A real listening socket standing in for a gateway that is alive but never answers:
    to the one connection it accepts it sends a heartbeat every 50 ms, until ``answer``
    is set (then it sends one ACK, order 42) or 100 heartbeats have gone (then it hangs
    up, so a client whose wait restarts on each heartbeat fails the test, not hangs it).
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)  # a client that never connects must not hang the thread
        self.port = self.listener.getsockname()[1]
        self.answer = threading.Event()
        self.heartbeats = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            while not self.answer.wait(0.05) and self.heartbeats < 100:
                conn.sendall(encode_reply(ReplyType.HEARTBEAT))
                self.heartbeats += 1
            if self.answer.is_set():
                conn.sendall(encode_reply(ReplyType.ACK, symbol=b"ACME", order_id=42))
                conn.recv(1)  # until the client hangs up

    def __enter__(self) -> HeartbeatingGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.answer.set()
        self._thread.join(15)
        self.listener.close()
        assert not self._thread.is_alive()


def test_blocking_client_times_out_waiting_for_a_reply_while_heartbeats_keep_arriving():
    """The timeout is a deadline for the reply: heartbeats arriving meanwhile are
    skipped and do not restart the wait."""
    with HeartbeatingGateway() as gateway, OrderClient.connect("127.0.0.1", gateway.port, timeout=0.5) as c:
        with pytest.raises(TimeoutError):
            c.next_reply()
        assert gateway.heartbeats >= 2  # they did arrive during the wait
        gateway.answer.set()
        reply = c.next_reply()  # the session is still usable after a timeout
        assert (reply.msg_type, reply.order_id) == ("K", 42)


async def test_trio_client_deadline_holds_while_heartbeats_keep_arriving():
    """The trio client has no timeout of its own: the caller's cancel scope is already a
    deadline, and heartbeats must not swallow its cancellation."""
    with HeartbeatingGateway() as gateway:
        async with await TrioOrderClient.connect("127.0.0.1", gateway.port) as c:
            with trio.move_on_after(0.5) as scope:
                await c.next_reply()
            assert scope.cancelled_caught and gateway.heartbeats >= 2
            gateway.answer.set()
            with trio.fail_after(5):
                reply = await c.next_reply()
            assert (reply.msg_type, reply.order_id) == ("K", 42)


async def test_trio_client(exchange):
    async with await TrioOrderClient.connect("127.0.0.1", exchange.port) as c:
        assert (await c.login(ACCOUNT, TOKEN)).session > 0
        k = await c.buy("BOLT", 3, 50)
        assert k.ok
        assert (await c.replace("BOLT", k.order_id, 51, 2)).ok
        assert (await c.cancel("BOLT", k.order_id)).ok
        x = await c.sell("NOPE", 1, 1)
        assert x.reason == Reason.UNKNOWN_SYMBOL
        with trio.fail_after(5):
            await c.heartbeat()
            assert (await c.sell("BOLT", 1, 50)).ok


def order_cli(exchange, *args: str, env_token: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_token:
        env.update(RINGEX_ACCOUNT=str(ACCOUNT), RINGEX_TOKEN=str(TOKEN))
    else:
        env.pop("RINGEX_ACCOUNT", None)
        env.pop("RINGEX_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "ringex", "order", *args, "--host", "127.0.0.1", "--port", str(exchange.port)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_order_cli_buy_replace_cancel(exchange):
    out = order_cli(exchange, "buy", "ACME", "10", "105", "--post-only")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ACK ACME buy 10 @ 105 order ")
    order_id = out.stdout.split(" order ")[1].split()[0]
    out = order_cli(exchange, "replace", order_id, "110", "4", "--symbol", "ACME")
    assert out.returncode == 0 and out.stdout.startswith("ACK replace ACME 4 @ 110 order " + order_id), out.stdout
    out = order_cli(exchange, "cancel", order_id, "--symbol", "ACME")
    assert out.returncode == 0 and out.stdout.startswith(f"ACK cancel ACME order {order_id}"), out.stdout
    out = order_cli(exchange, "sell", "ACME", "3", "--market")
    assert out.returncode == 0 and out.stdout.startswith("ACK ACME sell 3 order "), out.stdout


def test_order_cli_reports_rejects_and_problems_in_words(exchange):
    out = order_cli(exchange, "buy", "ACME", "10", "103")
    assert out.returncode == 1 and "REJECT" in out.stdout and "BAD_PRICE" in out.stdout
    out = order_cli(exchange, "buy", "ACME", "10")
    assert out.returncode == 2 and "needs a PRICE" in out.stderr
    out = order_cli(exchange, "cancel", "5")
    assert out.returncode == 2 and "--symbol" in out.stderr
    out = order_cli(exchange, "buy", "ACME", "1", "100", env_token=False)
    assert out.returncode == 2 and "RINGEX_ACCOUNT" in out.stderr
    out = order_cli(exchange, "buy", "ACME", "1", "100", "--token", "12345")
    assert out.returncode == 2 and "BAD_CREDENTIALS" in out.stderr


def test_the_plain_socket_client_in_the_docs_works(exchange, tmp_path):
    doc = (ROOT / "docs" / "protocol.md").read_text()
    block = doc.split("## A client in 20 lines of plain Python")[1].split("```python\n")[1].split("```")[0]
    script = tmp_path / "client.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, str(script), "127.0.0.1", str(exchange.port), str(ACCOUNT), str(TOKEN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "login: A"
    assert lines[1].startswith("K reason 0 order ")
