"""The pool options and what each accepts, checked in one place by the constructors and by the URL parser.

"0" means the same for every period and limit: off. ``max_waiting=0``: no limit on queued checkouts;
``max_lifetime``, ``max_idle``, ``leak_threshold``, ``health_check_interval`` and ``master_check_interval``
``=0``: never (None, where accepted, means the same). The one exception is ``timeout``, the checkout's
wait: 0 means "do not wait" (take a free connection or fail at once), because a wait of zero is a useful
request of its own and None already says "wait forever". ``max_size`` has no "off": the pool is bounded.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Union

__all__ = ["OPTIONS", "Option", "check", "from_text"]

Value = Union[int, float, str, bool, None]  # noqa: UP007 -- a runtime alias: X | Y needs Python 3.10 types

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclasses.dataclass(frozen=True)
class Option:
    """What one option accepts: a ``kind`` (int, float, str or bool), a ``minimum`` for numbers, and
    whether None is accepted."""

    kind: type
    minimum: float = 0
    none_ok: bool = False

    def describe(self) -> str:
        if self.kind is str:
            return "a string"
        if self.kind is bool:
            return "a boolean (1/0, true/false, yes/no, on/off)"
        what = "an integer" if self.kind is int else "a number"
        return f"{what} >= {self.minimum:g}{' or None' if self.none_ok else ''}"

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.none_ok
        if self.kind is str:
            return isinstance(value, str)
        if isinstance(value, bool):  # True is an int to Python, not to a pool option
            return self.kind is bool
        if self.kind is bool:
            return False
        kinds = (int,) if self.kind is int else (int, float)
        return isinstance(value, kinds) and not math.isnan(value) and value >= self.minimum

    def parse(self, text: str) -> Value:
        """The value of a URL query string's ``text``; ValueError when it does not parse."""
        if self.kind is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE or lowered in _FALSE:
                return lowered in _TRUE
            raise ValueError(text)
        return self.kind(text)  # type: ignore[no-any-return]  # int, float or str of a string


# Every pool option of RedisPool, SentinelRedisPool and ClusterPool; each constructor checks its own.
OPTIONS = {
    "max_size": Option(int, minimum=1),
    "max_connections": Option(int, minimum=1, none_ok=True),  # redis-py's name for max_size
    "min_size": Option(int),
    "timeout": Option(float, none_ok=True),
    "max_waiting": Option(int),
    "max_lifetime": Option(float, none_ok=True),
    "max_idle": Option(float, none_ok=True),
    "leak_threshold": Option(float, none_ok=True),
    "health_check_interval": Option(float, none_ok=True),
    "name": Option(str, none_ok=True),
    "multiplex": Option(int),  # shared connections; 0: off
    "multiplex_max_in_flight": Option(int, minimum=1),
    "multiplex_max_queued_bytes": Option(int, minimum=1),
    "master_check_interval": Option(float, none_ok=True),  # SentinelRedisPool only
    "min_other_sentinels": Option(int),  # SentinelRedisPool only
}


def check(name: str, value: object, option: Option | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is acceptable (``option`` defaults to OPTIONS')."""
    option = OPTIONS[name] if option is None else option
    if not option.accepts(value):
        raise ValueError(f"{name} must be {option.describe()}, got {value!r}")


def from_text(name: str, text: str, option: Option, where: str) -> Value:
    """``text`` (from a URL query) parsed and checked as ``option``; the ValueError names ``name`` and ``where``."""
    try:
        value = option.parse(text)
    except (TypeError, ValueError):
        value = None
        problem = True
    else:
        problem = not option.accepts(value)
    if problem:
        raise ValueError(f"{name} must be {option.describe()}, got {text!r} (in {where})")
    return value
