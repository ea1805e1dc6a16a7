"""A bounded, fair, cancellation-safe pool of anything, on gevent primitives. It knows nothing of Redis.

The whole mutable state: ``_idle`` (slots ready to lend, a gevent ``LifoQueue`` used without blocking, so
the most recently used connection is reused first), ``_borrowed`` (slot of each lent resource), ``_waiters``
(a FIFO of greenlets' ``AsyncResult``), ``_size`` (resources open or being opened) and ``_closed``.

A returned resource goes straight to the oldest waiter, never through a queue a newcomer could grab it
from; when a slot frees up instead, the oldest waiter receives a permit to open a resource itself.
Decisions are taken in short sections with no gevent switch; I/O (open, close, check) happens outside them.
Subclasses supply the resource hooks: ``_open``, ``_close_resource``, ``_check`` and ``_return_problem``.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import gevent
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, LifoQueue

from . import forks
from . import stats as S
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .options import check as check_option
from .stats import REQUESTS_NUM

if TYPE_CHECKING:
    import traceback as _tb

Resource = TypeVar("Resource")

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Pool", "Resource", "Slot"]

logger = logging.getLogger("pool")

class _Permit(enum.Enum):
    PERMIT = "permit"  # handed to a waiter instead of a slot: "a place is free, open a resource yourself"


_PERMIT = _Permit.PERMIT


class _OthersOpen(Exception):
    """An open failed while other resources of the pool are open: wait for one of them (the cause is chained)."""


def _remaining(timeout: float | None, deadline: float | None) -> float | None:
    return timeout if deadline is None else max(0.0, deadline - time.monotonic())

_NOTHING_TO_CHECK = float("inf")
_CLOSE_ON_RETURN = float("-inf")  # the expiry of a borrowed slot that must close when it comes back

# Reconnect backoff after a failed open: full jitter on base * 2**failures, capped so recovery stays quick.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.5


def _housekeep(pool_ref: Callable[[], Pool[Any] | None], wakeup: Event, tick: float) -> None:
    """The housekeeper greenlet; it holds the pool only weakly, so a forgotten pool can be collected."""
    while True:
        pool = pool_ref()
        if pool is None or not pool._housekeeping_round():
            return
        del pool
        wakeup.clear()
        wakeup.wait(tick)


class Slot(Generic[Resource]):
    """One open resource and what the pool knows about it."""

    __slots__ = ("borrowed_at", "borrowed_from", "expires", "holder", "idle_since", "leak_reported", "resource")

    def __init__(self, resource: Resource, expires: float) -> None:
        self.resource = resource
        self.expires = expires
        self.idle_since: float | None = None  # None until first returned: a fresh connection needs no check
        self.borrowed_at = 0.0
        self.borrowed_from: list[_tb.FrameSummary] | None = None
        self.holder: Any = None  # the greenlet that borrowed it (gevent ships no types)
        self.leak_reported = False


_live_pools: weakref.WeakSet[Pool[Any]] = weakref.WeakSet()


def _forget_lent_in_child() -> None:
    """Right after fork, in the child (see ``Pool._forget_lent``)."""
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool._forget_lent()


os.register_at_fork(after_in_child=_forget_lent_in_child)


class Pool(Generic[Resource]):
    """A bounded pool; lend with ``getconn()`` and give back with ``putconn()`` or ``discard()``.

    Options (keyword-only; what each accepts is in ``pool.options``): ``max_size`` connections at most
    (default 10); ``min_size`` kept open and refilled in the background (default 0); ``timeout`` seconds a
    checkout may wait (default 5.0; None = forever, 0 = do not wait); ``max_waiting`` queued checkouts
    before ``TooManyRequests`` (0 = unlimited); ``max_lifetime`` seconds before a connection is recycled,
    minus up to 10% jitter (default 3600; 0 or None = never); ``max_idle`` seconds a surplus idle connection
    is kept (default 600; 0 or None = forever); ``leak_threshold`` seconds a borrow may last before a
    warning with its stack (default None; 0 or None = off); ``name`` for logs and stats.
    """

    def __init__(self, *, max_size: int = 10, min_size: int = 0, timeout: float | None = 5.0, max_waiting: int = 0,
                 max_lifetime: float | None = 3600.0, max_idle: float | None = 600.0,
                 leak_threshold: float | None = None, name: str | None = None) -> None:
        for option, value in (("max_size", max_size), ("min_size", min_size), ("timeout", timeout),
                              ("max_waiting", max_waiting), ("max_lifetime", max_lifetime), ("max_idle", max_idle),
                              ("leak_threshold", leak_threshold), ("name", name)):
            check_option(option, value)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        self.max_size = max_size
        self.min_size = min_size
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.leak_threshold = leak_threshold
        self.name = name or f"pool-{id(self):x}"
        self._closed = False
        self._reset_state()
        _live_pools.add(self)

    def _reset_state(self) -> None:
        self._generation = forks.generation
        self._idle: Any = LifoQueue()  # of Slot[Resource]
        self._borrowed: dict[Resource, Slot[Resource]] = {}
        self._waiters: deque[Any] = deque()  # AsyncResult of Slot[Resource], _PERMIT or PoolClosed
        self._size = 0
        self._counters: dict[str, float] = dict.fromkeys(S.COUNTERS, 0)
        self._connect_failures = 0
        self._retry_at = 0.0
        self._last_connect_error: str | None = None
        self._housekeeper: Any = None
        self._wakeup = Event()  # nudges the housekeeper: a slot was freed or min_size must be met
        self._filled = Event()  # min_size connections are open
        self._drained = Event()  # closed and nothing left open

    # -- resource hooks, supplied by subclasses ----------------------------------------------------
    def _open(self) -> Resource:
        """Open and return a new resource (may block the greenlet; may raise)."""
        raise NotImplementedError

    def _close_resource(self, resource: Resource) -> None:
        """Close a resource; called at most once per resource."""

    def _forget_resource(self, resource: Resource) -> None:
        """Drop a resource inherited from the parent process without disturbing the parent's use of it."""
        self._close_resource(resource)

    def _check(self, resource: Resource, idle_for: float) -> bool:
        """At checkout: True if an idle resource is still fit to lend."""
        return True

    def _return_problem(self, resource: Resource) -> str | None:
        """At return: None if the resource is clean, else why it must be discarded ('error' or 'reset')."""
        return None

    # -- checkout -------------------------------------------------------------------------------------
    def getconn(self, timeout: float | None = None) -> Resource:
        """Borrow a resource; give it back with ``putconn()`` (or ``discard()`` if its state is unknown).

        Waits up to ``timeout`` seconds (default: the pool's ``timeout``; None waits forever) in arrival
        order, then raises ``PoolTimeout``. Raises ``TooManyRequests`` at once when ``max_waiting``
        checkouts already wait, ``PoolClosed`` when the pool is closed, and the open error (or a
        ``PoolError`` while reconnects back off) when a new connection cannot be made.
        """
        if self._generation != forks.generation:
            self._after_fork()
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        if self._housekeeper is None:
            self._start_housekeeper()
        self._counters[REQUESTS_NUM] += 1
        if timeout is None:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slot = self._take(timeout, deadline)
            if self._closed:
                self._discard_slot(slot, None)
                raise PoolClosed(f"pool {self.name!r} closed while waiting")
            now = time.monotonic()
            if slot.expires <= now:
                self._discard_slot(slot, "lifetime")
                continue
            if slot.idle_since is None:  # freshly opened
                break
            try:
                fit = self._check(slot.resource, now - slot.idle_since)
            except BaseException:
                self._discard_slot(slot, "lost")
                raise
            if fit:
                break
            self._discard_slot(slot, "lost")
        self._borrowed[slot.resource] = slot
        if self.leak_threshold:  # 0 or None: off
            self._note_borrower(slot, now)
        return slot.resource

    def _take(self, timeout: float | None, deadline: float | None) -> Slot[Resource]:
        """Critical section: an idle slot, a new one, or a place in the queue, in that order."""
        if not self._waiters:  # with waiters queued, a newcomer goes behind them
            try:
                slot: Slot[Resource] = self._idle.get_nowait()
                return slot
            except Empty:
                pass
            if self._size < self.max_size:
                self._size += 1
                return self._open_or_wait(timeout, deadline)
        handed = self._wait(_remaining(timeout, deadline))
        return self._open_or_wait(timeout, deadline) if handed is _PERMIT else handed

    def _open_or_wait(self, timeout: float | None, deadline: float | None) -> Slot[Resource]:
        """Open a resource in a place already counted in ``_size``. When that fails while other resources of this
        pool are open (a server at its connection limit refuses new ones while the open ones work), wait in line
        for one of them instead, within the checkout's deadline."""
        while True:
            try:
                return self._open_slot(others_may_serve=True)
            except _OthersOpen as refused:
                cause = refused.__cause__
            if not self._waiters:  # critical section: one may have come back while we tried; else queue
                try:
                    slot: Slot[Resource] = self._idle.get_nowait()
                    return slot
                except Empty:
                    pass
            try:
                handed = self._wait(_remaining(timeout, deadline))
            except PoolTimeout as error:  # say why no new connection was opened meanwhile
                raise PoolTimeout(f"{error}; new connections were refused ({self._last_connect_error})") from cause
            if handed is not _PERMIT:  # a permit: a place is free, try to open again
                return handed

    def _wait(self, timeout: float | None) -> Slot[Resource] | _Permit:
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            self._counters[S.REQUESTS_REJECTED] += 1
            raise TooManyRequests(
                f"pool {self.name!r}: {len(self._waiters)} requests already waiting ({self._counts()})")
        waiter = AsyncResult()
        self._waiters.append(waiter)
        self._counters[S.REQUESTS_QUEUED] += 1
        started = time.monotonic()
        try:
            waiter.wait(timeout)
        except BaseException:  # killed, or an outer gevent.Timeout, while queued
            self._counters[S.REQUESTS_CANCELLED] += 1
            self._abandon(waiter)
            raise
        finally:
            self._counters[S.REQUESTS_WAIT_MS] += (time.monotonic() - started) * 1000.0
        if not waiter.ready():
            self._abandon(waiter)
            self._counters[S.REQUESTS_TIMEOUTS] += 1
            raise PoolTimeout(f"pool {self.name!r}: no connection within {timeout:.3f}s ({self._counts()})")
        handed: Slot[Resource] | _Permit = waiter.get()  # a slot, a permit, or PoolClosed raised
        return handed

    def _abandon(self, waiter: Any) -> None:
        """A waiter gives up. Whatever it was handed in the meantime goes to the next one in line."""
        if not waiter.ready():
            self._waiters.remove(waiter)
        elif waiter.successful():
            handed = waiter.value
            if handed is _PERMIT:
                self._release_place()
            else:
                self._give_back(handed)

    def _open_slot(self, others_may_serve: bool = False) -> Slot[Resource]:
        """Open a resource in a place already counted in ``_size``; on failure the place is released.

        With ``others_may_serve``, a failure while other resources are open (or being opened) raises
        ``_OthersOpen`` and the place is given up without a permit for the next waiter: the waiters are served
        by the resources that are open, and no one retries the open in a loop meanwhile."""
        started = time.monotonic()
        try:
            if started < self._retry_at:
                raise PoolError(
                    f"pool {self.name!r}: cannot connect ({self._last_connect_error}); "
                    f"next attempt in {self._retry_at - started:.3f}s"
                )
            resource = self._open()
        except BaseException as error:
            if isinstance(error, Exception):
                if not isinstance(error, PoolError):
                    self._note_connect_failure(error)
                if others_may_serve and self._size > 1 and not self._closed:
                    self._size -= 1
                    raise _OthersOpen() from error
            self._release_place()
            raise
        now = time.monotonic()
        self._connect_failures = 0
        self._retry_at = 0.0
        self._counters[S.CONNECTIONS_NUM] += 1
        self._counters[S.CONNECTIONS_MS] += (now - started) * 1000.0
        lifetime = self.max_lifetime
        expires = now + lifetime * random.uniform(0.9, 1.0) if lifetime else _NOTHING_TO_CHECK
        return Slot(resource, expires)

    def _note_connect_failure(self, error: Exception) -> None:
        self._counters[S.CONNECTIONS_ERRORS] += 1
        self._connect_failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self._connect_failures - 1, 16)) * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        self._last_connect_error = f"{type(error).__name__}: {error}"
        logger.warning("pool %r: connect failed (%s); next attempt in %.3fs",
                       self.name, self._last_connect_error, delay)

    def _note_borrower(self, slot: Slot[Resource], now: float) -> None:
        slot.borrowed_at = now
        slot.borrowed_from = traceback.extract_stack(limit=12)[:-3]
        slot.holder = gevent.getcurrent()
        slot.leak_reported = False

    # -- return -------------------------------------------------------------------------------------
    def putconn(self, resource: Resource) -> None:
        """Give a borrowed resource back. A resource in an unclean state is closed instead of reused.

        Returning a resource twice, or one this pool does not own, does nothing.
        """
        if self._generation != forks.generation:
            return self._after_fork()  # the resource belongs to the parent process
        slot = self._borrowed.pop(resource, None)
        if slot is None:
            return
        if self._closed:
            return self._discard_slot(slot, None)
        problem = self._return_problem(resource)
        now = time.monotonic()
        if problem is not None:
            self._discard_slot(slot, problem)
        elif slot.expires <= now:  # past its lifetime, or marked by _close_idle(borrowed=True)
            self._discard_slot(slot, "lifetime" if slot.expires != _CLOSE_ON_RETURN else None)
        else:
            self._give_back(slot, now)

    def discard(self, resource: Resource, reason: str | None = "error") -> None:
        """Close a borrowed resource instead of returning it (its state is unknown) and free its place."""
        slot = self._borrowed.pop(resource, None)
        if slot is not None and self._generation == forks.generation:
            self._discard_slot(slot, reason)

    def _give_back(self, slot: Slot[Resource], now: float | None = None) -> None:
        """Critical section: hand a clean slot to the oldest waiter, or make it idle."""
        slot.idle_since = time.monotonic() if now is None else now
        if self._waiters:
            self._waiters.popleft().set(slot)
        else:
            self._idle.put_nowait(slot)

    def _discard_slot(self, slot: Slot[Resource], reason: str | None) -> None:
        if reason is not None:
            self._counters[S.DISCARD_REASONS[reason]] += 1
            log = logger.warning if reason in ("cancelled", "reset") else logger.info
            log("pool %r: discarding a connection (%s)", self.name, reason)
        try:
            self._close_resource(slot.resource)
        except Exception:
            logger.exception("pool %r: error while closing a connection", self.name)
        finally:
            self._release_place()

    def _release_place(self) -> None:
        """A place in ``_size`` is free: hand it to the oldest waiter as a permit, or shrink."""
        if self._waiters and not self._closed:
            self._waiters.popleft().set(_PERMIT)
            return
        self._size -= 1
        if self._closed:
            if self._size <= 0:
                self._drained.set()
        elif self._size < self.min_size:
            self._wakeup.set()

    def _close_idle(self, borrowed: bool = False, keep: Callable[[Resource], bool] | None = None) -> None:
        """Close the idle resources now (the pool stays open; new ones open on demand). With ``borrowed``,
        the borrowed ones too, each when it comes back: never under its holder. ``keep`` spares the
        borrowed resources it accepts."""
        while True:
            try:
                slot = self._idle.get_nowait()
            except Empty:
                break
            self._discard_slot(slot, None)
        if borrowed:
            for resource, slot in self._borrowed.items():
                if keep is None or not keep(resource):
                    slot.expires = _CLOSE_ON_RETURN

    # -- background work ------------------------------------------------------------------------------
    def _start_housekeeper(self) -> None:
        self._housekeeper = gevent.spawn(_housekeep, weakref.ref(self), self._wakeup, self._tick())

    def _tick(self) -> float:
        periods = [p for p in (self.max_idle, self.max_lifetime, self.leak_threshold) if p]
        return min(5.0, max(0.01, min(periods) / 4)) if periods else 5.0

    def _housekeeping_round(self) -> bool:
        """One round of background work; False when this housekeeper should stop."""
        if self._closed or self._housekeeper is not gevent.getcurrent():
            return False
        if self._generation != forks.generation:
            self._after_fork()  # a greenlet inherited across fork: reset; a new housekeeper starts on use
            return False
        self._recycle_idle()
        self._refill()
        if self.leak_threshold:  # 0 or None: off
            self._report_leaks()
        return True

    def _refill(self) -> None:
        """Open connections until ``min_size`` are open, backing off while the server refuses."""
        while not self._closed and self._size < self.min_size and time.monotonic() >= self._retry_at:
            self._size += 1
            try:
                slot = self._open_slot()
            except Exception:  # noqa: BLE001 -- any failed open: logged by _note_connect_failure, retried later
                break
            if self._closed:
                self._discard_slot(slot, None)
                return
            self._give_back(slot)
        if self._size >= self.min_size:
            self._filled.set()
        elif self._retry_at:
            gevent.spawn_later(max(0.0, self._retry_at - time.monotonic()), self._wakeup.set)

    def _recycle_idle(self) -> None:
        """Close idle slots past their lifetime, and surplus ones idle longer than ``max_idle``."""
        now = time.monotonic()
        keep = []
        while True:
            try:
                keep.append(self._idle.get_nowait())
            except Empty:
                break
        for slot in reversed(keep):  # least recently used first, so max_idle trims the oldest
            if slot.expires <= now:
                self._discard_slot(slot, "lifetime")
            elif self.max_idle and now - slot.idle_since > self.max_idle and self._size > self.min_size:
                self._discard_slot(slot, "idle")
            else:
                self._idle.put_nowait(slot)
        # put_nowait appended LRU first, so the most recently used is again on top

    def _report_leaks(self) -> None:
        now, threshold = time.monotonic(), self.leak_threshold or 0.0
        for slot in list(self._borrowed.values()):
            if slot.leak_reported or now - slot.borrowed_at < threshold:
                continue
            slot.leak_reported = True
            self._counters[S.LEAKS_REPORTED] += 1
            frame = getattr(slot.holder, "gr_frame", None)
            current = "".join(traceback.format_stack(frame)) if frame is not None else "  (holder not running)\n"
            logger.warning(
                "pool %r: connection held for %.1fs (leak_threshold %.1fs) by %r\nborrowed at:\n%s"
                "holder is now at:\n%s",
                self.name, now - slot.borrowed_at, self.leak_threshold, slot.holder,
                "".join(traceback.format_list(slot.borrowed_from or [])), current,
            )

    # -- lifecycle ------------------------------------------------------------------------------------
    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open; raise ``PoolTimeout`` after ``timeout`` seconds."""
        if self._generation != forks.generation:
            self._after_fork()
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        if self._housekeeper is None:
            self._start_housekeeper()
        self._wakeup.set()
        if not self._filled.wait(timeout):
            raise PoolTimeout(f"pool {self.name!r}: min_size {self.min_size} not reached in {timeout}s "
                              f"({self._counts()}; last error: {self._last_connect_error})")

    def close(self, timeout: float | None = 5.0) -> None:
        """Close the pool. Idempotent; in a forked child it only forgets the parent's connections.

        New checkouts and queued waiters get ``PoolClosed`` at once; idle connections close now;
        borrowed ones close when returned, or are closed under their holders after ``timeout`` seconds.
        """
        if self._generation != forks.generation:
            self._after_fork()
        if self._closed:
            return
        self._closed = True
        logger.info("pool %r: closing (%s)", self.name, self._counts())
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.set_exception(PoolClosed(f"pool {self.name!r} closed while waiting"))
        while True:
            try:
                self._discard_slot(self._idle.get_nowait(), None)
            except Empty:
                break
        if self._housekeeper is not None and self._housekeeper is not gevent.getcurrent():
            self._housekeeper.kill(block=False)
        if self._size > 0 and not self._drained.wait(timeout):
            self._force_close_borrowed()
        logger.info("pool %r: closed", self.name)

    def _force_close_borrowed(self) -> None:
        borrowed, self._borrowed = self._borrowed, {}
        if borrowed:
            logger.warning("pool %r: closing %d connection(s) still borrowed at the close deadline",
                           self.name, len(borrowed))
        for slot in borrowed.values():
            self._discard_slot(slot, None)

    @property
    def closed(self) -> bool:
        return self._closed

    def _forget_lent(self) -> None:
        """At fork, in the child: forget the resources lent at that moment (for a socket, close this process's
        copy, the parent's stays open). A greenlet copied into the child in the middle of a command then fails
        here at once instead of waiting on, or reading, the reply that belongs to the parent. The rest is
        dropped by ``_after_fork`` on first use."""
        for resource in list(self._borrowed):
            if self._lent_to_a_caller(resource):
                with contextlib.suppress(Exception):
                    self._forget_resource(resource)

    def _lent_to_a_caller(self, resource: Resource) -> bool:
        return True

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections (without disturbing them) and start afresh."""
        inherited = [slot.resource for slot in self._idle.queue] + list(self._borrowed)
        self._reset_state()
        for resource in inherited:
            with contextlib.suppress(Exception):  # the parent's socket: nothing of ours to clean up if it fails
                self._forget_resource(resource)
        logger.info("pool %r: rebuilt after fork in pid %d (%d inherited connections dropped)",
                    self.name, os.getpid(), len(inherited))

    # -- introspection --------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, int]:
        """Gauges (live) and counters (since creation or the last ``pop_stats()``), keyed by ``pool.stats`` names."""
        values = {
            S.POOL_MIN: self.min_size,
            S.POOL_MAX: self.max_size,
            S.POOL_SIZE: self._size,
            S.POOL_AVAILABLE: self._idle.qsize(),
            S.POOL_IN_USE: len(self._borrowed),
            S.REQUESTS_WAITING: len(self._waiters),
        }
        values.update(self._counters)
        values[S.REQUESTS_WAIT_MS] = int(values[S.REQUESTS_WAIT_MS])
        values[S.CONNECTIONS_MS] = int(values[S.CONNECTIONS_MS])
        return values

    def pop_stats(self) -> dict[str, int]:
        """Like ``get_stats()``, then reset the counters to zero."""
        values = self.get_stats()
        self._counters = dict.fromkeys(S.COUNTERS, 0)
        return values

    def _counts(self) -> str:
        return (f"size={self._size}, idle={self._idle.qsize()}, in_use={len(self._borrowed)}, "
                f"waiting={len(self._waiters)}, max_size={self.max_size}")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state} {self._counts()}>"
