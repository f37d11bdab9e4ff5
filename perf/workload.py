"""The open-loop order flow every end-to-end step sends: seeded, evenly spaced in time.

Request ``i`` has an intended send time fixed before the step starts; the load
generator (``perf/loadgen.py``) sends whatever is due whenever it wakes and measures
every latency from the intended time, so a stall of the exchange (or of the sender)
shows as latency of every request that should have gone out during it instead of
being hidden by sending less (no coordinated omission).

The mix is the matcher benchmark's (``MIX``): mostly price moves of live orders, so the
book churns and trades happen. The exchange assigns order ids, so cancels and replaces
pick their targets at send time from the ids the session learned from its own acks of
resting (GTC) orders (``POOL`` per symbol); when it knows none yet for that symbol, the
request goes as a new GTC order instead. The load generator does that choice; this
module only fixes what it chooses from (``SessionPlan.slot``, ``dist`` ...).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ringex.codes import Op, OrderType, Side, Tif
from ringex.records import COMMAND

__all__ = ["MIX", "GTC", "IOC", "CANCEL", "REPLACE", "POOL", "SessionPlan", "make_workload"]

# request kinds of the generated flow
GTC, IOC, CANCEL, REPLACE = 0, 1, 2, 3
KIND_NAMES = {GTC: "gtc", IOC: "ioc", CANCEL: "cancel", REPLACE: "replace"}
# the matcher benchmark's mix: 9% resting orders, 3% aggressive IOC, 6% cancels, 82%
# replaces (price/quantity moves of live orders)
MIX = {"gtc": 0.09, "ioc": 0.03, "cancel": 0.06, "replace": 0.82}
# live order ids a session remembers per symbol to cancel/replace (a ring: the newest
# replace the oldest). Picked so a target is usually still resting, not derived.
POOL = 256
# Prices as in perf/matcher_bench.py (modelled on exchange-core's benchmark): resting
# orders sit 1..650 ticks from a drifting mid on their side, replaces move them to
# -1..648 ticks (so a few cross), IOCs cross by 0..30 ticks and take up to 200 lots. Kept
# wide on purpose: orders placed near the mid trade away quickly, and the sender (which
# does not read fills) would keep replacing dead orders (a 1-3 tick spread left ~75% of
# requests answered "unknown order" by the matcher).
MID = 100_000  # starting mid price in ticks (well inside the default 1..1,000,000 band)
HALF_SPREAD_LEVELS = 650
IOC_REACH = 30
_N, _C, _R = int(Op.NEW), int(Op.CANCEL), int(Op.REPLACE)


@dataclasses.dataclass
class SessionPlan:
    """One session's pre-generated requests, in send order. Arrays have one row per
    request: ``t_ns`` (i8, intended send time from the step start), ``frames``
    (COMMAND, ready to send; C/R get their target order id at send time), ``kind``
    (u1), ``sym`` (u1 index), ``side`` (u1, the side if it goes as a new order),
    ``mid`` (i8, the symbol's mid when it is sent), ``dist`` (i8, a replace's distance
    from the mid on the passive side; negative crosses), ``slot`` (u2, which
    remembered order a C/R targets), ``gtc_price``/``qty`` (i8, used when a C/R has
    no target and goes as a new GTC order)."""

    t_ns: np.ndarray
    frames: np.ndarray
    kind: np.ndarray
    sym: np.ndarray
    side: np.ndarray
    mid: np.ndarray
    dist: np.ndarray
    slot: np.ndarray
    gtc_price: np.ndarray
    qty: np.ndarray


def make_workload(
    rate: float, seconds: float, sessions: int, symbols: list[str], seed: int = 1, tick_ns: int = 0
) -> list[SessionPlan]:
    """The seeded flow of ``rate * seconds`` requests, evenly spaced in time, dealt out
    round robin to ``sessions`` sessions over ``symbols``. With ``tick_ns``, intended
    times are rounded down to a multiple of it, so requests closer together than a tick
    are due at the same instant and go out in one write of one session (the sessions
    take the instants in turn); ``perf/e2e.py``'s ``DEFAULT_TICK_US`` says why. Each symbol's mid price is
    a random walk (a tick every 20 requests on average); prices and quantities follow
    the matcher benchmark (see ``HALF_SPREAD_LEVELS``), so the flow trades mostly
    through its IOCs."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    t_ns = (np.arange(n, dtype=np.float64) * (1e9 / rate)).astype(np.int64)
    if tick_ns > 0:
        t_ns -= t_ns % tick_ns
    kind = rng.choice(4, size=n, p=[MIX["gtc"], MIX["ioc"], MIX["cancel"], MIX["replace"]]).astype(np.uint8)
    sym = rng.integers(0, len(symbols), size=n).astype(np.uint8)
    side = np.where(rng.random(n) < 0.5, Side.BUY, Side.SELL).astype(np.uint8)
    buy = side == Side.BUY
    steps = rng.choice(np.array([-1, 0, 1]), size=n, p=[0.025, 0.95, 0.025])
    mid = np.empty(n, dtype=np.int64)
    for s in range(len(symbols)):
        mask = sym == s
        mid[mask] = MID + np.cumsum(steps[mask])
    passive = rng.integers(1, HALF_SPREAD_LEVELS + 1, size=n)
    gtc_price = np.where(buy, mid - passive, mid + passive)
    reach = rng.integers(0, IOC_REACH + 1, size=n)
    ioc_price = np.where(buy, mid + reach, mid - reach)
    dist = rng.integers(1, HALF_SPREAD_LEVELS + 1, size=n) - 2  # <= 0 crosses the mid
    qty = np.where(kind == IOC, rng.integers(1, 201, size=n), rng.integers(1, 101, size=n))
    slot = rng.integers(0, POOL, size=n).astype(np.uint16)

    frames = np.zeros(n, dtype=COMMAND)
    new = kind <= IOC
    frames["msg_type"] = np.select([new, kind == CANCEL], [_N, _C], _R)
    frames["side"] = np.where(new, side, 0)
    frames["order_type"] = np.where(new, OrderType.LIMIT, 0)
    frames["tif"] = np.select([kind == GTC, kind == IOC], [Tif.GTC, Tif.IOC], 0)
    frames["symbol"] = np.array([s.encode() for s in symbols], dtype="S8")[sym]
    frames["price"] = np.select([kind == GTC, kind == IOC, kind == REPLACE], [gtc_price, ioc_price, mid], 0)
    frames["qty"] = np.where(kind == CANCEL, 0, qty)

    # each send instant goes to one session, round robin (one request per instant
    # without a tick): a session sends what is due at once in one write
    instant = np.unique(t_ns, return_inverse=True)[1].reshape(-1)
    owner = instant % sessions
    plans = []
    for s in range(sessions):
        rows = np.flatnonzero(owner == s)
        f = frames[rows].copy()
        f["client_order_id"] = np.arange(1, len(f) + 1)
        plans.append(
            SessionPlan(
                t_ns=t_ns[rows].copy(),
                frames=f,
                kind=kind[rows].copy(),
                sym=sym[rows].copy(),
                side=side[rows].copy(),
                mid=mid[rows].copy(),
                dist=dist[rows].copy(),
                slot=slot[rows].copy(),
                gtc_price=gtc_price[rows].copy(),
                qty=qty[rows].copy(),
            )
        )
    return plans
