"""What the service answers when Redis refuses a command or cannot be reached: one status, error code and sentence
per cause, in our words. A client never sees redis-py's text, which names internal hosts, ports and socket paths;
the details go to the log instead, without passwords, and at most once per ``LOG_INTERVAL`` per error code.

Redis 7 gives most refusals their own error code (``OOM``, ``READONLY``, ``MISCONF``, ``NOPERM``, ...), also from
inside a script. Redis 6 wraps an error inside a script as ``ERR Error running script ...: -READONLY ...``, and
both say ``ERR ... can't run this command`` for an ACL refusal inside a script: those are recognised by their text.
"""
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pool.errors import PoolClosed, PoolTimeout, TooManyRequests
from pool.urls import parse_redis_url

__all__ = ["LOG_INTERVAL", "REFUSALS", "Refusal", "RefusalLog", "classify", "classify_text", "secrets_in_url"]

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between two log lines about refusals with the same error code


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer to a Redis failure: ``status``, ``error`` code, ``detail``, whether waiting may help (then
    the response carries ``Retry-After``) and whether Redis refused before running anything (``unchanged``)."""

    status: int
    error: str
    detail: str
    retry: bool
    unchanged: bool = False

    @property
    def body_detail(self):
        """``detail``, saying so when nothing was changed."""
        return self.detail + "; nothing was changed" if self.unchanged else self.detail


OOM = Refusal(507, "insufficient_storage", "Redis is at its memory limit and refuses writes", False, True)
NO_PERMISSION = Refusal(503, "redis_no_permission", "the service's Redis user lacks a permission this request needs",
                        False, True)
READ_ONLY = Refusal(503, "redis_read_only", "the Redis server is a read-only replica and refuses writes", True, True)
CANNOT_PERSIST = Refusal(503, "redis_cannot_persist",
                         "Redis refuses writes because it cannot save its data to disk (MISCONF)", True, True)
LOADING = Refusal(503, "redis_loading", "Redis is loading its data set into memory", True)
BUSY = Refusal(503, "redis_busy", "Redis is busy running a long script", True)
NOT_SERVING = Refusal(503, "redis_not_serving", "Redis is not serving data now (a replica without its master, "
                      "or a cluster that is down or moving this key)", True)
MAX_CLIENTS = Refusal(503, "redis_max_clients", "Redis refuses new connections (maxclients reached)", True)
AUTH_FAILED = Refusal(503, "redis_auth_failed", "the service could not authenticate to Redis", False)
POOL_TIMEOUT = Refusal(503, "unavailable", "no Redis connection became free within POOL_TIMEOUT", True)
TOO_MANY_WAITING = Refusal(503, "unavailable", "too many requests are already waiting for a Redis connection", True)
CLOSING = Refusal(503, "unavailable", "this worker is shutting down", True)
REDIS_TIMEOUT = Refusal(503, "unavailable", "Redis did not answer in time", True)
UNREACHABLE = Refusal(503, "unavailable", "Redis cannot be reached", True)
REDIS_ERROR = Refusal(500, "redis_error", "Redis refused the command; the server log has the details", False)

REFUSALS = (OOM, NO_PERMISSION, READ_ONLY, CANNOT_PERSIST, LOADING, BUSY, NOT_SERVING, MAX_CLIENTS, AUTH_FAILED,
            POOL_TIMEOUT, TOO_MANY_WAITING, CLOSING, REDIS_TIMEOUT, UNREACHABLE, REDIS_ERROR)

_BY_CODE = {
    "OOM": OOM, "NOPERM": NO_PERMISSION, "READONLY": READ_ONLY, "MISCONF": CANNOT_PERSIST, "LOADING": LOADING,
    "BUSY": BUSY, "MASTERDOWN": NOT_SERVING, "CLUSTERDOWN": NOT_SERVING, "TRYAGAIN": NOT_SERVING,
    "NOAUTH": AUTH_FAILED, "WRONGPASS": AUTH_FAILED,
}
# Inside a script (Redis 6: any error; Redis 7: an ACL refusal), found in the text of an ERR reply.
_MARKERS = (("-OOM ", OOM), ("-READONLY ", READ_ONLY), ("-MISCONF ", CANNOT_PERSIST), ("-NOPERM ", NO_PERMISSION),
            ("can't run this command", NO_PERMISSION), ("-BUSY ", BUSY))
# By class first: redis-py strips the codes it knows from the message (and a copied error may lose status_code).
_CLASSES = ((OutOfMemoryError, OOM), (NoPermissionError, NO_PERMISSION), (ReadOnlyError, READ_ONLY),
            (BusyLoadingError, LOADING), (MasterDownError, NOT_SERVING), (ClusterDownError, NOT_SERVING),
            (TryAgainError, NOT_SERVING), (AuthenticationError, AUTH_FAILED),
            (PoolTimeout, POOL_TIMEOUT), (TooManyRequests, TOO_MANY_WAITING), (PoolClosed, CLOSING),
            (RedisTimeoutError, REDIS_TIMEOUT))


def classify(exc):
    """The ``Refusal`` for a redis-py or pool error."""
    for cls, refusal in _CLASSES:
        if isinstance(exc, cls):
            return refusal
    by_code = _BY_CODE.get(getattr(exc, "status_code", None) or "")
    if by_code is not None:
        return by_code
    if isinstance(exc, ResponseError):
        return classify_text(str(exc))
    if isinstance(exc, RedisConnectionError) and "max number of clients reached" in str(exc):
        return MAX_CLIENTS  # redis-py 8.2 raises MaxClientsReachedError, 8.1 a plain ConnectionError
    return UNREACHABLE  # a ConnectionError: refused, reset, unknown host, bad socket path, the pool backing off


def classify_text(text):
    """The ``Refusal`` for the text of an error reply (an ERR from a script, or a pcall's error inside one)."""
    code = text.partition(" ")[0]
    found = _BY_CODE.get(code)
    if found is not None:
        return found
    for marker, refusal in _MARKERS:
        if marker in text:
            return refusal
    return REDIS_ERROR


def secrets_in_url(url):
    """The passwords of a Redis URL as they may appear in a message (decoded and as written), for redaction."""
    try:
        target = parse_redis_url(url)
    except ValueError:
        return ()
    found = {target.connection_kwargs.get("password"), target.sentinel_kwargs.get("password")}
    found.discard(None)
    found.discard("")
    return tuple(found | {quote(secret, safe="") for secret in found})


class RefusalLog:
    """Logs refused requests with the error's own text, passwords replaced by ``***``, at most once per
    ``interval`` seconds per error code (with the count of those not logged in between)."""

    def __init__(self, secrets=(), interval=LOG_INTERVAL):
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))
        self.interval = interval
        self._next = {}  # error code -> monotonic time of the next line allowed
        self._quiet = {}  # error code -> refusals not logged since the last line

    def note(self, refusal, what, cause):
        """Log (or count) ``refusal`` of request ``what`` ("PUT /hashes/x") caused by ``cause`` (an exception or
        a text)."""
        code, now = refusal.error, time.monotonic()
        if now < self._next.get(code, 0.0):
            self._quiet[code] = self._quiet.get(code, 0) + 1
            return
        self._next[code] = now + self.interval
        quiet = self._quiet.pop(code, 0)
        more = f" ({quiet} more since the last report)" if quiet else ""
        if isinstance(cause, BaseException):
            cause = f"{type(cause).__name__}: {cause}"
        log.warning("%d %s on %s: %s%s", refusal.status, code, what, self.redact(cause), more)

    def redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
