"""The shared connections of one pool: which one takes a call, when to open one, who waits for room.

``Multiplexer`` spreads calls over up to ``size`` shared connections (``pool.shared.SharedConnection``) of
one ``RedisPool``: the one with the fewest replies owed; a new one is opened in the background (as a pool
slot) only when all open ones are busy. It bounds the replies owed and the bytes queued per connection and
queues callers beyond those bounds in arrival order under the pool's checkout ``timeout`` and
``max_waiting`` (as it does callers waiting for the first connection to open). A caller's commands sent
before their replies are read stay on one connection (``follow``): only there do they run in the order
sent. One timer fails connections whose replies are owed past ``socket_timeout`` (without one, puts aside
those silent for ``health_check_interval``) and, about once a second, retires connections past their
lifetime (and lets the pool check them: Sentinel).

Its state: ``_conns`` (open and taking calls), ``_alive`` (open: taking calls, or retiring), ``_opening``
and ``_first`` (opens in progress; the first one's result, which callers wait for), ``_capacity_waiters``
(callers waiting for room, oldest first) and the timer, running while any reply is owed.

``MultiplexedPool`` is the pool's side (a mixin of ``RedisPool``): the options, ``execute()``, the hooks a
subclass may override, and how close, fork and stats take the shared connections into account.
"""
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import AsyncResult
from gevent.hub import get_hub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import forks
from . import stats as S
from .commands import may_share
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .options import check as check_option
from .shared import Call, SharedConnection, _copy, pack, raise_error

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["MultiplexedPool", "Multiplexer"]

logger = logging.getLogger("pool")

_PING = b"*1\r\n$4\r\nPING\r\n"


class Multiplexer:
    """The shared connections of one ``RedisPool`` (``multiplex`` of them at most) and the callers waiting."""

    def __init__(self, pool: "RedisPool", size: int, max_in_flight: int, max_queued_bytes: int) -> None:
        self.pool = pool
        self.size = size
        self.max_in_flight = max_in_flight
        self.max_queued_bytes = max_queued_bytes
        self.closed = False
        self._generation = forks.generation
        self._conns: list[SharedConnection] = []  # open and taking calls
        self._alive: list[SharedConnection] = []  # open: taking calls, or retiring (draining what they owe)
        self._opening = 0
        self._first: AsyncResult | None = None  # while the only connection is being opened
        self._waiting_first = 0  # callers waiting for it, but the one that started it
        self._capacity_waiters: deque[AsyncResult] = deque()
        self._timer: Any = None
        self._next_maintenance = 0.0
        self.socket_timeout: float | None = None  # the connections' own, known once one is open
        self._tick = 1.0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.commands = self.batches = self.dropped = self.cancelled_unsent = self.opens = self.open_attempts = 0

    # -- calling ------------------------------------------------------------------------------------------
    def execute(self, args: Sequence[Any], decode: bool = True) -> Any:
        """One command on a shared connection: its reply as ``read_response()`` returns it, or its error raised."""
        if self._generation != forks.generation:
            return self.pool._forked_mux().execute(args, decode)
        data = pack(args)
        shared = self.pick(len(data))
        call = shared.submit(data, decode)
        return raise_error(self.pool, shared, shared.wait(call))

    def submit(self, data: bytes, decode: bool, count: int = 1) -> Call:
        """Queue a packed command (``count`` = 1) or a pipeline's commands as one contiguous batch; ``wait()``
        on the call's shared connection for its reply (a batch's come back as one list)."""
        if self._generation != forks.generation:
            return self.pool._forked_mux().submit(data, decode, count)
        return self.pick(len(data), count).submit(data, decode, count)

    def follow(self, previous: SharedConnection, data: bytes, decode: bool, count: int = 1) -> Call | None:
        """Queue behind a caller's own commands still unanswered on ``previous``: two commands run in the order
        sent only on one connection. None when ``previous`` takes no more calls, has no room, or others wait
        for room: the caller reads those replies first, then ``submit``s."""
        if not previous.alive or previous.retiring or self._capacity_waiters:
            return None
        if not self._has_room(previous, len(data), count):
            return None
        return previous.submit(data, decode, count)

    def pick(self, size: int, count: int = 1) -> SharedConnection:
        """The shared connection for a command of ``size`` bytes: least in flight, within the bounds; waits
        (in arrival order, up to the pool's ``timeout``) when none has room; opens one when none is open."""
        conns = self._conns
        if conns and not self._capacity_waiters:
            best = conns[0]
            if len(conns) > 1:
                for other in conns:
                    if other.owed < best.owed:
                        best = other
            if best.owed:
                if best.owed + count <= self.max_in_flight and (
                        not best.queued or best.queued + size <= self.max_queued_bytes):
                    if len(conns) + self._opening < self.size:
                        self._grow()
                    return best
            elif self._fresh(best):
                return best
        return self._pick_slow(size, count)

    def _fresh(self, shared: SharedConnection) -> bool:
        """An idle connection may take a call without a health check (and is not past its lifetime)."""
        interval = self.pool.health_check_interval
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._maintain(now)
            if not shared.alive or shared.retiring:
                return False
        return not interval or now - shared.progress < interval

    def _pick_slow(self, size: int, count: int) -> SharedConnection:
        pool = self.pool
        timeout = pool.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        queued = False
        while True:
            if self.closed or pool._closed:
                raise PoolClosed(f"pool {pool.name!r} is closed")
            if self._capacity_waiters and not queued:  # others wait for room already: behind them
                self._wait_capacity(deadline, front=False)
                queued = True
                continue
            chosen = self._choose(size, count)
            if chosen is not None:
                if chosen.owed or self._healthy(chosen):
                    return chosen
                continue
            if not self._conns:
                self._open_first(deadline, queued)
                continue
            if len(self._conns) + self._opening < self.size:
                self._grow()
            self._wait_capacity(deadline, front=queued)
            queued = True

    def _choose(self, size: int, count: int) -> SharedConnection | None:
        best = None
        for shared in self._conns:
            if self._has_room(shared, size, count) and (best is None or shared.owed < best.owed):
                best = shared
        return best

    def _has_room(self, shared: SharedConnection, size: int, count: int) -> bool:
        """Within the bounds (``pick`` inlines this): an idle connection takes any call, a busy one up to
        ``max_in_flight`` replies owed and ``max_queued_bytes`` unwritten bytes."""
        return (not shared.owed or shared.owed + count <= self.max_in_flight) and (
            not shared.queued or shared.queued + size <= self.max_queued_bytes)

    def _healthy(self, shared: SharedConnection) -> bool:
        """An idle connection past ``health_check_interval`` answers a PING through its FIFO before it is used
        (callers arriving meanwhile queue behind the PING). A failed check replaces the connection, and the
        caller picks again: its own command was not sent."""
        if self._fresh(shared):
            return shared.alive and not shared.retiring
        try:
            ping = shared.submit(_PING, False)
            ping.internal = True
            ok = bool(shared.wait(ping) == b"PONG")
        except Exception as error:  # noqa: BLE001 - a dead connection is replaced; its error is not the caller's
            logger.info("pool %r: health check of a shared connection failed (%s)", self.pool.name, error)
            ok = False
        if not ok and shared.alive:
            shared.fail(RedisConnectionError("Bad response from PING health check"), "lost")
        return ok

    # -- opening ------------------------------------------------------------------------------------------
    def _open_first(self, deadline: float | None, queued: bool) -> None:
        """No shared connection is open: open one (in its own greenlet, so a cancelled caller cannot cut the
        handshake short) and wait for it; its error (refused, backoff, PoolTimeout) is the caller's. With
        ``timeout=0`` ("do not wait") the caller waits for the open itself, as on the exclusive path, where
        opening a connection into a free slot is not a wait (the open is bounded by the pool's checkout and
        ``socket_connect_timeout``)."""
        pending = self._first
        if pending is None:  # this caller opens it (as on the exclusive path, not counted as waiting)
            pending = self._first = self._start_open()
            pending.wait(self._open_wait(deadline))  # a caller's own gevent.Timeout or kill passes through
        else:  # the others wait for it: in requests_waiting, and within max_waiting (unless queued already)
            if not queued:
                self._refuse_beyond_max_waiting("the first shared connection")
                self.pool._counters[S.REQUESTS_QUEUED] += 1
            self._waiting_first += 1
            try:
                pending.wait(self._open_wait(deadline))
            finally:
                self._waiting_first -= 1
        if not pending.ready():
            self.pool._counters[S.REQUESTS_TIMEOUTS] += 1
            raise PoolTimeout(f"pool {self.pool.name!r}: no shared connection within {self.pool.timeout}s "
                              f"({self.pool._counts()})")
        if not pending.successful():
            raise _copy(pending.exception)

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _open_wait(self, deadline: float | None) -> float | None:
        """How long to wait for the first open: the checkout deadline, except with ``timeout=0``, where the
        open itself is waited for (it is bounded by ``socket_connect_timeout``)."""
        return None if self.pool.timeout == 0 else self._remaining(deadline)

    def _grow(self) -> None:
        """All open connections are busy: open one more in the background, if a slot is free right now."""
        pool = self.pool
        if self._opening or pool._size >= pool.max_size or pool._waiters or time.monotonic() < pool._retry_at:
            return
        self._start_open()

    def _start_open(self) -> AsyncResult:
        result = AsyncResult()
        self._opening += 1
        gevent.spawn(self._open, result)
        return result

    def _open(self, result: AsyncResult) -> None:
        """In its own greenlet: borrow a slot from the pool (handshake included) and make it a shared connection."""
        self.open_attempts += 1  # a checkout of the pool's, but not an exclusive one
        try:
            shared = self._take_over(self.pool.getconn())
        except BaseException as error:
            result.set_exception(error if isinstance(error, Exception) else PoolError(
                f"pool {self.pool.name!r}: opening a shared connection was interrupted"))
            if not isinstance(error, Exception):
                raise
        else:
            self._conns.append(shared)
            self._alive.append(shared)
            self.opens += 1
            result.set(shared)
        finally:
            self._opening -= 1
            if self._first is result:
                self._first = None
            self._wake_capacity()

    def _take_over(self, conn: Any) -> SharedConnection:
        """Drive ``conn``'s socket from now on; on any failure the slot goes back to the pool, closed."""
        pool = self.pool
        try:
            if self.closed or self._generation != forks.generation:
                raise PoolClosed(f"pool {pool.name!r} is closed")
            slot = pool._borrowed[conn]
            slot.leak_reported = True  # held for good by the multiplexer: not a leak
            shared = SharedConnection(self, conn, slot.expires)
        except BaseException:
            pool.discard(conn, None)
            raise
        self.socket_timeout = conn.socket_timeout
        limit = self.socket_timeout or pool.health_check_interval  # how long replies may be owed in silence
        self._tick = min(1.0, max(0.005, limit / 4)) if limit else 1.0
        return shared

    # -- waiting for room -------------------------------------------------------------------------------
    def _refuse_beyond_max_waiting(self, what: str) -> None:
        pool = self.pool
        if pool.max_waiting and self.waiting >= pool.max_waiting:
            pool._counters[S.REQUESTS_REJECTED] += 1
            raise TooManyRequests(f"pool {pool.name!r}: {self.waiting} requests already waiting for {what} "
                                  f"({pool._counts()})")

    def _wait_capacity(self, deadline: float | None, front: bool) -> None:
        pool = self.pool
        counters = pool._counters
        if not front:
            self._refuse_beyond_max_waiting("room on a shared connection")
        waiter = AsyncResult()
        if front:
            self._capacity_waiters.appendleft(waiter)
        else:
            self._capacity_waiters.append(waiter)
            counters[S.REQUESTS_QUEUED] += 1
        started = time.monotonic()
        remaining = None if deadline is None else max(0.0, deadline - started)
        try:
            waiter.wait(remaining)
        except BaseException:
            counters[S.REQUESTS_CANCELLED] += 1
            self._leave(waiter)
            raise
        finally:
            counters[S.REQUESTS_WAIT_MS] += (time.monotonic() - started) * 1000.0
        if not waiter.ready():
            self._leave(waiter)
            counters[S.REQUESTS_TIMEOUTS] += 1
            raise PoolTimeout(f"pool {pool.name!r}: no room on a shared connection within {pool.timeout}s "
                              f"({pool._counts()})")
        waiter.get()  # raises PoolClosed if the pool closed meanwhile

    def _leave(self, waiter: AsyncResult) -> None:
        if waiter.ready():
            self._wake_capacity()  # it was woken as it gave up: pass the turn on
        else:
            try:
                self._capacity_waiters.remove(waiter)
            except ValueError:
                pass

    def _wake_capacity(self) -> None:
        """Room may have appeared: the oldest waiter looks again (it keeps its place if there is none)."""
        waiters = self._capacity_waiters
        if waiters:
            waiters.popleft().set(None)

    @property
    def waiting(self) -> int:
        """Callers waiting for room on a shared connection, or for the first one to open."""
        return len(self._capacity_waiters) + self._waiting_first

    # -- timer and maintenance ------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        timer = self._timer
        if timer is None:
            timer = self._timer = get_hub().loop.timer(self._tick, self._tick)
            timer.ref = False
        if not timer.active:
            timer.start(self._on_timer)

    def _on_timer(self) -> None:
        """Every tick while calls are owed: fail a connection whose replies are owed past ``socket_timeout``;
        without a ``socket_timeout``, put aside one that has heard nothing for ``health_check_interval``."""
        try:
            now = time.monotonic()
            busy = False
            silence_limit = self.pool.health_check_interval
            for shared in list(self._alive):
                if not shared.owed:
                    continue
                busy = True
                silent_for = now - shared.progress
                if self.socket_timeout and silent_for > self.socket_timeout:
                    what = "writing to socket" if shared.queued and shared._out else f"reading from {shared._address}"
                    shared.fail(RedisTimeoutError(f"Timeout {what}"))
                elif not self.socket_timeout and silence_limit and silent_for > silence_limit:
                    self._silent(shared)
            if now >= self._next_maintenance:
                self._maintain(now)
            if not busy and self._timer is not None:
                self._timer.stop()
        except BaseException:  # never into the hub
            logger.exception("pool %r: multiplexer timer failed", self.pool.name)

    def _silent(self, shared: SharedConnection) -> None:
        """Replies owed, no ``socket_timeout``, and nothing heard for ``health_check_interval``: perhaps a
        peer gone without a FIN or RST, which nothing else would tell. On an exclusive connection each caller that
        gives up discards it; here the callers give up their places only, so the connection takes no new
        commands (they open a new one), and is closed once nobody waits on it. Those still waiting keep
        their places: their replies may yet come."""
        shared.retire("lost")
        if shared.alive and not shared.has_waiters():
            shared.fail(RedisTimeoutError(f"Timeout reading from {shared._address}"), "lost")

    def _maintain(self, now: float) -> None:
        """About once a second: retire connections past their lifetime; let the pool check them (Sentinel)."""
        self._next_maintenance = now + 1.0
        for shared in list(self._conns):
            if now >= shared.expires:
                shared.retire("lifetime")
        self.pool._maintain_shared(self._conns)

    # -- lifecycle ------------------------------------------------------------------------------------
    def _forget(self, shared: SharedConnection, gone: bool = False) -> None:
        """``shared`` takes no more calls (and, if ``gone``, is closed)."""
        for group in (self._conns, self._alive) if gone else (self._conns,):
            try:
                group.remove(shared)
            except ValueError:
                pass

    def owns(self, conn: Any) -> bool:
        return any(shared.conn is conn for shared in self._alive)

    def retire_all(self) -> None:
        """New calls go to new connections; the open ones finish what they owe and close."""
        for shared in list(self._conns):
            shared.retire()

    def close(self) -> None:
        """Refuse new calls; wake the callers waiting for room with ``PoolClosed``; drain the connections."""
        self.closed = True
        waiters, self._capacity_waiters = self._capacity_waiters, deque()
        for waiter in waiters:
            waiter.set_exception(PoolClosed(f"pool {self.pool.name!r} closed while waiting"))
        self.retire_all()

    def abort(self, error: BaseException) -> None:
        """The close deadline passed: every call still owed a reply fails with ``error``."""
        self.closed = True
        for shared in list(self._alive):
            shared.fail(error, "error")
        if self._timer is not None:
            self._timer.stop()

    def forget(self) -> None:
        """In a forked child: stop watching every inherited socket (the pool forgets the connections)."""
        self.closed = True
        for shared in list(self._alive):
            shared._forked()
        self._conns, self._alive = [], []
        if self._timer is not None:
            self._timer.stop()
        self._timer = None

    def in_flight(self) -> int:
        return sum(shared.owed for shared in self._alive)

    def __repr__(self) -> str:
        return f"<Multiplexer size={len(self._conns)}/{self.size} in_flight={self.in_flight()} waiting={self.waiting}>"


class MultiplexedPool:
    """``RedisPool``'s multiplexing (see ``RedisPool``'s docstring for the options); a mixin before ``Pool``."""

    multiplex = 0
    _mux: Multiplexer | None = None

    def _configure_multiplex(self, multiplex: int, max_size: int, max_in_flight: int, max_queued_bytes: int) -> None:
        """Validate and keep the options; called before ``Pool.__init__``, whose ``_reset_state`` builds the
        multiplexer."""
        check_option("multiplex", multiplex)
        if multiplex and multiplex >= max_size:
            raise ValueError(f"multiplex ({multiplex}) must be below max_size ({max_size}): exclusive commands "
                             "(transactions, blocking commands, pub/sub) need connections of their own")
        check_option("multiplex_max_in_flight", max_in_flight)
        check_option("multiplex_max_queued_bytes", max_queued_bytes)
        self.multiplex = multiplex
        self.multiplex_max_in_flight = max_in_flight
        self.multiplex_max_queued_bytes = max_queued_bytes

    def _reset_state(self) -> None:
        super()._reset_state()  # type: ignore[misc]
        old = self._mux
        if old is not None:
            old.forget()  # a forked child: stop watching the parent's sockets (the core forgets them)
        self._mux = None
        if self.multiplex:
            self._mux = Multiplexer(self, self.multiplex, self.multiplex_max_in_flight,  # type: ignore[arg-type]
                                    self.multiplex_max_queued_bytes)

    def _forked_mux(self) -> Multiplexer:
        """The multiplexer of this process (the pool is rebuilt first if it was inherited across fork)."""
        pool: Any = self
        if pool._generation != forks.generation:
            pool._after_fork()
        if self._mux is None:
            raise PoolClosed(f"pool {pool.name!r} is closed")
        return self._mux

    def execute(self, *args: Any, never_decode: bool = False) -> Any:
        """Run one command and return its reply as ``read_response()`` does (no response callbacks); an error
        reply is raised. On a multiplexed pool a command that may share goes to a shared connection (the
        fastest path: no client layers); any other command borrows an exclusive connection for the call.
        Timeouts, ``PoolClosed`` and cancellation behave as for ``connection()``."""
        mux = self._mux
        if mux is not None and may_share(args):
            return mux.execute(args, not never_decode)
        with self.connection() as conn:  # type: ignore[attr-defined]
            conn.send_command(*args)
            return conn.read_response(disable_decoding=never_decode)

    # -- hooks ----------------------------------------------------------------------------------------------
    def _getconn_exclusive(self) -> Any:
        """A connection for one caller alone (a SharedHandle moving off the shared path)."""
        return self.getconn()  # type: ignore[attr-defined]

    def _shared_error(self, shared: SharedConnection | None, error: BaseException) -> BaseException:
        """The exception to raise for an error reply that came on a shared connection (SentinelRedisPool
        turns READONLY into a ConnectionError and retires the connection)."""
        return error

    def _maintain_shared(self, shared_connections: Sequence[SharedConnection]) -> None:
        """About once a second while shared connections are open: a subclass may retire some."""

    # -- lifecycle and stats ------------------------------------------------------------------------------------
    def close(self, timeout: float | None = 5.0) -> None:
        """Close the pool (see ``Pool.close``). Shared connections take no new commands at once; the replies
        they owe may arrive until the deadline, after which their callers get ``PoolClosed``."""
        pool: Any = self
        mux = self._mux
        if mux is not None and pool._generation == forks.generation and not pool._closed:
            mux.close()
        super().close(timeout)  # type: ignore[misc]

    def _force_close_borrowed(self) -> None:
        mux = self._mux
        if mux is not None:
            mux.abort(PoolClosed(f"pool {self.name!r} closed before the reply arrived"))  # type: ignore[attr-defined]
        super()._force_close_borrowed()  # type: ignore[misc]

    def get_stats(self) -> dict[str, int]:
        values: dict[str, int] = super().get_stats()  # type: ignore[misc]
        mux = self._mux
        if mux is not None:
            values[S.REQUESTS_WAITING] += mux.waiting
            values[S.MUX_COMMANDS] = mux.commands
            values[S.MUX_BATCHES] = mux.batches
            values[S.MUX_REPLIES_DROPPED] = mux.dropped
            values[S.MUX_CANCELLED_UNSENT] = mux.cancelled_unsent
            values[S.MUX_CONNECTIONS_NUM] = mux.opens
            values[S.EXCLUSIVE_CHECKOUTS] = max(0, values[S.REQUESTS_NUM] - mux.open_attempts)
        else:
            values[S.EXCLUSIVE_CHECKOUTS] = values[S.REQUESTS_NUM]
        return values

    def pop_stats(self) -> dict[str, int]:
        values: dict[str, int] = super().pop_stats()  # type: ignore[misc]
        if self._mux is not None:
            self._mux.reset_counters()
        return values
