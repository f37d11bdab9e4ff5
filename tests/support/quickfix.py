"""A QuickFIX (C++) initiator built from ``tests/fix/quickfix_initiator.cpp`` and driven over stdin.

``build()`` compiles it with g++ against Debian's ``libquickfix-dev`` into
``tests/.build/`` (reused while the source is unchanged: a few seconds the first
time). ``QuickFixInitiator`` runs it with a settings file of its own and reads its
output lines on a thread, so a test can wait for the line it expects.
"""

from __future__ import annotations

import hashlib
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["available", "build", "QuickFixInitiator", "SOURCE", "DICTIONARY"]

HERE = Path(__file__).resolve().parents[1] / "fix"
SOURCE = HERE / "quickfix_initiator.cpp"
DICTIONARY = HERE / "FIX44.xml"
BUILD = Path(__file__).resolve().parents[1] / ".build"
HEADER = Path("/usr/include/quickfix/Session.h")


def available() -> str | None:
    """None if the initiator can be built here, else what is missing."""
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if not HEADER.exists():
        return "libquickfix-dev is not installed (apt-get install -y libquickfix-dev)"
    return None


def build() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = BUILD / f"quickfix_initiator-{digest}"
    if binary.exists():
        return binary
    BUILD.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    # gnu++14: QuickFIX 1.15's headers still have dynamic exception specifications
    cmd = [
        "g++",
        "-std=gnu++14",
        "-O1",
        "-w",
        str(SOURCE),
        "-o",
        str(partial),
        "-I/usr/include/libxml2",
        "-lquickfix",
        "-lxml2",
        "-pthread",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    partial.rename(binary)
    return binary


SETTINGS = """\
[DEFAULT]
ConnectionType=initiator
BeginString=FIX.4.4
SenderCompID={sender}
TargetCompID=RINGEX
SocketConnectHost=127.0.0.1
SocketConnectPort={port}
HeartBtInt={heartbeat}
ReconnectInterval=1
StartTime=00:00:00
EndTime=00:00:00
FileStorePath={store}
FileLogPath={log}
UseDataDictionary=Y
DataDictionary={dictionary}

[SESSION]
"""


class QuickFixInitiator:
    """The initiator process (``start``), its commands (``send``) and output (``expect``)."""

    def __init__(
        self, binary: Path, workdir: Path, port: int, account: int, token: int, sender: str = "QFCLIENT"
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        settings = workdir / "initiator.cfg"
        settings.write_text(
            SETTINGS.format(
                sender=sender,
                port=port,
                heartbeat=2,
                store=workdir / "store",
                log=workdir / "log",
                dictionary=DICTIONARY,
            )
        )
        self.proc = subprocess.Popen(
            [str(binary), str(settings), str(account), str(token)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, match, timeout: float = 15.0) -> str:
        """The next output line for which ``match(line)`` holds (earlier lines are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.01, left))
            except queue.Empty:
                raise AssertionError(
                    f"QuickFIX initiator: nothing matching within {timeout} s; output:\n" + "\n".join(self.lines[-30:])
                ) from None
            if line is None:
                raise AssertionError("QuickFIX initiator exited; output:\n" + "\n".join(self.lines[-30:]))
            self.lines.append(line)
            if match(line):
                return line

    def app(self, *fields: str, timeout: float = 15.0) -> str:
        """The next application message (``APP`` line) holding every ``tag=value`` of ``fields``."""
        return self.expect(lambda line: line.startswith("APP ") and all(f"|{f}|" in line for f in fields), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        logs = sorted((self.workdir / "log").glob("*.event.log"))
        return "\n".join(p.read_text() for p in logs)
