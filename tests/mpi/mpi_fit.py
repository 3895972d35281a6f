"""fit(distributed=True) on several ranks, as a specification.

Not collected by `pytest tests` (the name does not start with test_): tests/test_mpi.py runs it
as `mpiexec -n N python -m pytest tests/mpi/mpi_fit.py` for N = 2 and 3. Every test runs on every
rank in the same order (the collectives pair up); each compares the distributed fit with a fit in
one process that the rank runs itself on the same data, seed and batches.
"""
import os
import zlib

import numpy as np
import pytest

import cgru
from cgru import callbacks, distributed, layers, optimizers

MPI = pytest.importorskip("mpi4py.MPI")
COMM = MPI.COMM_WORLD
pytestmark = pytest.mark.skipif(COMM.Get_size() < 2, reason="run under mpiexec -n 2 or more")

# 50 samples in global batches of 16: the last batch holds 2, so with 3 ranks one gets none
N, T, F = 50, 7, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, F)).astype(np.float32)
    y = (x[:, -3:, :2].sum(axis=1) + 0.1 * rng.standard_normal((N, 2))).astype(np.float32)
    return x, y


def model(seed=1, optimizer="adam", dropout=0.0):
    m = cgru.Sequential([layers.GRU(8, return_sequences=True), layers.GRU(6, dropout=dropout),
                         layers.Dense(2)], seed=seed)
    m.compile(optimizer=optimizer, loss="mse", metrics=["mae", "rmse"])
    return m


def checksum(m):
    total = 0
    for w in m.get_weights():
        total = zlib.crc32(np.ascontiguousarray(w).view(np.uint8), total)
    return total


def assert_same_on_every_rank(m):
    sums = COMM.allgather(checksum(m))
    assert len(set(sums)) == 1, f"ranks hold different weights: checksums {sums}"


def assert_weights_close(actual, expected):
    for a, e in zip(actual.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=2e-6)


def test_rank_size_and_root_come_from_mpi():
    assert distributed.rank() == COMM.Get_rank()
    assert distributed.size() == COMM.Get_size() >= 2
    assert distributed.is_root() == (COMM.Get_rank() == 0)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_ends_with_the_weights_and_history_of_one_process(shuffle, optimizer):
    x, y = data()
    make = (lambda: model(optimizer=optimizers.SGD(0.05, momentum=0.9))) \
        if optimizer == "sgd_momentum" else model
    alone, together = make(), make()
    expected = alone.fit(x, y, batch_size=16, epochs=3, shuffle=shuffle, verbose=0,
                         validation_split=0.2)
    history = together.fit(x, y, batch_size=16, epochs=3, shuffle=shuffle, verbose=0,
                           validation_split=0.2, distributed=True)
    assert_weights_close(together, alone)
    assert_same_on_every_rank(together)
    assert sorted(history.history) == sorted(expected.history) == \
        ["loss", "mae", "rmse", "val_loss", "val_mae", "val_rmse"]
    for key, values in expected.history.items():  # global metrics, not this rank's share
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, err_msg=key)


def test_every_rank_starts_from_rank_0_weights():
    x, y = data()
    mine = model(seed=100 + COMM.Get_rank())
    mine.build((None, T, F))
    rank0_initial = COMM.bcast(mine.get_weights(), root=0)
    # no epoch to run (initial_epoch == epochs): the start alone
    mine.fit(x, y, batch_size=16, epochs=1, initial_epoch=1, verbose=0, distributed=True)
    for w, w0 in zip(mine.get_weights(), rank0_initial):
        np.testing.assert_array_equal(w, w0)


def test_resuming_takes_rank_0_optimizer_state():
    # rank 0 has trained one epoch (Adam moments, step count, random state); the others come
    # fresh; together they go on exactly as rank 0 alone would have
    x, y = data()
    alone = model()
    alone.fit(x, y, batch_size=16, epochs=1, verbose=0)
    alone.fit(x, y, batch_size=16, epochs=2, initial_epoch=1, verbose=0)
    if distributed.is_root():
        resumed = model()
        resumed.fit(x, y, batch_size=16, epochs=1, verbose=0)
    else:
        resumed = model(seed=7)
    resumed.fit(x, y, batch_size=16, epochs=2, initial_epoch=1, verbose=0, distributed=True)
    assert resumed.optimizer.iterations == alone.optimizer.iterations == 8
    assert_weights_close(resumed, alone)


def test_dropout_trains_and_keeps_ranks_identical():
    x, y = data()
    m = model(dropout=0.3)
    history = m.fit(x, y, batch_size=16, epochs=2, verbose=0, distributed=True)
    assert np.isfinite(history.history["loss"]).all()
    assert_same_on_every_rank(m)


def test_a_stop_asked_by_one_rank_stops_every_rank():
    class StopOnRank1(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if COMM.Get_rank() == 1 and epoch == 1:
                self.model.stop_training = True

    x, y = data()
    history = model().fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[StopOnRank1()],
                          distributed=True)
    assert history.epoch == [0, 1]


def test_early_stopping_decides_the_same_on_every_rank():
    x, y = data()
    stop = callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    m = model(optimizer=optimizers.SGD(2.0))  # a step size that makes val_loss jump around
    history = m.fit(x, y, batch_size=16, epochs=8, verbose=0, validation_split=0.2,
                    callbacks=[stop], distributed=True)
    assert len(set(COMM.allgather(tuple(history.epoch)))) == 1
    assert len(set(COMM.allgather(stop.best_epoch))) == 1
    assert_same_on_every_rank(m)


def test_checkpoints_are_written_by_rank_0_only(tmp_path):
    directory = COMM.bcast(str(tmp_path), root=0)
    path = os.path.join(directory, "ckpt-{epoch}.npz")
    x, y = data()
    m = model()
    saves = []
    m.save = lambda *args, **kwargs: (saves.append(args[0]),
                                      cgru.Sequential.save(m, *args, **kwargs))
    m.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callbacks.ModelCheckpoint(path)],
          distributed=True)
    COMM.Barrier()
    if distributed.is_root():
        assert len(saves) == 2
        loaded = cgru.load_model(os.path.join(directory, "ckpt-2.npz"))
        assert checksum(loaded) == checksum(m)
    else:
        assert saves == []


def test_weights_that_drift_apart_raise_on_every_rank():
    class NudgeOnRank1(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if COMM.Get_rank() == 1 and epoch == 0:
                self.model.layers[-1].params["kernel"][0, 0] += 1e-3

    x, y = data()
    with pytest.raises(distributed.DriftError, match=r"after epoch 2 the weights of rank\(s\) "
                                                     r"\[1\] differ from rank 0's"):
        model().fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[NudgeOnRank1()],
                    distributed=True)


@pytest.mark.parametrize("difference", ["fewer samples", "other values", "other batch size"])
def test_ranks_given_different_data_or_settings_are_told_so(difference):
    x, y = data()
    batch_size = 16
    if COMM.Get_rank() == 1:
        if difference == "fewer samples":
            x, y = x[:-1], y[:-1]
        elif difference == "other values":
            x = x[::-1].copy()
        else:
            batch_size = 8
    with pytest.raises(ValueError, match=r"every rank must pass the same data and settings; "
                                         r"rank\(s\) \[1\] differ from rank 0"):
        model().fit(x, y, batch_size=batch_size, epochs=1, verbose=0, distributed=True)


@pytest.mark.skipif("OMP_NUM_THREADS" in os.environ, reason="OMP_NUM_THREADS chooses the threads")
def test_each_rank_runs_its_share_of_the_node_cores():
    node = COMM.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = node.Get_size()
    node.Free()
    cgru.gru._threads_set_by_user = False
    x, y = data()
    model().fit(x, y, batch_size=16, epochs=1, verbose=0, distributed=True)
    assert cgru.get_num_threads() == max(1, cgru._engine.cpus_available() // ranks_here)


def test_threads_chosen_by_the_user_are_kept():
    cgru.set_num_threads(3)
    x, y = data()
    model().fit(x, y, batch_size=16, epochs=1, verbose=0, distributed=True)
    assert cgru.get_num_threads() == 3
