"""Callbacks for `Sequential.fit`, with Keras's names: History, EarlyStopping, ModelCheckpoint.

`fit` calls `on_train_begin(logs)`, then per epoch `on_epoch_begin(epoch)` and
`on_epoch_end(epoch, logs)` with logs such as {'loss': ..., 'val_loss': ..., 'mae': ...}, and
finally `on_train_end(logs)`. A callback stops training by setting `model.stop_training = True`.
"""
import math


class Callback:
    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class History(Callback):
    """What `fit` returns: `history` maps each log name to its per-epoch values; `epoch` lists
    the epochs run."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class _Monitor(Callback):
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))
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
    epochs. With restore_best_weights=True the model ends training with the weights of its best
    epoch (as Keras 3 does, whether or not training stopped early)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        self.patience = patience
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = None
        self.best_epoch = None
        self.best_weights = None
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = self._current(logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Saves the model (`model.save`, atomic) after each epoch, or with save_best_only=True only
    when `monitor` improved; `filepath` may hold `{epoch}` and log names, e.g.
    'model-{epoch:03d}.npz'. In a distributed fit, rank 0 alone writes."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto",
                 include_optimizer=True):
        super().__init__(monitor, mode)
        self.filepath = str(filepath)
        self.save_best_only = bool(save_best_only)
        self.include_optimizer = bool(include_optimizer)

    def on_epoch_end(self, epoch, logs=None):
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
