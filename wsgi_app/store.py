"""The service's Redis operations on hashes. Each is one atomic command or script through the backend's shared
client (``Backend.shared_client``: on a shared connection when multiplexed, HGETALL, EVALSHA and EVAL all may
share; for a Redis Cluster the cluster client, which sends each command and script to the node serving its key,
following MOVED and ASK); every script touches one key only, so nothing needs a connection of its own.

A key that holds another Redis type raises ``WrongType`` (the service answers 409); writes check the type
inside the same Lua script, so nothing is changed in that case.

All or nothing: Redis runs a script to its end or until a command in it fails, and never rolls back what ran
before. So every write script does its reads first and refuses before its first write:
- a Redis user that lacks one of the script's commands (NOPERM): Redis 7 checks each one with
  ``redis.acl_check_cmd`` first; Redis 6 has no such call, and there the reads come first and PUT, the only
  script with two kinds of write, proves HDEL with writes that change nothing (see ``_REPLACE``);
- a server at its memory limit (OOM), a read-only replica (READONLY), a server that cannot persist (MISCONF):
  Redis refuses the first write of a script and, once one has run, never the later ones, so the first write is
  the one that matters, and it comes after every check;
- a hash that would outgrow MAX_HASH_FIELDS or MAX_HASH_BYTES (PATCH): computed from the reads, before the write;
- a Redis Cluster slot in migration: the key never disappears inside a script (no DEL then HSET), so a script
  that started on a node never meets "attempted to access a non local key" halfway.
"""
import hashlib

from redis.exceptions import NoScriptError, ResponseError

from .errors import HashTooLarge, WrongType
from .hash_json import decode_hash

__all__ = ["Script", "delete_hash", "get_hash", "merge_hash", "read_hash", "replace_hash"]

# Arguments for redis.acl_check_cmd: the command with the script's key and placeholders of the right arity.
_SAMPLE_ARGS = {"TYPE": "", "HKEYS": "", "HGETALL": "", "HSET": ", 'f', 'v'", "HDEL": ", 'f'", "DEL": ""}


def _permission_checks(commands):
    """Lua that refuses with NOPERM, before anything ran, when the user may not run one of ``commands`` on KEYS[1]
    (Redis 7+; Redis 6 has no redis.acl_check_cmd and skips it)."""
    table = ", ".join(f"{{'{name}', KEYS[1]{_SAMPLE_ARGS[name]}}}" for name in commands)
    return f"""
if redis.acl_check_cmd then
  for _, command in ipairs({{{table}}}) do
    if not redis.acl_check_cmd(unpack(command)) then
      return redis.error_reply('NOPERM the Redis user may not run ' .. command[1] .. ' on this key')
    end
  end
end
"""


_CHECK_TYPE = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('WRONGTYPE the key holds a ' .. t) end
"""


class Script:
    """A Lua script run with EVALSHA, and EVAL once when the server does not know it yet (NOSCRIPT ran nothing)."""

    def __init__(self, source):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client, key, args):
        try:
            return client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return client.eval(self.source, 1, key, *args)


class _HashScript(Script):
    """A script on one hash: permission checks for ``commands``, the type check, then ``body``."""

    def __init__(self, commands, body):
        super().__init__(_permission_checks(("TYPE", *commands)) + _CHECK_TYPE + body)

    def __call__(self, client, key, args):
        try:
            return super().__call__(client, key, args)
        except ResponseError as exc:
            _raise_refusal(exc)
            raise


# Replace without the key ever disappearing: HSET the new fields, then HDEL the others (the HKEYS read first).
# Redis 6 (no acl_check_cmd), when fields must go: set one of them to its own value (the first write: OOM,
# READONLY and MISCONF refuse it; for the others it changes nothing), then HDEL a field that does not exist, in
# a pcall: if the user may not run HDEL, the script stops there with nothing changed.
_REPLACE = _HashScript(("HKEYS", "HSET", "HDEL"), """
local keep = {}
for i = 1, #ARGV, 2 do keep[ARGV[i]] = true end
local drop = {}
if t == 'hash' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not keep[field] then drop[#drop + 1] = field end
  end
end
if #drop > 0 and not redis.acl_check_cmd then
  redis.call('HSET', KEYS[1], drop[1], redis.call('HGET', KEYS[1], drop[1]))
  local absent, gone = '\\0', {}
  for _, field in ipairs(drop) do gone[field] = true end
  while keep[absent] or gone[absent] do absent = absent .. '\\0' end
  local probe = redis.pcall('HDEL', KEYS[1], absent)
  if type(probe) == 'table' and probe.err then
    return redis.error_reply('NOPERM the Redis user may not run HDEL on this key')
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV))
for i = 1, #drop, 1000 do redis.call('HDEL', KEYS[1], unpack(drop, i, math.min(i + 999, #drop))) end
return t == 'none' and 1 or 0
""")

# ARGV: MAX_HASH_FIELDS, MAX_HASH_BYTES, then field, value, ... The merged hash is computed from the HGETALL
# read (in HGETALL's order for a small hash: updated fields in place, new ones at the end), checked against the
# bounds, and only then written.
_MERGE = _HashScript(("HGETALL", "HSET"), """
local flat = redis.call('HGETALL', KEYS[1])
local at, fields, size = {}, #flat / 2, 0
for i = 1, #flat, 2 do
  at[flat[i]] = i + 1
  size = size + #flat[i] + #flat[i + 1]
end
for i = 3, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local j = at[field]
  if j then
    size = size + #value - #flat[j]
    flat[j] = value
  else
    fields, size = fields + 1, size + #field + #value
    flat[#flat + 1] = field
    flat[#flat + 1] = value
    at[field] = #flat
  end
end
if fields > tonumber(ARGV[1]) or size > tonumber(ARGV[2]) then
  return redis.error_reply(string.format('HASHFULL %d %d', fields, size))
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return {t == 'none' and 1 or 0, flat}
""")

_DELETE = _HashScript(("DEL",), """
return redis.call('DEL', KEYS[1])
""")


def _raise_refusal(exc):
    text = str(exc)
    if text.startswith("WRONGTYPE"):
        raise WrongType(text) from None
    if text.startswith("HASHFULL"):
        _, fields, size = text.split()
        raise HashTooLarge(int(fields), int(size)) from None


def _check_size(raw, max_fields, max_bytes):
    """``HashTooLarge`` for a hash over the bounds (written by something else than this service)."""
    if isinstance(raw, dict):
        fields, size = len(raw), sum(map(len, raw)) + sum(map(len, raw.values()))
    else:
        fields, size = len(raw) // 2, sum(map(len, raw))
    if fields > max_fields or size > max_bytes:  # (characters, not bytes, if the connection decodes: it does not)
        raise HashTooLarge(fields, size)


def read_hash(client, key, max_fields, max_bytes):
    """HGETALL ``key`` as Redis answered it (a dict of bytes, or a flat list of field, value, ...; for
    ``hash_json.hash_body``), or ``None`` when the key does not exist; ``HashTooLarge`` when it holds more than
    ``max_fields`` fields or ``max_bytes`` bytes of field names and values."""
    try:
        raw = client.execute_command("HGETALL", key)  # = hgetall(key), without building its keys=[key] option
    except ResponseError as exc:
        _raise_refusal(exc)
        raise
    if not raw:
        return None
    _check_size(raw, max_fields, max_bytes)
    return raw


def get_hash(client, key, max_fields, max_bytes):
    """``read_hash`` as a dict of str (invalid UTF-8 decoded with U+FFFD replacement), or ``None``."""
    raw = read_hash(client, key, max_fields, max_bytes)
    return None if raw is None else decode_hash(raw)


def replace_hash(client, key, flat_args):
    """Make the hash exactly ``flat_args`` (field, value, ...); True when the key did not exist before."""
    return _REPLACE(client, key, flat_args) == 1


def merge_hash(client, key, flat_args, max_fields, max_bytes):
    """Set the given fields, keep the others; returns ``(created, the merged hash as a flat list of bytes)``.
    ``HashTooLarge``, with nothing changed, when the merged hash would hold more than ``max_fields`` fields or
    ``max_bytes`` bytes."""
    created, flat = _MERGE(client, key, [max_fields, max_bytes, *flat_args])
    return created == 1, flat


def delete_hash(client, key):
    """Delete the hash; False when there was nothing to delete."""
    return _DELETE(client, key, ()) == 1
