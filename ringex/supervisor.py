"""``ringex up``: the supervisor that owns the exchange's shared memory and processes.

::

    supervisor ── creates ──► control block, every ring of ``ringex.topology``
        │
        ├─ spawns (``ringex.roles``), in order, each waiting for the last to report ready:
        │    journaler ─► matcher shard(s) (recover first) ─► notifier ─► gateway
        │    ─► FIX acceptor (if ``[fix]`` is enabled: it enters orders through the gateway)
        │
        └─ watches: a child that dies is restarted, when and with what effect on
           trading as ``ringex.restart_policy`` says: while a journaler or matcher
           recovers the exchange is STARTING and the gateway answers NOT_READY; one that
           keeps dying halts trading. A gateway or notifier that keeps dying is restarted
           with backoff and never halts trading (unless market_data_outage = "halt").

Why this order: the journaler records, for every new ring, which journal sequence the
ring's first slot is; the shards and the gateway number their sequences from that, so
they start after it. The shards recover their books before the notifier and gateway
start, so the first order meets a recovered book. The gateway comes last so nothing is
accepted before everything behind it runs.

Stopping (SIGINT/SIGTERM): the exchange goes to STOPPING and the gateway stops (its
clients' unacknowledged requests are not lost: whatever reached an in-ring is drained
and journaled); the supervisor waits until the shards, the journaler and the FIX
acceptor have taken everything in the rings, then stops the FIX acceptor (it logs its
sessions out with their last reports sent), the shards (each leaves a snapshot), the
notifier and the journaler (which commits a last round), unlinks the shared memory and
exits 0. The FIX acceptor's death does not stop order entry (the exchange stays
READY while it restarts): it is an edge of the exchange, like a client.

Resource handling: one exchange per data directory, enforced with a lock file (a
second ``ringex up`` on the same directory is refused and told the pid of the first).
Rings and the control block are named from the data directory, so two exchanges on
different directories never collide, and rings a killed supervisor left behind are
replaced on the next start.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

from ringex import preflight, roles, runfile
from ringex.config import Config
from ringex.control import ControlBlock, ExchangeState
from ringex.order_entry.accounts import (
    DEMO_OPERATOR,
    AccountError,
    create_demo_accounts,
    demo_accounts,
    mark_demo_shown,
    unshown_demo_accounts,
)
from ringex.restart_policy import RESTART_WINDOW_S, RestartPolicy
from ringex.ring import Ring
from ringex.runfile import RUN_FILE
from ringex.topology import BRIDGE, FIX, JOURNALER, MATCHER, NOTIFIER, PRIMARY, SUPERVISOR, Topology

__all__ = ["Supervisor", "StartError", "prepare_journal", "RUN_FILE", "LOCK_FILE"]

log = logging.getLogger("ringex.supervisor")

LOCK_FILE = "ringex.lock"
# How long a stage gets to recover and report ready. A first start on a new machine
# compiles the numba kernels (17 s to ready on an idle 2-core machine,
# perf/cold_start.py; longer on a busy one); later starts load them from the cache.
READY_TIMEOUT_S = 300.0
# How long shutdown waits for the rings to drain and for each child to exit.
DRAIN_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
# MAX_RESTARTS, RESTART_WINDOW_S: ringex.restart_policy says what a crash loop is and
# which stages halt trading when they are in one.
POLL_S = 0.05
# A stage not ready after this long is most likely compiling its kernels (numba's cache
# is missing or stale): say so rather than sit silent. Warm starts take ~1 s a stage.
STILL_STARTING_S = 5.0
# The modules with numba kernels, each cached in its own __pycache__ (``kernels_cached``).
JIT_MODULES = ("matcher_jit", "wal", "order_entry/protocol", "order_entry/session")


def kernels_cached(package: Path | None = None) -> bool:
    """Whether numba's cache holds every kernel module's code (else a start compiles
    them: 17 s to ready on an idle 2-core machine, ``perf/cold_start.py``). With
    ``NUMBA_CACHE_DIR`` set the cache is elsewhere: assume so, and let
    ``STILL_STARTING_S`` tell a slow start."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    package = Path(__file__).resolve().parent if package is None else package
    for module in JIT_MODULES:
        path = package / module
        if not any((path.parent / "__pycache__").glob(f"{path.name}.*.nbi")):
            return False
    return True


class StartError(RuntimeError):
    """The exchange cannot start; the message says why and what to do."""


def prepare_journal(config: Config) -> None:
    """Record the symbol specs (replay must size each book as it was) before any stage
    opens the journal; a changed band for a journaled symbol is a ``StartError``."""
    from ringex.wal import Journal, JournalError

    try:
        with Journal(config.data_dir, durability=config.durability) as journal:
            journal.ensure_specs(config.symbols)
    except JournalError as exc:
        raise StartError(str(exc)) from None


@dataclasses.dataclass
class _Child:
    role: str
    process: multiprocessing.Process | None = None
    deaths: list[float] = dataclasses.field(default_factory=list)
    restart_at: float | None = None  # dead, to be restarted at this time.monotonic() (backoff)
    pausing: bool = False  # its death paused trading until it is back


class Supervisor:
    """``mode`` (``ringex.topology.MODES``): a primary runs the whole exchange (and the
    bridge when ``[cluster] nats`` is set); a standby (``ringex standby``) runs it with
    its feeder from JetStream in place of the gateway; a follower (``ringex follow``)
    runs only its feeder and a notifier."""

    def __init__(self, config: Config, *, out=sys.stdout, mode: str = PRIMARY) -> None:
        self.config = config
        self.topology = Topology.for_config(config, mode=mode)
        self.data = Path(config.data_dir)
        self.out = out
        self.control: ControlBlock | None = None
        self.rings: list[Ring] = []
        self.children: list[_Child] = []
        self._lock_fd: int | None = None
        self._stopping = False
        self.policy = RestartPolicy(config.market_data_outage)
        self.demo_accounts: dict[int, int] = {}
        self._started = time.time()

    # -- start ---------------------------------------------------------------------------

    def _lock(self) -> None:
        fd = os.open(self.data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartError(
                f"another ringex is already running on {self.data} (pid {holder}); stop it first or use another --data"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _make_shared_memory(self) -> None:
        # A clean start: rings and doorbells left by a killed supervisor are stale by
        # definition (we hold the data directory's lock, so their owner is gone).
        self.control = ControlBlock.create(self.topology.control)
        self.rings = self.topology.create()

    def _plan_children(self) -> None:
        self.children = [_Child(role) for role in self.topology.roles]
        for child in self.children:
            self.control.register(child.role)

    def _spawn(self, child: _Child) -> None:
        self.control.set_ready(child.role, False)
        process = roles.spawn(child.role, self.config, self.topology)
        child.process = process
        self.control.set_pid(child.role, process.pid)
        log.info("started %s (pid %d)", child.role, process.pid)

    def _wait_ready(self, child: _Child) -> None:
        began = time.monotonic()
        deadline = began + READY_TIMEOUT_S
        told = False
        while not self._ready(child):
            if not told and time.monotonic() - began > STILL_STARTING_S:
                told = True
                print(
                    f"  {child.role}: still starting after {STILL_STARTING_S:.0f} s (compiling its kernels: a first"
                    " start, or the first after an upgrade; later starts take seconds)",
                    file=self.out,
                    flush=True,
                )
            if self._stopping:
                raise StartError("stopped while starting")
            if not child.process.is_alive():
                raise StartError(
                    f"{child.role} exited with status {child.process.exitcode} while starting; see {self.data / 'ringex.log'}"
                )
            if time.monotonic() > deadline:
                raise StartError(f"{child.role} did not become ready within {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        if told:
            print(f"  {child.role}: ready after {time.monotonic() - began:.0f} s", file=self.out, flush=True)
        log.info("%s ready", child.role)

    def _ready(self, child: _Child) -> bool:
        return any(r["role"] == child.role and r["ready"] for r in self.control.roles())

    def _write_run_file(self, state: str) -> None:
        info = {
            "pid": os.getpid(),
            "data_dir": str(self.data.resolve()),
            "started": self._started,
            "state": state,
            "topology": self.topology.to_json(),
            "host": self.config.host,
            "ports": {
                "order": self.config.order_port,
                "md": self.config.md_port,
                "ws": self.config.ws_port,
                **({"fix": self.config.fix_port} if self.topology.fix else {}),
            },
            "durability": self.config.durability,
            "mode": self.topology.mode,
            "log": str((self.data / "ringex.log").resolve()),
        }
        runfile.write_run_file(self.data, info)

    def start(self) -> None:
        """Check, then start every stage; ``StartError`` says what went wrong in one line.
        The data directory and every port are checked (``ringex.preflight``) before
        anything is created or spawned; the demo accounts' tokens are kept until a
        banner has shown them (``ringex.order_entry.accounts``)."""
        self._started = time.time()
        try:
            preflight.check_data_dir(self.config)
            self._lock()
            preflight.check_ports(self.config, self.topology)
        except preflight.PreflightError as exc:
            raise StartError(str(exc)) from None
        from ringex.logs import setup_logging

        setup_logging(self.config, SUPERVISOR)
        log.info("starting on %s (durability %s)", self.data.resolve(), self.config.durability)
        prepare_journal(self.config)
        # a standby or follower takes the primary's accounts file, copied by the operator
        if self.topology.mode == PRIMARY:
            self.demo_accounts = create_demo_accounts(self.data) or unshown_demo_accounts(self.data)
        if not kernels_cached():
            print(
                "compiling the matching kernels: first start only, about 20 s on two idle cores"
                " (later starts take seconds)...",
                file=self.out,
                flush=True,
            )
        self._make_shared_memory()
        self._write_run_file("starting")
        self._plan_children()
        for child in self.children:
            self._spawn(child)
            self._wait_ready(child)
        self.control.set_state(ExchangeState.READY)
        log.info("ready: accepting orders")
        self._write_run_file("ready")
        self._banner()

    def _has_demo_accounts(self) -> bool:
        try:
            return bool(demo_accounts(self.data))
        except AccountError:
            return False

    def _banner(self) -> None:
        c = self.config
        first = c.symbols[0]
        if self.topology.mode != PRIMARY:
            lines = [
                f"ringex {self.topology.mode} is up: {len(c.symbols)} symbols from {c.cluster.nats}, data in {self.data}",
                f"  market data   {c.host}:{c.md_port} (TCP, JSON lines)  ws://{c.host}:{c.ws_port}/ (WebSocket)",
                "stop with Ctrl-C",
            ]
            print("\n".join(lines), file=self.out, flush=True)
            return
        lines = [
            f"ringex is up: {len(c.symbols)} symbols, durability {c.durability}, data in {self.data}",
            f"  order entry   {c.host}:{c.order_port}  (binary protocol v1, docs/protocol.md)",
            f"  market data   {c.host}:{c.md_port} (TCP, JSON lines)  ws://{c.host}:{c.ws_port}/ (WebSocket)",
            f"  web view      http://{c.host if ':' not in c.host else f'[{c.host}]'}:{c.ws_port}/  (the market in a browser)",
        ]
        if self.topology.fix:
            lines.append(
                f"  FIX 4.4       {c.host}:{c.fix_port}  (TargetCompID {c.fix.comp_id}, Username = account,"
                " Password = token; docs/fix.md)"
            )
        lines += [
            "  symbols       "
            + ", ".join(f"{s.name} (tick {s.tick}, {s.price_min}..{s.price_max})" for s in c.symbols),
        ]
        if self.demo_accounts:
            lines.append("  demo accounts (shown here once; `ringex accounts demo` shows them again):")
            lines += [
                f"    {'operator' if a == DEMO_OPERATOR else 'account'} {a}  token {t}"
                for a, t in self.demo_accounts.items()
            ]
            account, token = next((a, t) for a, t in self.demo_accounts.items() if a != DEMO_OPERATOR)
        else:
            account, token = "ACCOUNT", "TOKEN"
            if self._has_demo_accounts():
                lines.append("  demo accounts: `ringex accounts demo` shows their tokens")
        lines += [
            "try, in another terminal (after `. .venv/bin/activate`):",
            f"  export RINGEX_ACCOUNT={account} RINGEX_TOKEN={token}",
            f"  ringex order buy {first.name} 10 100",
            f"  ringex order sell {first.name} 4 100",
            f"  ringex watch {first.name}",
            "  ringex status",
            "stop with Ctrl-C",
        ]
        print("\n".join(lines), file=self.out, flush=True)
        if self.demo_accounts:
            mark_demo_shown(self.data)

    # -- watch -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``serve_forever`` to shut down (safe from a signal handler)."""
        self._stopping = True

    def serve_forever(self) -> None:
        halted_logged = False
        while not self._stopping:
            for child in self.children:
                if self._stopping:
                    break
                if child.restart_at is not None:
                    if time.monotonic() >= child.restart_at and self.control.state is not ExchangeState.HALTED:
                        child.restart_at = None
                        self._restart(child)
                elif not child.process.is_alive():
                    self._handle_death(child)
            if self.control.state is ExchangeState.HALTED and not halted_logged:
                log.critical("exchange halted: %s", self.control.reason)
                halted_logged = True
            time.sleep(POLL_S)

    def _handle_death(self, child: _Child) -> None:
        from ringex.journal.journaler import EXIT_HALTED

        code = child.process.exitcode
        child.process.join()
        if self.control.state is ExchangeState.HALTED:
            return  # nothing to restart into: the operator must look (ringex status says why)
        if child.role == JOURNALER and code == EXIT_HALTED:
            return
        now = time.monotonic()
        child.deaths = [t for t in child.deaths if now - t < RESTART_WINDOW_S] + [now]
        decision = self.policy.on_death(child.role, len(child.deaths))
        if decision.halt:
            self.control.halt(
                f"{child.role} died {len(child.deaths)} times in {RESTART_WINDOW_S:.0f} s (last status {code})"
            )
            return
        later = f" in {decision.delay_s:g} s" if decision.delay_s else ""
        log.error("%s (pid %d) died with status %s; restarting it%s", child.role, child.process.pid, code, later)
        child.pausing = decision.pause_trading
        if decision.pause_trading:
            self.control.set_state(ExchangeState.STARTING)
        self.control.count_restart(child.role)
        if decision.delay_s:
            child.restart_at = now + decision.delay_s  # serve_forever restarts it then
            return
        self._restart(child)

    def _restart(self, child: _Child) -> None:
        try:
            self._spawn(child)
            self._wait_ready(child)
        except StartError as exc:
            if self._stopping:
                return
            log.error("restarting %s failed: %s", child.role, exc)
            return  # the next turn of the watch loop sees it dead and tries again
        paused = any(c.restart_at is not None and c.pausing for c in self.children)  # one still waits its turn
        if self.control.state is ExchangeState.STARTING and not paused:
            self.control.set_state(ExchangeState.READY)
            log.info("%s recovered; accepting orders again", child.role)
        else:
            log.info("%s recovered", child.role)

    # -- stop ------------------------------------------------------------------------------

    def _child(self, role: str) -> _Child | None:
        return next((c for c in self.children if c.role == role), None)

    def _terminate(self, child: _Child | None) -> None:
        if child is None or child.process is None:
            return
        if child.process.is_alive():
            child.process.terminate()
        child.process.join(EXIT_TIMEOUT_S)
        if child.process.is_alive():
            log.error("%s did not exit within %.0f s; killing it", child.role, EXIT_TIMEOUT_S)
            child.process.kill()
            child.process.join()

    def _drained(self) -> bool:
        for ring in self.rings:
            stats = ring.statistics()
            if any(c.cursor != stats.producer_cursor for c in stats.consumers):
                return False
        return True

    def shutdown(self) -> None:
        if self._lock_fd is None:
            return  # never started: the data directory is someone else's
        if self.control is not None:
            self.control.set_state(ExchangeState.STOPPING)
        entry = self.topology.entry
        self._terminate(self._child(entry))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        behind = [c for c in self.children if c.role != entry]
        while self.rings and not self._drained():
            if time.monotonic() > deadline or not all(c.process and c.process.is_alive() for c in behind):
                log.warning("rings not drained at shutdown; recovery will replay the journal")
                break
            time.sleep(POLL_S)
        # The FIX acceptor (its sessions have had every report), the shards (each leaves
        # a snapshot), the journaler last (it commits a last round after everyone
        # upstream of it has stopped).
        self._terminate(self._child(FIX))
        for role in self.topology.roles:
            if role.startswith(MATCHER):
                self._terminate(self._child(role))
        self._terminate(self._child(NOTIFIER))
        self._terminate(self._child(JOURNALER))
        # last: on SIGTERM the bridge publishes what the journaler's last round committed
        self._terminate(self._child(BRIDGE))
        for ring in self.rings:
            ring.close()
        self.rings = []
        self.topology.remove()
        if self.control is not None:
            self.control.close()
            self.control.unlink()
            self.control = None
        if self._lock_fd is not None:  # the run file is ours only while we hold the lock
            runfile.remove_run_file(self.data)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("stopped cleanly")
