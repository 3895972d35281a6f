"""Scale-out throughput: Dask scoring and MPI data-parallel training, on this machine.

    python bench/scaleout.py            # prints both tables (bench/report.py records them)

Dask: series per second scoring a forecaster with `cgru.dask.predict` on a LocalCluster of 1 and
2 worker processes (1 thread each, as Dask's nanny sets OMP_NUM_THREADS=1), against calling
`model.predict` directly in this process on all its threads. The input is generated and persisted
on the workers first, as data loaded where it lies would be.

MPI: samples per second of `fit(distributed=True)` on a (T=100, global batch 128, I=64, H=256)
GRU + Dense model, 1 and 2 ranks of 1 engine thread each (`mpiexec -n R`), against one process on
2 threads. Each configuration runs in its own `mpiexec` job; the median epoch after a warm-up one.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# ---- MPI training ------------------------------------------------------------------------------

T, GLOBAL_BATCH, I, H = 100, 128, 64, 256
STEPS_PER_EPOCH, EPOCHS = 6, 5


def _training_job():
    """Run inside mpiexec: time fit(distributed=True) epochs; rank 0 prints a JSON line."""
    import cgru
    from cgru import callbacks, distributed, layers
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS_PER_EPOCH
    x = rng.standard_normal((n, T, I)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    model = cgru.Sequential([layers.GRU(H), layers.Dense(1)], seed=0)
    model.compile("adam", "mse")
    seconds = []

    class EpochTimer(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, verbose=0, callbacks=[EpochTimer()],
              distributed=True)
    if distributed.is_root():
        print(json.dumps({"ranks": distributed.size(), "threads": cgru.get_num_threads(),
                          "samples_per_s": n / statistics.median(seconds[1:])}))


def measure_training():
    """[(label, ranks, threads per rank, samples/s)] for the three configurations."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        return []
    results = []
    for label, ranks, threads in [("1 rank", 1, 1), ("2 ranks", 2, 1),
                                  ("1 process, 2 threads", 1, 2)]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, __file__, "--training"],
                             env=env, check=True, capture_output=True, text=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        results.append((label, record["ranks"], record["threads"], record["samples_per_s"]))
    return results


def training_table(results):
    if not results:
        return "mpiexec not found: `pip install mpi4py mpich` to measure."
    one = results[0][3]
    two_threads = results[2][3]
    lines = [f"| configuration | ranks | threads per rank | samples/s | vs 1 rank | "
             f"vs 1 process, 2 threads |", "|---|---|---|---|---|---|"]
    for label, ranks, threads, rate in results:
        lines.append(f"| {label} | {ranks} | {threads} | {rate:.0f} | {rate / one:.2f}x | "
                     f"{rate / two_threads:.2f}x |")
    return "\n".join(lines)


# ---- Dask scoring ------------------------------------------------------------------------------

SERIES, STEPS, FEATURES, UNITS, CHUNK = 40_000, 100, 8, 64, 2_000


def _forecaster():
    import cgru
    from cgru import layers
    model = cgru.Sequential([layers.GRU(UNITS), layers.Dense(1)], seed=0)
    model.build((None, STEPS, FEATURES))
    return model


def _median_seconds(run, repeats=3):
    run()  # warm-up: the model reaches the workers, the engine starts its threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_scoring():
    """[(label, workers, threads per worker, series/s)]: direct, then 1 and 2 Dask workers."""
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
    except ImportError:
        return []
    import cgru
    import cgru.dask
    model = _forecaster()
    x = np.random.default_rng(0).standard_normal((SERIES, STEPS, FEATURES)).astype(np.float32)
    results = [("direct model.predict", 0, cgru.get_num_threads(),
                SERIES / _median_seconds(lambda: model.predict(x)))]
    del x
    environment = dict(os.environ)  # a LocalCluster leaves OMP_NUM_THREADS=1 in it
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            X = da.random.default_rng(0).standard_normal(
                (SERIES, STEPS, FEATURES), chunks=(CHUNK, STEPS, FEATURES)).astype(np.float32)
            X = client.persist(X)
            scores = cgru.dask.predict(model, X)
            threads = client.run(cgru.get_num_threads)
            seconds = _median_seconds(lambda: scores.compute())
            results.append((f"Dask, {workers} worker{'s' if workers > 1 else ''}", workers,
                            max(threads.values()), SERIES / seconds))
    os.environ.clear()
    os.environ.update(environment)
    return results


def scoring_table(results):
    if not results:
        return "dask not installed: `pip install 'dask[array,distributed]'` to measure."
    direct = results[0][3]
    lines = ["| configuration | workers | threads per worker | series/s | vs direct |",
             "|---|---|---|---|---|"]
    for label, workers, threads, rate in results:
        lines.append(f"| {label} | {workers or '-'} | {threads} | {rate:,.0f} | "
                     f"{rate / direct:.2f}x |")
    return "\n".join(lines)


def tables():
    """(scoring table, training table) as Markdown."""
    return scoring_table(measure_scoring()), training_table(measure_training())


if __name__ == "__main__":
    if sys.argv[1:] == ["--training"]:
        _training_job()
    else:
        scoring, training = tables()
        print(f"Dask scoring ({SERIES:,} series, T={STEPS}, F={FEATURES}, GRU({UNITS}) + "
              f"Dense(1), chunks of {CHUNK:,})\n\n{scoring}\n")
        print(f"MPI training (T={T}, global batch {GLOBAL_BATCH}, I={I}, H={H})\n\n{training}")
