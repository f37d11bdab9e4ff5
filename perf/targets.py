"""The exchanges under test, each started as a subprocess on a temporary data directory
and free loopback ports, and what the harness reads from them while they run.

- ``LocalExchange``: ``python -m ringex up`` (its process ids from ``ringex status
  --json``, read once at start: a reading costs ~0.5 s of CPU, too much to repeat
  inside a measured step);
- ``BaselineExchange``: ``python -m perf.baseline_exchange``, one process;
- ``RingLagSampler`` (``--ring-lag``): samples ringex's ring cursors during the measured
  window, from a helper process that imports ``ringex.cli.status`` once (~1 ms a reading);
- ``cpu_ns(pid)``: a process's CPU time so far, every thread (``/proc/PID/schedstat``).

Each context manager yields a ``Target``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ringex.processes import stop_process
from ringex.topology import SUPERVISOR
from tests.support.net import free_ports  # the test harness's: one home for it

__all__ = ["Target", "LocalExchange", "BaselineExchange", "RingLagSampler", "free_ports", "cpu_ns", "scheduler"]

ROOT = Path(__file__).resolve().parents[1]
_READY = "stop with Ctrl-C"  # the last line both exchanges print once they serve


def cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid`` so far (ns), None if it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:  # kernels without schedstats: clock ticks
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Target:
    """Where an exchange under test listens, who may log in, and its processes."""

    design: str  # "ringex" or "baseline"
    host: str
    port: int
    md_port: int
    accounts: list[tuple[int, int]]
    pids: dict[str, int]  # role -> pid, for CPU
    data_dir: str | None = None


class _Subprocess:
    """An exchange command on a fresh temporary data directory (or ``data``, kept), up
    once it prints ``stop with Ctrl-C``; stopped (SIGTERM, then SIGKILL after 60 s) on
    exit and its temporary directory removed."""

    design = ""

    def __init__(
        self,
        durability: str,
        extra: list[str] | None = None,
        data: Path | None = None,
        root: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else ROOT  # the checkout whose code runs
        self.env = env or {}
        self.durability = durability
        self.extra = extra or []
        self.tmp = tempfile.TemporaryDirectory(prefix=f"ringex-e2e-{self.design}-{os.getpid()}-")
        self.data = Path(data) if data is not None else Path(self.tmp.name) / "data"
        self.proc: subprocess.Popen | None = None
        self.output = ""

    def command(self, order: int, md: int, ws: int) -> list[str]:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def __enter__(self) -> Target:
        order, md, ws = free_ports(3)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")])),
            **self.env,
        )
        self.proc = subprocess.Popen(
            self.command(order, md, ws),
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(Path(self.tmp.name) / "stderr", "ab"),  # noqa: SIM115 - the child owns it
            start_new_session=True,  # a Ctrl-C of the sweep reaches the exchange only through us
        )
        deadline = time.monotonic() + 300  # a first ringex start compiles its kernels
        while _READY not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                err = (Path(self.tmp.name) / "stderr").read_text()[-2000:]
                self.__exit__()
                raise RuntimeError(f"{self.design} did not come up:\n{self.output}\n{err}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                self.output += os.read(self.proc.stdout.fileno(), 65536).decode()
        accounts = [(int(a), int(t)) for a, t in re.findall(r"account (\d+)\s+token (\d+)", self.output)]
        return Target(self.design, "127.0.0.1", order, md, accounts, self.pids(), str(self.data))

    def __exit__(self, *exc_info) -> None:
        if self.proc is not None:
            stop_process(self.proc, 60)
            self.proc.stdout.close()
            self.proc = None
        self.tmp.cleanup()


class LocalExchange(_Subprocess):
    """``ringex up`` (see ``_Subprocess``); ``extra`` are more ``ringex up`` flags."""

    design = "ringex"

    def command(self, order: int, md: int, ws: int) -> list[str]:
        cmd = [sys.executable, "-m", "ringex", "up", "--data", str(self.data), "--durability", self.durability]
        cmd += ["--order-port", str(order), "--md-port", str(md), "--ws-port", str(ws)]
        if "--fix-port" not in self.extra:  # never the default 7004: two runs must not collide
            cmd += ["--fix-port", str(free_ports(1)[0])]
        return cmd + self.extra

    def pids(self) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, "-m", "ringex", "status", "--json", "--data", str(self.data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            reading = json.loads(out.stdout)
        except ValueError:
            return {SUPERVISOR: self.proc.pid}
        pids = {p["role"]: p["pid"] for p in reading.get("processes", []) if p.get("pid")}
        pids[SUPERVISOR] = reading.get("supervisor_pid", self.proc.pid)
        return pids


class BaselineExchange(_Subprocess):
    """``perf/baseline_exchange.py`` (see ``_Subprocess``)."""

    design = "baseline"

    def command(self, order: int, md: int, ws: int) -> list[str]:
        cmd = [sys.executable, "-m", "perf.baseline_exchange", "--data", str(self.data)]
        return cmd + ["--durability", self.durability, "--order-port", str(order), "--md-port", str(md), *self.extra]

    def pids(self) -> dict[str, int]:
        return {"baseline": self.proc.pid}


_SAMPLER = r"""
import json, sys, time
try:
    from ringex.cli.status import collect
except ImportError as exc:
    print(json.dumps({"error": f"ringex.cli.status.collect: {exc}"}), flush=True)
    sys.exit(0)
data, interval = sys.argv[1], float(sys.argv[2])
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:  # one measured window per line: its end, monotonic seconds
    end, lags = float(line), {}
    while time.monotonic() < end:
        try:
            reading = collect(data)
        except (FileNotFoundError, OSError):
            break
        per = {}
        for ring in reading["rings"]:
            for name, c in ring.get("consumers", {}).items():
                stage = ring["kind"] + "." + name
                per[stage] = per.get(stage, 0) + c["lag"]
        for stage, lag in per.items():
            lags.setdefault(stage, []).append(lag)
        time.sleep(interval)
    out = {s: {"mean": round(sum(v) / len(v), 1), "max": max(v)} for s, v in lags.items()}
    print(json.dumps(out), flush=True)
"""


class RingLagSampler:
    """How many records each ringex ring consumer is behind its producer (all symbols
    together), sampled every ``interval`` s during a window. ``ringex.cli.status`` is not
    one of the modules the harness imports, so it runs in a helper process; if it cannot
    be imported there, ``window`` returns None and says why once."""

    def __init__(self, data_dir: str, interval: float = 0.2) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, data_dir, str(interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        first = json.loads(self.proc.stdout.readline() or '{"error": "the sampler exited"}')
        self.error = first.get("error")
        if self.error:
            print(f"ring lag: unavailable ({self.error})", file=sys.stderr)

    def start(self, until_monotonic: float) -> None:
        if not self.error:
            self.proc.stdin.write(f"{until_monotonic}\n")
            self.proc.stdin.flush()

    def result(self) -> dict | None:
        if self.error:
            return None
        return json.loads(self.proc.stdout.readline() or "null")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scheduler() -> str:
    """This process's scheduling policy, which the exchanges it starts inherit: a run
    under ``chrt -f N`` has every process of both exchanges (and the load generator)
    ahead of everything else on a shared machine, as on dedicated cores."""
    policy = os.sched_getscheduler(0)
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        name = "SCHED_FIFO" if policy == os.SCHED_FIFO else "SCHED_RR"
        return f"{name} {os.sched_getparam(0).sched_priority}"
    return "normal (SCHED_OTHER)"
