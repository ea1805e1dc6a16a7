"""Processes seen through Linux's /proc: a gunicorn master's children, whether a pid is still alive."""
from __future__ import annotations

import os

__all__ = ["child_pids", "process_alive"]


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
