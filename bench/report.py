"""Run the benchmark suite and write BENCHMARKS.md: python bench/report.py

Prints and records one table: configuration x implementation, median time, GFLOP/s, fraction of
the sgemm throughput measured in the same run, and the ratio to the fastest peer (not cgru, not
the NumPy reference) of that configuration and pass.
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


def version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "bench"), "-q",
               "--benchmark-json", out, "--benchmark-columns=median"] + sys.argv[1:]
        subprocess.run(cmd, check=True, cwd=ROOT)
        with open(out) as f:
            data = json.load(f)

    rows, scaling = {}, {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info["pass_name"].startswith("scaling"):
            scaling.setdefault(info["pass_name"].split()[1], []).append(
                (info["threads_used"], b["stats"]["median"], info))
            continue
        rows.setdefault((info["config"], info["pass_name"]), []).append(
            (info["implementation"], b["stats"]["median"], info))
    sgemm = next(iter(data["benchmarks"]))["extra_info"]["sgemm_gflops"]
    threads = next(iter(data["benchmarks"]))["extra_info"]["threads"]
    lines = ["| configuration (T, B, I, H) | pass | implementation | median | GFLOP/s | "
             "of sgemm | vs fastest peer |", "|---|---|---|---|---|---|---|"]
    for (config, pass_name), results in rows.items():
        peers = [m for name, m, _ in results if name not in OWN]
        best_peer = min(peers) if peers else None
        for name, median, info in sorted(results, key=lambda r: r[1]):
            ratio = f"{median / best_peer:.2f}x" if best_peer else "n/a"
            time_text = (f"{median * 1e3:.2f} ms" if pass_name != "streaming" else
                         f"{median * 1e3:.2f} ms ({info['per_step_us']:.2f} us/step)")
            lines.append(f"| {config} | {pass_name} | {name} | {time_text} | "
                         f"{info['gflops']:.1f} | {info['sgemm_fraction'] * 100:.0f} % | {ratio} |")
    versions = ", ".join(f"{p} {version(p)}" for p in
                         ["cgru", "numpy", "scipy", "torch", "onnxruntime", "keras", "jax"]
                         if version(p))
    table = "\n".join(lines)
    scaling_lines = ["| pass | threads | median | GFLOP/s | speedup over 1 thread |", "|---|---|---|---|---|"]
    for pass_name, results in scaling.items():
        one = dict((n, m) for n, m, _ in results).get(1)
        for n, median, info in sorted(results):
            speedup = f"{one / median:.2f}x" if one else "n/a"
            scaling_lines.append(f"| {pass_name} | {n} | {median * 1e3:.2f} ms | "
                                 f"{info['gflops']:.1f} | {speedup} |")
    scaling_config = next((r[0][2]["config"] for r in scaling.values()), "")
    memory = "\n".join(training_memory_lines())
    text = f"""# Benchmarks

Regenerate with `python bench/report.py` (it runs `pytest bench` and rewrites this file).

- Date: {datetime.date.today().isoformat()}
- CPU: {cpu_name()}, {os.cpu_count()} logical cores; threads per implementation: {threads}
- Versions: Python {platform.python_version()}, {versions}
- SciPy sgemm (1024^3, same run): {sgemm:.1f} GFLOP/s
- float32, medians; "vs fastest peer" divides by the fastest installed peer (torch, ONNX Runtime,
  Keras, JAX) of the same configuration and pass; ONNX Runtime has no backward. The NumPy
  reference is the package's own step-by-step oracle. Training = forward + backward with all
  parameter gradients and the input gradient; GFLOP/s count 2*T*B*3H*(I+H) per layer and
  direction for a forward, 3x that for training.

{table}

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
"""
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
