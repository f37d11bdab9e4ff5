"""``ringex standby --nats URL --data DIR``: a warm standby on this host.

It journals the primary's commands from JetStream into its own journal and keeps
every book current through the same matcher; ``ringex promote --data DIR`` turns it
into the primary (docs/scale-out.md)."""

from __future__ import annotations

import argparse
import sys

from ringex.cli.up import add_arguments as add_up_arguments
from ringex.cli.up import config_from, serve
from ringex.topology import STANDBY

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_up_arguments(parser, with_nats=False)
    parser.add_argument("--consumer", metavar="NAME", help="durable consumer name (default: from host and data dir)")


def run(args: argparse.Namespace) -> int:
    config = config_from(args, "standby")
    if config is None:
        return 2
    if not config.cluster.nats:
        print("ringex standby: give --nats URL (or [cluster] nats in --config)", file=sys.stderr)
        return 2
    return serve(config, "standby", mode=STANDBY)
