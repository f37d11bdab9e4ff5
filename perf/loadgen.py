"""The load generator: an open-loop sender, ack reader and market data recorder that
stays out of the measurement.

Topology (one process; its hot loop is C, ``loadgen.c``, called through ctypes)::

  LoadgenProcess ── S order sessions: N/C/R frames at t0 + t_ns[i] ──► exchange
        │        ◄── K/X (ack time, order id, receive stamp; resting ids → C/R targets)
        └─────── market data: trades (every symbol) + each account's orders channel
                 (trade, fill and error lines kept with their receive time)

Why it looks like this: the Python sender this replaces took 30-64% of a core at 10,000
orders/s and was 1-4 ms late at p99 on this 2-core machine. On this VM a wake-up alone
costs 12-20 µs of CPU and a ``send`` that wakes the receiver ~5-10 µs more (measurements
in perf/RESULTS.md, "The load generator"), so what a sender costs is the number of its
wake-ups, whatever it is written in. The C loop therefore:

- wakes only for send instants (``epoll_pwait2`` on a nanosecond deadline, 1 ns timer
  slack) and for the public trades connection, and sends each session's due frames in one
  ``send`` straight from the plan's array; the workload's tick (``perf/e2e.py``
  ``DEFAULT_TICK_US``) makes requests due close together share an instant;
- reads replies and the private ``orders`` channels after the sends of a wake-up (those
  at most every ``MD_POLL_S``), never waking for them, and takes their receive time from
  the kernel (``SO_TIMESTAMPNS``: when the data reached the socket), so reading late does
  not make a reply late (TCP merges segments that wait unread into one stamped with the
  newest: a reply queued behind a later one on its connection is reported as late as
  that one); ``eager_acks`` wakes for every reply instead, to check that.

Build: ``build()`` compiles ``loadgen.c`` with the system C compiler (``$CC``, default
``cc``) on first use into ``perf/.build/`` (git-ignored), named by a hash of the source,
so an edit rebuilds and concurrent first uses do not collide.

What it records per request (``send_step`` returns the path of an ``.npz``):
``intended_ns`` (t0 + t_ns), ``sent_ns`` (just before the ``send`` that handed its
last byte to the kernel), ``ack_ns`` (the kernel's receive time of its reply),
``ack_type``, ``reason``, ``order_id``, ``ts_ns`` (the exchange's receive stamp,
wall clock) and ``kind`` (GTC where a C/R had no target yet); and the kept market data
lines (``md_kept``, ``md_kept_ns``). Lateness is ``sent_ns - intended_ns``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from perf.workload import POOL, make_workload

__all__ = ["build", "LoadgenProcess", "send_step", "login", "md_connect"]

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BUILD_DIR = HERE / ".build"
# Longest market data line the recorder holds before dropping it: the notifier's lines
# are ~100-300 bytes; a trades connection gets bursts, so the buffer is also the most
# one recv() returns.
MD_BUFFER = 4 << 20
# While sending, the private orders connections (only fills are read from them) are read
# at most this often: reading each at every wake-up cost ~1 recv per request. Their lines
# then carry the arrival time of the newest data of a read (TCP merges what waits).
MD_POLL_S = 0.005
# The sender starts this long after the sessions are logged in, so the first intended
# times are in the future for every session (picked, not derived).
START_DELAY_NS = 200_000_000
# Linux's SO_TIMESTAMPNS (Python's socket module does not name it)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


##########################################################################################
# build and bindings
##########################################################################################


def build(cc: str | None = None) -> Path:
    """The compiled ``loadgen.c`` (a shared library), built first if needed."""
    source = SOURCE.read_bytes()
    out = BUILD_DIR / f"loadgen-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if out.exists():
        return out
    BUILD_DIR.mkdir(exist_ok=True)
    compiler = cc or os.environ.get("CC", "cc")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [compiler, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"the load generator needs a C compiler: {compiler!r} not found (set $CC)") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building the load generator failed: {' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, out)  # atomic: a concurrent build of the same source wrote the same bytes
    return out


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


# field names of the C structs, in order
_SESSION_COUNTS = "fd n n_symbols pool".split()
_SESSION_ARRAYS = (
    "t_ns frames kind sym side mid dist gtc_price qty slot "
    "sent_ns ack_ns ack_type reason order_id ts_ns pool_oid pool_side pool_head"
).split()
_SESSION_OUT = "next sent_bytes acked closed error_reason stray recvs sends".split()
_MD_OUT = (
    "kept_lines lines rejected closed_mask bytes recvs dropped waits t_end cpu_ns unstamped wall_minus_mono".split()
)


class _Session(ctypes.Structure):
    """``lg_session`` of loadgen.c, field for field."""

    _fields_ = [(n, _I64) for n in _SESSION_COUNTS] + [(n, _PTR) for n in _SESSION_ARRAYS]
    _fields_ += [(n, _I64) for n in _SESSION_OUT]


class _Config(ctypes.Structure):
    _fields_ = [
        (n, _I64) for n in "t0 drain_ns linger_ns linger_max_ns md_buf_bytes n_eager_md eager_acks md_poll_ns".split()
    ]


class _Md(ctypes.Structure):
    _fields_ = [("kept", _PTR), ("kept_len", _I64), ("kept_ns", _PTR)] + [(n, _I64) for n in _MD_OUT]


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    lib.lg_run.restype = _I64
    lib.lg_run.argtypes = [
        ctypes.POINTER(_Config),
        ctypes.POINTER(_Session),
        _I64,
        ctypes.POINTER(ctypes.c_int32),
        _I64,
        ctypes.POINTER(_Md),
    ]
    lib.lg_free.argtypes = [_PTR]
    lib.lg_free.restype = None
    return lib


##########################################################################################
# sessions
##########################################################################################


def login(host: str, port: int, account: int, token: int) -> socket.socket:
    """An order entry session logged in as ``account`` (non-blocking once logged in)."""
    from ringex.codes import ReplyType
    from ringex.order_entry.protocol import encode_login

    sock = socket.create_connection((host, port), timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_login(account, token))
    reply = b""
    while len(reply) < 64 or reply[0] == ReplyType.HEARTBEAT:  # heartbeats may come before the answer
        if len(reply) >= 64:
            reply = reply[64:]
            continue
        chunk = sock.recv(64 - len(reply))
        if not chunk:
            raise ConnectionError(f"account {account}: the exchange closed the session at login")
        reply += chunk
    if reply[0] != ReplyType.LOGIN_ACCEPTED:
        raise ConnectionError(f"account {account}: login answered {chr(reply[0])!r}")
    sock.setblocking(False)
    return sock


def md_connect(host: str, port: int, requests: list[dict], expect: int) -> socket.socket:
    """A market data session that sent ``requests`` and saw ``expect`` subscribed acks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # stamped from the start: a snapshot that follows an ack (the orders channel's open
    # orders) is read by the C loop, which would otherwise find it without a stamp
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    # room for a burst while this process waits for a core: the notifier cuts off a
    # subscriber more than 1 MiB behind, on top of what the kernel buffers
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.settimeout(10.0)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
    buf = b""
    while buf.count(b'"type":"subscribed"') < expect:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the market data server closed the session while subscribing: {buf[-300:]!r}")
        if b'"type":"error"' in chunk:
            raise ConnectionError(f"the market data server refused a subscription: {chunk[:300]!r}")
        buf += chunk
    # whatever followed the acks (trades of an earlier step) is read by the C loop and
    # counted there; it cannot match this step's requests (their stamps are newer)
    sock.setblocking(False)
    return sock


##########################################################################################
# one step
##########################################################################################


def send_step(cfg: dict, started=None) -> str:
    """Log in, subscribe, run the open loop of ``cfg`` and save what happened to an
    ``.npz`` in ``cfg["workdir"]``; returns its path. ``started(t0)`` is called with the
    monotonic intended time 0 just before the loop starts.

    ``cfg``: host, port, md_port, accounts [(account, token)], symbols, rate, seconds,
    sessions, seed, drain_s, linger_s, linger_max_s, workdir.
    """
    lib = _library()
    symbols = cfg["symbols"]
    plans = make_workload(
        cfg["rate"], cfg["seconds"], cfg["sessions"], symbols, cfg["seed"], tick_ns=int(cfg.get("tick_us", 0) * 1000)
    )
    accounts = cfg["accounts"]
    socks = [login(cfg["host"], cfg["port"], *accounts[i % len(accounts)]) for i in range(len(plans))]
    md_socks = []
    if cfg.get("md_port"):
        trades = [{"op": "subscribe", "channel": "trades", "symbol": s} for s in symbols]
        md_socks.append(md_connect(cfg["host"], cfg["md_port"], trades, len(symbols)))
        for account, token in dict(accounts).items():
            orders = [{"op": "login", "account": account, "token": token}, {"op": "subscribe", "channel": "orders"}]
            md_socks.append(md_connect(cfg["host"], cfg["md_port"], orders, 1))
    arrays = []  # kept alive while C holds pointers into them
    structs = (_Session * len(plans))()
    for st, plan, sock in zip(structs, plans, socks, strict=True):
        n = len(plan.t_ns)
        a = {
            "t_ns": np.ascontiguousarray(plan.t_ns, dtype=np.int64),
            "frames": np.ascontiguousarray(plan.frames),
            "kind": np.ascontiguousarray(plan.kind, dtype=np.uint8),
            "sym": np.ascontiguousarray(plan.sym, dtype=np.uint8),
            "side": np.ascontiguousarray(plan.side, dtype=np.uint8),
            "mid": np.ascontiguousarray(plan.mid, dtype=np.int64),
            "dist": np.ascontiguousarray(plan.dist, dtype=np.int64),
            "gtc_price": np.ascontiguousarray(plan.gtc_price, dtype=np.int64),
            "qty": np.ascontiguousarray(plan.qty, dtype=np.int64),
            "slot": np.ascontiguousarray(plan.slot, dtype=np.uint16),
            "sent_ns": np.zeros(n, np.int64),
            "ack_ns": np.zeros(n, np.int64),
            "ack_type": np.zeros(n, np.uint8),
            "reason": np.zeros(n, np.uint16),
            "order_id": np.zeros(n, np.uint64),
            "ts_ns": np.zeros(n, np.uint64),
            "pool_oid": np.zeros(len(symbols) * POOL, np.uint64),
            "pool_side": np.zeros(len(symbols) * POOL, np.uint8),
            "pool_head": np.zeros(len(symbols), np.int64),
        }
        assert a["frames"].itemsize == 64
        arrays.append(a)
        st.fd, st.n, st.n_symbols, st.pool = sock.fileno(), n, len(symbols), POOL
        for name, arr in a.items():
            setattr(st, name, arr.ctypes.data)
    md_fds = (ctypes.c_int32 * max(1, len(md_socks)))(*[s.fileno() for s in md_socks])
    md = _Md()
    t0 = time.monotonic_ns() + START_DELAY_NS
    config = _Config(
        t0=t0,
        drain_ns=int(cfg["drain_s"] * 1e9),
        linger_ns=int(cfg.get("linger_s", 0.3) * 1e9),
        linger_max_ns=int(cfg.get("linger_max_s", 5.0) * 1e9),
        md_buf_bytes=MD_BUFFER,
        n_eager_md=1 if md_socks else 0,  # the public trades connection wakes the loop
        eager_acks=int(bool(cfg.get("eager_acks"))),
        md_poll_ns=int(cfg.get("md_poll_s", MD_POLL_S) * 1e9),
    )
    if started is not None:
        started(t0)
    rc = lib.lg_run(ctypes.byref(config), structs, len(plans), md_fds, len(md_socks), ctypes.byref(md))
    try:
        kept = ctypes.string_at(md.kept, md.kept_len) if md.kept_len else b""
        kept_ns = (
            np.ctypeslib.as_array(ctypes.cast(md.kept_ns, ctypes.POINTER(ctypes.c_int64)), (md.kept_lines,)).copy()
            if md.kept_lines
            else np.zeros(0, np.int64)
        )
    finally:
        lib.lg_free(md.kept)
        lib.lg_free(md.kept_ns)
    for s in socks + md_socks:
        s.close()
    if rc:
        if rc <= -1000:
            raise MemoryError("the load generator ran out of memory or could not make its epoll set")
        st = structs[-rc - 1]
        how = {1: "closed the connection", 2: f"sent E (reason {st.error_reason})", 3: "failed a send/recv"}
        raise ConnectionError(f"order session {-rc - 1}: the exchange {how.get(st.closed, 'ended it')} mid-step")
    out = {
        "t0": np.int64(t0),
        # the exchange stamps wall-clock receive times; this maps our monotonic times to them
        "wall_minus_mono": np.int64(md.wall_minus_mono),
        "intended_ns": np.concatenate([t0 + a["t_ns"] for a in arrays]),
        "session": np.concatenate([np.full(len(a["t_ns"]), i, np.uint16) for i, a in enumerate(arrays)]),
        **{
            name: np.concatenate([a[name] for a in arrays])
            for name in ("sent_ns", "ack_ns", "ack_type", "reason", "order_id", "ts_ns", "kind")
        },
        "stray_replies": np.int64(sum(st.stray for st in structs)),
        "sends": np.int64(sum(st.sends for st in structs)),
        "order_recvs": np.int64(sum(st.recvs for st in structs)),
        "md_kept": np.frombuffer(kept, np.uint8),
        "md_kept_ns": kept_ns,
        "md_lines": np.int64(md.lines),
        "md_rejected": np.int64(md.rejected),
        "md_closed_mask": np.int64(md.closed_mask),
        "md_bytes": np.int64(md.bytes),
        "md_recvs": np.int64(md.recvs),
        "md_dropped": np.int64(md.dropped),
        "waits": np.int64(md.waits),
        "t_end": np.int64(md.t_end),
        "cpu_ns": np.int64(md.cpu_ns),
        "unstamped": np.int64(md.unstamped),
    }
    path = os.path.join(cfg["workdir"], f"loadgen-{os.getpid()}-{t0}.npz")
    np.savez(path, **out)
    return path


##########################################################################################
# the worker process
##########################################################################################


def _worker_main(conn) -> None:
    """For each step config from the parent: report ("started", t0), run the step,
    report ("done", path) or ("error", message). ``None`` ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    build()  # before the first step, not inside it
    while (cfg := conn.recv()) is not None:
        try:
            path = send_step(cfg, started=lambda t0: conn.send(("started", t0)))
            conn.send(("done", path))
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class LoadgenProcess:
    """The load generator as a separate process (spawned once, reused by every step),
    so its CPU is measured apart from the harness's. A context manager."""

    def __init__(self) -> None:
        build()  # a compiler error surfaces here, in the parent, with its message
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), name="loadgen", daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def start_step(self, cfg: dict, timeout: float = 60.0) -> int:
        """Hand the worker a step; returns its monotonic t0 once it is logged in."""
        self.conn.send(cfg)
        return self.expect("started", timeout)

    def expect(self, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"load generator: no {what!r} within {timeout} s")
            if not self.process.is_alive():
                raise RuntimeError(f"load generator died (exit code {self.process.exitcode})")
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        if kind != what:
            raise RuntimeError(f"load generator said {kind!r}, expected {what!r}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def __enter__(self) -> LoadgenProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
