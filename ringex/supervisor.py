"""``ringex up``: the supervisor that owns the exchange's shared memory and processes.

::

    supervisor ── creates ──► control block, in-ring[SYM], out-ring[SYM]
        │
        ├─ spawns, in order, each waiting for the last to report ready:
        │    journaler ─► matcher shard(s) (recover first) ─► notifier ─► gateway
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
and journaled); the supervisor waits until the shards and the journaler have taken
everything in the rings, then stops the shards (each leaves a snapshot), the notifier
and the journaler (which commits a last round), unlinks the shared memory and exits 0.

Resource handling: one exchange per data directory, enforced with a lock file (a
second ``ringex up`` on the same directory is refused and told the pid of the first).
Rings and the control block are named from the data directory, so two exchanges on
different directories never collide, and rings a killed supervisor left behind are
replaced on the next start.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from ringex.config import Config, ConfigError, load_config
from ringex.control import ControlBlock, ExchangeState
from ringex.records import COMMAND, EVENT
from ringex.restart_policy import RESTART_WINDOW_S, RestartPolicy
from ringex.ring import PipeDoorbell, Ring

__all__ = ["Layout", "Supervisor", "layout_for", "add_arguments", "run", "RUN_FILE", "LOCK_FILE"]

log = logging.getLogger("ringex.supervisor")

RUN_FILE = "ringex.run.json"
LOCK_FILE = "ringex.lock"
# How long a stage gets to recover and report ready. A first start on a new machine
# compiles the numba kernels (about a minute); later starts load them from the cache.
READY_TIMEOUT_S = 300.0
# How long shutdown waits for the rings to drain and for each child to exit.
DRAIN_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
# MAX_RESTARTS, RESTART_WINDOW_S: ringex.restart_policy says what a crash loop is and
# which stages halt trading when they are in one.
POLL_S = 0.05


# -- names ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """The names of an exchange's shared memory, derived from its data directory."""

    prefix: str
    control: str
    in_rings: dict[str, str]
    out_rings: dict[str, str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def doorbell(self, role: str) -> str:
        """The doorbell process ``role`` sleeps on for all the rings it serves."""
        return f"{self.prefix}.bell.{role}"

    def loop_doorbell(self, role: str) -> PipeDoorbell:
        """The doorbell of an event loop (gateway, notifier): a FIFO it polls, not a semaphore."""
        return PipeDoorbell(self.doorbell(role))

    def doorbells(self, shards: int) -> list[str | PipeDoorbell]:
        return [
            self.doorbell("journaler"),
            self.loop_doorbell("gateway"),
            self.loop_doorbell("notifier"),
            *(self.doorbell(f"matcher-{i}") for i in range(shards)),
        ]


def layout_for(config: Config) -> Layout:
    from ringex.gateway import in_ring_name
    from ringex.notifier import out_ring_name

    digest = hashlib.blake2b(str(Path(config.data_dir).resolve()).encode(), digest_size=5).hexdigest()
    prefix = f"ringex-{digest}"
    symbols = [s.name for s in config.symbols]
    return Layout(
        prefix=prefix,
        control=f"/{prefix}.control",
        in_rings={s: in_ring_name(s, prefix) for s in symbols},
        out_rings={s: out_ring_name(s, prefix) for s in symbols},
    )


def shard_symbols(config: Config) -> list[tuple[str, ...]]:
    """Symbols dealt round-robin over ``config.shards`` matcher processes."""
    names = [s.name for s in config.symbols]
    n = min(config.shards, len(names))
    return [tuple(names[i::n]) for i in range(n)]


# -- children (module level so the spawn start method can pickle them) ---------------------


def _detach() -> None:
    """Make a child answer to the supervisor only: its own process group, so a Ctrl-C
    at the terminal reaches the supervisor alone and shutdown keeps its order, and a
    parent-death signal, so a supervisor killed with -9 does not leave it running."""
    import ctypes

    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        sys.exit(1)


def _attach_control(name: str, role: str) -> ControlBlock:
    _detach()
    control = ControlBlock.attach(name)
    control.set_pid(role, os.getpid())
    return control


def _journaler_child(config: Config, layout: Layout) -> None:
    from ringex.journaler import RingPair, run_journaler
    from ringex.logs import setup_logging

    setup_logging(config, "journaler")
    control = _attach_control(layout.control, "journaler")
    pairs = [RingPair(s, layout.in_rings[s], layout.out_rings[s]) for s in layout.in_rings]
    sys.exit(run_journaler(config.data_dir, pairs, durability=config.durability, control=control))


def _shard_child(plan) -> None:
    from ringex.shard import run_shard

    _detach()
    sys.exit(run_shard(plan))


def _notifier_child(config: Config, layout: Layout) -> None:
    from ringex.logs import setup_logging
    from ringex.notifier import run_until_signal

    setup_logging(config, "notifier")
    control = _attach_control(layout.control, "notifier")
    try:
        run_until_signal(config, ring_prefix=layout.prefix, on_ready=lambda ports: control.set_ready("notifier", True))
    finally:
        control.set_ready("notifier", False)


def _gateway_child(config: Config, layout: Layout) -> None:
    from ringex.gateway import serve
    from ringex.logs import setup_logging
    from ringex.startup import gateway_start

    setup_logging(config, "gateway")
    control = _attach_control(layout.control, "gateway")
    bases, first_order_id = gateway_start(config.data_dir, layout.in_rings)
    sys.exit(serve(config, ring_prefix=layout.prefix, control=control, seq_bases=bases, first_order_id=first_order_id))


# -- the supervisor ----------------------------------------------------------------------


class StartError(RuntimeError):
    """The exchange cannot start; the message says why and what to do."""


@dataclasses.dataclass
class _Child:
    role: str
    target: object
    args: tuple
    process: multiprocessing.Process | None = None
    deaths: list[float] = dataclasses.field(default_factory=list)
    restart_at: float | None = None  # dead, to be restarted at this time.monotonic() (backoff)
    pausing: bool = False  # its death paused trading until it is back


class Supervisor:
    def __init__(self, config: Config, *, out=sys.stdout) -> None:
        self.config = config
        self.layout = layout_for(config)
        self.data = Path(config.data_dir)
        self.out = out
        self.control: ControlBlock | None = None
        self.rings: list[Ring] = []
        self.children: list[_Child] = []
        self._lock_fd: int | None = None
        self._stopping = False
        self._ctx = multiprocessing.get_context("spawn")
        self.policy = RestartPolicy(config.market_data_outage)

    # -- start ---------------------------------------------------------------------------

    def _lock(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
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

    def _prepare_journal(self) -> None:
        """Record the symbol specs (replay must size each book as it was) before any
        child opens the journal; a changed band for a journaled symbol is refused here."""
        from ringex.wal import Journal, JournalError

        try:
            with Journal(self.config.data_dir, durability=self.config.durability) as journal:
                journal.ensure_specs(self.config.symbols)
        except JournalError as exc:
            raise StartError(str(exc)) from None

    def _make_shared_memory(self) -> None:
        layout = self.layout
        self.control = ControlBlock.create(layout.control)
        capacity = self.config.ring_capacity
        shards = shard_symbols(self.config)
        shard_of = {symbol: index for index, symbols in enumerate(shards) for symbol in symbols}
        # A clean start: rings and doorbells left by a killed supervisor are stale by
        # definition (we hold the data directory's lock, so their owner is gone).
        for bell in layout.doorbells(len(shards)):
            Ring.remove_doorbell(bell)
        for symbol in layout.in_rings:
            for name in (layout.in_rings[symbol], layout.out_rings[symbol]):
                Ring.remove(name)
            # Doorbells: the journaler, each shard, the gateway's and the notifier's loops
            # each serve several rings from one thread, and sleep once for them all.
            journaler = layout.doorbell("journaler")
            self.rings.append(
                Ring.create(
                    layout.in_rings[symbol],
                    COMMAND,
                    capacity,
                    consumers=["matcher", "journaler"],
                    doorbells={"matcher": layout.doorbell(f"matcher-{shard_of[symbol]}"), "journaler": journaler},
                    producer_doorbell=layout.loop_doorbell("gateway"),
                )
            )
            self.rings.append(
                Ring.create(
                    layout.out_rings[symbol],
                    EVENT,
                    capacity,
                    consumers=["journaler", "notifier"],
                    gating={"notifier": ["journaler"]},
                    doorbells={"journaler": journaler, "notifier": layout.loop_doorbell("notifier")},
                )
            )

    def _plan_children(self) -> None:
        from ringex.shard import ShardPlan, shard_role

        config, layout = self.config, self.layout
        self.children = [_Child("journaler", _journaler_child, (config, layout))]
        for index, symbols in enumerate(shard_symbols(config)):
            plan = ShardPlan(
                config=config,
                index=index,
                symbols=symbols,
                in_rings=tuple(layout.in_rings[s] for s in symbols),
                out_rings=tuple(layout.out_rings[s] for s in symbols),
                control=layout.control,
            )
            self.children.append(_Child(shard_role(index), _shard_child, (plan,)))
        self.children.append(_Child("notifier", _notifier_child, (config, layout)))
        self.children.append(_Child("gateway", _gateway_child, (config, layout)))
        for child in self.children:
            self.control.register(child.role)

    def _spawn(self, child: _Child) -> None:
        self.control.set_ready(child.role, False)
        process = self._ctx.Process(target=child.target, args=child.args, name=f"ringex-{child.role}")
        process.start()
        child.process = process
        self.control.set_pid(child.role, process.pid)
        log.info("started %s (pid %d)", child.role, process.pid)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready(child):
            if self._stopping:
                raise StartError("stopped while starting")
            if not child.process.is_alive():
                raise StartError(
                    f"{child.role} exited with status {child.process.exitcode} while starting; see {self.data / 'ringex.log'}"
                )
            if time.monotonic() > deadline:
                raise StartError(f"{child.role} did not become ready within {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        log.info("%s ready", child.role)

    def _ready(self, child: _Child) -> bool:
        return any(r["role"] == child.role and r["ready"] for r in self.control.roles())

    def _write_run_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "data_dir": str(self.data.resolve()),
            "started": time.time(),
            "layout": self.layout.to_json(),
            "host": self.config.host,
            "ports": {"order": self.config.order_port, "md": self.config.md_port, "ws": self.config.ws_port},
            "durability": self.config.durability,
        }
        tmp = self.data / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, self.data / RUN_FILE)

    def start(self) -> None:
        from ringex.accounts import create_demo_accounts

        self._lock()
        from ringex.logs import setup_logging

        setup_logging(self.config, "supervisor")
        log.info("starting on %s (durability %s)", self.data.resolve(), self.config.durability)
        self._prepare_journal()
        self.demo_accounts = create_demo_accounts(self.data)
        self._make_shared_memory()
        self._write_run_file()
        self._plan_children()
        for child in self.children:
            self._spawn(child)
            self._wait_ready(child)
        self.control.set_state(ExchangeState.READY)
        log.info("ready: accepting orders")
        self._banner()

    def _banner(self) -> None:
        c = self.config
        first = c.symbols[0]
        lines = [
            f"ringex is up: {len(c.symbols)} symbols, durability {c.durability}, data in {self.data}",
            f"  order entry   {c.host}:{c.order_port}  (binary protocol v1, docs/protocol.md)",
            f"  market data   {c.host}:{c.md_port} (TCP, JSON lines)  ws://{c.host}:{c.ws_port}/ (WebSocket)",
            "  symbols       "
            + ", ".join(f"{s.name} (tick {s.tick}, {s.price_min}..{s.price_max})" for s in c.symbols),
        ]
        if self.demo_accounts:
            lines.append("  demo accounts (their tokens are shown only now; `ringex accounts add ID` resets one):")
            lines += [f"    account {a}  token {t}" for a, t in self.demo_accounts.items()]
            account, token = next(iter(self.demo_accounts.items()))
        else:
            account, token = "ACCOUNT", "TOKEN"
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
        from ringex.journaler import EXIT_HALTED

        code = child.process.exitcode
        child.process.join()
        if self.control.state is ExchangeState.HALTED:
            return  # nothing to restart into: the operator must look (ringex status says why)
        if child.role == "journaler" and code == EXIT_HALTED:
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
        self._terminate(self._child("gateway"))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.rings and not self._drained():
            if time.monotonic() > deadline or not all(c.process and c.process.is_alive() for c in self.children[:-1]):
                log.warning("rings not drained at shutdown; recovery will replay the journal")
                break
            time.sleep(POLL_S)
        for child in self.children:
            if child.role.startswith("matcher-"):
                self._terminate(child)
        self._terminate(self._child("notifier"))
        self._terminate(self._child("journaler"))
        for ring in self.rings:
            ring.unlink()
            ring.close()
        self.rings = []
        for bell in self.layout.doorbells(len(shard_symbols(self.config))):
            Ring.remove_doorbell(bell)
        if self.control is not None:
            self.control.close()
            self.control.unlink()
            self.control = None
        (self.data / RUN_FILE).unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("stopped cleanly")


# -- ringex up -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config (embedded defaults without it)")
    parser.add_argument("--data", metavar="DIR", dest="data_dir", help="data directory (default ./ringex-data)")
    parser.add_argument("--durability", choices=("fsync", "async"), help="journal durability mode")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--order-port", type=int, help="order entry port (default 7001)")
    parser.add_argument("--md-port", type=int, help="market data TCP port (default 7002)")
    parser.add_argument("--ws-port", type=int, help="market data WebSocket port (default 7003)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("data_dir", "durability", "host", "order_port", "md_port", "ws_port", "log_level")
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ringex up: bad configuration: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop())
    try:
        supervisor.start()
        supervisor.serve_forever()
    except StartError as exc:
        print(f"ringex up: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    finally:
        supervisor.shutdown()
    return 0
