"""cgru: a fast CPU engine for GRU networks, with the API of torch.nn.GRU on NumPy arrays,
and Keras-style models (`cgru.Sequential`, `cgru.layers`, ...) for training on it."""
from . import _blas_kernel, _engine
from . import callbacks, initializers, layers, losses, metrics, optimizers, schedules
from .gru import GRU, get_num_threads, set_num_threads
from .graph import Input
from .models import Model, Sequential, load_model
from . import models, saving

__version__ = "0.1.0"


_OPENMP_SPECS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5",
                 201811: "5.0", 202011: "5.1", 202111: "5.2", 202411: "6.0"}


def _openmp_library() -> "str | None":
    """Path of the shared library that gives the engine its OpenMP runtime, as the dynamic loader
    bound it (a wheel's vendored copy, the system's, Homebrew's), or None when unknown."""
    import ctypes
    import ctypes.util
    import os

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    try:  # the extension's own lookup scope: itself, then the libraries it links
        symbol = ctypes.CDLL(_engine.__file__).omp_get_max_threads
    except (OSError, AttributeError):
        return None
    for name in (None, ctypes.util.find_library("dl"), "libdl.so.2"):
        try:
            dladdr = ctypes.CDLL(name).dladdr
        except (OSError, AttributeError, TypeError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        found = DlInfo()
        if dladdr(ctypes.cast(symbol, ctypes.c_void_p), ctypes.byref(found)) and found.dli_fname:
            return os.path.realpath(os.fsdecode(found.dli_fname))
    return None


def _openmp_runtime_name(path: "str | None") -> "str | None":
    import os
    base = os.path.basename(path or "").lower()
    for key, name in (("gomp", "libgomp (GNU)"), ("iomp", "libiomp5 (Intel)"),
                      ("omp", "libomp (LLVM)")):
        if key in base:
            return name
    return None


def info() -> "dict[str, object]":
    """How this cgru was built and what it runs on, as a dict (`cgru info` prints it).

    version; compiler (name and version, from the compiler's own macros), build_flags and
    link_flags, build (all that setup.py recorded: compiler command, OpenMP flags, the Cython,
    NumPy and Python it built with, the platform); openmp (on or off), openmp_version (the
    OpenMP specification the compiler implements), openmp_runtime and openmp_runtime_path (the
    runtime library the engine is bound to), fork_keeps_threads; kernels (the instruction set
    the CPU dispatch chose for the gate kernels), recurrent_product (how the per-step
    products run: packed panels on CPUs with AVX2 and FMA or AVX-512, else on the weights as
    they lie, and in which register tiles) and bfloat16_product (how a quantized GRU's bfloat16
    W_hh are multiplied; step()'s bfloat16 W_ih are widened to float32 in registers),
    int8_product (how an int8 GRU's integer sums run); threads,
    cpus_available,
    blas, blas_threads_controlled, blas_kernel (the OpenBLAS kernel SciPy's BLAS runs, the best
    this CPU supports, and whether an environment variable holds it below). Facts that an extension built before they were recorded
    cannot give are None.
    """
    import json
    openmp = _engine.openmp_enabled()
    try:
        build = json.loads(getattr(_engine, "BUILD_INFO", "{}"))
    except ValueError:
        build = {}
    date = getattr(_engine, "OPENMP_DATE", 0)
    runtime_path = _openmp_library() if openmp else None
    panels = getattr(_engine, "panels_active", None)
    tiles = getattr(_engine, "register_tiles", None)
    kernels = getattr(_engine, "kernel_isa", None)
    bf16 = getattr(_engine, "bf16_kernel", None)
    int8 = getattr(_engine, "int8_kernel", None)
    return {
        "version": __version__,
        "compiler": (getattr(_engine, "COMPILER", None) or "").strip() or None,
        "build_flags": _engine.BUILD_FLAGS,
        "link_flags": build.get("link_flags"),
        "build": build,
        "openmp": openmp,
        "openmp_version": (f"{_OPENMP_SPECS.get(date, '?')} (_OPENMP {date})" if date else None),
        "openmp_runtime": _openmp_runtime_name(runtime_path),
        "openmp_runtime_path": runtime_path,
        "fork_keeps_threads": _engine.fork_keeps_threads(),
        "kernels": kernels() if kernels else None,
        "recurrent_product": (None if panels is None else
                              ("packed panels" if panels() else
                               "unpacked (one row, two rows at a time, or BLAS GEMM by batch)")
                              + (f", {tiles()}" if tiles else "")),
        "bfloat16_product": bf16() if bf16 else None,
        "int8_product": int8() if int8 else None,
        "threads": _engine.get_num_threads(),
        "cpus_available": _engine.cpus_available(),
        "blas": "scipy.linalg.cython_blas",
        "blas_threads_controlled": _engine.blas_threads_controlled(),
        "blas_kernel": _blas_kernel.check()._asdict(),
    }


__all__ = ["GRU", "Input", "Model", "Sequential", "load_model", "get_num_threads",
           "set_num_threads", "info",
           "__version__", "callbacks", "initializers", "layers", "losses", "metrics", "models",
           "optimizers", "saving", "schedules"]
