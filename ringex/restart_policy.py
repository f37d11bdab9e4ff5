"""What the supervisor does when a stage dies: restart it, when, and when to halt instead.

The halt policy (``docs/security.md`` explains it to operators)::

    stage            on a death                          crash loop: more than MAX_RESTARTS
                                                         deaths within RESTART_WINDOW_S
    journaler        restart at once, trading paused     HALT: no trading without a journal
    matcher-N        restart at once, trading paused     HALT: no trading without a book
    gateway          restart (backoff from the 2nd)      keep restarting with backoff
    fix-acceptor     restart (backoff from the 2nd),     keep restarting with backoff;
                     trading goes on                     trading goes on
    notifier         market_data_outage = "continue" (default):
                     restart (backoff from the 2nd),     keep restarting with backoff;
                     trading goes on                     trading goes on
                     market_data_outage = "halt":
                     restart at once, trading paused     HALT, as venues that never
                                                         trade without market data do

Why: the journaler and the matchers are on the path of every order; if they cannot
stay up, an acknowledgement could outrun what is durable or matched, so trading stops
and an operator looks. The gateway, the notifier and the FIX acceptor face clients
(the FIX acceptor is itself a client of the gateway: its sessions reconnect and
recover what they missed by ResendRequest once it is back). Whatever a client
sends must not be able to halt the exchange (issue 18: six short lines on the market
data port did), so their crash loops are answered with restarts spaced out by an
exponential backoff (their restarts cost CPU: the notifier replays the journal to
rebuild its books) and a log line each, never with a halt, unless the venue chose
``market_data_outage = "halt"``. Trading without the notifier is safe: events wait in
the out-rings (the notifier's cursor gates them) and are published when it is back; a
long outage fills the out-rings, then matching waits and the gateway answers
THROTTLED when the in-rings fill.
"""

from __future__ import annotations

import dataclasses

from ringex.topology import GATEWAY, JOURNALER, MATCHER, NOTIFIER

__all__ = ["Decision", "RestartPolicy", "MAX_RESTARTS", "RESTART_WINDOW_S", "BACKOFF_FIRST_S", "BACKOFF_MAX_S"]

# A stage that dies more than MAX_RESTARTS times within RESTART_WINDOW_S is crash-looping.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# Backoff between restarts of a stage that keeps dying: the second death within the
# window waits BACKOFF_FIRST_S, each next one twice as long, at most BACKOFF_MAX_S.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0

# Stages trading cannot go on without: they pause trading while down, halt it when crash-looping.
_CRITICAL = (JOURNALER, f"{MATCHER}-")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do about one death: ``halt`` the exchange, or restart after ``delay_s``
    seconds, with trading paused (exchange STARTING) until it is back if ``pause_trading``."""

    halt: bool
    delay_s: float = 0.0
    pause_trading: bool = False


class RestartPolicy:
    """``on_death(role, deaths)``: the ``Decision`` for ``role``'s death, where ``deaths``
    counts its deaths within the last ``RESTART_WINDOW_S``, this one included."""

    def __init__(self, market_data_outage: str = "continue") -> None:
        if market_data_outage not in ("continue", "halt"):
            raise ValueError(f"market_data_outage must be 'continue' or 'halt', got {market_data_outage!r}")
        self.market_data_outage = market_data_outage

    def critical(self, role: str) -> bool:
        """True for a stage trading stops without (it pauses trading while down)."""
        if role == NOTIFIER:
            return self.market_data_outage == "halt"
        return role.startswith(_CRITICAL)

    def on_death(self, role: str, deaths: int) -> Decision:
        if self.critical(role):
            if deaths > MAX_RESTARTS:
                return Decision(halt=True)
            return Decision(halt=False, pause_trading=True)
        # gateway, notifier under "continue": never halt; space the restarts out
        delay = 0.0 if deaths <= 1 else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (deaths - 2))
        return Decision(halt=False, delay_s=delay, pause_trading=role == GATEWAY)
