"""``ringex promote --data DIR [ringex up's flags]``: turn the standby on DIR into the
primary, once the primary is gone.

The standby drains JetStream (every command it holds, so in ``sync`` replication every
acknowledged order), stops cleanly, and ``ringex up`` starts on the same data directory
with the flags given here (ports, config, ``--nats`` for its own bridge)."""

from __future__ import annotations

import argparse
import sys

from ringex.cli import up

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    up.add_arguments(parser, with_nats=False)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the standby gets to drain (default 120)")


def run(args: argparse.Namespace) -> int:
    from ringex.cluster.standby import PromoteError, promote  # noqa: PLC0415

    config = up.config_from(args, "promote")
    if config is None:
        return 2
    try:
        drained = promote(config.data_dir, timeout=args.timeout)
    except PromoteError as exc:
        print(f"ringex promote: {exc}", file=sys.stderr)
        return 1
    ends = ", ".join(f"{symbol} {seq}" for symbol, seq in drained["next_seq"].items())
    print(f"standby drained and stopped (next journal sequence: {ends}); starting the primary", flush=True)
    return up.serve(config, "promote")
