"""Which OpenBLAS kernel SciPy's BLAS runs here, and whether it is the best this CPU supports.

Standalone (NumPy, threadpoolctl and SciPy only; no cgru import), so that `cgru info` can use
the same function: `check()` returns a `KernelCheck`; `python -m cgru._blas_kernel` prints it.

OpenBLAS picks its kernels once, when it loads, from the CPU's instructions (DYNAMIC_ARCH
builds, as SciPy's wheels are), unless OPENBLAS_CORETYPE names a core: then it runs that core's
kernels, older ones included. threadpoolctl reports the choice as `architecture`, OpenBLAS's
core name. What matters for cgru's float32/float64 GEMMs is the instruction tier of the kernels:

    tier 4  AVX-512: SkylakeX; Cooperlake (SkylakeX's float kernels plus bfloat16 ones, chosen
            when the CPU has AVX512_BF16); SapphireRapids (plus AMX bfloat16)
    tier 3  AVX2 + FMA: Haswell; Zen (Haswell's kernels on AMD Zen 1-3)
    tier 2  AVX: Sandybridge, Bulldozer, Piledriver, Steamroller, Excavator
    tier 1  older (Nehalem, Prescott, Core2, Barcelona, Atom, ...)

A build may leave a core out (SciPy's OpenBLAS 0.3.30 reports SkylakeX, not Cooperlake, on this
machine's AMD EPYC with AVX512_BF16), so the check compares tiers, not names: a kernel is
"below" the CPU only when its tier is lower than the tier of the CPU's instructions. Off x86, or
when neither /proc/cpuinfo nor NumPy can tell the CPU's instructions, the check cannot judge
and says so (`below` is None).
"""
import os
from collections import namedtuple

# OpenBLAS core name (lower case, as threadpoolctl reports it, lowered) -> tier
TIERS = {
    "skylakex": 4, "cooperlake": 4, "sapphirerapids": 4,
    "haswell": 3, "zen": 3,
    "sandybridge": 2, "bulldozer": 2, "piledriver": 2, "steamroller": 2, "excavator": 2,
    "nehalem": 1, "prescott": 1, "core2": 1, "penryn": 1, "dunnington": 1, "atom": 1,
    "barcelona": 1, "opteron": 1, "opteron_sse3": 1, "bobcat": 1, "nano": 1, "katmai": 1,
    "coppermine": 1, "northwood": 1, "banias": 1, "athlon": 1,
}
TIER_NAMES = {4: "AVX-512", 3: "AVX2", 2: "AVX", 1: "SSE"}
# Environment variables that make OpenBLAS run other kernels than it would pick.
HOLDING_VARIABLES = ("OPENBLAS_CORETYPE",)

KernelCheck = namedtuple("KernelCheck", "running expected below cause message")
KernelCheck.__doc__ = """running: the core SciPy's OpenBLAS runs (threadpoolctl's `architecture`),
or None when SciPy's BLAS is not an OpenBLAS threadpoolctl can see. expected: the best core this
CPU supports, or None when its instructions are unknown. below: True when running's tier is below
expected's, False when not, None when either is unknown. cause: the environment variable (as
NAME=value) that holds OpenBLAS back, or None. message: one line saying all that."""


def cpu_flags():
    """The CPU's instruction flags in /proc/cpuinfo's spelling (lower case: avx512f, avx2, ...),
    from /proc/cpuinfo (Linux; flags the OS does not enable are absent) or, elsewhere, from
    NumPy's runtime dispatch table; None when neither is available."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as features
        except ImportError:  # NumPy 1.x
            from numpy.core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return None
    names = {"AVX": "avx", "AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f",
             "AVX512BW": "avx512bw", "AVX512VL": "avx512vl", "AVX512DQ": "avx512dq",
             "AVX512BF16": "avx512_bf16"}
    return {flag for key, flag in names.items() if features.get(key)}


def best_kernel(flags=None):
    """The OpenBLAS core a DYNAMIC_ARCH OpenBLAS picks for a CPU with these instruction flags
    (default: this CPU's), by instruction tier, or None when the flags are unknown or not x86.
    AMX and AVX512_BF16 only name the core (SapphireRapids, Cooperlake); their float kernels
    are SkylakeX's, the same tier."""
    flags = cpu_flags() if flags is None else set(flags)
    if not flags:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        if {"amx_bf16", "amx_tile", "avx512_bf16"} <= flags:
            return "SapphireRapids"
        if "avx512_bf16" in flags:
            return "Cooperlake"
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    if "avx" in flags:
        return "Sandybridge"
    if "sse3" in flags or "pni" in flags or "sse2" in flags:
        return "Prescott"
    return None


def tier(kernel):
    """The instruction tier (4 AVX-512, 3 AVX2, 2 AVX, 1 older) of an OpenBLAS core name, or
    None for a name this table does not know (a non-x86 core, say)."""
    return TIERS.get((kernel or "").lower())


def _is_scipys(path):
    parts = os.path.normpath(path).split(os.sep)
    return "scipy.libs" in parts or "scipy" in parts


def running_kernel():
    """threadpoolctl's record of SciPy's BLAS (the one scipy.linalg.cython_blas, and so cgru,
    calls), loading it first; None when it is not an OpenBLAS. NumPy's own OpenBLAS
    (numpy.libs/libscipy_openblas64_*) is a different library and is not it."""
    from threadpoolctl import threadpool_info
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so that threadpoolctl sees it)
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    scipys = [lib for lib in blas if _is_scipys(lib.get("filepath") or "")]
    for lib in scipys or blas:
        if lib.get("internal_api") == "openblas":
            return lib
    return None


def check(environ=None):
    """Compare the kernel SciPy's OpenBLAS runs with the best one this CPU supports."""
    environ = os.environ if environ is None else environ
    lib = running_kernel()
    running = lib.get("architecture") if lib else None
    expected = best_kernel()
    held = [f"{v}={environ[v]}" for v in HOLDING_VARIABLES if v in environ]
    cause = held[0] if held else None
    if running is None:
        return KernelCheck(None, expected, None, cause,
                           "SciPy's BLAS is not an OpenBLAS that threadpoolctl can see: "
                           "its kernel is not checked")
    if expected is None or tier(running) is None:
        return KernelCheck(running, expected, None, cause,
                           f"SciPy's OpenBLAS runs its {running} kernels; this CPU's best could "
                           f"not be determined, so that is not checked")
    t_run, t_cpu = tier(running), tier(expected)
    if t_run >= t_cpu:
        return KernelCheck(running, expected, False, cause,
                           f"SciPy's OpenBLAS runs its {running} kernels ({TIER_NAMES[t_run]}), "
                           f"the best tier this CPU supports"
                           + ("" if running.lower() == expected.lower() else
                              f" (its core would be {expected}: the same float kernels)"))
    why = (f"{cause} in the environment holds it there: unset it (OpenBLAS reads it when it "
           f"loads) for up to {2 ** (t_cpu - t_run)}x the GEMM peak" if cause else
           "no OPENBLAS_CORETYPE is set, so the likely cause is an OpenBLAS built for an older "
           "TARGET without DYNAMIC_ARCH, or a hypervisor hiding the CPU's AVX-512 state "
           "(OPENBLAS_VERBOSE=2 prints the core it picks)")
    return KernelCheck(running, expected, True, cause,
                       f"SciPy's OpenBLAS runs its {running} kernels ({TIER_NAMES[t_run]}) on a "
                       f"CPU that supports {expected} ({TIER_NAMES[t_cpu]}); {why}")


if __name__ == "__main__":
    result = check()
    print(result.message)
    raise SystemExit(1 if result.below else 0)
