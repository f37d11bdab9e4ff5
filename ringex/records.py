"""Fixed-size records that travel through the rings and into the journal.

Every stage of the exchange hands these structured numpy records to the next one,
so they are defined once, here, and nowhere else.

- ``COMMAND``: one slot of a symbol's in-ring, 64 bytes. Its layout *is* the order
  entry frame of protocol version 1 (``../shared/PROTOCOL.md``), so the gateway views
  a ``recv`` buffer as ``COMMAND`` records with ``np.frombuffer`` and copies the valid
  ones into the ring in one slice. The gateway stamps what the client may not choose:
  the session id in ``session`` (the frame's reserved u32), the exchange order id in
  ``order_id`` for a new order, the session's account in ``account`` and the receive
  time in ``ts_ns`` (the frame's token field, which only a login uses).
  The command's sequence is its position in the ring, which is also its key in the
  journal, so it is not stored in the slot.
- ``EVENT``: one slot of a symbol's out-ring, 128 bytes (two cache lines). A trade has
  two parties and each owner is told about it with their own ids, so a trade record
  carries the taker in the main fields and the maker in the ``contra_*`` fields. That
  does not fit in 64 bytes; splitting a trade into two records would make every
  consumer re-pair them, so the event slot is two lines instead.

The codes that fill these fields (``Op``, ``Side``, ``EventKind``...) are in
``ringex.codes``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COMMAND",
    "EVENT",
    "SYMBOL_LEN",
    "encode_symbol",
    "decode_symbol",
    "make_records",
]

SYMBOL_LEN = 8

COMMAND = np.dtype(
    {
        "names": [
            "msg_type",
            "side",
            "order_type",
            "tif",
            "session",
            "symbol",
            "client_order_id",
            "order_id",
            "price",
            "qty",
            "account",
            "ts_ns",
        ],
        "formats": ["u1", "u1", "u1", "u1", "<u4", "S8", "<u8", "<u8", "<i8", "<i8", "<u8", "<u8"],
        "offsets": [0, 1, 2, 3, 4, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)

EVENT = np.dtype(
    {
        "names": [
            "kind",
            "side",
            "reason",
            "order_type",
            "tif",
            "seq",
            "ts_ns",
            "order_id",
            "client_order_id",
            "account",
            "price",
            "qty",
            "remaining",
            "trade_id",
            "contra_order_id",
            "contra_client_order_id",
            "contra_account",
            "contra_remaining",
            "symbol",
        ],
        # fmt: off
        "formats": [
            "u1",
            "u1",
            "u1",
            "u1",
            "u1",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<i8",
            "<i8",
            "<i8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<i8",
            "S8",
        ],
        # fmt: on
        "offsets": [0, 1, 2, 3, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112],
        "itemsize": 128,
    }
)
"""Field meanings, per event kind:

- every event: ``seq`` is the symbol's sequence of the command that caused it and
  ``ts_ns`` that command's receive time; ``symbol`` the symbol.
- ``ACCEPTED``: the order rests. ``order_id``, ``client_order_id``, ``account``,
  ``side``, ``order_type``, ``tif``, ``price``; ``qty`` and ``remaining`` its open qty.
- ``TRADE``: ``trade_id``; ``price`` and ``qty`` of the print (the maker's price);
  ``side`` the taker's side; ``order_id``, ``client_order_id``, ``account`` and
  ``remaining`` are the taker's, ``contra_*`` the maker's (``remaining`` is what is
  left open on each order after this trade).
- ``CANCELLED``: ``reason`` (an ``EventReason`` in the cancel range); ``qty`` the
  quantity cancelled; ``remaining`` 0.
- ``REPLACED``: the order now has ``price`` and open ``qty``; ``remaining`` equals
  ``qty``. Replace events come before any trade the replaced order makes.
- ``REJECTED``: ``reason`` (an ``EventReason`` in the reject range); the ids and
  fields as the command gave them.
"""


def encode_symbol(name: str) -> bytes:
    """The 8-byte, NUL-padded ASCII form of a symbol name, as in frames and slots."""
    raw = name.encode("ascii")
    if not 1 <= len(raw) <= SYMBOL_LEN:
        raise ValueError(f"symbol {name!r} must be 1 to {SYMBOL_LEN} ASCII characters")
    return raw.ljust(SYMBOL_LEN, b"\0")


def decode_symbol(raw: bytes) -> str:
    return bytes(raw).rstrip(b"\0").decode("ascii", errors="replace")


def make_records(dtype: np.dtype, n: int = 1, **fields) -> np.ndarray:
    """``n`` zeroed records of ``dtype`` (``COMMAND`` or ``EVENT``) with ``fields`` set:
    each a scalar for every record or a sequence of ``n``; a ``symbol`` may be given as
    a name. The one way tools and tests build records by hand."""
    out = np.zeros(n, dtype)
    for name, value in fields.items():
        if name == "symbol" and isinstance(value, str):
            value = encode_symbol(value)
        out[name] = value
    return out
