"""Hostile input for the exchange's three ports, shared by the fuzz tests, the suite
against a running exchange (tests/test_hostile_exchange.py) and the benchmark
(perf/hostile_bench.py).

Everything here is bytes a stranger could send: the line that halted the exchange
(issue 18), its relatives (deep nesting, huge numbers, wrong types, bad UTF-8,
over-long lines), WebSocket handshakes that are broken or crash wsproto, frames of
every opcode with any payload, and order entry streams of valid, mutated and random
frames (``fuzz/fuzz_session.py``'s generator).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# The line that killed the notifier: json.loads raised RecursionError (issue 18).
DEEP_NESTING = b"[" * 3000

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def ws_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x11\x22\x33\x44", rsv: int = 0) -> bytes:
    """A client frame, masked as clients must (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# Market data requests (one per line on TCP, one per text message on WebSocket).
MD_REQUESTS: list[bytes] = [
    DEEP_NESTING,
    b"{" * 3000,
    b'{"op":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"op":"login","account":' + b"9" * 4000 + b',"token":1}',
    b'{"op":"login","account":1e999999,"token":1}',
    b'{"op":"login","account":-1,"token":NaN}',
    b'{"op":"subscribe","channel":["trades"],"symbol":"ACME"}',
    b'{"op":"subscribe","channel":"trades","symbol":{"a":[1,2]}}',
    b'{"op":"subscribe","channel":"depth","symbol":"ACME","levels":1e308}',
    b'{"op":"subscribe","channel":"depth","symbol":"ACME","levels":-1}',
    b'{"op":"unsubscribe","channel":"orders"}',
    b'{"op":"' + b"x" * 3000 + b'"}',
    b'{"op":"\xed\xa0\x80"}',
    b"\xff\xfe\xfd",
    b"\x00" * 200,
    b"null",
    b'"just a string"',
    b"[]",
    b"9" * 4000,
]
TOO_LONG_LINE = b'{"op":"ping","pad":"' + b"x" * 5000 + b'"}'

# WebSocket handshakes a stranger might send: broken HTTP, not an upgrade, a Host that
# is not IDNA (wsproto lets the codec's UnicodeError escape on it: each of the first two
# ended the notifier before ws_server), a huge header.
WS_HANDSHAKES: list[bytes] = [
    HANDSHAKE.replace(b"Host: x", b"Host: \xc3\xa9"),
    HANDSHAKE.replace(b"Host: x", b"Host: xn--"),  # bad punycode: a UnicodeError from the IDNA codec
    HANDSHAKE.replace(b"GET /", b"GET /\xff"),
    HANDSHAKE.replace(b"GET", b"POST"),
    HANDSHAKE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 99"),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS client hello
]


def _load_fuzz_session():
    spec = importlib.util.spec_from_file_location("fuzz_session", ROOT / "fuzz" / "fuzz_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ_SESSION = _load_fuzz_session()


def order_entry_stream(rng: np.random.Generator, account: int | None = None, token: int | None = None) -> bytes:
    """Valid, mutated and random frames (``fuzz_session.stream``), after a login with
    ``account``/``token`` if given (an authenticated hostile client), else none."""
    data = FUZZ_SESSION.stream(rng, login_first=False)
    if account is not None:
        data = FUZZ_SESSION.encode_login(account, token) + data
    return data


def md_garbage(rng: np.random.Generator) -> bytes:
    """Lines for the TCP market data port: hostile requests, random bytes, a few valid ones."""
    lines = []
    for _ in range(int(rng.integers(1, 8))):
        roll = rng.random()
        if roll < 0.5:
            lines.append(MD_REQUESTS[int(rng.integers(len(MD_REQUESTS)))])
        elif roll < 0.8:
            lines.append(rng.bytes(int(rng.integers(1, 300))).replace(b"\n", b" "))
        else:
            lines.append(json.dumps({"op": "subscribe", "channel": "trades", "symbol": "ACME"}).encode())
    return b"\n".join(lines) + b"\n"


def ws_garbage(rng: np.random.Generator) -> bytes:
    """A WebSocket session's worth of hostile frames, after a valid handshake."""
    frames = [HANDSHAKE]
    for _ in range(int(rng.integers(1, 8))):
        roll = rng.random()
        if roll < 0.4:
            frames.append(ws_frame(1, MD_REQUESTS[int(rng.integers(len(MD_REQUESTS)))]))
        elif roll < 0.6:
            frames.append(
                ws_frame(int(rng.integers(0, 16)), rng.bytes(int(rng.integers(0, 126))), bool(rng.random() < 0.7))
            )
        elif roll < 0.7:
            frames.append(ws_frame(9, rng.bytes(int(rng.integers(0, 126)))))  # ping
        elif roll < 0.8:
            frames.append(bytes([0x81, 0xFF]) + struct.pack("!Q", int(rng.integers(0, 2**63))) + b"\0\0\0\0")
        else:
            frames.append(rng.bytes(int(rng.integers(1, 100))))
    return b"".join(frames)
