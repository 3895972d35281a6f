"""Data-parallel training on MPI: the specification in tests/mpi/mpi_fit.py run on 2 and 3 ranks
under mpiexec, ranks that fail, and distributed=True outside mpiexec.

Each MPI job runs in its own process group under a time limit, so that a hang fails the test
instead of blocking the suite. Skips when mpi4py or mpiexec is missing (`pip install mpi4py
mpich`; CI installs them).
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import cgru

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT_S = 240


def _run(args, cwd=ROOT, limit=TIME_LIMIT_S):
    """(returncode, output, seconds) of a command in its own process group, killed at `limit`."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)  # each rank's default threads are part of what is tested
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args)} still ran after {limit} s (a hang):\n{out[-3000:]}")
    return proc.returncode, out, time.monotonic() - start


def _script(tmp_path, body):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("ranks", [2, 3])
def test_specification_passes_on_every_rank(ranks):
    rc, out, _ = _run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "pytest", "-q",
                       "-p", "no:cacheprovider", "tests/mpi/mpi_fit.py"])
    assert rc == 0, out[-6000:]
    assert out.count(" passed") == ranks and "skipped" not in out, out[-3000:]


TRAINING = """
    import os, sys, numpy as np, cgru
    from cgru import callbacks, distributed, layers
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 20, 3)).astype(np.float32)
    y = x[:, -1, :1].copy()
    model = cgru.Sequential([layers.GRU(16), layers.Dense(1)], seed=1)
    model.compile("adam", "mse")
    checkpoint = callbacks.ModelCheckpoint(sys.argv[1])
"""


FAILURES = {
    "raises": ("raise RuntimeError('disk full on rank 1')",
               ["rank 1 of 2 failed in fit; aborting every rank",
                "RuntimeError: disk full on rank 1"]),
    "dies": ("os.kill(os.getpid(), 9)", []),  # mpiexec notices and stops the others
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_rank_that_fails_stops_every_rank_and_leaves_a_whole_checkpoint(tmp_path, failure):
    action, messages = FAILURES[failure]
    path = _script(tmp_path, TRAINING + f"""
    class FailOnRank1(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if distributed.rank() == 1 and epoch == 1:
                {action}
    model.fit(x, y, batch_size=16, epochs=50, verbose=0, callbacks=[checkpoint, FailOnRank1()],
              distributed=True)
    print("finished training")
    """)
    checkpoint = str(tmp_path / "ckpt.npz")
    rc, out, _ = _run([MPIEXEC, "-n", "2", sys.executable, path, checkpoint], limit=120)
    assert rc != 0 and "finished training" not in out, out[-3000:]
    for message in messages:
        assert message in out, out[-3000:]
    cgru.load_model(checkpoint)  # rank 0's last checkpoint is whole


def test_outside_mpiexec_distributed_trains_as_one_process(tmp_path):
    path = _script(tmp_path, TRAINING + """
    from cgru import distributed
    assert (distributed.rank(), distributed.size(), distributed.is_root()) == (0, 1, True)
    twin = cgru.Sequential([layers.GRU(16), layers.Dense(1)], seed=1)
    twin.compile("adam", "mse")
    a = model.fit(x, y, batch_size=16, epochs=2, verbose=0, distributed=True).history
    b = twin.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert a == b, (a, b)
    assert all((u == v).all() for u, v in zip(model.get_weights(), twin.get_weights()))
    print("same")
    """)
    rc, out, _ = _run([sys.executable, path, str(tmp_path / "unused.npz")], limit=120)
    assert rc == 0 and "same" in out, out[-3000:]


def test_without_mpi4py_an_import_error_says_what_to_install(tmp_path):
    path = _script(tmp_path, """
    import sys
    sys.modules["mpi4py"] = None          # as if it were not installed
    import numpy as np, cgru
    from cgru import distributed, layers
    try:
        distributed.rank()
    except ImportError as e:
        print("rank:", e)
    model = cgru.Sequential([layers.GRU(2), layers.Dense(1)])
    model.compile("sgd", "mse")
    try:
        model.fit(np.zeros((4, 3, 1), np.float32), np.zeros((4, 1), np.float32), verbose=0,
                  distributed=True)
    except ImportError as e:
        print("fit:", e)
    """)
    rc, out, _ = _run([sys.executable, path], limit=60)
    assert rc == 0, out
    for what in ("rank:", "fit:"):
        line = next(l for l in out.splitlines() if l.startswith(what))
        assert "pip install mpi4py mpich" in line, out
