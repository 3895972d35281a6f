"""cgru: a fast CPU engine for GRU networks, with the API of torch.nn.GRU on NumPy arrays,
and Keras-style models (`cgru.Sequential`, `cgru.layers`, ...) for training on it."""
from . import _engine
from . import callbacks, initializers, layers, losses, metrics, optimizers, schedules
from .gru import GRU, get_num_threads, set_num_threads
from .graph import Input
from .models import Model, Sequential, load_model
from . import models, saving

__version__ = "0.1.0"


def info():
    """Build and runtime facts: version, OpenMP, threads, CPUs, fork, build flags, BLAS."""
    return {
        "version": __version__,
        "openmp": _engine.openmp_enabled(),
        "threads": _engine.get_num_threads(),
        "cpus_available": _engine.cpus_available(),
        "fork_keeps_threads": _engine.fork_keeps_threads(),
        "build_flags": _engine.BUILD_FLAGS,
        "blas": "scipy.linalg.cython_blas",
        "blas_threads_controlled": _engine.blas_threads_controlled(),
    }


__all__ = ["GRU", "Input", "Model", "Sequential", "load_model", "get_num_threads",
           "set_num_threads", "info",
           "__version__", "callbacks", "initializers", "layers", "losses", "metrics", "models",
           "optimizers", "saving", "schedules"]
