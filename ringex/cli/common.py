"""What every ``ringex`` subcommand shares: finding the exchange, and the account to act as.

Every client command takes ``--config FILE`` and ``--data DIR`` and reads the same
``RINGEX_*`` variables, and finds the exchange the same way (``find_exchange``):

1. the data directory: ``--data``, else ``--config``'s ``data_dir``, else
   ``$RINGEX_DATA_DIR``; with none of them, ``./ringex-data`` if an exchange runs there,
   else the one exchange of this user that runs anywhere (``ringex.runfile``);
2. where it listens: a flag (``--host``, ``--port``), else ``RINGEX_HOST`` /
   ``RINGEX_ORDER_PORT`` / ``RINGEX_MD_PORT`` / ``RINGEX_WS_PORT``, else the run file of
   the exchange running there, else the config (or the embedded defaults).

Failures are one line naming what to do (``ExchangeNotFound``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from ringex.config import Config, ConfigError, load_config
from ringex.runfile import RUN_FILE, read_run_file, running_exchanges

__all__ = [
    "Exchange",
    "ExchangeNotFound",
    "add_exchange_arguments",
    "add_account_arguments",
    "find_exchange",
    "data_dir_of",
    "credentials",
    "parse_int",
    "FeedRefused",
    "orders_feed",
]

# What a client connects to when the exchange listens on every address.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class ExchangeNotFound(Exception):
    """No exchange where the command looked; the message says where and what to do."""


@dataclasses.dataclass(frozen=True)
class Exchange:
    """An exchange as a client command sees it: its data directory and config, the run
    file if it is running (``run``), and where to connect."""

    data_dir: Path
    config: Config
    run: dict | None
    host: str
    order_port: int
    md_port: int
    ws_port: int

    @property
    def running(self) -> bool:
        return self.run is not None

    @property
    def symbols(self) -> list[str]:
        """The listed symbols: the running exchange's, else the config's."""
        if self.run is not None:
            return list(self.run["topology"]["symbols"])
        return [s.name for s in self.config.symbols]

    def require_running(self, command: str) -> None:
        if self.run is None:
            raise ExchangeNotFound(
                f"{command}: no exchange is running on {self.data_dir} (no live {RUN_FILE}); "
                "start one with `ringex up`, or point at it with --data DIR or --config FILE"
            )


def parse_int(text: str) -> int:
    """An integer typed by a person: decimal or 0x hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_exchange_arguments(parser: argparse.ArgumentParser, *, order_port: bool = False, md_port: bool = False) -> None:
    """``--config``/``--data``, and ``--host`` with the ports the command connects to."""
    parser.add_argument("--config", metavar="FILE", help="the exchange's TOML config (for its data_dir and ports)")
    parser.add_argument("--data", metavar="DIR", help="the exchange's data directory (default: the one running)")
    if order_port or md_port:
        parser.add_argument("--host", default=None, help="exchange host (default: where the exchange listens)")
    if order_port:
        parser.add_argument("--port", type=int, default=None, help="order entry port (default: the exchange's)")
    if md_port:
        parser.add_argument("--md-port", type=int, default=None, help="market data TCP port (default: the exchange's)")


def add_account_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", type=parse_int, default=None, help="account id (default: $RINGEX_ACCOUNT)")
    parser.add_argument("--token", type=parse_int, default=None, help="account token (default: $RINGEX_TOKEN)")


def credentials(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``--account``/``--token``, else ``RINGEX_ACCOUNT``/``RINGEX_TOKEN``; ``ValueError``
    naming both ways when either is missing or not a number."""
    env = os.environ if environ is None else environ
    account, token = getattr(args, "account", None), getattr(args, "token", None)
    try:
        if account is None and env.get("RINGEX_ACCOUNT"):
            account = int(env["RINGEX_ACCOUNT"], 0)
        if token is None and env.get("RINGEX_TOKEN"):
            token = int(env["RINGEX_TOKEN"], 0)
    except ValueError:
        raise ValueError("RINGEX_ACCOUNT and RINGEX_TOKEN must be integers") from None
    if account is None or token is None:
        raise ValueError("an account and token are needed: --account/--token or RINGEX_ACCOUNT/RINGEX_TOKEN")
    return account, token


def find_exchange(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Exchange:
    """The exchange a client command means (module docstring). Raises
    ``ExchangeNotFound`` for a bad config or when several exchanges could be meant;
    an exchange that is not running is returned with ``run`` None."""
    env = os.environ if environ is None else environ
    data_flag = getattr(args, "data", None)
    config_flag = getattr(args, "config", None)
    try:
        config = load_config(config_flag, environ=env, overrides={"data_dir": data_flag})
    except ConfigError as exc:
        raise ExchangeNotFound(f"bad configuration: {exc}") from None
    data = config.data_path
    run = read_run_file(data)
    if run is None and not (data_flag or config_flag or env.get("RINGEX_DATA_DIR")):
        others = running_exchanges()
        if len(others) == 1:
            run = others[0]
            data = Path(run["data_dir"])
        elif len(others) > 1 and getattr(args, "port", None) is None and getattr(args, "md_port", None) is None:
            where = ", ".join(o["data_dir"] for o in others)
            raise ExchangeNotFound(f"{len(others)} exchanges are running ({where}); choose one with --data DIR")

    def setting(key: str, flag: str | None, run_value):
        given = getattr(args, flag, None) if flag else None
        if given is not None:
            return given
        if f"RINGEX_{key.upper()}" in env or run is None:
            return getattr(config, key)
        return run_value

    ports = (run or {}).get("ports", {})
    host = setting("host", "host", (run or {}).get("host"))
    return Exchange(
        data_dir=data,
        config=config,
        run=run,
        host=_WILDCARDS.get(host, host),
        order_port=setting("order_port", "port", ports.get("order")),
        md_port=setting("md_port", "md_port", ports.get("md")),
        ws_port=setting("ws_port", None, ports.get("ws")),
    )


def data_dir_of(args: argparse.Namespace) -> Path:
    """The data directory a command means (``find_exchange``'s, running or not)."""
    try:
        return find_exchange(args).data_dir
    except ExchangeNotFound as exc:
        raise SystemExit(f"ringex: {exc}") from None


class FeedRefused(Exception):
    """The notifier refused the login or the subscription; the message says why."""


def orders_feed(exchange: Exchange, account: int, token: int, symbol: str | None = None, timeout: float = 10.0):
    """A market data connection logged in as ``account`` and subscribed to its private
    ``orders`` channel (``symbol``, None: every symbol), with its ``orders_snapshot``
    read: returns ``(client, snapshot)``. ``OSError`` if the notifier cannot be reached,
    ``FeedRefused`` if it says no."""
    from ringex.market_data.client import MdClient

    md = MdClient(exchange.host, exchange.md_port, timeout=timeout)
    try:
        md.login(account, token)
        md.subscribe("orders", symbol)
        while True:
            msg = md.recv()
            if msg.get("type") == "error":
                raise FeedRefused(f"the notifier refused: {msg.get('reason')}")
            if msg.get("type") == "orders_snapshot":
                return md, msg
    except BaseException:
        md.close()
        raise
