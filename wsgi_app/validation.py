"""Checks on what clients send: hash names from the URL, JSON bodies. Each failure is an ``HTTPError`` (400)."""
import json

from .errors import HTTPError

__all__ = ["Limits", "flatten_hash", "parse_hash_body", "parse_key"]

# C0 controls, DEL and C1 controls: never part of a key.
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


class Limits:
    """The size limits of ``Settings`` that validation needs, read once."""

    __slots__ = ("max_field_bytes", "max_fields", "max_key_bytes")

    def __init__(self, settings):
        self.max_key_bytes = settings.max_key_bytes
        self.max_fields = settings.max_fields
        self.max_field_bytes = settings.max_field_bytes


def _bad(detail, error="invalid_request"):
    return HTTPError(400, error, detail)


def parse_key(raw, limits):
    """The hash name from a WSGI ``PATH_INFO`` tail (latin-1 decoded bytes, as PEP 3333 says)."""
    try:
        name = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise _bad("the key is not valid UTF-8", "invalid_key") from None
    if not name:
        raise _bad("the key is empty", "invalid_key")
    if len(name.encode("utf-8")) > limits.max_key_bytes:
        raise _bad(f"the key is longer than {limits.max_key_bytes} bytes", "invalid_key")
    if not _CONTROL.isdisjoint(name):
        raise _bad("the key contains control characters", "invalid_key")
    return name


def parse_hash_body(body, limits):
    """The JSON object of string values in ``body``, as a dict; at least one field."""
    try:
        value = json.loads(body)
    # JSONDecodeError is a ValueError; RecursionError: nested too deep
    except (UnicodeError, ValueError, RecursionError):
        raise _bad("the body is not valid JSON", "invalid_json") from None
    if not isinstance(value, dict):
        raise _bad("the body must be a JSON object of string values", "invalid_body")
    if not value:
        raise _bad("the object has no fields; to remove a hash use DELETE", "invalid_body")
    if len(value) > limits.max_fields:
        raise _bad(f"the object has more than {limits.max_fields} fields", "too_many_fields")
    limit = limits.max_field_bytes
    for field, text in value.items():
        if not isinstance(text, str):
            raise _bad(f"the value of {field[:64]!r} is not a string", "invalid_body")
        try:  # strict UTF-8: json.loads lets lone surrogates ("\ud800") through, and Redis cannot store them
            too_long = len(field.encode("utf-8")) > limit or len(text.encode("utf-8")) > limit
        except UnicodeEncodeError:
            detail = "a field name or value holds a lone surrogate, which is not valid Unicode"
            raise _bad(detail, "invalid_body") from None
        if too_long:
            raise _bad(f"a field name or value is longer than {limit} bytes", "invalid_body")
        if not field:
            raise _bad("a field name is empty", "invalid_body")
    return value


def flatten_hash(mapping):
    """``{"a": "1", "b": "2"}`` -> ``["a", "1", "b", "2"]``, the argument list of HSET."""
    args = []
    for field, text in mapping.items():
        args.append(field)
        args.append(text)
    return args
