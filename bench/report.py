"""Run the benchmark suite and write BENCHMARKS.md: python bench/report.py

Prints and records one table: configuration x implementation, median time, GFLOP/s, fraction of
the sgemm throughput measured in the same run, and the ratio to the fastest peer (not cgru, not
the NumPy reference) of that configuration and pass, with the machine-state probe timed before
each implementation; groups timed across a change of state are run again.

    python bench/report.py [--allow-kernel] [pytest options]

The BLAS kernel. The benchmark runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (removed for
its process only, as users' machines do not set them), and the report refuses to write
BENCHMARKS.md when SciPy's OpenBLAS ran kernels of a lower instruction tier than this CPU
supports (check() in cgru/_blas_kernel.py: AVX2 Haswell kernels on an AVX-512 CPU, say), both
before the benchmarks and after them (with the kernel each benchmark process recorded): the
message names the kernel seen, the one expected and the likely cause. `--allow-kernel` (this
script's own option, not passed to pytest), or CGRU_BENCH_ALLOW_KERNEL=1 in the environment,
writes it anyway, and the file says so.

Keras backends. Keras 3 takes one backend per process, so the suite runs once with
KERAS_BACKEND set to the first of keras_backends() (TensorFlow: the TensorFlow peer), and its
Keras tests once more per other backend (torch), each in a process of its own; all records go
into the one table. CGRU_BENCH_KERAS_BACKENDS (comma-separated) chooses them.
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OWN = {"cgru", "numpy reference", "cgru step()", "cgru whole sequence"}
ALLOW_KERNEL = "--allow-kernel"
sys.path.insert(0, HERE)
from cgru import _blas_kernel as blas  # noqa: E402
from cgru.quantization import QUANTIZATION_MODES  # noqa: E402


def pytest_args():
    """This script's arguments that are pytest's (all but its own --allow-kernel)."""
    return [a for a in sys.argv[1:] if a != ALLOW_KERNEL]


def kernel_allowed():
    return ALLOW_KERNEL in sys.argv[1:] or os.environ.get("CGRU_BENCH_ALLOW_KERNEL") == "1"


def keras_backends():
    """The Keras backends whose Keras tests the report runs, in order: CGRU_BENCH_KERAS_BACKENDS
    (comma-separated; default tensorflow,torch), those installed; none without Keras. (Not read
    from peers.py: importing it picks this process's Keras backend, and masks.py picks its own.)"""
    from importlib.util import find_spec
    if find_spec("keras") is None:
        return []
    wanted = os.environ.get("CGRU_BENCH_KERAS_BACKENDS", "tensorflow,torch").split(",")
    return [b.strip() for b in wanted
            if b.strip() in ("tensorflow", "torch", "jax") and find_spec(b.strip())]


def version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name():
    """The CPU's model name with its family and model numbers, and the cache sizes: a VM may
    name only the vendor ("AMD EPYC"), and the same name covers generations whose figures differ
    by 2x (family 25 is Zen 3/4, 26 is Zen 5)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    caches = []
    for level, label in (("index0", "L1d"), ("index2", "L2"), ("index3", "L3")):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/{level}/size") as f:
                caches.append(f"{label} {f.read().strip()}")
        except OSError:
            pass
    return name + (f"; caches of cpu0: {', '.join(caches)}" if caches else "")


def training_memory_lines():
    """The training workspace against what backpropagation through time must keep."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import tracemalloc
    import cgru
    from cgru import _engine
    lines = []
    for T, B, I, H in [(100, 64, 128, 256), (50, 128, 512, 512)]:
        saved, scratch = _engine.layer_workspace_size(T, B, I, H, True, True, 2)
        # BPTT must keep h_{t-1}, r, z, n and W_hn h + b_hn for every step: 5*T*B*H values
        needed = 5 * T * B * H
        gru = cgru.GRU(I, H, seed=0)
        x = np.ones((T, B, I), np.float32)
        tracemalloc.start()
        y, _ = gru(x)
        gru.backward(np.ones_like(y))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        lines.append(f"| {T}, {B}, {I}, {H} | {saved * 4 / 2**20:.1f} MiB | "
                     f"{needed * 4 / 2**20:.1f} MiB | {saved / needed:.3f} | "
                     f"{scratch * 4 / 2**20:.2f} MiB | {peak / 2**20:.1f} MiB |")
    return lines


# A group whose hand-off probe (test_bench.handoff_probe_us) moved by more than this factor
# between its implementations was timed in two machine states; it is run again, up to RERUNS times.
UNSTEADY = 1.5
RERUNS = 2


def run_suite(select=None):
    """pytest bench (only the tests that -k `select` names, if given); the benchmarks' records.
    With Keras, the first pass runs on the first of keras_backends() and each further backend's
    pass runs only the Keras tests (of the selection), in a process of its own."""
    backends = keras_backends()
    passes = [({"KERAS_BACKEND": backends[0]} if backends else {}, select)]
    if select is None or select.startswith("test_gru["):  # the groups with a Keras peer
        passes += [({"KERAS_BACKEND": b}, f"({select}) and keras" if select else "keras")
                   for b in backends[1:]]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (env, selection) in enumerate(passes):
            out = os.path.join(tmp, f"bench{n}.json")
            cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "bench"), "-q",
                   "--benchmark-json", out, "--benchmark-columns=median"] + pytest_args()
            if selection:
                cmd += ["-k", selection]
            result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env})
            if result.returncode not in (0, 5):  # 5: nothing selected (no Keras peer, say)
                raise subprocess.CalledProcessError(result.returncode, cmd)
            if os.path.exists(out):
                with open(out) as f:
                    records += json.load(f)["benchmarks"]
    return records


def group_key(bench):
    info = bench["extra_info"]
    return info["config"], info["pass_name"]


def group_selector(key):
    """The -k expression that runs one group's tests again."""
    config, pass_name = key
    if pass_name.startswith("scaling"):
        return f"test_thread_scaling and {pass_name.split()[1]}"
    if pass_name == "streaming":
        return "test_streaming"
    if pass_name == "quantized":
        return "test_quantized"
    if pass_name.endswith(" float64"):
        return f"test_gru_float64[{pass_name.split()[0]}-{config}-"
    return f"test_gru[{pass_name}-{config}-"


def probe_spread(benches):
    probes = [b["extra_info"]["handoff_us"] for b in benches]
    return max(probes) / min(probes)


def steady_groups():
    """Every group's records, each group re-run while its machine state changed under it.
    Returns the groups and the keys of those that never ran in one state."""
    groups = {}
    for b in run_suite():
        groups.setdefault(group_key(b), []).append(b)
    unsteady = set()
    for key in list(groups):
        for _ in range(RERUNS):
            if probe_spread(groups[key]) <= UNSTEADY:
                break
            again = [b for b in run_suite(group_selector(key)) if group_key(b) == key]
            if again:
                groups[key] = again
        if probe_spread(groups[key]) > UNSTEADY:
            unsteady.add(key)
    return groups, unsteady


# Set on some machines to hold SciPy's OpenBLAS to older kernels (AVX2 on an AVX-512 CPU, about
# 0.6x the sgemm); users' machines do not set them, so the benchmark process runs without them.
HELD_BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def without_held_blas():
    """Run this script again without HELD_BLAS_VARIABLES, if any is set (OpenBLAS reads them when
    it loads, so the process itself must start without them; its children inherit that)."""
    if any(v in os.environ for v in HELD_BLAS_VARIABLES):
        env = {k: v for k, v in os.environ.items() if k not in HELD_BLAS_VARIABLES}
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def blas_kernel():
    """The kernel SciPy's OpenBLAS runs here (threadpoolctl's `architecture`), with its version."""
    lib = blas.running_kernel()
    if lib is None:
        return "not an OpenBLAS threadpoolctl sees"
    return f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('architecture')}"


def kernel_verdict(seen=()):
    """Check the BLAS kernel (this process's, and those the benchmark processes recorded in
    `seen`) against the best this CPU supports. Exits, naming the kernel seen, the one expected
    and the likely cause, when one is below it, unless allowed; returns the line the report
    keeps."""
    result = blas.check()
    expected = result.expected
    below = [k for k in {result.running, *seen} if k and expected and blas.tier(k)
             and blas.tier(k) < blas.tier(expected)]
    if not below:
        return result.message
    message = result.message if result.below else (
        f"the benchmark processes ran SciPy's OpenBLAS with its {', '.join(sorted(below))} "
        f"kernels on a CPU that supports {expected} (this process: {result.running}); likely "
        f"cause: an OPENBLAS_CORETYPE they were given")
    if not kernel_allowed():
        sys.exit(f"report.py: not writing BENCHMARKS.md: {message}. Run with "
                 f"{ALLOW_KERNEL} (or CGRU_BENCH_ALLOW_KERNEL=1) to write it anyway.")
    print(f"report.py: {message} (written anyway, as allowed)", file=sys.stderr)
    return f"{message} (below the CPU's best: written as allowed)"


def main():
    without_held_blas()
    kernel_verdict()  # before the hour of benchmarks, in the environment they inherit
    groups, unsteady = steady_groups()
    benches = [b for group in groups.values() for b in group]
    kernel_line = kernel_verdict({b["extra_info"].get("blas_kernel") for b in benches})
    rows, scaling, quantized = {}, {}, {}
    for b in benches:
        info = b["extra_info"]
        if info["pass_name"] == "quantized":
            quantized.setdefault(info["config"], {})[info["precision"]] = (
                b["stats"]["median"], info)
            continue
        if info["pass_name"].startswith("scaling"):
            scaling.setdefault(info["pass_name"].split()[1], []).append(
                (info["threads_used"], b["stats"]["median"], info))
            continue
        rows.setdefault((info["config"], info["pass_name"]), []).append(
            (info["implementation"], b["stats"]["median"], info))
    float32 = [b for b in benches if b["extra_info"].get("dtype", "float32") == "float32"]
    float64 = [b for b in benches if b["extra_info"].get("dtype") == "float64"]
    # the yardstick of "of GEMM": the best GEMM of each dtype timed in this report's processes
    # (the first pass and each re-run time it once); a GEMM timed while the VM was busy
    # would otherwise put a group above 100 %
    best_gemm = {dtype: max(b["extra_info"]["sgemm_gflops"] for b in records)
                 for dtype, records in (("float32", float32), ("float64", float64)) if records}
    sgemm = best_gemm["float32"]
    dgemm = (f"; dgemm: {best_gemm['float64']:.1f} GFLOP/s" if float64 else "")
    threads = benches[0]["extra_info"]["threads"]
    lines = ["| configuration (T, B, I, H) | pass | implementation | median | GFLOP/s | "
             "of GEMM | vs fastest peer | probe |", "|---|---|---|---|---|---|---|---|"]
    for (config, pass_name), results in rows.items():
        peers = [m for name, m, _ in results if name not in OWN]
        best_peer = min(peers) if peers else None
        for name, median, info in sorted(results, key=lambda r: r[1]):
            ratio = f"{median / best_peer:.2f}x" if best_peer else "n/a"
            time_text = (f"{median * 1e3:.2f} ms" if pass_name != "streaming" else
                         f"{median * 1e3:.2f} ms ({info['per_step_us']:.2f} us/step)")
            mark = " (unsteady)" if (config, pass_name) in unsteady else ""
            stalled = f" ({info['stalls']} stalled)" if info.get("stalls") else ""
            lines.append(f"| {config}{mark} | {pass_name} | {name}{stalled} | {time_text} | "
                         f"{info['gflops']:.1f} | "
                         f"{info['gflops'] / best_gemm[info.get('dtype', 'float32')] * 100:.0f} % | "
                         f"{ratio} | "
                         f"{info['handoff_us']:.2f} |")
    versions = ", ".join(f"{p} {version(p)}" for p in
                         ["cgru", "numpy", "scipy", "torch", "onnxruntime", "keras",
                          "tensorflow", "tensorflow-cpu", "jax", "jaxlib"]
                         if version(p))
    table = "\n".join(lines)
    scaling_lines = ["| pass | threads | median | GFLOP/s | speedup over 1 thread | probe |",
                     "|---|---|---|---|---|---|"]
    for pass_name, results in scaling.items():
        one = dict((n, m) for n, m, _ in results).get(1)
        for n, median, info in sorted(results):
            speedup = f"{one / median:.2f}x" if one else "n/a"
            scaling_lines.append(f"| {pass_name} | {n} | {median * 1e3:.2f} ms | "
                                 f"{info['gflops']:.1f} | {speedup} | {info['handoff_us']:.2f} |")
    scaling_config = next((r[0][2]["config"] for r in scaling.values()), "")
    modes = list(QUANTIZATION_MODES)
    quantized_lines = ["| configuration, call | float32 | " + " | ".join(modes) +
                       " | speedup " + " / ".join(modes) + " | probe |",
                       "|---|---|" + "---|" * len(modes) + "---|---|"]
    kernels = {}
    for config, by_precision in quantized.items():
        if "float32" not in by_precision:
            continue
        f32, f32_info = by_precision["float32"]
        columns, speedups, probes = [], [], [f"{f32_info['handoff_us']:.2f}"]
        for precision in modes:
            median, info = by_precision.get(precision, (None, None))
            if median is None:
                columns.append("n/a")
                speedups.append("n/a")
                continue
            for name in ("bf16_kernel", "int8_kernel"):
                kernels[name] = info.get(name) or kernels.get(name)
            columns.append(f"{info['per_step_us']:.2f} us/step")
            speedups.append(f"{f32 / median:.2f}x")
            probes.append(f"{info['handoff_us']:.2f}")
        quantized_lines.append(
            f"| {config} | {f32_info['per_step_us']:.2f} us/step | {' | '.join(columns)} | "
            f"{' / '.join(speedups)} | {' / '.join(probes)} |")
    bf16_kernel = kernels.get("bf16_kernel") or "the kernel cgru info names"
    int8_kernel = kernels.get("int8_kernel") or "the kernel cgru info names"
    memory = "\n".join(training_memory_lines())
    sys.path.insert(0, HERE)
    import contention
    import memory as scoring
    import masks
    import scaleout
    company = contention.table(contention.measure())
    scoring_memory = scoring.table()
    dask_scoring, mpi_training = scaleout.tables()
    masked_training = masks.table(masks.measure())
    text = f"""# Benchmarks

Regenerate with `python bench/report.py` (it runs `pytest bench` and rewrites this file).

- Date: {datetime.date.today().isoformat()}
- CPU: {cpu_name()}, {os.cpu_count()} logical cores; threads per implementation: {threads}
- Versions: Python {platform.python_version()}, {versions}
- SciPy sgemm (1024^3, the best of this run's processes): {sgemm:.1f} GFLOP/s{dgemm}; SciPy's BLAS: {blas_kernel()} (run
  with {" and ".join(HELD_BLAS_VARIABLES)} removed, as on users' machines)
- Kernel check (cgru/_blas_kernel.py, also in `cgru info`): {kernel_line}
- float32 unless the pass says float64, medians; "vs fastest peer" divides by the fastest
  installed peer (torch, ONNX Runtime, Keras on each backend (keras/tensorflow is the TensorFlow
  peer: XLA for its predict, Keras's default graph for its training, the faster of each here;
  one backend per process, so each Keras backend ran in a pytest process of its own), JAX
  (lax.scan, jit; x64 for float64)) of the same configuration and pass; the float64 passes have
  torch and JAX as peers. ONNX Runtime has no backward, and Keras's train_on_batch computes no
  input gradient. Every peer runs cgru's weights (converted to its layout) on the same input and
  was checked against cgru's outputs (training: the input and parameter gradients; Keras: its
  loss) before it was timed: within 1e-4 of the largest magnitude in float32, 1e-9 in float64.
  The NumPy reference is the package's own step-by-step oracle. Training = forward + backward
  with all parameter gradients and the input gradient; GFLOP/s count 2*T*B*3H*(I+H) per layer
  and direction for a forward, 3x that for training; "of GEMM" divides by SciPy's sgemm (dgemm
  for float64 passes). "cgru step()" and "torch GRUCell" are one call per step from Python.
- probe: microseconds per step of a tiny cgru layer (T=200, B=1, H=32) timed just before each
  implementation, almost nothing but the hand-off between cores at every step. On a shared VM it
  moves 2-3x when the hypervisor moves the cores, and every timing that synchronises threads
  moves with it. A group whose probe moved more than {UNSTEADY}x is run again (up to {RERUNS}
  times); "(unsteady)" marks one that never ran in a single state: compare its rows with care.
  "of GEMM" divides by the best GEMM of the dtype timed in this report's processes (the header's
  figure). "cgru (N stalled)": N of cgru's timed calls had a thread descheduled at a per-step
  barrier; after three such calls in a row cgru runs on one thread for 10 ms to 1 s (README,
  "Threads"), so a busy VM can show cgru at up to half its speed there.

{table}

## Reduced precision: quantize("bfloat16"), quantize("bfloat16_all"), quantize("int8")

The same GRU (cgru.GRU(32, H, seed=0)) in float32 and after each `quantize()` mode, side by side
in the same run: step() is one call per time step from Python, "whole sequence" one call.
"bfloat16" rounds W_hh, "bfloat16_all" W_ih too, "int8" stores W_hh in int8 with a scale per
unit and quantizes the state to 8 bits at each step. The bfloat16 W_hh were multiplied with
{bf16_kernel},
the int8 W_hh with {int8_kernel}; step()'s bfloat16 W_ih widened to float32 in registers (the
inputs are not rounded), and a whole sequence multiplies all its inputs by W_ih in one BLAS
call. Each quantized run was checked against float32 first (final state within
1e-2). Every batch size runs on the same kernel (a row's result never depends on its batch).

{chr(10).join(quantized_lines)}

## Thread scaling

cgru alone on {scaling_config}, the same run, over the thread counts this machine has.

{chr(10).join(scaling_lines)}

## Training memory

Saved region per layer and direction against the 5*T*B*H values that backpropagation through time
must keep (h_(t-1), r, z, n, W_hn h + b_hn), the per-call scratch, and the peak of NumPy
allocations over one training step (tracemalloc, one layer, float32).

| T, B, I, H | saved | BPTT minimum | ratio | scratch | peak of a training step |
|---|---|---|---|---|---|
{memory}

## Scoring memory

`predict` on a forecaster, in a fresh process (bench/memory.py): the resident memory grows by the
engine's bounded blocks and the runtime's buffers, not by the size of the input.

{scoring_memory}

## In company

cgru with one busy process per CPU (started by bench/contention.py), with more threads than CPUs,
and with several Python threads calling at once, against the same calls on one thread. With
busy cores, a 1-thread call is itself delayed whenever the scheduler hands its core to a busy
process: compare the 2-thread rows with the 1-thread ones.

{company}

## Training with padding masks

bench/masks.py: a text classifier's training step (Embedding(1000, 64) + GRU(128) + Dense(1),
batch 64 of 100 token ids, valid lengths drawn in [20, 100], the rest padding) with the padding
mask and without it, each implementation in the same process. cgru turns a tail-padding mask
into sequence lengths, so a masked training step costs what an unmasked one costs.

{masked_training}

## Beyond one machine: Dask scoring and MPI training, on this machine

bench/scaleout.py. Dask: series per second scoring {scaleout.SERIES:,} series (T={scaleout.STEPS},
F={scaleout.FEATURES}, GRU({scaleout.UNITS}) + Dense(1), chunks of {scaleout.CHUNK:,}) with
`cgru.dask.predict` on a LocalCluster of worker processes (1 thread each, as Dask's nanny sets
OMP_NUM_THREADS=1), the input persisted on the workers, against `model.predict` in one process.

{dask_scoring}

MPI: samples per second of `fit(distributed=True)` (T={scaleout.T}, global batch
{scaleout.GLOBAL_BATCH}, I={scaleout.I}, H={scaleout.H}, GRU + Dense, Adam), each configuration
its own `mpiexec` job, the median epoch after a warm-up one; the allreduce of the gradients is
one call per step.

{mpi_training}
"""
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
