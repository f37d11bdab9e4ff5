"""``ringex up``: start the whole exchange in the foreground (``bin/start`` runs it)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ringex.config import ConfigError, load_config
from ringex.supervisor import StartError, Supervisor

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config (embedded defaults without it)")
    parser.add_argument("--data", metavar="DIR", dest="data_dir", help="data directory (default ./ringex-data)")
    parser.add_argument("--durability", choices=("fsync", "async"), help="journal durability mode")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--order-port", type=int, help="order entry port (default 7001)")
    parser.add_argument("--md-port", type=int, help="market data TCP port (default 7002)")
    parser.add_argument("--ws-port", type=int, help="market data WebSocket port (default 7003)")
    parser.add_argument("--fix-port", type=int, help="FIX 4.4 acceptor port (default 7004; docs/fix.md)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("data_dir", "durability", "host", "order_port", "md_port", "ws_port", "fix_port", "log_level")
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ringex up: bad configuration: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop())
    try:
        supervisor.start()
        supervisor.serve_forever()
    except StartError as exc:
        print(f"ringex up: {exc}", file=sys.stderr)
        logging.getLogger("ringex.supervisor").error("%s", exc)
        return 1
    finally:
        supervisor.shutdown()
    return 0
