"""First-start checks: what can be found wrong before any process starts, said in one line.

``ringex up`` runs these before it takes the data directory's lock, creates accounts or
shared memory, or spawns anything, so a mistake costs a second, not a first compile
of the kernels, and the message names the config key to change and how:

- ``check_data_dir``: the data directory exists (or can be made) and is writable;
- ``check_ports``: every port this topology listens on is free on the host
  (``listeners`` says which: the gateway's, the notifier's two, the FIX acceptor's).

A port can still be taken between the check and the process that binds it; that
process then fails as before. The check only makes the common case (another
program, another ringex on another data directory) a one-line answer.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from ringex.config import Config
from ringex.topology import FIX, FOLLOWER, NOTIFIER, Topology

__all__ = ["PreflightError", "listeners", "check_data_dir", "check_ports"]


class PreflightError(Exception):
    """A first-start check failed; the message is one line naming the key and the remedy."""


def _remedy(key: str, flag: str) -> str:
    return f"set {key} in the config, RINGEX_{key.upper()}, or {flag}"


def listeners(config: Config, topology: Topology) -> list[tuple[str, str, int]]:
    """``(config key, flag, port)`` of every listening socket the topology opens."""
    roles = set(topology.roles)
    out = []
    if topology.mode != FOLLOWER:  # a standby starts its gateway when it is promoted
        out.append(("order_port", "--order-port", config.order_port))
    if NOTIFIER in roles:
        out += [("md_port", "--md-port", config.md_port), ("ws_port", "--ws-port", config.ws_port)]
    if FIX in roles:
        out.append(("fix_port", "--fix-port", config.fix_port))
    return out


def check_data_dir(config: Config) -> None:
    """The data directory exists or can be created, and a file can be written in it."""
    data = Path(config.data_dir)
    fix = "choose another with --data DIR, data_dir in the config, or RINGEX_DATA_DIR"
    if data.exists() and not data.is_dir():
        raise PreflightError(f"data_dir: {data} is not a directory; {fix}")
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(f"data_dir: {data} cannot be created ({exc.strerror}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".ringex-write-check-", dir=data)
    except OSError as exc:
        raise PreflightError(f"data_dir: {data} is not writable ({exc.strerror}); {fix}") from None
    os.close(fd)
    os.unlink(probe)


def check_ports(config: Config, topology: Topology) -> None:
    """Every port the exchange will listen on can be bound on ``config.host``, and no
    two of them are the same."""
    seen: dict[int, str] = {}
    for key, flag, port in listeners(config, topology):
        if port in seen and port != 0:
            raise PreflightError(f"{key}: {port} is also {seen[port]}; give each its own port ({_remedy(key, flag)})")
        seen[port] = key
        if port == 0:
            continue
        try:
            # as the gateway binds: SO_REUSEADDR (create_server's default on POSIX), so
            # connections left in TIME_WAIT by the last run do not count as taken
            probe = socket.create_server((config.host, port), reuse_port=False)
        except OSError as exc:
            where = f"{config.host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                why = f"{where} is already in use by another program (or another ringex)"
            elif exc.errno == errno.EACCES:
                why = f"{where} needs privileges (ports below 1024); use a port above 1023"
            elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
                raise PreflightError(
                    f"host: cannot listen on {config.host} ({exc.strerror}); set host in the config,"
                    " RINGEX_HOST, or --host (127.0.0.1, 0.0.0.0, or an address of this machine)"
                ) from None
            else:
                why = f"cannot listen on {where} ({exc.strerror})"
            raise PreflightError(f"{key}: {why}; {_remedy(key, flag)}") from None
        probe.close()
