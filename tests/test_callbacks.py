"""Callbacks with Keras 3's names and semantics: ReduceLROnPlateau, CSVLogger, TerminateOnNaN and
the batch hooks of the base class.

Keras's own callbacks are the oracle: both are driven with the same logs, through a stand-in
model that has what the callbacks touch (an optimizer with a learning_rate, stop_training).
Until fit calls the batch hooks, batch behaviour is tested by calling the hooks directly; the
fit-level tests rely only on what fit calls today (train begin/end, epoch begin/end).
"""
import contextlib
import csv
import io
import math
import os
import types

import numpy as np
import pytest

import cgru
from cgru import callbacks, layers, optimizers

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch: no TensorFlow needed


def stand_in_model(learning_rate=0.1, root=True):
    """What a callback reaches through `self.model`: the optimizer, stop_training and, for
    distributed fits, whether this process writes files."""
    return types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=learning_rate),
                                 stop_training=False, _writes_files=lambda: root)


def attach(callback, model):
    callback.set_model(model)
    callback.on_train_begin({})
    return callback


def small_model(seed=0, learning_rate=0.1):
    model = cgru.Sequential([layers.GRU(4), layers.Dense(1)], seed=seed)
    model.compile(optimizers.SGD(learning_rate), "mse")
    return model


def small_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5, 2)), rng.standard_normal((n, 1))


# ---- the batch hooks ----------------------------------------------------------------------------


def test_batch_hooks_exist_and_do_nothing_by_default():
    callback = callbacks.Callback()
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0, {"loss": 1.0})


def test_batch_hooks_reach_kerass_older_names_on_batch_begin_and_end():
    seen = []

    class Recorder(callbacks.Callback):
        def on_batch_begin(self, batch, logs=None):
            seen.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            seen.append(("end", batch, logs["loss"]))

    recorder = Recorder()
    recorder.on_train_batch_begin(4)
    recorder.on_train_batch_end(4, {"loss": 0.5})
    assert seen == [("begin", 4), ("end", 4, 0.5)]


# ---- ReduceLROnPlateau: the same learning rates as Keras's, on the same monitored values --------

# a loss that improves, stalls, improves by less than min_delta, climbs and improves again
MONITORED = [1.0, 0.8, 0.8, 0.81, 0.79995, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.69, 0.69, 0.69,
             0.69, 0.69, 0.69, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]

SETTINGS = [
    dict(patience=2),
    dict(patience=0),
    dict(patience=1, cooldown=2),
    dict(patience=2, factor=0.5, min_lr=0.02),
    dict(patience=1, min_delta=0.0),
    dict(patience=1, min_delta=0.05, cooldown=1, factor=0.3),
]


def learning_rates(callback, values, monitor="val_loss", start=0.1):
    """The learning rate after each epoch, and each epoch's logged 'learning_rate'."""
    model = stand_in_model(start)
    attach(callback, model)
    after, logged = [], []
    with contextlib.redirect_stdout(io.StringIO()):
        for epoch, value in enumerate(values):
            logs = {"loss": 1.0, monitor: value}
            callback.on_epoch_end(epoch, logs)
            after.append(model.optimizer.learning_rate)
            logged.append(logs["learning_rate"])
    return after, logged


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}"
                                                                     for k, v in s.items()))
def test_reduce_lr_on_plateau_follows_keras_epoch_by_epoch(settings):
    keras = pytest.importorskip("keras")
    ours = learning_rates(callbacks.ReduceLROnPlateau(**settings), MONITORED)
    theirs = learning_rates(keras.callbacks.ReduceLROnPlateau(**settings), MONITORED)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_reduce_lr_on_plateau_in_max_mode_follows_keras():
    keras = pytest.importorskip("keras")
    accuracy = [1 - v for v in MONITORED]
    for mode in ("max", "auto"):  # auto: a name with 'acc' is maximised
        ours = learning_rates(callbacks.ReduceLROnPlateau("val_accuracy", patience=1, mode=mode),
                              accuracy, "val_accuracy")
        theirs = learning_rates(keras.callbacks.ReduceLROnPlateau("val_accuracy", patience=1,
                                                                  mode="max"),
                                accuracy, "val_accuracy")
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_reduce_lr_on_plateau_by_hand():
    # a flat loss. patience=2: epochs 1 and 2 do not improve on epoch 0, so epoch 2 halves the
    # rate. cooldown=2 (Keras's counting): epoch 3 does not count, epoch 4 counts again, so the
    # next reduction comes at epoch 5, and stops at min_lr (0.025 -> 0.03).
    callback = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2,
                                           min_lr=0.03)
    after, logged = learning_rates(callback, [1, 1, 1, 1, 1, 1, 1, 1, 1], monitor="loss")
    assert after == [0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03]
    assert logged == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03]


def test_reduce_lr_on_plateau_prints_what_keras_prints_with_verbose(capsys):
    keras = pytest.importorskip("keras")
    printed = []
    for make in (callbacks.ReduceLROnPlateau, keras.callbacks.ReduceLROnPlateau):
        callback = attach(make(monitor="loss", patience=1, verbose=1), stand_in_model(0.1))
        for epoch in range(3):
            callback.on_epoch_end(epoch, {"loss": 1.0})
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    assert "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.01" in printed[0]


def test_reduce_lr_on_plateau_changes_the_learning_rate_a_fit_trains_with():
    model = small_model(learning_rate=0.1)
    x, y = small_data()
    # min_delta larger than any change: every epoch after the first counts as a plateau
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9)
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[reduce])
    assert model.optimizer.learning_rate == pytest.approx(0.1 * 0.5 ** 3)


def test_reduce_lr_on_plateau_refuses_a_learning_rate_schedule_when_fit_starts():
    model = cgru.Sequential([layers.GRU(4), layers.Dense(1)], seed=0)
    schedule = optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    model.compile(optimizers.SGD(schedule), "mse")
    with pytest.raises(TypeError, match="schedule.*ExponentialDecay"):
        model.fit(*small_data(), epochs=1, verbose=0,
                  callbacks=[callbacks.ReduceLROnPlateau(monitor="loss")])


def test_reduce_lr_on_plateau_names_a_quantity_fit_does_not_report():
    callback = attach(callbacks.ReduceLROnPlateau(), stand_in_model())
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation"):
        callback.on_epoch_end(0, {"loss": 1.0})


def test_reduce_lr_on_plateau_has_kerass_defaults():
    callback = callbacks.ReduceLROnPlateau()
    assert (callback.monitor, callback.factor, callback.patience, callback.verbose,
            callback.min_delta, callback.cooldown, callback.min_lr) == \
        ("val_loss", 0.1, 10, 0, 1e-4, 0, 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(factor=1.0), r"factor must be a number in \(0, 1\), got 1.0"),
    (dict(factor=0), "factor"),
    (dict(patience=-1), "patience must be an integer >= 0"),
    (dict(patience=2.5), "patience"),
    (dict(cooldown=True), "cooldown"),
    (dict(min_lr=-0.1), "min_lr must be a number >= 0"),
    (dict(min_delta=float("nan")), "min_delta"),
    (dict(mode="up"), "mode must be 'auto', 'min' or 'max'"),
])
def test_reduce_lr_on_plateau_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError, match="ReduceLROnPlateau: " + message):
        callbacks.ReduceLROnPlateau(**kwargs)


def test_settings_accept_numpy_numbers():
    callback = callbacks.ReduceLROnPlateau(patience=np.int64(3), factor=np.float32(0.5))
    assert callback.patience == 3 and type(callback.patience) is int
    assert callbacks.EarlyStopping(patience=np.int32(2)).patience == 2


# ---- CSVLogger: the same file as Keras's --------------------------------------------------------

EPOCH_LOGS = [{"loss": 0.5, "mae": 0.25, "val_loss": 0.75, "val_mae": 0.375},
              {"loss": 0.25, "mae": 0.125, "val_loss": 0.5, "val_mae": 0.25},
              {"loss": 0.125, "mae": 1 / 3, "val_loss": float("nan"), "val_mae": 0.125}]


def write_csv(make, path, epochs_logs, append=False, separator=","):
    logger = attach(make(path, separator=separator, append=append), stand_in_model())
    for epoch, logs in enumerate(epochs_logs):
        logger.on_epoch_end(epoch, dict(logs))
    logger.on_train_end({})
    return path.read_bytes()


@pytest.mark.parametrize("separator", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_csv_logger_writes_kerass_file(tmp_path, separator):
    keras = pytest.importorskip("keras")
    ours = write_csv(callbacks.CSVLogger, tmp_path / "ours.csv", EPOCH_LOGS, separator=separator)
    theirs = write_csv(keras.callbacks.CSVLogger, tmp_path / "keras.csv", EPOCH_LOGS,
                       separator=separator)
    assert ours == theirs


def test_csv_logger_without_validation_adds_val_columns_as_keras(tmp_path):
    keras = pytest.importorskip("keras")
    logs = [{"loss": 0.5, "mae": 0.25}, {"loss": 0.25, "mae": 0.125}]
    ours = write_csv(callbacks.CSVLogger, tmp_path / "ours.csv", logs)
    theirs = write_csv(keras.callbacks.CSVLogger, tmp_path / "keras.csv", logs)
    assert ours == theirs
    assert ours.splitlines()[:2] == [b"epoch,loss,mae,val_loss,val_mae", b"0,0.5,0.25,NA,NA"]


def test_csv_logger_appends_as_keras(tmp_path):
    keras = pytest.importorskip("keras")
    files = []
    for make, name in ((callbacks.CSVLogger, "ours.csv"), (keras.callbacks.CSVLogger, "k.csv")):
        path = tmp_path / name
        write_csv(make, path, EPOCH_LOGS[:2])
        files.append(write_csv(make, path, EPOCH_LOGS[2:], append=True))
    assert files[0] == files[1]
    assert files[0].count(b"epoch") == 1  # one header: the file already had it


def test_csv_logger_records_a_fit_one_row_per_epoch(tmp_path):
    model = small_model()
    x, y = small_data()
    path = tmp_path / "log.csv"
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, validation_split=0.25,
                        callbacks=[callbacks.CSVLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert [float(row["loss"]) for row in rows] == history.history["loss"]
    assert [float(row["val_loss"]) for row in rows] == history.history["val_loss"]


def test_csv_logger_shows_the_learning_rate_that_reduce_lr_on_plateau_logs(tmp_path):
    model = small_model(learning_rate=0.1)
    path = tmp_path / "log.csv"
    model.fit(*small_data(), epochs=3, batch_size=8, verbose=0, callbacks=[
        callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9),
        callbacks.CSVLogger(path)])
    with open(path, newline="") as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert rates == [0.1, 0.1, 0.05]  # each epoch's rate, before the reduction at its end


def test_csv_logger_flushes_each_row_as_it_is_written(tmp_path):
    path = tmp_path / "log.csv"
    logger = attach(callbacks.CSVLogger(path), stand_in_model())
    logger.on_epoch_end(0, {"loss": 0.5})
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,0.5,NA"]
    logger.on_train_end({})


def test_csv_logger_writes_nothing_on_the_other_ranks_of_a_distributed_fit(tmp_path):
    path = tmp_path / "log.csv"
    logger = attach(callbacks.CSVLogger(path), stand_in_model(root=False))
    logger.on_epoch_end(0, {"loss": 0.5})
    logger.on_train_end({})
    assert not path.exists()


def test_csv_logger_refuses_a_separator_that_is_not_one_character():
    with pytest.raises(ValueError, match="separator must be a single character"):
        callbacks.CSVLogger("log.csv", separator=", ")


# ---- TerminateOnNaN -----------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf"), np.float32("nan")],
                         ids=["nan", "inf", "-inf", "float32-nan"])
def test_terminate_on_nan_stops_at_a_bad_batch_loss_and_prints_what_keras_prints(loss, capsys):
    keras = pytest.importorskip("keras")
    for make in (callbacks.TerminateOnNaN, keras.callbacks.TerminateOnNaN):
        model = stand_in_model()
        callback = attach(make(), model)
        callback.on_train_batch_end(0, {"loss": 1.0})
        assert not model.stop_training
        callback.on_train_batch_end(3, {"loss": loss})
        assert model.stop_training
    ours, theirs = capsys.readouterr().out.splitlines()
    assert ours == theirs == "Batch 3: Invalid loss, terminating training"


def test_terminate_on_nan_raises_at_once_with_raise_error():
    model = stand_in_model()
    callback = attach(callbacks.TerminateOnNaN(raise_error=True), model)
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 2"):
        callback.on_train_batch_end(2, {"loss": float("nan")})


def test_terminate_on_nan_checks_the_epoch_loss_too_and_reports_once(capsys):
    model = stand_in_model()
    callback = attach(callbacks.TerminateOnNaN(), model)
    callback.on_epoch_end(0, {"loss": 0.5})
    assert not model.stop_training
    callback.on_epoch_end(1, {"loss": float("nan")})
    assert model.stop_training
    assert capsys.readouterr().out == "Epoch 2: Invalid loss, terminating training\n"
    # stopped at a batch: the epoch's (NaN) loss does not report it again
    callback = attach(callbacks.TerminateOnNaN(), stand_in_model())
    callback.on_train_batch_end(0, {"loss": float("nan")})
    callback.on_epoch_end(0, {"loss": float("nan")})
    assert capsys.readouterr().out.count("Invalid loss") == 1


def test_terminate_on_nan_ends_a_diverging_fit(capsys):
    # a rate this large sends the weights, then the loss, to infinity within a few epochs
    model = small_model(learning_rate=50.0)
    x, y = small_data()
    with np.errstate(all="ignore"):
        history = model.fit(x, y * 1e3, epochs=20, batch_size=4, verbose=0,
                            callbacks=[callbacks.TerminateOnNaN()])
    losses = history.history["loss"]
    assert len(losses) < 20 and not math.isfinite(losses[-1])
    assert all(math.isfinite(v) for v in losses[:-1])
    assert "Invalid loss, terminating training" in capsys.readouterr().out
