"""One entry point per process role: what ``ringex up`` starts, and what tests start.

Each role of ``Topology.roles`` is a function ``(config, topology, control) -> exit
status`` in the module that owns the job (``run_journaler``, ``run_shard``,
``run_notifier``, ``run_gateway``, ``run_fix_acceptor``, and the cluster's
``run_bridge``, ``run_standby``, ``run_follower``). ``main`` is the body of every child
process: it detaches the child from the terminal, sets up logging, attaches the control
block the topology names and reports the child's pid on it, runs the role, and reports it not
ready on the way out. ``spawn`` starts ``main`` in a fresh interpreter: never ``fork``
after numba, LMDB or posix_ipc objects exist (``DESIGN.md``).

The supervisor and the tests both go through ``spawn``, so a test's journaler is the
journaler ``ringex up`` runs, started the same way.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

from ringex.config import Config
from ringex.topology import BRIDGE, FIX, FOLLOWER, GATEWAY, JOURNALER, MATCHER, NOTIFIER, STANDBY, Topology

__all__ = ["main", "spawn", "run_role", "apply_scheduling"]

# prctl(2) option: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


def run_role(role: str, config: Config, topology: Topology, control) -> int:
    """Run ``role`` in this process until it is told to stop; its exit status."""
    if role == JOURNALER:
        from ringex.journal.journaler import run_journaler

        return run_journaler(config, topology, control)
    if role.startswith(f"{MATCHER}-"):
        from ringex.engine.shard import run_shard

        return run_shard(config, topology, int(role.rpartition("-")[2]), control)
    if role == NOTIFIER:
        from ringex.market_data.notifier import run_notifier

        return run_notifier(config, topology, control)
    if role == GATEWAY:
        from ringex.order_entry.gateway import run_gateway

        return run_gateway(config, topology, control)
    if role == BRIDGE:
        from ringex.cluster.bridge import run_bridge

        return run_bridge(config, topology, control)
    if role == STANDBY:
        from ringex.cluster.standby import run_standby

        return run_standby(config, topology, control)
    if role == FOLLOWER:
        from ringex.cluster.follower import run_follower

        return run_follower(config, topology, control)
    if role == FIX:
        from ringex.fix.acceptor import run_fix_acceptor

        return run_fix_acceptor(config, topology, control)
    raise ValueError(f"unknown role {role!r} (roles: {', '.join(topology.roles)})")


def _detach() -> None:
    """Make a child answer to its parent only: its own process group, so a Ctrl-C at the
    terminal reaches the supervisor alone and shutdown keeps its order, and a
    parent-death signal, so a parent killed with -9 does not leave it running."""
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(1)


def apply_scheduling(role: str, config: Config) -> None:
    """Ask the kernel for ``role``'s policy (``[scheduling]``); if it refuses (no
    CAP_SYS_NICE), say so and carry on at the normal priority."""
    kind, value = config.scheduling.policy(role)
    try:
        if kind == "fifo":
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(value))
        elif value:
            os.setpriority(os.PRIO_PROCESS, 0, value)
    except PermissionError:
        logging.getLogger("ringex.roles").warning(
            "%s: not allowed to run at %s:%d (needs CAP_SYS_NICE); running at nice 0", role, kind, value
        )


def main(role: str, config: Config, topology: Topology) -> None:
    """The body of a child process playing ``role`` (the target ``spawn`` runs)."""
    from ringex.control import ControlBlock
    from ringex.logs import setup_logging

    _detach()
    setup_logging(config, role)
    apply_scheduling(role, config)
    control = ControlBlock.attach(topology.control)
    control.set_pid(role, os.getpid())
    try:
        code = run_role(role, config, topology, control)
    finally:
        control.set_ready(role, False)
        control.close()
    sys.exit(code)


def spawn(role: str, config: Config, topology: Topology) -> multiprocessing.Process:
    """Start ``role`` in a new process (the ``spawn`` start method) and return it. The
    control block ``topology.control`` and the rings must exist; the caller waits for
    the role to report ready on the control block."""
    process = multiprocessing.get_context("spawn").Process(
        target=main, args=(role, config, topology), name=f"ringex-{role}"
    )
    process.start()
    return process
