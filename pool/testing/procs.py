"""Processes seen through Linux's /proc: a gunicorn master's children, whether a pid is still alive, who holds a
file open."""
from __future__ import annotations

import os

__all__ = ["child_pids", "holders", "process_alive"]


def child_pids(pid: int) -> set[int]:
    """The live children of ``pid`` (of all its threads); empty when it is gone."""
    found: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(child) for child in f.read().split())
    except OSError:
        pass
    return found


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def holders(path: str | os.PathLike[str]) -> set[int]:
    """The pids of the processes that hold a file descriptor of ``path`` (those this user may inspect)."""
    target = os.path.realpath(path)
    return {int(pid) for pid in os.listdir("/proc") if pid.isdigit() and target in _open_files(pid)}


def _open_files(pid: str) -> set[str]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to inspect
        return set()
    found = set()
    for fd in fds:
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return found
