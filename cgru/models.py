"""`Sequential`: a Keras-style model of cgru layers, with compile / fit / predict / evaluate,
and its file format (`save`, `load_model`).

File format: a NumPy `.npz` archive of uncompressed members (as `np.savez` writes them). The
member `__cgru__` holds a JSON description (format version, layers and their configs, input
shape, dtype, compile settings, optimizer step count, the model's random-generator state, user
metadata); `weights/<layer>/<name>` hold parameters in the engine's layout and
`optimizer/<slot>/<layer>/<name>` the optimizer's slots. Loading never unpickles and reads no
member it has not checked (see the loading section). Saving writes a temporary file in the same
directory, flushes it to disk, renames it over the target and flushes the directory, so a crash
mid-save leaves the previous file intact; the next save removes what a killed writer left.
"""
import ast
import collections
import json
import math
import os
import re
import socket
import stat
import struct
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np

from . import callbacks as _callbacks
from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers

FORMAT = "cgru.Sequential"
FORMAT_VERSION = 1
_DESCRIPTION = "__cgru__"
# predict() runs blocks of samples whose layer outputs take at most this many bytes
PREDICT_BLOCK_BYTES = 16 * 2**20


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("g_r_u", "gru")


class Sequential:
    """A stack of layers, each feeding the next. Input (batch, time, features).

    Args:
        layers: a list of layers (`cgru.layers.*`), optionally starting with `layers.Input`.
        seed: seeds the weights, the shuffling and the dropout masks; the same seed, data and
            calls give the same model, bit for bit.
        dtype: 'float32' (default) or 'float64'.
    """

    def __init__(self, layers=None, name="sequential", seed=None, dtype="float32"):
        if dtype not in ("float32", "float64"):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.name = name
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.layers = []
        self.input_shape = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self.metric_names = []
        self.stop_training = False
        self._replicas = None      # during a distributed fit: the ranks (cgru.distributed)
        self._dropout_rng = None   # during a distributed fit: this rank's dropout generator
        for layer in layers or []:
            self.add(layer)

    # ---- structure ------------------------------------------------------------------------------

    def add(self, layer):
        if isinstance(layer, _layers.Input):
            if self.layers or self.input_shape is not None:
                raise ValueError("Input must come first in a Sequential")
            self.input_shape = layer.shape
            return
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add takes a cgru.layers layer, got "
                            f"{type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        taken = {l.name for l in self.layers}
        if layer.name is None:
            base = _snake(type(layer).__name__)
            name, i = base, 0
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            layer.name = name
        elif layer.name in taken:
            raise ValueError(f"two layers are named '{layer.name}'; layer names must be unique")
        self.layers.append(layer)

    def build(self, input_shape):
        """Create every layer's weights for inputs of `input_shape` = (batch, time, features)
        (batch and time may be None)."""
        shape = tuple(input_shape)[1:]
        if not self.layers:
            raise ValueError("the model has no layers")
        if not shape or shape[-1] is None:
            raise ValueError(f"input_shape must be (batch, time, features) with features given, "
                             f"got {tuple(input_shape)}")
        for layer in self.layers:
            if not layer.built:
                layer.build(shape, self.rng, self.dtype)
            elif layer.input_shape[-1] != shape[-1] or layer.dtype != self.dtype:
                raise ValueError(f"layer '{layer.name}' was built for {layer.input_shape[-1]} "
                                 f"{layer.dtype} features; here it would get {shape[-1]} "
                                 f"{self.dtype}")
            shape = layer.compute_output_shape(shape)
        self.input_shape = tuple(input_shape)[1:]
        self.built = True

    def _build_for(self, x):
        if not self.built:
            declared = self.input_shape
            if declared is not None and not _shape_fits(declared, x.shape[1:]):
                raise ValueError(f"x has shape {x.shape}, the model's Input declares (batch, "
                                 f"{', '.join(map(str, declared))})")
            self.build((None,) + (declared if declared is not None else x.shape[1:]))
        elif not _shape_fits(self.input_shape, x.shape[1:]):
            raise ValueError(f"x must have shape (batch, "
                             f"{', '.join(map(str, self.input_shape))}), got {x.shape}")

    @property
    def trainable_weights(self):
        """{'layer/param': array}: what the optimizer updates."""
        return {f"{l.name}/{k}": v for l in self.layers for k, v in l.trainable.items()}

    @property
    def _gradients(self):
        return {f"{l.name}/{k}": l.grads[k] for l in self.layers for k in l.trainable}

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self):
        """Every layer's weights, in Keras's layout and order."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Set weights from a list like get_weights() returns; checks all before changing any."""
        self._require_built("set_weights")
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"set_weights: the model takes {expected} arrays, got {len(weights)}")
        before = self.get_weights()
        try:
            i = 0
            for layer in self.layers:
                n = len(layer.get_weights())
                layer.set_weights(weights[i:i + n])
                i += n
        except Exception:
            i = 0
            for layer in self.layers:
                n = len(layer.get_weights())
                layer.set_weights(before[i:i + n])
                i += n
            raise

    def summary(self, print_fn=print):
        """Print (and return) the layers, their output shapes and parameter counts."""
        self._require_built("summary")
        rows = [("Layer (type)", "Output Shape", "Param #")]
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            kind = type(layer).__name__
            if isinstance(layer, _layers.Bidirectional):
                kind = "Bidirectional(GRU)"
            rows.append((f"{layer.name} ({kind})", str((None,) + tuple(shape)),
                         f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "-" * sum(widths)
        text = [f'Model: "{self.name}"', line]
        for i, r in enumerate(rows):
            text.append("".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                text.append("=" * sum(widths))
        text += [line, f"Total params: {self.count_params():,}", line]
        out = "\n".join(text)
        if print_fn is not None:
            print_fn(out)
        return out

    def _require_built(self, what):
        if not self.built and self.input_shape is not None and self.layers:
            self.build((None,) + tuple(self.input_shape))  # declared by layers.Input
        if not self.built:
            raise RuntimeError(f"{what} needs a built model: call model.build((None, time, "
                               f"features)), or fit/predict once, or start with layers.Input")

    # ---- running --------------------------------------------------------------------------------

    def _forward(self, x, training, dropout=None):
        """Through every layer; training keeps what backward needs and, unless dropout=False,
        applies dropout (layers get no generator when dropout is off)."""
        rng = None
        if training if dropout is None else dropout:
            rng = self.rng if self._dropout_rng is None else self._dropout_rng
        for layer in self.layers:
            x = layer.forward(x, training, rng)
        return x

    def _inputs(self, x, name="x"):
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if arr.ndim != 3:
            raise ValueError(f"{name} must be (batch, time, features), got shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one sequence of one step, got shape "
                             f"{arr.shape}")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def __call__(self, x, training=False):
        x = self._inputs(x)
        self._build_for(x)
        return self._forward(x, training)

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for x in inference mode.

        The model runs in blocks of samples chosen for speed and bounded memory
        (PREDICT_BLOCK_BYTES of layer outputs per block; each GRU bounds its own working memory):
        `batch_size` is accepted as in Keras but changes neither the blocks nor the result."""
        _positive_int(batch_size, "batch_size")
        x = self._inputs(x)
        self._build_for(x)
        block = self._predict_block(x)
        outs = [self._forward(x[i:i + block], False) for i in range(0, len(x), block)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _predict_block(self, x):
        """Samples per predict block: every layer's output for the block within
        PREDICT_BLOCK_BYTES."""
        shape, per_sample = x.shape[1:], x[0].nbytes
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            per_sample += int(np.prod(shape)) * self.dtype.itemsize
        return max(1, PREDICT_BLOCK_BYTES // per_sample)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer (name or instance), the loss (name or instance) and metrics."""
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='mse'")
        self.optimizer = _optimizers.get(optimizer)
        self.loss = _losses.get(loss)
        metrics = list(metrics or [])
        for m in metrics:
            _metrics.get(m, self.loss)  # fail now, not at the first epoch
        self.metric_names = [m if isinstance(m, str) else m.name for m in metrics]

    def _require_compiled(self, what):
        if self.loss is None:
            raise RuntimeError(f"{what} needs a compiled model: call model.compile(optimizer, "
                               f"loss) first")

    def _targets(self, y, n, name="y"):
        arr = np.asarray(y)
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(f"{name} must have one target per sequence of x ({n}), got shape "
                             f"{arr.shape}")
        if isinstance(self.loss, _losses.SparseCategoricalCrossentropy):
            return arr
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def train_on_batch(self, x, y):
        """One optimizer update on one batch; returns the batch's loss (before the update)."""
        self._require_compiled("train_on_batch")
        x = self._inputs(x)
        self._build_for(x)
        y = self._targets(y, len(x))
        return self._train_step(x, y)[0]

    def gradients(self, x, y, training=True):
        """(loss, {'layer/param': gradient}) for one batch, without updating anything.
        training=True applies dropout as fit does."""
        self._require_compiled("gradients")
        x = self._inputs(x)
        self._build_for(x)
        y = self._targets(y, len(x))
        loss, _ = self._backpropagate(x, y, dropout=training)
        return loss, {k: g.copy() for k, g in self._gradients.items()}

    def _backpropagate(self, x, y, dropout=True):
        """Forward keeping what backward needs, the loss, and backward into the layers' grads."""
        out = self._forward(x, True, dropout)
        loss = self.loss(y, out)
        grad = self.loss.gradient(y, out)
        for layer in self.layers:
            layer.zero_grad()
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return loss, out

    def _train_step(self, x, y):
        loss, out = self._backpropagate(x, y)
        self.optimizer.apply(self.trainable_weights, self._gradients)
        return loss, out

    def _train_share(self, x, y, batch, shuffle, replicas, metrics):
        """One update from the global batch `batch` (indices into x, y): this rank's share
        forward and backward, the gradients summed over the ranks, the same update everywhere.
        Returns the global batch's loss."""
        mine = replicas.share(batch)
        loss = 0.0
        if len(mine):
            xb, yb = _take(x, y, mine, shuffle)
            loss, out = self._backpropagate(xb, yb)
            for m in metrics:
                m.update(yb, out)
        else:  # a short last batch left this rank nothing: it adds zeros
            for layer in self.layers:
                layer.zero_grad()
        loss = replicas.sum_gradients(self._gradients, len(mine) / len(batch), loss)
        self.optimizer.apply(self.trainable_weights, self._gradients)
        return loss

    def _writes_files(self):
        """False on the ranks other than 0 during a distributed fit: checkpoints are rank 0's."""
        return self._replicas is None or self._replicas.is_root

    def evaluate(self, x, y, batch_size=32, verbose=0):
        """{'loss': ..., metric: ...} over x, y in inference mode."""
        self._require_compiled("evaluate")
        x = self._inputs(x)
        self._build_for(x)
        y = self._targets(y, len(x))
        return self._evaluate(x, y, _positive_int(batch_size, "batch_size"))

    def _evaluate(self, x, y, batch_size, replicas=None):
        """{'loss': ..., metric: ...} over x, y; with `replicas`, each rank evaluates its share
        and the totals are summed over the ranks."""
        metrics = [_metrics.get(m, self.loss) for m in self.metric_names]
        if replicas is not None:
            start, stop = replicas.share_range(len(x))
            x, y = x[start:stop], y[start:stop]
        total, count = 0.0, len(x)
        for i in range(0, len(x), batch_size):
            out = self._forward(x[i:i + batch_size], False)
            total += self.loss(y[i:i + batch_size], out) * len(out)
            for m in metrics:
                m.update(y[i:i + batch_size], out)
        if replicas is not None:
            total, count = replicas.sum_metrics(metrics, (total, count))
        return {"loss": total / count, **{m.name: m.result() for m in metrics}}

    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            distributed=False):
        """Train for `epochs` passes over (x, y); returns a `cgru.callbacks.History`.

        validation_split takes the last fraction of the samples (before shuffling, as Keras);
        validation_data=(x_val, y_val) gives them explicitly. verbose: 0 silent, 1 a progress bar
        per epoch (tqdm), 2 one line per epoch.

        distributed=True: synchronous data-parallel training over MPI. Run the script under
        `mpiexec -n N`, every rank passing the same data; `batch_size` is the global batch,
        shared between the ranks, and every rank ends with the weights one process would have
        reached on the same batches (see `cgru.distributed`). Progress is shown on rank 0 only.
        Outside mpiexec it trains in this process alone.
        """
        self._require_compiled("fit")
        x = self._inputs(x)
        y = self._targets(y, len(x))
        batch_size = _positive_int(batch_size, "batch_size")
        epochs = _positive_int(epochs, "epochs")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_split or validation_data, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            x_val = self._inputs(validation_data[0], "validation_data x")
            y_val = self._targets(validation_data[1], len(x_val), "validation_data y")
        elif validation_split:
            if not isinstance(validation_split, (int, float)) or not 0 < validation_split < 1:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves "
                                 f"no training or no validation samples")
            x, x_val = x[:-n_val], x[-n_val:]
            y, y_val = y[:-n_val], y[-n_val:]
        else:
            x_val = y_val = None
        for name, arr in (("x", x), ("y", y), ("validation x", x_val), ("validation y", y_val)):
            if arr is not None and np.issubdtype(arr.dtype, np.floating) \
                    and not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0]
                raise ValueError(f"{name} holds NaN or infinite values (first at index "
                                 f"{tuple(int(i) for i in bad)}); fill or drop them before fit")
        self._build_for(x)
        if x_val is not None:
            self._build_for(x_val)
        replicas = None
        if distributed:
            from . import distributed as _distributed
            replicas = _distributed.Replicas()
            if replicas.size == 1:
                replicas = None
        if replicas is None:
            return self._fit(x, y, batch_size, epochs, verbose, callbacks, x_val, y_val,
                             shuffle, initial_epoch, None)
        replicas.check_same_call(
            {"x": x, "y": y, "validation x": x_val, "validation y": y_val},
            {"batch_size": batch_size, "epochs": epochs, "shuffle": bool(shuffle),
             "initial_epoch": initial_epoch})
        from .distributed import DriftError
        try:
            replicas.broadcast_state(self)
            self._replicas = replicas
            # seeded from the shared generator's state without drawing from it: the
            # permutations stay those of a fit in one process
            shared_state = self.rng.bit_generator.state["state"]["state"]
            self._dropout_rng = np.random.default_rng([shared_state, replicas.rank])
            return self._fit(x, y, batch_size, epochs, verbose if replicas.is_root else 0,
                             callbacks, x_val, y_val, shuffle, initial_epoch, replicas)
        except DriftError:
            raise  # raised on every rank at once: nobody waits
        except BaseException as error:
            replicas.abort(error)
            raise
        finally:
            self._replicas = self._dropout_rng = None

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, x_val, y_val, shuffle,
             initial_epoch, replicas):
        """fit's loop over epochs and batches, on checked arrays; with `replicas`, this rank
        trains on its share of every batch and the ranks sum gradients and totals."""
        history = _callbacks.History()
        all_callbacks = [history] + list(callbacks or [])
        for cb in all_callbacks:
            cb.set_model(self)
        self.stop_training = False
        for cb in all_callbacks:
            cb.on_train_begin({})
        n = len(x)
        n_batches = math.ceil(n / batch_size)
        logs = {}
        for epoch in range(initial_epoch, epochs):
            for cb in all_callbacks:
                cb.on_epoch_begin(epoch, {})
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            metrics = [_metrics.get(m, self.loss) for m in self.metric_names]
            bar = _progress_bar(n_batches, epoch, epochs) if verbose == 1 else None
            loss_sum = 0.0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                if replicas is None:
                    xb, yb = _take(x, y, idx, shuffle)
                    loss, out = self._train_step(xb, yb)
                    for m in metrics:
                        m.update(yb, out)
                else:
                    loss = self._train_share(x, y, idx, shuffle, replicas, metrics)
                loss_sum += loss * len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / min(n, (b + 1) * batch_size):.4g}",
                                    refresh=False)
            if replicas is not None:
                replicas.sum_metrics(metrics)
                replicas.check_in_sync(self, epoch)
            logs = {"loss": loss_sum / n, **{m.name: m.result() for m in metrics}}
            if x_val is not None:
                val = self._evaluate(x_val, y_val, batch_size, replicas)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=True)
                bar.close()
            elif verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " +
                      " - ".join(f"{k}: {v:.4g}" for k, v in logs.items()), file=sys.stderr)
            for cb in all_callbacks:
                cb.on_epoch_end(epoch, logs)
            if replicas is not None:
                self.stop_training = replicas.any(self.stop_training)
            if self.stop_training:
                break
        for cb in all_callbacks:
            cb.on_train_end(logs)
        return history

    # ---- saving ---------------------------------------------------------------------------------

    def save(self, path, include_optimizer=True, metadata=None):
        """Write architecture, weights and (by default) optimizer state to one .npz file,
        atomically. `metadata`: a dict of JSON values kept with the model."""
        self._require_built("save")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"save: metadata must be a dict, got {type(metadata).__name__}")
        description = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
            "dtype": self.dtype.name, "input_shape": list(self.input_shape),
            "layers": [{"class": type(l).__name__, "config": l.get_config()}
                       for l in self.layers],
            "rng_state": self.rng.bit_generator.state,
            "metadata": metadata if metadata is not None else {},
            "compile": None,
        }
        arrays = {f"weights/{l.name}/{k}": v for l in self.layers for k, v in l.params.items()}
        if self.loss is not None:
            description["compile"] = {
                "optimizer": _optimizers.serialize(self.optimizer),
                "loss": _losses.serialize(self.loss), "metrics": self.metric_names,
                "optimizer_iterations": None}
            if include_optimizer:
                slots, iterations = self.optimizer.get_state()
                description["compile"]["optimizer_iterations"] = iterations
                arrays.update({f"optimizer/{k}": v for k, v in slots.items()})
        try:
            text = json.dumps(description, allow_nan=False)
        except TypeError as e:
            raise TypeError(f"save: metadata must be JSON-serialisable ({e})") from None
        except ValueError:
            raise ValueError("save: the metadata or the compile settings hold NaN or infinity, "
                             "which JSON cannot write") from None
        if len(text) > _MAX_DESCRIPTION_CHARS:
            raise ValueError(f"save: the model description takes {len(text):,} characters of "
                             f"JSON, more than the {_MAX_DESCRIPTION_CHARS:,} load_model reads; "
                             f"keep large data out of metadata")
        arrays[_DESCRIPTION] = np.array(text)
        _atomic_savez(os.fspath(path), arrays)


# ---- loading ------------------------------------------------------------------------------------
#
# load_model trusts nothing in the file. In order, before anything is inflated or allocated:
# the zip directory (unique names, only uncompressed .npy members, sizes that fit in the file),
# the description (size, then strict JSON, then every field's type and range), the layers built
# from it without weights, and the weights' shapes (from the .npy headers) against the shapes
# the layers need, whose bytes must fit in the file. Only then are the weights allocated and read.

_MAX_DESCRIPTION_CHARS = 1 << 22     # JSON text; stored as UTF-32, 4 bytes a character
_MAX_NPY_HEADER = 4096               # NumPy writes about 128 bytes
_MAX_DIMENSION = (1 << 31) - 1       # a size in input_shape (the engine counts in C ints)
_ARRAY_DESCRS = ("<f4", ">f4", "<f8", ">f8")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               struct.error, NotImplementedError, RuntimeError, zlib.error, OverflowError)
_DESCRIPTION_KEYS = {"format", "format_version", "name", "dtype", "input_shape", "layers",
                     "rng_state", "metadata", "compile"}
_COMPILE_KEYS = {"optimizer", "loss", "metrics", "optimizer_iterations"}


class _Refused(Exception):
    """Why a file cannot be loaded, said after its name: 'is truncated or corrupted (...)'.
    load_model turns it into a ValueError; not one itself, so that no handler of the ValueErrors
    of zipfile or NumPy below catches it on the way."""


def _invalid(cause):
    return _Refused(f"has an invalid model description: {cause}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def load_model(path, compile=True):
    """Read a model written by `Sequential.save`. Runs no code from the file, and reads nothing
    it has not checked first: a damaged, foreign or crafted file raises ValueError naming the
    file and the cause (a missing file, FileNotFoundError). compile=False skips the optimizer,
    loss and metrics."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with _Archive(path) as archive:
            return _read_model(archive, compile)
    except _Refused as e:
        raise ValueError(f"{path} {e}") from None


class _Archive:
    """A model file's members (name without '.npy' -> ZipInfo), checked from the zip directory
    alone: nothing is inflated here."""

    def __init__(self, path):
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise _Refused("is a directory, not a cgru model file")
            if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
                raise _Refused("is not a regular file, so not a cgru model file")
            self.size = os.path.getsize(path)
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise _Refused(f"cannot be read ({e.strerror or e})") from None
        if self.size == 0:
            raise _Refused("is empty, not a cgru model file")
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
            kind = "a single .npy array" if magic == b"\x93NUM" else "not a .npz archive"
            raise _Refused(f"is not a cgru model file ({kind})")
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except _ZIP_ERRORS as e:
            raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None
        try:
            self.members = self._checked(infos)
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _checked(self, infos):
        names = [info.filename for info in infos]
        if _DESCRIPTION + ".npy" not in names:
            shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise _Refused(f"is not a cgru model file (no '{_DESCRIPTION}' entry; it holds "
                           f"{shown or 'nothing'})")
        repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        if repeated:
            raise _Refused(f"is corrupted: entries {repeated[:3]} appear more than once")
        total = 0
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise _Refused(f"is not a cgru model file (entry {name!r} is not a NumPy array)")
            if info.flag_bits & 0x1:
                raise _Refused(f"is not a cgru model file (entry {name!r} is encrypted)")
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Refused(f"is not a cgru model file as Sequential.save writes it (entry "
                               f"{name!r} is compressed; cgru stores its arrays uncompressed)")
            if info.file_size != info.compress_size or \
                    info.header_offset + info.compress_size > self.size:
                raise _Refused(f"is truncated or corrupted (entry {name!r} declares "
                               f"{info.file_size:,} bytes, stores {info.compress_size:,}, in a "
                               f"file of {self.size:,})")
            total += info.compress_size
        if total > self.size:
            raise _Refused(f"is corrupted: its entries declare {total:,} bytes in a file of "
                           f"{self.size:,}")
        return {name[:-len(".npy")]: info for name, info in zip(names, infos)}

    def _open(self, key):
        try:
            return self.zip.open(self.members[key])
        except _ZIP_ERRORS as e:
            raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None

    def header(self, key):
        """(dtype descr, shape, fortran_order, data offset) from member `key`'s .npy header."""
        with self._open(key) as member:
            try:
                return _npy_header(member, self.members[key].file_size, key)
            except _ZIP_ERRORS as e:
                raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None

    def array(self, key, descrs, shape=None):
        """Member `key` as an array, after checking that its header declares one of the dtype
        strings `descrs` and `shape` (when given), and that its size is exactly header + data."""
        descr, stored_shape, fortran, offset = self.header(key)
        if descr not in descrs:
            raise _Refused(f"is not a cgru model file (entry '{key}' holds dtype {descr!r:.40}, "
                           f"not {' or '.join(sorted(descrs))})")
        if shape is not None and stored_shape != tuple(shape):
            raise _Refused(f"does not match its architecture: entry '{key}' has shape "
                           f"{stored_shape}, the model needs {tuple(shape)}")
        dtype = np.dtype(descr)  # one of the few strings allowed above
        nbytes = math.prod(stored_shape) * dtype.itemsize
        if offset + nbytes != self.members[key].file_size:
            raise _Refused(f"is truncated or corrupted (entry '{key}' holds "
                           f"{self.members[key].file_size:,} bytes; its header declares "
                           f"{offset + nbytes:,})")
        with self._open(key) as member:
            try:
                member.read(offset)
                data = member.read(nbytes)
                if len(data) != nbytes or member.read(1):  # reading to the end checks the CRC
                    raise _Refused(f"is truncated or corrupted (entry '{key}' ends early)")
            except _ZIP_ERRORS as e:
                raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None
        array = np.frombuffer(data, dtype=dtype)
        if fortran:
            return array.reshape(stored_shape[::-1]).T
        return array.reshape(stored_shape)


def _npy_header(member, size, key):
    """Parse the .npy header at the start of a zip member of `size` bytes, strictly: version 1,
    2 or 3, at most _MAX_NPY_HEADER bytes, a literal dict of exactly descr (a string),
    fortran_order (a bool) and shape (a tuple of integers >= 0)."""
    def bad(cause):
        return _Refused(f"is truncated or corrupted (entry '{key}': {cause})")

    start = member.read(8)
    if len(start) < 8 or start[:6] != b"\x93NUMPY" or start[6] not in (1, 2, 3) or start[7]:
        raise bad("not a NumPy .npy array")
    width = 2 if start[6] == 1 else 4
    length = int.from_bytes(member.read(width), "little")
    offset = 8 + width + length
    if length > _MAX_NPY_HEADER or offset > size:
        raise bad(f"a header of {length:,} bytes")
    raw = member.read(length)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if start[6] == 3 else "latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeError):
        raise bad("an unreadable header") from None
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}
            and isinstance(header["descr"], str) and isinstance(header["fortran_order"], bool)
            and isinstance(header["shape"], tuple)
            and all(_is_int(n) and n >= 0 for n in header["shape"])):
        raise bad(f"an invalid header {raw[:80]!r}")
    return header["descr"], header["shape"], header["fortran_order"], offset


def _cause(error):
    return f"{type(error).__name__}: {error}"


def _read_model(archive, compile):
    description = _description(archive)
    model = _unbuilt_model(description)
    input_shape = tuple(description["input_shape"])
    expected = _declared_weights(model, input_shape)
    descr = {d for d in _ARRAY_DESCRS if np.dtype(d).type == model.dtype.type}  # either order
    _check_weights(archive, model, expected, descr)
    compiled = _compile_settings(description["compile"])
    try:
        model.build((None,) + input_shape)  # the first allocation, now bounded by the file size
    except (ValueError, TypeError) as e:
        raise _invalid(str(e)) from None
    for layer in model.layers:
        for name, target in layer.params.items():
            key = f"weights/{layer.name}/{name}"
            target[...] = archive.array(key, descr, expected[key])
    try:
        model.rng.bit_generator.state = description["rng_state"]
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise _invalid(f"rng_state: {_cause(e)}") from None
    state = _optimizer_state(archive, model, compiled, descr)
    if compile and compiled is not None:
        optimizer, loss, metrics, iterations = compiled
        model.compile(optimizer, loss, metrics)
        if iterations is not None:
            optimizer.set_state(state, iterations, model.trainable_weights)
    model.metadata = description["metadata"]
    return model


def _check_weights(archive, model, expected, descr):
    """The stored weights against the declared ones ({key: shape}), from the zip directory and
    the .npy headers only: their bytes must fit in the file, the names and every header match."""
    count = sum(math.prod(shape) for shape in expected.values())
    if count * model.dtype.itemsize > archive.size:
        raise _Refused(f"does not match its architecture: the description declares {count:,} "
                       f"{model.dtype.name} parameters ({count * model.dtype.itemsize:,} bytes), "
                       f"more than the file's {archive.size:,} bytes")
    stored = {k for k in archive.members if k.startswith("weights/")}
    missing, unexpected = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or unexpected:
        raise _Refused(f"does not match its architecture: weights missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    others = sorted(k for k in archive.members
                    if k != _DESCRIPTION and not k.startswith(("weights/", "optimizer/")))
    if others:
        raise _Refused(f"is not a cgru model file (unexpected entries {others[:5]})")
    for key, shape in expected.items():
        stored_descr, stored_shape, _, _ = archive.header(key)
        if stored_descr not in descr or stored_shape != shape:
            have = (np.dtype(stored_descr).name if stored_descr in _ARRAY_DESCRS
                    else f"dtype {stored_descr!r:.40} ")
            raise _Refused(f"does not match its architecture: weight '{key}' is "
                           f"{have}{stored_shape}, the architecture needs "
                           f"{model.dtype.name}{shape}")


def _optimizer_state(archive, model, compiled, descr):
    """{'slot/layer/param': array} of the optimizer entries, each checked against the slots of
    the described optimizer and its parameter's shape (also when compile=False: a damaged file
    is refused either way)."""
    keys = sorted(k for k in archive.members if k.startswith("optimizer/"))
    if keys and (compiled is None or compiled[3] is None):
        raise _Refused(f"is corrupted: it holds optimizer state ({keys[0]}, ...) but its "
                       f"description has none")
    state = {}
    if compiled is None:
        return state
    optimizer, params = compiled[0], model.trainable_weights
    for key in keys:
        slot, _, name = key[len("optimizer/"):].partition("/")
        if slot not in optimizer.slot_names or name not in params:
            raise _Refused(f"is corrupted: optimizer entry '{key}' does not belong to a "
                           f"{type(optimizer).__name__} of this model")
        state[key[len("optimizer/"):]] = archive.array(key, descr, params[name].shape)
    return state


def _description(archive):
    """The JSON description, size-checked, parsed strictly, its top level checked."""
    descr, shape, _, _ = archive.header(_DESCRIPTION)
    if not re.fullmatch(r"[<>]U[0-9]{1,9}", descr) or shape != ():
        raise _Refused(f"is not a cgru model file (its '{_DESCRIPTION}' entry is "
                       f"{descr!r}{shape}, not text)")
    if int(descr[2:]) > _MAX_DESCRIPTION_CHARS:
        raise _Refused(f"is not a cgru model file (its description declares {int(descr[2:]):,} "
                       f"characters; cgru writes at most {_MAX_DESCRIPTION_CHARS:,})")
    raw = archive.array(_DESCRIPTION, {descr}).tobytes()
    try:  # NumPy pads the text with NULs; the codec refuses what is not a character
        text = raw.decode("utf-32-le" if descr[0] == "<" else "utf-32-be").rstrip("\x00")
        description = json.loads(text, object_pairs_hook=_unique_keys,
                                  parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeError) as e:
        raise _invalid(f"not JSON ({e})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else description
        raise _Refused(f"is not a cgru model file (format {found!r:.80})")
    version = description.get("format_version")
    if version != FORMAT_VERSION or not _is_int(version):
        raise _Refused(f"has format version {version!r:.40}; this cgru reads version "
                       f"{FORMAT_VERSION}")
    missing = sorted(_DESCRIPTION_KEYS - set(description))
    unknown = sorted(set(description) - _DESCRIPTION_KEYS)
    if missing or unknown:
        raise _invalid(f"missing {missing}, unknown {unknown[:5]}")
    d = description
    if not isinstance(d["name"], str):
        raise _invalid(f"name must be a string, got {d['name']!r:.80}")
    if d["dtype"] not in ("float32", "float64"):
        raise _invalid(f"dtype must be 'float32' or 'float64', got {d['dtype']!r:.80}")
    shape = d["input_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8
            and all(n is None or (_is_int(n) and 1 <= n <= _MAX_DIMENSION) for n in shape)
            and shape[-1] is not None):
        raise _invalid(f"input_shape must be a list of sizes in [1, {_MAX_DIMENSION}] (null for "
                       f"any), the last one given, got {shape!r:.80}")
    if not (isinstance(d["layers"], list) and d["layers"]):
        raise _invalid(f"layers must be a non-empty list, got {d['layers']!r:.80}")
    if not isinstance(d["metadata"], dict):
        raise _invalid(f"metadata must be an object, got {d['metadata']!r:.80}")
    state = d["rng_state"]
    if not (isinstance(state, dict) and set(state) == {"bit_generator", "state", "has_uint32",
                                                        "uinteger"}
            and state["bit_generator"] == "PCG64" and isinstance(state["state"], dict)
            and set(state["state"]) == {"state", "inc"}
            and all(_is_int(v) and 0 <= v < 1 << 128 for v in state["state"].values())
            and state["has_uint32"] in (0, 1) and _is_int(state["has_uint32"])
            and _is_int(state["uinteger"]) and 0 <= state["uinteger"] < 1 << 32):
        raise _invalid(f"rng_state is not a PCG64 state: {state!r:.100}")
    return description


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted(k for k, count in collections.Counter(keys).items() if count > 1)
        raise ValueError(f"the key {repeated[0]!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _unbuilt_model(description):
    """The Sequential the description declares, its layers created but not built (no weights)."""
    model = Sequential(name=description["name"], dtype=description["dtype"])
    for i, spec in enumerate(description["layers"]):
        if not (isinstance(spec, dict) and set(spec) == {"class", "config"}):
            raise _invalid(f"layer {i} must be {{'class': ..., 'config': ...}}, got {spec!r:.80}")
        if not isinstance(spec["class"], str) or spec["class"] not in _layers.CLASSES:
            raise _invalid(f"layer {i}: unknown class {spec['class']!r:.40} (cgru has "
                           f"{', '.join(_layers.CLASSES)})")
        try:
            model.add(_layers.CLASSES[spec["class"]].from_config(spec["config"]))
        except (ValueError, TypeError) as e:
            raise _invalid(f"layer {i}: {e}") from None
    return model


def _declared_weights(model, input_shape):
    """{'weights/layer/name': shape} the model's layers would create for input_shape."""
    expected, shape = {}, input_shape
    try:
        for layer in model.layers:
            for name, param in layer.param_shapes(shape).items():
                expected[f"weights/{layer.name}/{name}"] = param
            shape = layer.compute_output_shape(shape)
    except (ValueError, TypeError) as e:
        raise _invalid(str(e)) from None
    return expected


def _compile_settings(settings):
    """(optimizer, loss, metrics, optimizer_iterations) from the description's compile entry,
    or None; each rebuilt object must describe itself exactly as the file does."""
    if settings is None:
        return None
    if not isinstance(settings, dict) or set(settings) != _COMPILE_KEYS:
        raise _invalid(f"compile must be null or an object with {sorted(_COMPILE_KEYS)}, got "
                       f"{settings!r:.100}")
    optimizer = _rebuilt(settings["optimizer"], _optimizers, "optimizer")
    loss = _rebuilt(settings["loss"], _losses, "loss")
    metrics = settings["metrics"]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _invalid(f"compile metrics must be a list of names, got {metrics!r:.80}")
    try:
        for m in metrics:
            _metrics.get(m, loss)
    except ValueError as e:
        raise _invalid(f"compile metrics: {e}") from None
    iterations = settings["optimizer_iterations"]
    if iterations is not None and not (_is_int(iterations) and 0 <= iterations < 1 << 62):
        raise _invalid(f"optimizer_iterations must be null or an integer >= 0, got "
                       f"{iterations!r:.40}")
    return optimizer, loss, metrics, iterations


def _rebuilt(spec, module, what):
    """An optimizer or loss from {'class': ..., 'config': ...}, refused unless it serialises
    back to exactly `spec` (so no value was converted or left out)."""
    if not (isinstance(spec, dict) and set(spec) == {"class", "config"}
            and isinstance(spec["class"], str) and isinstance(spec["config"], dict)):
        raise _invalid(f"{what} must be {{'class': ..., 'config': {{...}}}}, got {spec!r:.100}")
    try:
        obj = module.deserialize(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _invalid(f"{what} {spec!r:.100}: {_cause(e)}") from None
    if module.serialize(obj) != spec:
        raise _invalid(f"{what} {spec!r:.100} is not what a cgru {what} writes")
    return obj


def _atomic_savez(path, arrays):
    """np.savez into a temporary file beside `path`, flushed to disk, renamed over `path`, and
    the directory flushed too. The temporary's name carries this host and process id, so that a
    later save can tell the leftovers of a killed writer (see _remove_stale_temporaries)."""
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{_host()}-{os.getpid()}-", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


_TMP_PREFIX = ".cgru-save-"
_TMP_NAME = re.compile(r"\.cgru-save-(?:(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-)?"
                       r"[A-Za-z0-9_]+\.tmp")
STALE_AFTER_S = 24 * 3600    # untouched this long: dead, whoever wrote it
QUIET_S = 600                # a dead writer's file is left alone until untouched this long


def _host():
    """This machine's name as it goes into temporary file names ([A-Za-z0-9._] only, so that
    the pid after it stays readable)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _remove_stale_temporaries(directory):
    """Remove temporaries of earlier saves into `directory` that are provably dead: written on
    this host by a process that no longer exists (and untouched for QUIET_S, in case that
    writer lives in another pid namespace), or untouched for STALE_AFTER_S (a writer on another
    host, or a name without a pid). Only regular files, never through symlinks; a failure to
    remove one is ignored."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_TMP_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _TMP_NAME.fullmatch(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        try:
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                continue
            quiet = now - info.st_mtime
            writer_gone = match["host"] == _host() and not _process_exists(int(match["pid"]))
            if quiet > STALE_AFTER_S or (writer_gone and quiet > QUIET_S):
                os.unlink(full)
        except OSError:
            continue


def _process_exists(pid):
    """True unless `pid` certainly names no running process (on POSIX: kill(pid, 0) says so;
    elsewhere nothing is certain, so True)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _fsync_directory(directory):
    """Flush the directory entry of the rename to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _shape_fits(declared, actual):
    return len(declared) == len(actual) and all(d is None or d == a
                                                for d, a in zip(declared, actual))


def _take(x, y, idx, shuffled):
    """The samples idx of x and y: gathered when shuffled, else the slice idx spans."""
    if shuffled:
        return x[idx], y[idx]
    return x[idx[0]:idx[-1] + 1], y[idx[0]:idx[-1] + 1]


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _progress_bar(total, epoch, epochs):
    from tqdm import tqdm  # imported here: importing cgru does not import tqdm
    return tqdm(total=total, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", leave=True,
                dynamic_ncols=True)
