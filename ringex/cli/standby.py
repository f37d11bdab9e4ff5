"""``ringex standby --nats URL --data DIR``: a warm standby on this host.

It journals the primary's commands from JetStream into its own journal and keeps
every book current through the same matcher; ``ringex promote --data DIR`` turns it
into the primary (docs/scale-out.md)."""

from __future__ import annotations

import argparse

from ringex.cli.up import add_replica_arguments, run_replica
from ringex.topology import STANDBY

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_replica_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_replica(args, "standby", STANDBY)
