"""Pre-trade risk: the config's limits as journaled commands, and the names of the limits.

The checks themselves run in the matcher (``ringex.matcher_jit``), on each symbol's book,
from commands in its in-ring: the only way a limit changes is an ``Op.RISK`` command
that the journaler has written, so ``ringex recover --verify`` replays every refusal.
This module decides which commands those are:

- ``start_commands``: what the gateway journals into a symbol's in-ring before it
  serves. Into a *fresh* ring (``ringex up`` creates the rings; a restarted gateway
  finds them in use) it puts ``CLEAR`` and then every limit the config sets for the
  symbol (``[risk.NAME]``) and for each account (``[accounts.ID]``): the config file is
  the truth at every start, and a limit changed at run time (``ringex risk set``) lasts
  until the next ``ringex up``. Kill switches are not config: they stay engaged across
  restarts until an operator releases them. A data directory where no limit was ever
  set (no limits in the config, no operator ever logged in: ``LIMITS_USED`` is absent)
  gets none of these, so an exchange without risk limits journals nothing for them. It
  also cancels the orders of every cancel-on-disconnect account, at every gateway
  start, since that account's sessions ended with the previous gateway.
- ``disconnect_commands``: an account's last session has closed.

Limits per book: an account's limits apply in each symbol's book on their own (a book
never asks another, so a symbol replays alone); the tighter of the account's and the
symbol's applies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ringex.codes import Op, RiskLimit
from ringex.config import Config
from ringex.records import COMMAND, make_records

__all__ = [
    "LIMITS_USED",
    "mark_limits_used",
    "limits_used",
    "LIMITS",
    "SYMBOL_ONLY",
    "ACCOUNT_ONLY",
    "start_commands",
    "disconnect_commands",
    "cancel_on_disconnect_accounts",
    "limit_command",
]

# A file in the data directory: once present, limits may be in the journal, so every
# fresh start journals CLEAR before the config's limits. Made before any limit can be
# journaled (the gateway's start, an operator's login), so it is never missing after one.
LIMITS_USED = "risk-limits-used"


def mark_limits_used(data_dir: str | os.PathLike[str]) -> None:
    path = Path(data_dir) / LIMITS_USED
    if not path.exists():
        path.touch()


def limits_used(data_dir: str | os.PathLike[str]) -> bool:
    return (Path(data_dir) / LIMITS_USED).exists()


def configures_limits(config: Config) -> bool:
    return any(any(r.limits().values()) for r in config.risk) or any(any(a.limits().values()) for a in config.accounts)


# The config's and the command line's name of each limit.
LIMITS: dict[str, RiskLimit] = {
    "max_order_qty": RiskLimit.MAX_ORDER_QTY,
    "max_notional": RiskLimit.MAX_NOTIONAL,
    "max_open_orders": RiskLimit.MAX_OPEN_ORDERS,
    "collar_bps": RiskLimit.COLLAR_BPS,
    "reference_price": RiskLimit.REFERENCE_PRICE,
    "kill_switch": RiskLimit.KILL_SWITCH,
}
# Limits only a symbol has, and one only an account has.
SYMBOL_ONLY = frozenset({RiskLimit.COLLAR_BPS, RiskLimit.REFERENCE_PRICE, RiskLimit.CLEAR})
ACCOUNT_ONLY = frozenset({RiskLimit.KILL_SWITCH})


def limit_command(symbol: str, limit: RiskLimit, value: int, account: int = 0, ts_ns: int = 0) -> np.ndarray:
    """One ``Op.RISK`` command as the gateway journals an operator's ``Y``: the limit in
    ``side``, the account in ``order_id`` (0: the symbol's own), the value in ``price``."""
    return make_records(
        COMMAND, msg_type=Op.RISK, side=limit, symbol=symbol, order_id=account, price=value, ts_ns=ts_ns
    )


def start_commands(config: Config, symbol: str, *, fresh: bool, ts_ns: int | None = None) -> np.ndarray:
    """What the gateway journals into ``symbol``'s in-ring before serving (see the
    module docstring): the config's limits when the ring is ``fresh`` and limits are
    or were in use, and a cancel-on-disconnect for each account that asked for it."""
    ts_ns = time.time_ns() if ts_ns is None else ts_ns
    parts = []
    if configures_limits(config):
        mark_limits_used(config.data_dir)
    if fresh and limits_used(config.data_dir):
        parts.append(limit_command(symbol, RiskLimit.CLEAR, 0, ts_ns=ts_ns))
        for limits in config.risk:
            if limits.symbol == symbol:
                for name, value in limits.limits().items():
                    if value:
                        parts.append(limit_command(symbol, LIMITS[name], value, ts_ns=ts_ns))
        for account in config.accounts:
            for name, value in account.limits().items():
                if value:
                    parts.append(limit_command(symbol, LIMITS[name], value, account.account, ts_ns))
    for account in sorted(cancel_on_disconnect_accounts(config)):
        parts.append(disconnect_commands(account, ts_ns, symbol))
    return np.concatenate(parts) if parts else np.zeros(0, COMMAND)


def disconnect_commands(account: int, ts_ns: int, symbol: str | None = None) -> np.ndarray:
    """Cancel every order of ``account`` because its last session went away (one
    ``Op.DISCONNECT``; without ``symbol`` the gateway stamps each ring's copy)."""
    fields = {"symbol": symbol} if symbol else {}
    return make_records(COMMAND, msg_type=Op.DISCONNECT, account=account, ts_ns=ts_ns, **fields)


def cancel_on_disconnect_accounts(config: Config) -> frozenset[int]:
    return frozenset(a.account for a in config.accounts if a.cancel_on_disconnect)
