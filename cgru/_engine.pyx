# cython: boundscheck=False, wraparound=False
"""Thin wrapper over the C engine in src_c/.

Callers (cgru/gru.py) pass C-contiguous arrays of one dtype, already checked against each other;
this module re-checks what could crash the interpreter (dtype, contiguity, size), releases the GIL
around every C call, and turns C status codes into exceptions.
"""
import ctypes
import glob
import os

import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.stdint cimport int8_t, int64_t, uint16_t

cnp.import_array()

from cgru._fork import fork_safe_lock

cdef extern from "cgru.h":
    ctypedef enum cgru_status:
        CGRU_OK
        CGRU_ERR_NO_BLAS
        CGRU_ERR_TOO_LARGE
        CGRU_ERR_BAD_DIMS
        CGRU_ERR_NO_MEMORY
        CGRU_ERR_INFERENCE_ONLY

    ctypedef void (*cgru_sgemm_fn)(char*, char*, int*, int*, int*, float*, float*, int*, float*,
                                   int*, float*, float*, int*) noexcept nogil
    ctypedef void (*cgru_dgemm_fn)(char*, char*, int*, int*, int*, double*, double*, int*,
                                   double*, int*, double*, double*, int*) noexcept nogil
    ctypedef void (*cgru_sgemv_fn)(char*, int*, int*, float*, float*, int*, float*, int*, float*,
                                   float*, int*) noexcept nogil
    ctypedef void (*cgru_dgemv_fn)(char*, int*, int*, double*, double*, int*, double*, int*,
                                   double*, double*, int*) noexcept nogil
    void cgru_register_blas(cgru_sgemm_fn, cgru_dgemm_fn, cgru_sgemv_fn, cgru_dgemv_fn)

    int cgru_openmp_enabled() nogil
    int cgru_get_num_threads() nogil
    void cgru_set_num_threads(int) nogil
    void cgru_set_panels_mode(int) nogil
    int cgru_panels_active() nogil
    const char *cgru_register_tiles() nogil
    void cgru_set_tiles_mode(int) nogil
    const char *cgru_kernel_isa() nogil
    void cgru_set_bf16_dot_mode(int) nogil
    const char *cgru_bf16_kernel() nogil
    int cgru_bf16_strip_pairs_of(int) nogil
    void cgru_set_int8_dot_mode(int) nogil
    const char *cgru_int8_kernel() nogil
    int cgru_int8_strip_quads_of(int) nogil
    int cgru_cpus_available() nogil
    int cgru_fork_serial() nogil
    int cgru_fork_keeps_threads() nogil
    long cgru_stalls_seen() nogil
    int cgru_calls_in_flight() nogil
    void cgru_install_fork_handlers() nogil
    void cgru_reset_contention() nogil
    void cgru_set_cpus_override(int) nogil
    void cgru_set_solo_test(int) nogil
    int cgru_stall_asks_ns(int, double, double) nogil

    ctypedef struct cgru_layer_config:
        int time_steps, batch, input_size, hidden_size
        int reset_after
        int reverse
        int training
        int n_threads

    cgru_status cgru_layer_workspace_size(const cgru_layer_config*, size_t*, size_t*) nogil
    cgru_status cgru_layer_forward_f32(float*, int, float*, float*, float*, const float*,
                                       const float*, const float*, const float*, const float*,
                                       const float*, const int64_t*,
                                       const cgru_layer_config*) nogil
    cgru_status cgru_layer_forward_f64(double*, int, double*, double*, double*, const double*,
                                       const double*, const double*, const double*, const double*,
                                       const double*, const int64_t*,
                                       const cgru_layer_config*) nogil
    ctypedef enum cgru_weights:
        CGRU_WEIGHTS_DTYPE, CGRU_WEIGHTS_BF16, CGRU_WEIGHTS_INT8
    cgru_status cgru_layer_forward_quantized(float*, int, float*, float*, float*, const float*,
                                             const float*, const float*, const void*,
                                             cgru_weights, const float*, const float*,
                                             const int64_t*, const cgru_layer_config*) nogil
    cgru_status cgru_layer_backward_f32(float*, int, float*, float*, float*, float*, float*,
                                        const float*, int, const float*, float*, float*,
                                        const float*, const float*, const float*,
                                        const int64_t*, const cgru_layer_config*) nogil
    cgru_status cgru_layer_backward_f64(double*, int, double*, double*, double*, double*, double*,
                                        const double*, int, const double*, double*, double*,
                                        const double*, const double*, const double*,
                                        const int64_t*, const cgru_layer_config*) nogil
    cgru_status cgru_step_f32(float*, const float*, const float*, const float* const*,
                              const float* const*, const float* const*, const float* const*,
                              int, int, int, int, int, int) nogil
    cgru_status cgru_step_f64(double*, const double*, const double*, const double* const*,
                              const double* const*, const double* const*, const double* const*,
                              int, int, int, int, int, int) nogil

    cgru_status cgru_step_quantized(float*, const float*, const float*, const float* const*,
                                    const uint16_t* const*, const void* const*, cgru_weights,
                                    const float* const*, const float* const*,
                                    int, int, int, int, int, int) nogil

    cgru_status cgru_int8_product(float*, const float*, const int8_t*, int, int, int) nogil
    void cgru_activations_f32(float*, float*, const float*, long) nogil
    void cgru_activations_f64(double*, double*, const double*, long) nogil

cdef extern from *:
    """
    #ifndef CGRU_BUILD_FLAGS
    #define CGRU_BUILD_FLAGS "unknown"
    #endif
    static const char *cgru_build_flags = CGRU_BUILD_FLAGS;
    #ifndef CGRU_BUILD_INFO
    #define CGRU_BUILD_INFO "{}"
    #endif
    static const char *cgru_build_info = CGRU_BUILD_INFO;
    #if defined(__apple_build_version__)
    static const char *cgru_compiler = "Apple clang " __clang_version__;
    #elif defined(__clang__)
    static const char *cgru_compiler = "clang " __clang_version__;
    #elif defined(__GNUC__)
    static const char *cgru_compiler = "gcc " __VERSION__;
    #else
    static const char *cgru_compiler = "unknown";
    #endif
    #ifdef _OPENMP
    static const long cgru_openmp_date = _OPENMP;
    #else
    static const long cgru_openmp_date = 0;
    #endif
    """
    const char *cgru_build_flags
    const char *cgru_build_info
    const char *cgru_compiler
    const long cgru_openmp_date
BUILD_FLAGS = cgru_build_flags.decode()
# what setup.py recorded about the build (JSON): compiler command, link flags, OpenMP flags, ...
BUILD_INFO = cgru_build_info.decode()
# the compiler that compiled this module and the engine, from its own predefined macros
COMPILER = cgru_compiler.decode()
# _OPENMP as the compiler defined it (yyyymm of the OpenMP specification), 0 without OpenMP
OPENMP_DATE = cgru_openmp_date

MAX_LAYERS = 64
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)
# a quantized GRU's weights in the engine's strips (cgru.GRU.quantize), told apart by dtype:
# bfloat16 values, each the upper 16 bits of a float32 (uint16), or int8 weights with their
# scales (int8)
_BFLOAT16_BITS = np.dtype(np.uint16)
_INT8_STRIPS = np.dtype(np.int8)


cdef inline cgru_weights _strips_format(object dtype):
    """How strips of this dtype store their weights; CGRU_WEIGHTS_DTYPE for any other."""
    if dtype == _BFLOAT16_BITS:
        return CGRU_WEIGHTS_BF16
    if dtype == _INT8_STRIPS:
        return CGRU_WEIGHTS_INT8
    return CGRU_WEIGHTS_DTYPE


cdef inline Py_ssize_t _strips_row(cgru_weights fmt) noexcept:
    """Elements per row of a strips array: one 64-byte vector."""
    return 32 if fmt == CGRU_WEIGHTS_BF16 else 64


cdef inline Py_ssize_t _strips_size(cgru_weights fmt, Py_ssize_t H, Py_ssize_t K) noexcept:
    """Elements of weights (3H, K) in strips of this format."""
    return bf16_strips_size(H, K) if fmt == CGRU_WEIGHTS_BF16 else int8_strips_size(H, K)


# ---- BLAS from SciPy -----------------------------------------------------------------------------

cdef void *_blas_pointer(str name) except NULL:
    from scipy.linalg import cython_blas
    capsule = cython_blas.__pyx_capi__[name]
    cdef void *ptr = PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))
    if ptr == NULL:
        raise ImportError(f"cgru: scipy.linalg.cython_blas has no usable '{name}'")
    return ptr

cgru_register_blas(<cgru_sgemm_fn>_blas_pointer("sgemm"), <cgru_dgemm_fn>_blas_pointer("dgemm"),
                   <cgru_sgemv_fn>_blas_pointer("sgemv"), <cgru_dgemv_fn>_blas_pointer("dgemv"))
cgru_install_fork_handlers()  # after the BLAS loaded: its fork handlers then run after cgru's


def _find_scipy_openblas():
    """ctypes handle of the OpenBLAS that SciPy's BLAS runs on, or None (another BLAS)."""
    import scipy
    here = os.path.dirname(scipy.__file__)
    patterns = [os.path.join(here, "..", "scipy.libs", "libscipy_openblas*"),
                os.path.join(here, ".dylibs", "libscipy_openblas*"),
                os.path.join(here, "..", "scipy_openblas32", "lib", "libscipy_openblas*")]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


class _BlasThreads:
    """Caps SciPy's OpenBLAS at one thread while engine calls run, so that OpenMP alone owns the
    cores: the first call in saves the user's setting and the last call out restores it.

    The GIL does not make this atomic: OpenBLAS's get/set calls go through ctypes, which releases
    the GIL, so a second Python thread could enter between the first one's check and its set and
    run its engine call with OpenBLAS threaded (different bits) or leave the user's setting lost.
    A lock, held across the ctypes calls, makes entering and leaving one step each.

    lib: the OpenBLAS library (ctypes), or None where SciPy runs on another BLAS.
    """

    def __init__(self, lib):
        self.active = 0
        self.saved = None
        self.lock = fork_safe_lock()
        self.set_fn = self.get_fn = None
        if lib is not None:
            for prefix in ("scipy_openblas_", "openblas_"):
                try:
                    self.set_fn = getattr(lib, prefix + "set_num_threads")
                    self.get_fn = getattr(lib, prefix + "get_num_threads")
                    self.set_fn.argtypes = [ctypes.c_int]
                    self.set_fn.restype = None
                    self.get_fn.restype = ctypes.c_int
                    break
                except AttributeError:
                    self.set_fn = self.get_fn = None

    @property
    def controlled(self):
        return self.set_fn is not None

    def enter(self):
        with self.lock:
            if self.active == 0 and self.set_fn is not None:
                self.saved = self.get_fn()
                if self.saved != 1:
                    self.set_fn(1)
            self.active += 1

    def leave(self):
        with self.lock:
            self.active -= 1
            if self.active == 0 and self.set_fn is not None and self.saved not in (None, 1):
                self.set_fn(self.saved)

    def after_fork_in_child(self):
        # calls that were running in the parent's other threads do not exist here; the fork
        # happened outside enter and leave (_before_fork), so OpenBLAS is capped exactly while
        # `active` says so
        if self.active and self.set_fn is not None and self.saved not in (None, 1):
            self.set_fn(self.saved)
        self.active = 0


_blas_threads = _BlasThreads(_find_scipy_openblas())
_fork_holds_blas_lock = False


def _before_fork():
    # no fork between OpenBLAS's setting and the count that says who set it (the ctypes call
    # between them lets other threads run): a child forked there would take the cap for the
    # user's setting
    global _fork_holds_blas_lock
    _blas_threads.lock.acquire()
    _fork_holds_blas_lock = True


def _after_fork_in_parent():
    global _fork_holds_blas_lock
    if _fork_holds_blas_lock:
        _fork_holds_blas_lock = False
        _blas_threads.lock.release()


def _after_fork_in_child():
    global _fork_holds_blas_lock
    _fork_holds_blas_lock = False  # and the lock is unlocked (cgru/_fork.py, which runs first)
    _blas_threads.after_fork_in_child()
    if cgru_fork_serial():
        import warnings
        warnings.warn("cgru: this process was forked from one whose OpenMP runtime could not be "
                      "reset, so the engine runs on one thread here; start worker processes "
                      "with the 'spawn' or 'forkserver' method to keep threads", RuntimeWarning)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def blas_threads_controlled():
    """True when cgru can hold SciPy's OpenBLAS to one thread inside its OpenMP regions."""
    return _blas_threads.controlled


# ---- threads -------------------------------------------------------------------------------------

def openmp_enabled():
    return bool(cgru_openmp_enabled())


def get_num_threads():
    return cgru_get_num_threads()


def set_num_threads(int n):
    cgru_set_num_threads(n)


def cpus_available():
    """CPUs this process may use now (affinity mask, cgroup CPU quota)."""
    return cgru_cpus_available()


def fork_serial():
    """True in a fork child whose OpenMP runtime could not be reset: the engine runs serially."""
    return bool(cgru_fork_serial())


def fork_keeps_threads():
    """True when children made by fork() run the engine with threads (see src_c/threads.c)."""
    return bool(cgru_fork_keeps_threads())


def stalls_seen():
    """Engine calls so far whose thread team stalled (a thread descheduled) and went on alone."""
    return cgru_stalls_seen()


def calls_in_flight():
    """Engine calls running now, in any thread (a fork waits for them to end)."""
    return cgru_calls_in_flight()


def reset_contention():
    """Forget recent stalls: the next call uses its full thread count again."""
    cgru_reset_contention()


def set_cpus_override(int cpus):
    """Tests: pretend the process has `cpus` CPUs (0: the real count)."""
    cgru_set_cpus_override(cpus)


def set_solo_test(int barrier_pass):
    """Tests: every thread team goes on with its last thread alone at this barrier pass (0: off)."""
    cgru_set_solo_test(barrier_pass)


def stall_asks(int earlier_long_waits, double lost_ms, double so_far_ms):
    """Tests: whether a thread in a long wait at a step's barrier asks that it go on alone, with
    `earlier_long_waits` before it in the call, `lost_ms` spent in long waits (this one so far
    included) and the call `so_far_ms` old (src_c/barrier.h)."""
    return bool(cgru_stall_asks_ns(earlier_long_waits, lost_ms * 1e6, so_far_ms * 1e6))


def set_panels_mode(int mode):
    """Per-step products on packed panels (1), on BLAS (0), or as the CPU suggests (-1)."""
    cgru_set_panels_mode(mode)


def panels_active():
    """True when the sequence loop's per-step products run on packed panels now (CPUs with AVX2
    and FMA, or AVX-512), else on the weights as they lie."""
    return bool(cgru_panels_active())


def set_tiles_mode(int mode):
    """Register tiles of 64-byte vectors (1), of 32-byte ones (0), or as the CPU suggests (-1)."""
    cgru_set_tiles_mode(mode)


def register_tiles():
    """The register tiles the product kernels use on this CPU: 64-byte vectors (AVX-512) or
    32-byte ones."""
    return cgru_register_tiles().decode()


cdef inline Py_ssize_t bf16_strips_size(Py_ssize_t H, Py_ssize_t K) noexcept:
    """Elements of weights (3H, K) (W_hh: K = H) in bfloat16 strips (src_c/product.h)."""
    return 3 * ((H + 15) // 16) * cgru_bf16_strip_pairs_of(<int>K) * 32


def bf16_strips(bits):
    """Weights (3H, K) (W_hh, or W_ih) as bfloat16 bits (uint16) -> the engine's strips
    (3 S P, 32), S = ceil(H/16) strips of 16 units per gate, P pairs of k (ceil(K/2) made odd:
    src_c/product.h): strips[(g S + s) P + p, 2 i + e] = W[g H + 16 s + i, 2 p + e], 0 past H
    and K."""
    bits = np.asarray(bits, np.uint16)
    H, K = bits.shape[0] // 3, bits.shape[1]
    S, P = (H + 15) // 16, cgru_bf16_strip_pairs_of(K)
    padded = np.zeros((3, 16 * S, 2 * P), np.uint16)
    padded[:, :H, :K] = bits.reshape(3, H, K)
    strips = padded.reshape(3, S, 16, P, 2).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(strips).reshape(3 * S * P, 32)


cdef inline Py_ssize_t int8_strips_size(Py_ssize_t H, Py_ssize_t K) noexcept:
    """Bytes of weights (3H, K) in int8 strips (src_c/strips_int8.h)."""
    return 3 * ((H + 15) // 16) * (cgru_int8_strip_quads_of(<int>K) + 2) * 64


def int8_strips(q, scale):
    """Weights (3H, K) as int8 values q with a float32 scale per row (3H,) -> the engine's
    strips (3 S (Q + 2), 64), int8: per gate, S = ceil(H/16) strips of 16 units, each a line of
    the 16 scales, a line of 128 times each unit's sum of q (int32), then Q quads of k (ceil(K/4)
    made odd), byte 4 i + e of quad c = q[g H + 16 s + i, 4 c + e] (src_c/strips_int8.h)."""
    q = np.asarray(q, np.int8)
    scale = np.asarray(scale, np.float32)
    H, K = q.shape[0] // 3, q.shape[1]
    S, Q = (H + 15) // 16, cgru_int8_strip_quads_of(K)
    padded = np.zeros((3, 16 * S, 4 * Q), np.int8)
    padded[:, :H, :K] = q.reshape(3, H, K)
    strips = np.zeros((3, S, Q + 2, 64), np.int8)
    strips[:, :, 2:] = padded.reshape(3, S, 16, Q, 4).transpose(0, 1, 3, 2, 4).reshape(3, S, Q, 64)
    scales = np.zeros((3, 16 * S), np.float32)
    scales[:, :H] = scale.reshape(3, H)
    strips[:, :, 0] = scales.reshape(3, S, 16).view(np.int8)
    offsets = np.zeros((3, 16 * S), np.int32)
    offsets[:, :H] = 128 * q.reshape(3, H, K).astype(np.int32).sum(axis=2)
    strips[:, :, 1] = offsets.reshape(3, S, 16).view(np.int8)
    return strips.reshape(3 * S * (Q + 2), 64)


def set_int8_dot_mode(int mode):
    """int8 weights multiplied with AVX512_VNNI where the CPU has it (1, or -1: as the CPU
    suggests), or in 32-bit integer lanes (0): the same bits either way."""
    cgru_set_int8_dot_mode(mode)


def int8_kernel():
    """How int8 weights are multiplied on this CPU now."""
    return cgru_int8_kernel().decode()


def set_bf16_dot_mode(int mode):
    """bfloat16 weights multiplied with AVX512_BF16's dot product where the CPU has it (1, or -1:
    as the CPU suggests), or widened to float32 in registers (0)."""
    cgru_set_bf16_dot_mode(mode)


def bf16_kernel():
    """How bfloat16 weights are multiplied on this CPU now."""
    return cgru_bf16_kernel().decode()


def kernel_isa():
    """The instruction set the gate kernels run with on this CPU (the runtime dispatch's pick)."""
    return cgru_kernel_isa().decode()



# ---- status codes --------------------------------------------------------------------------------

cdef int _check(cgru_status status, str what) except -1:
    if status == CGRU_OK:
        return 0
    if status == CGRU_ERR_NO_BLAS:
        raise RuntimeError(f"{what}: BLAS from scipy.linalg.cython_blas was not registered")
    if status == CGRU_ERR_TOO_LARGE:
        raise ValueError(f"{what}: a dimension exceeds what 32-bit BLAS can index "
                         "(time steps x batch and 3 x hidden_size must stay below 2**31)")
    if status == CGRU_ERR_BAD_DIMS:
        raise ValueError(f"{what}: every size must be positive")
    if status == CGRU_ERR_NO_MEMORY:
        raise MemoryError(f"{what}: out of memory")
    if status == CGRU_ERR_INFERENCE_ONLY:
        raise RuntimeError(f"{what}: quantized weights run inference only")
    raise RuntimeError(f"{what}: unexpected engine status {status}")


cdef void *_data(object a, object dtype, Py_ssize_t size, str name,
                 bint optional=False) except? NULL:
    """Pointer to a C-contiguous array of dtype with at least `size` elements; NULL for None
    where the argument is optional. Checked through NumPy's C API: this runs on every step()."""
    if a is None:
        if optional:
            return NULL
        raise TypeError(f"engine argument '{name}' is required, got None")
    if not cnp.PyArray_Check(a):
        raise TypeError(f"engine argument '{name}' must be a NumPy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int want = cnp.NPY_FLOAT if dtype is _FLOAT32 else (
        cnp.NPY_DOUBLE if dtype is _FLOAT64 else (
            cnp.NPY_UINT16 if dtype is _BFLOAT16_BITS else (
                cnp.NPY_INT8 if dtype is _INT8_STRIPS else cnp.NPY_INT64)))
    if cnp.PyArray_TYPE(arr) != want or not cnp.PyArray_IS_C_CONTIGUOUS(arr) \
            or not cnp.PyArray_ISALIGNED(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"engine argument '{name}' must be an aligned, C-contiguous {dtype} "
                        f"array in native byte order, got {arr.dtype} (C-contiguous: "
                        f"{arr.flags.c_contiguous}, aligned: {arr.flags.aligned})")
    if cnp.PyArray_SIZE(arr) < size:
        raise ValueError(f"engine argument '{name}' needs {size} elements, got {arr.size}")
    return cnp.PyArray_DATA(arr)


cdef int _engine_int(Py_ssize_t value, str what) except -1:
    """value as the engine's int, refused when it does not fit (every size is checked here, in
    64 bits, before it reaches C)."""
    if value < 1 or value > 2147483647:
        raise ValueError(f"{what} must lie in [1, 2**31 - 1], got {value}")
    return <int>value


cdef cgru_layer_config _config(int T, int B, int I, int H, bint reset_after, bint reverse,
                               bint training, int n_threads):
    cdef cgru_layer_config c
    c.time_steps, c.batch, c.input_size, c.hidden_size = T, B, I, H
    c.reset_after, c.reverse, c.training, c.n_threads = reset_after, reverse, training, n_threads
    return c


def layer_workspace_size(int T, int B, int I, int H, bint reset_after, bint training,
                         int n_threads):
    """(saved, scratch) element counts of one layer and direction run on n_threads."""
    cdef cgru_layer_config c = _config(T, B, I, H, reset_after, False, training, n_threads)
    cdef size_t saved = 0, scratch = 0
    _check(cgru_layer_workspace_size(&c, &saved, &scratch), "layer_workspace_size")
    return int(saved), int(scratch)


def layer_forward(y, int column, h_n, saved, scratch, x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
                  bint reset_after, bint reverse, bint training, int n_threads):
    """One layer and direction forward. y (T, B, ldy) gets this direction at columns
    [column, column + H); h_n (B, H); saved/scratch sized by layer_workspace_size. A uint16
    w_hh holds bfloat16 strips, an int8 one int8 strips (a quantized float32 GRU, inference
    only)."""
    cdef int T = _engine_int(x.shape[0], "time steps"), B = _engine_int(x.shape[1], "batch")
    # strips (a uint16 or int8 w_hh) do not show H in their shape: h_n (B, H) does
    cdef cgru_weights fmt = _strips_format(w_hh.dtype)
    cdef bint quantized = fmt != CGRU_WEIGHTS_DTYPE
    cdef int I = _engine_int(x.shape[2], "input size")
    cdef int H = _engine_int(h_n.shape[1] if quantized else w_hh.shape[1], "hidden size")
    cdef int ldy = _engine_int(y.shape[2], "output width")
    if column < 0 or column + H > ldy or y.shape[0] != T or y.shape[1] != B:
        raise ValueError("layer_forward: output block out of range")
    cdef cgru_layer_config c = _config(T, B, I, H, reset_after, reverse, training, n_threads)
    cdef size_t n_saved = 0, n_scratch = 0
    _check(cgru_layer_workspace_size(&c, &n_saved, &n_scratch), "layer_forward")
    dt = _FLOAT32 if x.dtype == _FLOAT32 else (_FLOAT64 if x.dtype == _FLOAT64 else x.dtype)
    cdef Py_ssize_t G = 3 * <Py_ssize_t>H, TB = <Py_ssize_t>T * B
    cdef void *py = _data(y, dt, TB * ldy, "y")
    cdef void *ph_n = _data(h_n, dt, B * H, "h_n")
    cdef void *psaved = _data(saved, dt, n_saved, "saved")
    cdef void *pscratch = _data(scratch, dt, n_scratch, "scratch")
    cdef void *px = _data(x, dt, TB * I, "x")
    cdef void *ph0 = _data(h0, dt, B * H, "h0", optional=True)
    cdef void *pw_ih = _data(w_ih, dt, G * I, "w_ih")
    if quantized and (dt is not _FLOAT32 or training):
        raise TypeError("layer_forward: quantized weights run a float32 inference forward only")
    cdef void *pw_hh = _data(w_hh, dt if not quantized else (
                                 _BFLOAT16_BITS if fmt == CGRU_WEIGHTS_BF16 else _INT8_STRIPS),
                             _strips_size(fmt, H, H) if quantized else G * H, "w_hh")
    cdef void *pb_ih = _data(b_ih, dt, G, "b_ih", optional=True)
    cdef void *pb_hh = _data(b_hh, dt, G, "b_hh", optional=True)
    if (pb_ih == NULL) != (pb_hh == NULL):
        raise ValueError("layer_forward: b_ih and b_hh are both given or both None")
    cdef void *plengths = _data(lengths, _INT64, B, "lengths", optional=True)
    cdef cgru_status status
    _blas_threads.enter()
    try:
        if quantized:
            with nogil:
                status = cgru_layer_forward_quantized(
                    <float*>py + column, ldy, <float*>ph_n, <float*>psaved, <float*>pscratch,
                    <float*>px, <float*>ph0, <float*>pw_ih, pw_hh, fmt, <float*>pb_ih,
                    <float*>pb_hh, <int64_t*>plengths, &c)
        elif dt is _FLOAT32:
            with nogil:
                status = cgru_layer_forward_f32(
                    <float*>py + column, ldy, <float*>ph_n, <float*>psaved, <float*>pscratch,
                    <float*>px, <float*>ph0, <float*>pw_ih, <float*>pw_hh, <float*>pb_ih,
                    <float*>pb_hh, <int64_t*>plengths, &c)
        elif dt is _FLOAT64:
            with nogil:
                status = cgru_layer_forward_f64(
                    <double*>py + column, ldy, <double*>ph_n, <double*>psaved, <double*>pscratch,
                    <double*>px, <double*>ph0, <double*>pw_ih, <double*>pw_hh, <double*>pb_ih,
                    <double*>pb_hh, <int64_t*>plengths, &c)
        else:
            raise TypeError(f"layer_forward: dtype must be float32 or float64, got {dt}")
    finally:
        _blas_threads.leave()
    _check(status, "layer_forward")


def layer_backward(dx, bint accumulate_dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dy, int column, dh_n,
                   saved, scratch, x, w_ih, w_hh, lengths, bint reset_after, bint reverse,
                   int n_threads):
    """One layer and direction backward; consumes `saved` from a training forward."""
    cdef int T = _engine_int(x.shape[0], "time steps"), B = _engine_int(x.shape[1], "batch")
    cdef int I = _engine_int(x.shape[2], "input size"), H = _engine_int(w_hh.shape[1], "hidden size")
    cdef int ldy = _engine_int(dy.shape[2], "output width")
    if column < 0 or column + H > ldy or dy.shape[0] != T or dy.shape[1] != B:
        raise ValueError("layer_backward: gradient block out of range")
    cdef cgru_layer_config c = _config(T, B, I, H, reset_after, reverse, True, n_threads)
    cdef size_t n_saved = 0, n_scratch = 0
    _check(cgru_layer_workspace_size(&c, &n_saved, &n_scratch), "layer_backward")
    dt = _FLOAT32 if x.dtype == _FLOAT32 else (_FLOAT64 if x.dtype == _FLOAT64 else x.dtype)
    cdef Py_ssize_t G = 3 * <Py_ssize_t>H, TB = <Py_ssize_t>T * B
    cdef void *pdx = _data(dx, dt, TB * I, "dx")
    cdef void *pdh0 = _data(dh0, dt, B * H, "dh0")
    cdef void *pdw_ih = _data(dw_ih, dt, G * I, "dw_ih")
    cdef void *pdw_hh = _data(dw_hh, dt, G * H, "dw_hh")
    cdef void *pdb_ih = _data(db_ih, dt, G, "db_ih", optional=True)
    cdef void *pdb_hh = _data(db_hh, dt, G, "db_hh", optional=True)
    if (pdb_ih == NULL) != (pdb_hh == NULL):
        raise ValueError("layer_backward: db_ih and db_hh are both given or both None")
    cdef void *pdy = _data(dy, dt, TB * ldy, "dy")
    cdef void *pdh_n = _data(dh_n, dt, B * H, "dh_n", optional=True)
    cdef void *psaved = _data(saved, dt, n_saved, "saved")
    cdef void *pscratch = _data(scratch, dt, n_scratch, "scratch")
    cdef void *px = _data(x, dt, TB * I, "x")
    cdef void *pw_ih = _data(w_ih, dt, G * I, "w_ih")
    cdef void *pw_hh = _data(w_hh, dt, G * H, "w_hh")
    cdef void *plengths = _data(lengths, _INT64, B, "lengths", optional=True)
    cdef cgru_status status
    _blas_threads.enter()
    try:
        if dt is _FLOAT32:
            with nogil:
                status = cgru_layer_backward_f32(
                    <float*>pdx, accumulate_dx, <float*>pdh0, <float*>pdw_ih, <float*>pdw_hh,
                    <float*>pdb_ih, <float*>pdb_hh, <float*>pdy + column, ldy, <float*>pdh_n,
                    <float*>psaved, <float*>pscratch, <float*>px, <float*>pw_ih, <float*>pw_hh,
                    <int64_t*>plengths, &c)
        elif dt is _FLOAT64:
            with nogil:
                status = cgru_layer_backward_f64(
                    <double*>pdx, accumulate_dx, <double*>pdh0, <double*>pdw_ih, <double*>pdw_hh,
                    <double*>pdb_ih, <double*>pdb_hh, <double*>pdy + column, ldy, <double*>pdh_n,
                    <double*>psaved, <double*>pscratch, <double*>px, <double*>pw_ih,
                    <double*>pw_hh, <int64_t*>plengths, &c)
        else:
            raise TypeError(f"layer_backward: dtype must be float32 or float64, got {dt}")
    finally:
        _blas_threads.leave()
    _check(status, "layer_backward")


cdef inline bint _same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int d
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b):
        return False
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
            return False
    return True


cdef cnp.ndarray _step_param(dict params, str name, int type_num, object dtype, int rows,
                             int cols, list held):
    """params[name] checked as gru.GRU._checked_params does: dtype, contiguity and exact shape.
    cols = 0 for a bias (rows,). A misaligned array is replaced by an aligned copy. `held` keeps
    what is returned alive until the step is done: the engine reads it without the GIL, while
    another thread may replace params[name] (load_state_dict, an assignment) and free the old."""
    obj = params.get(name)
    if obj is None:
        raise KeyError(f"params is missing '{name}'")
    if not cnp.PyArray_Check(obj) or cnp.PyArray_TYPE(<cnp.ndarray>obj) != type_num or \
            not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj) or \
            not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>obj):
        raise TypeError(f"params['{name}'] must be a C-contiguous {dtype} array; got "
                        f"{type(obj).__name__} {getattr(obj, 'dtype', '')}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if (cnp.PyArray_NDIM(a) != (2 if cols else 1) or a.shape[0] != rows
            or (cols and a.shape[1] != cols)):
        want = str((rows, cols)) if cols else str((rows,))
        raise ValueError(f"params['{name}'] must have shape {want}, got {obj.shape}")
    if not cnp.PyArray_ISALIGNED(a):
        a = np.require(a, requirements=["C", "A"])  # the kernels' loads need aligned elements
    held.append(a)
    return a


cdef class StepLayout:
    """What gru_step needs of a unidirectional GRU's architecture, checked once (cgru.GRU keeps
    one): names, (w_ih names, w_hh names, b_ih names, b_hh names), one per layer; L layers
    (`layers`) of H units (`units`) on I inputs (`inputs`); reset_after; bias; dtype float32 or
    float64."""
    cdef readonly tuple n_ih, n_hh, nb_ih, nb_hh
    cdef readonly int layers, inputs, units, type_num
    cdef readonly bint reset_after, bias
    cdef readonly object dtype

    def __init__(self, tuple names, int L, int I, int H, bint reset_after, bint bias, dtype):
        if L < 1 or L > MAX_LAYERS:
            raise ValueError(f"step: between 1 and {MAX_LAYERS} layers, got {L}")
        if I < 1 or H < 1:
            raise ValueError(f"step: input_size and hidden_size must be positive, got {I}, {H}")
        if len(names) != 4 or any(not isinstance(n, tuple) or len(n) != L for n in names):
            raise ValueError(f"step: the parameter names must be 4 tuples of {L} names")
        self.n_ih, self.n_hh, self.nb_ih, self.nb_hh = names
        self.type_num = (<cnp.dtype?>dtype).type_num
        if self.type_num != cnp.NPY_FLOAT and self.type_num != cnp.NPY_DOUBLE:
            raise TypeError(f"step: dtype must be float32 or float64, got {dtype}")
        self.layers, self.inputs, self.units = L, I, H
        self.reset_after, self.bias, self.dtype = reset_after, bias, dtype


cdef inline cnp.ndarray _step_operand(object a, str name, StepLayout layout):
    """x_t or h as an array of the GRU's dtype in native byte order, else a TypeError."""
    if not cnp.PyArray_Check(a):
        a = np.asarray(a)
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != layout.type_num or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"{name} has dtype {arr.dtype} but the GRU's parameters are "
                        f"{layout.dtype} (native byte order); pass "
                        f"{name}.astype(np.{layout.dtype.name})")
    return arr


def gru_step(dict params, x_t, h, out, StepLayout layout not None, dict strips=None,
             dict rounded=None):
    """One time step through the layers of a unidirectional GRU (cgru.GRU.step): checks its
    arguments as precisely as the Python layer would, in C, because it runs once per time step.

    params: the GRU's parameter dict, by layout's names; x_t (B, I) with h (L, B, H), or x_t (I,)
    with h (L, H); out: None or an array of h's shape; strips: None, or the W_hh of every
    layer of a quantized float32 GRU in bfloat16 strips (bf16_strips) or int8 strips
    (int8_strips), by the same names, and every W_ih too in bfloat16 strips or none, and rounded
    the params entries they were made from. Returns out, or
    a new array; None, having done nothing, when a params entry is no longer the one its strips
    were made from (replaced since: the caller rounds the new one and calls again)."""
    cdef int L = layout.layers, I = layout.inputs, H = layout.units, type_num = layout.type_num
    if strips is not None and rounded is None:
        raise TypeError("gru_step: strips come with the rounded params entries they were made "
                        "from (rounded)")
    cdef bint reset_after = layout.reset_after, bias = layout.bias
    dtype = layout.dtype
    cdef cnp.ndarray xa = _step_operand(x_t, "x_t", layout), ha = _step_operand(h, "h", layout)
    cdef int nd_x = cnp.PyArray_NDIM(xa), nd_h = cnp.PyArray_NDIM(ha)
    cdef Py_ssize_t B, features
    if nd_x == 1 and nd_h == 2:
        B, features = 1, xa.shape[0]
        shape_ok = ha.shape[0] == L and ha.shape[1] == H
    elif nd_x == 2 and nd_h == 3:
        B, features = xa.shape[0], xa.shape[1]
        shape_ok = ha.shape[0] == L and ha.shape[1] == B and ha.shape[2] == H
    else:
        raise ValueError(f"step takes x_t (B, input_size) with h (num_layers, B, hidden_size), or "
                         f"x_t (input_size,) with h (num_layers, hidden_size); got x_t "
                         f"{np.shape(xa)} and h {np.shape(ha)}")
    if features != I:
        raise ValueError(f"x_t must have {I} features, got {features}")
    if not shape_ok:
        want = str((L, B, H)) if nd_h == 3 else str((L, H))
        raise ValueError(f"h must have shape {want}, got {np.shape(ha)}")
    if B == 0:
        raise ValueError("x_t has a batch of 0 rows")
    if out is None:
        out = cnp.PyArray_EMPTY(nd_h, cnp.PyArray_DIMS(ha), type_num, 0)
    elif (not cnp.PyArray_Check(out) or cnp.PyArray_TYPE(<cnp.ndarray>out) != type_num
          or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
          or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>out)
          or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
          or not _same_shape(<cnp.ndarray>out, ha)):
        raise ValueError(f"out must be a writeable C-contiguous {dtype} array in native byte "
                         f"order, of shape {np.shape(ha)}")
    user_out = None
    if not cnp.PyArray_ISALIGNED(<cnp.ndarray>out):  # computed aligned, then copied into out
        user_out, out = out, cnp.PyArray_EMPTY(nd_h, cnp.PyArray_DIMS(ha), type_num, 0)
    if not cnp.PyArray_IS_C_CONTIGUOUS(xa) or not cnp.PyArray_ISALIGNED(xa):
        xa = np.require(xa, requirements=["C", "A"])
    if not cnp.PyArray_IS_C_CONTIGUOUS(ha) or not cnp.PyArray_ISALIGNED(ha):
        ha = np.require(ha, requirements=["C", "A"])

    cdef const void *wi[64]
    cdef const void *wh[64]
    cdef const void *wi16[64]
    cdef bint inputs16 = strips is not None and layout.n_ih[0] in strips
    cdef cgru_weights fmt = CGRU_WEIGHTS_DTYPE
    if strips is not None:
        fmt = _strips_format(getattr(strips.get(layout.n_hh[0]), "dtype", None))
        if fmt == CGRU_WEIGHTS_DTYPE:
            raise TypeError(f"gru_step: strips['{layout.n_hh[0]}'] must be bfloat16 (uint16) or "
                            f"int8 strips")
    cdef object hh_dtype = _BFLOAT16_BITS if fmt == CGRU_WEIGHTS_BF16 else _INT8_STRIPS
    cdef int hh_type = cnp.NPY_UINT16 if fmt == CGRU_WEIGHTS_BF16 else cnp.NPY_INT8
    cdef Py_ssize_t row = _strips_row(fmt)
    cdef const void *bi[64]
    cdef const void *bh[64]
    cdef int l, K, G = 3 * H
    cdef tuple n_ih = layout.n_ih, n_hh = layout.n_hh, nb_ih = layout.nb_ih, nb_hh = layout.nb_hh
    cdef list held = []
    for l in range(L):
        K = I if l == 0 else H
        if inputs16:  # the float32 W_ih goes unread
            wi16[l] = cnp.PyArray_DATA(_step_param(strips, n_ih[l], cnp.NPY_UINT16,
                                                   _BFLOAT16_BITS, bf16_strips_size(H, K) // 32,
                                                   32, held))
        else:
            wi[l] = cnp.PyArray_DATA(_step_param(params, n_ih[l], type_num, dtype, G, K, held))
        if strips is None:
            wh[l] = cnp.PyArray_DATA(_step_param(params, n_hh[l], type_num, dtype, G, H, held))
        else:
            wh[l] = cnp.PyArray_DATA(_step_param(strips, n_hh[l], hh_type, hh_dtype,
                                                 _strips_size(fmt, H, H) // row, row, held))
        if bias:
            bi[l] = cnp.PyArray_DATA(_step_param(params, nb_ih[l], type_num, dtype, G, 0, held))
            bh[l] = cnp.PyArray_DATA(_step_param(params, nb_hh[l], type_num, dtype, G, 0, held))
    if strips is not None:
        # last, once nothing that could run Python code (and let another thread replace an entry)
        # is left before the engine reads the weights gathered above
        for name, value in rounded.items():
            if params.get(name) is not value:
                return None
    cdef void *pout = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef void *pin = cnp.PyArray_DATA(ha)
    cdef void *px = cnp.PyArray_DATA(xa)
    cdef int b = _engine_int(B, "batch"), n_threads = cgru_get_num_threads()
    cdef cgru_status status
    # step() shares work between threads only on its own kernels and calls BLAS from the calling
    # thread alone, so SciPy's BLAS keeps its thread setting: nothing to cap, and the two ctypes
    # calls that capping costs are saved
    if strips is not None:
        if type_num != cnp.NPY_FLOAT:
            raise TypeError("step: quantized weights belong to a float32 GRU")
        with nogil:
            status = cgru_step_quantized(<float*>pout, <float*>pin, <float*>px,
                                         <const float* const*>wi,
                                         <const uint16_t* const*>wi16 if inputs16 else NULL,
                                         wh, fmt,
                                         <const float* const*>bi if bias else NULL,
                                         <const float* const*>bh if bias else NULL,
                                         L, b, I, H, reset_after, n_threads)
    elif type_num == cnp.NPY_FLOAT:
        with nogil:
            status = cgru_step_f32(<float*>pout, <float*>pin, <float*>px,
                                   <const float* const*>wi, <const float* const*>wh,
                                   <const float* const*>bi if bias else NULL,
                                   <const float* const*>bh if bias else NULL,
                                   L, b, I, H, reset_after, n_threads)
    else:
        with nogil:
            status = cgru_step_f64(<double*>pout, <double*>pin, <double*>px,
                                   <const double* const*>wi, <const double* const*>wh,
                                   <const double* const*>bi if bias else NULL,
                                   <const double* const*>bh if bias else NULL,
                                   L, b, I, H, reset_after, n_threads)
    _check(status, "step")
    if user_out is not None:
        user_out[...] = out
        return user_out
    return out


def int8_product(a, strips, int H):
    """a (M, K) float32 times W^T for W (3H, K) in int8 strips (int8_strips), as every
    recurrent product of an int8 GRU computes it: (M, 3H) float32."""
    a = np.require(a, np.float32, ["C", "A"])
    cdef int M = _engine_int(a.shape[0], "rows"), K = _engine_int(a.shape[1], "inputs")
    cdef void *pw = _data(strips, _INT8_STRIPS, int8_strips_size(H, K), "strips")
    out = np.empty((M, 3 * H), np.float32)
    cdef float *pout = <float*>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef float *pa = <float*>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef cgru_status status
    with nogil:
        status = cgru_int8_product(pout, pa, <int8_t*>pw, M, H, K)
    _check(status, "int8_product")
    return out


def activations(x):
    """(sigmoid(x), tanh(x)) as the engine computes them, for a float32 or float64 array."""
    x = np.ascontiguousarray(x)
    sig = np.empty_like(x)
    tan = np.empty_like(x)
    cdef long n = x.size
    if x.dtype == np.float32:
        cgru_activations_f32(<float*>cnp.PyArray_DATA(sig), <float*>cnp.PyArray_DATA(tan),
                             <float*>cnp.PyArray_DATA(x), n)
    elif x.dtype == np.float64:
        cgru_activations_f64(<double*>cnp.PyArray_DATA(sig), <double*>cnp.PyArray_DATA(tan),
                             <double*>cnp.PyArray_DATA(x), n)
    else:
        raise TypeError(f"activations: dtype must be float32 or float64, got {x.dtype}")
    return sig, tan
