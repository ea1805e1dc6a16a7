"""Which commands may run on a shared (multiplexed) connection: an explicit allow-list.

A command may share a connection with other greenlets' commands when it

* answers with exactly one reply, soon: it never waits for something else to happen (no BLPOP, WAIT,
  XREAD BLOCK), so the replies queued behind it are delayed only by the server's own work;
* leaves the connection's session as it found it: no SELECT, AUTH, HELLO, CLIENT SETNAME / REPLY /
  TRACKING / CACHING / NO-EVICT / NO-TOUCH, READONLY / READWRITE, RESET, no MULTI / EXEC / WATCH, no
  SUBSCRIBE or MONITOR;
* does not change how the *next* command is handled (ASKING, CLIENT REPLY SKIP), nor end the
  connection (QUIT, SHUTDOWN).

Everything not listed here, including every module command (JSON.*, FT.*, BF.*, TS.*), server
administration (CONFIG SET, ACL, DEBUG, SAVE, REPLICAOF, CLIENT KILL, CLIENT PAUSE, MIGRATE, ...), and
any spelling this module does not recognise, takes an exclusive connection, exactly as without
multiplexing. Commands that block the *server* (KEYS, FLUSHALL, a slow EVAL) may share: they delay
every client of that server whichever connection they came on. A large reply delays the replies
queued behind it on the same shared connection (head-of-line blocking).

Scripts (EVAL, EVALSHA, FCALL) may share: a script's SELECT does not outlive the script (checked on
Redis 6.2 and 7.0), and scripts cannot block. XREAD / XREADGROUP share without BLOCK, their options
read in any order as Redis reads them. Subcommands are judged one by one (``CLIENT ID`` shares, ``CLIENT
SETNAME`` does not). ``SWAPDB`` shares: it swaps datasets for every client alike, the connection's
own db number is untouched.
"""
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["SHARED_COMMANDS", "SHARED_SUBCOMMANDS", "may_share"]

_STRINGS = """
    GET SET SETNX SETEX PSETEX MGET MSET MSETNX GETSET GETDEL GETEX APPEND STRLEN GETRANGE SETRANGE SUBSTR
    INCR INCRBY INCRBYFLOAT DECR DECRBY LCS GETBIT SETBIT BITCOUNT BITPOS BITOP BITFIELD BITFIELD_RO
"""
_KEYS = """
    DEL UNLINK EXISTS EXPIRE PEXPIRE EXPIREAT PEXPIREAT EXPIRETIME PEXPIRETIME TTL PTTL PERSIST TYPE RENAME
    RENAMENX COPY DUMP RESTORE TOUCH RANDOMKEY SCAN KEYS SORT SORT_RO MOVE
"""
_HASHES = """
    HGET HSET HSETNX HMSET HMGET HGETALL HDEL HEXISTS HINCRBY HINCRBYFLOAT HKEYS HVALS HLEN HSTRLEN HSCAN
    HRANDFIELD HEXPIRE HPEXPIRE HEXPIREAT HPEXPIREAT HTTL HPTTL HEXPIRETIME HPEXPIRETIME HPERSIST HGETDEL
    HGETEX HSETEX
"""
_LISTS = """
    LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LRANGE LINDEX LSET LINSERT LREM LTRIM LPOS LMOVE RPOPLPUSH LMPOP
"""
_SETS = """
    SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SMOVE SINTER SINTERCARD SINTERSTORE
    SUNION SUNIONSTORE SDIFF SDIFFSTORE SSCAN
"""
_SORTED_SETS = """
    ZADD ZREM ZSCORE ZMSCORE ZINCRBY ZCARD ZCOUNT ZLEXCOUNT ZRANGE ZRANGESTORE ZRANGEBYSCORE ZRANGEBYLEX
    ZREVRANGE ZREVRANGEBYSCORE ZREVRANGEBYLEX ZRANK ZREVRANK ZREMRANGEBYRANK ZREMRANGEBYSCORE
    ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZMPOP ZRANDMEMBER ZSCAN ZUNION ZUNIONSTORE ZINTER ZINTERSTORE
    ZINTERCARD ZDIFF ZDIFFSTORE
"""
_OTHER_TYPES = """
    PFADD PFCOUNT PFMERGE
    GEOADD GEODIST GEOHASH GEOPOS GEORADIUS GEORADIUSBYMEMBER GEORADIUS_RO GEORADIUSBYMEMBER_RO GEOSEARCH
    GEOSEARCHSTORE
    XADD XLEN XRANGE XREVRANGE XDEL XTRIM XACK XCLAIM XAUTOCLAIM XPENDING XSETID
"""
_SCRIPTS_AND_SERVER = """
    EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO
    PING ECHO TIME DBSIZE INFO LASTSAVE ROLE FLUSHDB FLUSHALL SWAPDB PUBLISH SPUBLISH
"""

SHARED_COMMANDS: frozenset[str] = frozenset(
    " ".join((_STRINGS, _KEYS, _HASHES, _LISTS, _SETS, _SORTED_SETS, _OTHER_TYPES, _SCRIPTS_AND_SERVER)).split()
)
"""Commands that may always share a connection, whatever their arguments."""

SHARED_SUBCOMMANDS: dict[str, frozenset[str]] = {
    "CLIENT": frozenset("ID INFO GETNAME LIST".split()),
    "SCRIPT": frozenset("LOAD EXISTS FLUSH".split()),
    "FUNCTION": frozenset("LOAD LIST DELETE DUMP RESTORE FLUSH STATS".split()),
    "OBJECT": frozenset("ENCODING FREQ IDLETIME REFCOUNT".split()),
    "MEMORY": frozenset(["USAGE"]),
    "CONFIG": frozenset(["GET"]),
    "COMMAND": frozenset("COUNT INFO DOCS LIST GETKEYS GETKEYSANDFLAGS".split()),
    "PUBSUB": frozenset("CHANNELS NUMSUB NUMPAT SHARDCHANNELS SHARDNUMSUB".split()),
    "XINFO": frozenset("STREAM GROUPS CONSUMERS".split()),
    "XGROUP": frozenset("CREATE DESTROY CREATECONSUMER DELCONSUMER SETID".split()),
    "CLUSTER": frozenset("SLOTS SHARDS NODES INFO MYID MYSHARDID KEYSLOT COUNTKEYSINSLOT GETKEYSINSLOT LINKS".split()),
}
"""Containers whose listed subcommands may share (``CLIENT ID`` does, ``CLIENT SETNAME`` does not)."""


def _text(word: Any) -> str:
    if isinstance(word, (bytes, bytearray, memoryview)):
        return bytes(word).decode("latin-1")
    return str(word)


def _no_block(args: Sequence[Any]) -> bool:
    """XREAD / XREADGROUP share only without BLOCK. Their options are read as Redis reads them (in any
    order, up to STREAMS), so BLOCK before GROUP is not missed, and a group, a consumer or a key named
    BLOCK is not taken for the option. An option this module does not know: exclusive."""
    index, end = 1, len(args)
    while index < end:
        option = _text(args[index]).upper()
        if option == "STREAMS":
            return True
        words = _XREAD_OPTIONS.get(option)
        if words is None:  # BLOCK, or a word we cannot judge
            return False
        index += 1 + words
    return False


# The non-blocking options of XREAD / XREADGROUP and how many words follow each (Redis 8 adds the last three).
_XREAD_OPTIONS = {"COUNT": 1, "GROUP": 2, "NOACK": 0, "MAXCOUNT": 1, "MAXSIZE": 1, "CLAIM": 1}


# Commands whose arguments decide; each rule sees the whole argument tuple, command name first.
_RULES: dict[str, Callable[[Sequence[Any]], bool]] = {"XREAD": _no_block, "XREADGROUP": _no_block}


def _spellings(names: Iterable[str]) -> frozenset[Any]:
    """Every spelling redis-py or a caller is likely to pass as the first argument: str or bytes, either case."""
    out: set[Any] = set()
    for name in names:
        for text in (name, name.lower()):
            out.add(text)
            out.add(text.encode())
    return frozenset(out)


_JOINED = [f"{container} {sub}" for container, subs in SHARED_SUBCOMMANDS.items() for sub in subs]
_FAST: frozenset[Any] = _spellings(list(SHARED_COMMANDS) + _JOINED)  # redis-py sends "CLIENT LIST" as one word


def may_share(args: Sequence[Any]) -> bool:
    """True if the command ``args`` (name first, as given to ``send_command``) may use a shared connection."""
    try:
        if args[0] in _FAST:
            return True
    except (TypeError, IndexError):  # an unhashable or missing command name: not ours to judge
        return False
    return _judge(args)


def _judge(args: Sequence[Any]) -> bool:
    """The slow path: other spellings, subcommands given as separate words, argument-dependent rules."""
    words = list(_text(args[0]).split()) + list(args[1:])
    if not words:
        return False
    name = _text(words[0]).upper()
    if name in SHARED_COMMANDS:
        return True
    subs = SHARED_SUBCOMMANDS.get(name)
    if subs is not None:
        return len(words) > 1 and _text(words[1]).upper() in subs
    rule = _RULES.get(name)
    return rule is not None and rule(words)
