"""Seeded malformed and hostile HTTP requests for the service, and the rule for judging its answers.

``FuzzGenerator(seed, token, names).next()`` returns ``(kind, raw bytes, method of the first request)``. Every
request carries at least one defect, so none may change Redis: writes without the token or with a wrong one,
or with the token and a body, key or framing that must be refused. Send them with ``http.raw_exchange`` and
read the answers with ``http.response_statuses``; ``acceptable(status, raw)`` says whether an answer is one a
correct server may give. Before a run, ``write_fixtures(admin)`` creates the keys of other Redis types that the
``type_confusion`` requests aim at (without them a write there would create a hash).
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import redis

__all__ = ["TYPE_CONFUSION_KEYS", "UNKNOWN_CODING", "FuzzGenerator", "acceptable", "write_fixtures"]

# gunicorn answers 501 Not Implemented to a transfer coding it does not know, as RFC 9112 section 6.1 says
UNKNOWN_CODING = re.compile(rb"(?im)^transfer-encoding\s*:(?!\s*chunked\s*$)")
TYPE_CONFUSION_KEYS = ("fuzz:string", "fuzz:list")  # under the service's KEY_PREFIX
Request = tuple[bytes, str]  # raw bytes, method of the first request


def acceptable(status: int, raw: bytes) -> bool:
    """An answer a correct server may give to a malformed request: an interim 1xx, a 4xx, or 501 to a transfer
    coding it does not implement (RFC 9112 6.1; gunicorn answers so before the app sees the request)."""
    if 100 <= status < 200 or 400 <= status < 500:
        return True
    return status == 501 and UNKNOWN_CODING.search(raw.partition(b"\r\n\r\n")[0]) is not None


def write_fixtures(admin: redis.Redis, prefix: str = "greenpool:") -> None:
    """Create the string and the list that the ``type_confusion`` requests read and try to write."""
    string_key, list_key = (prefix + key for key in TYPE_CONFUSION_KEYS)
    admin.set(string_key, "not a hash")
    admin.delete(list_key)
    admin.rpush(list_key, "a", "b")


class FuzzGenerator:
    """Seeded malformed or hostile requests. Each carries at least one defect, so none may change Redis:
    writes without the token or with a wrong one, or with the token and a body, key or framing that must be
    refused."""

    def __init__(self, seed: int, token: str, names: list[str]) -> None:
        if not token or not names:
            raise ValueError("FuzzGenerator needs the service's token and at least one hash name")
        self.rng = random.Random(seed)
        self.token = token
        self.names = names
        self.kinds: list[tuple[str, Callable[[], Request]]] = [
            (name[4:], getattr(self, name)) for name in sorted(dir(self)) if name.startswith("gen_")]

    def next(self) -> tuple[str, bytes, str]:
        """One request: ``(kind, raw bytes, method of the first request)``."""
        kind, make = self.rng.choice(self.kinds)
        raw, method = make()
        return kind, raw, method

    # pieces
    def junk(self, n: int) -> bytes:
        return bytes(self.rng.randrange(256) for _ in range(n))

    def name(self) -> str:
        return self.rng.choice(self.names)

    def auth(self) -> bytes:
        return b"Authorization: Bearer %s\r\n" % self.token.encode()

    def write_method(self) -> bytes:
        return self.rng.choice([b"PUT", b"PATCH", b"DELETE"])

    def body_request(self, body: bytes, *, auth: bool = True, ctype: bytes | None = b"application/json",
                     method: bytes | None = None, path: bytes | None = None, extra: bytes = b"") -> Request:
        method = method or self.rng.choice([b"PUT", b"PATCH"])
        path = path or b"/hashes/" + self.name().encode()
        head = b"%s %s HTTP/1.1\r\nHost: f\r\n" % (method, path)
        if auth:
            head += self.auth()
        if ctype is not None:
            head += b"Content-Type: " + ctype + b"\r\n"
        return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body, method.decode()

    # generators: each returns (raw bytes, method of the first request)
    def gen_garbage(self) -> Request:
        return self.junk(self.rng.randrange(1, 400)), "?"

    def gen_garbage_line(self) -> Request:
        line = self.junk(self.rng.randrange(1, 60)).replace(b"\r", b"").replace(b"\n", b"")
        return line + b"\r\n\r\n", "?"

    def gen_bad_request_line(self) -> Request:
        options = [
            b"GET\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/9.9\r\nHost: f\r\n\r\n", b"GET / HTTP/1\r\n\r\n",
            b"GET  /  HTTP/1.1\r\nHost: f\r\n\r\n", b"G\x00T / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\rHost: f\r\n\r\n",
            b"GET /hashes/a b HTTP/1.1\r\nHost: f\r\n\r\n", b"GET * HTTP/1.1\r\nHost: f\r\n\r\n",
            b"GET http://evil.example/hashes/x HTTP/1.1\r\nHost: f\r\n\r\n", b" GET / HTTP/1.1\r\n\r\n",
            b"GET /\t HTTP/1.1\r\n\r\n", b"\r\n\r\nGET / HTTP/1.1\r\nHost: f\r\n\r\n", b"GET / HTTP/1.1\n\n",
            b"GET /" + b"a" * self.rng.choice([5000, 9000, 20000]) + b" HTTP/1.1\r\nHost: f\r\n\r\n",
            b"CONNECT f:443 HTTP/1.1\r\nHost: f\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /hashes/x HTTP/1.1\r\nHost: f\r\n\r\n" + b"\x16\x03\x01\x02\x00\x01",  # TLS after HTTP
        ]
        raw = self.rng.choice(options)
        return raw, raw.split(b" ", 1)[0].decode("latin-1")

    def gen_method(self) -> Request:
        method = self.rng.choice([b"get", b"TRACE", b"OPTIONS", b"FOO", b"POST", b"PUT", b"DELETE", b"PATCH",
                                  b"GET\x7f", b"M" * 300, b"PROPFIND", b"HEAD"])
        path = self.rng.choice([b"/", b"/hashes/", b"/hashes/" + self.name().encode(), b"/stats", b"/metrics",
                                b"/nope", b"/readyz"])
        auth = b"" if method in (b"PUT", b"PATCH", b"DELETE") else self.auth() * self.rng.randrange(2)
        return b"%s %s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, path, auth), method.decode("latin-1")

    def gen_hostile_path(self) -> Request:
        name = self.name().encode()
        path = self.rng.choice([
            b"/hashes/%0d%0aSET%20x%201", b"/hashes/%00", b"/hashes/%ff%fe", b"/hashes/%c0%af", b"/hashes/%",
            b"/hashes/%zz", b"/hashes/../../etc/passwd", b"/hashes/" + b"k" * 300, b"/hashes/" + b"%41" * 400,
            b"/hashes/" + name + b"?x=%00&y", b"//hashes/" + name, b"/hashes//" + name, b"/hashes/%2e%2e/",
            b"/hashes/\xff\xfe", b"/hashes/%e2%80%ae" + name, b"/hashes/a%0Ab", b"/hashes/%7f", b"/hashes/%c2%85",
            b"/HASHES/" + name, b"/hashes/" + name + b"#frag", b"/hashes/" + name + b"/%2F..", b"/hashes/*",
        ])
        method = self.rng.choice([b"GET", b"HEAD", b"PUT", b"PATCH", b"DELETE"])
        if method in (b"PUT", b"PATCH"):
            body = b'{"a":"1"}'
            if self.rng.random() < 0.5 or b"%" not in path:  # no token: must be refused before anything else
                return (b"%s %s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (method, path, len(body), body)), method.decode()
            if path.startswith(b"/hashes/") and self._valid_key(path[8:]):
                body = b'{"a":1}'  # the key might be valid: make the body invalid
            return self.body_request(body, method=method, path=path)
        auth = b"" if method == b"DELETE" else self.auth()
        return b"%s %s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, path, auth), method.decode()

    @staticmethod
    def _valid_key(raw: bytes) -> bool:
        try:
            key = unquote_to_bytes(raw.split(b"?")[0].split(b"#")[0]).decode("utf-8")
        except UnicodeError:
            return False
        return bool(key) and len(key.encode()) <= 256 and not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in key)

    def gen_headers(self) -> Request:
        name = self.name().encode()
        headers = self.rng.choice([
            b"X-A: 1\r\n" * self.rng.choice([101, 200, 1000]),
            b"X-Big: " + b"a" * self.rng.choice([9000, 20000, 70000]) + b"\r\n",
            b"Bad Header: 1\r\n", b"X-\x00: 1\r\n", b": empty-name\r\n", b"X-Fold: a\r\n  folded\r\n",
            b"Host: a\r\nHost: b\r\n", b"X-A: \xff\xfe\r\n", b"NoColon\r\n", b"X-A:" + b" " * 10000 + b"1\r\n",
            b"Authorization: Bearer " + b"x" * 5000 + b"\r\n",
            b"Authorization: bearer " + self.token.encode() + b"x\r\n",
            b"Expect: 100-continue\r\n", b"Connection: upgrade\r\nUpgrade: websocket\r\n",
            b"Content-Length: abc\r\n", b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n",
        ])
        method = self.rng.choice([b"GET", b"DELETE", b"HEAD"])
        return b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (method, name, headers), method.decode()

    def gen_framing(self) -> Request:
        name = self.name().encode()
        body = b'{"a":"%s"}' % name  # a valid body: the framing must make the request fail
        bad = self.rng.choice([
            b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(body), len(body) + 1),
            b"Content-Length: %d, %d\r\n" % (len(body), len(body)),
            b"Content-Length: +%d\r\n" % len(body),
            b"Content-Length: 0x%x\r\n" % len(body),
            b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(body),
            b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: chunked, gzip\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: xchunked\r\n", b"Transfer-Encoding : chunked\r\n",
            b"Transfer-Encoding: \x0bchunked\r\n",
        ])
        # no token: even a body that gets through must not be written (401)
        raw = (b"PUT /hashes/%s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n%s\r\n%s"
               % (name, bad, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if b"chunked" in bad else body))
        return raw, "PUT"

    def gen_bad_chunked(self) -> Request:
        name = self.name().encode()
        body = self.rng.choice([
            b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{\"a\":\r\n",  # truncated, then EOF
            b"-5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n", b"3;ext=\"x\r\n{\"a\r\n0\r\n\r\n",
            b"2\r\n{}\r\n", b"2\r\n{}XX0\r\n\r\n", b"0\r\nTrailer: \xff\r\n\r\n", b"1\r\n",
            b"10000\r\n" + b"[" * 200, b"8\r\n{\"a\":\"1\"\r\n0\r\n\r\n",  # one byte short of valid JSON
        ])
        raw = (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%s" % (self.rng.choice([b"PUT", b"PATCH"]), name, self.auth(), body))
        return raw, "PUT"

    def gen_bad_json(self) -> Request:
        body = self.rng.choice([
            b"", b"{", b"}", b"[]", b"null", b"1", b'"a"', b"{}", b'{"a":1}', b'{"a":null}', b'{"a":["x"]}',
            b'{"a":{"b":"c"}}', b'{"":"x"}', b'{"a":"1",}', b"{'a':'1'}", b'{"a":NaN}', b'{"a":Infinity}',
            b'{"a":"' + b"\xff\xfe" + b'"}', b'\xef\xbb\xbf{"a":1}', b'{"a":"1"} trailing',
            b'{"a":1' + b"0" * 5000 + b"}",
            b"{" + b",".join(b'"f%d":"v"' % i for i in range(1001)) + b"}",  # over MAX_FIELDS
            b'{"a":"' + b"x" * 20000 + b'"}', b'{"' + b"k" * 20000 + b'":"v"}',  # over MAX_FIELD_BYTES
            b"[" * self.rng.choice([100, 5000, 60000]), b'{"a":' * 3000 + b"1" + b"}" * 3000,
            b'{"a":' + b"[" * 50000 + b"]" * 50000 + b"}",
            b'{"a":"\\ud800"}', b'{"\\udfff":"v"}', b'{"a":"\\u0000"}', b"\x00" * 100,
            b" " * 70000,  # over MAX_BODY_BYTES
        ])
        if body in (b'{"a":"\\u0000"}',):
            body = b'{"a":"\\u0000", "b": 2}'  # valid JSON and string except one value
        return self.body_request(body)

    def gen_content_type(self) -> Request:
        body = b'{"a":"1"}'
        ctype = self.rng.choice([None, b"text/plain", b"application/x-www-form-urlencoded", b"application/jsonx",
                                 b"json", b"multipart/form-data; boundary=x", b"\xff\xfe", b"application/json" * 500])
        return self.body_request(body, ctype=ctype)

    def gen_auth(self) -> Request:
        body = b'{"a":"1"}'
        extra = b""
        auth = self.rng.choice([
            b"", b"Authorization: Bearer wrong\r\n", b"Authorization: Basic Zm9vOmJhcg==\r\n",
            b"Authorization: Bearer " + self.token.encode()[:-1] + b"\r\n",
            b"Authorization: Bearer " + self.token.encode() + b" \x00\r\n",
            b"Authorization: Bearer\r\n", b"Authorization: " + self.token.encode() + b"\r\n",
            b"Authorization: Bearer " + self.token.upper().encode() + b"\r\n",
            b"Authorization: Bearer \xff" + self.token.encode() + b"\r\n",
        ])
        method = self.write_method()
        name = self.name().encode()
        if method == b"DELETE":
            return b"DELETE /hashes/%s HTTP/1.1\r\nHost: f\r\n%s\r\n" % (name, auth), "DELETE"
        return (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\n"
                b"%sContent-Length: %d\r\n\r\n%s"
                % (method, name, auth, extra, len(body), body)), method.decode()

    def gen_short_body(self) -> Request:
        body = b'{"a":"1"}'
        cut = self.rng.randrange(len(body))
        name = self.name().encode()
        return (b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (self.rng.choice([b"PUT", b"PATCH"]), name, self.auth(), len(body), body[:cut])), "PUT"

    def gen_smuggle(self) -> Request:
        name = self.name().encode()
        inner = b"DELETE /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n" % name  # no token: refused even if parsed
        raw = self.rng.choice([
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
            % (name, 5 + len(inner), inner),
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n%s" % (name, inner),
            b"GET /hashes/%s HTTP/1.0\r\n\r\n%s" % (name, inner),
            b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n%s" % (name, inner),
        ])
        return raw, "GET"

    def gen_type_confusion(self) -> Request:
        key = self.rng.choice([key.encode() for key in TYPE_CONFUSION_KEYS])
        method = self.rng.choice([b"GET", b"HEAD", b"PUT", b"PATCH"])
        if method in (b"GET", b"HEAD"):
            return b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n" % (method, key), method.decode()
        return self.body_request(b'{"a":"1"}', method=method, path=b"/hashes/" + key)  # 409, nothing written

    # from the test suite's generator: combinations, mutations and pipelines
    def gen_request_line_parts(self) -> Request:
        methods = [b"GET", b"HEAD", b"PUT", b"PATCH", b"DELETE", b"POST", b"OPTIONS", b"TRACE", b"CONNECT", b"PRI",
                   b"get", b"G\x00T", b"GET GET", b"\xffGET", b"X" * 64, b""]
        name = self.name().encode()
        paths = [b"/", b"/healthz", b"/readyz", b"/stats", b"/metrics", b"/hashes/" + name, b"/hashes/", b"/hashes",
                 b"*", b"http://evil.example/hashes/" + name, b"//hashes//" + name, b"/../../etc/passwd",
                 b"/hashes/%", b"/hashes/%zz", b"/hashes/%00", b"/hashes/%FF", b"/hashes/" + name + b"?x=%00&y",
                 b"", b"/hashes/\r\n", b"/hashes/\xc3\x28", b"/%2e%2e/%2e%2e/", b"/hashes/" + b"%41" * 2000]
        versions = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1x", b"http/1.1", b"HTTP/01.1",
                    b"HTTP/1.", b"", b"HTTP/1.1 extra"]
        sep = self.rng.choice([b" ", b"  ", b"\t", b" \x00 "])
        end = self.rng.choice([b"\r\n", b"\n", b"\r", b"\r\r\n"])
        method = self.rng.choice(methods)
        raw = method + sep + self.rng.choice(paths) + sep + self.rng.choice(versions) + end + b"Host: x" + end + end
        return raw, method.decode("latin-1")

    def gen_mutated(self) -> Request:
        """A valid request without the token, with random bytes flipped, inserted or removed."""
        body = b'{"name":"x"}'
        method = self.rng.choice([b"GET", b"PUT", b"DELETE"])
        data = bytearray(b"%s /hashes/%s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (method, self.name().encode(), len(body), body))
        for _ in range(self.rng.randrange(1, 6)):
            at = self.rng.randrange(len(data))
            action = self.rng.randrange(3)
            if action == 0:
                data[at] = self.rng.randrange(256)
            elif action == 1:
                data[at:at] = self.rng.randbytes(self.rng.randrange(1, 8))
            elif len(data) > 1:
                del data[at]
        return bytes(data), method.decode()

    def gen_pipelined(self) -> Request:
        """A valid GET and one to three defective requests, in random order, on one connection."""
        parts = [(b"GET /hashes/%s HTTP/1.1\r\nHost: f\r\n\r\n" % self.name().encode(), "GET")]
        makers = [self.gen_request_line_parts, self.gen_hostile_path, self.gen_bad_json, self.gen_mutated]
        for _ in range(self.rng.randrange(1, 4)):
            parts.append(self.rng.choice(makers)())
        self.rng.shuffle(parts)
        return b"".join(raw for raw, _ in parts), parts[0][1]
