"""Locks that a fork child gets unlocked.

A lock held by another thread at the moment of `fork()` stays held for ever in the child, where
that thread does not exist: a GRU being trained in one thread while the main thread forks (a
`multiprocessing` pool with the 'fork' start method) would hang the child's first backward on
that GRU. Every lock cgru holds across an engine call or a decision comes from `fork_safe_lock`:
in a fork child each one starts unlocked (`os.register_at_fork`), whatever it was in the parent.

They are plain `threading.Lock` (or `RLock`) objects, not a Python wrapper: a wrapper's
`__enter__` and `__exit__` are Python calls, where a KeyboardInterrupt (Ctrl-C, a notebook's
"interrupt") can land after the lock is taken and before the `with` block owns it, leaving it
held for ever; these are taken and released in C.
"""
import os
import threading
import weakref

_every_lock = weakref.WeakSet()


def fork_safe_lock(reentrant=False):
    """A new `threading.Lock` (reentrant: `threading.RLock`, which the thread holding it may
    take again) that is unlocked again in a fork child."""
    lock = threading.RLock() if reentrant else threading.Lock()
    _every_lock.add(lock)
    return lock


def _unlock_all_in_child():
    # the child runs only the forking thread: no lock is held by anyone here
    for lock in list(_every_lock):
        lock._at_fork_reinit()  # what CPython's own threading module does with its locks


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_all_in_child)
