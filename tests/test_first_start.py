"""A first start that cannot go wrong quietly: ``ringex up`` and ``ringex accounts`` as a
new user runs them, as subprocesses on temporary data directories and real ports.

Each failure is one line on stderr naming the config key and the remedy, comes before
anything is compiled or spawned, and never loses the demo accounts' tokens."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.running import ROOT, RunningExchange

from ringex.order_entry.accounts import ACCOUNTS_FILE, DEMO_FILE, DEMO_OPERATOR, AccountStore

# Well inside the time a first compile takes, but generous to a loaded 2-core machine:
# the checks run before any kernel is compiled or any process is spawned.
CHECK_S = 20.0


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def _up(ex: RunningExchange, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    out = subprocess.run(ex.command(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - began


def _ringex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringex", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key", ["order_port", "md_port", "ws_port", "fix_port"])
def test_a_taken_port_fails_at_once_in_one_line_naming_its_key(tmp_path, key):
    ex = RunningExchange(tmp_path / "data")
    port = getattr(ex, key)
    with socket.create_server(("127.0.0.1", port)):
        out, took = _up(ex)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert line.startswith(f"ringex up: {key}: 127.0.0.1:{port} is already in use"), line
    assert f"RINGEX_{key.upper()}" in line and f"--{key.replace('_', '-')}" in line
    assert took < CHECK_S
    # nothing was made that a later start must explain: no accounts, no shared memory
    assert not (ex.data / ACCOUNTS_FILE).exists() and not (ex.data / DEMO_FILE).exists()
    assert ex.shared_memory() == []


def test_two_keys_on_one_port_are_refused_in_one_line(tmp_path):
    ex = RunningExchange(tmp_path / "data")
    ex.ws_port = ex.md_port
    out, _ = _up(ex)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert f"ws_port: {ex.md_port} is also md_port" in line


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write in: a read-only one, or for root (whom
    permissions do not stop) a directory of sysfs, which refuses new files to anyone."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    candidate = Path("/sys/kernel")
    try:
        open(candidate / "ringex-write-check", "w").close()  # noqa: SIM115
    except OSError:
        return candidate
    pytest.skip("no directory here refuses writes to root")


def test_a_read_only_data_directory_fails_in_one_line(tmp_path):
    ro = _unwritable_dir(tmp_path)
    for data, says in ((ro, "is not writable"), (ro / "ringex-data", "cannot be created")):
        ex = RunningExchange(data)
        out, took = _up(ex)
        assert out.returncode == 1
        line = _one_line(out.stderr)
        assert line.startswith(f"ringex up: data_dir: {data} {says} ("), line
        assert says in line and "--data DIR" in line and "RINGEX_DATA_DIR" in line
        assert took < CHECK_S


def test_a_data_directory_that_is_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    out, _ = _up(RunningExchange(tmp_path / "file"))
    assert out.returncode == 1
    assert "data_dir:" in _one_line(out.stderr) and "is not a directory" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["add", "abc"],
        ["add", "0"],
        ["add", "-5"],
        ["add", str(1 << 64)],
        ["remove", "1.5"],
        ["add", "7", "--token", "xyz"],
    ],
)
def test_garbage_account_ids_get_one_line_saying_what_an_id_is(tmp_path, args):
    out = _ringex("accounts", "--data", str(tmp_path), *args)
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert line.startswith("ringex accounts: ")
    assert "invalid literal" not in line and "usage:" not in line
    assert not (tmp_path / ACCOUNTS_FILE).exists()


def test_an_account_reset_says_reset_and_operators_are_marked(tmp_path):
    first = _ringex("accounts", "--data", str(tmp_path), "add", "0x10", "--operator")
    assert first.returncode == 0 and "account 16 (operator) added" in first.stdout
    again = _ringex("accounts", "--data", str(tmp_path), "add", "16")
    assert again.returncode == 0 and "account 16 (operator) reset" in again.stdout
    token = int(again.stdout.split()[-1])
    store = AccountStore.open(tmp_path)
    assert store.verify(16, token) and store.is_operator(16)
    assert _ringex("accounts", "--data", str(tmp_path), "list").stdout.split("\n")[0] == "16 operator"


def test_an_interrupted_first_start_keeps_the_demo_tokens_and_the_next_start_shows_them(tmp_path):
    ex = RunningExchange(tmp_path / "data")
    proc = subprocess.Popen(ex.command(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Ctrl-C once the demo tokens exist and the first stage has been started
        deadline = time.monotonic() + 120
        log = ex.data / "ringex.log"
        while not (log.exists() and "started journaler" in log.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the start never got to its first stage"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "stopped while starting" in err and "ringex accounts demo" in err
    assert "token" not in out, "no banner: the tokens were not shown"
    assert ex.shared_memory() == []

    shown = _ringex("accounts", "--data", str(ex.data), "demo")
    assert shown.returncode == 0, shown.stderr
    tokens = {int(w[1]): int(w[3]) for w in (line.split() for line in shown.stdout.splitlines())}
    assert sorted(tokens) == [DEMO_OPERATOR, 1001, 1002, 1003]
    store = AccountStore.open(ex.data)
    assert all(store.verify(a, t) for a, t in tokens.items())

    try:
        ex.start()  # the next start prints the tokens no banner has shown
        assert ex.accounts == {a: t for a, t in tokens.items() if a != DEMO_OPERATOR}
        assert f"operator {DEMO_OPERATOR}  token {tokens[DEMO_OPERATOR]}" in ex.output
        with ex.sessions(1) as (client,):
            assert client.buy("ACME", 1, 100).ok
        assert ex.stop() == 0
        ex.start()  # ... once: later banners say where they are
        assert not re.search(r"token \d+", ex.output)
        assert "`ringex accounts demo` shows their tokens" in ex.output
    finally:
        ex.stop()


def test_a_start_knows_when_the_kernels_must_be_compiled(tmp_path, monkeypatch):
    from ringex.supervisor import JIT_MODULES, kernels_cached

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    for module in JIT_MODULES:
        assert not kernels_cached(tmp_path)
        path = tmp_path / module
        (path.parent / "__pycache__").mkdir(parents=True, exist_ok=True)
        (path.parent / "__pycache__" / f"{path.name}.some_kernel-12.py311.nbi").write_bytes(b"")
    assert kernels_cached(tmp_path)
    (tmp_path / "__pycache__" / "matcher_jit.some_kernel-12.py311.nbi").unlink()
    assert not kernels_cached(tmp_path)
