"""A small HTTP/1.1 client for loopback services: ``request()`` (one request on a fresh connection, a ``Reply``),
``Conn`` (a raw keep-alive connection, one request at a time, for load), and the raw pieces for malformed
traffic: ``http_request()`` builds exact bytes, ``raw_exchange()`` sends them and reads until the server closes,
``response_statuses()`` reads the status codes back.
"""
from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Mapping
from typing import Any

from gevent import socket

__all__ = ["Conn", "HTTPProtocolError", "Reply", "http_request", "raw_exchange", "request", "response_statuses"]

CHUNK = 65536


class Reply:
    """A whole HTTP response: ``status``, ``headers`` (a dict), ``body`` (bytes) and ``json()``."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def request(port: int, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
            timeout: float = 10.0, host: str = "127.0.0.1") -> Reply:
    """One HTTP/1.1 request on a fresh connection; ``body`` may be bytes or a JSON-able object (sent as JSON).

    Raises ``OSError`` (refused, reset, timed out) or ``http.client.HTTPException`` when there is no reply.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sent_headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=sent_headers)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


class HTTPProtocolError(Exception):
    """The server sent bytes that are not an HTTP/1.x reply this client can frame."""


class Conn:
    """One keep-alive HTTP/1.1 connection to a loopback port; one request at a time (no pipelining).

    ``served`` counts the replies read on it. Replies must carry Content-Length (the service's do).
    """

    __slots__ = ("buf", "served", "sock")

    def __init__(self, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.served = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def roundtrip(self, raw: bytes, head: bool = False) -> tuple[int, bytes, bytes, bool]:
        """Send ``raw``; return ``(status, header block (lowercased), body, server closes)``.

        Raises ``OSError`` (reset, timeout), ``EOFError`` (closed mid-reply) or ``HTTPProtocolError``.
        """
        self.sock.sendall(raw)
        return self.read_response(head)

    def read_response(self, head: bool = False) -> tuple[int, bytes, bytes, bool]:
        sock, buf = self.sock, self.buf
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            chunk = sock.recv(CHUNK)
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} bytes of a reply ({self.served} served before)")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
        header = buf[:end].lower()
        if not header.startswith(b"http/1."):
            raise HTTPProtocolError(f"not an HTTP reply: {buf[:80]!r}")
        status = int(header[9:12])
        length = 0 if head or status in (204, 304) or 100 <= status < 200 else _content_length(header)
        if length is None:
            raise HTTPProtocolError(f"reply without Content-Length: {header[:200]!r}")
        start = end + 4
        while len(buf) - start < length:
            chunk = sock.recv(CHUNK)
            if not chunk:
                raise EOFError("connection closed inside a reply body")
            buf += chunk
        body = buf[start:start + length]
        self.buf = buf[start + length:]
        self.served += 1
        closes = b"\r\nconnection: close" in header or header.startswith(b"http/1.0")
        return status, header, body, closes


def _content_length(header: bytes) -> int | None:
    """The Content-Length of a lowercased header block, or None when it has none."""
    at = header.find(b"\r\ncontent-length:")
    if at < 0:
        return None
    stop = header.find(b"\r\n", at + 17)
    return int(header[at + 17:stop if stop >= 0 else None])


# -- raw, possibly malformed, traffic --------------------------------------------------------------------
def http_request(method: str | bytes, path: str | bytes, body: bytes = b"",
                 headers: Iterable[tuple[str | bytes, str | bytes]] = (), version: bytes = b"HTTP/1.1") -> bytes:
    """The bytes of one request; ``path`` and ``headers`` are sent exactly as given (bytes or latin-1 text)."""
    def b(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [b(method) + b" " + b(path) + b" " + version, b"Host: 127.0.0.1"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a fresh connection, half-close it, and return all the server sent until it closed.

    Raises ``socket.timeout`` if the server neither answers nor closes within ``timeout``, and ``OSError`` if
    the connection cannot be made.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading it all
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(CHUNK)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


NOT_HTTP = 999  # the status given to bytes that are not an HTTP reply


def response_statuses(data: bytes, method: str = "GET") -> list[int]:
    """The status codes of the responses in ``data``, one after the other, bodies skipped by Content-Length
    (none after a HEAD, a 204 or a 304). Bytes that are not an HTTP reply count as one status ``NOT_HTTP``."""
    statuses: list[int] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0 or not data.startswith(b"HTTP/1.", pos):
            if not statuses:
                statuses.append(NOT_HTTP)
            break
        header = data[pos:end].lower()
        try:
            status = int(header[9:12])
        except ValueError:
            statuses.append(NOT_HTTP)
            break
        statuses.append(status)
        length = 0
        if not (method == "HEAD" and len(statuses) == 1) and status not in (204, 304):
            length = _content_length(header) or 0
        pos = end + 4 + length
    return statuses
