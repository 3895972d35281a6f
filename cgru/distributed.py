"""Synchronous data-parallel training over MPI (mpi4py), for `fit(..., distributed=True)`.

Run the same script on every rank (`mpiexec -n 4 python train.py`), each loading the same
arrays. Then `fit(x, y, batch_size=B, distributed=True)`:

- starts every rank from rank 0's weights, optimizer state and random state (one broadcast);
- draws each epoch's permutation from that shared random state, so every rank cuts the same
  global batches of B samples, and takes its contiguous share of each (`np.array_split`: shares
  differ by at most one sample, and a rank may get none of a short last batch);
- scales each rank's mean-loss gradient by its share of the batch and sums them with one
  `Allreduce` over one contiguous buffer per step (the batch loss rides in the same buffer), so
  every rank applies the gradient of the whole global batch, exactly as one process would;
- sums the metric and validation totals of every rank at the end of each epoch, so logs,
  `History` and every callback's decision are the same on every rank (a stop asked by any rank
  stops all of them), and checks that every rank still holds the same weights;
- saves checkpoints (`ModelCheckpoint`) on rank 0 only;
- aborts every rank (MPI_Abort) when one raises, after printing its traceback, so no rank waits
  forever for a peer that is gone.

Dropout masks come from a generator per rank (seeded from the shared state), so that the shared
generator stays the same on every rank.

mpi4py is imported only when this module is used; without it, an ImportError says what to
install. Outside `mpiexec` there is one rank, and `distributed=True` trains as
`distributed=False` does.
"""
from __future__ import annotations

import os
import sys
import traceback
import zlib

import numpy as np

from . import _engine
from . import gru as _gru

_INSTALL = "pip install mpi4py mpich"


def _mpi():
    """mpi4py's MPI module (initialising MPI on first use)."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"cgru.distributed needs mpi4py and an MPI library: {_INSTALL} "
                          f"({e})") from None
    return MPI


def rank() -> int:
    """This process's rank in MPI.COMM_WORLD (0 outside mpiexec)."""
    return _mpi().COMM_WORLD.Get_rank()


def size() -> int:
    """The number of ranks in MPI.COMM_WORLD (1 outside mpiexec)."""
    return _mpi().COMM_WORLD.Get_size()


def is_root() -> bool:
    """True on rank 0: the rank that saves files and prints progress."""
    return rank() == 0


def default_threads(cpus, ranks_on_node):
    """Engine threads per rank when neither OMP_NUM_THREADS nor set_num_threads chose: this
    node's CPUs shared between the ranks running on it, at least one."""
    return max(1, cpus // max(1, ranks_on_node))


class DriftError(RuntimeError):
    """The ranks of a distributed fit no longer hold the same weights."""


class Replicas:
    """The ranks of MPI.COMM_WORLD, each training one copy of a model on its share of every
    global batch. Made by `fit(distributed=True)`; every method is collective (every rank calls
    it, in the same order)."""

    def __init__(self):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.ranks_on_node = node.Get_size()
        node.Free()
        self._buffer = None
        if "OMP_NUM_THREADS" not in os.environ and not _gru._threads_set_by_user:
            _engine.set_num_threads(default_threads(_engine.cpus_available(),
                                                    self.ranks_on_node))

    @property
    def is_root(self):
        return self.rank == 0

    # ---- start: one model on every rank -------------------------------------------------------

    def check_same_call(self, arrays, settings):
        """Raise ValueError on every rank unless every rank called fit with the same settings
        and the same data: shapes, dtypes and a checksum of (up to) 64 samples of each array,
        cheap on any data size. Different data would train different batches on each rank."""
        facts = [repr(sorted(settings.items()))]
        for name, a in arrays.items():
            if a is None:
                facts.append(f"{name}: none")
                continue
            sample = np.ascontiguousarray(a[::max(1, len(a) // 64)])
            facts.append(f"{name}: {a.dtype}{a.shape} crc {zlib.crc32(sample.view(np.uint8))}")
        every = self.comm.allgather(facts)
        differ = [r for r, f in enumerate(every) if f != every[0]]
        if differ:
            first = differ[0]
            what = next(i for i, (a, b) in enumerate(zip(every[0], every[first])) if a != b)
            raise ValueError(f"distributed fit: every rank must pass the same data and settings; "
                             f"rank(s) {differ} differ from rank 0 (rank {first}: "
                             f"{every[first][what]!r:.200}, rank 0: {every[0][what]!r:.200})")

    def broadcast_state(self, model):
        """Rank 0's weights, optimizer state and random state onto every rank."""
        state = None
        if self.is_root:
            slots, iterations = model.optimizer.get_state()
            state = (model.get_weights(), slots, iterations, model.rng.bit_generator.state)
        weights, slots, iterations, rng_state = self.comm.bcast(state, root=0)
        if not self.is_root:
            model.set_weights(weights)
            model.optimizer.set_state(slots, iterations, model.trainable_weights)
            model.rng.bit_generator.state = rng_state

    # ---- every step -----------------------------------------------------------------------------

    def share_range(self, n):
        """(start, stop): this rank's contiguous share of n items, as np.array_split cuts them
        (shares differ by at most one item)."""
        small, extra = divmod(n, self.size)
        start = self.rank * small + min(self.rank, extra)
        return start, start + small + (self.rank < extra)

    def share(self, batch):
        """This rank's contiguous part of the global batch `batch` (indices)."""
        start, stop = self.share_range(len(batch))
        return batch[start:stop]

    def sum_gradients(self, gradients, share, loss):
        """Turn this rank's mean-loss gradients (`gradients`, {name: array}, in place) into the
        global batch's: each scaled by this rank's `share` of the batch (samples here / samples
        in the batch), then summed over the ranks in one Allreduce. Returns the batch's mean
        loss (`loss` is this rank's)."""
        arrays = list(gradients.values())
        if self._buffer is None:
            total = sum(a.size for a in arrays) + 1
            self._buffer = np.empty(total, arrays[0].dtype)
        buffer = self._buffer
        offset = 0
        for a in arrays:
            np.multiply(a.reshape(-1), share, out=buffer[offset:offset + a.size])
            offset += a.size
        buffer[offset] = loss * share
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        offset = 0
        for a in arrays:
            a.reshape(-1)[...] = buffer[offset:offset + a.size]
            offset += a.size
        return float(buffer[offset])

    # ---- every epoch ----------------------------------------------------------------------------

    def sum_metrics(self, metrics, extra=()):
        """Sum every metric's running totals (and the numbers in `extra`) over the ranks, in
        place; returns the summed `extra`."""
        local = [v for m in metrics for v in (m._total, m._count)] + list(extra)
        summed = np.array(local, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, summed, op=self.MPI.SUM)
        for i, m in enumerate(metrics):
            m._total, m._count = float(summed[2 * i]), int(summed[2 * i + 1])
        return [float(v) for v in summed[2 * len(metrics):]]

    def any(self, flag):
        """True on every rank when `flag` is true on any."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def check_in_sync(self, model, epoch):
        """Raise DriftError on every rank when some rank's weights differ from rank 0's."""
        checksum = 0
        for w in model.trainable_weights.values():
            checksum = zlib.crc32(np.ascontiguousarray(w).view(np.uint8), checksum)
        sums = self.comm.allgather(checksum)
        drifted = [r for r, s in enumerate(sums) if s != sums[0]]
        if drifted:
            raise DriftError(f"distributed fit: after epoch {epoch + 1} the weights of rank(s) "
                             f"{drifted} differ from rank 0's; every rank must apply the same "
                             f"updates (does a callback or other code change weights on some "
                             f"ranks only?)")

    # ---- failure ------------------------------------------------------------------------------

    def abort(self, error):
        """Print this rank's error and abort every rank: a peer waiting in a collective would
        otherwise wait forever."""
        if self.size == 1:
            return
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        sys.stderr.write(f"cgru.distributed: rank {self.rank} of {self.size} failed in fit; "
                         f"aborting every rank.\n{text}")
        sys.stderr.flush()
        self.comm.Abort(1)

