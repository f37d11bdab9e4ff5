"""Fuzz the order entry codec and session logic (sans-IO), and optionally a live gateway.

Sans-IO (default): streams of mutated valid frames and random bytes, cut into random
chunks, go through ``Session.receive_data`` with an in-memory ring. Checked after
every stream:

- no exception, ever;
- exactly one reply per answered frame (everything but heartbeats and the login
  itself), in the order sent, each echoing its frame's client order id;
- every published command passed the reference validation (``validate_reference``)
  and carries the session's stamps;
- a closed session said why (``J`` or ``E``) as its last reply.

    .venv/bin/python fuzz/fuzz_session.py                 # 2,000 streams
    .venv/bin/python fuzz/fuzz_session.py --streams 50000 --seed 3
    .venv/bin/python fuzz/fuzz_session.py --gateway 127.0.0.1:7001 --account 1001 --token N

``--gateway`` sends the same kind of streams to a running gateway over many
connections, each followed by a probe order on a well-behaved session that must
still be acknowledged.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.oracles import validate_reference  # noqa: E402

from ringex.codes import MsgType, OrderType, ReplyType, Side, Tif  # noqa: E402
from ringex.config import OrderEntryLimits, SymbolSpec  # noqa: E402
from ringex.order_entry.protocol import (  # noqa: E402
    COMMAND,
    REPLY,
    SymbolTable,
    encode_cancel,
    encode_heartbeat,
    encode_login,
    encode_new_order,
    encode_replace,
)
from ringex.order_entry.session import OrderIdCounter, Session, SessionState  # noqa: E402

TABLE = SymbolTable([SymbolSpec("ACME", tick=5, price_min=100, price_max=1000, max_qty=500), SymbolSpec("BOLT")])
ACCOUNT, TOKEN = 1001, 42

SEEDS = [
    encode_new_order("ACME", Side.BUY, 10, 105),
    encode_new_order("BOLT", Side.SELL, 1, 7, tif=Tif.IOC),
    encode_new_order("ACME", Side.SELL, 1, 0, order_type=OrderType.MARKET, tif=Tif.FOK),
    encode_cancel("ACME", 5),
    encode_replace("BOLT", 9, 8, 2),
    encode_heartbeat(),
    encode_login(ACCOUNT, TOKEN),
]


def mutate(rng: np.random.Generator, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(int(rng.integers(0, 4))):
        b[int(rng.integers(0, 64))] = int(rng.integers(0, 256))
    return bytes(b)


def stream(rng: np.random.Generator, login_first: bool) -> bytes:
    parts = [encode_login(ACCOUNT, TOKEN if rng.random() < 0.9 else TOKEN + 1)] if login_first else []
    for _ in range(int(rng.integers(1, 60))):
        roll = rng.random()
        if roll < 0.6:
            parts.append(SEEDS[int(rng.integers(len(SEEDS)))])
        elif roll < 0.9:
            parts.append(mutate(rng, SEEDS[int(rng.integers(len(SEEDS)))]))
        else:
            parts.append(rng.bytes(int(rng.integers(1, 130))))
    return b"".join(parts)


class Rings:
    def __init__(self) -> None:
        self.commands: list[np.ndarray] = []
        self.counts = [0, 0]

    def publish(self, sym: int, commands: np.ndarray) -> int:
        first = self.counts[sym]
        self.counts[sym] += len(commands)
        self.commands.append(commands.copy())
        return first


def check_stream(rng: np.random.Generator, data: bytes) -> None:
    rings = Rings()
    session = Session(
        3, TABLE, lambda a, t: (a, t) == (ACCOUNT, TOKEN), OrderIdCounter(1), OrderEntryLimits(max_garbage=8)
    )
    pos = 0
    while pos < len(data) and session.state not in (SessionState.CLOSING, SessionState.CLOSED):
        step = int(rng.integers(1, 200))
        session.receive_data(data[pos : pos + step], bool(rng.random() < 0.95), rings.publish)
        pos += step
    out = session.data_to_send(np.array(rings.counts, dtype=np.int64))
    assert session.pending_acks == 0, "every K should be sendable once everything is durable"
    replies = np.frombuffer(out, dtype=REPLY)
    frames = np.frombuffer(data[: len(data) - len(data) % 64], dtype=COMMAND)
    # replay the expectation: which frames are answered, in order
    expect_cids = []
    logged_in = False
    for f in frames[: len(replies) + 64]:
        mt = int(f["msg_type"])
        if mt == MsgType.HEARTBEAT:
            continue
        if mt == MsgType.LOGIN and not logged_in:
            expect_cids.append(int(f["client_order_id"]))
            logged_in = (int(f["account"]), int(f["ts_ns"])) == (ACCOUNT, TOKEN)
            if not logged_in:
                break
            continue
        expect_cids.append(int(f["client_order_id"]))
    got = [int(c) for c in replies["client_order_id"] if True]
    kinds = bytes(replies["msg_type"])
    answered = [c for c, k in zip(got, kinds, strict=True) if k != ReplyType.ERROR]
    assert answered == expect_cids[: len(answered)], "replies out of order or missing"
    if session.state in (SessionState.CLOSING, SessionState.CLOSED) and len(data) >= 64:
        assert kinds and kinds[-1:] in (b"J", b"E"), f"closed without saying why: {kinds[-3:]!r}"
    if rings.commands:
        published = np.concatenate(rings.commands)
        assert (published["session"] == 3).all() and (published["account"] == ACCOUNT).all()
        assert not validate_reference(published, TABLE, True).any(), "an invalid command reached a ring"
    assert (kinds.count(b"K")) == sum(rings.counts)


def fuzz_sans_io(streams: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for i in range(streams):
        check_stream(rng, stream(rng, login_first=bool(rng.random() < 0.9)))
        if i and i % 1000 == 0:
            print(f"{i} streams ok", flush=True)
    print(f"{streams} streams ok in {time.perf_counter() - t0:.1f} s (seed {seed})")


def fuzz_gateway(address: str, account: int, token: int, streams: int, seed: int) -> None:
    host, port = address.rsplit(":", 1)
    rng = np.random.default_rng(seed)
    probe = socket.create_connection((host, int(port)), timeout=10)
    probe.sendall(encode_login(account, token))
    assert probe.recv(64)[:1] == b"A", "probe login failed"
    for i in range(streams):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            data = stream(rng, login_first=False)
            if rng.random() < 0.7:
                data = encode_login(account, token) + data
            try:
                s.sendall(data)
            except OSError:
                pass  # the gateway may close a garbage session while we still send
        probe.sendall(encode_new_order("ACME", Side.BUY, 1, 100, client_order_id=i))
        while (r := probe.recv(64))[:1] == b"H":
            pass
        assert r[:1] in (b"K", b"X"), f"probe got {r[:1]!r} after stream {i}"
    print(f"{streams} streams sent to {address}; the probe session was answered after each")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gateway", metavar="HOST:PORT")
    parser.add_argument("--account", type=int)
    parser.add_argument("--token", type=int)
    args = parser.parse_args()
    if args.gateway:
        fuzz_gateway(args.gateway, args.account, args.token, args.streams, args.seed)
    else:
        fuzz_sans_io(args.streams, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
