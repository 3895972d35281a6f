"""cgru.dask.predict scores Dask arrays on a local cluster as direct calls do; models survive
pickling, process pools and fork.

One module-scoped LocalCluster (two worker processes of one thread each) serves the tests that
name the `client` fixture; the others pass their scheduler explicitly. The tests that fork run
first, before the cluster's threads exist in this process.
"""
import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)
import dask  # noqa: E402

import cgru  # noqa: E402
import cgru.dask  # noqa: E402
from cgru import layers  # noqa: E402

TIME_LIMIT_S = 120
F = 4  # features per time step in most tests


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _sequential(return_sequences=False, seed=0):
    """A built Sequential: GRU + Dense, or Bidirectional GRU sequences + Dense per step."""
    if return_sequences:
        stack = [layers.Bidirectional(layers.GRU(6, return_sequences=True)), layers.Dense(3)]
    else:
        stack = [layers.GRU(6), layers.Dense(2, activation="tanh")]
    model = cgru.Sequential(stack, seed=seed)
    model.build((None, None, F))
    return model


def _direct(gru, x):
    """What gru(x) gives in inference mode, leaving gru's mode as it was."""
    mode = gru.training
    try:
        return gru.eval()(x)[0]
    finally:
        gru.train(mode)


class RecordingGRU(cgru.GRU):
    """A GRU that records the thread and mode of every forward; copies share the record."""

    def forward(self, x, h0=None, lengths=None):
        self.record.append((threading.get_ident(), self.training))
        return super().forward(x, h0, lengths)


@pytest.fixture(scope="module")
def client():
    # a LocalCluster writes its nanny's settings (OMP_NUM_THREADS=1, ...) into this process's
    # environment, where later tests' subprocesses would inherit them: put it back afterwards
    environment = dict(os.environ)
    cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(environment)


# ---- dask stays optional ----------------------------------------------------------------------

def test_importing_cgru_does_not_import_dask_and_a_missing_dask_is_named():
    code = ("import sys\n"
            "import cgru\n"
            "assert 'dask' not in sys.modules, 'import cgru imported dask'\n"
            "sys.modules['dask'] = None  # as if dask were not installed\n"
            "try:\n"
            "    import cgru.dask\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    # from the folder that holds the cgru these tests import
    root = os.path.dirname(os.path.dirname(os.path.abspath(cgru.__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=TIME_LIMIT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cgru.dask needs dask: pip install 'dask[array,distributed]'" in out.stdout


# ---- pickling, process pools, fork (before the cluster exists) ---------------------------------

def _trained_sequential():
    model = _sequential()
    x, y = _x((32, 5, F), seed=1), _x((32, 2), seed=2)
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def test_gru_and_trained_sequential_unpickle_to_bitwise_identical_outputs():
    gru = cgru.GRU(F, 8, num_layers=2, bidirectional=True, seed=0)
    x = _x((5, 7, F))
    copy = pickle.loads(pickle.dumps(gru))
    for a, b in zip(gru(x), copy(x)):
        np.testing.assert_array_equal(a, b)
    assert copy.training and copy.batch_first == gru.batch_first

    model = _trained_sequential()
    x = _x((16, 5, F), seed=3)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(x), model.predict(x))


def test_models_shipped_to_a_process_pool_score_as_in_the_parent():
    gru = cgru.GRU(F, 8, num_layers=2, bidirectional=True, seed=0).eval()
    model = _trained_sequential()
    x_gru, x_model = _x((5, 7, F)), _x((16, 5, F), seed=3)
    # bound methods pickle their model: the children score with unpickled copies; they use the
    # parent's thread count, so that results can be compared bit for bit
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context,
                                                initializer=cgru.set_num_threads,
                                                initargs=(cgru.get_num_threads(),)) as pool:
        y, h_n = pool.submit(gru.forward, x_gru).result(timeout=TIME_LIMIT_S)
        predicted = pool.submit(model.predict, x_model).result(timeout=TIME_LIMIT_S)
    expected_y, expected_h_n = gru(x_gru)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(h_n, expected_h_n)
    np.testing.assert_array_equal(predicted, model.predict(x_model))


# what fork children inherit from the parent (set before the pool starts)
_INHERITED = {}


def _score_inherited(_):
    return _INHERITED["model"].predict(_INHERITED["x"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_pool_children_score_with_a_sequential_the_parent_already_ran():
    model = cgru.Sequential([layers.GRU(48), layers.Dense(2)], seed=0)
    x = _x((64, 20, F))
    expected = model.predict(x)  # builds it, and the parent's OpenMP threads now exist
    _INHERITED.update(model=model, x=x)
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # a hang fails the test (leaving the with-block terminates the children)
            results = pool.map_async(_score_inherited, range(4)).get(timeout=TIME_LIMIT_S)
    finally:
        _INHERITED.clear()
    assert len(results) == 4
    for predicted in results:
        np.testing.assert_array_equal(predicted, expected)


# ---- predict on the cluster equals direct calls ------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
def test_gru_scored_on_the_cluster_equals_a_direct_call(client, batch_first):
    gru = cgru.GRU(F, 8, num_layers=2, bidirectional=True, batch_first=batch_first, seed=0)
    x = _x((13, 6, F) if batch_first else (6, 13, F))
    chunks = (5, -1, -1) if batch_first else (-1, 5, -1)  # the samples axis only
    y = cgru.dask.predict(gru, da.from_array(x, chunks=chunks)).compute(scheduler=client)
    np.testing.assert_allclose(y, _direct(gru, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_sequential_scored_on_the_cluster_equals_predict(client, return_sequences):
    model = _sequential(return_sequences)
    x = _x((13, 6, F))
    y = cgru.dask.predict(model, da.from_array(x, chunks=(4, -1, -1))).compute(scheduler=client)
    np.testing.assert_allclose(y, model.predict(x), rtol=0, atol=1e-6)


def test_each_worker_runs_the_engine_on_one_thread_under_the_nanny(client):
    gru = cgru.GRU(F, 8, batch_first=True, seed=0)
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    for seed, address in enumerate(workers):  # a task on each worker (other data, other keys)
        X = da.from_array(_x((8, 3, F), seed=seed), chunks=(2, -1, -1))
        client.compute(cgru.dask.predict(gru, X), workers=[address]).result(TIME_LIMIT_S)
    # each worker decided its engine threads ...
    decided = client.run(lambda: cgru.dask._threads_decided_pid == os.getpid())
    assert decided == {address: True for address in workers}
    # the nanny's OMP_NUM_THREADS=1 is respected: each worker's engine runs one thread
    assert set(client.run(os.getenv, "OMP_NUM_THREADS").values()) == {"1"}
    assert set(client.run(cgru.get_num_threads).values()) == {1}


# ---- engine threads in a worker ---------------------------------------------------------------

def test_a_worker_without_omp_num_threads_shares_its_cores_among_its_task_threads(monkeypatch):
    # a process with 8 CPUs; what the helper sets is recorded instead of set
    monkeypatch.setattr(cgru.dask, "_engine", SimpleNamespace(cpus_available=lambda: 8))
    chosen = []
    monkeypatch.setattr(cgru.dask, "set_num_threads", chosen.append)

    def decide(worker_threads):
        """The helper's choice, run afresh as if in a worker with this many task threads (None:
        not in a worker); None when it leaves the engine alone."""
        def get_worker():
            if worker_threads is None:
                raise ValueError("No worker found")
            return SimpleNamespace(state=SimpleNamespace(nthreads=worker_threads))
        monkeypatch.setattr(distributed, "get_worker", get_worker)
        monkeypatch.setattr(cgru.dask, "_threads_decided_pid", None)
        chosen.clear()
        cgru.dask._set_engine_threads()
        return chosen[0] if chosen else None

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert decide(1) == 8
    assert decide(3) == 2
    assert decide(16) == 1  # never fewer than one thread
    assert decide(None) is None  # outside a worker: left alone
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert decide(2) is None  # OMP_NUM_THREADS set: respected
    # decided once per process: a second call does nothing
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert decide(2) == 4
    cgru.dask._set_engine_threads()
    assert chosen == [4]


# ---- the lazy result --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["gru batch_first", "gru time-major", "sequential last",
                                  "sequential sequences"])
def test_output_chunks_meta_and_dtype_are_known_before_compute(case):
    chunks = (4, 4, 0, 3)
    if case.startswith("gru"):
        batch_first = case == "gru batch_first"
        model = cgru.GRU(F, 5, bidirectional=True, batch_first=batch_first, seed=0)
        X = da.zeros((11, 6, F) if batch_first else (6, 11, F), dtype=np.float64,
                     chunks=(chunks, -1, -1) if batch_first else (-1, chunks, -1))
        expected = ((chunks, (6,), (10,)) if batch_first else ((6,), chunks, (10,)))
    else:
        return_sequences = case == "sequential sequences"
        model = _sequential(return_sequences)
        X = da.zeros((11, 6, F), dtype=np.int64, chunks=(chunks, -1, -1))
        expected = (chunks, (6,), (3,)) if return_sequences else (chunks, (2,))
    Y = cgru.dask.predict(model, X)  # X of another dtype: cast lazily to the model's
    assert Y.chunks == expected
    assert Y.dtype == np.float32
    assert type(Y._meta) is np.ndarray and Y._meta.dtype == np.float32
    assert Y._meta.ndim == len(expected) and Y._meta.size == 0
    y = Y.compute(scheduler="sync")
    assert y.shape == Y.shape and y.dtype == np.float32  # the empty chunk included


# X's blocks as loaded, in the order they were (see test_nothing_runs_at_call_time)
_loaded = []


def _load(block):
    _loaded.append(block.shape[0])
    return block


def test_nothing_runs_at_call_time():
    gru = RecordingGRU(F, 5, batch_first=True, seed=0)
    gru.record = []
    X = da.from_array(_x((10, 4, F)), chunks=(4, -1, -1)).map_blocks(
        _load, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    _loaded.clear()
    Y = cgru.dask.predict(gru, X, batch_size=3)
    assert _loaded == [] and gru.record == []  # neither X nor the model ran
    Y.compute(scheduler="sync")
    assert sorted(_loaded) == [2, 4, 4]
    assert len(gru.record) == 2 + 2 + 1  # pieces of at most 3 samples


def test_the_graph_holds_the_model_once_whatever_the_chunk_count():
    gru = cgru.GRU(F, 160, batch_first=True, seed=0)
    model_bytes = len(pickle.dumps(gru))

    def graph(n_chunks):
        X = da.zeros((240, 3, F), dtype=np.float32, chunks=(240 // n_chunks, -1, -1))
        return dict(cgru.dask.predict(gru, X).__dask_graph__())

    few, many = graph(2), graph(48)
    # exactly one node carries the model; the chunks' tasks name it
    assert sum(len(cloudpickle.dumps(node)) > model_bytes // 2 for node in many.values()) == 1
    few_bytes, many_bytes = len(cloudpickle.dumps(few)), len(cloudpickle.dumps(many))
    assert many_bytes - few_bytes < model_bytes // 10, (few_bytes, many_bytes, model_bytes)
    assert many_bytes < 1.5 * model_bytes


def test_a_changed_model_gets_new_keys():
    gru = cgru.GRU(F, 5, batch_first=True, seed=0)
    X = da.zeros((6, 3, F), dtype=np.float32, chunks=(3, -1, -1))
    first = cgru.dask.predict(gru, X).name
    assert cgru.dask.predict(gru, X).name == first  # deterministic
    gru.params["weight_hh_l0"][0, 0] += 1
    assert cgru.dask.predict(gru, X).name != first  # never taken for the old results


# ---- inference mode, batch_size ---------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
def test_the_users_gru_stays_in_training_mode_under_the_threaded_scheduler(batch_first):
    gru = RecordingGRU(F, 8, num_layers=2, bidirectional=True, batch_first=batch_first, seed=0)
    gru.record = []
    x = _x((12, 5, F) if batch_first else (5, 12, F))
    X = da.from_array(x, chunks=(3, -1, -1) if batch_first else (-1, 3, -1))
    with dask.config.set(scheduler="threads"):
        y = cgru.dask.predict(gru, X, batch_size=2).compute()
    assert gru.training, "predict switched the user's GRU to inference mode"
    # the tasks ran here, on copies in inference mode
    assert len(gru.record) == 4 * 2 and not any(training for _, training in gru.record)
    np.testing.assert_allclose(y, _direct(gru, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "sequential"])
def test_batch_size_changes_pieces_not_results(kind):
    if kind == "gru":
        model = cgru.GRU(F, 8, num_layers=2, batch_first=False, seed=0)
        X = da.from_array(_x((6, 13, F)), chunks=(-1, (7, 0, 6), -1))
    else:
        model = _sequential(return_sequences=True)
        X = da.from_array(_x((13, 6, F)), chunks=((7, 0, 6), -1, -1))
    whole = cgru.dask.predict(model, X).compute(scheduler="sync")
    for batch_size in (1, 4, 7, 100):
        pieces = cgru.dask.predict(model, X, batch_size=batch_size).compute(scheduler="sync")
        # the same numbers to float32 rounding: the input product x W_ih^T is a BLAS GEMM over
        # a piece's rows, and BLAS kernels may sum a row differently for another row count
        # (SciPy's OpenBLAS does with its Haswell kernels on some CPUs)
        np.testing.assert_allclose(pieces, whole, rtol=1e-6, atol=1e-6,
                                   err_msg=f"batch_size={batch_size}")


# ---- bad input --------------------------------------------------------------------------------

def _bad_inputs():
    gru = cgru.GRU(F, 5, batch_first=True, seed=0)
    time_major = cgru.GRU(F, 5, seed=0)
    fixed_time = cgru.Sequential([layers.Input((5, F)), layers.GRU(3)], seed=0)
    fixed_time.build((None, 5, F))
    X = da.zeros((8, 5, F), dtype=np.float32, chunks=(4, -1, -1))
    return {
        "not a model": (TypeError, r"model must be a cgru.GRU, a cgru.Sequential or a cgru.Model, got "
                                   r"builtins.dict", ({}, X)),
        "unbuilt Sequential": (ValueError, r"model is a Sequential that is not built",
                               (cgru.Sequential([layers.Input((None, F)), layers.GRU(3)]), X)),
        "numpy X": (TypeError, r"X must be a dask.array.Array of shape \(N, T, F\), got "
                               r"numpy.ndarray", (gru, np.zeros((8, 5, F), np.float32))),
        "2-D X": (ValueError, r"X must be 3-D \(N, T, F\), got 2-D with shape \(8, 4\)",
                  (gru, da.zeros((8, F), chunks=4))),
        "complex X": (TypeError, r"X must hold real numbers \(float or integer\), got dtype "
                                 r"complex128", (gru, X.astype(complex))),
        "bool X": (TypeError, r"X must hold real numbers .* got dtype bool", (gru, X > 0)),
        "wrong features": (ValueError, r"X must have the model's 4 features in its last axis, "
                                       r"got 3", (gru, X[..., :3])),
        "0 time steps": (ValueError, r"X has 0 time steps", (gru, X[:, :0])),
        "wrong time steps": (ValueError, r"X must have the 5 time steps the model's input "
                                         r"declares \(axis 1\), got 4", (fixed_time, X[:, :4])),
        "chunked along time": (ValueError, r"X must be chunked along the samples axis \(axis "
                                           r"0\) only, got chunks .*X = X.rechunk\(\{1: -1, 2: "
                                           r"-1\}\)", (gru, X.rechunk((4, 2, -1)))),
        "time-major chunked along time": (ValueError, r"samples axis \(axis 1\) only, .*"
                                                      r"X.rechunk\(\{0: -1, 2: -1\}\)",
                                          (time_major, X.rechunk((4, 2, -1)))),
        "chunked along features": (ValueError, r"X.rechunk\(\{1: -1, 2: -1\}\)",
                                   (gru, X.rechunk((4, -1, 2)))),
        "batch_size 0": (ValueError, r"batch_size must be None or an integer >= 1, got 0",
                         (gru, X, 0)),
        "batch_size True": (ValueError, r"batch_size must be .* got True", (gru, X, True)),
        "batch_size 2.0": (ValueError, r"batch_size must be .* got 2.0", (gru, X, 2.0)),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_is_refused_naming_the_argument(case):
    error, message, args = _bad_inputs()[case]
    with pytest.raises(error, match=message):
        cgru.dask.predict(*args)


def test_a_functional_model_scores_on_the_cluster_as_called_directly(client):
    inputs = cgru.Input(shape=(None, 3))
    h = cgru.layers.GRU(5, return_sequences=True)(inputs)
    model = cgru.Model(inputs, cgru.layers.TimeDistributed(cgru.layers.Dense(2))(h), seed=3)
    x = np.random.default_rng(5).standard_normal((40, 7, 3)).astype(np.float32)
    scores = cgru.dask.predict(model, da.from_array(x, chunks=(15, 7, 3)))
    assert scores.shape == (40, 7, 2) and scores.chunks[0] == (15, 15, 10)
    np.testing.assert_allclose(scores.compute(), model.predict(x), rtol=1e-6, atol=1e-6)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
