"""The service's settings: every environment variable it reads, parsed and validated here and nowhere else.

``load()`` returns a frozen ``Settings``; an invalid value raises ``SettingsError`` naming the variable, so a
bad deployment stops at start-up instead of failing on the first request. ``gunicorn.conf.py`` reads its own
server settings through ``env_int`` / ``env_float`` so their errors look the same.
"""
import math
import os
from dataclasses import dataclass

from pool.urls import parse_redis_url, redact_url

__all__ = ["Settings", "SettingsError", "env_float", "env_int", "env_str", "load", "redact_url"]

DEFAULT_DATA_DIR = "data"
EMBEDDED_SOCKET_NAME = "redis.sock"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot run with."""


@dataclass(frozen=True)
class Settings:
    redis_url: str  # REDIS_URL, or the embedded server's unix socket when REDIS_URL is unset
    embedded: bool  # True when REDIS_URL is unset: gunicorn's master runs a private redis-server
    data_dir: str  # REDIS_DATA_DIR, absolute: the embedded server's data and socket
    pool_max_size: int
    pool_min_size: int
    pool_multiplex: int  # shared connections per worker for the routes' commands; 0: every command borrows its own
    pool_timeout: float  # seconds to wait for a free connection before answering 503; 0: do not wait
    pool_max_waiting: int  # 0: no limit on requests queued for a connection
    pool_close_timeout: float  # worker_exit: seconds to wait for borrowed connections
    request_timeout: float  # seconds before a request is abandoned with 504; 0: no deadline
    retry_after: int  # the Retry-After header of a 503, seconds
    key_prefix: str
    default_key: str
    api_token: str  # empty: writes need no token
    max_body_bytes: int
    max_key_bytes: int
    max_fields: int
    max_field_bytes: int  # per field name and per value
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it); empty: this process's metrics only
    metrics_interval: float = 1.0  # METRICS_INTERVAL: seconds between readings of the pool's stats; 0: at scrape only
    max_hash_fields: int = 1000  # MAX_HASH_FIELDS: fields a hash may hold (PATCH refuses to grow it beyond)
    max_hash_bytes: int = 1024 * 1024  # MAX_HASH_BYTES: bytes of field names and values a hash may hold
    readyz_check_interval: float = 2.0  # READYZ_CHECK_INTERVAL: seconds /readyz reuses its permission check


def env_str(name, default, environ=None):
    environ = os.environ if environ is None else environ
    return environ.get(name, default)


def env_int(name, default, *, minimum=None, maximum=None, environ=None):
    """``int(environ[name])`` or ``default``; raises ``SettingsError`` naming ``name`` when invalid or out of range."""
    raw = env_str(name, None, environ)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    return _check_range(name, value, minimum, maximum)


def env_float(name, default, *, minimum=None, maximum=None, environ=None):
    """Like ``env_int`` for a number of seconds; rejects nan and infinity."""
    raw = env_str(name, None, environ)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    return _check_range(name, value, minimum, maximum)


def _check_range(name, value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value


def load(environ=None):
    """Read and validate all service settings from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    data_dir = os.path.abspath(env_str("REDIS_DATA_DIR", "", env) or DEFAULT_DATA_DIR)
    redis_url = env_str("REDIS_URL", "", env).strip()
    embedded = not redis_url
    if embedded:
        redis_url = "unix://" + embedded_socket_path(data_dir)
    else:
        check_redis_url(redis_url)
    max_size = env_int("POOL_MAX_SIZE", 10, minimum=1, environ=env)
    max_body = env_int("MAX_BODY_BYTES", 64 * 1024, minimum=2, environ=env)
    max_fields = env_int("MAX_FIELDS", 1000, minimum=1, maximum=3000, environ=env)  # Lua unpack() limit
    settings = Settings(
        redis_url=redis_url,
        embedded=embedded,
        data_dir=data_dir,
        pool_max_size=max_size,
        pool_min_size=env_int("POOL_MIN_SIZE", 0, minimum=0, maximum=max_size, environ=env),
        pool_multiplex=_pool_multiplex(max_size, env),
        pool_timeout=env_float("POOL_TIMEOUT", 1.0, minimum=0.0, environ=env),
        pool_max_waiting=env_int("POOL_MAX_WAITING", 0, minimum=0, environ=env),
        pool_close_timeout=env_float("POOL_CLOSE_TIMEOUT", 2.0, minimum=0.0, environ=env),
        request_timeout=env_float("REQUEST_TIMEOUT", 10.0, minimum=0.0, environ=env),  # 0: off, as everywhere
        retry_after=env_int("RETRY_AFTER", 1, minimum=0, environ=env),
        key_prefix=env_str("KEY_PREFIX", "greenpool:", env),
        default_key=env_str("DEFAULT_KEY", "key", env),
        api_token=env_str("API_TOKEN", "", env),
        max_body_bytes=max_body,
        max_key_bytes=env_int("MAX_KEY_BYTES", 256, minimum=1, maximum=64 * 1024, environ=env),
        max_fields=max_fields,
        max_field_bytes=env_int("MAX_FIELD_BYTES", 16 * 1024, minimum=1, environ=env),
        metrics_dir=env_str("PROMETHEUS_MULTIPROC_DIR", "", env),
        metrics_interval=env_float("METRICS_INTERVAL", 1.0, minimum=0.0, environ=env),
        **_hash_bounds(env, max_fields, max_body),
        readyz_check_interval=env_float("READYZ_CHECK_INTERVAL", 2.0, minimum=0.0, environ=env),
    )
    if not settings.default_key:
        raise SettingsError("DEFAULT_KEY must not be empty")
    return settings


def _hash_bounds(env, max_fields, max_body):
    """MAX_HASH_FIELDS and MAX_HASH_BYTES: at least what one PUT may write (MAX_FIELDS, MAX_BODY_BYTES), so a
    valid PUT always fits; together they bound every reply (GET's and PATCH's: the whole hash)."""
    bounds = {"max_hash_fields": env_int("MAX_HASH_FIELDS", max_fields, minimum=1, environ=env),
              "max_hash_bytes": env_int("MAX_HASH_BYTES", max(1024 * 1024, max_body), minimum=1, environ=env)}
    for name, value, floor, floor_name in (("MAX_HASH_FIELDS", bounds["max_hash_fields"], max_fields, "MAX_FIELDS"),
                                           ("MAX_HASH_BYTES", bounds["max_hash_bytes"], max_body, "MAX_BODY_BYTES")):
        if value < floor:
            raise SettingsError(f"{name} must be >= {floor_name} ({floor}), got {value}")
    return bounds


DEFAULT_MULTIPLEX = 2


def _pool_multiplex(max_size, env):
    """POOL_MULTIPLEX, below POOL_MAX_SIZE (the pool keeps one connection at least for exclusive commands).
    Unset, it is 2, or less when POOL_MAX_SIZE leaves no room (POOL_MAX_SIZE=2: 1; POOL_MAX_SIZE=1: 0, off)."""
    if env_str("POOL_MULTIPLEX", "", env).strip() == "":
        return min(DEFAULT_MULTIPLEX, max_size - 1)
    value = env_int("POOL_MULTIPLEX", DEFAULT_MULTIPLEX, minimum=0, environ=env)
    if value and value >= max_size:
        raise SettingsError(f"POOL_MULTIPLEX must be below POOL_MAX_SIZE ({max_size}), got {value}: the pool keeps "
                            "connections of its own for commands that may not share; 0 turns multiplexing off")
    return value


def check_redis_url(url):
    """Raise ``SettingsError`` (one line, naming REDIS_URL, never showing a password) unless ``url`` is a URL the
    pool serves. Every form is parsed in full now by ``pool.urls.parse_redis_url``, the parser the worker's pool
    uses (scheme, hosts, ports, db, service name, each query option's value), so a typo stops start-up
    instead of failing the first request."""
    try:
        parse_redis_url(url)
    except ValueError as error:  # pool.urls redacts what it can; _scrub catches malformed user info too
        raise SettingsError(_scrub(f"REDIS_URL is invalid: {error}", url)) from None
    return url


def _scrub(message, url):
    """``message`` without the URL's password even when a reserved character in it (``/``, ``?``, ``#``) was
    not percent-encoded, which defeats the redaction of a parsed URL. Errs on the side of hiding too much."""
    secret = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return message.replace(secret, "***") if secret and secret != "***" else message


def embedded_socket_path(data_dir):
    """The unix socket of the embedded redis-server that keeps its data in ``data_dir``."""
    return os.path.join(data_dir, EMBEDDED_SOCKET_NAME)


def check_socket_path(path):
    """Raise ``SettingsError`` if ``path`` is too long for a unix socket (checked when the server starts)."""
    if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes on Linux, 104 on macOS
        raise SettingsError(f"REDIS_DATA_DIR is too long for a unix socket path: {path!r}; choose a shorter one")
    return path
