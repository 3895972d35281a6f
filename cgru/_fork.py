"""Locks that a fork child gets fresh.

A lock held by another thread at the moment of `fork()` stays held for ever in the child, where
that thread does not exist: a GRU being trained in one thread while the main thread forks (a
`multiprocessing` pool with the 'fork' start method) would hang the child's first backward on
that GRU. Every lock cgru holds across an engine call or a decision is a `ForkSafeLock`: in a
fork child each one starts unlocked (`os.register_at_fork`), whatever it was in the parent.
"""
import os
import threading
import weakref

_every_lock = weakref.WeakSet()


class ForkSafeLock:
    """A `threading.Lock` (`with lock:` only) that is unlocked again in a fork child."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self):
        self._lock = threading.Lock()
        _every_lock.add(self)

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info):
        self._lock.release()

    def locked(self):
        return self._lock.locked()


def _unlock_all_in_child():
    # the child runs only the forking thread: no lock is held by anyone here
    for lock in list(_every_lock):
        lock._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_all_in_child)
