"""The exchange's control block: one small shared-memory record every process can see.

The rings carry the data; this block carries the few facts that decide whether the
exchange may accept orders, so the gateway can answer NOT_READY without asking anyone:

- ``state``: STARTING until every stage has recovered and reported ready, READY while
  trading, HALTED when a stage cannot go on safely (the journaler cannot write: a full
  disk must never turn into an acknowledged order that is not durable), STOPPING on
  shutdown.
- one line per role (journaler, matcher shards, notifier, gateway): its pid, whether it
  is ready, and a heartbeat counter, so ``ringex status`` and the supervisor see who is
  alive and who is stuck.
- the reason for a halt, as text, so the log line and ``ringex status`` can say why.

Fields are plain aligned integers written by their one owner (the supervisor owns
``state`` except that any stage may move it to HALTED; each role owns its own line),
so no locking is needed on x86-64.
"""

from __future__ import annotations

import enum
import mmap
import os
import time

import numpy as np
import posix_ipc

__all__ = ["ExchangeState", "ControlBlock", "NullControl", "MAX_ROLES", "BEAT_INTERVAL_S"]

MAGIC = 0x52494E4758435452  # "RINGXCTR"
MAX_ROLES = 16
ROLE_NAME_LEN = 24
REASON_LEN = 200
# A stage's loop may call ``beat`` on every turn; the block is written at most this
# often (a role line lookup costs microseconds, a turn may be shorter).
BEAT_INTERVAL_S = 0.1


class ExchangeState(enum.IntEnum):
    STARTING = 0
    READY = 1
    HALTED = 2
    STOPPING = 3


_ROLE = np.dtype(
    {
        "names": ["name", "pid", "ready", "heartbeat", "restarts"],
        "formats": [f"S{ROLE_NAME_LEN}", "<i8", "<i8", "<i8", "<i8"],
        "offsets": [0, 24, 32, 40, 48],
        "itemsize": 64,  # one cache line per role: each is written by its own process
    }
)

_BLOCK = np.dtype(
    {
        "names": ["magic", "state", "supervisor_pid", "reason", "roles"],
        "formats": ["<u8", "<i8", "<i8", f"S{REASON_LEN}", (_ROLE, MAX_ROLES)],
        "offsets": [0, 8, 16, 64, 320],
        "itemsize": 320 + MAX_ROLES * 64,
    }
)


_STATE_OFFSET = _BLOCK.fields["state"][1]
_READY = int(ExchangeState.READY)


class ControlBlock:
    """A view of the control block named ``name`` (a POSIX shm name such as ``/ringex-ab12-control``)."""

    def __init__(self, name: str, shm: posix_ipc.SharedMemory, mapping: mmap.mmap) -> None:
        self.name = name
        self._shm = shm
        self._map = mapping
        self._rec = np.frombuffer(mapping, dtype=_BLOCK, count=1)[0]
        # The state as a plain word: the gateway reads it for every recv, and a field
        # of a numpy record costs microseconds to read.
        self._state_word = memoryview(mapping)[_STATE_OFFSET : _STATE_OFFSET + 8].cast("q")
        self._next_beat: dict[str, float] = {}

    @classmethod
    def create(cls, name: str) -> ControlBlock:
        """Create (replacing any stale block of that name) and zero the block."""
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=_BLOCK.itemsize)
        mapping = mmap.mmap(shm.fd, _BLOCK.itemsize)
        shm.close_fd()
        block = cls(name, shm, mapping)
        block._rec["magic"] = MAGIC
        block._rec["state"] = ExchangeState.STARTING
        block._rec["supervisor_pid"] = os.getpid()
        return block

    @classmethod
    def attach(cls, name: str) -> ControlBlock:
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(f"control block {name} does not exist: is the exchange running?") from None
        mapping = mmap.mmap(shm.fd, _BLOCK.itemsize)
        shm.close_fd()
        block = cls(name, shm, mapping)
        if int(block._rec["magic"]) != MAGIC:
            block.close()
            raise ValueError(f"{name} is not a ringex control block")
        return block

    def close(self) -> None:
        self._rec = None
        self._state_word.release()
        self._map.close()

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    # -- exchange state --------------------------------------------------------

    @property
    def state(self) -> ExchangeState:
        return ExchangeState(int(self._rec["state"]))

    def set_state(self, state: ExchangeState) -> None:
        self._rec["state"] = int(state)

    def halt(self, reason: str) -> None:
        """Stop the exchange taking orders; any stage may call it, the reason is kept for operators."""
        self._rec["reason"] = reason.encode("utf-8", "replace")[:REASON_LEN]
        self._rec["state"] = int(ExchangeState.HALTED)

    @property
    def reason(self) -> str:
        return bytes(self._rec["reason"]).decode("utf-8", "replace")

    @property
    def accepting(self) -> bool:
        return self._state_word[0] == _READY

    @property
    def supervisor_pid(self) -> int:
        return int(self._rec["supervisor_pid"])

    # -- roles -----------------------------------------------------------------

    def _role(self, name: str, create: bool = False):
        roles = self._rec["roles"]
        raw = name.encode("ascii")[:ROLE_NAME_LEN]
        for i in range(MAX_ROLES):
            if bytes(roles[i]["name"]) == raw:
                return roles[i]
        if create:
            for i in range(MAX_ROLES):
                if not bytes(roles[i]["name"]):
                    roles[i]["name"] = raw
                    return roles[i]
            raise RuntimeError(f"control block has no room for role {name!r}")
        raise KeyError(name)

    def register(self, role: str) -> None:
        """Claim a role's line for the calling process, not ready yet (done by the supervisor)."""
        line = self._role(role, create=True)
        line["ready"] = 0

    def set_pid(self, role: str, pid: int) -> None:
        self._role(role, create=True)["pid"] = pid

    def set_ready(self, role: str, ready: bool = True) -> None:
        self._role(role, create=True)["ready"] = int(ready)

    def beat(self, role: str) -> None:
        """Show that ``role`` is alive; cheap enough for every turn of a loop (the
        counter moves at most every ``BEAT_INTERVAL_S``)."""
        now = time.monotonic()
        if now < self._next_beat.get(role, 0.0):
            return
        self._next_beat[role] = now + BEAT_INTERVAL_S
        self._role(role)["heartbeat"] += 1

    def count_restart(self, role: str) -> None:
        self._role(role)["restarts"] += 1

    def roles(self) -> list[dict]:
        """A copy of every registered role's line, for status displays."""
        out = []
        for line in self._rec["roles"]:
            name = bytes(line["name"]).decode("ascii")
            if name:
                out.append(
                    {
                        "role": name,
                        "pid": int(line["pid"]),
                        "ready": bool(line["ready"]),
                        "heartbeat": int(line["heartbeat"]),
                        "restarts": int(line["restarts"]),
                    }
                )
        return out

    def all_ready(self) -> bool:
        roles = self.roles()
        return bool(roles) and all(r["ready"] for r in roles)


class NullControl:
    """The control block of a stage run on its own, with nobody to report to (a test
    driving a ``Journaler`` or ``Shard`` in-process): always READY, and every report
    goes nowhere, so the stages never ask whether they have a control block."""

    name = ""
    state = ExchangeState.READY
    accepting = True
    reason = ""

    def halt(self, reason: str) -> None:
        self.state = ExchangeState.HALTED
        self.accepting = False
        self.reason = reason

    def set_state(self, state: ExchangeState) -> None:
        self.state = state
        self.accepting = state is ExchangeState.READY

    def register(self, role: str) -> None:
        pass

    def set_pid(self, role: str, pid: int) -> None:
        pass

    def set_ready(self, role: str, ready: bool = True) -> None:
        pass

    def beat(self, role: str) -> None:
        pass

    def close(self) -> None:
        pass
