"""``ringex follow --nats URL --data DIR``: a market data follower on this host.

It serves the primary's market data (TCP, WebSocket) from JetStream's copy of the
primary's events: the same messages, and the same ``seq`` on every ``trades`` stream,
so a subscriber can move between hosts (docs/scale-out.md)."""

from __future__ import annotations

import argparse

from ringex.cli.up import add_replica_arguments, run_replica
from ringex.topology import FOLLOWER

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_replica_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_replica(args, "follow", FOLLOWER)
