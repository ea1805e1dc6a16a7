"""One shared connection: many greenlets' commands on one socket, each reply to its own sender.

A ``SharedConnection`` owns one pooled redis-py connection (opened and handshaken by the pool, so AUTH,
SELECT, the client name and the reconnect backoff apply, and it counts in ``pool_size``) and drives its
socket itself. Its whole state: ``_unsent`` (calls queued, not yet written: a cancelled one is simply
skipped, never sent), ``_sent`` (calls written, in exactly the order of their bytes on the wire: the FIFO
of waiters), ``_out`` (bytes committed to the wire that the kernel has not taken yet) and the hiredis
reader (bytes received, not yet handed out); ``owed`` counts the replies of ``_unsent`` and ``_sent``.

The invariant that makes sharing safe: reply *n* goes to ``_sent[0]``, always; a caller that gives up
keeps its place until its reply has been read and dropped. Anything that could break the order (EOF, a
reset, a protocol error, a reply owed longer than ``socket_timeout``, bytes nobody asked for) fails every
call on the connection with redis' ``ConnectionError`` / ``TimeoutError`` and discards it; nothing is
ever re-sent. Cancellation never leaves a half-written command: a call is either unsent (dropped whole)
or committed (its bytes are written to the end by the connection, whoever waits for the reply). A reply
too many can only be seen once nothing more is owed on the wire: it is looked for then, before the caller
of the last reply runs (it may write its next command at once).

A call (one command, or a pipeline's batch of them) moves through these states::

    UNSENT --written (at once if idle, else by the next _flush)--> SENT --its reply(s) read--> DONE
    UNSENT --its caller gives up (abandon)--> CANCELLED            (never written, skipped by _flush)
    SENT   --its caller gives up (abandon)--> ABANDONED --its reply(s) read and dropped-->
    UNSENT or SENT --the connection fails (fail)--> DONE           (the error is thrown into the caller)

and the connection through these: *alive* (takes calls) --``retire()``--> *retiring* (takes none, still
writes what is queued and reads what is owed) --nothing owed--> *closed*; *alive* or *retiring*
--``fail()``--> *closed*; and *forgotten* in a forked child (never read or written there again).

Plain TCP and unix sockets are driven from the hub: one io watcher reads and parses replies with hiredis
and switches straight into the waiting greenlet (gevent's ``Waiter``); writes go out with a non-blocking
``send`` (at once when the connection is idle, else coalesced: every command queued during one loop
iteration leaves in one write, from a ``loop.run_callback``), the rest of a partial write by a write
watcher. TLS sockets use a reader and a writer greenlet on the gevent socket instead. The ``Multiplexer``
that owns the connection checks the ``socket_timeout`` of replies owed with one timer; there is no timer
per command.
"""
import logging
import os
import ssl
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent
import hiredis
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, ResponseError

from . import forks

if TYPE_CHECKING:
    from .multiplex import Multiplexer
    from .redis_pool import RedisPool

__all__ = ["Call", "Raised", "SharedConnection", "decode_reply", "pack", "raise_error"]

logger = logging.getLogger("pool")

_NOT_ENOUGH = object()  # hiredis: no complete reply buffered yet
_READ_SIZE = 65536
_SERVER_CLOSED = "Connection closed by server."

# Call states. A call is UNSENT until its bytes are committed to the wire, then SENT until its reply is
# read; CANCELLED (never sent), ABANDONED (sent, the reply will be dropped) and DONE are final.
UNSENT, SENT, ABANDONED, CANCELLED, DONE = range(5)

_live: "weakref.WeakSet[SharedConnection]" = weakref.WeakSet()


def _stop_watchers_in_child() -> None:
    """Right after fork, in the child: the parent's shared sockets must never be read or written from here."""
    for shared in list(_live):
        shared._forked()


os.register_at_fork(after_in_child=_stop_watchers_in_child)


class Raised:
    """A reply slot that holds an exception to raise in the caller (a decode error, a connection failure)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Call:
    """One command (or one pipeline batch) on a shared connection, and the greenlet waiting for its reply."""

    __slots__ = ("waiter", "decode", "left", "replies", "data", "state", "shared", "internal")

    def __init__(self, waiter: Waiter, data: bytes, decode: bool, count: int, shared: "SharedConnection") -> None:
        self.waiter = waiter
        self.data: bytes | None = data
        self.decode = decode
        self.left = count  # replies still to read
        self.replies: list[Any] | None = None if count == 1 else []
        self.state = UNSENT
        self.shared = shared
        self.internal = False  # the pool's own (a health-check PING): no caller behind it


def pack(args: Sequence[Any]) -> bytes:
    """redis-py's hiredis packing of one command (``HiredisRespSerializer.pack``), joined into one bytes."""
    first = args[0]
    if isinstance(first, str):
        if not first.isalpha():  # "CLIENT LIST" -> b"CLIENT", b"LIST" (a plain name packs the same either way)
            args = tuple(first.encode().split()) + tuple(args[1:])
    elif isinstance(first, bytes) and b" " in first:
        args = tuple(first.split()) + tuple(args[1:])
    for arg in args:
        if isinstance(arg, (bytearray, memoryview)):
            args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
            break
    try:
        packed: bytes = hiredis.pack_command(tuple(args))
        return packed
    except TypeError as error:
        raise DataError(error) from None


def _is_tls(sock: Any) -> bool:
    return isinstance(sock, ssl.SSLSocket) or getattr(sock, "_sslobj", None) is not None


class SharedConnection:
    """One pooled connection whose socket carries the commands of many greenlets (see the module docstring)."""

    def __init__(self, mux: "Multiplexer", conn: Any, expires: float) -> None:
        self.mux = mux
        self.conn = conn
        self.expires = expires
        self.owed = 0  # replies owed to callers: sent and unsent calls
        self.queued = 0  # bytes not yet taken by the kernel: unsent calls and the write backlog
        self.progress = time.monotonic()  # last reply bytes received, or when it last went from idle to busy
        self.alive = True
        self.retiring = False  # takes no new calls; discarded once its replies are in
        self._retire_reason = "retired"
        self._unsent: list[Call] = []
        self._sent: deque[Call] = deque()
        self._out: deque[Any] = deque()  # committed bytes the kernel has not taken yet, oldest first
        self._flush_scheduled = False
        self._generation = forks.generation
        self._hub = get_hub()
        self._loop = self._hub.loop
        self._buffer = bytearray(_READ_SIZE)
        encoder = conn.encoder
        reader_options = {"protocolError": InvalidResponse, "replyError": conn._parser.parse_error,
                          "errors": encoder.encoding_errors, "notEnoughData": _NOT_ENOUGH}
        if encoder.decode_responses:
            reader_options["encoding"] = encoder.encoding
        self._reader = hiredis.Reader(**reader_options)
        self._push_type = getattr(hiredis, "PushNotification", None) if str(conn.protocol) == "3" else None
        self._unfinished = False  # the reader holds part of a frame that arrived while nothing was owed
        self._address = _describe(conn)
        sock = conn._sock
        self._gsock = sock
        self._tls = _is_tls(sock)
        self._reader_greenlet: gevent.Greenlet | None = None
        self._writer_greenlet: gevent.Greenlet | None = None
        self._writer_wakeup: Event | None = None
        self._writing: bytes | None = None
        if self._tls:
            self._start_greenlets()
        else:
            raw = getattr(sock, "_sock", sock)  # gevent's socket wraps the real, non-blocking one
            raw.setblocking(False)
            self._raw = raw
            self._read_watcher = self._loop.io(raw.fileno(), 1)
            self._write_watcher = self._loop.io(raw.fileno(), 2)
            self._read_watcher.start(self._on_readable)
            self._read_watcher.ref = False  # idle: a connection nobody waits on must not keep the loop alive
        _live.add(self)

    # -- submitting -----------------------------------------------------------------------------------
    def submit(self, data: bytes, decode: bool, count: int = 1) -> Call:
        """Queue one command (``count`` = 1) or a batch of ``count`` commands; returns the call to ``wait()`` on."""
        if not self.alive:
            raise RedisConnectionError(f"the shared connection to {self._address} is closed")
        call = Call(Waiter(self._hub), data, decode, count, self)
        mux = self.mux
        mux.commands += count
        if not self.owed and not self._tls and not self._out:
            # Idle: write at once, nothing to coalesce with. The reply cannot arrive before the caller waits.
            self.owed = count
            self._busy()
            call.state = SENT
            call.data = None
            self._sent.append(call)
            mux.batches += 1
            self._send(data)
            return call
        self.owed += count
        self.queued += len(data)
        self._unsent.append(call)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)
        return call

    def _busy(self) -> None:
        """Idle -> busy: the reply timeout counts from now, and the loop must stay alive for the waiter."""
        self.progress = time.monotonic()
        if not self._tls:
            self._read_watcher.ref = True
        self.mux._arm_timer()

    def wait(self, call: Call) -> Any:
        """The reply of ``call`` (a list of replies for a batch); on cancellation the call gives up its place."""
        try:
            return call.waiter.get()
        except BaseException:
            self.abandon(call)
            raise

    def abandon(self, call: Call) -> None:
        """The caller no longer wants the reply: an unsent call is dropped, a sent one's reply will be dropped."""
        state = call.state
        if state == UNSENT:
            call.state = CANCELLED
            self.owed -= call.left
            self.queued -= len(call.data or b"")
            call.data = None
            self.mux.cancelled_unsent += call.left
            if not self.owed:
                self._idle()
        elif state == SENT:
            call.state = ABANDONED

    # -- writing ------------------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Write every call queued since the last write, in one send (hub callback, or the TLS writer)."""
        self._flush_scheduled = False
        if not self.alive or self._generation != forks.generation or self._out or self._writing is not None:
            return  # a write is still in progress: its completion flushes again
        calls, self._unsent = self._unsent, []
        pieces: list[bytes] = []
        was_idle = not self._sent
        sent = self._sent
        for call in calls:
            data = call.data
            if call.state == UNSENT and data is not None:
                call.state = SENT
                pieces.append(data)
                self.queued -= len(data)
                call.data = None
                sent.append(call)
        if not pieces:
            return
        if was_idle:
            self._busy()
        self.mux.batches += 1
        self._send(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _send(self, data: bytes) -> None:
        if self._tls:
            self._writing = data
            self.queued += len(data)
            self._writer_wakeup.set()  # type: ignore[union-attr]
            return
        try:
            written = self._raw.send(data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            return self.fail(_write_error(error))
        if written < len(data):
            self._out.append(memoryview(data)[written:])
            self.queued += len(data) - written
            self._write_watcher.start(self._on_writable)

    def _on_writable(self) -> None:
        """Hub callback: the kernel takes more of a partial write; when it is all out, flush what queued meanwhile."""
        out = self._out
        try:
            while out:
                chunk = out[0]
                try:
                    written = self._raw.send(chunk)
                except BlockingIOError:
                    return
                self.queued -= written
                self.progress = time.monotonic()
                if written < len(chunk):
                    out[0] = chunk[written:]
                    return
                out.popleft()
        except OSError as error:
            return self.fail(_write_error(error))
        except BaseException as error:  # never let an error escape into the hub
            return self.fail(RedisConnectionError(f"Error while writing to {self._address}: {error!r}"))
        self._write_watcher.stop()
        self.mux._wake_capacity()
        if self._unsent:
            self._flush()

    # -- reading ------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        """Hub callback: read what arrived and hand each complete reply to the call at the head of the FIFO."""
        if self._generation != forks.generation:
            return self._forked()
        try:
            received = self._raw.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as error:
            return self.fail(RedisConnectionError(f"Error while reading from {self._address} : {error.args}"))
        if not received:
            return self.fail(RedisConnectionError(_SERVER_CLOSED))
        self.progress = time.monotonic()
        try:
            self._reader.feed(self._buffer, 0, received)  # type: ignore[arg-type]
            self._deliver_replies()
        except BaseException as error:  # a bug must fail this connection loudly, never reach the hub
            logger.exception("pool %r: shared connection to %s failed", self.mux.pool.name, self._address)
            self.fail(RedisConnectionError(f"Error while reading from {self._address}: {error!r}"))

    def _deliver_replies(self) -> None:
        """Each complete reply, in order, to the call at the head of the FIFO (a batch's, once all are in)."""
        gets = self._reader.gets
        sent = self._sent
        mux = self.mux
        checked = False
        while sent:
            call = sent[0]
            try:
                reply = gets(call.decode)
            except UnicodeDecodeError as error:  # the reply is complete and consumed: its caller gets the error
                reply = Raised(error)
            except Exception as error:  # noqa: BLE001 - a protocol error: the stream can no longer be trusted
                return self.fail(RedisConnectionError(f"Protocol error from {self._address}: {error}"))
            if reply is _NOT_ENOUGH:
                return
            is_push = self._push_type is not None and type(reply) is self._push_type
            if self._unfinished:  # the frame that was incomplete when nothing was owed: nobody's reply
                self._unfinished = False
                if not is_push:
                    return self.fail(self._unsolicited())
            if is_push:
                logger.debug("pool %r: push message on a shared connection ignored: %r", mux.pool.name, reply)
                continue
            if call.replies is not None:
                call.replies.append(reply)
                call.left -= 1
                if call.left:
                    continue
                reply = call.replies
            if len(sent) == 1:
                # The last reply owed on the wire. Whatever else is buffered is nobody's, and must be found
                # before the caller runs: it may write its next command at once, which would read it.
                checked = True
                if not self._check_unsolicited():
                    return  # failed, this call too: a stream with a reply too many may have shifted before
            self.owed -= 1 if call.replies is None else len(reply)
            sent.popleft()
            self._hand_over(call, reply)
            if not self.alive:
                return  # the caller we ran closed or failed this connection
            if mux._capacity_waiters:
                mux._wake_capacity()
        if not checked:
            self._check_unsolicited()
        if not self.owed:
            self._idle()

    def _hand_over(self, call: Call, reply: Any) -> None:
        """``call`` is off the FIFO with its reply: to its caller, or dropped if the caller gave up."""
        if call.state != SENT:
            self.mux.dropped += 1 if call.replies is None else len(call.replies)
            return
        call.state = DONE
        if not self._tls or call.waiter.greenlet is None:
            call.waiter.switch(reply)  # from the hub: runs the caller now, until it waits again
        else:  # from the TLS reader greenlet: Waiter.switch must come from the hub
            self._loop.run_callback(call.waiter.switch, reply)

    def _check_unsolicited(self) -> bool:
        """Nothing is owed on the wire: a complete reply buffered now (other than a push message) breaks the
        protocol and fails the connection (False). An incomplete frame is remembered (``_unfinished``): it
        completes before any reply that follows, and then it must be a push message, or the connection fails.
        (hiredis cannot show an incomplete array whose elements so far are complete: that one goes unseen.)"""
        reader = self._reader
        has_data = getattr(reader, "has_data", None)
        while has_data is None or has_data():
            try:
                reply = reader.gets()
            except Exception as error:  # noqa: BLE001
                self.fail(RedisConnectionError(f"Protocol error from {self._address}: {error}"))
                return False
            if reply is _NOT_ENOUGH:
                self._unfinished = has_data is not None
                return True
            if self._push_type is None or type(reply) is not self._push_type:
                self.fail(self._unsolicited())
                return False
            logger.debug("pool %r: push message on a shared connection ignored: %r", self.mux.pool.name, reply)
        return True

    def _unsolicited(self) -> RedisConnectionError:
        return RedisConnectionError(f"Unexpected reply from {self._address} (nobody asked for it)")

    def _idle(self) -> None:
        if not self.alive:
            return
        if not self._tls:
            self._read_watcher.ref = False
        if self.retiring:
            self._finish(self._retire_reason)

    # -- TLS: a reader and a writer greenlet on the gevent socket -------------------------------------------
    def _start_greenlets(self) -> None:
        self._gsock.settimeout(None)  # the Multiplexer's timer bounds how long replies may be owed
        self._writer_wakeup = Event()
        self._reader_greenlet = gevent.spawn(self._read_loop)
        self._writer_greenlet = gevent.spawn(self._write_loop)

    def _read_loop(self) -> None:
        sock, buffer = self._gsock, self._buffer
        while self.alive:
            try:
                received = sock.recv_into(buffer)
            except OSError as error:
                return self.fail(RedisConnectionError(f"Error while reading from {self._address} : {error.args}"))
            if not self.alive or self._generation != forks.generation:
                return
            if not received:
                return self.fail(RedisConnectionError(_SERVER_CLOSED))
            self.progress = time.monotonic()
            try:
                self._reader.feed(buffer, 0, received)  # type: ignore[arg-type]
                self._deliver_replies()
            except Exception as error:  # noqa: BLE001
                logger.exception("pool %r: shared connection to %s failed", self.mux.pool.name, self._address)
                return self.fail(RedisConnectionError(f"Error while reading from {self._address}: {error!r}"))

    def _write_loop(self) -> None:
        wakeup = self._writer_wakeup
        assert wakeup is not None
        while self.alive:
            data = self._writing
            if data is None:
                wakeup.clear()
                wakeup.wait()
                continue
            try:
                self._gsock.sendall(data)
            except OSError as error:
                return self.fail(_write_error(error))
            self._writing = None
            self.queued -= len(data)
            self.mux._wake_capacity()
            if self._unsent:
                self._flush()

    # -- the end ------------------------------------------------------------------------------------------
    def retire(self, reason: str = "retired") -> None:
        """Take no new calls; let the replies owed arrive, then discard the connection."""
        if not self.alive or self.retiring:
            return
        self.retiring = True
        self._retire_reason = reason
        self.mux._forget(self)
        if not self.owed:
            self._finish(reason)

    def fail(self, error: BaseException, reason: str = "error") -> None:
        """Every call on this connection fails with ``error`` (a fresh copy each); the connection is discarded."""
        if not self.alive:
            return
        calls = list(self._sent) + [c for c in self._unsent if c.state == UNSENT]
        self._sent.clear()
        self._unsent = []
        waiting = sum(1 for call in calls if call.state in (SENT, UNSENT) and not call.internal)
        if not waiting and reason == "error":
            reason = "lost"  # nobody was waiting on it (the server closed an idle connection, say)
        self._finish(reason, error, waiting)
        for call in calls:
            if call.state in (SENT, UNSENT):
                call.state = DONE
                self._throw(call.waiter, _copy(error))

    def has_waiters(self) -> bool:
        """True while a caller (not the pool's own health check) still waits for a reply here."""
        return any(call.state in (SENT, UNSENT) and not call.internal for call in (*self._sent, *self._unsent))

    def _throw(self, waiter: Waiter, error: BaseException) -> None:
        if waiter.greenlet is None or getcurrent() is self._hub:
            waiter.throw(error)
        else:
            self._loop.run_callback(waiter.throw, error)

    def _finish(self, reason: str, error: BaseException | None = None, waiting: int = 0) -> None:
        """Stop driving the socket and give the connection back to the pool to be closed."""
        self.alive = False
        self.owed = self.queued = 0
        self._out.clear()
        self._stop_io()
        self.mux._forget(self, gone=True)
        pool = self.mux.pool
        if error is not None:
            log = logger.warning if waiting else logger.info
            log("pool %r: shared connection to %s failed (%s); %d waiting caller(s) get the error",
                pool.name, self._address, error, waiting)
        pool.discard(self.conn, None if reason == "retired" else reason)
        self.mux._wake_capacity()

    def _stop_io(self) -> None:
        _live.discard(self)
        if self._tls:
            for greenlet in (self._reader_greenlet, self._writer_greenlet):
                if greenlet is not None and greenlet is not getcurrent():
                    greenlet.kill(block=False)
            if self._writer_wakeup is not None:
                self._writer_wakeup.set()
            return
        for watcher in (self._read_watcher, self._write_watcher):
            watcher.stop()
            close = getattr(watcher, "close", None)
            if close is not None:
                close()

    def _forked(self) -> None:
        """In a forked child: stop watching the parent's socket without touching it (the pool forgets it)."""
        if not self.alive:
            return
        self.alive = False
        _live.discard(self)
        self.mux._forget(self, gone=True)
        self._fail_inherited_callers()
        if self._tls:
            for name in ("_read_event", "_write_event"):
                watcher = getattr(self._gsock, name, None)
                if watcher is not None:
                    watcher.stop()
        else:
            self._read_watcher.stop()
            self._write_watcher.stop()

    def _fail_inherited_callers(self) -> None:
        """The greenlets copied into this child that wait for a reply here would wait forever (the replies go
        to the parent): each gets a ``ConnectionError`` once this child's hub runs. The command may have run."""
        calls = [call for call in (*self._sent, *self._unsent) if call.state in (SENT, UNSENT)]
        self._sent.clear()
        self._unsent = []
        loop = get_hub().loop
        for call in calls:
            call.state = DONE
            error = RedisConnectionError("the shared connection was inherited across fork: its reply goes to the "
                                         "parent process (the command may have run)")
            if call.waiter.greenlet is None:  # not waiting yet: get() raises it
                call.waiter.throw(error)
            else:
                loop.run_callback(call.waiter.throw, error)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "closed"
        if self.retiring:
            state = "retiring"
        return f"<SharedConnection {self._address} {state} owed={self.owed} queued={self.queued}>"


def _describe(conn: Any) -> str:
    path = getattr(conn, "path", None)
    if path:
        return f"unix:{path}"
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


def _write_error(error: OSError) -> RedisConnectionError:
    if len(error.args) == 1:
        errno, message = "UNKNOWN", error.args[0]
    else:
        errno, message = error.args[0], error.args[1]
    return RedisConnectionError(f"Error {errno} while writing to socket. {message}.")


def _copy(error: BaseException) -> BaseException:
    """A fresh exception of the same kind, so that no two greenlets raise (and chain) the same object."""
    try:
        return type(error)(*error.args)
    except Exception:  # noqa: BLE001 - an exception class with an unusual constructor
        return error


def raise_error(pool: "RedisPool", shared: SharedConnection, reply: Any) -> Any:
    """As redis-py's hiredis parser and ``Connection.read_response`` do: an error reply is raised."""
    if isinstance(reply, (ResponseError, RedisConnectionError)):
        raise pool._shared_error(shared, reply)
    if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
        raise reply[0]
    if type(reply) is Raised:
        raise reply.error
    return reply


def decode_reply(reply: Any, encoding: str, errors: str) -> Any:
    """What hiredis would have returned with ``encoding`` set, from a reply parsed without it."""
    if isinstance(reply, bytes):
        return reply.decode(encoding, errors)
    if isinstance(reply, list):
        decoded = [decode_reply(item, encoding, errors) for item in reply]
        if type(reply) is not list:
            return type(reply)(decoded)
        return decoded
    if isinstance(reply, dict):
        return {decode_reply(k, encoding, errors): decode_reply(v, encoding, errors) for k, v in reply.items()}
    return reply


