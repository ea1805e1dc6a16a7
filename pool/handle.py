"""``SharedHandle``: what a multiplexed ``RedisPool.get_connection()`` returns for one redis-py call.

redis-py's clients (``Redis``, ``Pipeline``, ``RedisCluster``, ``PubSub``) borrow a connection, send,
read and give it back. The handle speaks that protocol: ``send_command`` (and ``pack_commands`` +
``send_packed_command`` for a pipeline) queue the command on a shared connection, and ``read_response``
waits for that command's own reply. When a command may not share (see ``pool.commands``) the handle
moves to an exclusive connection *before its first byte* and stays there until it is released, so
transactions, WATCH, blocking commands, pub/sub and ASKING + the redirected command all run on one
connection of their own, exactly as without multiplexing. Replies still owed on the shared path are
collected first, so the caller reads them in the order it sent them.

Any redis-py connection attribute the handle does not implement (``register_connect_callback``,
``_parser``, ``can_read``, ...) also moves it to an exclusive connection and is delegated there, whether
it is read or written (redis-py and its tests set ``password``, ``next_health_check``, ``_parser``, ... on
the connection they hold); the handle's own methods may be patched on one handle, as a connection's can.
"""
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.client import NEVER_DECODE
from redis.utils import SENTINEL

from .commands import may_share
from .errors import PoolError
from .shared import Call, Raised, decode_reply, pack, raise_error

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["SharedHandle"]


class _Batch:
    """``pack_commands()`` of a pipeline whose commands may all share: packed, waiting for ``send_packed_command``."""

    __slots__ = ("commands", "packed")

    def __init__(self, commands: list[Any]) -> None:
        self.commands = commands
        self.packed = [pack(args) for args in commands]


class SharedHandle:
    """A light per-call stand-in for a redis-py connection on a multiplexed pool (see the module docstring)."""

    # __dict__: its methods may be patched per instance, as a connection's can (mock.patch.object)
    __slots__ = ("_pool", "_calls", "_ready", "_exclusive", "_released", "__dict__")

    def __init__(self, pool: "RedisPool") -> None:
        self._pool = pool
        self._calls: deque[Call] = deque()  # sent on a shared connection, replies not yet read, oldest first
        self._ready: deque[Any] = deque()  # replies already in hand (a batch's, or collected before going exclusive)
        self._exclusive: Any = None
        self._released = False

    # -- the commands --------------------------------------------------------------------------------------
    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if self._exclusive is None and may_share(args):
            self._queue(pack(args), NEVER_DECODE not in kwargs)
            return
        self.exclusive().send_command(*args, **kwargs)

    def pack_commands(self, commands: Iterable[Any]) -> Any:
        commands = list(commands)
        if self._exclusive is None and all(may_share(args) for args in commands):
            return _Batch(commands)
        return self.exclusive().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if type(command) is _Batch:
            if self._exclusive is None:
                # Parsed without decoding when the pool decodes: each reply is decoded when read, unless
                # the caller reads it with disable_decoding (NEVER_DECODE commands in a pipeline).
                decode = not self._pool.get_encoder().decode_responses
                self._queue(b"".join(command.packed), decode, len(command.packed))
                return
            command = self._exclusive.pack_commands(command.commands)
        self.exclusive().send_packed_command(command, check_health=check_health)

    def pack_command(self, *args: Any) -> Any:
        if self._exclusive is not None:
            return self._exclusive.pack_command(*args)
        return [pack(args)]

    def _queue(self, data: bytes, decode: bool, count: int = 1) -> None:
        """On the shared path, behind this handle's own commands still unanswered, as on one connection: on
        their shared connection, or (no room there) once their replies are in, never overtaking them."""
        mux = self._pool._forked_mux()
        calls = self._calls
        call = mux.follow(calls[-1].shared, data, decode, count) if calls else None
        if call is None:
            while calls:
                self._collect_next()
            call = mux.submit(data, decode, count)
        calls.append(call)

    def read_response(self, disable_decoding: bool = False, *, timeout: Any = SENTINEL,
                      disconnect_on_error: bool = True, push_request: bool = False) -> Any:
        if not self._ready and self._calls:
            self._collect_next()
        if self._ready:
            reply, needs_decoding, shared = self._ready.popleft()
            if needs_decoding and not disable_decoding and type(reply) is not Raised \
                    and not isinstance(reply, Exception):
                encoder = self._pool.get_encoder()
                try:
                    reply = decode_reply(reply, encoder.encoding, encoder.encoding_errors)
                except UnicodeDecodeError as error:
                    reply = Raised(error)
            return raise_error(self._pool, shared, reply)
        return self.exclusive().read_response(disable_decoding, timeout=timeout,
                                              disconnect_on_error=disconnect_on_error, push_request=push_request)

    def _collect_next(self) -> None:
        """Wait for the oldest call's reply (a batch's replies) and put it in ``_ready``."""
        call = self._calls[0]
        shared = call.shared
        batch = call.replies is not None
        count = len(call.replies) + call.left if batch else 1  # type: ignore[arg-type]
        try:
            reply = shared.wait(call)
        except Exception as error:  # the shared connection failed: each reply of this call raises it
            self._calls.popleft()
            self._ready.extend((Raised(error), False, shared) for _ in range(count))
            return
        except BaseException:
            self._calls.popleft()
            raise
        self._calls.popleft()
        if batch:
            # parsed without decoding on a pool that decodes: decoded when read (unless read with disable_decoding)
            needs_decoding = not call.decode
            self._ready.extend((item, needs_decoding, shared) for item in reply)
        else:
            self._ready.append((reply, False, shared))

    # -- moving to an exclusive connection --------------------------------------------------------------------
    def exclusive(self) -> Any:
        """The exclusive connection of this handle, borrowed now if need be (after collecting shared replies)."""
        conn = self._exclusive
        if conn is None:
            if self._released:
                raise PoolError("this connection was given back to its pool; borrow another")
            while self._calls:
                self._collect_next()
            conn = self._exclusive = self._pool._getconn_exclusive()
            conn.via = self
        return conn

    def holds(self, conn: Any) -> bool:
        """Whether ``conn`` is this handle's exclusive connection now."""
        return self._exclusive is conn

    def release(self) -> None:
        """Give back: replies not read are dropped when they arrive; the exclusive connection goes back."""
        calls, self._calls = self._calls, deque()
        for call in calls:
            call.shared.abandon(call)
        self._ready.clear()
        self._released = True
        conn, self._exclusive = self._exclusive, None
        if conn is not None:
            conn.via = None
            self._pool.putconn(conn)

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        """redis-py after an error: the exclusive connection is closed; a shared one stays for the others."""
        calls, self._calls = self._calls, deque()
        for call in calls:
            call.shared.abandon(call)
        self._ready.clear()
        if self._exclusive is not None:
            self._exclusive.disconnect(*args, **kwargs)

    # -- what redis-py's clients read on every call ------------------------------------------------------------
    def connect(self) -> None:
        if self._exclusive is not None:
            self._exclusive.connect()

    def should_reconnect(self) -> bool:
        return self._exclusive is not None and self._exclusive.should_reconnect()

    def get_protocol(self) -> Any:
        return self._pool.get_protocol()

    @property
    def is_connected(self) -> bool:
        return True

    @property
    def retry(self) -> Any:
        if self._exclusive is not None:
            return self._exclusive.retry
        return self._pool.connection_kwargs["retry"]

    @property
    def password(self) -> Any:
        return self._exclusive.password if self._exclusive is not None else self._pool.connection_kwargs.get("password")

    @password.setter
    def password(self, value: Any) -> None:
        """A client re-authenticating its connection (redis-py's own tests do): the exclusive connection's."""
        self.exclusive().password = value

    @property
    def host(self) -> Any:
        return self._exclusive.host if self._exclusive is not None else self._pool.connection_kwargs.get("host")

    @property
    def port(self) -> Any:
        return self._exclusive.port if self._exclusive is not None else self._pool.connection_kwargs.get("port")

    @property
    def db(self) -> Any:
        return self._pool.connection_kwargs.get("db", 0)

    @property
    def encoder(self) -> Any:
        return self._pool.get_encoder()

    @property
    def socket_timeout(self) -> Any:
        return self._pool.connection_kwargs.get("socket_timeout")

    @property
    def himport_registry(self) -> Any:
        """Pipelines ask for it first; with a registry, HIMPORT needs per-connection state: go exclusive."""
        if self._exclusive is None and self._pool.himport_registry is None:
            return None
        return self.exclusive().himport_registry

    def extract_connection_details(self) -> str:
        """redis-py's debug log of a failed call reads it: it must not borrow a connection in that error path."""
        if self._exclusive is not None:
            return str(self._exclusive.extract_connection_details())
        return f"a shared connection of pool {self._pool.name!r}"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.exclusive(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN or hasattr(SharedHandle, name):  # the handle's own (a method patched on this instance)
            _set_own(self, name, value)
        else:  # a connection attribute: it belongs to the exclusive connection, as a read of it would
            setattr(self.exclusive(), name, value)

    def __delattr__(self, name: str) -> None:
        if name in _OWN or hasattr(SharedHandle, name):
            object.__delattr__(self, name)
        else:  # mock.patch.object restores a patched connection attribute this way
            delattr(self.exclusive(), name)

    def __repr__(self) -> str:
        where = "exclusive" if self._exclusive is not None else "shared"
        return f"<SharedHandle {where} pool={self._pool.name!r} pending={len(self._calls)}>"

    @property
    def exclusive_connection(self) -> Any | None:
        """The exclusive connection this handle moved to, or None while it is on the shared path."""
        return self._exclusive


_OWN = frozenset(SharedHandle.__slots__) - {"__dict__"}
_set_own = object.__setattr__
