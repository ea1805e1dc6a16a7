"""The one fork detector of the package and of its users: a counter bumped in every forked child.

Compare a generation saved earlier with ``forks.generation`` (read it through the module: a name imported
from here would not change). It costs one attribute read, where ``os.getpid()`` is a system call.
"""
import os

__all__ = ["generation"]

generation = 0  # how many forks separate this process from the one that imported this module


def _forked() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_forked)
