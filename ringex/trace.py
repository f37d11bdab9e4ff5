"""Stage tracing: when each sampled request passed each stage of the exchange.

With ``trace_every = N`` in the config (or ``RINGEX_TRACE_EVERY=N``), every process
notes, for the commands whose journal sequence is a multiple of N, the wall-clock time
it did its part::

    RECEIVED   gateway    the recv that carried the request (the command's ts_ns)
    PUBLISHED  gateway    the command is in its in-ring
    JOURNALED  journaler  the commit that holds it is done and the cursor moved
    ACKED      gateway    its K was handed to the socket
    MATCHED    matcher    its events are in the out-ring
    EVENTS     journaler  the commit that holds its events is done
    PRINTED    notifier   its events were handed to every subscriber's socket

so where the time goes is measured, not inferred: ``stage_latencies`` joins the
processes' records on (symbol, seq) and gives each stage's delay after RECEIVED.

Each process keeps its records in a small array and appends them to
``<data_dir>/trace/<role>.trace`` (raw ``TRACE`` records) when the array fills, at
most every ``FLUSH_S`` otherwise, and on exit: one ``write`` per flush, off every
ring. Sampling keeps the cost to a few records per thousand requests; with N = 0 (the
default) the stages hold a ``NullTracer`` and pay one attribute test per batch.
"""

from __future__ import annotations

import enum
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["Stage", "TRACE", "RecordFile", "Tracer", "NullTracer", "tracer_for", "read_traces", "stage_latencies"]

TRACE = np.dtype([("t_ns", "<i8"), ("seq", "<i8"), ("stage", "u1"), ("symbol", "u1"), ("pad", "V6")])
# Records kept before a write; a flush also happens at most FLUSH_S after the first.
BUFFER = 4096
FLUSH_S = 0.5


class Stage(enum.IntEnum):
    RECEIVED = 1
    PUBLISHED = 2
    JOURNALED = 3
    ACKED = 4
    MATCHED = 5
    EVENTS = 6
    PRINTED = 7


def trace_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "trace"


class NullTracer:
    """Tracing off: every call is a no-op (``every`` is 0, so callers may skip work)."""

    every = 0

    def samples(self, first_seq: int, last_seq: int) -> bool:
        return False

    def span(self, stage: Stage, symbol: int, first_seq: int, n: int, t_ns: int | None = None) -> None:
        pass

    def seqs(self, stage: Stage, symbol: int, seqs, t_ns: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordFile:
    """Records of one dtype held in memory and appended to ``path``: one ``write`` when
    ``BUFFER`` are held, when the first of them is ``FLUSH_S`` old (looked at on every
    append, and by ``flush_due`` for a process that may append nothing for a while),
    and on ``close``. The stage traces and the FIX acceptor's turns (``ringex.fix.turns``)."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._buf = np.zeros(BUFFER, dtype)
        self._n = 0
        self._first_at = 0.0

    def append(self, record: tuple) -> None:
        if self._n == 0:
            self._first_at = time.monotonic()
        self._buf[self._n] = record
        self._n += 1
        if self._n == BUFFER or time.monotonic() - self._first_at > FLUSH_S:
            self.flush()

    def flush_due(self) -> None:
        if self._n and time.monotonic() - self._first_at > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._n:
            os.write(self._fd, self._buf[: self._n].tobytes())
            self._n = 0

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


class Tracer:
    """One process's trace records (see the module docstring)."""

    def __init__(self, path: Path, every: int) -> None:
        self.every = every
        self.path = path
        self._file = RecordFile(path, TRACE)

    def samples(self, first_seq: int, last_seq: int) -> bool:
        """Whether any sequence in ``first_seq .. last_seq`` is sampled: two integer
        operations, so a stage asks this before it builds the list of sampled sequences
        (most batches have none, and tracing must not cost what it measures)."""
        every = self.every
        return last_seq // every * every >= first_seq

    def span(self, stage: Stage, symbol: int, first_seq: int, n: int, t_ns: int | None = None) -> None:
        """Note ``stage`` for the sampled sequences among ``first_seq .. first_seq + n - 1``."""
        every = self.every
        seq = -(-first_seq // every) * every
        end = first_seq + n
        if seq >= end:
            return
        t = time.time_ns() if t_ns is None else t_ns
        while seq < end:
            self._add(stage, symbol, seq, t)
            seq += every

    def seqs(self, stage: Stage, symbol: int, seqs, t_ns: int | None = None) -> None:
        """Note ``stage`` for those of ``seqs`` (any iterable of ints) that are sampled."""
        t = time.time_ns() if t_ns is None else t_ns
        every = self.every
        for seq in seqs:
            if seq % every == 0:
                self._add(stage, symbol, int(seq), t)

    def _add(self, stage: Stage, symbol: int, seq: int, t_ns: int) -> None:
        self._file.append((t_ns, seq, stage, symbol, b""))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def tracer_for(config, role: str) -> Tracer | NullTracer:
    """The tracer of process ``role``: a ``Tracer`` writing under the data directory if
    the config asks for tracing, else a ``NullTracer``."""
    if not config.trace_every:
        return NullTracer()
    return Tracer(trace_dir(config.data_dir) / f"{role}.trace", config.trace_every)


def read_traces(data_dir: str | os.PathLike[str]) -> np.ndarray:
    """Every trace record the processes of ``data_dir`` wrote (any order)."""
    parts = [np.fromfile(p, TRACE) for p in sorted(trace_dir(data_dir).glob("*.trace"))]
    return np.concatenate(parts) if parts else np.zeros(0, TRACE)


def stage_latencies(records: np.ndarray, since_ns: int = 0, until_ns: int | None = None) -> dict[str, dict[str, float]]:
    """Per stage, the delay after RECEIVED of the sampled requests received from
    ``since_ns`` to ``until_ns`` (wall clock, ns), in µs: ``{"JOURNALED": {"n": .., "p50": .., "p90": .., "p99": .., "max": ..}, ...}``.
    A request's stage is its first record of that stage (a restarted stage may note one
    twice)."""
    if not len(records):
        return {}
    key = (records["symbol"].astype(np.int64) << 56) | records["seq"]
    received = records["stage"] == Stage.RECEIVED
    start = dict(zip(key[received].tolist(), records["t_ns"][received].tolist(), strict=True))
    end = until_ns if until_ns is not None else 1 << 62
    out: dict[str, dict[str, float]] = {}
    for stage in Stage:
        if stage is Stage.RECEIVED:
            continue
        mask = records["stage"] == stage
        first: dict[int, int] = {}
        for k, t in zip(key[mask].tolist(), records["t_ns"][mask].tolist(), strict=True):
            if k in start and since_ns <= start[k] < end and (k not in first or t < first[k]):
                first[k] = t
        if not first:
            continue
        us = np.array([(t - start[k]) / 1000 for k, t in first.items()])
        out[stage.name] = {
            "n": len(us),
            "p50": round(float(np.percentile(us, 50)), 1),
            "p90": round(float(np.percentile(us, 90)), 1),
            "p99": round(float(np.percentile(us, 99)), 1),
            "max": round(float(us.max()), 1),
        }
    return out
