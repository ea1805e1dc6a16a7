"""What ``/readyz`` checks beyond a PING: whether this Redis lets the service do its job.

One script, run on a key under KEY_PREFIX that no request can name (it holds a NUL), finds what a PING cannot
see: a Redis user without one of the commands the service runs (Redis 7: ``redis.acl_check_cmd`` for each;
Redis 6: the reads tried, and the deletes tried on the absent key, where they change nothing), and a server that
refuses writes: a read-only replica (READONLY) or one that cannot persist (MISCONF, which also fails the PING).
Its answer is reused for ``interval`` seconds (READYZ_CHECK_INTERVAL): a readiness probe every second costs
one PING per probe and one script per interval.
"""
import time

from . import refusals
from .store import Script

__all__ = ["PROBE_KEY_SUFFIX", "Readiness"]

PROBE_KEY_SUFFIX = "\x00readyz"  # under KEY_PREFIX: inside the ACL key patterns the service needs

_COMMANDS = "{'TYPE', key}, {'HGETALL', key}, {'HKEYS', key}, {'HSET', key, 'f', 'v'}, {'HDEL', key, 'f'}, {'DEL', key}"
_PROBE = Script(f"""
local key = KEYS[1]
local problems = {{}}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then problems[#problems + 1] = reply.err end
end
if redis.acl_check_cmd then
  for _, command in ipairs({{{_COMMANDS}}}) do
    if not redis.acl_check_cmd(unpack(command)) then problems[#problems + 1] = 'NOPERM ' .. command[1] end
  end
else
  try('TYPE', key)
  try('HGETALL', key)
  try('HKEYS', key)
  try('HGET', key, 'f')
end
if #problems == 0 and redis.call('TYPE', key)['ok'] == 'none' then
  try('HDEL', key, 'f')
  if #problems == 0 and not redis.acl_check_cmd then try('DEL', key) end
end
return problems
""")


class Readiness:
    """The cached answer of the probe script: ``check(client)`` returns ``None`` (ready) or ``(Refusal, problems)``."""

    def __init__(self, key_prefix, interval):
        self.key = key_prefix + PROBE_KEY_SUFFIX
        self.interval = interval
        self._answer = None
        self._until = 0.0

    def check(self, client):
        """Run the probe through ``client`` unless its last answer is younger than ``interval`` seconds."""
        now = time.monotonic()
        if now >= self._until:
            self._answer = self._probe(client)
            self._until = now + self.interval
        return self._answer

    def _probe(self, client):
        problems = [_text(problem).strip() for problem in _PROBE(client, self.key, ())]
        if not problems:
            return None
        found = [refusals.classify_text(problem) for problem in problems]
        for refusal in (refusals.READ_ONLY, refusals.CANNOT_PERSIST, refusals.NO_PERMISSION):
            if refusal in found:
                return refusal, problems
        return found[0], problems


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
