"""REQUEST_TIMEOUT for every request of a worker, from one periodic hub timer instead of a ``gevent.Timeout`` each.

A ``gevent.Timeout`` per request starts and stops a libev timer (~2-3 us of worker CPU); re-arming one timer
per greenlet is wrong (a stopped libev timer keeps its remaining time, see ``Service.run``). Here a request costs
a dict insert and delete: ``Deadlines.enter()`` records ``{greenlet: entry}``, ``leave()`` removes it. One timer
per process, started on the first request (after the fork, so each worker has its own), ticks every
``tick`` seconds (REQUEST_TIMEOUT / 10, at most 0.1 s) and throws ``DeadlineExceeded`` into each greenlet whose
deadline has passed, from the hub, as a timer of ``gevent.Timeout`` does. So a request is interrupted after
REQUEST_TIMEOUT and before REQUEST_TIMEOUT + ``tick`` (plus however long the hub is held by others).

``DeadlineExceeded`` is a ``BaseException``, as ``gevent.Timeout``: every layer below gives up what it holds
on the way out (the pool discards an exclusive connection; a command on a shared connection keeps its place and
its reply is read and dropped), so no reply is ever left for another caller.

Never the wrong request: the throw happens synchronously in the timer's callback, only into a greenlet whose
entry is still registered, i.e. suspended inside that very request (it cannot have moved on to its next
request without running ``leave()`` first); the exception carries its entry, and ``Service.run`` answers 504
only for its own. All requests of a worker share one REQUEST_TIMEOUT, so registration order is deadline
order: a tick looks at the overdue entries only and stops at the first one that is not.
"""
from time import perf_counter

from gevent import getcurrent
from gevent.hub import get_hub

from pool import forks

__all__ = ["DeadlineExceeded", "Deadlines", "MAX_TICK"]

MAX_TICK = 0.1  # seconds: the most a deadline may be overrun by the tick


class DeadlineExceeded(BaseException):
    """The request of ``entry`` ran past REQUEST_TIMEOUT (a BaseException, as ``gevent.Timeout``)."""

    def __init__(self, entry):
        super().__init__(f"deadline of {entry.seconds}s passed")
        self.entry = entry


class _Entry:
    """One request in flight: its greenlet, and when it must be interrupted."""

    __slots__ = ("greenlet", "deadline", "seconds")

    def __init__(self, greenlet, deadline, seconds):
        self.greenlet = greenlet
        self.deadline = deadline
        self.seconds = seconds


class Deadlines:
    """The in-flight requests of this process and the timer that interrupts the overdue ones."""

    def __init__(self, seconds, tick=None):
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, not {seconds!r}")
        self.seconds = seconds
        self.tick = tick if tick is not None else min(MAX_TICK, seconds / 10)
        self._pending = {}  # greenlet -> _Entry, in registration (= deadline) order
        self._timer = None
        self._generation = None

    def enter(self, started=None):
        """Register the current greenlet's request (its deadline counts from ``started``, a ``perf_counter()``
        reading, default now); returns the entry to give to ``leave()``."""
        if self._generation != forks.generation:
            self._reset()
        greenlet = getcurrent()
        entry = _Entry(greenlet, (started or perf_counter()) + self.seconds, self.seconds)
        pending = self._pending
        pending.pop(greenlet, None)  # (only left by a request that never called leave(): keep the order)
        pending[greenlet] = entry
        if not self._timer.active:
            self._timer.again(self._check)
        return entry

    def leave(self, entry):
        """The request is done (or failed): its deadline no longer applies."""
        pending = self._pending
        if pending.get(entry.greenlet) is entry:
            del pending[entry.greenlet]

    def __len__(self):
        return len(self._pending) if self._generation == forks.generation else 0

    def _reset(self):
        """In a new process (first use, or a fork): a timer on this process's hub; the parent's requests are
        not ours."""
        self._pending = {}
        self._timer = get_hub().loop.timer(self.tick, self.tick, ref=False)
        self._generation = forks.generation

    def _check(self):
        """The tick: interrupt every overdue request; stop ticking when none is in flight."""
        pending = self._pending
        if not pending:
            self._timer.stop()
            return
        now = perf_counter()
        overdue = []
        for entry in pending.values():
            if entry.deadline > now:
                break
            overdue.append(entry)
        for entry in overdue:
            greenlet = entry.greenlet
            if pending.get(greenlet) is entry:  # still inside that request (an earlier throw may have run others)
                del pending[greenlet]
                greenlet.throw(DeadlineExceeded(entry))
