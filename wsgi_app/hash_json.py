"""A hash as Redis returned it (bytes fields and values) to the JSON object the service answers with, in one pass.

The plain way decodes every field and value to ``str`` and has ``json`` encode them back to UTF-8: two
conversions per item and a dict in between, a tenth of the service's own CPU per ``GET``. Almost every hash
needs neither: when no field or value holds a character JSON must escape (``"``, ``\\``, a control
character) and the result is valid UTF-8, the JSON object is the bytes themselves between separators, joined in
C. Anything else (invalid UTF-8, which is decoded with U+FFFD replacement; an escape; ``str`` items from a
decoding connection) takes the plain way. Both give the same bytes: the tests compare them.
"""
import json

__all__ = ["decode_hash", "dumps", "hash_body"]

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# What json's encoder escapes with ensure_ascii=False, but the quote (counted instead: the separators hold 4 per
# pair); bytes below 0x80 never occur inside a UTF-8 sequence.
_ESCAPED = bytes(range(0x20)) + b"\\"
_PAIR = b'":"'.join


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _pairs(raw):
    """The (field, value) pairs of a hash reply: a dict (redis-py's HGETALL callback, RESP3) or a flat list."""
    return raw.items() if isinstance(raw, dict) else zip(*[iter(raw)] * 2, strict=False)


def decode_hash(raw):
    """A hash reply as a dict of str (its items bytes, or str when the connection decodes)."""
    try:  # the common case: bytes holding valid UTF-8
        return {field.decode(): value.decode() for field, value in _pairs(raw)}
    except (AttributeError, UnicodeDecodeError):  # str replies, or invalid UTF-8: each decoded with "replace"
        return {_text(field): _text(value) for field, value in _pairs(raw)}


def hash_body(raw):
    """The UTF-8 JSON object of a hash reply (a dict or a flat list of field, value, ...), fields in reply order."""
    if not raw:
        return b"{}"
    pairs = len(raw) if isinstance(raw, dict) else len(raw) // 2
    try:
        body = b'{"' + b'","'.join(map(_PAIR, _pairs(raw))) + b'"}'
        if body.count(b'"') == 4 * pairs and len(body.translate(None, _ESCAPED)) == len(body):
            if not body.isascii():
                body.decode()  # the separators keep each item's bytes apart: valid only if every item is
            return body
    except (TypeError, UnicodeDecodeError):  # str items, or an item that is not UTF-8
        pass
    return dumps(decode_hash(raw)).encode()
