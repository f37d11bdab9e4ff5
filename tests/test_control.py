import os
import subprocess
import sys
import uuid

import pytest

from ringex.control import ControlBlock, ExchangeState


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
    for role in ("journaler", "matcher-0", "gateway"):
        block.register(role)
    assert not block.all_ready()
    for role in ("journaler", "matcher-0"):
        block.set_ready(role)
    assert not block.all_ready()
    block.set_ready("gateway")
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


def test_roles_report_pid_heartbeat_and_restarts(block):
    block.register("notifier")
    block.set_pid("notifier", 1234)
    block.beat("notifier")
    block.beat("notifier")
    block.count_restart("notifier")
    (line,) = block.roles()
    assert line == {"role": "notifier", "pid": 1234, "ready": False, "heartbeat": 2, "restarts": 1}
