"""The ``ringex`` command: one subcommand per job, each in the module that owns the job.

Subcommand modules are imported only when their command runs, so ``ringex status``
does not pay for numba or trio, and a part of the exchange that is not built yet says
so instead of breaking every other command. A subcommand module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("ringex.cli.up", "start the whole exchange (embedded defaults without --config)"),
    "stop": ("ringex.cli.stop", "stop a running exchange cleanly (as Ctrl-C in its terminal)"),
    "status": ("ringex.cli.status", "show ring cursors, consumer lag and live processes"),
    "match": ("ringex.cli.match", "match a CSV of orders offline and print the events as JSON lines"),
    "recover": ("ringex.cli.recover", "rebuild every book from the journal; --verify replays it byte for byte"),
    "journal": ("ringex.cli.journal", "print journaled commands and events as JSON lines"),
    "accounts": ("ringex.cli.accounts", "manage order entry accounts and their secrets"),
    "order": ("ringex.cli.order", "send an order, cancel or replace to a running exchange"),
    "risk": ("ringex.cli.risk", "operators: set risk limits and kill switches at run time"),
    "orders": ("ringex.cli.orders", "list your open orders"),
    "book": ("ringex.cli.book", "print the current book of a symbol and its last trade"),
    "watch": ("ringex.cli.watch", "live view of trades and the top of the book"),
    "trace": ("ringex.cli.trace", "where the time goes: each stage's delay for the sampled requests"),
    "bench": ("ringex.cli.bench", "end-to-end latency benchmark"),
    "follow": ("ringex.cli.follow", "serve market data on this host from a primary's JetStream copy"),
    "standby": ("ringex.cli.standby", "keep a warm standby of a primary from its JetStream copy"),
    "promote": ("ringex.cli.promote", "turn the standby on a data directory into the primary"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringex", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _load(module_name)
            if module is None:
                print(f"ringex {name}: not built yet ({module_name} does not exist in this version)", file=sys.stderr)
                return 2
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)
