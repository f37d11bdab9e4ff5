"""Stopping a child process the way ringex's own processes expect to be stopped.

Every ringex role, ``ringex up`` and nats-server finish their work on SIGTERM (log
sessions out, commit, close rings); a process that has not finished in its time is
killed. The nats-server wrapper, the test harness and the benchmarks' exchanges all
stop their child this way.
"""

from __future__ import annotations

import signal
import subprocess

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM ``proc`` if it still runs, wait up to ``timeout`` s, then SIGKILL it;
    returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
