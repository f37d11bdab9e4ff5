"""The JetStream side of the cluster: stream names, subjects and the message format.

One stream per kind of record, one subject per symbol:

==============  ===========================  ==================================
stream          subject                      payload
==============  ===========================  ==================================
``<name>_cmd``  ``<name>.cmd.<SYMBOL>``      ``COMMAND`` records, 64 bytes each
``<name>_evt``  ``<name>.evt.<SYMBOL>``      ``EVENT`` records, 128 bytes each
==============  ===========================  ==================================

A message is one batch: the records' bytes back to back, exactly as the journal holds
them, with headers naming the journal sequence of the first record and the count
(``FIRST_HEADER``, ``COUNT_HEADER``). A subject's messages follow each other with no
gap and no overlap, so the last message of a subject says where its copy ends: that
is the bridge's position, kept in JetStream itself rather than in a local file.

Exactly once, across the bridge's own crash and restart: each message carries
``Nats-Expected-Last-Subject-Sequence`` (the stream sequence of the subject's message
before it, as the bridge last saw it), so a publish from a stale position is refused
instead of appended twice, and ``Nats-Msg-Id`` (subject, first sequence and count), so a
retried publish whose first attempt landed is dropped by the stream's duplicate window.

Everything here but ``ensure_streams``, ``connect``, ``beat`` and ``run_process`` (the
body of each cluster process) is sans-IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable

import numpy as np

from ringex.config import ClusterSettings
from ringex.records import COMMAND, EVENT
from ringex.topology import CMD, EVT

__all__ = [
    "FIRST_HEADER",
    "COUNT_HEADER",
    "WRONG_LAST_SEQUENCE",
    "Batch",
    "join",
    "stream_name",
    "subject",
    "subjects",
    "symbol_of",
    "encode_headers",
    "decode",
    "ensure_streams",
    "connect",
    "beat",
    "run_process",
]

log = logging.getLogger("ringex.cluster")

FIRST_HEADER = "Ringex-First-Seq"
COUNT_HEADER = "Ringex-Count"
# JetStream's error code for a publish whose Nats-Expected-Last-Subject-Sequence is not
# the subject's last sequence (JSStreamWrongLastSequenceErrF)
WRONG_LAST_SEQUENCE = 10071
# how long a duplicate Nats-Msg-Id is remembered: the longest a retried publish may
# trail its first attempt (nats-server's default; said here because the proof of
# exactly-once leans on the expected-sequence header, not on this window)
DUPLICATE_WINDOW_S = 120.0

DTYPES = {CMD: COMMAND, EVT: EVENT}


def join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """``parts`` end to end in one array of ``dtype``, padding kept: ``np.concatenate``
    of structured arrays drops the padding bytes (numpy 2 promotes to the packed form),
    and the journal's and JetStream's records are the padded ones."""
    if len(parts) == 1:
        return parts[0]
    out = np.empty(sum(len(p) for p in parts), dtype)
    at = 0
    for part in parts:
        out[at : at + len(part)] = part
        at += len(part)
    return out


def stream_name(cluster: ClusterSettings, kind: str) -> str:
    return f"{cluster.name}_{kind}"


def subject(cluster: ClusterSettings, kind: str, symbol: str) -> str:
    return f"{cluster.name}.{kind}.{symbol}"


def subjects(cluster: ClusterSettings, kind: str) -> str:
    """Every symbol's subject of ``kind`` (the stream's subject filter)."""
    return f"{cluster.name}.{kind}.*"


def symbol_of(subject_name: str) -> str:
    return subject_name.rpartition(".")[2]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One message's content: ``records`` (``COMMAND`` or ``EVENT``) of ``symbol`` from
    journal sequence ``first``."""

    kind: str
    symbol: str
    first: int
    records: np.ndarray

    @property
    def end(self) -> int:
        """The journal sequence after the last record."""
        return self.first + len(self.records)


def encode_headers(subject_name: str, first: int, count: int, last_stream_seq: int) -> dict[str, str]:
    """The headers of a message holding journal records ``first .. first + count - 1``
    of ``subject_name``, published after the subject's stream sequence ``last_stream_seq``
    (0: the subject is empty)."""
    return {
        "Nats-Msg-Id": f"{subject_name}:{first}:{count}",
        "Nats-Expected-Last-Subject-Sequence": str(last_stream_seq),
        FIRST_HEADER: str(first),
        COUNT_HEADER: str(count),
    }


class MessageError(ValueError):
    """A message on a ringex subject that is not a batch of records: someone else
    published there."""


def decode(kind: str, subject_name: str, headers: dict | None, data: bytes) -> Batch:
    """The ``Batch`` a message of ``kind`` carries; ``MessageError`` if it is not one."""
    dtype = DTYPES[kind]
    try:
        first = int(headers[FIRST_HEADER])
        count = int(headers[COUNT_HEADER])
    except (TypeError, KeyError, ValueError):
        raise MessageError(f"{subject_name}: a message without {FIRST_HEADER}/{COUNT_HEADER} headers") from None
    if first < 0 or count < 1 or len(data) != count * dtype.itemsize:
        raise MessageError(f"{subject_name}: {len(data)} bytes do not hold {count} records from {first}")
    return Batch(kind, symbol_of(subject_name), first, np.frombuffer(data, dtype=dtype))


async def ensure_streams(js, cluster: ClusterSettings) -> None:
    """Create the two streams if they do not exist (idempotent; a bridge, a follower and
    a standby may each be first). File storage and no limits: a follower numbers its
    channels from the first event of every symbol, so the event stream keeps them all."""
    from nats.js import api  # noqa: PLC0415
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    for kind in (CMD, EVT):
        name = stream_name(cluster, kind)
        try:
            await js.stream_info(name)
            continue
        except NotFoundError:
            pass
        config = api.StreamConfig(
            name=name,
            subjects=[subjects(cluster, kind)],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            num_replicas=cluster.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
        )
        try:
            await js.add_stream(config)
            log.info("created stream %s (%s)", name, config.subjects[0])
        except Exception:
            # another party created it between our look and our add: fine if it exists now
            await js.stream_info(name)


async def connect(cluster: ClusterSettings, name: str, stopping: asyncio.Event | None = None):
    """A NATS connection to ``cluster.nats``, retried until it succeeds (or ``stopping``
    is set: None). Once connected the client reconnects by itself, forever: an outage of
    NATS is waited out, never a reason to exit."""
    import nats  # noqa: PLC0415

    servers = [u.strip() for u in cluster.nats.split(",")]

    # the client's own callbacks, so an outage is one line each way in our log
    async def on_error(exc: Exception) -> None:
        log.warning("%s: NATS: %s: %s", name, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        log.warning("%s: disconnected from NATS; reconnecting", name)

    async def on_reconnected() -> None:
        log.info("%s: reconnected to NATS", name)

    delay = 0.1
    while stopping is None or not stopping.is_set():
        try:
            return await nats.connect(
                servers=servers,
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                # a reconnecting client buffers publishes; ours are requests that time
                # out and are retried from the journal, so keep the buffer small
                pending_size=8 << 20,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
        except Exception as exc:  # NoServersError, OSError, TimeoutError: all mean "not yet"
            log.warning("%s: cannot reach NATS at %s (%s); retrying in %.1f s", name, cluster.nats, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return None


async def beat(control, role: str, stopping: asyncio.Event) -> None:
    """Report ``role`` alive on the control block every half second until ``stopping``:
    the heartbeat of each cluster role's asyncio loop (the supervisor restarts a role
    whose heartbeat stops)."""
    while not stopping.is_set():
        control.beat(role)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.5)


def run_process(service, role: str, control, handlers: dict[int, Callable[[], None]] | None = None) -> int:
    """The body of a cluster process (``ringex.roles``: bridge, follower or standby):
    run ``service`` with its heartbeat until SIGTERM/SIGINT, ``handlers`` for more
    signals, and close it whatever happens. ``service.run(on_ready=...)`` says when it
    is ready; ``service.stop``, ``.stopping`` and ``.close`` do the rest."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        for sig, handler in (handlers or {}).items():
            loop.add_signal_handler(sig, handler)
        heartbeat = asyncio.create_task(beat(control, role, service.stopping))
        try:
            await service.run(on_ready=lambda: control.set_ready(role, True))
        finally:
            heartbeat.cancel()

    try:
        asyncio.run(main())
    finally:
        service.close()
    return 0
