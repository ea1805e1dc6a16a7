"""The service's Redis operations on hashes. Each is one atomic command or script through the backend's shared
client (``Backend.shared_client``: on a shared connection when multiplexed, HGETALL, EVALSHA and EVAL all may
share; for a Redis Cluster the cluster client, which sends each command and script to the node serving its key,
following MOVED and ASK); every script touches one key only, so nothing needs a connection of its own.

A key that holds another Redis type raises ``WrongType`` (the service answers 409); writes check the type
inside the same Lua script, so nothing is changed in that case.
"""
import hashlib

from redis.exceptions import NoScriptError, ResponseError

from .errors import WrongType

__all__ = ["delete_hash", "get_hash", "merge_hash", "replace_hash"]

_CHECK_TYPE = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('WRONGTYPE the key holds a ' .. t) end
"""


class _Script:
    """A Lua script run with EVALSHA, and EVAL once when the server does not know it yet (NOSCRIPT ran nothing)."""

    def __init__(self, body):
        self.source = _CHECK_TYPE + body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client, key, args):
        try:
            try:
                return client.evalsha(self.sha, 1, key, *args)
            except NoScriptError:
                return client.eval(self.source, 1, key, *args)
        except ResponseError as exc:
            _raise_wrong_type(exc)
            raise


# Replace without the key ever disappearing (HSET the new fields, then HDEL the others), for two reasons:
# the first write is the HSET, so a server at its memory limit refuses the script before it changed anything
# (a DEL first would let the script go on past maxmemory); and in a Redis Cluster slot that is being migrated,
# a script that deletes its key and writes it again is refused ("attempted to access a non local key").
_REPLACE = _Script("""
redis.call('HSET', KEYS[1], unpack(ARGV))
if t == 'none' then return 1 end
local keep = {}
for i = 1, #ARGV, 2 do keep[ARGV[i]] = true end
local drop = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not keep[field] then drop[#drop + 1] = field end
end
for i = 1, #drop, 1000 do redis.call('HDEL', KEYS[1], unpack(drop, i, math.min(i + 999, #drop))) end
return 0
""")

_MERGE = _Script("""
redis.call('HSET', KEYS[1], unpack(ARGV))
return {t == 'none' and 1 or 0, redis.call('HGETALL', KEYS[1])}
""")

_DELETE = _Script("""
return redis.call('DEL', KEYS[1])
""")


def _raise_wrong_type(exc):
    if str(exc).startswith("WRONGTYPE"):
        raise WrongType(str(exc)) from None


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _pairs(raw):
    """The (field, value) pairs of a hash reply: a dict (RESP3, redis-py's HGETALL callback) or a flat list."""
    return raw.items() if isinstance(raw, dict) else zip(*[iter(raw)] * 2, strict=False)


def _decode_hash(raw):
    """A hash reply as a dict of str (its items bytes, or str when the connection decodes)."""
    try:  # the common case: bytes holding valid UTF-8
        return {field.decode(): value.decode() for field, value in _pairs(raw)}
    except (AttributeError, UnicodeDecodeError):  # str replies, or invalid UTF-8: each decoded with "replace"
        return {_text(field): _text(value) for field, value in _pairs(raw)}


def get_hash(client, key):
    """The hash at ``key`` as a dict of str, or ``None`` when the key does not exist."""
    try:
        raw = client.execute_command("HGETALL", key)  # = hgetall(key), without building its keys=[key] option
    except ResponseError as exc:
        _raise_wrong_type(exc)
        raise
    if not raw:
        return None
    return _decode_hash(raw)


def replace_hash(client, key, flat_args):
    """Make the hash exactly ``flat_args`` (field, value, ...); True when the key did not exist before."""
    return _REPLACE(client, key, flat_args) == 1


def merge_hash(client, key, flat_args):
    """Set the given fields, keep the others; returns ``(created, merged hash as a dict)``."""
    created, flat = _MERGE(client, key, flat_args)
    return created == 1, _decode_hash(flat)


def delete_hash(client, key):
    """Delete the hash; False when there was nothing to delete."""
    return _DELETE(client, key, ()) == 1
