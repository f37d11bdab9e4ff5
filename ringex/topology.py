"""The exchange's disruptor, written down once: rings, consumers, gating, doorbells, bases.

::

    gateway ──► in-ring[SYM] ──(gated on the journaler)──► matcher-N ──► out-ring[SYM] ──► notifier
       ▲             │                                                       │  └──► fix (when configured)
       │             └───────────────────────► journaler ◄───────────────────┘          │
       │                                           │                                      │
       └──────────── protocol v1 (loopback) ◄──── LMDB                                   │
                     one session per FIX session ◄────────────────────────────────────────┘

Every process finds its rings here, by name, and the supervisor creates exactly what
this module describes; ``ringex status`` reads it back from the run file. Nothing else
spells a ring or consumer name.

- **Rings.** Per symbol an in-ring of ``COMMAND`` (produced by the gateway; consumed by
  the journaler and by its matcher shard, which is gated on the journaler: as at LMAX,
  the business logic sees a command only once it is durable) and an out-ring of
  ``EVENT`` (produced by the shard; consumed by the notifier, the journaler and, when
  ``[fix]`` is enabled, the FIX acceptor, which turns its sessions' events into
  execution reports: ``ringex.fix``). Every
  event is caused by a durable command, so the notifier publishes it at once: the
  events are a deterministic function of the journaled commands, which recovery can
  always reproduce, and the journaler records them off the critical path.
- **Doorbells.** One per waiting process, shared by every ring it waits on, so it
  sleeps once for all of them (``ringex.wait.Doorbell``): a semaphore for the
  journaler and each shard, a FIFO (``PipeDoorbell``) for the event loops, the
  gateway (waiting for the journaler's cursor on its in-rings), the notifier and the
  FIX acceptor.
- **Roles.** The processes ``ringex up`` runs, in start order (journaler, shards,
  notifier, gateway, then the FIX acceptor if configured: it enters its orders through
  the gateway, so the single-producer rule of the in-rings holds); each role's name is
  also its line in the control block.
- **Bases.** A ring numbers its slots from 0; the journal numbers a symbol's commands
  and events from its first ever. The journaler records per ring the journal sequence
  of slot 0 (the *base*) with the ring's creation time; ``journaled_base`` reads it
  back, ``new_ring_base`` is what the journaler gives a ring it has not seen.

Names derive from a prefix, itself derived from the data directory
(``Topology.for_config``), so two exchanges on two data directories never collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

from ringex.config import Config
from ringex.records import COMMAND, EVENT
from ringex.ring import PipeDoorbell, Ring
from ringex.wait import wait_until

__all__ = [
    "JOURNALER",
    "MATCHER",
    "NOTIFIER",
    "GATEWAY",
    "SUPERVISOR",
    "BRIDGE",
    "STANDBY",
    "FOLLOWER",
    "PRIMARY",
    "MODES",
    "FIX",
    "CMD",
    "EVT",
    "Topology",
    "matcher_role",
    "journaled_base",
    "new_ring_base",
    "wait_for_base",
]

# Consumer names in the rings' headers, and the roles of the processes that own them.
JOURNALER = "journaler"
MATCHER = "matcher"
NOTIFIER = "notifier"
# The in-rings' producer (a role, not a consumer).
GATEWAY = "gateway"
# The FIX 4.4 acceptor: a role, and a consumer of the out-rings when configured.
FIX = "fix-acceptor"
# Not a ring party: the name the supervisor logs under.
SUPERVISOR = "supervisor"
# The cluster's roles (``ringex.cluster``). The bridge publishes the journal to NATS
# JetStream; in ``sync`` replication it is also an in-ring consumer gated on the
# journaler, and the gateway acks on its cursor instead of the journaler's. A standby's
# feeder is its in-rings' producer (in place of the gateway); a follower's feeder is its
# out-rings' producer and journals what it feeds (in place of the matcher and journaler).
BRIDGE = "bridge"
STANDBY = "standby"
FOLLOWER = "follower"
# What an exchange on a data directory is: the primary (takes orders), a standby (replays
# the primary's commands) or a market data follower (serves the primary's events).
PRIMARY = "primary"
MODES = (PRIMARY, STANDBY, FOLLOWER)
# The journal's names for what an in-ring and an out-ring carry.
CMD = "cmd"
EVT = "evt"


def matcher_role(shard: int) -> str:
    """The role (and doorbell) of matcher shard ``shard``."""
    return f"{MATCHER}-{shard}"


def prefix_for(data_dir: str | Path) -> str:
    """The shared-memory prefix of the exchange on ``data_dir``."""
    digest = hashlib.blake2b(str(Path(data_dir).resolve()).encode(), digest_size=5).hexdigest()
    return f"ringex-{digest}"


@dataclasses.dataclass(frozen=True)
class Topology:
    """The names and shape of one exchange's shared memory. Picklable (children get it
    from the supervisor) and JSON-able (the run file keeps it for ``ringex status``)."""

    prefix: str
    symbols: tuple[str, ...]
    shards: tuple[tuple[str, ...], ...]  # symbols per matcher shard
    capacity: int
    mode: str = PRIMARY  # one of MODES
    # "" (no bridge), "async" or "sync": the config's [cluster] replication when
    # [cluster] nats is set; only a primary runs a bridge (a promoted standby restarts
    # as a primary, rings and all)
    replication: str = ""
    # whether the FIX acceptor runs (it is then a consumer of every out-ring)
    fix: bool = False

    @classmethod
    def for_config(cls, config: Config, prefix: str | None = None, mode: str = PRIMARY) -> Topology:
        """The exchange of ``config``: its symbols dealt round robin over
        ``config.shards`` matcher shards; ``prefix`` defaults to one derived from the
        data directory (tests pass their own); ``mode`` one of ``MODES``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        names = tuple(s.name for s in config.symbols)
        n = min(config.shards, len(names))
        cluster = config.cluster
        return cls(
            prefix=prefix or prefix_for(config.data_dir),
            symbols=names,
            shards=tuple(names[i::n] for i in range(n)),
            capacity=config.ring_capacity,
            mode=mode,
            replication=cluster.replication if cluster.nats and mode == PRIMARY else "",
            fix=config.fix.enabled and mode == PRIMARY,
        )

    # -- names ---------------------------------------------------------------------------

    @property
    def control(self) -> str:
        """The control block's shared-memory name."""
        return f"/{self.prefix}.control"

    def in_ring(self, symbol: str) -> str:
        return f"{self.prefix}.in.{symbol}"

    def out_ring(self, symbol: str) -> str:
        return f"{self.prefix}.out.{symbol}"

    def ring_names(self) -> Iterator[tuple[str, str, str]]:
        """``(symbol, kind, name)`` of every ring, kind ``CMD`` (in) or ``EVT`` (out)."""
        for symbol in self.symbols:
            yield symbol, CMD, self.in_ring(symbol)
            yield symbol, EVT, self.out_ring(symbol)

    def shard_of(self, symbol: str) -> int:
        return next(i for i, symbols in enumerate(self.shards) if symbol in symbols)

    @property
    def roles(self) -> tuple[str, ...]:
        """Every process role, in the order they start (see ``ringex.supervisor``). The
        first role of a standby or a follower is the one that feeds it from JetStream;
        a primary starts the gateway after the rest (nothing is accepted before they
        run), then the FIX acceptor if configured (it enters its orders through the
        gateway)."""
        if self.mode == FOLLOWER:
            return (FOLLOWER, NOTIFIER)
        stages = (JOURNALER, *(matcher_role(i) for i in range(len(self.shards))), NOTIFIER)
        if self.mode == STANDBY:
            return (*stages, STANDBY)
        bridge = (BRIDGE,) if self.replication else ()
        fix = (FIX,) if self.fix else ()
        return (*stages, *bridge, GATEWAY, *fix)

    @property
    def entry(self) -> str:
        """The role that puts records into this exchange (stopped first on shutdown)."""
        return {PRIMARY: GATEWAY, STANDBY: STANDBY, FOLLOWER: FOLLOWER}[self.mode]

    @property
    def ack_consumer(self) -> str:
        """The in-ring consumer whose cursor means "acknowledge": the journaler's, or in
        ``sync`` replication the bridge's (gated on the journaler: JetStream has the
        command as well as the journal)."""
        return BRIDGE if self.replication == "sync" else JOURNALER

    @property
    def out_consumers(self) -> tuple[str, ...]:
        """The consumers of every out-ring."""
        return (JOURNALER, NOTIFIER, FIX) if self.fix else (JOURNALER, NOTIFIER)

    def doorbell(self, role: str) -> str | PipeDoorbell:
        """What process ``role`` sleeps on for all its rings: an event loop polls a FIFO,
        any other process sleeps on a semaphore."""
        name = f"{self.prefix}.bell.{role}"
        return PipeDoorbell(name) if role in (GATEWAY, NOTIFIER, BRIDGE, FIX) else name

    # -- the rings -------------------------------------------------------------------------

    def create(self) -> list[Ring]:
        """Make every ring (and the doorbells they share) anew, removing what a dead run
        left under these names; returns them, in-ring then out-ring per symbol. The
        caller owns them: ``remove()`` when the exchange stops."""
        self.remove()
        rings: list[Ring] = []
        journaler = self.doorbell(JOURNALER)
        # sync replication: the bridge reads behind the journaler, and the gateway acks on it
        bridged = self.replication == "sync"
        try:
            for symbol in self.symbols:
                consumers, gating = [MATCHER, JOURNALER], {MATCHER: [JOURNALER]}
                doorbells = {MATCHER: self.doorbell(matcher_role(self.shard_of(symbol))), JOURNALER: journaler}
                if bridged:
                    consumers.append(BRIDGE)
                    gating[BRIDGE] = [JOURNALER]
                    doorbells[BRIDGE] = self.doorbell(BRIDGE)
                rings.append(
                    Ring.create(
                        self.in_ring(symbol),
                        COMMAND,
                        self.capacity,
                        consumers=consumers,
                        gating=gating,
                        doorbells=doorbells,
                        producer_doorbell=self.doorbell(GATEWAY),
                    )
                )
                rings.append(
                    Ring.create(
                        self.out_ring(symbol),
                        EVENT,
                        self.capacity,
                        consumers=list(self.out_consumers),
                        doorbells={
                            role: journaler if role == JOURNALER else self.doorbell(role) for role in self.out_consumers
                        },
                    )
                )
        except BaseException:
            for ring in rings:
                ring.close()
            self.remove()
            raise
        return rings

    def remove(self) -> None:
        """Unlink every ring and doorbell of this exchange (processes that still map
        them are not hurt)."""
        for _, _, name in self.ring_names():
            Ring.remove(name)
        for role in {*self.roles, *(matcher_role(i) for i in range(len(self.shards))), JOURNALER, GATEWAY, BRIDGE}:
            Ring.remove_doorbell(self.doorbell(role))

    def attach_in(self, symbol: str, *, readonly: bool = False) -> Ring:
        return Ring.attach(self.in_ring(symbol), COMMAND, readonly=readonly)

    def attach_out(self, symbol: str, *, readonly: bool = False) -> Ring:
        return Ring.attach(self.out_ring(symbol), EVENT, readonly=readonly)

    # -- the run file ----------------------------------------------------------------------

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> Topology:
        return cls(
            prefix=doc["prefix"],
            symbols=tuple(doc["symbols"]),
            shards=tuple(tuple(s) for s in doc["shards"]),
            capacity=int(doc["capacity"]),
            mode=doc.get("mode", PRIMARY),
            replication=doc.get("replication", ""),
            fix=bool(doc.get("fix", False)),
        )


####################################################################################
# Ring bases: ring sequence <-> journal sequence
####################################################################################


def journaled_base(journal, kind: str, symbol: str, ring: Ring) -> int | None:
    """The journal sequence of ``ring``'s slot 0 as the journaler recorded it, or None
    if it has not recorded one for this very ring (same name, another creation)."""
    known = journal.ring_base(kind, symbol)
    if known is not None and known[0] == int(ring.header["created_ns"]):
        return known[1]
    return None


def new_ring_base(journal, kind: str, symbol: str, ring: Ring) -> int:
    """The base of a ring the journaler has not recorded yet: its next unread record is
    the journal's next one (``kind`` ``CMD`` or ``EVT``)."""
    journal_next = journal.next_seq(symbol) if kind == CMD else journal.next_event_seq(symbol)
    return journal_next - (ring.consumer_cursor(JOURNALER) + 1)


def wait_for_base(data_dir: str, kind: str, symbol: str, ring: Ring) -> int:
    """``ring``'s base, once the journaler has recorded it (it does before it reports
    ready, so this waits only for a journaler that is starting)."""
    from ringex.wal import Journal

    found: list[int] = []

    def recorded() -> bool:
        with Journal(data_dir, readonly=True) as journal:
            base = journaled_base(journal, kind, symbol, ring)
        if base is not None:
            found.append(base)
        return base is not None

    wait_until(recorded, f"the journaler to attach {ring.name}")
    return found[0]
