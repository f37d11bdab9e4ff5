"""``ringex accounts add|list|remove|demo``: the order entry accounts and their secrets."""

from __future__ import annotations

import argparse
import sys

from ringex.cli.common import data_dir_of
from ringex.order_entry.accounts import (
    AccountError,
    AccountStore,
    demo_accounts,
    forget_demo_account,
    parse_account_id,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="data directory (default: the config's data_dir)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file, for its data_dir")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="add an account, or reset its token; prints the token last")
    # ids are parsed in ``run``, so a typo gets one line saying what an id is, not a usage dump
    p.add_argument("account", metavar="ACCOUNT_ID")
    p.add_argument("--token", help="use this token instead of a random one (for scripts)")
    role = p.add_mutually_exclusive_group()
    role.add_argument(
        "--operator", dest="operator", action="store_true", default=None, help="may set risk limits (ringex risk)"
    )
    role.add_argument("--trader", dest="operator", action="store_false", help="may not (the default for a new account)")
    sub.add_parser("list", help="list account ids (operators marked)")
    p = sub.add_parser("remove", help="remove an account")
    p.add_argument("account", metavar="ACCOUNT_ID")
    sub.add_parser("demo", help="the demo accounts' tokens, while they are the ones created at the first start")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action in ("add", "remove"):
            args.account = parse_account_id(args.account)
        if getattr(args, "token", None) is not None:
            args.token = parse_account_id(args.token, "token")
        data = data_dir_of(args)
        store = AccountStore.open(data)
        if args.action == "add":
            existed = args.account in store
            token = store.add(args.account, args.token, operator=args.operator)
            role = " (operator)" if store.is_operator(args.account) else ""
            if existed:
                forget_demo_account(data, args.account)
                print(f"account {args.account}{role} reset in {store.path}: its old token no longer works.")
                print("its new token (shown only now):")
            else:
                print(f"account {args.account}{role} added to {store.path}; its token (shown only now):")
            print(token)
        elif args.action == "list":
            for acct in store.accounts():
                print(f"{acct} operator" if store.is_operator(acct) else acct)
        elif args.action == "remove":
            if not store.remove(args.account):
                print(f"ringex accounts: no account {args.account} in {store.path}", file=sys.stderr)
                return 1
            forget_demo_account(data, args.account)
            print(f"account {args.account} removed")
        else:
            tokens = demo_accounts(data)
            if not tokens:
                print(f"ringex accounts: no demo accounts in {data}", file=sys.stderr)
                return 1
            for acct, token in tokens.items():
                print(f"{'operator' if store.is_operator(acct) else 'account'} {acct}  token {token}")
    except AccountError as exc:
        print(f"ringex accounts: {exc}", file=sys.stderr)
        return 2
    return 0
