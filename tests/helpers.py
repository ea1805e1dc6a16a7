"""Small helpers shared by the tests: wait on state instead of sleeping, and see the pool from the server."""
import time

import gevent
import redis


def wait_until(predicate, timeout=5.0, what="condition", interval=0.002):
    """Poll ``predicate`` (yielding to other greenlets) until it is truthy and return its value.

    A Redis or socket error raised by ``predicate`` counts as "not yet" (servers being started or failed over);
    AssertionError, naming the last such error, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as error:
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")
        gevent.sleep(interval)


def server_clients(admin, pool):
    """The server's view of a pool's connections: the CLIENT LIST entries carrying its client name."""
    return [c for c in admin.client_list() if c["name"] == f"greenpool:{pool.name}"]
