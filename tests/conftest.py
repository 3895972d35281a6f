"""Shared helpers: tolerances per dtype, a factory for engine/reference pairs, Python threads,
scripts in a fresh interpreter."""
import os
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

# Keras 3 runs its oracle tests on PyTorch, whatever else is installed (TensorFlow, JAX) and
# whichever test module imports it first
os.environ.setdefault("KERAS_BACKEND", "torch")

import cgru  # noqa: E402
from cgru import reference  # noqa: E402

# Tolerances the engine is held to against the float64-exact reference:
#   float64: rtol 1e-9, atol 1e-10 (only summation order differs)
#   float32: rtol 1e-4, atol 1e-4 (float32 rounding over T steps and the fast activations)
TOLERANCE = {"float64": dict(rtol=1e-9, atol=1e-10), "float32": dict(rtol=1e-4, atol=1e-4)}


def assert_close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOLERANCE[np.dtype(dtype).name])


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test starts with the thread count, and the user's choice of it, left as found."""
    before, chosen = cgru.get_num_threads(), cgru.gru._threads_set_by_user
    yield
    cgru._engine.set_num_threads(before)
    cgru.gru._threads_set_by_user = chosen


def run_engine_and_reference(config, rng, with_h0=True, with_dh_n=True):
    """Forward and backward through cgru.GRU and through cgru.reference with the same weights.

    config: dict with T, B, I, H, num_layers, bidirectional, reset_after, dtype, batch_first,
    bias, lengths (bool). Returns (engine_results, reference_results), each a dict of arrays.
    """
    c = config
    dtype = np.dtype(c["dtype"])
    D = 2 if c["bidirectional"] else 1
    gru = cgru.GRU(c["I"], c["H"], num_layers=c["num_layers"], bias=c["bias"],
                   batch_first=c["batch_first"], bidirectional=c["bidirectional"],
                   reset_after=c["reset_after"], dtype=dtype.name, seed=int(rng.integers(1 << 30)))
    T, B = c["T"], c["B"]
    x = rng.standard_normal((T, B, c["I"])).astype(dtype)
    h0 = rng.standard_normal((c["num_layers"] * D, B, c["H"])).astype(dtype) if with_h0 else None
    lengths = rng.integers(1, T + 1, size=B) if c["lengths"] else None
    dy = rng.standard_normal((T, B, D * c["H"])).astype(dtype)
    dh_n = (rng.standard_normal((c["num_layers"] * D, B, c["H"])).astype(dtype)
            if with_dh_n else None)

    x_user = x.transpose(1, 0, 2) if c["batch_first"] else x
    dy_user = dy.transpose(1, 0, 2) if c["batch_first"] else dy
    y, h_n = gru(x_user, h0, lengths)
    dx, dh0 = gru.backward(dy_user, dh_n)
    if c["batch_first"]:
        y, dx = y.transpose(1, 0, 2), dx.transpose(1, 0, 2)
    engine = {"y": y, "h_n": h_n, "dx": dx, "dh0": dh0, **gru.grads}

    params64 = {k: v.astype(np.float64) for k, v in gru.params.items()}
    as64 = (lambda a: None if a is None else a.astype(np.float64))
    y_r, h_n_r, cache = reference.gru_forward(
        as64(x), params64, as64(h0), num_layers=c["num_layers"], bidirectional=c["bidirectional"],
        reset_after=c["reset_after"], lengths=lengths)
    dx_r, dh0_r, grads_r = reference.gru_backward(as64(dy), as64(dh_n), cache)
    ref = {"y": y_r, "h_n": h_n_r, "dx": dx_r, "dh0": dh0_r, **grads_r}
    return engine, ref


def run_in_threads(worker, n):
    """worker(i) for i in range(n), each in its own Python thread, all joined."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_script(source, time_limit_s=120, env=None):
    """Run `source` as a script file in a fresh interpreter, in a temporary directory, with `env`
    added to the environment, and return its stdout; a hang (past time_limit_s), a crash or a
    non-zero exit fails the calling test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scenario.py")
        with open(path, "w") as f:
            f.write(source)
        # its own process group, so that a hung grandchild is killed with it
        # joblib and scikit-learn, once imported by another test, set KMP_INIT_AT_FORK=FALSE in
        # this process; under LLVM's libomp that makes fork children run on one thread, so the
        # scenarios run without it
        env = {**{k: v for k, v in os.environ.items() if k != "KMP_INIT_AT_FORK"}, **(env or {})}
        proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"the scenario hung for {time_limit_s} s")
    assert proc.returncode == 0, err[-3000:]
    return out
