"""``ringex stop``: stop a running exchange, as Ctrl-C in its terminal would.

It finds the exchange as every client command does (``ringex.cli.common``: ``--data``,
``--config``, ``RINGEX_DATA_DIR``, else the one running), sends its supervisor SIGTERM
and waits until the supervisor has shut every stage down cleanly (it removes its run
file last, after the books are snapshotted and the journal committed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ringex.cli.common import ExchangeNotFound, add_exchange_arguments, find_exchange
from ringex.runfile import pid_alive, read_run_file

__all__ = ["add_arguments", "run"]

# How often to look whether the supervisor has finished.
POLL_S = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_exchange_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for a clean stop (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        exchange = find_exchange(args)
        exchange.require_running("ringex stop")
    except ExchangeNotFound as exc:
        print(f"ringex stop: {exc}", file=sys.stderr)
        return 1
    pid = int(exchange.run["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"ringex stop: the exchange on {exchange.data_dir} has already stopped")
        return 0
    except PermissionError:
        print(f"ringex stop: the exchange on {exchange.data_dir} (pid {pid}) is not yours to stop", file=sys.stderr)
        return 1
    print(f"stopping the exchange on {exchange.data_dir} (pid {pid})...", flush=True)
    deadline = time.monotonic() + args.timeout
    # done when its run file is gone (the supervisor's last step) or it is dead (a
    # zombie whose parent has not reaped it yet still counts as alive to kill(0))
    while read_run_file(exchange.data_dir) is not None and pid_alive(pid):
        if time.monotonic() > deadline:
            log = exchange.run.get("log", exchange.data_dir / "ringex.log")
            print(f"ringex stop: still stopping after {args.timeout:.0f} s; see {log}", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    print("stopped")
    return 0
