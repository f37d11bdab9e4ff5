"""``ringex follow --nats URL --data DIR``: a market data follower on this host.

It serves the primary's market data (TCP, WebSocket) from JetStream's copy of the
primary's events: the same messages, and the same ``seq`` on every ``trades`` stream,
so a subscriber can move between hosts (docs/scale-out.md)."""

from __future__ import annotations

import argparse
import sys

from ringex.cli.up import add_arguments as add_up_arguments
from ringex.cli.up import config_from, serve
from ringex.topology import FOLLOWER

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_up_arguments(parser, with_nats=False)
    parser.add_argument("--consumer", metavar="NAME", help="durable consumer name (default: from host and data dir)")


def run(args: argparse.Namespace) -> int:
    config = config_from(args, "follow")
    if config is None:
        return 2
    if not config.cluster.nats:
        print("ringex follow: give --nats URL (or [cluster] nats in --config)", file=sys.stderr)
        return 2
    return serve(config, "follow", mode=FOLLOWER)
