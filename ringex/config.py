"""The exchange's configuration: embedded defaults, a TOML file, environment overrides.

One frozen ``Config`` is built at start-up and handed to every process; nothing reads
the environment or the file after that, so every process sees the same settings.

Precedence, lowest first: the embedded defaults, the TOML file (``--config``),
environment variables ``RINGEX_<KEY>`` for the top-level scalar keys (for example
``RINGEX_DATA_DIR``, ``RINGEX_DURABILITY``, ``RINGEX_ORDER_PORT``), then flags.
A bad key or value is a ``ConfigError`` that names the key and the problem.

Besides the top-level keys and ``[symbols.NAME]``, each process's tuning has a table
of its own: ``[order_entry]`` (``OrderEntryLimits``: the gateway's sessions, rates,
timeouts and failed logins), ``[market_data]`` (``MarketDataSettings``: the notifier's
connections, queues, deadlines, failed logins and fan-out), ``[journal]``
(``JournalSettings``: the LMDB map), ``[scheduling]`` (who gets a core first) and
``[cluster]`` (``ClusterSettings``: copies on NATS JetStream) and ``[fix]``
(``FixSettings``: the FIX 4.4 acceptor, ``docs/fix.md``).
Pre-trade risk limits are ``[risk.NAME]`` (``SymbolRisk``: a symbol's limits, for
every account) and ``[accounts.ID]`` (``AccountSettings``: an account's own limits and
cancel-on-disconnect); ``ringex.engine.risk`` turns them into journaled commands at
start-up, so they are not part of a symbol's journaled spec and may change between
starts.
``market_data_outage`` says what the supervisor does when the notifier keeps dying
(``docs/security.md``, "Halt policy"). ``examples/ringex.toml`` lists every key with
its default; the limiters that enforce the limits are in ``ringex.limits``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ringex.codes import Stp
from ringex.records import encode_symbol

__all__ = [
    "ConfigError",
    "SymbolSpec",
    "OrderEntryLimits",
    "MarketDataSettings",
    "JournalSettings",
    "FixSettings",
    "SchedulingSettings",
    "SymbolRisk",
    "AccountSettings",
    "MAX_COLLAR_BPS",
    "ClusterSettings",
    "Config",
    "DEFAULT_SYMBOLS",
    "load_config",
]

STP_MODES = tuple(mode.name.lower() for mode in Stp)
DURABILITY_MODES = ("fsync", "async")
WAIT_STRATEGIES = ("blocking", "yielding", "busy_spin")
LOG_LEVELS = ("debug", "info", "warning", "error")
# "continue": trading goes on while the notifier restarts (with backoff); "halt": a
# notifier that keeps dying halts trading, as venues that never trade without
# market data do. See docs/security.md.
MARKET_DATA_OUTAGE_POLICIES = ("continue", "halt")


class ConfigError(ValueError):
    """A configuration key has a bad value; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SymbolSpec:
    """One listed symbol: what the gateway validates and the matcher sizes its book by.

    Prices are integer ticks. ``price_min``/``price_max`` is the band the book's dense
    price ladder covers, so ``(price_max - price_min) // tick + 1`` levels per side are
    preallocated. ``capacity`` is how many orders may rest at once.
    """

    name: str
    tick: int = 1
    price_min: int = 1
    price_max: int = 1_000_000
    max_qty: int = 1_000_000_000
    capacity: int = 1 << 16
    stp: str = "off"

    def __post_init__(self) -> None:
        where = f"symbols.{self.name}"
        try:
            encode_symbol(self.name)
        except (ValueError, UnicodeEncodeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for key in ("tick", "price_min", "price_max", "max_qty", "capacity"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
        if self.price_max < self.price_min:
            raise ConfigError(f"{where}.price_max: {self.price_max} is below price_min {self.price_min}")
        if (self.price_max - self.price_min) % self.tick:
            raise ConfigError(
                f"{where}.price_max: band {self.price_min}..{self.price_max} is not a whole number of ticks of {self.tick}"
            )
        if self.levels > 50_000_000:
            raise ConfigError(f"{where}: band of {self.levels} levels is too wide to preallocate")
        if self.stp not in STP_MODES:
            raise ConfigError(f"{where}.stp: must be one of {', '.join(STP_MODES)}, got {self.stp!r}")

    @property
    def levels(self) -> int:
        """Number of price levels per side in the dense ladder."""
        return (self.price_max - self.price_min) // self.tick + 1


def _check_positive(where: str, obj) -> None:
    """Every field of a settings table is a positive int or a positive finite number, by
    its annotation (a few may be 0, ``_ZERO_ALLOWED``), a string or a bool."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("str", str):
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{f.name}: must be a string, got {value!r}")
            continue
        if f.type in ("bool", bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{f.name}: must be true or false, got {value!r}")
            continue
        least = -1 if f.name in _AUTO_ALLOWED else 0 if f.name in _ZERO_ALLOWED else 1
        what = "a non-negative" if least == 0 else "a positive"
        if f.type in ("int", int):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                if least < 0:
                    what = "-1 (automatic) or a non-negative"
                raise ConfigError(f"{where}.{f.name}: must be {what} integer, got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and least)
            or value > 1e9  # a rate or a time this large (31 years of seconds) is a typo
        ):
            raise ConfigError(f"{where}.{f.name}: must be {what} number (at most 1e9), got {value!r}")


# The widest price collar: 100x the reference. Wider means no collar (0), and the bound
# keeps reference x bps far from overflowing an i64 in the matcher.
MAX_COLLAR_BPS = 1_000_000
# Largest value of any limit: what an i64 holds with room to spare.
MAX_LIMIT = 1 << 62


@dataclasses.dataclass(frozen=True)
class SymbolRisk:
    """``[risk.NAME]``: pre-trade limits of one symbol, for every account (0: none).
    ``docs/protocol.md`` ("Pre-trade risk") says how each is checked."""

    symbol: str
    max_order_qty: int = 0  # largest quantity of one order
    max_notional: int = 0  # largest price x quantity of one order
    max_open_orders: int = 0  # most resting orders one account may have in the symbol
    collar_bps: int = 0  # a limit price may lie at most this far (1/10,000ths) from the reference
    reference_price: int = 0  # the collar's centre until the symbol's first trade

    def __post_init__(self) -> None:
        _check_limits(f"risk.{self.symbol}", self)
        if self.collar_bps > MAX_COLLAR_BPS:
            raise ConfigError(f"risk.{self.symbol}.collar_bps: at most {MAX_COLLAR_BPS}, got {self.collar_bps}")

    def limits(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "symbol"}


@dataclasses.dataclass(frozen=True)
class AccountSettings:
    """``[accounts.ID]``: one order entry account's own limits, in every symbol (0: none;
    a symbol's limit applies too, the tighter wins), and whether its orders are
    cancelled when its last session disconnects."""

    account: int
    max_order_qty: int = 0
    max_notional: int = 0
    max_open_orders: int = 0
    cancel_on_disconnect: bool = False

    def __post_init__(self) -> None:
        _check_limits(f"accounts.{self.account}", self)
        if not isinstance(self.cancel_on_disconnect, bool):
            raise ConfigError(
                f"accounts.{self.account}.cancel_on_disconnect: must be true or false, got {self.cancel_on_disconnect!r}"
            )

    def limits(self) -> dict[str, int]:
        return {
            "max_order_qty": self.max_order_qty,
            "max_notional": self.max_notional,
            "max_open_orders": self.max_open_orders,
        }


def _check_limits(where: str, obj) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("int", int) and f.name not in ("account",):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT:
                raise ConfigError(f"{where}.{f.name}: must be an integer from 0 (none) to 2**62, got {value!r}")


# Settings for which 0 means "none", "off" or "the system's choice" (said per field).
_ZERO_ALLOWED = {"coalesce_ms", "sndbuf", "fan_out_threads", "durable_spin_us", "max_garbage"}
# Settings for which -1 means "let the process choose" (said per field).
_AUTO_ALLOWED = {"fan_out_threads"}


@dataclasses.dataclass(frozen=True)
class OrderEntryLimits:
    """``[order_entry]``: the gateway's limits, per gateway and per session. The
    defaults are picked for this 2-core machine and a handful of clients, not derived:
    a session may sustain 20,000 requests/s with bursts of 2,000, and keep 4,096
    waiting for the journal (a few ms of a stalled fsync at that rate)."""

    max_sessions: int = 1000
    # one address (a firm's gateway, or one attacker) may hold a tenth of the sessions
    max_sessions_per_address: int = 100
    max_in_flight: int = 4096
    rate_per_s: float = 20_000.0
    burst: int = 2000
    heartbeat_interval_s: float = 1.0
    # three missed heartbeats (a client should heartbeat at our interval or faster)
    idle_timeout_s: float = 5.0
    # the deadline to log in after connecting (slowloris: a connection that never logs
    # in holds a session slot for this long at most)
    login_timeout_s: float = 5.0
    # a few stray frames are tolerated (answered X UNKNOWN_MESSAGE); a stream that
    # keeps sending them has lost its framing or is hostile
    max_garbage: int = 16
    # replies a slow reader may leave unread before it is cut off (16k replies),
    # counting those queued behind a K that waits for the journal
    max_output_bytes: int = 1 << 20
    # logins that need the slow secret check and fail, per window (see
    # ringex.limits.FailedLoginLimit): an honest client fails a few times at most; 120
    # per minute in total is at most ~2 scrypt checks a second, a few percent of a core
    failed_logins_per_account: int = 10
    failed_logins_per_address: int = 20
    failed_logins_total: int = 120
    failed_logins_window_s: float = 60.0
    # After publishing requests, the gateway polls for the journaler's commit this long
    # (µs) before it sleeps and asks the journaler to wake it: a commit that lands within
    # it is acked without a sleep and a wake-up on either side. 0: always sleep.
    durable_spin_us: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("order_entry", self)


@dataclasses.dataclass(frozen=True)
class MarketDataSettings:
    """``[market_data]``: the notifier's limits, and its fan-out (see
    ``ringex.market_data.notifier`` for what each trades)."""

    # A session's outgoing bytes not yet taken by the kernel. Beyond this it is a slow
    # consumer. 1 MiB is ~5,000 trades: seconds of a busy symbol, far beyond a blip.
    max_queue_bytes: int = 1 << 20
    # An idle session is told the server is alive this often (seconds).
    heartbeat_s: float = 5.0
    # How long a session the server closes gets to take the tail of its queue and the
    # final error before the socket is closed under it.
    close_grace_s: float = 2.0
    # Open connections, TCP and WebSocket together: under the 20,000 files a process
    # may open here, with room for listeners, rings and logs; 10,000 subscribers is
    # what the notifier is built and measured for.
    max_connections: int = 16_000
    # Picked: a firm fanning out to more subscribers than this from one address should
    # run its own fan-out, or be given a higher limit.
    max_connections_per_address: int = 256
    # A WebSocket client must finish its HTTP upgrade within this (slowloris).
    handshake_timeout_s: float = 5.0
    # A request (a TCP line, a WebSocket message) that has started arriving must be
    # complete within this, so a trickle of bytes cannot hold a session open.
    partial_request_timeout_s: float = 10.0
    # A request is a short JSON object; a longer line or message closes the session.
    max_line_bytes: int = 4096
    # Requests (and WebSocket pings) per session: subscribing to every channel of a
    # few symbols at once fits the burst; a flood is answered with errors, then closed.
    requests_per_s: float = 20.0
    request_burst: int = 100
    # ... and of all sessions from one address together: without it, one address could
    # hold 256 sessions at 20 requests/s each, 5,000 depth snapshots a second.
    address_requests_per_s: float = 1000.0
    address_request_burst: int = 10_000
    # Logins to the orders channel that need the slow secret check and fail, per window.
    failed_logins_per_account: int = 10
    failed_logins_per_address: int = 20
    failed_logins_total: int = 120
    failed_logins_window_s: float = 60.0
    # Threads sharing the fan-out's sends with the trio thread (0: none; -1, the
    # default: one per spare core, at most 3).
    fan_out_threads: int = -1
    # Sessions per fan-out slice: the ring is read again between two slices.
    slice_sessions: int = 256
    # Least time between two sends to one session (ms); 0: send as soon as there is news.
    coalesce_ms: float = 0.0
    # Kernel send buffer per session (bytes); 0: the kernel's autotuning.
    sndbuf: int = 0
    # For benchmarks: on exit, write the notifier's statistics, garbage collector
    # pauses and per-batch fan-out log to this path as JSON ("": don't).
    stats_out: str = ""

    def __post_init__(self) -> None:
        _check_positive("market_data", self)


@dataclasses.dataclass(frozen=True)
class JournalSettings:
    """``[journal]``: the LMDB map, and how long events may wait to be journaled.

    The map starts at ``map_size`` bytes and doubles when full, up to ``max_map_size``;
    a commit that still does not fit halts the exchange. Events (derived from the
    journaled commands, see ``ringex.journal.journaler``) ride along with the next
    commit of commands, or are committed on their own after ``event_delay_ms``."""

    map_size: int = 64 << 20
    max_map_size: int = 64 << 30
    event_delay_ms: float = 5.0

    def __post_init__(self) -> None:
        _check_positive("journal", self)
        if self.max_map_size < self.map_size:
            raise ConfigError(f"journal.max_map_size: {self.max_map_size} is below map_size {self.map_size}")


@dataclasses.dataclass(frozen=True)
class FixSettings:
    """``[fix]``: the FIX 4.4 acceptor (``ringex.fix``, ``docs/fix.md``); it listens on
    the top-level ``fix_port``."""

    # Run the acceptor at all (a process of its own, and a consumer of every out-ring).
    enabled: bool = True
    # Our CompID: the SenderCompID of what the acceptor sends, the TargetCompID it expects.
    comp_id: str = "RINGEX"
    # FIX sessions connected at once; more are refused at accept.
    max_sessions: int = 200
    # A connection must send its Logon within this (seconds).
    logon_timeout_s: float = 5.0
    # After a Logout, how long the other side gets to answer before the socket is closed.
    logout_timeout_s: float = 2.0
    # Largest message accepted (bytes, whole frame); a bigger BodyLength ends the session.
    max_message_bytes: int = 16384
    # Largest gap between a message's SendingTime and our clock (QuickFIX's MaxLatency).
    max_latency_s: float = 120.0
    # fsync the session store on every commit (QuickFIX/J's FileStoreSync; off by
    # default there too): without it a process crash loses nothing, a power cut may
    # lose the last commits (docs/fix.md, "Durability").
    store_sync: bool = False
    # The store's LMDB map (it grows in place up to this; ~1 KiB per order).
    store_map_size: int = 4 << 30
    # Write the store through LMDB's writable map: a commit on the order path costs
    # ~5 µs instead of ~19, with the map's (sparse) file allocated 16 MiB ahead so a
    # full disk is an error, not a SIGBUS. Set false on a copy-on-write filesystem
    # (btrfs, ZFS), where allocating ahead does not guarantee room for overwrites
    # (ringex/fix/store.py).
    store_writemap: bool = True

    def __post_init__(self) -> None:
        _check_positive("fix", self)
        comp = self.comp_id
        if not comp or not comp.isascii() or not comp.isprintable() or "=" in comp or len(comp) > 64:
            raise ConfigError(f"fix.comp_id: must be 1-64 printable ASCII characters without '=', got {comp!r}")


def parse_policy(where: str, text: str) -> tuple[str, int]:
    """A scheduling policy as ``("nice", n)`` (the normal scheduler at niceness n, -20..19)
    or ``("fifo", p)`` (SCHED_FIFO at real-time priority p, 1..99)."""
    kind, _, value = text.partition(":")
    limits = {"nice": (-20, 19), "fifo": (1, 99)}
    try:
        number = int(value)
    except ValueError:
        number = None
    if kind not in limits or number is None or not limits[kind][0] <= number <= limits[kind][1]:
        raise ConfigError(f"{where}: must be 'nice:N' (-20..19) or 'fifo:P' (1..99), got {text!r}")
    return kind, number


@dataclasses.dataclass(frozen=True)
class SchedulingSettings:
    """``[scheduling]``: who gets a core first. Each process of the exchange asks the
    kernel for its policy when it starts (``ringex.roles``): ``"nice:N"`` for the normal
    scheduler at niceness N, or ``"fifo:P"`` for SCHED_FIFO at real-time priority P, which
    runs the moment it is woken, ahead of every normal process. The ack path (gateway,
    journaler) should win a core over the stages behind it (matcher, notifier), which
    matter for trade prints but not for acks. Raising a priority (a negative nice, any
    fifo) needs CAP_SYS_NICE (root, or ``setcap``); without it the process says so once
    in the log and runs at nice 0."""

    gateway: str = "nice:0"
    journaler: str = "nice:0"
    matcher: str = "nice:0"
    notifier: str = "nice:0"
    # the FIX acceptor (role fix-acceptor): a client of the gateway, like the notifier off the ack path
    fix: str = "nice:0"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                raise ConfigError(f"scheduling.{f.name}: must be a string like 'nice:5' or 'fifo:10', got {value!r}")
            parse_policy(f"scheduling.{f.name}", value)

    def policy(self, role: str) -> tuple[str, int]:
        """The policy of process ``role`` (a matcher shard's is ``matcher``'s)."""
        name = role.partition("-")[0]
        # the cluster's roles (bridge, standby and follower feeders) are off the ack path
        # in async replication and run at the normal priority
        return parse_policy(f"scheduling.{name}", getattr(self, name, "nice:0"))


REPLICATION_MODES = ("async", "sync")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]``: copies of the journal on NATS JetStream (``ringex.cluster``,
    docs/scale-out.md). With ``nats`` set, ``ringex up`` also runs the bridge, which
    publishes every durable command and event to the streams ``<name>_cmd`` and
    ``<name>_evt`` (subjects ``<name>.cmd.<SYMBOL>``, ``<name>.evt.<SYMBOL>``), where
    followers and standbys read them. ``replication``: ``async`` acknowledges an order
    once the journal has it (JetStream gets it a moment later); ``sync`` only once
    JetStream has it too, so a promoted standby has every acknowledged order."""

    nats: str = ""  # nats://host:port[,nats://...]; "" runs no bridge
    name: str = "ringex"
    replication: str = "async"
    # records per JetStream message: one message per batch, cut at this size; 2,048
    # events are 256 KiB, well under nats-server's 1 MiB default max_payload
    max_batch: int = 2048
    # stream replicas (1 on a one-server NATS; 3 on a three-server cluster)
    replicas: int = 1
    # how long one publish waits for JetStream's ack before it is retried
    publish_timeout_s: float = 2.0
    # a follower's or standby's durable consumer name; "" derives one from the host name
    # and data directory (stable across restarts, distinct per feeder)
    consumer: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.nats, str):
            raise ConfigError(f"cluster.nats: must be a string like 'nats://127.0.0.1:4222', got {self.nats!r}")
        if self.nats and not all(u.strip().startswith(("nats://", "tls://")) for u in self.nats.split(",")):
            raise ConfigError(
                f"cluster.nats: must be nats://host:port (comma-separated for several), got {self.nats!r}"
            )
        if not isinstance(self.name, str) or not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"cluster.name: letters, digits, '-' and '_' only, got {self.name!r}")
        if self.replication not in REPLICATION_MODES:
            raise ConfigError(
                f"cluster.replication: must be one of {', '.join(REPLICATION_MODES)}, got {self.replication!r}"
            )
        for key in ("max_batch", "replicas"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"cluster.{key}: must be a positive integer, got {value!r}")
        if not isinstance(self.consumer, str) or not all(c.isalnum() or c in "-_" for c in self.consumer):
            raise ConfigError(f"cluster.consumer: letters, digits, '-' and '_' only, got {self.consumer!r}")
        if not isinstance(self.publish_timeout_s, int | float) or self.publish_timeout_s <= 0:
            raise ConfigError(f"cluster.publish_timeout_s: must be positive, got {self.publish_timeout_s!r}")


# [table] name -> its settings class and the Config field that holds it
_TABLES = {
    "order_entry": OrderEntryLimits,
    "market_data": MarketDataSettings,
    "journal": JournalSettings,
    "fix": FixSettings,
    "scheduling": SchedulingSettings,
    "cluster": ClusterSettings,
}


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = tuple(SymbolSpec(name) for name in ("ACME", "BOLT", "CRUX", "DYNE"))


@dataclasses.dataclass(frozen=True)
class Config:
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS
    data_dir: str = "./ringex-data"
    host: str = "127.0.0.1"
    order_port: int = 7001
    md_port: int = 7002
    ws_port: int = 7003
    fix_port: int = 7004
    durability: str = "fsync"
    wait_strategy: str = "blocking"
    ring_capacity: int = 1 << 16
    shards: int = 1
    snapshot_interval: int = 100_000
    log_level: str = "info"
    # Stage tracing (ringex.trace): every process notes when it handled the commands
    # whose journal sequence is a multiple of this; 0: off.
    trace_every: int = 0
    market_data_outage: str = "continue"
    risk: tuple[SymbolRisk, ...] = ()
    accounts: tuple[AccountSettings, ...] = ()
    order_entry: OrderEntryLimits = OrderEntryLimits()
    market_data: MarketDataSettings = MarketDataSettings()
    journal: JournalSettings = JournalSettings()
    fix: FixSettings = FixSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    cluster: ClusterSettings = ClusterSettings()

    def __post_init__(self) -> None:
        for key in ("data_dir", "host"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key}: must be a string, got {getattr(self, key)!r}")
        if not self.symbols:
            raise ConfigError("symbols: at least one symbol must be listed")
        names = [s.name for s in self.symbols]
        if len(set(names)) != len(names):
            raise ConfigError("symbols: a symbol is listed twice")
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"durability: must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}")
        if self.wait_strategy not in WAIT_STRATEGIES:
            raise ConfigError(f"wait_strategy: must be one of {', '.join(WAIT_STRATEGIES)}, got {self.wait_strategy!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.market_data_outage not in MARKET_DATA_OUTAGE_POLICIES:
            raise ConfigError(
                f"market_data_outage: must be one of {', '.join(MARKET_DATA_OUTAGE_POLICIES)},"
                f" got {self.market_data_outage!r}"
            )
        for key in ("order_port", "md_port", "ws_port", "fix_port"):
            port = getattr(self, key)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                raise ConfigError(f"{key}: must be a port number 0-65535, got {port!r}")
        cap = self.ring_capacity
        if not isinstance(cap, int) or cap < 2 or cap & (cap - 1):
            raise ConfigError(f"ring_capacity: must be a power of two >= 2, got {cap!r}")
        for key in ("shards", "snapshot_interval"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
        if not isinstance(self.trace_every, int) or self.trace_every < 0:
            raise ConfigError(f"trace_every: must be 0 (off) or a positive integer, got {self.trace_every!r}")
        for limits in self.risk:
            if limits.symbol not in names:
                raise ConfigError(f"risk.{limits.symbol}: not a listed symbol (symbols: {', '.join(names)})")

    def symbol(self, name: str) -> SymbolSpec:
        for spec in self.symbols:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


_SCALAR_KEYS = {
    f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("symbols", "risk", "accounts", *_TABLES)
}


def _coerce(key: str, raw: str) -> Any:
    kind = _SCALAR_KEYS[key]
    if kind in ("int", int):
        try:
            return int(raw, 0)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
    return raw


def _symbols_from_toml(table: Any) -> tuple[SymbolSpec, ...]:
    if not isinstance(table, Mapping):
        raise ConfigError("symbols: must be a table of [symbols.NAME] tables")
    known = {f.name for f in dataclasses.fields(SymbolSpec)} - {"name"}
    specs = []
    for name, fields in table.items():
        if not isinstance(fields, Mapping):
            raise ConfigError(f"symbols.{name}: must be a table")
        for key in fields:
            if key not in known:
                raise ConfigError(f"symbols.{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        specs.append(SymbolSpec(name, **fields))
    return tuple(specs)


def _keyed_tables(name: str, table: Any, cls, key_field: str, key_of) -> tuple:
    """``[name.KEY]`` tables as ``cls(key_field=key_of(KEY), **fields)``, each key checked."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: must be a table of [{name}.KEY] tables")
    known = {f.name for f in dataclasses.fields(cls)} - {key_field}
    out = []
    for key, fields in table.items():
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{name}.{key}: must be a table")
        for field in fields:
            if field not in known:
                raise ConfigError(f"{name}.{key}.{field}: unknown key (known: {', '.join(sorted(known))})")
        out.append(cls(**{key_field: key_of(key)}, **fields))
    return tuple(out)


def _account_id(key: str) -> int:
    try:
        account = int(key)
    except ValueError:
        account = 0
    if not 0 < account < 1 << 64:
        raise ConfigError(f"accounts.{key}: not an account id (an integer from 1 to 2**64-1)")
    return account


def _table_from_toml(name: str, table: Any):
    cls = _TABLES[name]
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    # a TOML integer is a fine value for a float setting
    values = {k: float(v) if known[k] in ("float", float) and type(v) is int else v for k, v in table.items()}
    return cls(**values)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the ``Config`` from defaults, then ``path``, then ``environ``, then ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path}: is a directory") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            # tomllib reads the file as UTF-8 and lets a bad byte's UnicodeDecodeError
            # through, and parses nested arrays recursively: both are "not valid TOML"
            raise ConfigError(f"config file {path}: not valid TOML: {str(exc) or type(exc).__name__}") from None
        for key, value in doc.items():
            if key == "symbols":
                values["symbols"] = _symbols_from_toml(value)
            elif key == "risk":
                values["risk"] = _keyed_tables("risk", value, SymbolRisk, "symbol", str)
            elif key == "accounts":
                values["accounts"] = _keyed_tables("accounts", value, AccountSettings, "account", _account_id)
            elif key in _TABLES:
                values[key] = _table_from_toml(key, value)
            elif key in _SCALAR_KEYS:
                values[key] = value
            else:
                known = ", ".join(["symbols", "risk", "accounts", *_TABLES, *sorted(_SCALAR_KEYS)])
                raise ConfigError(f"{key}: unknown key (known: {known})")
    env = os.environ if environ is None else environ
    for key in _SCALAR_KEYS:
        raw = env.get(f"RINGEX_{key.upper()}")
        if raw is not None:
            values[key] = _coerce(key, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return Config(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
