"""Call a WSGI application in-process, as a server would: ``wsgi_call(app, method, path, body)`` runs one request
and returns ``(status code, headers, decoded JSON body or None)``, checking the framing of JSON replies."""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["JSON", "wsgi_call"]

JSON = "application/json"


def wsgi_call(app: Callable[..., Iterable[bytes]], method: str, path: str, body: Any = None,
              content_type: str | None = JSON, headers: Mapping[str, str] | None = None,
              content_length: int | None = None) -> tuple[int, dict[str, str], Any]:
    """One request through the WSGI callable ``app``. ``body``: bytes, or a JSON-able object sent as JSON;
    ``headers`` become ``HTTP_*`` keys; ``content_length`` overrides the length sent in CONTENT_LENGTH."""
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    length = len(raw) if content_length is None else content_length
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(raw),
        "CONTENT_LENGTH": str(length) if raw or content_length else "",
    }
    if content_type and body is not None:
        environ["CONTENT_TYPE"] = content_type
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    payload = b"".join(app(environ, start_response))
    if payload:
        assert captured["headers"]["Content-Type"] == JSON
        assert int(captured["headers"]["Content-Length"]) == len(payload)
    return captured["status"], captured["headers"], json.loads(payload) if payload else None
