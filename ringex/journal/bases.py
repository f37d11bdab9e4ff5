"""What a stage reads from the journal before it joins a running set of rings.

The journal numbers each symbol's commands and events from the first ever; a ring
numbers its slots from 0. The journaler records, per ring, the journal sequence of
the ring's slot 0 (the *base*), keyed by the ring's creation time. These helpers wait
for the journaler to have recorded it, and for it to have taken whatever a dead
predecessor of the caller left in the ring, then answer from the journal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ringex.records import COMMAND
from ringex.ring import Ring
from ringex.wal import Journal

__all__ = ["gateway_start", "ring_base", "wait_until"]

JOURNAL_CONSUMER = "journaler"
WAIT_TIMEOUT_S = 60.0


def wait_until(condition, what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    """Poll ``condition`` every 2 ms; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.002)


def ring_base(data_dir: str, kind: str, symbol: str, ring: Ring) -> int:
    """The journal sequence of ``ring``'s slot 0 (``kind`` "cmd" for an in-ring, "evt"
    for an out-ring), once the journaler has recorded it for this very ring."""
    created = int(ring.header["created_ns"])
    found: list[int] = []

    def recorded() -> bool:
        with Journal(data_dir, readonly=True) as journal:
            known = journal.ring_base(kind, symbol)
        if known is not None and known[0] == created:
            found.append(known[1])
            return True
        return False

    wait_until(recorded, f"the journaler to attach {ring.name}")
    return found[0]


def gateway_start(data_dir: str, in_rings: Mapping[str, str]) -> tuple[dict[str, int], int]:
    """``(seq_bases, first_order_id)`` for a gateway (re)starting on ``in_rings``.

    The gateway is the in-rings' only producer, so while it is down they are still:
    once the journaler has taken all of them, the journal's highest order id is the
    highest ever issued, and the new gateway's ids continue past it.
    """
    bases: dict[str, int] = {}
    for symbol, name in in_rings.items():
        with Ring.attach(name, COMMAND, readonly=True) as ring:
            wait_until(
                lambda r=ring: r.consumer_cursor(JOURNAL_CONSUMER) >= r.producer_cursor,
                f"the journaler to take {name}",
            )
            bases[symbol] = ring_base(data_dir, "cmd", symbol, ring)
    with Journal(data_dir, readonly=True) as journal:
        first_order_id = journal.max_order_id() + 1
    return bases, first_order_id
