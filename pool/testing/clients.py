"""The Redis server's view of who is connected: CLIENT LIST filtered by the names the pools give their connections;
and of what it holds: ``dump_all`` (every key, exactly), to prove that a refused write changed nothing.

A ``RedisPool`` names each connection ``greenpool:<pool name>`` (``CLIENT SETNAME``); the service's pools are
named ``web-<worker pid>``.
"""
from __future__ import annotations

from typing import Any

import redis

__all__ = ["SERVICE_CLIENT_PREFIX", "dump_all", "server_clients", "service_clients"]

SERVICE_CLIENT_PREFIX = "greenpool:web-"


def server_clients(admin: redis.Redis, pool: Any) -> list[dict[str, Any]]:
    """The CLIENT LIST entries of one pool's connections (those carrying its client name)."""
    name = f"greenpool:{pool.name}"
    return [c for c in admin.client_list() if c.get("name") == name]


def service_clients(admin: redis.Redis) -> list[dict[str, Any]]:
    """The CLIENT LIST entries of the service's connections, from every worker."""
    return [c for c in admin.client_list() if str(c.get("name", "")).startswith(SERVICE_CLIENT_PREFIX)]


def dump_all(admin: redis.Redis) -> dict[Any, Any]:
    """Everything in the server's current db, exactly: ``{key: DUMP of the key}``."""
    return {key: admin.dump(key) for key in admin.keys("*")}
