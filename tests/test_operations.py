"""Operating a running exchange from any directory: ``ringex journal tail --follow`` and
``ringex stop``, against ``ringex up`` as a user runs it (a subprocess, real ports, the
real journal), found through its run file rather than flags where a user would."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from support.running import ROOT, RunningExchange


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory of this module's own: ``ringex stop`` without flags must find
    exactly the exchange started here."""
    path = tmp_path_factory.mktemp("run")
    saved = os.environ.get("RINGEX_RUN_DIR")
    os.environ["RINGEX_RUN_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("RINGEX_RUN_DIR", None)
    else:
        os.environ["RINGEX_RUN_DIR"] = saved


@pytest.fixture(scope="module")
def exchange(tmp_path_factory, run_dir):
    ex = RunningExchange(tmp_path_factory.mktemp("ops") / "data", durability="async")
    ex.start()
    yield ex
    ex.stop()


def _ringex(*args: str, cwd=ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringex", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _read_lines(proc: subprocess.Popen, buf: list[str], until, timeout: float) -> list[dict]:
    """JSON lines from ``proc`` until ``until(lines)`` holds."""
    deadline = time.monotonic() + timeout
    text = "".join(buf)
    while True:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if until(lines):
            return lines
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"tail --follow printed only:\n{text}"
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            buf.append(chunk)
            text += chunk


def test_journal_tail_follow_prints_new_commands_each_followed_by_its_events(exchange):
    with exchange.sessions(2) as (a, b):
        assert a.buy("ACME", 5, 100).ok  # before the tail starts: one of its last lines
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ringex",
                "journal",
                "tail",
                "ACME",
                "-n",
                "1",
                "--follow",
                "--data",
                str(exchange.data),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        buf: list[str] = []
        try:
            first = _read_lines(tail, buf, lambda lines: any(x["type"] == "event" for x in lines), 60)
            assert first[0]["type"] == "command" and first[0]["price"] == 100
            crossing = b.sell("ACME", 2, 100)
            taking = b.sell("ACME", 7, 120)
            assert crossing.ok and taking.ok
            lines = _read_lines(
                tail,
                buf,
                lambda lines: any(x.get("order_id") == taking.order_id and x.get("event") == "accepted" for x in lines),
                60,
            )
        finally:
            tail.send_signal(signal.SIGINT)
            _, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    assert b"Traceback" not in err
    commands = [x for x in lines if x["type"] == "command"]
    assert [c["order_id"] for c in commands][-2:] == [crossing.order_id, taking.order_id]
    seqs = [x["seq"] for x in lines]
    assert seqs == sorted(seqs), "in sequence order: each command, then the events it caused"
    trade = next(x for x in lines if x.get("event") == "trade")
    assert trade["seq"] == commands[-2]["seq"] and (trade["price"], trade["qty"]) == (100, 2)
    assert len({json.dumps(x, sort_keys=True) for x in lines}) == len(lines), "nothing printed twice"


def test_client_commands_find_the_running_exchange_from_any_directory(exchange, tmp_path):
    status = _ringex("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["data_dir"] == str(exchange.data.resolve())
    book = _ringex("book", "ACME", cwd=tmp_path)
    assert book.returncode == 0 and book.stdout.startswith("ACME  last trade 2 @ 100"), book.stdout + book.stderr
    tail = _ringex("journal", "tail", "ACME", "-n", "1", cwd=tmp_path)
    assert tail.returncode == 0 and json.loads(tail.stdout.splitlines()[0])["type"] == "command"
    account, token = next(iter(exchange.accounts.items()))
    env = {**os.environ, "RINGEX_ACCOUNT": str(account), "RINGEX_TOKEN": str(token)}
    orders = subprocess.run(
        [sys.executable, "-m", "ringex", "orders"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert orders.returncode == 0 and orders.stdout.startswith(f"account {account}: 1 open order"), orders.stdout
    # the variables win over the run file, as over the config
    wrong = subprocess.run(
        [sys.executable, "-m", "ringex", "book", "ACME"],
        cwd=tmp_path,
        env={**env, "RINGEX_MD_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "cannot reach the notifier at 127.0.0.1:1" in wrong.stderr


def test_stop_from_anywhere_stops_the_running_exchange_cleanly(exchange, tmp_path):
    # from a directory with no ringex-data and no flags: the run file's pointer finds it
    out = _ringex("stop", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"stopping the exchange on {exchange.data.resolve()} (pid {exchange.proc.pid})" in out.stdout
    assert out.stdout.rstrip().endswith("stopped")
    assert exchange.proc.wait(timeout=30) == 0, "a clean stop, as Ctrl-C"
    assert exchange.shared_memory() == []
    again = _ringex("stop", "--data", str(exchange.data), cwd=tmp_path)
    assert again.returncode == 1 and "no exchange is running on" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_up_detach_returns_once_ready_and_stop_ends_it(tmp_path, run_dir):
    from ringex.runfile import pid_alive, read_run_file

    ex = RunningExchange(tmp_path / "data", durability="async")
    try:
        out = subprocess.run([*ex.command(), "--detach"], cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ringex is up" in out.stdout and "stop with `ringex stop`" in out.stdout
        assert "running in the background (pid " in out.stdout and "ringex-up.out" in out.stdout
        assert re.search(r"account 1001\s+token \d+", out.stdout), "the first banner shows the demo tokens"
        run = read_run_file(ex.data)
        assert run is not None and run["state"] == "ready"
        with ex.subscribed("trades", "ACME"):
            pass  # it serves while the command that started it is gone
        again = subprocess.run([*ex.command(), "--detach"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert again.returncode == 1 and "already running" in again.stderr
        stopped = _ringex("stop", "--data", str(ex.data))
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 30
        while pid_alive(run["pid"]):
            assert time.monotonic() < deadline, "the detached exchange did not exit"
            time.sleep(0.1)
        assert ex.shared_memory() == []
    finally:
        left = read_run_file(ex.data)
        if left is not None:
            os.kill(left["pid"], signal.SIGKILL)
