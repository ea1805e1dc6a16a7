"""``wsgi_app.hash_json.hash_body``: the one-pass JSON of a hash reply gives exactly the bytes of the plain way
(decode each item, ``json`` encode the dict), for every kind of content, in both reply shapes."""
import json
import random

import pytest

from wsgi_app.hash_json import decode_hash, dumps, hash_body

# Bytes that exercise every branch: plain ASCII, what JSON escapes, valid multi-byte UTF-8, and bytes that are
# not UTF-8 on their own (a lead byte, a continuation byte, a surrogate's encoding, an overlong form).
PIECES = [b"a", b"Z", b"0", b" ", b"\x7f", b'"', b"\\", b"\n", b"\x00", b"\x1f", b"/",
          "é".encode(), "€".encode(), "😀".encode(), "\u2028".encode(),
          b"\xc3", b"\xa9", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"]


def plain(raw):
    return dumps(decode_hash(raw)).encode()


def as_list(mapping):
    return [item for pair in mapping.items() for item in pair]


def random_hash(rng):
    fields = {}
    for _ in range(rng.randint(1, 6)):
        field = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
        fields[field] = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
    return fields


@pytest.mark.parametrize("seed", range(20))
def test_random_hashes_encode_as_the_plain_way(seed):
    rng = random.Random(seed)
    for _ in range(250):
        mapping = random_hash(rng)
        assert hash_body(mapping) == plain(mapping)
        assert hash_body(as_list(mapping)) == plain(mapping)


@pytest.mark.parametrize("mapping", [
    {b"f0": b"v" * 20, b"f1": b"w" * 20},                      # the common case: ASCII, nothing to escape
    {"é".encode(): "€ and 😀".encode()},                       # valid UTF-8
    {b"\xc3": b"\xa9"},                                          # halves of one character, split by the separators
    {b"q": b'say "hi"\\n'},                                     # escapes
    {b"": b""},                                                  # empty field and value
])
def test_examples_match_and_parse_back(mapping):
    body = hash_body(mapping)
    assert body == plain(mapping) == hash_body(as_list(mapping))
    assert json.loads(body) == decode_hash(mapping)


def test_split_character_is_not_glued_back_together():
    """A field ending in a lead byte and a value starting with its continuation byte are two invalid items, each
    replaced with U+FFFD, not one valid character across the separator."""
    assert json.loads(hash_body({b"\xc3": b"\xa9"})) == {"\ufffd": "\ufffd"}


def test_empty_reply_and_str_items():
    assert hash_body({}) == hash_body([]) == b"{}"
    assert hash_body({"f": "v\n"}) == plain({"f": "v\n"}) == b'{"f":"v\\n"}'  # a decoding connection's reply
    assert hash_body(["f", "é"]) == '{"f":"é"}'.encode()
