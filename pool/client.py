"""``PooledRedis``: ``redis.Redis`` with a lean command path for use on a ``RedisPool``.

redis-py 8.1's ``Redis.execute_command`` wraps every command in a retry layer, observability hooks and
maintenance-notification checks: about 8 us per command here, 40% of a raw HGETALL. On a ``RedisPool`` none
of that does anything for us (the pool never retries, checks connections itself and discards any whose
state is unknown), so ``PooledRedis`` sends, reads and gives the connection back. Everything else
(commands, response callbacks, pipelines, pub/sub, scripts) is redis-py's own.
"""
from typing import Any

import redis

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
