"""`cgru.dask.predict`: score a Dask array of sequences with a `cgru.GRU`, `cgru.Sequential` or `cgru.Model`.

    import dask.array as da
    import cgru.dask

    X = da.from_zarr("sequences.zarr")            # (N, T, F), chunked along N only
    y = cgru.dask.predict(model, X)               # lazy: nothing runs yet
    y.to_zarr("scores.zarr")                      # each chunk scored where it lies

How it runs:
- The model enters the task graph once, as one `dask.delayed(model, pure=True)` object that
  every chunk's task takes as an argument: a distributed cluster ships it to each worker once,
  not pickled into every chunk's task. The graph holds the model itself, so weights changed
  between `predict` and `compute` are the weights that score.
- Each chunk is scored in inference mode without touching the caller's object: a `cgru.GRU` runs
  through a shallow copy switched to eval mode (it shares the parameter arrays; the user's GRU
  stays in training mode even under the threaded scheduler, where tasks see the object itself);
  a `Sequential` runs through `model.predict`, which is inference already.
- `batch_size` bounds a worker's memory: each chunk is scored in pieces of at most that many
  samples, written into one output array.
- Engine threads: the engine's thread count is process-wide. Under a `distributed` worker that
  does not set OMP_NUM_THREADS (a nanny sets it to 1 by default), the worker's cores are shared
  among its task threads (see `_set_engine_threads`).

Dask is an optional dependency: `import cgru` never imports this module or dask.
"""
from __future__ import annotations

import copy
import math
import os
import reprlib
import sys

import numpy as np

try:  # absolute imports: this is the top-level dask package, not this module
    import dask
    import dask.array as da
except ImportError as e:
    raise ImportError("cgru.dask needs dask: pip install 'dask[array,distributed]'") from e

from . import _engine
from ._fork import fork_safe_lock
from .gru import GRU, set_num_threads
from .models import Model

# the process that decided its engine thread count (see _set_engine_threads); a fork child of
# that process decides again
_threads_decided_pid = None
_threads_lock = fork_safe_lock()


def predict(model: GRU | Model, X: da.Array, batch_size: int | None = None) -> da.Array:
    """The model's outputs for the sequences in X, as a lazy Dask array (nothing runs here).

    Args:
        model: a `cgru.GRU` (scored in inference mode; returns its output sequence y) or a built
            `cgru.Sequential` (returns what `model.predict` returns).
        X: a `dask.array.Array` of shape (N, T, F): samples, time steps, features; (T, N, F) for
            a time-major GRU (batch_first=False). Chunked along the samples axis only; real
            numbers, cast lazily to the model's dtype.
        batch_size: None to score each chunk in one call, or an integer >= 1 to score each chunk
            in pieces of at most that many samples (bounds a worker's working memory).

    Returns a dask array whose samples axis has X's chunks: for a GRU y, (N, T, D * hidden_size)
    or (T, N, D * hidden_size) as X; for a Sequential (N, units) or (N, T, units).
    """
    kind, dtype, features, declared_time = _model_facts(model)
    batch_axis = 1 if kind == "gru" and not model.batch_first else 0
    time_axis = 1 - batch_axis
    X = _checked_input(X, batch_axis, time_axis, features, declared_time, dtype)
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or
                                   batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    batch_size = None if batch_size is None else int(batch_size)

    # each sample's output shape, and the whole output's with the samples axis where X has it
    T = X.shape[time_axis]
    if kind == "gru":
        sample_shape = (T, model.num_directions * model.hidden_size)
    else:  # the output's shape, its free time axis (if it kept one) being X's
        sample_shape = tuple(T if size is None else size for size in model.outputs[0].shape[1:])
    out_chunks = [(size,) for size in sample_shape]
    out_chunks.insert(batch_axis, X.chunks[batch_axis])

    # one graph node holding the model, which every chunk's task names as a dependency; pure:
    # its key follows the model's contents, so a changed model is never taken for a cached one
    shared_model = dask.delayed(model, pure=True)
    kwargs = dict(kind=kind, batch_axis=batch_axis, batch_size=batch_size,
                  sample_shape=sample_shape, out_dtype=dtype)
    # a Sequential without return_sequences drops the time axis (N, T, F) -> (N, units)
    drop_axis = [1] if len(out_chunks) == 2 else []
    return da.map_blocks(_score_block, X, shared_model, chunks=tuple(out_chunks),
                         drop_axis=drop_axis, dtype=dtype,
                         meta=np.empty((0,) * len(out_chunks), dtype),
                         token="cgru-predict", **kwargs)


# ---- checks on the client ---------------------------------------------------------------------

def _model_facts(model):
    """(kind, dtype, features, declared time steps or None) of a model predict() accepts."""
    if isinstance(model, GRU):
        return "gru", model.dtype, model.input_size, None
    if isinstance(model, Model):
        if not model.built:
            # building here would score with random weights made on the client
            raise ValueError("model is a Sequential that is not built, so it has no weights to "
                             "score with; fit it, load it with cgru.load_model, or build it with "
                             "model.build((None, time, features)) and set its weights first")
        if len(model.inputs) != 1 or len(model.outputs) != 1 or model.inputs[0].kind != "float":
            raise ValueError("model must take one real-valued input (N, T, F) and give one "
                             "output to be scored with cgru.dask.predict")
        declared = tuple(model.input_shape)
        return "sequential", model.dtype, declared[-1], declared[0] if len(declared) == 2 else None
    raise TypeError(f"model must be a cgru.GRU, a cgru.Sequential or a cgru.Model, got "
                    f"{type(model).__module__}.{type(model).__qualname__}")


def _checked_input(X, batch_axis, time_axis, features, declared_time, dtype):
    """X as the tasks read it: a 3-D dask array of the model's dtype, one chunk along time and
    features; a TypeError or ValueError naming X for anything else."""
    layout = "(N, T, F)" if batch_axis == 0 else "(T, N, F) (the GRU is time-major)"
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array of shape {layout}, got "
                        f"{type(X).__module__}.{type(X).__qualname__}; wrap an array with "
                        f"dask.array.from_array(X, chunks=...) along the samples axis")
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D {layout}, got {X.ndim}-D with shape {X.shape}")
    if X.dtype == bool or not (np.issubdtype(X.dtype, np.floating) or
                               np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"X must hold real numbers (float or integer), got dtype {X.dtype}")
    for axis, what in ((time_axis, "time steps"), (2, "features")):
        if math.isnan(X.shape[axis]):
            raise ValueError(f"X has an unknown number of {what} (axis {axis}); call "
                             f"X.compute_chunk_sizes() first")
    if X.shape[2] != features:
        raise ValueError(f"X must have the model's {features} features in its last axis, got "
                         f"{X.shape[2]} (X has shape {X.shape})")
    T = X.shape[time_axis]
    if T == 0:
        raise ValueError(f"X has 0 time steps (shape {X.shape}); the model needs at least one")
    if declared_time is not None and T != declared_time:
        raise ValueError(f"X must have the {declared_time} time steps the model's input declares "
                         f"(axis {time_axis}), got {T}")
    if X.numblocks[time_axis] != 1 or X.numblocks[2] != 1:
        raise ValueError(f"X must be chunked along the samples axis (axis {batch_axis}) only, "
                         f"got chunks {reprlib.repr(X.chunks)}; call "
                         f"X = X.rechunk({{{time_axis}: -1, 2: -1}}) first")
    return X if X.dtype == dtype else X.astype(dtype)


# ---- on the workers ---------------------------------------------------------------------------

def _set_engine_threads():
    """Choose the engine's (process-wide) thread count once per process, on a task's first call.

    - OMP_NUM_THREADS set (a distributed nanny sets it to 1 by default): respected, nothing done.
    - Inside a distributed worker: the CPUs this process may use, shared among the worker's task
      threads, max(1, cpus // nthreads), so that concurrent tasks never ask for more threads
      than there are cores.
    - Elsewhere (the threaded or synchronous scheduler): left alone; the engine already shares
      its CPU budget among concurrent calls.
    """
    global _threads_decided_pid
    if _threads_decided_pid == os.getpid():
        return
    with _threads_lock:
        if _threads_decided_pid == os.getpid():
            return
        _threads_decided_pid = os.getpid()
        if "OMP_NUM_THREADS" in os.environ:
            return
        distributed = sys.modules.get("distributed")  # a worker process has imported it
        if distributed is None:
            return
        try:
            worker = distributed.get_worker()
        except ValueError:  # not running in a worker's task
            return
        set_num_threads(max(1, _engine.cpus_available() // max(1, worker.state.nthreads)))


def _scorer(model, kind, batch_axis):
    """A function from an input piece to the model's outputs, in inference mode."""
    if kind == "sequential":
        return model.predict
    # a shallow copy (GRU.__getstate__: parameters shared, no pending forward) switched to
    # inference: the delivered object may be the user's GRU itself, used by other threads
    gru = copy.copy(model).eval()
    gru.batch_first = batch_axis == 0  # the layout predict() planned the chunks for

    def score(x):
        y, _ = gru(x)
        return y

    return score


def _score_block(block, model, *, kind, batch_axis, batch_size, sample_shape, out_dtype):
    """One chunk's outputs, scored in pieces of at most batch_size samples."""
    n = block.shape[batch_axis]
    out_shape = list(sample_shape)
    out_shape.insert(batch_axis, n)
    if n == 0:  # an empty chunk: nothing for the engine to do
        return np.empty(out_shape, out_dtype)
    _set_engine_threads()
    score = _scorer(model, kind, batch_axis)
    if batch_size is None or batch_size >= n:
        return score(block)
    out = np.empty(out_shape, out_dtype)
    lead = (slice(None),) * batch_axis  # to index the samples axis
    for start in range(0, n, batch_size):
        piece = lead + (slice(start, start + batch_size),)
        out[piece] = score(block[piece])
    return out
