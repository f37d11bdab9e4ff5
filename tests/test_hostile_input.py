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

import json

import pytest

from ringex.marketdata import MAX_LINE_BYTES, ClientError, parse_request, session_message

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
