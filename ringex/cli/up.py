"""``ringex up``: start the whole exchange in the foreground (``bin/start`` runs it).

``ringex standby`` and ``ringex follow`` run the same supervisor in their modes
(``ringex.topology.MODES``) with the same flags, through ``serve`` here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from ringex.config import Config, ConfigError, load_config
from ringex.supervisor import StartError, Supervisor
from ringex.topology import PRIMARY

__all__ = ["add_arguments", "add_replica_arguments", "run", "run_replica", "config_from", "serve", "DEFAULT_NATS_PORT"]

# nats-server's own default port, for `--with-nats` without a port
DEFAULT_NATS_PORT = 4222
# Where a detached exchange's stdout and stderr go, in its data directory.
DETACHED_OUTPUT = "ringex-up.out"
# The flags ``--detach`` passes on to the exchange it starts: (namespace key, flag).
_PASSED_ON = (
    ("config", "--config"),
    ("data_dir", "--data"),
    ("durability", "--durability"),
    ("host", "--host"),
    ("order_port", "--order-port"),
    ("md_port", "--md-port"),
    ("ws_port", "--ws-port"),
    ("fix_port", "--fix-port"),
    ("log_level", "--log-level"),
    ("nats", "--nats"),
    ("replication", "--replication"),
    ("with_nats", "--with-nats"),
)


def add_arguments(parser: argparse.ArgumentParser, *, with_nats: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config (embedded defaults without it)")
    parser.add_argument("--data", metavar="DIR", dest="data_dir", help="data directory (default ./ringex-data)")
    parser.add_argument("--durability", choices=("fsync", "async"), help="journal durability mode")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--order-port", type=int, help="order entry port (default 7001)")
    parser.add_argument("--md-port", type=int, help="market data TCP port (default 7002)")
    parser.add_argument("--ws-port", type=int, help="market data WebSocket port (default 7003)")
    parser.add_argument("--fix-port", type=int, help="FIX 4.4 acceptor port (default 7004; docs/fix.md)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--nats", metavar="URL", help="NATS JetStream to replicate to/from ([cluster] nats)")
    parser.add_argument("--replication", choices=("async", "sync"), help="[cluster] replication")
    if with_nats:
        parser.add_argument(
            "--with-nats",
            nargs="?",
            const=DEFAULT_NATS_PORT,
            type=int,
            metavar="PORT",
            help=f"start a local nats-server (JetStream, store in DATA/nats) on PORT (default {DEFAULT_NATS_PORT})"
            " and replicate to it: a one-box demo",
        )
        parser.add_argument(
            "--detach",
            action="store_true",
            help=f"run in the background once ready; its output goes to DATA/{DETACHED_OUTPUT} (`ringex stop` stops it)",
        )


def config_from(args: argparse.Namespace, command: str) -> Config | None:
    """The config the flags ask for (None: a bad one, said on stderr)."""
    overrides = {
        key: getattr(args, key)
        for key in ("data_dir", "durability", "host", "order_port", "md_port", "ws_port", "fix_port", "log_level")
    }
    try:
        config = load_config(args.config, overrides=overrides)
        cluster = {
            key: value
            for key, value in (
                ("nats", args.nats),
                ("replication", args.replication),
                ("consumer", getattr(args, "consumer", None)),
            )
            if value
        }
        if cluster:
            config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, **cluster))
    except ConfigError as exc:
        print(f"ringex {command}: bad configuration: {exc}", file=sys.stderr)
        return None
    return config


def serve(config: Config, command: str, mode: str = PRIMARY) -> int:
    """Run the supervisor in ``mode`` until SIGINT/SIGTERM."""
    supervisor = Supervisor(config, mode=mode)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop())
    try:
        supervisor.start()
        supervisor.serve_forever()
    except StartError as exc:
        print(f"ringex {command}: {exc}", file=sys.stderr)
        if logging.getLogger().handlers:  # not before the log is set up: the line above says it
            logging.getLogger("ringex.supervisor").error("%s", exc)
        if supervisor.demo_accounts:
            # created by this start, never shown: say where they are (the next start shows them)
            print(
                f"ringex {command}: the demo accounts' tokens are kept; `ringex accounts demo --data {config.data_dir}`"
                " shows them",
                file=sys.stderr,
            )
        return 1
    finally:
        supervisor.shutdown()
    return 0


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """``ringex follow`` and ``ringex standby``: ``up``'s options (the NATS URL a must)
    and the durable consumer's name."""
    add_arguments(parser, with_nats=False)
    parser.add_argument("--consumer", metavar="NAME", help="durable consumer name (default: from host and data dir)")


def run_replica(args: argparse.Namespace, command: str, mode: str) -> int:
    """Serve a follower or a standby (``mode``), fed from the NATS URL it must be given."""
    config = config_from(args, command)
    if config is None:
        return 2
    if not config.cluster.nats:
        print(f"ringex {command}: give --nats URL (or [cluster] nats in --config)", file=sys.stderr)
        return 2
    return serve(config, command, mode=mode)


def detach(args: argparse.Namespace, config: Config, command: str = "up") -> int:
    """Start ``ringex COMMAND`` with the same flags in a session of its own, its output
    in the data directory, and return once it has printed its banner (0) or failed (1,
    with what it printed)."""
    import subprocess
    import time

    from ringex import preflight
    from ringex.supervisor import READY_TIMEOUT_S

    try:
        preflight.check_data_dir(config)
    except preflight.PreflightError as exc:
        print(f"ringex {command}: {exc}", file=sys.stderr)
        return 1
    argv = [sys.executable, "-m", "ringex", command]
    for key, flag in _PASSED_ON:
        value = getattr(args, key, None)
        if value is not None:
            argv += [flag, str(value)]
    out_path = Path(config.data_dir) / DETACHED_OUTPUT
    # appended to, never truncated: it may be the output of an exchange still running
    start = out_path.stat().st_size if out_path.exists() else 0
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + READY_TIMEOUT_S + 30
    try:
        while True:
            with open(out_path, "rb") as fh:
                fh.seek(start)
                text = fh.read().decode(errors="replace")
            if "stop with Ctrl-C" in text:
                banner = text[text.index("ringex is up") if "ringex is up" in text else 0 :]
                print(banner.replace("stop with Ctrl-C", "stop with `ringex stop`").rstrip())
                print(f"running in the background (pid {proc.pid}); its output goes to {out_path}")
                return 0
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(60)
                print(text.rstrip(), file=sys.stderr)
                return 1
            time.sleep(0.1)
    except KeyboardInterrupt:
        proc.terminate()  # its own session: it did not get the terminal's Ctrl-C
        proc.wait(60)
        print(f"ringex {command}: stopped while starting", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    config = config_from(args, "up")
    if config is None:
        return 2
    if args.detach:
        return detach(args, config)
    if getattr(args, "with_nats", None) is None:
        return serve(config, "up")
    from ringex.cluster.server import NatsServer  # noqa: PLC0415

    server = NatsServer(Path(config.data_dir) / "nats", args.with_nats, log=str(Path(config.data_dir) / "nats.log"))
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, nats=server.url))
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        print(f"ringex up: cannot start nats-server: {exc}", file=sys.stderr)
        return 1
    print(f"nats-server (JetStream) on {server.url}, store in {server.store}", flush=True)
    try:
        return serve(config, "up")
    finally:
        server.stop()
