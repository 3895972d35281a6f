"""`Sequential`: a Keras-style model of cgru layers, with compile / fit / predict / evaluate,
and its file format (`save`, `load_model`).

File format: a NumPy `.npz` archive read with `allow_pickle=False`, so loading runs no code. The
member `__cgru__` holds a JSON description (format version, layers and their configs, input
shape, dtype, compile settings, optimizer step count, the model's random-generator state, user
metadata); `weights/<layer>/<name>` hold parameters in the engine's layout and
`optimizer/<slot>/<layer>/<name>` the optimizer's slots. Saving writes a temporary file in the
same directory, flushes it to disk and renames it over the target, so a crash mid-save leaves
the previous file intact.
"""
import json
import math
import os
import sys
import tempfile
import zipfile

import numpy as np

from . import callbacks as _callbacks
from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers

FORMAT = "cgru.Sequential"
FORMAT_VERSION = 1
_DESCRIPTION = "__cgru__"


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
        rng = self.rng if (training if dropout is None else dropout) else None
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
        """Model outputs for x in inference mode, computed batch by batch."""
        x = self._inputs(x)
        self._build_for(x)
        batch_size = _positive_int(batch_size, "batch_size")
        outs = [self._forward(x[i:i + batch_size], False) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0)

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

    def evaluate(self, x, y, batch_size=32, verbose=0):
        """{'loss': ..., metric: ...} over x, y in inference mode."""
        self._require_compiled("evaluate")
        x = self._inputs(x)
        self._build_for(x)
        y = self._targets(y, len(x))
        return self._evaluate(x, y, _positive_int(batch_size, "batch_size"))

    def _evaluate(self, x, y, batch_size):
        metrics = [_metrics.get(m, self.loss) for m in self.metric_names]
        total = 0.0
        for i in range(0, len(x), batch_size):
            out = self._forward(x[i:i + batch_size], False)
            total += self.loss(y[i:i + batch_size], out) * len(out)
            for m in metrics:
                m.update(y[i:i + batch_size], out)
        return {"loss": total / len(x), **{m.name: m.result() for m in metrics}}

    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for `epochs` passes over (x, y); returns a `cgru.callbacks.History`.

        validation_split takes the last fraction of the samples (before shuffling, as Keras);
        validation_data=(x_val, y_val) gives them explicitly. verbose: 0 silent, 1 a progress bar
        per epoch (tqdm), 2 one line per epoch.
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
                if shuffle:
                    xb, yb = x[idx], y[idx]
                else:
                    xb, yb = x[idx[0]:idx[-1] + 1], y[idx[0]:idx[-1] + 1]
                loss, out = self._train_step(xb, yb)
                loss_sum += loss * len(idx)
                for m in metrics:
                    m.update(yb, out)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / min(n, (b + 1) * batch_size):.4g}",
                                    refresh=False)
            logs = {"loss": loss_sum / n, **{m.name: m.result() for m in metrics}}
            if x_val is not None:
                val = self._evaluate(x_val, y_val, batch_size)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=True)
                bar.close()
            elif verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " +
                      " - ".join(f"{k}: {v:.4g}" for k, v in logs.items()), file=sys.stderr)
            for cb in all_callbacks:
                cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for cb in all_callbacks:
            cb.on_train_end(logs)
        return history

    # ---- saving ---------------------------------------------------------------------------------

    def save(self, path, include_optimizer=True, metadata=None):
        """Write architecture, weights and (by default) optimizer state to one .npz file,
        atomically. `metadata`: a JSON-serialisable dict kept with the model."""
        self._require_built("save")
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
            text = json.dumps(description)
        except TypeError as e:
            raise TypeError(f"save: metadata must be JSON-serialisable ({e})") from None
        arrays[_DESCRIPTION] = np.array(text)
        _atomic_savez(os.fspath(path), arrays)


def load_model(path, compile=True):
    """Read a model written by `Sequential.save`. Runs no code from the file; a truncated,
    corrupted or foreign file raises ValueError saying what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if _DESCRIPTION not in names:
                raise ValueError(f"{path} is not a cgru model file (no '{_DESCRIPTION}' entry)")
            arrays = {k: archive[k] for k in names}
    except ValueError as e:
        if "cgru model file" in str(e):
            raise
        raise ValueError(f"{path} is not a readable cgru model file: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} is truncated or corrupted ({type(e).__name__}: {e})") from None
    try:
        description = json.loads(str(arrays.pop(_DESCRIPTION)))
    except (json.JSONDecodeError, UnicodeError) as e:
        raise ValueError(f"{path}: the model description is corrupted ({e})") from None
    if description.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cgru model file (format {description.get('format')!r})")
    if description.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {description.get('format_version')}; this "
                         f"cgru reads version {FORMAT_VERSION}")
    try:
        model = Sequential(name=description["name"], dtype=description["dtype"])
        for spec in description["layers"]:
            if spec["class"] not in _layers.CLASSES:
                raise ValueError(f"unknown layer class {spec['class']!r}")
            model.add(_layers.CLASSES[spec["class"]].from_config(spec["config"]))
        model.build((None,) + tuple(description["input_shape"]))
        model.rng.bit_generator.state = description["rng_state"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the model description is invalid ({type(e).__name__}: {e})") \
            from None

    expected = {f"weights/{l.name}/{k}": v for l in model.layers for k, v in l.params.items()}
    saved = {k: v for k, v in arrays.items() if k.startswith("weights/")}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing}, "
                         f"unexpected {unexpected})")
    for key, target in expected.items():
        if saved[key].shape != target.shape or saved[key].dtype != target.dtype:
            raise ValueError(f"{path}: weight '{key}' is {saved[key].dtype}{saved[key].shape}, "
                             f"the architecture needs {target.dtype}{target.shape}")
        target[...] = saved[key]

    settings = description.get("compile")
    if compile and settings:
        model.compile(_optimizers.deserialize(settings["optimizer"]),
                      _losses.deserialize(settings["loss"]), settings["metrics"])
        if settings["optimizer_iterations"] is not None:
            slots = {k[len("optimizer/"):]: v for k, v in arrays.items()
                     if k.startswith("optimizer/")}
            model.optimizer.set_state(slots, settings["optimizer_iterations"],
                                      model.trainable_weights)
    model.metadata = description.get("metadata", {})
    return model


def _atomic_savez(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cgru-save-", suffix=".tmp", dir=directory)
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


def _shape_fits(declared, actual):
    return len(declared) == len(actual) and all(d is None or d == a
                                                for d, a in zip(declared, actual))


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _progress_bar(total, epoch, epochs):
    from tqdm import tqdm  # imported here: importing cgru does not import tqdm
    return tqdm(total=total, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", leave=True,
                dynamic_ncols=True)
