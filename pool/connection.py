"""redis-py connections that know whether they are safe to reuse.

Each tracked connection counts the replies it owes (commands sent minus replies read) and notes session
state that outlives a command (MULTI, WATCH, SUBSCRIBE, SELECT, ...). The pool reads both when a
connection comes back, so it never depends on redis-py's own checkout probe, which redis-py 8.1 skips
when maintenance notifications are on. A connection that owes a reply is exactly the one that would hand
one request another request's answer.

The pool also sets, on each new connection, its default client name (sent after redis-py's handshake, and
skipped when the server refuses it with NOPERM) and the interval of redis-py's keepalive, which only a
connection that subscribes switches on: pub/sub needs it, the per-command hot path does not.
"""
from __future__ import annotations

import select
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from gevent.monkey import get_original
from redis.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import str_if_bytes

__all__ = ["ReplyTracking", "tracked_class"]

if TYPE_CHECKING:  # to the type checker the mixin is the redis-py connection it is always mixed into
    _ConnectionBase = Connection
else:
    _ConnectionBase = object

_poll = get_original("select", "poll")  # the real poll: a zero-timeout check must not yield to the hub

# An exception in flight that makes a disconnect() a fault, not the holder's choice (PubSub.close(), ...).
_FAULTS = (RedisConnectionError, RedisTimeoutError, OSError, InvalidResponse)
_SUBSCRIBE = frozenset(spelling for name in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE")
                       for spelling in (name, name.lower(), name.encode(), name.lower().encode()))

_TRANSACTION, _COMMIT, _WATCH, _UNWATCH, _TAINT, _CLIENT = range(6)
# CLIENT subcommands that change what the connection replies or who it is; CLIENT LIST and friends do not.
_CLIENT_TAINTS = {"REPLY", "TRACKING", "SETNAME", "SETINFO", "NO-EVICT", "NO-TOUCH", "CACHING"}
_EFFECTS: dict[str | bytes, int] = {}
for _names, _effect in (
    (("MULTI",), _TRANSACTION),
    (("EXEC", "DISCARD"), _COMMIT),
    (("WATCH",), _WATCH),
    (("UNWATCH",), _UNWATCH),
    (("SELECT", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "HELLO", "AUTH", "RESET", "READONLY",
      "READWRITE"), _TAINT),
    (("CLIENT",), _CLIENT),
    (tuple(f"CLIENT {sub}" for sub in _CLIENT_TAINTS), _TAINT),  # redis-py sends these as one first argument
):
    for _name in _names:
        for _spelling in (_name, _name.lower(), _name.encode(), _name.lower().encode()):
            _EFFECTS[_spelling] = _effect


class ReplyTracking(_ConnectionBase):
    """Mixin for a redis-py connection class: reply accounting, session state and a readability poll."""

    _owed = 0  # replies sent for and not yet read; anything but 0 means the stream is not at a boundary
    _in_transaction = False
    _watching = False
    _tainted = False  # session state we do not track precisely (db, subscriptions, protocol, ...)
    _batch = 0  # commands in the last pack_commands(), sent by the next send_packed_command()
    _poller: Any = None  # a select.poll() on the socket while connected
    _retired = False  # closed by the pool for good: a holder that kept it must not quietly reconnect
    _closed_on_purpose = False  # the last disconnect() was the holder's choice (pubsub.close()), not a fault
    # Set by the pool on each new connection:
    default_name: str | None = None  # CLIENT SETNAME after the handshake; an ACL refusal leaves it unnamed
    name_refused = False  # the server refused that CLIENT SETNAME (NOPERM)
    pubsub_health_check_interval: float = 0  # redis-py's keepalive, switched on by the first SUBSCRIBE
    # The SharedHandle this connection is the exclusive connection of (multiplexed pools), else None: its
    # holder sees the handle as its connection, so the keepalive PING goes through the handle as well.
    via: Any = None

    def _note(self, args: Sequence[Any]) -> None:
        effect = _EFFECTS[args[0]]
        if effect == _CLIENT:
            sub = args[1] if len(args) > 1 else ""
            sub = (sub.decode() if isinstance(sub, bytes) else str(sub)).upper()
            self._tainted = self._tainted or sub in _CLIENT_TAINTS
        elif effect == _TRANSACTION:
            self._in_transaction = True
        elif effect == _COMMIT:
            self._in_transaction = self._watching = False
        elif effect == _WATCH:
            self._watching = True
        elif effect == _UNWATCH:
            self._watching = False
        else:
            self._tainted = True
            if args[0] in _SUBSCRIBE and self.pubsub_health_check_interval:
                # A pub/sub connection from now on (it is discarded when it comes back): redis-py's own
                # keepalive PINGs it when idle, as behind a proxy or NAT it must be. Other connections are
                # checked by the pool at checkout and keep redis-py's per-command check off.
                self.health_check_interval = self.pubsub_health_check_interval  # type: ignore[assignment]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if args[0] in _EFFECTS:
            self._note(args)
        self._owed += 1
        super().send_packed_command(self._command_packer.pack(*args), check_health=kwargs.get("check_health", True))

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        for args in commands:
            if args[0] in _EFFECTS:
                self._note(args)
        self._batch += len(commands)
        packed: list[bytes] = super().pack_commands(commands)
        return packed

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        # Called directly by pipelines after pack_commands(); anything packed by hand counts as one.
        self._owed += self._batch or 1
        self._batch = 0
        super().send_packed_command(command, check_health=check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)
        except ResponseError:
            self._owed -= 1  # an error reply is still a reply
            raise
        self._owed -= 1
        return response

    def _connect(self) -> socket.socket:
        try:
            sock: socket.socket = super()._connect()
            return sock
        except BaseException as error:  # redis-py closes its half-made socket only on OSError
            if not isinstance(error, Exception):  # a gevent.Timeout or kill() mid-connect: close it now
                _close_sockets_in(error.__traceback__)
            raise

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._retired:
            raise RedisConnectionError("this connection was closed by its pool (closed, or discarded); borrow another")
        super().connect_check_health(*args, **kwargs)
        self._clear_session()  # commands sent while connecting (AUTH, SELECT, CLIENT SETNAME) are the baseline
        self._closed_on_purpose = False
        if self.pubsub_health_check_interval:  # the keepalive counts from the handshake, as redis-py's does
            # redis-py annotates both as int and stores floats itself
            self.next_health_check = time.monotonic() + self.pubsub_health_check_interval  # type: ignore[assignment]
        self._poller = _poll()
        self._poller.register(cast(socket.socket, self._sock).fileno(), select.POLLIN)

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        name = self.default_name
        if name is not None and not self.client_name and not self.name_refused:
            self._set_default_name(name)

    def _set_default_name(self, name: str) -> None:
        """The pool's own client name, after the handshake: a user whose ACL lacks ``client|setname`` still
        connects (unnamed), as it does through redis-py's pool, which names nothing by default."""
        self.send_command("CLIENT", "SETNAME", name, check_health=False)
        try:
            self.read_response()
        except NoPermissionError:
            self.name_refused = True

    def _send_ping(self) -> None:
        """redis-py's health-check PING, through the handle that holds this connection if one does (where a
        caller's wrapper of ``send_command`` sees it, as on a connection of its own)."""
        via = self.via
        sender = via if via is not None and via.holds(self) else self  # a handle given back holds it no more
        sender.send_command("PING", check_health=False)
        if str_if_bytes(sender.read_response()) != "PONG":
            raise RedisConnectionError("Bad response from PING health check")

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._poller = None
        if self._sock is not None:
            self._closed_on_purpose = not args and "error" not in kwargs and not _fault_in_flight()
        super().disconnect(*args, **kwargs)
        self._clear_session()

    def _clear_session(self) -> None:
        self._owed = self._batch = 0
        self._in_transaction = self._watching = self._tainted = False

    # -- what the pool asks -------------------------------------------------------------------------
    def return_problem(self) -> str | None:
        """None when the connection can be lent again as it is, else 'error' (closed by a fault) or 'reset'
        (session state, replies owed, or closed by its holder on purpose, as ``pubsub.close()`` does)."""
        if self._sock is None:
            return "reset" if self._closed_on_purpose else "error"
        if self._owed or self._in_transaction or self._watching or self._tainted:
            return "reset"
        return None

    def retire(self) -> None:
        """Close for good: later use raises ConnectionError instead of opening a socket the pool cannot see."""
        self._retired = True
        self.disconnect()

    def forget(self) -> None:
        """Close our copy of a socket inherited across fork, without shutting down the parent's."""
        sock, self._sock, self._poller = self._sock, None, None
        if sock is not None:
            sock.close()


def _fault_in_flight() -> bool:
    """True when the exception being handled is a connection fault or a cancellation: redis-py disconnects
    from its ``except`` blocks after a socket error, a timeout, a protocol error or a ``BaseException``."""
    error = sys.exc_info()[1]
    return error is not None and (isinstance(error, _FAULTS) or not isinstance(error, Exception))


def _close_sockets_in(tb: TracebackType | None) -> None:
    """Close the sockets held in locals named ``sock`` by the frames an exception unwound from."""
    while tb is not None:
        sock = tb.tb_frame.f_locals.get("sock")
        if isinstance(sock, socket.socket):
            sock.close()
        tb = tb.tb_next


_classes: dict[type[AbstractConnection], type[ReplyTracking]] = {}


def tracked_class(connection_class: type[AbstractConnection]) -> type[ReplyTracking]:
    """The tracked subclass of a redis-py connection class (cached)."""
    if issubclass(connection_class, ReplyTracking):
        return connection_class
    tracked = _classes.get(connection_class)
    if tracked is None:
        tracked = type(f"Tracked{connection_class.__name__}", (ReplyTracking, connection_class), {})
        _classes[connection_class] = tracked
    return tracked

