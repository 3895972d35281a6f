"""Side-by-side GRU benchmarks: cgru, the NumPy reference and every installed peer.

    python -m pytest bench                       # the timings
    python bench/report.py                       # the same run, tabulated into BENCHMARKS.md

One group per configuration and pass (float32; the float64 groups against torch and JAX). Each
implementation runs cgru.GRU(seed=0)'s weights on the same input and is checked against cgru's
results before it is timed (peers.check_against_cgru). Each result's extra_info carries GFLOP/s,
SciPy's sgemm (dgemm for float64) throughput measured in the same session (report.py divides by
the best of them), and the kernel SciPy's OpenBLAS ran.
"""
import functools
import os
import time

import numpy as np
import pytest
import scipy.linalg.blas

from cgru import _blas_kernel as blas_kernel
import cgru
from cgru.quantization import QUANTIZATION_MODES
from peers import THREADS, Cgru, available_peers, check_against_cgru, installed, problem

# (T, B, I, H, layers, bidirectional)
CONFIGS = [
    (100, 64, 128, 256, 1, False),
    (50, 128, 512, 512, 1, False),
    (200, 8, 64, 128, 1, False),
    (1000, 1, 32, 128, 1, False),
    (100, 32, 64, 128, 2, True),
    (70, 24, 100, 300, 1, False),
]
# float64 groups: cgru against torch and JAX in float64 (the two main shapes)
FLOAT64_CONFIGS = [
    (100, 64, 128, 256, 1, False),
    (50, 128, 512, 512, 1, False),
]
ROUNDS = {"forward": 7, "train": 5}


def config_id(c):
    T, B, I, H, L, bi = c
    return f"T{T}-B{B}-I{I}-H{H}" + (f"-L{L}" if L > 1 else "") + ("-bi" if bi else "")


def flops(config, training):
    """2*T*B*3H*(I+H) per layer and direction for the forward; training counts 3x."""
    T, B, I, H, L, bi = config
    D = 2 if bi else 1
    total = sum(2 * T * B * 3 * H * ((I if layer == 0 else D * H) + H) * D for layer in range(L))
    return total * (3 if training else 1)


def gemm_gflops(dtype):
    """SciPy's GEMM throughput (sgemm or dgemm, 1024^3) here, with the benchmark's thread count
    (OpenBLAS's own)."""
    from threadpoolctl import threadpool_limits
    n = 1024
    gemm = scipy.linalg.blas.sgemm if dtype == "float32" else scipy.linalg.blas.dgemm
    a = np.asfortranarray(np.random.default_rng(0).standard_normal((n, n)).astype(dtype))
    times = []
    with threadpool_limits(THREADS, user_api="blas"):
        gemm(1.0, a, a)
        for _ in range(9):
            t = time.perf_counter()
            gemm(1.0, a, a)
            times.append(time.perf_counter() - t)
    return 2 * n ** 3 / np.median(times) / 1e9


@pytest.fixture(scope="session")
def sgemm_gflops():
    """SciPy's sgemm throughput here, with the benchmark's thread count (OpenBLAS's own)."""
    return gemm_gflops("float32")


@pytest.fixture(scope="session")
def dgemm_gflops():
    """SciPy's dgemm throughput, the float64 groups' yardstick."""
    return gemm_gflops("float64")


@functools.lru_cache(maxsize=None)
def blas_architecture():
    """The kernel SciPy's OpenBLAS runs in this process (threadpoolctl's `architecture`; None
    if it is not an OpenBLAS), which report.py checks against the CPU's best."""
    lib = blas_kernel.running_kernel()
    return lib.get("architecture") if lib else None


def handoff_probe_us():
    """The machine's state, as cgru's per-step cost on a tiny layer (T=200, B=1, H=32) on the
    benchmark's threads: almost nothing but the hand-off between cores at every step. On shared
    VMs the hypervisor's placement of the cores changes it by 2-3x from one minute to the next,
    and with it every timing that synchronises threads; report.py flags groups timed across
    such a change."""
    before = cgru.get_num_threads()
    cgru.set_num_threads(THREADS)
    try:
        gru = cgru.GRU(8, 32, seed=0).eval()
        x = np.ones((200, 1, 8), np.float32)
        gru(x)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            gru(x)
            times.append(time.perf_counter() - t)
    finally:
        cgru.set_num_threads(before)
    return float(np.median(times)) / 200 * 1e6


def settle():
    """Let the worker threads of whatever ran before (OpenBLAS, OpenMP runtimes, ONNX Runtime's
    pool) stop spinning, probe the machine's state, and pause again for the probe's own threads,
    so that each implementation (and the probe) is timed on idle cores with its own threads only.
    Without the pauses the first rounds after a peer share the cores with its spinners. Returns
    the probe (us per step). cgru forgets its recent stalls (threads.c's one-thread back-off), so
    that each group starts as a fresh process would, not on a back-off earned in the group before."""
    time.sleep(0.3)
    probe = handoff_probe_us()
    time.sleep(0.3)
    cgru._engine.reset_contention()
    return probe


def _build(peer, config, dtype="float32"):
    try:
        return peer(*config[:4], layers=config[4], bidirectional=config[5], dtype=dtype)
    except (ImportError, NotImplementedError) as e:
        pytest.skip(f"{peer.name}: {e}")


def _bench_gru(benchmark, pass_name, config, peer, dtype, gemm):
    """Build the implementation, check its results against cgru's (same weights, same input),
    then time the pass; `gemm` is SciPy's GEMM throughput of the same dtype."""
    if peer.name == "numpy reference" and pass_name == "train" and config[0] * config[3] > 60000:
        pytest.skip("the NumPy reference's training step is too slow for this configuration")
    impl = _build(peer, config, dtype)
    fn = impl.forward if pass_name == "forward" else impl.train_step
    if fn is None:
        pytest.skip(f"{peer.name} has no backward")
    checked = [] if peer is Cgru else check_against_cgru(impl, config, dtype, pass_name)
    suffix = "" if dtype == "float32" else f" {dtype}"
    benchmark.group = f"{config_id(config)} {pass_name}{suffix}"
    handoff_us = settle()
    stalls_before = cgru._engine.stalls_seen()
    benchmark.pedantic(fn, rounds=ROUNDS[pass_name], iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: each body ran once, nothing was timed
        return
    # cgru's calls whose threads stalled at a barrier while it was timed (a descheduled virtual
    # CPU; three in a row put cgru on one thread for a while: README, "Threads")
    stalls = cgru._engine.stalls_seen() - stalls_before if peer is Cgru else 0
    gflops = flops(config, pass_name == "train") / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(implementation=peer.name, config=config_id(config),
                                pass_name=pass_name + suffix, dtype=dtype, gflops=gflops,
                                sgemm_gflops=gemm, threads=THREADS, handoff_us=handoff_us,
                                stalls=stalls,
                                blas_kernel=blas_architecture(), checked=checked)


@pytest.mark.parametrize("peer", available_peers(), ids=lambda p: p.name)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("pass_name", ["forward", "train"])
def test_gru(benchmark, pass_name, config, peer, sgemm_gflops):
    _bench_gru(benchmark, pass_name, config, peer, "float32", sgemm_gflops)


@pytest.mark.parametrize("peer", available_peers("float64"), ids=lambda p: p.name)
@pytest.mark.parametrize("config", FLOAT64_CONFIGS, ids=config_id)
@pytest.mark.parametrize("pass_name", ["forward", "train"])
def test_gru_float64(benchmark, pass_name, config, peer, dgemm_gflops):
    """float64: cgru against torch and JAX (x64), with SciPy's dgemm as the yardstick."""
    _bench_gru(benchmark, pass_name, config, peer, "float64", dgemm_gflops)


STREAM_T, STREAM_I, STREAM_H = 1000, 32, 128


@pytest.mark.parametrize("implementation", ["cgru step()", "cgru whole sequence", "torch GRUCell"])
def test_streaming(benchmark, implementation, sgemm_gflops):
    """A sequence fed one time step per call (B = 1), against one call for the whole sequence.
    "cgru step()" and "torch GRUCell" are Python loops of one call per step, so their per-step
    time is that of one call from Python (with the loop's own few tens of ns). All three run
    cgru.GRU(seed=0)'s weights and are checked against the whole-sequence h_n first."""
    params, x = problem(STREAM_T, 1, STREAM_I, STREAM_H)
    cgru.set_num_threads(THREADS)
    gru = cgru.GRU(STREAM_I, STREAM_H, seed=0).eval()
    want = gru(x)[1][0]  # (1, H): the final state
    if implementation.startswith("cgru"):
        h = np.zeros((1, 1, STREAM_H), np.float32)
        if implementation == "cgru step()":
            def run():
                for t in range(STREAM_T):
                    gru.step(x[t], h, out=h)
                return h[0]
        else:
            def run():
                return gru(x)[1][0]
    else:
        if not installed("torch"):
            pytest.skip("torch is not installed")
        import torch
        torch.set_num_threads(THREADS)
        cell = torch.nn.GRUCell(STREAM_I, STREAM_H)
        cell.load_state_dict({k[:-3]: torch.from_numpy(v) for k, v in params.items()})
        xt = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                h = torch.zeros(1, STREAM_H)
                for t in range(STREAM_T):
                    h = cell(xt[t], h)
            return h.numpy()
    err = float(np.max(np.abs(run() - want)))
    assert err <= 1e-4, f"{implementation}'s final state differs from cgru's by {err:.3g}"
    benchmark.group = f"streaming T{STREAM_T}-B1-I{STREAM_I}-H{STREAM_H}"
    handoff_us = settle()
    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: each body ran once, nothing was timed
        return
    per_step_us = benchmark.stats.stats.median / STREAM_T * 1e6
    config = (STREAM_T, 1, STREAM_I, STREAM_H, 1, False)
    gflops = flops(config, False) / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(implementation=implementation, config=benchmark.group,
                                pass_name="streaming", per_step_us=per_step_us, gflops=gflops,
                                sgemm_gflops=sgemm_gflops, threads=THREADS, handoff_us=handoff_us,
                                blas_kernel=blas_architecture())


# each quantize() mode against float32, same weights: (T, B, H) with I = 32; streaming and small
# batches (what reduced-precision weights are for) and a large batch for the record
QUANTIZED_SHAPES = [(1000, 1, 128), (1000, 1, 512), (200, 8, 128), (200, 8, 512), (50, 128, 512)]


@pytest.mark.parametrize("precision", ["float32", *QUANTIZATION_MODES])
@pytest.mark.parametrize("call", ["step()", "whole sequence"])
@pytest.mark.parametrize("shape", QUANTIZED_SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_quantized(benchmark, shape, call, precision, sgemm_gflops):
    """cgru.GRU(seed=0) in float32 and after quantize(precision), one call per step from Python
    (step()) or one call for the sequence; the quantized final state is checked against float32's
    first (within the accuracy contract, 1e-2)."""
    T, B, H = shape
    _, x = problem(T, B, STREAM_I, H)
    cgru.set_num_threads(THREADS)
    reference = cgru.GRU(STREAM_I, H, seed=0).eval()
    gru = cgru.GRU(STREAM_I, H, seed=0).eval()
    if precision != "float32":
        gru.quantize(precision)
    h = np.zeros((1, B, H), np.float32)
    if call == "step()":
        def run():
            h.fill(0)
            for t in range(T):
                gru.step(x[t], h, out=h)
            return h[0]
    else:
        def run():
            return gru(x)[1][0]
    err = float(np.max(np.abs(run() - reference(x)[1][0])))
    assert err <= 1e-2, f"{precision} {call}'s final state differs from float32's by {err:.3g}"
    benchmark.group = f"quantized {call} T{T}-B{B}-I{STREAM_I}-H{H}"
    handoff_us = settle()
    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    if benchmark.disabled:
        return
    gflops = flops((T, B, STREAM_I, H, 1, False), False) / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(implementation=f"cgru {precision}",
                                config=f"T{T}-B{B}-I{STREAM_I}-H{H} {call}",
                                pass_name="quantized", precision=precision,
                                per_step_us=benchmark.stats.stats.median / T * 1e6,
                                gflops=gflops, sgemm_gflops=sgemm_gflops, threads=THREADS,
                                handoff_us=handoff_us, blas_kernel=blas_architecture(),
                                bf16_kernel=cgru.info()["bfloat16_product"],
                                int8_kernel=cgru.info()["int8_product"])


SCALING_CONFIG = (50, 128, 512, 512, 1, False)
SCALING_THREADS = sorted({1, 2, THREADS} | {n for n in (4, 8, 16) if n <= (os.cpu_count() or 1)})


@pytest.mark.parametrize("threads", SCALING_THREADS)
@pytest.mark.parametrize("pass_name", ["forward", "train"])
def test_thread_scaling(benchmark, pass_name, threads, sgemm_gflops):
    """cgru alone on one configuration, over thread counts (the speedup is over one thread)."""
    impl = Cgru(*SCALING_CONFIG[:4])
    cgru.set_num_threads(threads)
    fn = impl.forward if pass_name == "forward" else impl.train_step
    benchmark.group = f"threads {config_id(SCALING_CONFIG)} {pass_name}"
    handoff_us = settle()
    try:
        benchmark.pedantic(fn, rounds=ROUNDS[pass_name], iterations=1, warmup_rounds=1)
    finally:
        cgru.set_num_threads(THREADS)
    if benchmark.disabled:  # --benchmark-disable: each body ran once, nothing was timed
        return
    gflops = flops(SCALING_CONFIG, pass_name == "train") / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(implementation="cgru", config=config_id(SCALING_CONFIG),
                                pass_name=f"scaling {pass_name}", threads_used=threads,
                                gflops=gflops, sgemm_gflops=sgemm_gflops, threads=THREADS,
                                handoff_us=handoff_us, blas_kernel=blas_architecture())
