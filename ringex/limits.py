"""What a stranger can make a server spend: connections, requests and failed logins.

Shared by the order entry gateway (a selectors loop) and the market data notifier
(trio). Sans-IO: nothing here touches a socket or reads a clock; callers pass the
time (``time.monotonic()`` or ``trio.current_time()``), so the tests use a fake one.

- ``ConnectionLimit``: open connections in total and per client address.
- ``RateLimit``: one rate with a burst (a session's requests); ``KeyedRateLimit``: one
  per key (the requests of all sessions from one address).
- The numbers (every limit of the gateway and of the notifier, with its default) are
  the config's ``[order_entry]`` and ``[market_data]`` tables (``ringex.config``
  ``OrderEntryLimits`` and ``MarketDataSettings``).
- ``FailedLoginLimit``: failed logins per account, per address and in total, each at
  most ``limit`` per ``window_s``. A login that needs the deliberately slow secret
  check (scrypt, ~30-80 ms of a core, ``ringex.order_entry.accounts``) is charged *before* the
  check, as if it will fail, and refunded if it succeeds, so a flood of wrong tokens
  costs at most ``total`` checks per window whatever the number of connections or
  addresses: the cores stay with trading.

Rates are kept with the generic cell rate algorithm (GCRA): one float per key, the
"theoretical arrival time" ``tat``. Each event pushes ``tat`` forward by the interval
``window / limit``; an event is allowed while ``tat`` is at most ``window - interval``
ahead of now, so ``limit`` events may come at once and then one per interval. A key
whose ``tat`` has passed is the same as a key never seen, so tables only hold keys
with recent events and are pruned when they grow past a bound.

Addresses: ``address_key`` keys IPv4 clients by address and IPv6 clients by their /64
prefix (a single host is routinely given a whole /64, so per-address limits on full
IPv6 addresses would be no limits at all).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Hashable

__all__ = [
    "address_key",
    "ConnectionLimit",
    "RateLimit",
    "KeyedRateLimit",
    "FailedLoginLimit",
    "MAX_TRACKED_KEYS",
]

# Accounts and addresses a FailedLoginLimit remembers at most: 65,536 small entries
# (a few MiB) is nothing to the server and more than any honest population fails in a
# window. Past it, expired entries go first, then the oldest.
MAX_TRACKED_KEYS = 1 << 16


def address_key(peer: object) -> str:
    """The key that per-address limits count ``peer`` under (what ``accept`` returned).

    IPv4: the address. IPv6: its /64 network (IPv4-mapped addresses as IPv4). Anything
    else (a Unix socket, an unparsable name): ``"local"``, one shared key.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str):
        return "local"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone index
    except ValueError:
        return "local"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


####################################################################################
# Connections
####################################################################################


class ConnectionLimit:
    """Open connections, at most ``max_total`` and ``max_per_address`` per address key.

    ``admit(key)`` before serving a new connection: ``None`` and it is counted, or the
    reason it is refused (nothing counted). ``release(key)`` once when it closes.
    """

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = int(_positive("max_total", max_total))
        self.max_per_address = int(_positive("max_per_address", max_per_address))
        self.total = 0
        self._by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, key: str) -> str | None:
        if self.total >= self.max_total:
            self.refused += 1
            return f"too many connections (the server's limit is {self.max_total})"
        held = self._by_address.get(key, 0)
        if held >= self.max_per_address:
            self.refused += 1
            return f"too many connections from your address (the limit is {self.max_per_address})"
        self._by_address[key] = held + 1
        self.total += 1
        return None

    def release(self, key: str) -> None:
        held = self._by_address.get(key, 0)
        if held <= 0:
            raise RuntimeError(f"release of a connection from {key} that was never admitted")
        if held == 1:
            del self._by_address[key]  # the table only holds addresses with connections
        else:
            self._by_address[key] = held - 1
        self.total -= 1

    def held_by(self, key: str) -> int:
        return self._by_address.get(key, 0)


####################################################################################
# Rates
####################################################################################


class RateLimit:
    """``rate_per_s`` events per second with bursts of up to ``burst``; starts full."""

    __slots__ = ("interval", "tolerance", "tat")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.interval = 1.0 / _positive("rate_per_s", rate_per_s)
        self.tolerance = (max(1, int(_positive("burst", burst))) - 1) * self.interval
        self.tat = -math.inf

    def try_take(self, now: float) -> bool:
        """Count one event at ``now`` if the rate allows it; False (nothing counted) if not."""
        tat = max(self.tat, now)
        if tat - now > self.tolerance:
            return False
        self.tat = tat + self.interval
        return True


class KeyedRateLimit:
    """``limit`` events per ``window_s`` for each key (GCRA; see the module docstring),
    remembering at most ``max_keys`` keys."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = int(_positive("limit", limit))
        self.window_s = float(_positive("window_s", window_s))
        self.interval = self.window_s / self.limit
        self.tolerance = self.window_s - self.interval
        self.max_keys = max_keys
        self._tat: dict[Hashable, float] = {}

    @classmethod
    def per_second(cls, rate_per_s: float, burst: int, max_keys: int = MAX_TRACKED_KEYS) -> KeyedRateLimit:
        """``rate_per_s`` events per second per key, with bursts of up to ``burst``."""
        burst = int(_positive("burst", burst))
        return cls(burst, burst / _positive("rate_per_s", rate_per_s), max_keys)

    def try_take(self, key: Hashable, now: float) -> bool:
        """Count one event for ``key`` at ``now`` if its rate allows it; False if not."""
        if self.wait(key, now) > 0:
            return False
        self.charge(key, now)
        return True

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until one more event for ``key`` is allowed (0: now)."""
        tat = self._tat.get(key)
        if tat is None:
            return 0.0
        return max(0.0, tat - now - self.tolerance)

    def charge(self, key: Hashable, now: float) -> None:
        tat = max(self._tat.pop(key, now), now) + self.interval
        self._tat[key] = tat  # re-inserted: dict order is then oldest activity first
        if len(self._tat) > self.max_keys:
            self._prune(now)

    def refund(self, key: Hashable) -> None:
        tat = self._tat.get(key)
        if tat is not None:
            self._tat[key] = tat - self.interval

    def _prune(self, now: float) -> None:
        table = self._tat
        for key in [k for k, tat in table.items() if tat <= now]:
            del table[key]
        # still too many live keys: forget the least recently active quarter at once, so
        # the O(n) sweep happens once per max_keys / 4 charges, not on every charge
        excess = len(table) - self.max_keys * 3 // 4
        if excess > 0 and len(table) > self.max_keys:
            for key in list(table)[:excess]:
                del table[key]

    def __len__(self) -> int:
        return len(self._tat)


_TOTAL = "total"


class FailedLoginLimit:
    """Failed logins: at most ``per_account`` per account, ``per_address`` per address
    key and ``total`` altogether, each per ``window_s`` seconds.

    Use: ``try_attempt(account, address, now)`` before a check that costs real work;
    it returns ``None`` and charges the attempt to all three, or the reason it is
    refused, charging nothing. ``attempt_succeeded(account, address)`` refunds a charge
    once the check passed, so only failures use the budget.

    Resource handling: at most ``max_keys`` accounts and as many addresses are
    remembered; an attacker cycling through them only forgets its own oldest entries,
    and the total budget holds whatever it does.
    """

    def __init__(
        self, per_account: int, per_address: int, total: int, window_s: float, max_keys: int = MAX_TRACKED_KEYS
    ) -> None:
        self._accounts = KeyedRateLimit(per_account, window_s, max_keys)
        self._addresses = KeyedRateLimit(per_address, window_s, max_keys)
        self._total = KeyedRateLimit(total, window_s, 1)
        self.refused = 0

    def try_attempt(self, account: int, address: str, now: float) -> str | None:
        for rates, key, whose in (
            (self._total, _TOTAL, "on this server"),
            (self._addresses, address, "from your address"),
            (self._accounts, account, "for this account"),
        ):
            wait = rates.wait(key, now)
            if wait > 0:
                self.refused += 1
                return (
                    f"too many failed logins {whose} (at most {rates.limit} per {rates.window_s:g} s);"
                    f" try again in {math.ceil(wait)} s"
                )
        self._total.charge(_TOTAL, now)
        self._addresses.charge(address, now)
        self._accounts.charge(account, now)
        return None

    def attempt_succeeded(self, account: int, address: str) -> None:
        self._total.refund(_TOTAL)
        self._addresses.refund(address)
        self._accounts.refund(account)

    def tracked(self) -> tuple[int, int]:
        """(accounts, addresses) remembered now: for tests and statistics."""
        return len(self._accounts), len(self._addresses)
