"""Every way a request can be refused, as one exception that carries its HTTP status and JSON error body."""

__all__ = ["HTTPError", "HashTooLarge", "WrongType"]


class HTTPError(Exception):
    """Answer the request with ``status`` and ``{"error": error, "detail": detail}``, plus ``headers``."""

    def __init__(self, status, error, detail, headers=()):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = list(headers)


class WrongType(Exception):
    """The key exists in Redis but holds another type than a hash."""


class HashTooLarge(Exception):
    """The hash holds (or a PATCH would make it hold) more than MAX_HASH_FIELDS fields or MAX_HASH_BYTES bytes."""

    def __init__(self, fields, size):
        super().__init__(f"{fields} fields, {size} bytes")
        self.fields = fields
        self.size = size
