"""The exchange's stages as real processes, started the way ``ringex up`` starts them.

``Stages`` makes what the supervisor makes (a config, the topology's rings and
doorbells, a control block, the journal's symbol specs) under names of its own, and
starts any role with ``ringex.roles.spawn``: the same code path as ``ringex up``. A test
runs the stages it is about, plays the others through the rings when it must (it is
then the gateway, producing into the in-rings, or reads what a stage published), and
can stop, pause (SIGSTOP), kill -9 and restart any stage.

::

    test ──(plays the gateway, or runs it)──► in-ring ──► matcher-0 ──► out-ring ──► notifier
                                                 └──────► journaler ◄──────┘
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import time
from pathlib import Path

from ringex.config import Config, load_config
from ringex.control import ControlBlock, ExchangeState
from ringex.order_entry.accounts import AccountStore
from ringex.ring import Ring
from ringex.roles import spawn
from ringex.supervisor import prepare_journal
from ringex.topology import FIX, GATEWAY, JOURNALER, NOTIFIER, Topology, matcher_role

from .net import free_ports

__all__ = ["Stages"]

# A first start on a cold machine compiles the kernels: allow for it.
READY_TIMEOUT_S = 300.0


class Stages:
    """One exchange's shared memory and the stage processes a test starts on it.

    ``toml`` is the config file's text (symbols, ``[order_entry]`` limits...);
    ``overrides`` are ``load_config`` overrides (``durability``, ``ring_capacity``...).
    Ports are free loopback ports. The control block starts READY, so a gateway
    accepts orders as soon as it runs; tests move it to see the gateway refuse them.
    The FIX acceptor (and its consumer of the out-rings) is left out unless ``fix``:
    the tests of the other stages do not pay for a process they do not use.
    """

    def __init__(self, data: Path, toml: str = "", *, fix: bool = False, **overrides) -> None:
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        config_path = self.data / "ringex.toml"
        config_path.write_text(toml)
        order, md, ws, fix_port = free_ports(4)
        values = {"data_dir": str(self.data), "order_port": order, "md_port": md, "ws_port": ws, "fix_port": fix_port}
        config = load_config(config_path, environ={}, overrides={**values, **overrides})
        if config.fix.enabled != fix:
            config = dataclasses.replace(config, fix=dataclasses.replace(config.fix, enabled=fix))
        self.config: Config = config
        self.topology = Topology.for_config(self.config, prefix=f"rxt{os.getpid()}{secrets.token_hex(3)}")
        self.procs: dict = {}
        self._attached: dict[str, Ring] = {}
        self.control = ControlBlock.create(self.topology.control)
        try:
            self.control.set_state(ExchangeState.READY)
            prepare_journal(self.config)
            self.rings = self.topology.create()
        except BaseException:
            self.control.close()
            self.control.unlink()
            raise

    # -- accounts ------------------------------------------------------------------------

    def add_account(self, account: int, token: int | None = None) -> int:
        return AccountStore.open(self.data).add(account, token)

    # -- processes ------------------------------------------------------------------------

    def start(self, *roles: str, wait: bool = True, config: Config | None = None) -> None:
        """Start ``roles`` (in the order given; each waits for the one before it to be
        ready, as the supervisor does, unless ``wait`` is false), with ``config`` if
        given (a test tuning one process: ``dataclasses.replace(stages.config, ...)``)."""
        for role in roles:
            self.control.register(role)
            self.control.set_ready(role, False)
            self.procs[role] = spawn(role, config or self.config, self.topology)
            if wait:
                self.wait_ready(role)

    def start_all(self) -> None:
        """Every role, in the supervisor's order."""
        self.start(*self.topology.roles)

    def wait_ready(self, role: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[role]
        while not any(r["role"] == role and r["ready"] for r in self.control.roles()):
            if not proc.is_alive():
                raise AssertionError(f"{role} exited with {proc.exitcode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{role} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.01)

    def pid(self, role: str) -> int:
        return self.procs[role].pid

    def alive(self, role: str) -> bool:
        return self.procs[role].is_alive()

    def stop(self, role: str, timeout: float = 30.0) -> int:
        """SIGTERM ``role`` and wait for it to exit; its exit code."""
        proc = self.procs.pop(role)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise AssertionError(f"{role} did not stop within {timeout} s")
        return proc.exitcode

    def wait_exit(self, role: str, timeout: float = 30.0) -> int:
        """Wait for ``role`` to exit on its own; its exit code."""
        proc = self.procs[role]
        proc.join(timeout)
        if proc.is_alive():
            raise AssertionError(f"{role} still running after {timeout} s")
        del self.procs[role]
        return proc.exitcode

    def kill(self, *roles: str) -> None:
        """kill -9 ``roles`` (all at once: the signals go out before any is reaped)."""
        procs = [self.procs.pop(role) for role in roles if role in self.procs]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join()

    def pause(self, role: str) -> None:
        os.kill(self.pid(role), signal.SIGSTOP)

    def resume(self, role: str) -> None:
        os.kill(self.pid(role), signal.SIGCONT)

    # -- the rings, as a test plays a stage ------------------------------------------------

    def in_ring(self, symbol: str) -> Ring:
        return self._attach(self.topology.in_ring(symbol), lambda: self.topology.attach_in(symbol))

    def out_ring(self, symbol: str) -> Ring:
        return self._attach(self.topology.out_ring(symbol), lambda: self.topology.attach_out(symbol))

    def _attach(self, name: str, attach) -> Ring:
        ring = self._attached.get(name)
        if ring is None:
            ring = self._attached[name] = attach()
        return ring

    def new_shared_memory(self) -> None:
        """What a supervisor's next start does after a crash: every stage must be gone
        (kill them first); the rings and the control block are made anew under the
        same names, so the stages meet rings they have never seen."""
        assert not self.procs, f"still running: {', '.join(self.procs)}"
        self._close_rings()
        self.control.close()
        self.control = ControlBlock.create(self.topology.control)
        self.control.set_state(ExchangeState.READY)
        self.rings = self.topology.create()

    def _close_rings(self) -> None:
        for ring in self._attached.values():
            ring.close()
        self._attached = {}
        for ring in self.rings:
            ring.close()
        self.rings = []

    def restarts(self) -> dict[str, int]:
        return {r["role"]: r["restarts"] for r in self.control.roles()}

    # -- the end --------------------------------------------------------------------------------

    def log_tail(self, n: int = 6000) -> str:
        path = self.data / "ringex.log"
        return path.read_text()[-n:] if path.exists() else "(no log)"

    def close(self) -> None:
        """Stop every stage still running (the gateway first, the journaler last, as the
        supervisor does) and remove the shared memory."""
        order = [FIX, GATEWAY, NOTIFIER, *(matcher_role(i) for i in range(len(self.topology.shards))), JOURNALER]
        for role in [r for r in order if r in self.procs] + [r for r in self.procs if r not in order]:
            with contextlib.suppress(AssertionError):
                self.stop(role)
        self._close_rings()
        self.topology.remove()
        self.control.close()
        self.control.unlink()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
