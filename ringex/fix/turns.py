"""Where the FIX acceptor's turns spend their time (``perf/fix_bench.py --trace``).

The stage trace (``ringex.trace``) follows commands through the rings by journal
sequence. What FIX adds happens where no journal sequence names the order yet, or
no longer does: a NewOrderSingle is parsed, checked, stored and forwarded to the
gateway in one turn of the acceptor's loop; the gateway's ``K`` becomes an
ExecutionReport New, stored and sent, in another. So with tracing on (``trace_every``
not 0) the acceptor notes, for every turn that carried an order or a gateway reply,
four stamps::

    wake       select returned
    handled    every message the sockets brought is parsed and routed
    committed  the turn's store commit is done
    sent       its output is handed to the sockets (gateway connections, then FIX)

and how many orders and replies the turn carried. The stamps are
``time.perf_counter_ns`` (CLOCK_MONOTONIC), so a client on the same host joins them
with its own send and receive times. Records go to ``<data_dir>/trace/<role>.turns``
as ``ringex.trace.Tracer``'s do: one ``write`` when the buffer fills, when ``FLUSH_S``
has passed (the acceptor's tick asks), and on close.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ringex.trace import BUFFER, FLUSH_S, trace_dir

__all__ = ["TURN", "TurnTrace", "read_turns"]

TURN = np.dtype(
    [
        ("wake", "<i8"),
        ("handled", "<i8"),
        ("committed", "<i8"),
        ("sent", "<i8"),
        ("orders", "<u4"),
        ("replies", "<u4"),
    ]
)


class TurnTrace:
    """A buffer of ``TURN`` records appended to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records = np.zeros(BUFFER, TURN)
        self._n = 0
        self._first_ns = 0

    def note(self, wake: int, handled: int, committed: int, sent: int, orders: int, replies: int) -> None:
        if self._n == 0:
            self._first_ns = sent
        self._records[self._n] = (wake, handled, committed, sent, orders, replies)
        self._n += 1
        if self._n == BUFFER:
            self.flush()

    def flush_due(self) -> None:
        """Write the buffer if its first record is ``FLUSH_S`` old."""
        if self._n and time.perf_counter_ns() - self._first_ns > FLUSH_S * 1e9:
            self.flush()

    def flush(self) -> None:
        if self._n:
            with open(self.path, "ab") as f:
                f.write(self._records[: self._n].tobytes())
            self._n = 0

    def close(self) -> None:
        self.flush()


def read_turns(data_dir: str | os.PathLike[str], role: str) -> np.ndarray:
    """The ``TURN`` records process ``role`` wrote under ``data_dir`` (none: empty)."""
    path = trace_dir(data_dir) / f"{role}.turns"
    return np.fromfile(path, TURN) if path.exists() else np.zeros(0, TURN)
