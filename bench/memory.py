"""Peak memory of batch scoring: python bench/memory.py (bench/report.py puts it in BENCHMARKS.md).

Scores 200,000 series of 50 steps with a GRU(64) + Dense(1) forecaster through `predict`, in a
fresh process, and reports the resident memory before the call (input already made), the peak
during it, the peak of the arrays allocated during it (tracemalloc), and the time it took.
"""
import json
import subprocess
import sys

SCRIPT = """
import json, resource, time
import numpy as np
import cgru
from cgru import layers

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

model = cgru.Sequential([layers.GRU({units}), layers.Dense(1)], seed=0)
model.build((None, {steps}, 1))
x = np.random.default_rng(0).standard_normal(({series}, {steps}, 1)).astype(np.float32)
model.predict(x[:10])
before = rss_mb()
t = time.perf_counter()
out = model.predict(x)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import tracemalloc
tracemalloc.start()
model.predict(x)
allocated = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
print(json.dumps({{"input_mb": x.nbytes / 2**20, "output_mb": out.nbytes / 2**20,
                  "before_mb": before, "peak_mb": peak, "seconds": seconds,
                  "allocated_mb": allocated, "threads": cgru.get_num_threads()}}))
"""


def scoring_peak(series=200000, steps=50, units=64):
    """{input_mb, output_mb, before_mb, peak_mb, seconds, threads} of one predict call."""
    code = SCRIPT.format(series=series, steps=steps, units=units)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(series=200000, steps=50, units=64):
    r = scoring_peak(series, steps, units)
    return "\n".join([
        "| series x steps, GRU units | input | resident before | peak during predict | "
        "growth | arrays allocated (peak) | time |",
        "|---|---|---|---|---|---|---|",
        f"| {series:,} x {steps}, {units} | {r['input_mb']:.0f} MiB | {r['before_mb']:.0f} MiB | "
        f"{r['peak_mb']:.0f} MiB | {r['peak_mb'] - r['before_mb']:.0f} MiB | "
        f"{r['allocated_mb']:.0f} MiB | {r['seconds']:.2f} s |"])


if __name__ == "__main__":
    print(table())
