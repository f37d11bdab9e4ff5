"""The exchange's configuration: embedded defaults, a TOML file, environment overrides.

One frozen ``Config`` is built at start-up and handed to every process; nothing reads
the environment or the file after that, so every process sees the same settings.

Precedence, lowest first: the embedded defaults, the TOML file (``--config``),
environment variables ``RINGEX_<KEY>`` for the top-level scalar keys (for example
``RINGEX_DATA_DIR``, ``RINGEX_DURABILITY``, ``RINGEX_ORDER_PORT``), then flags.
A bad key or value is a ``ConfigError`` that names the key and the problem.

Tables besides ``[symbols.NAME]``: ``[order_entry]`` (``ringex.limits.OrderEntryLimits``:
sessions, rates, timeouts, failed logins of the gateway) and ``[market_data]``
(``ringex.limits.MarketDataLimits``: the notifier's connections, queues, deadlines and
failed logins). ``market_data_outage`` says what the supervisor does when the notifier
keeps dying (``docs/security.md``, "Halt policy").
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ringex.limits import MarketDataLimits, OrderEntryLimits
from ringex.records import encode_symbol

__all__ = ["ConfigError", "SymbolSpec", "Config", "DEFAULT_SYMBOLS", "load_config"]

STP_MODES = ("off", "cancel_newest", "cancel_oldest", "cancel_both")
DURABILITY_MODES = ("fsync", "async")
WAIT_STRATEGIES = ("blocking", "yielding", "busy_spin")
LOG_LEVELS = ("debug", "info", "warning", "error")
# "continue": trading goes on while the notifier restarts (with backoff); "halt": a
# notifier that keeps dying halts trading, as venues that never trade without
# market data do. See docs/security.md.
MARKET_DATA_OUTAGE_POLICIES = ("continue", "halt")
# Limits that may be 0 (everything else in a limits table must be positive).
_MAY_BE_ZERO = frozenset({"max_garbage"})


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


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = tuple(SymbolSpec(name) for name in ("ACME", "BOLT", "CRUX", "DYNE"))


@dataclasses.dataclass(frozen=True)
class Config:
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS
    data_dir: str = "./ringex-data"
    host: str = "127.0.0.1"
    order_port: int = 7001
    md_port: int = 7002
    ws_port: int = 7003
    durability: str = "fsync"
    wait_strategy: str = "blocking"
    ring_capacity: int = 1 << 16
    shards: int = 1
    snapshot_interval: int = 100_000
    log_level: str = "info"
    market_data_outage: str = "continue"
    order_entry: OrderEntryLimits = OrderEntryLimits()
    market_data: MarketDataLimits = MarketDataLimits()

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
        for key in ("order_port", "md_port", "ws_port"):
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
        _check_limits("order_entry", self.order_entry, OrderEntryLimits)
        _check_limits("market_data", self.market_data, MarketDataLimits)

    def symbol(self, name: str) -> SymbolSpec:
        for spec in self.symbols:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _check_limits(section: str, limits: Any, kind: type) -> None:
    """Every field of a limits table is a positive int or a positive finite number,
    by its annotation (a few may be 0, ``_MAY_BE_ZERO``)."""
    if not isinstance(limits, kind):
        raise ConfigError(f"{section}: must be a table of limits, got {limits!r}")
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        least = 0 if f.name in _MAY_BE_ZERO else 1
        if f.type in ("int", int):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                what = "a non-negative" if least == 0 else "a positive"
                raise ConfigError(f"{section}.{f.name}: must be {what} integer, got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
            or value > 1e9  # a rate or a time this large (31 years of seconds) is a typo
        ):
            raise ConfigError(f"{section}.{f.name}: must be a positive number (at most 1e9), got {value!r}")


_TABLES = {"order_entry": OrderEntryLimits, "market_data": MarketDataLimits}
_SCALAR_KEYS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "symbols" and f.name not in _TABLES}


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


def _limits_from_toml(section: str, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{section}: must be a table")
    kind = _TABLES[section]
    known = {f.name for f in dataclasses.fields(kind)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
    limits = kind(**table)
    _check_limits(section, limits, kind)
    return limits


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
            elif key in _TABLES:
                values[key] = _limits_from_toml(key, value)
            elif key in _SCALAR_KEYS:
                values[key] = value
            else:
                known = ", ".join(sorted(["symbols", *_TABLES, *_SCALAR_KEYS]))
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
