"""cgru in company: timings with every core busy, with more threads than cores, and with several
Python threads calling at once.

    python bench/contention.py          # prints the table; bench/report.py puts it in BENCHMARKS.md

The busy processes are started here (one per CPU the process may use, each a Python loop) and
stopped before it returns. Each measurement is a distribution over many calls: medians, 90th
percentiles and maxima, side by side with the same calls on one thread.
"""
import multiprocessing as mp
import os
import threading
import time

import numpy as np

import cgru

T, B, I, H = 50, 16, 32, 128   # a forecasting-size call: 0.3-0.7 ms on a quiet core
CALLS = 300


def _spin(stop):
    while not stop.is_set():
        pass


def _spin_in_bursts(stop, burst_s, period_s):
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < burst_s:
            pass
        time.sleep(period_s - burst_s)


class BusyCores:
    """One busy process per CPU, for the duration of a with-block; with bursts=(burst, period),
    each is busy for `burst` seconds in every `period` (a periodic daemon, a hypervisor taking
    the CPU for a moment) instead of all the time."""

    def __init__(self, n=None, bursts=None):
        self.n = n or cgru._engine.cpus_available()
        self.bursts = bursts  # (burst, period) in seconds: busy for `burst` in every `period`

    def __enter__(self):
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        target, args = (_spin_in_bursts, (self.stop, *self.bursts)) if self.bursts else \
            (_spin, (self.stop,))
        self.procs = [ctx.Process(target=target, args=args, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(1.0)  # let them start spinning
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


WARM_UPS = 2  # untimed calls before each timed series


def call_times(fn, n_threads, calls=CALLS):
    """Seconds of each of `calls` calls of fn on n_threads threads, after WARM_UPS calls."""
    cgru.set_num_threads(n_threads)
    cgru._engine.reset_contention()
    for _ in range(WARM_UPS):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return times


def forward_and_training():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    inference = cgru.GRU(I, H, seed=0).eval()
    training = cgru.GRU(I, H, seed=0)

    def forward():
        inference(x)

    def train_step():
        y, h = training(x)
        training.backward(np.ones_like(y))

    return {"forward": forward, "training step": train_step}


def python_threads_throughput(n_python_threads, calls_each=60):
    """Calls per second: n Python threads each calling its own GRU, against one thread calling
    the same GRUs in turn (both with the default thread count)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    grus = [cgru.GRU(I, H, seed=i).eval() for i in range(n_python_threads)]
    cgru._engine.reset_contention()
    for g in grus:
        g(x)
    t = time.perf_counter()
    for _ in range(calls_each):
        for g in grus:
            g(x)
    in_turn = n_python_threads * calls_each / (time.perf_counter() - t)

    def worker(g):
        for _ in range(calls_each):
            g(x)

    threads = [threading.Thread(target=worker, args=(g,)) for g in grus]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    together = n_python_threads * calls_each / (time.perf_counter() - t)
    return in_turn, together


def interrupted_rows(calls=100):
    """A longer forward, (100, 64, 128, 256), while each CPU is taken 1 ms in every 20: the team
    should wait such interruptions out (barrier.h), not go on with one thread."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 64, 128)).astype(np.float32)
    gru = cgru.GRU(128, 256, seed=0).eval()
    what = "interrupted cores (each CPU busy 1 ms in every 20), forward (100, 64, 128, 256)"
    with BusyCores(bursts=(0.001, 0.020)):
        one = np.median(call_times(lambda: gru(x), 1, calls))
        stalls = cgru._engine.stalls_seen()
        two = np.median(call_times(lambda: gru(x), 2, calls))
        stalls = cgru._engine.stalls_seen() - stalls
    return [(f"{what}: 2 threads / 1 thread (median)", f"{two / one:.2f}x", "<= 0.7x"),
            (f"{what}: 2-thread calls marked stalled (README, \"Threads\"), {WARM_UPS} warm-ups "
             f"included", f"{stalls} / {calls + WARM_UPS}", "")]


def measure():
    """Every figure of the table, as a list of (what, value, target) rows."""
    cpus = cgru._engine.cpus_available()
    default = cgru.get_num_threads()
    rows = []
    fns = forward_and_training()
    try:
        with BusyCores():
            for name, fn in fns.items():
                one = call_times(fn, 1)
                two = call_times(fn, 2)
                base = np.median(one)
                rows.append((f"busy cores, {name}: 1 thread median / p90 / max (ms)",
                             f"{base * 1e3:.2f} / {np.percentile(one, 90) * 1e3:.2f} / "
                             f"{one.max() * 1e3:.2f}", ""))
                rows.append((f"busy cores, {name}: 2 threads median / p90 / max (ms)",
                             f"{np.median(two) * 1e3:.2f} / {np.percentile(two, 90) * 1e3:.2f} / "
                             f"{two.max() * 1e3:.2f}", ""))
                rows.append((f"busy cores, {name}: 2-thread p90 / 1-thread median",
                             f"{np.percentile(two, 90) / base:.2f}x", "<= 1.5x"))
                rows.append((f"busy cores, {name}: 2-thread max / 1-thread median",
                             f"{two.max() / base:.2f}x", "<= 5x"))
        rows += interrupted_rows()
        forward = fns["forward"]
        two = np.median(call_times(forward, 2))
        many = np.median(call_times(forward, 16))
        rows.append((f"quiet, forward: 16 threads / 2 threads on {cpus} CPUs (median)",
                     f"{many / two:.2f}x", "<= 1.3x"))
        cgru.set_num_threads(default)
        for n in (4, 8):
            in_turn, together = python_threads_throughput(n)
            rows.append((f"quiet, {n} Python threads calling at once / one calling in turn "
                         f"(calls/s)", f"{together:.0f} / {in_turn:.0f} = "
                         f"{together / in_turn:.2f}x", ">= 1x"))
    finally:
        cgru.set_num_threads(default)
    return rows


def table(rows):
    lines = [f"T={T}, B={B}, I={I}, H={H}, float32; {CALLS} calls per distribution.", "",
             "| measurement | result | target |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {target} |" for what, value, target in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
