"""The halt policy (``ringex.restart_policy``, docs/security.md): which stage's crash
loop halts trading, and what a market data outage does, in the table and in a running
exchange (``ringex up``)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from support.running import RunningExchange

from ringex.config import load_config
from ringex.control import ControlBlock, ExchangeState
from ringex.market_data.client import MdClient
from ringex.restart_policy import BACKOFF_MAX_S, MAX_RESTARTS, Decision, RestartPolicy
from ringex.topology import Topology

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(
    ("outage", "role", "deaths", "expected"),
    [
        # the journaler and the matchers: restart at once with trading paused; a crash loop halts
        ("continue", "journaler", 1, Decision(halt=False, pause_trading=True)),
        ("continue", "matcher-0", MAX_RESTARTS, Decision(halt=False, pause_trading=True)),
        ("continue", "matcher-3", MAX_RESTARTS + 1, Decision(halt=True)),
        ("halt", "journaler", MAX_RESTARTS + 1, Decision(halt=True)),
        # the notifier under "continue": trading goes on; restarts back off; never a halt
        ("continue", "notifier", 1, Decision(halt=False)),
        ("continue", "notifier", 2, Decision(halt=False, delay_s=0.5)),
        ("continue", "notifier", 4, Decision(halt=False, delay_s=2.0)),
        ("continue", "notifier", 100, Decision(halt=False, delay_s=BACKOFF_MAX_S)),
        # the notifier under "halt": like a critical stage
        ("halt", "notifier", 1, Decision(halt=False, pause_trading=True)),
        ("halt", "notifier", MAX_RESTARTS + 1, Decision(halt=True)),
        # the gateway faces clients: never a halt, whatever the policy
        ("continue", "gateway", 1, Decision(halt=False, pause_trading=True)),
        ("halt", "gateway", 100, Decision(halt=False, delay_s=BACKOFF_MAX_S, pause_trading=True)),
    ],
)
def test_the_policy_table(outage, role, deaths, expected):
    assert RestartPolicy(outage).on_death(role, deaths) == expected


def test_a_policy_must_be_one_of_the_two():
    with pytest.raises(ValueError, match="market_data_outage"):
        RestartPolicy("sometimes")


# ---- in a running exchange --------------------------------------------------------------


def _control(ex: RunningExchange) -> ControlBlock:
    layout = Topology.for_config(load_config(environ={}, overrides={"data_dir": str(ex.data)}))
    return ControlBlock.attach(layout.control)


def _role(control: ControlBlock, role: str) -> dict:
    return next(r for r in control.roles() if r["role"] == role)


def _wait(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_under_continue_trading_goes_on_while_the_notifier_is_down_and_it_catches_up(tmp_path):
    ex = RunningExchange(tmp_path / "data", durability="async").start()
    control = _control(ex)
    try:
        with ex.sessions(1) as (trader,):
            for kill in range(2):
                victim = _role(control, "notifier")["pid"]
                os.kill(victim, signal.SIGKILL)
                _wait(lambda v=victim: not _alive(v), what="the notifier to die")
                # nobody waits for market data: orders are acknowledged meanwhile
                reply = trader.buy("ACME", 1, 100 + kill)
                assert reply.ok, reply
                assert control.state is ExchangeState.READY
                _wait(
                    lambda v=victim: _role(control, "notifier")["pid"] != v and _role(control, "notifier")["ready"],
                    what="the notifier to come back",
                )
        assert _role(control, "notifier")["restarts"] == 2
        assert control.state is ExchangeState.READY
        with MdClient("127.0.0.1", ex.md_port) as md:
            md.subscribe("depth", "ACME")
            snapshot = md.recv_until(lambda m: m["type"] == "depth_snapshot", timeout=10)[-1]
        assert snapshot["bids"] == [[101, 1], [100, 1]], "orders placed during the outage reach the books it serves"
        assert "restarting it in 0.5 s" in (ex.data / "ringex.log").read_text()  # the second restart backed off
    finally:
        control.close()
        assert ex.stop() == 0


def test_under_halt_a_notifier_crash_loop_halts_trading(tmp_path):
    config = tmp_path / "halt.toml"
    config.write_text('market_data_outage = "halt"\n')
    ex = RunningExchange(tmp_path / "data", durability="async", config=config).start()
    control = _control(ex)
    try:
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while control.state is not ExchangeState.HALTED:
            assert time.monotonic() < deadline, ex.log_tail()
            pid = _role(control, "notifier")["pid"]
            if pid not in killed and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)
        assert len(killed) == MAX_RESTARTS + 1
        assert control.reason.startswith(f"notifier died {MAX_RESTARTS + 1} times in 60 s")
        with ex.sessions(1) as (trader,):
            assert trader.buy("ACME", 1, 100).reason_name == "NOT_READY"
    finally:
        control.close()
        ex.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by the supervisor) is dead too
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
