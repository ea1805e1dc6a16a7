"""``PooledRedis``: ``redis.Redis`` with a lean command path for use on a ``RedisPool``.

redis-py 8.1's ``Redis.execute_command`` wraps every command in a retry layer, observability hooks and
maintenance-notification checks: about 8 us per command here, 40% of a raw HGETALL. On a ``RedisPool`` none
of that does anything for us (the pool never retries, checks connections itself and discards any whose
state is unknown), so ``PooledRedis`` sends, reads and gives the connection back. Everything else
(commands, response callbacks, pipelines, pub/sub, scripts) is redis-py's own.

On a multiplexed pool (``RedisPool(multiplex=N)``) a command that may share goes straight to a shared
connection (no handle, no checkout) and its reply through redis-py's response callback, exactly as
``parse_response`` would; every other command takes the path above.
"""
from typing import Any

import redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError

from .commands import may_share

__all__ = ["PooledRedis"]

# HIMPORT SET needs per-connection preparation that redis-py does in _send_command_parse_response.
DELEGATED = frozenset(
    spelling
    for name in ("HIMPORT", "HIMPORT SET")
    for spelling in (name, name.lower(), name.encode(), name.lower().encode())
)


class PooledRedis(redis.Redis):
    """A ``redis.Redis`` whose commands go straight to a pooled connection: send, read, give back."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        pool = self.connection_pool
        if self.connection is None:
            mux = getattr(pool, "_mux", None)
            if mux is not None and may_share(args):
                return self._execute_shared(mux, args, options)
        conn = self.connection or pool.get_connection()
        try:
            command_name = args[0]
            if command_name in DELEGATED:
                return self._send_command_parse_response(conn, command_name, *args, **options)
            conn.send_command(*args, **options)
            return self.parse_response(conn, command_name, **options)
        finally:
            if not self.connection:
                pool.release(conn)

    def _execute_shared(self, mux: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """``parse_response`` of redis-py, on the reply of a shared connection."""
        try:
            response = mux.execute(args, NEVER_DECODE not in options)
        except ResponseError:
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise
        if options:
            options.pop(NEVER_DECODE, None)
            options.pop(EMPTY_RESPONSE, None)
            options.pop("keys", None)
        callback = self.response_callbacks.get(args[0])
        return response if callback is None else callback(response, **options)
