"""Callbacks for `fit`, with Keras 3's names, arguments and semantics: History, EarlyStopping,
ModelCheckpoint, ReduceLROnPlateau, CSVLogger, TerminateOnNaN.

`fit` calls `on_train_begin(logs)`, then per epoch `on_epoch_begin(epoch)`, per batch
`on_train_batch_begin(batch)` and `on_train_batch_end(batch, {'loss': the batch's loss})`, then
`on_epoch_end(epoch, logs)` with logs such as {'loss': ..., 'val_loss': ..., 'mae': ...}, and
finally `on_train_end(logs)`. A callback stops training by setting `model.stop_training = True`.
As in Keras, the batch hooks call `on_batch_begin` / `on_batch_end` unless overridden, so a
callback may implement either name.
"""
from __future__ import annotations

import collections.abc
import csv
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checks, schedules

if TYPE_CHECKING:
    from .models import Model


class Callback:
    def __init__(self) -> None:
        # Any, not Model | None: a hook reads self.model without checking it against None
        self.model: Any = None

    def set_model(self, model: Model) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Keras's older name for on_train_batch_begin."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Keras's older name for on_train_batch_end."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


def _is_root(model):
    """False on the ranks other than 0 of a distributed fit: they neither write nor print."""
    writes_files = getattr(model, "_writes_files", None)
    return writes_files() if callable(writes_files) else True


class History(Callback):
    """What `fit` returns: `history` maps each log name to its per-epoch values; `epoch` lists
    the epochs run."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class _Monitor(Callback):
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        owner = type(self).__name__
        if not isinstance(monitor, str):
            raise ValueError(f"{owner}: monitor must be the name of a logged quantity such as "
                             f"'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(_checks.number(min_delta, "min_delta", owner)))
        self.best = math.inf if mode == "min" else -math.inf

    def _current(self, logs):
        if self.monitor not in (logs or {}):
            raise ValueError(f"{type(self).__name__} monitors '{self.monitor}', which fit did not "
                             f"report (it reported {sorted(logs or {})}); pass validation data "
                             f"for 'val_*' quantities or monitor one of those")
        return logs[self.monitor]

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stops training when `monitor` has not improved by more than `min_delta` for `patience`
    epochs in a row (Keras 3's rule: the check starts after the first epoch). With restore_best_weights=True the model ends training with the weights of its best
    epoch (as Keras 3 does, whether or not training stopped early)."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = _checks.non_negative_int(patience, "patience", "EarlyStopping")
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = None
        self.best_epoch = None
        self.best_weights = None
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = self._current(logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience and epoch > 0:  # Keras 3's rule
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Saves the model (`model.save`, atomic) after each epoch, or with save_best_only=True only
    when `monitor` improved; `filepath` may hold `{epoch}` and log names, e.g.
    'model-{epoch:03d}.npz'. In a distributed fit, rank 0 alone writes."""

    def __init__(self, filepath: str | os.PathLike[str], monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto",
                 include_optimizer: bool = True) -> None:
        super().__init__(monitor, mode)
        self.filepath = str(filepath)
        self.save_best_only = bool(save_best_only)
        self.include_optimizer = bool(include_optimizer)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            value = self._current(logs)
            if not self._improved(value):
                return
            self.best = value
        if not self.model._writes_files():  # a distributed fit saves on rank 0 only
            return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        self.model.save(path, include_optimizer=self.include_optimizer)


class ReduceLROnPlateau(_Monitor):
    """Multiplies the optimizer's learning rate by `factor` when `monitor` has not improved (by
    more than `min_delta`) for `patience` epochs, never below `min_lr`; after a reduction it waits
    `cooldown` epochs before counting again. As in Keras 3, each epoch's logs gain
    'learning_rate' (the rate the epoch trained with), visible to the callbacks after this one.

    The optimizer's learning_rate must be a number: a schedule sets the rate itself, and fit
    refuses the combination at its start (Keras fails at the first reduction). Unlike Keras,
    which warns and carries on, a `monitor` that fit does not report is an error, as for
    EarlyStopping (most often: monitoring 'val_loss' without validation data).
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        owner = "ReduceLROnPlateau"
        # Keras refuses factor >= 1 only; 0 or less would set a rate of 0 or below, which no
        # optimizer accepts (a model saved with it would not load)
        self.factor = float(_checks.number(factor, "factor", owner, low=0, high=1,
                                           low_open=True, high_open=True))
        self.patience = _checks.non_negative_int(patience, "patience", owner)
        self.verbose = int(verbose) if isinstance(verbose, bool) else \
            _checks.non_negative_int(verbose, "verbose", owner)
        self.cooldown = _checks.non_negative_int(cooldown, "cooldown", owner)
        self.min_lr = float(_checks.non_negative(min_lr, "min_lr", owner))
        self._reset()

    def _reset(self):
        self.best = None  # as Keras: the first value seen is the first best, whatever it is
        self.cooldown_counter = 0
        self.wait = 0

    def _improved(self, value):
        return self.best is None or super()._improved(value)

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._reset()
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise RuntimeError("ReduceLROnPlateau needs a compiled model (its optimizer's "
                               "learning rate is what it reduces)")
        if isinstance(optimizer.learning_rate, schedules.LearningRateSchedule) \
                or callable(optimizer.learning_rate):
            raise TypeError(f"ReduceLROnPlateau cannot change the learning rate of an optimizer "
                            f"built with a schedule ({optimizer.learning_rate!r}): the schedule "
                            f"sets the rate at every update. Build the optimizer with a number, "
                            f"e.g. {type(optimizer).__name__}(learning_rate=0.001), or drop "
                            f"ReduceLROnPlateau")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = self._current(logs)
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(optimizer, epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _reduce(self, optimizer, epoch):
        """Keras's rule: reduce while the rate is above min_lr; False once it is there."""
        old_lr = float(optimizer.learning_rate)
        if not old_lr > self.min_lr:
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        optimizer.learning_rate = new_lr
        if self.verbose > 0 and _is_root(self.model):
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
        return True


class CSVLogger(Callback):
    """Writes one row per epoch to a CSV file, as Keras 3: the columns are 'epoch' (counted from
    0) and the sorted names of the first epoch's logs (plus their 'val_' twins when the first
    epoch had no validation entries; missing values are written 'NA'); each row is flushed as it
    is written. append=True continues an existing file (its header is written only if the file
    was empty). In a distributed fit, rank 0 alone writes.
    """

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",",
                 append: bool = False) -> None:
        super().__init__()
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be a single character, got "
                             f"{separator!r}")
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = bool(append)
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None
        self.keys = None
        if not _is_root(self.model):
            return
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename, newline="") as f:
                    self.append_header = not f.readline()
            mode = "a"
        else:
            mode = "w"
        self.csv_file = open(self.filename, mode, newline="")

    @staticmethod
    def _value(value):
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return value
        if isinstance(value, collections.abc.Iterable):
            return f'"[{", ".join(map(str, value))}]"'
        return value

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.csv_file is None:  # another rank's callback, or on_train_begin was not called
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
        if self.writer is None:
            dialect = type("CSVLoggerDialect", (csv.excel,), {"delimiter": self.sep})
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys,
                                         dialect=dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, self._value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose loss is NaN or infinite (Keras 3): prints
    'Batch <i>: Invalid loss, terminating training' and sets `model.stop_training`, so that fit
    ends after this batch and every callback's on_train_end still runs; with raise_error=True it
    raises RuntimeError at once instead. The epoch's loss is checked too, at the end of the
    epoch, which catches a bad loss even where fit does not call the batch hooks.
    """

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.raise_error = _checks.flag(raise_error, "raise_error", "TerminateOnNaN")
        self.stopped = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.stopped = False

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self._terminate(f"Batch {batch}", f"batch {batch}", loss)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if not self.stopped and loss is not None and not np.isfinite(loss):
            self._terminate(f"Epoch {epoch + 1}", f"epoch {epoch + 1}", loss)

    def _terminate(self, where, at, loss):
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at {at}. Loss value: {loss}. "
                               f"Terminating training immediately.")
        if _is_root(self.model):
            print(f"{where}: Invalid loss, terminating training")
        self.stopped = True
        self.model.stop_training = True
