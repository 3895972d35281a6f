"""Leak check: resident memory over many engine calls must stay flat after a warm-up.

    python bench/leak_check.py                  # 100,000 calls of each workload
    python bench/leak_check.py --calls 5000     # a quick run

Workloads: forward in eval mode, forward + backward in training mode, step(), and a small
Sequential model's predict. Each runs `--warmup` calls first (allocator pools, OpenMP threads,
BLAS buffers and NumPy caches settle), then `--calls` calls; the resident set size (RSS, from
/proc/self/statm, else the peak from getrusage) is read after gc.collect() at `--checkpoints`
evenly spaced points. A workload fails when RSS grows by more than `--bound-mb` (default 8 MB)
over its warm-up level; the exit status is then 1. Not a benchmark: timings are not reported.
"""
import argparse
import gc
import os
import resource
import sys
import time

import numpy as np

import cgru
from cgru import layers

MB = 1 << 20


def rss_bytes():
    """Resident set size now (Linux), else the peak so far (getrusage: KB on Linux, bytes on
    macOS); a peak still shows growth."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def workloads(rng):
    """name -> a function that makes one call (fresh output arrays every call)."""
    x = rng.standard_normal((12, 4, 16)).astype(np.float32)
    h0 = rng.standard_normal((4, 4, 32)).astype(np.float32)
    lengths = np.array([12, 7, 3, 12])

    infer = cgru.GRU(16, 32, num_layers=2, bidirectional=True, seed=0).eval()

    def forward():
        infer(x, h0, lengths)

    train = cgru.GRU(16, 32, num_layers=2, bidirectional=True, reset_after=False, seed=1)
    dy = np.ones((12, 4, 64), np.float32)

    def forward_backward():
        train(x, h0, lengths)
        train.backward(dy, h0)
        train.zero_grad()

    stepper = cgru.GRU(16, 32, num_layers=2, seed=2)
    h = np.zeros((2, 4, 32), np.float32)

    def step():
        stepper.step(x[0], h)

    model = cgru.Sequential([layers.GRU(8, return_sequences=True), layers.GRU(4),
                             layers.Dense(1)], seed=3)
    xs = rng.standard_normal((5, 10, 3)).astype(np.float32)
    model.predict(xs)

    def predict():
        model.predict(xs)

    return {"forward (eval)": forward, "forward+backward (train)": forward_backward,
            "step": step, "Sequential.predict": predict}


def check(name, call, calls, warmup, checkpoints, bound):
    for _ in range(warmup):
        call()
    gc.collect()
    base = rss_bytes()
    readings = []
    start = time.perf_counter()
    done = 0
    for i in range(1, checkpoints + 1):
        target = calls * i // checkpoints
        for _ in range(target - done):
            call()
        done = target
        gc.collect()
        readings.append(rss_bytes())
    seconds = time.perf_counter() - start
    growth = max(readings) - base
    ok = growth <= bound
    trail = " ".join(f"{(r - base) / MB:+.1f}" for r in readings)
    print(f"{name:<26} {calls:>8,} calls  warm RSS {base / MB:7.1f} MB  after each "
          f"{calls // checkpoints:,}: {trail}  max growth {growth / MB:+.2f} MB "
          f"({growth / calls:.1f} B/call, {seconds:.0f} s)  {'ok' if ok else 'LEAK'}",
          flush=True)
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per workload")
    parser.add_argument("--warmup", type=int, default=None,
                        help="calls before the baseline (default: calls / 10, at most 2000)")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--bound-mb", type=float, default=8.0,
                        help="allowed RSS growth after the warm-up, MB")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: as "
                                                                 "cgru.get_num_threads())")
    parser.add_argument("--only", action="append", default=None,
                        help="run only workloads whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.checkpoints < 1 or args.calls < args.checkpoints:
        parser.error("--calls and --checkpoints must be >= 1, and calls >= checkpoints")
    warmup = min(max(args.calls // 10, 1), 2000) if args.warmup is None else args.warmup
    if args.threads is not None:
        cgru.set_num_threads(args.threads)
    print(f"cgru {cgru.__version__}: {cgru.get_num_threads()} threads, warm-up {warmup:,} "
          f"calls, bound {args.bound_mb:g} MB", flush=True)
    failed = []
    for name, call in workloads(np.random.default_rng(0)).items():
        if args.only and not any(part in name for part in args.only):
            continue
        if not check(name, call, args.calls, warmup, args.checkpoints, args.bound_mb * MB):
            failed.append(name)
    if failed:
        print(f"FAILED: RSS grew by more than {args.bound_mb:g} MB in: {', '.join(failed)}")
        return 1
    print("no leak: RSS stayed within the bound in every workload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
