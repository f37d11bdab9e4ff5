"""``ringex accounts add|list|remove``: the order entry accounts and their secrets."""

from __future__ import annotations

import argparse
import sys

from ringex.cli.common import data_dir_of
from ringex.order_entry.accounts import AccountError, AccountStore, check_u64

__all__ = ["add_arguments", "run"]


def _u64_arg(text: str) -> int:
    try:
        return check_u64("value", int(text, 0))
    except (ValueError, AccountError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="data directory (default: the config's data_dir)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file, for its data_dir")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="add an account (or reset its token); prints the token last")
    p.add_argument("account", type=_u64_arg, metavar="ACCOUNT_ID")
    p.add_argument("--token", type=_u64_arg, help="use this token instead of a random one (for scripts)")
    sub.add_parser("list", help="list account ids")
    p = sub.add_parser("remove", help="remove an account")
    p.add_argument("account", type=_u64_arg, metavar="ACCOUNT_ID")


def run(args: argparse.Namespace) -> int:
    try:
        store = AccountStore.open(data_dir_of(args))
        if args.action == "add":
            token = store.add(args.account, args.token)
            print(f"account {args.account} added to {store.path}; its token (shown only now):")
            print(token)
        elif args.action == "list":
            for acct in store.accounts():
                print(acct)
        elif args.action == "remove":
            if not store.remove(args.account):
                print(f"ringex accounts: no account {args.account} in {store.path}", file=sys.stderr)
                return 1
            print(f"account {args.account} removed")
    except AccountError as exc:
        print(f"ringex accounts: {exc}", file=sys.stderr)
        return 2
    return 0
