"""``PooledRedis``: ``redis.Redis`` with a lean command path for use on a ``RedisPool``.

redis-py 8.1's ``Redis.execute_command`` wraps every command in a retry layer, observability hooks and
maintenance-notification checks: about 8 us per command here, 40% of a raw HGETALL. On a ``RedisPool`` none
of that does anything for us (the pool never retries, checks connections itself and discards any whose
state is unknown), so ``PooledRedis`` sends, reads and gives the connection back. Everything else
(commands, response callbacks, pipelines, pub/sub, scripts) is redis-py's own.

On a multiplexed pool (``RedisPool(multiplex=N)``) a command that may share goes straight to a shared
connection (no handle, no checkout) and its reply through redis-py's response callback, exactly as
``parse_response`` would; every other command takes the path above.

Retries happen only when the caller asked for them (``retry=``, ``retry_on_error``, ``retry_on_timeout`` on
the pool): then a command runs under the connection's ``Retry`` as in redis-py (the connection is closed
after each failure, and reconnects), and a command whose shared connection failed is sent again on another.
Pool errors (``PoolTimeout``, ``PoolClosed``, ...) are never retried: the caller's deadline has passed.
"""
from typing import Any

import redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError

from .commands import may_share
from .errors import PoolError

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
            if conn.retry._retries:  # asked for: redis-py's retry loop around the same send and parse
                return conn.retry.call_with_retry(
                    lambda: self._send_command_parse_response(conn, command_name, *args, **options),
                    lambda _error: conn.disconnect(), _retryable)
            if command_name in DELEGATED:
                return self._send_command_parse_response(conn, command_name, *args, **options)
            conn.send_command(*args, **options)
            return self.parse_response(conn, command_name, **options)
        finally:
            if not self.connection:
                pool.release(conn)

    def _execute_shared(self, mux: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """``parse_response`` of redis-py, on the reply of a shared connection."""
        decode = NEVER_DECODE not in options
        try:
            retry = mux.pool.retry
            if retry._retries:  # asked for: a command whose shared connection failed goes again, on another
                response = retry.call_with_retry(lambda: mux.execute(args, decode), _ignore, _retryable)
            else:
                response = mux.execute(args, decode)
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


def _retryable(error: Exception) -> bool:
    """A failure to retry, if the caller asked for retries: a connection's, never the pool's own."""
    return not isinstance(error, PoolError)


def _ignore(error: Exception) -> None:
    """A failed shared connection needs no closing: it is discarded, and the next call picks another."""
