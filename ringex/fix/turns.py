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
through a ``ringex.trace.RecordFile``, as the stage traces do.
"""

from __future__ import annotations

import os

import numpy as np

from ringex.trace import RecordFile, trace_dir

__all__ = ["TURN", "turn_file", "read_turns"]

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


def turn_file(data_dir: str | os.PathLike[str], role: str) -> RecordFile:
    """Where process ``role`` appends its ``TURN`` records."""
    return RecordFile(trace_dir(data_dir) / f"{role}.turns", TURN)


def read_turns(data_dir: str | os.PathLike[str], role: str) -> np.ndarray:
    """The ``TURN`` records process ``role`` wrote under ``data_dir`` (none: empty)."""
    path = trace_dir(data_dir) / f"{role}.turns"
    return np.fromfile(path, TURN) if path.exists() else np.zeros(0, TURN)
