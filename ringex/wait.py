"""Wait strategies: how a ring's producer or consumer passes the time until a sequence is there.

A waiter needs some cursor (or the minimum of several) to reach a sequence. The
strategy decides what to do meanwhile, trading CPU for latency:

- ``BusySpinWait``: re-read the cursor as fast as Python can. Lowest latency, and a
  whole core burnt: only for a process pinned to a core of its own. On this 2-core
  machine a second spinner stalls everything (see ``DESIGN.md``).
- ``YieldingWait``: spin a little, then ``os.sched_yield()`` between reads. Low
  latency while the machine has spare cores, full CPU use while idle.
- ``BlockingWait`` (the default): spin briefly, then sleep on the waiter's named
  POSIX semaphore with a timeout. An idle waiter uses ~0% CPU; a wake-up costs a
  ``sem_post``/``sem_wait`` pair (~10 µs here).

Wake-up protocol (``Sleeper`` on the waiting side, ``Waker`` on the signalling side):
the waiter stores 1 in its *sleeping* flag in shared memory, fences, re-reads the
cursor and only then sleeps; the signaller stores the cursor, fences, and only if the
flag is set clears it and posts the semaphore, once. With both fences, one of the two always sees the
other's store (Dekker), so no wake-up is lost, and a signaller whose waiters are
awake pays no system call. The sleep still has a timeout, so even a wake-up lost by a
process dying between the two steps costs at most that timeout.

Doorbells. A process that serves several rings in one thread (the journaler reads
every ring; a matcher shard reads its symbols' in-rings) can sleep on one semaphore
only. Rings created with a *doorbell* for one of their waiters (``Ring.create(...,
doorbells={"journaler": "x.bell.journaler"})``) give that waiter one semaphore shared
by all of them instead of one per ring: ``Doorbell`` announces the sleep on every
ring's flag, re-checks every ring, and sleeps once; whichever ring moves first posts.
Without it the waiter must pick one ring to sleep on and poll the others on a timer.

An event loop (the gateway's selectors loop) must not block on a semaphore; its
doorbell is a ``PipeSemaphore`` instead, a FIFO with a semaphore's ``acquire`` and
``release``, whose descriptor the loop watches with the rest: the signaller's post
wakes the loop directly, with no thread in between. The loop uses
``Doorbell.announce`` before it polls and ``withdraw`` after.

Every strategy has the same shape as Disruptor's ``WaitStrategy.waitFor``:
``wait_for(need, probe, sleeper, deadline) -> available``, where ``probe()`` reads
the cursor(s) and returns the highest available sequence.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Sequence

import posix_ipc

__all__ = [
    "WaitStrategy",
    "BusySpinWait",
    "YieldingWait",
    "BlockingWait",
    "Sleeper",
    "Waker",
    "Doorbell",
    "PipeSemaphore",
    "full_fence",
    "post_all",
    "wait_strategy",
    "wait_until",
]

Probe = Callable[[], int]

# Disruptor's YieldingWaitStrategy spins 100 times before it starts to yield.
SPIN_TRIES = 100
# Before sleeping, BlockingWait re-reads the cursor this many times (~10 µs of reads
# here): a producer that is mid-batch usually publishes within that, and a sleep plus
# wake-up costs about as much. Picked by the ping-pong bench, not derived.
BLOCKING_SPIN_TRIES = 64
# Longest single sleep. Bounds what a lost wake-up can cost and how late a waiter
# notices a deadline, while an idle process wakes only 20 times a second.
MAX_SLEEP_S = 0.05


def full_fence(lock: threading.Lock) -> None:
    """A StoreLoad fence, from Python.

    x86-64 may let a load overtake an earlier store to another address (the store
    waits in the store buffer); that is the one reordering the wake-up protocol cannot
    tolerate. Any ``lock``-prefixed instruction drains the store buffer: acquiring and
    releasing an uncontended ``threading.Lock`` executes such instructions (a
    compare-and-swap in ``sem_wait``/``PyMutex``, an atomic add to release), ~130 ns.

    Each ``Sleeper`` and ``Waker`` passes its own lock, so two threads never contend
    for one: a thread switched out between acquire and release would stall the other
    for a GIL switch interval.
    """
    lock.acquire()
    lock.release()


class Sleeper:
    """Where one waiter sleeps: its *sleeping* flag (a word of the ring header on the
    waiter's own cache line) and its named semaphore. The waiter sets the flag; the
    waiter, or a signaller about to post, clears it.

    A producer's sleeper also has a *watch* word: the mask of consumers whose commits
    should wake it, stored with the flag (see ``Waker``).
    """

    __slots__ = ("_words", "_flag", "_sem", "_fence", "sleeps", "_watch", "watch_mask")

    def __init__(
        self, words: memoryview, flag: int, sem: posix_ipc.Semaphore, watch: int | None = None, watch_mask: int = -1
    ) -> None:
        self._words = words
        self._flag = flag
        self._sem = sem
        self._fence = threading.Lock()
        self.sleeps = 0  # times this waiter slept on its semaphore: for benchmarks and tuning
        self._watch = watch
        self.watch_mask = watch_mask

    def _announce(self) -> None:
        if self._watch is not None:
            self._words[self._watch] = self.watch_mask  # before the flag: a waker reads it after
        self._words[self._flag] = 1

    def sleep(self, need: int, probe: Probe, timeout: float) -> int:
        """Announce, re-check, then sleep up to ``timeout`` s. Returns ``probe()`` afterwards."""
        words = self._words
        self._announce()
        full_fence(self._fence)  # StoreLoad: the flag must be visible before the cursor is re-read
        available = probe()
        if available < need:
            self.sleeps += 1
            try:
                self._sem.acquire(timeout)
            except posix_ipc.BusyError:
                pass
            available = probe()
        words[self._flag] = 0
        return available

    @property
    def semaphore(self):
        """The semaphore (or ``PipeSemaphore``) this waiter sleeps on."""
        return self._sem

    @property
    def semaphore_name(self) -> str:
        """The semaphore this waiter sleeps on: shared by every ring of a doorbell."""
        return self._sem.name

    def reset(self) -> None:
        """Forget what a dead predecessor left: its flag and any posts nobody took."""
        self._words[self._flag] = 0
        # A signaller clears the flag when it posts, so a dead waiter leaves one or two
        # posts behind; the bound only guards against a corrupted count.
        for _ in range(1024):
            try:
                self._sem.acquire(0)
            except posix_ipc.BusyError:
                break


class PipeSemaphore:
    """A semaphore an event loop can wait on: posts are bytes in a named FIFO.

    ``release`` writes one byte; ``acquire`` takes every byte there is (the wake-up
    protocol posts once per announced sleep, so counting is not needed), waiting up
    to ``timeout`` s, and raises ``posix_ipc.BusyError`` like a semaphore when none
    came. ``fileno()`` is for a selector. Every user opens the FIFO read-write and
    non-blocking: opening never waits for the other end, a post never blocks (a full
    FIFO already holds more wake-ups than anyone needs), and a reader that is not
    there yet finds the posts when it comes.
    """

    __slots__ = ("name", "_fd")

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def release(self) -> None:
        try:
            os.write(self._fd, b"\x01")
        except BlockingIOError:
            pass

    def drain(self) -> bool:
        """Take every post there is, without waiting; whether there was any."""
        took = False
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                return took
            took = took or bool(chunk)
            if len(chunk) < 4096:
                return took

    def acquire(self, timeout: float | None = None) -> None:
        if self.drain():
            return
        if timeout is None or timeout > 0:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            if poller.poll(None if timeout is None else max(1, int(timeout * 1000 + 0.999))) and self.drain():
                return
        raise posix_ipc.BusyError("no post")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Doorbell:
    """One waiter's sleep over several rings that share its semaphore (the doorbell).

    The same protocol as ``Sleeper``, widened: set the sleeping flag on every ring,
    fence, re-check them all with ``ready()``, then sleep once. Each ring's ``Waker``
    sees its own flag, clears it and posts the one semaphore, so whichever ring moves
    first wakes the waiter. Two rings may both post for one sleep; the extra count
    only makes the next sleep return at once, and ``wait`` then sleeps again.

    Only one thread may wait on a doorbell: two threads sleeping on one semaphore
    could each take the post meant for the other's ring.
    """

    __slots__ = ("_sleepers", "_flags", "_sem", "_fence", "sleeps", "rung")

    def __init__(self, sleepers: Sequence[Sleeper]) -> None:
        if not sleepers:
            raise ValueError("a doorbell needs at least one sleeper")
        names = {s.semaphore_name for s in sleepers}
        if len(names) != 1:
            raise ValueError(
                f"these waiters sleep on {len(names)} different semaphores ({', '.join(sorted(names))}); "
                "create their rings with one doorbell for this waiter"
            )
        self._sleepers = tuple(sleepers)
        self._flags = tuple((s._words, s._flag) for s in sleepers)
        self._sem = sleepers[0]._sem
        self._fence = threading.Lock()
        self.sleeps = 0  # times the waiter slept
        self.rung = 0  # sleeps a post ended (the others timed out)

    @classmethod
    def for_event_loop(cls, sleepers: Sequence[Sleeper]) -> Doorbell | None:
        """The doorbell of ``sleepers`` if they all sleep on one ``PipeSemaphore`` (an
        event loop can poll it), else None: rings made without one."""
        if not sleepers or len({s.semaphore_name for s in sleepers}) != 1:
            return None
        return cls(sleepers) if isinstance(sleepers[0].semaphore, PipeSemaphore) else None

    @property
    def semaphore(self):
        """The shared semaphore: a ``PipeSemaphore`` has the descriptor an event loop polls."""
        return self._sem

    def announce(self) -> None:
        """For an event loop about to poll the doorbell's descriptor: set every flag and
        fence. The loop must then re-check the rings itself and not block if one
        moved, and ``withdraw()`` once it is awake."""
        for sleeper in self._sleepers:
            sleeper._announce()
        full_fence(self._fence)

    def withdraw(self) -> None:
        for words, flag in self._flags:
            words[flag] = 0

    def wait(
        self,
        ready: Callable[[], bool],
        timeout: float,
        spin_tries: int = BLOCKING_SPIN_TRIES,
        max_sleep: float = MAX_SLEEP_S,
    ) -> bool:
        """Return True as soon as ``ready()`` is, False once ``timeout`` s passed
        without. Spins ``spin_tries`` checks first, then sleeps on the doorbell,
        ``max_sleep`` s at most per sleep, which bounds what a lost post costs."""
        for _ in range(spin_tries):
            if ready():
                return True
        deadline = time.monotonic() + timeout
        flags = self._flags
        sleepers = self._sleepers
        while True:
            for sleeper in sleepers:
                sleeper._announce()
            try:
                full_fence(self._fence)  # StoreLoad: every flag visible before any cursor is re-read
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sleeps += 1
                try:
                    self._sem.acquire(min(remaining, max_sleep))
                    self.rung += 1
                except posix_ipc.BusyError:
                    pass
                if ready():
                    return True
            finally:
                for words, flag in flags:
                    words[flag] = 0


class Waker:
    """The signalling side: after a cursor store, post each sleeping waiter's semaphore.

    ``watched`` targets are producers that sleep for some consumers only: ``(flag,
    semaphore, watch word, bit)`` posts only if the producer's watch mask has this
    consumer's bit, so a commit the producer does not wait for (the matcher's, for a
    gateway waiting on the journaler) wakes nobody.
    """

    __slots__ = ("_words", "_targets", "_watched", "_acquire", "_release")

    def __init__(
        self,
        words: memoryview,
        targets: Sequence[tuple[int, posix_ipc.Semaphore]],
        watched: Sequence[tuple[int, posix_ipc.Semaphore, int, int]] = (),
    ) -> None:
        self._words = words
        self._targets = tuple(targets)
        self._watched = tuple(watched)
        fence = threading.Lock()
        self._acquire, self._release = fence.acquire, fence.release

    def wake(self) -> None:
        # StoreLoad fence (``full_fence``, inlined: this is every publish and commit):
        # the cursor store must be visible before a flag is read.
        self._acquire()
        self._release()
        words = self._words
        # Producers first, as in ``collect``.
        for flag, sem, watch, bit in self._watched:
            if words[flag] and words[watch] & bit:
                words[flag] = 0
                sem.release()
        for flag, sem in self._targets:
            if words[flag]:
                # Clear before posting: one post per announced sleep. Posting on every
                # publish while the waiter sleeps would pile up counts that later
                # sleeps consume at once, a loop of system calls on both sides. Should
                # this clear erase a newer announcement, the post that follows wakes it.
                words[flag] = 0
                sem.release()

    def collect(self, posts: dict) -> None:
        """``wake``, but the semaphores to post go into ``posts`` (by name) for
        ``post_all``: one post per doorbell however many rings of it moved."""
        self._acquire()
        self._release()
        words = self._words
        # The watching producers first: they are the ack path (a gateway waiting for
        # the journaler), and the first post gets the idle core; the consumers gated
        # behind (a matcher) only make trade prints.
        for flag, sem, watch, bit in self._watched:
            if words[flag] and words[watch] & bit:
                words[flag] = 0
                posts[sem.name] = sem
        for flag, sem in self._targets:
            if words[flag]:
                words[flag] = 0
                posts[sem.name] = sem


def post_all(posts: dict) -> None:
    """Post every semaphore ``Waker.collect`` gathered, once each, and forget them."""
    for sem in posts.values():
        sem.release()
    posts.clear()


class WaitStrategy:
    """How to wait until ``probe()`` reaches ``need``; ``deadline`` is ``time.monotonic()``
    seconds or None. Returns the last ``probe()`` value, below ``need`` only if the
    deadline passed."""

    name = "abstract"

    def wait_for(self, need: int, probe: Probe, sleeper: Sleeper, deadline: float | None) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BusySpinWait(WaitStrategy):
    """Re-read the cursor without pause. Use only on a core dedicated to this process."""

    name = "busy_spin"

    def wait_for(self, need: int, probe: Probe, sleeper: Sleeper, deadline: float | None) -> int:
        monotonic = time.monotonic
        while True:
            available = probe()
            if available >= need or (deadline is not None and monotonic() >= deadline):
                return available


class YieldingWait(WaitStrategy):
    """Spin ``spin_tries`` reads, then yield the CPU between reads. Low latency when the
    machine has a spare core; burns CPU while idle."""

    name = "yielding"

    def __init__(self, spin_tries: int = SPIN_TRIES) -> None:
        self.spin_tries = spin_tries

    def wait_for(self, need: int, probe: Probe, sleeper: Sleeper, deadline: float | None) -> int:
        monotonic = time.monotonic
        tries = self.spin_tries
        while True:
            available = probe()
            if available >= need or (deadline is not None and monotonic() >= deadline):
                return available
            if tries:
                tries -= 1
            else:
                os.sched_yield()


class BlockingWait(WaitStrategy):
    """Spin ``spin_tries`` reads, then sleep on the waiter's semaphore, ``max_sleep`` s
    at most per sleep. An idle waiter uses ~0% CPU. The default strategy."""

    name = "blocking"

    def __init__(self, spin_tries: int = BLOCKING_SPIN_TRIES, max_sleep: float = MAX_SLEEP_S) -> None:
        self.spin_tries = spin_tries
        self.max_sleep = max_sleep

    def wait_for(self, need: int, probe: Probe, sleeper: Sleeper, deadline: float | None) -> int:
        for _ in range(self.spin_tries):
            available = probe()
            if available >= need:
                return available
        nap = self.max_sleep
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return probe()
                nap = min(self.max_sleep, remaining)
            available = sleeper.sleep(need, probe, nap)
            if available >= need:
                return available


_BY_NAME = {"busy_spin": BusySpinWait, "yielding": YieldingWait, "blocking": BlockingWait}


def wait_strategy(name: str) -> WaitStrategy:
    """The strategy for a ``Config.wait_strategy`` name: blocking, yielding or busy_spin."""
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise ValueError(f"unknown wait strategy {name!r} (known: {', '.join(_BY_NAME)})") from None


# How often ``wait_until`` looks: for start-up conditions, not for the hot path.
POLL_S = 0.002


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` every ``POLL_S`` until it holds; ``TimeoutError`` naming
    ``what`` after ``timeout`` s. For a process joining running rings (another stage
    must first record or drain something), never for a record on a ring."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(POLL_S)
