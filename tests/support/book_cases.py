"""Commands written by hand for book tests, and ``Both``: the jitted book and the
reference book fed the same commands, their events compared exactly."""

from __future__ import annotations

import numpy as np

from ringex.codes import Op, OrderType, RiskLimit, Side, Tif
from ringex.engine.matcher import Matcher
from ringex.records import COMMAND, EVENT

from .reference_book import ReferenceBook

__all__ = [
    "Both",
    "batch",
    "buy",
    "sell",
    "cancel",
    "replace",
    "command",
    "kinds",
    "mass_cancel",
    "disconnect",
    "set_limit",
]


def command(
    op, order_id, account=1, side=None, order_type=OrderType.LIMIT, tif=Tif.GTC, price=0, qty=0, coid=None, ts=0
):
    c = np.zeros((), COMMAND)
    c["msg_type"] = op
    if op == Op.NEW:
        c["side"], c["order_type"], c["tif"] = side or 0, order_type, tif
    c["order_id"] = order_id
    c["client_order_id"] = (order_id * 1000 + 7) % (1 << 64) if coid is None else coid
    c["account"] = account
    c["price"] = price
    c["qty"] = qty
    c["ts_ns"] = ts
    return c


def buy(oid, price, qty, account=1, tif=Tif.GTC, order_type=OrderType.LIMIT):
    return command(Op.NEW, oid, account, Side.BUY, order_type, tif, price, qty)


def sell(oid, price, qty, account=1, tif=Tif.GTC, order_type=OrderType.LIMIT):
    return command(Op.NEW, oid, account, Side.SELL, order_type, tif, price, qty)


def cancel(oid, account=1):
    return command(Op.CANCEL, oid, account)


def replace(oid, price, qty, account=1):
    return command(Op.REPLACE, oid, account, price=price, qty=qty)


def batch(cmds):
    out = np.zeros(len(cmds), COMMAND)
    for i, c in enumerate(cmds):
        out[i] = c
    return out


def mass_cancel(account, side=0, coid=77):
    c = command(Op.MASS_CANCEL, 0, account, coid=coid)
    c["side"] = side
    return c


def disconnect(account):
    return command(Op.DISCONNECT, 0, account, coid=0)


def set_limit(limit: RiskLimit, value, target=0, operator=9, coid=55):
    """An ``Op.RISK`` command as the gateway journals an operator's ``Y``: the limit in
    ``side``, the account it applies to in ``order_id``, the value in ``price``."""
    c = command(Op.RISK, target, operator, price=value, coid=coid)
    c["side"] = limit
    return c


def kinds(events):
    return [(chr(e["kind"]), int(e["reason"])) for e in events]


class Both:
    """The jitted book and the reference book fed the same commands; asserts equal events."""

    def __init__(self, spec):
        self.matcher = Matcher(spec)
        self.reference = ReferenceBook(spec)
        self.seq = 1

    def run(self, *cmds):
        cmds = batch(cmds)
        # .copy() of a structured array does not copy padding bytes: copy the raw bytes
        got = np.frombuffer(self.matcher.apply(cmds, self.seq).tobytes(), EVENT)
        want = self.reference.apply(cmds, self.seq)
        self.seq += len(cmds)
        self.matcher.validate()
        assert got.tolist() == want.tolist()
        assert got.tobytes() == want.tobytes()
        resting = self.matcher.resting_orders()
        assert [
            tuple(int(r[k]) for k in ("order_id", "client_order_id", "account", "side", "price", "qty"))
            for r in resting
        ] == self.reference.resting()
        return got
