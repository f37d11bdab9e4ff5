import os
import subprocess
import sys
import uuid

import pytest

from ringex import control as control_module
from ringex.control import BEAT_INTERVAL_S, ControlBlock, ExchangeState, NullControl
from ringex.topology import GATEWAY, JOURNALER, NOTIFIER, matcher_role


@pytest.fixture
def block():
    name = f"/ringex-test-ctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    b = ControlBlock.create(name)
    yield b
    b.close()
    b.unlink()


def test_new_block_is_starting_and_not_accepting(block):
    assert block.state is ExchangeState.STARTING
    assert not block.accepting
    assert block.supervisor_pid == os.getpid()


def test_ready_only_when_every_role_is_ready(block):
    for role in (JOURNALER, matcher_role(0), GATEWAY):
        block.register(role)
    assert not block.all_ready()
    for role in (JOURNALER, matcher_role(0)):
        block.set_ready(role)
    assert not block.all_ready()
    block.set_ready(GATEWAY)
    assert block.all_ready()


def test_halt_is_seen_by_another_process_with_its_reason(block):
    block.set_state(ExchangeState.READY)
    code = (
        "import sys; from ringex.control import ControlBlock; "
        f"b = ControlBlock.attach({block.name!r}); b.halt('journal write failed: disk full'); b.close()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert block.state is ExchangeState.HALTED
    assert not block.accepting
    assert "disk full" in block.reason


def test_attach_to_a_missing_block_says_the_exchange_is_not_running():
    with pytest.raises(FileNotFoundError, match="is the exchange running"):
        ControlBlock.attach(f"/ringex-test-ctl-missing-{uuid.uuid4().hex[:8]}")


def test_roles_report_pid_heartbeat_and_restarts(block, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(control_module.time, "monotonic", lambda: now[0])
    block.register(NOTIFIER)
    block.set_pid(NOTIFIER, 1234)
    block.beat(NOTIFIER)
    block.beat(NOTIFIER)  # a loop beats every turn; the line moves once per interval
    now[0] += BEAT_INTERVAL_S
    block.beat(NOTIFIER)
    block.count_restart(NOTIFIER)
    (line,) = block.roles()
    assert line == {"role": NOTIFIER, "pid": 1234, "ready": False, "heartbeat": 2, "restarts": 1}


def test_a_null_control_accepts_until_halted_and_records_nothing():
    control = NullControl()
    control.set_ready(JOURNALER, True)
    control.beat(JOURNALER)
    assert control.accepting and control.state is ExchangeState.READY
    control.halt("journal write failed")
    assert not control.accepting and control.state is ExchangeState.HALTED and control.reason == "journal write failed"
