"""Keras-style layers for `cgru.Sequential`: GRU, Bidirectional, Dense, Dropout and Input.

A layer is built on first use from the shape of its input (without the batch axis), draws its
weights from the model's seeded generator, and runs `forward(x, training, rng)` (training keeps
what backward needs; dropout draws its masks from `rng`, and is off when rng is None) and
`backward(d_out)`. Backward returns the gradient for the layer's input and adds parameter
gradients into `layer.grads` (the model zeroes them before each batch).

`GRU` runs on the cgru engine (`cgru.GRU`) and keeps its weights in the engine's layout
(PyTorch's names and gate order r, z, n); `get_weights()` / `set_weights()` speak Keras's layout
(kernel (I, 3H), recurrent_kernel (H, 3H), bias (2, 3H) with reset_after else (3H,); gate order
z, r, n), so Keras weights load as they are.
"""
import numpy as np

from . import initializers
from .gru import GRU as _EngineGRU


def _check_rate(rate, name, cls):
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) \
            or not 0.0 <= rate < 1.0:
        raise ValueError(f"{cls}: {name} must be a number in [0, 1), got {rate!r}")
    return float(rate)


def _check_units(units, cls):
    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
        raise ValueError(f"{cls}: units must be an integer >= 1, got {units!r}")
    return int(units)


# The most units a layer read from a file may declare (a GRU of 65536 units holds 51 GB of
# recurrent weights in float32: anything larger is a damaged or crafted file).
MAX_UNITS = 1 << 16


def _config(config, cls):
    """from_config's first check: a dict with string keys (a copy), units within MAX_UNITS."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{cls} config must be a dict of settings, got {config!r:.80}")
    units = config.get("units", 1)
    if isinstance(units, int) and not isinstance(units, bool) and units > MAX_UNITS:
        raise ValueError(f"{cls} config: units must be at most {MAX_UNITS}, got {units}")
    return dict(config)


def _initializer(spec, key, cls):
    """An initializer from a config entry {'class': name, 'config': {...}}."""
    if not (isinstance(spec, dict) and set(spec) == {"class", "config"}
            and isinstance(spec["class"], str) and isinstance(spec["config"], dict)):
        raise ValueError(f"{cls} config: {key} must be {{'class': name, 'config': {{...}}}}, "
                         f"got {spec!r:.80}")
    try:
        return initializers.deserialize(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cls} config: {key} {spec!r:.80} is not a cgru initializer "
                         f"({type(e).__name__}: {e})") from None


def _construct(cls, config, *args):
    """cls(*args, **config), an unknown setting (TypeError) said as a ValueError."""
    try:
        return cls(*args, **config)
    except TypeError as e:
        raise ValueError(f"{cls.__name__} config: {e}") from None


def _same_config(layer, config):
    """from_config's last check: the layer describes itself with exactly `config`, so no setting
    was missing, and none was silently converted (return_sequences 'no', a NaN rate)."""
    again = layer.get_config()
    name = type(layer).__name__
    missing = sorted(set(again) - set(config))
    if missing:
        raise ValueError(f"{name} config: missing {', '.join(missing)}")
    differing = [k for k in again if again[k] != config[k]]
    if differing:
        raise ValueError(f"{name} config: " + ", ".join(f"{k}={config[k]!r:.80}"
                                                         for k in differing)
                         + " is not a valid setting")
    return layer


def swap_gate_blocks(a, axis=0):
    """Reorder the three gate blocks along `axis` between Keras/ONNX (z, r, n) and PyTorch/cgru
    (r, z, n). The swap is its own inverse."""
    a = np.asarray(a)
    H = a.shape[axis] // 3
    first, second, third = np.split(a, [H, 2 * H], axis=axis)
    return np.concatenate([second, first, third], axis=axis)


class Layer:
    """Base of the layers: a name, parameters (`params`) and their gradients (`grads`)."""

    def __init__(self, name=None):
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string without "
                             f"'/', got {name!r}")
        self.name = name
        self.built = False
        self.input_shape = None
        self.params = {}
        self.grads = {}

    @property
    def trainable(self):
        """{name: array} the optimizer updates (a subset of params)."""
        return self.params

    def build(self, input_shape, rng, dtype):
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.built = True

    def param_shapes(self, input_shape):
        """{name: shape} of the `params` that build(input_shape) creates, without creating them
        (load_model compares a file's arrays with these before allocating anything)."""
        return {}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def count_params(self):
        return int(sum(p.size for p in self.trainable.values()))

    def get_weights(self):
        return [self.params[k].copy() for k in self.params]

    def set_weights(self, weights):
        names = list(self.params)
        if len(weights) != len(names):
            raise ValueError(f"layer '{self.name}' takes {len(names)} weight arrays "
                             f"({', '.join(names)}), got {len(weights)}")
        arrays = []
        for name, w in zip(names, weights):
            w = np.asarray(w)
            if w.shape != self.params[name].shape:
                raise ValueError(f"layer '{self.name}': weight '{name}' must have shape "
                                 f"{self.params[name].shape}, got {w.shape}")
            arrays.append(w)
        for name, w in zip(names, arrays):
            self.params[name][...] = w

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class Input:
    """Declares the input shape (without the batch axis), e.g. `Input(shape=(None, 1))` for
    sequences of any length with one feature. Only as the first entry of a Sequential."""

    def __init__(self, shape):
        shape = tuple(shape)
        if not shape or not all(s is None or (isinstance(s, (int, np.integer)) and s > 0)
                                for s in shape):
            raise ValueError(f"Input: shape must be a tuple of positive sizes (None for any), "
                             f"got {shape!r}")
        if shape[-1] is None:
            raise ValueError("Input: the last (feature) dimension must be given")
        self.shape = shape


class GRU(Layer):
    """A GRU layer; input (batch, time, features), output (batch, units) or, with
    return_sequences=True, (batch, time, units).

    Args mirror `keras.layers.GRU`: units, return_sequences, reset_after (True: PyTorch/cuDNN
    form), dropout (on the inputs, one mask per sequence shared by all time steps, as Keras),
    kernel_initializer ('glorot_uniform'), recurrent_initializer ('orthogonal'),
    bias_initializer ('zeros'), use_bias. The engine's activations are sigmoid and tanh.
    """

    def __init__(self, units, return_sequences=False, reset_after=True, dropout=0.0,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", use_bias=True, activation="tanh",
                 recurrent_activation="sigmoid", recurrent_dropout=0.0, name=None):
        super().__init__(name)
        self.units = _check_units(units, "GRU")
        self.return_sequences = bool(return_sequences)
        self.reset_after = bool(reset_after)
        self.dropout = _check_rate(dropout, "dropout", "GRU")
        if recurrent_dropout:
            raise ValueError("GRU: recurrent_dropout is not supported by the cgru engine; use "
                             "dropout (on the inputs) or a Dropout layer")
        if activation != "tanh" or recurrent_activation != "sigmoid":
            raise ValueError(f"GRU: the cgru engine computes activation='tanh' and "
                             f"recurrent_activation='sigmoid', got {activation!r} and "
                             f"{recurrent_activation!r}")
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer,
                                                      "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.use_bias = bool(use_bias)
        self.directions = 1        # 2 when wrapped by Bidirectional
        self.merge_mode = "concat"
        self._engine = None
        self._cache = None

    # ---- building -------------------------------------------------------------------------------

    def _check_input(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"layer '{self.name}' (GRU) takes input (batch, time, features); "
                             f"it got input of shape (batch, {', '.join(map(str, input_shape))})")

    def param_shapes(self, input_shape):
        self._check_input(input_shape)
        features, H = input_shape[-1], self.units
        shapes = {}
        for d in range(self.directions):
            w_ih, w_hh, b_ih, b_hh = _EngineGRU._names(0, d)
            shapes[w_ih], shapes[w_hh] = (3 * H, features), (3 * H, H)
            if self.use_bias:
                shapes[b_ih] = shapes[b_hh] = (3 * H,)
        return shapes

    def build(self, input_shape, rng, dtype):
        self._check_input(input_shape)
        super().build(input_shape, rng, dtype)
        features, H = input_shape[-1], self.units
        self._engine = _EngineGRU(features, H, bias=self.use_bias, batch_first=True,
                                  bidirectional=self.directions == 2,
                                  reset_after=self.reset_after, dtype=self.dtype.name)
        self.params = self._engine.params
        self.grads = self._engine.grads
        weights = []
        for _ in range(self.directions):
            weights.append(self.kernel_initializer((features, 3 * H), rng, self.dtype))
            weights.append(self.recurrent_initializer((H, 3 * H), rng, self.dtype))
            if self.use_bias:
                shape = (2, 3 * H) if self.reset_after else (3 * H,)
                weights.append(self.bias_initializer(shape, rng, self.dtype))
        self.set_weights(weights)

    @property
    def trainable(self):
        # reset_after=False has one bias (Keras's); the engine's bias_hh stays at zero
        if self.reset_after:
            return self.params
        return {k: v for k, v in self.params.items() if not k.startswith("bias_hh")}

    def compute_output_shape(self, input_shape):
        width = self.units * (2 if self.directions == 2 and self.merge_mode == "concat" else 1)
        return (input_shape[0], width) if self.return_sequences else (width,)

    # ---- Keras's weight layout ------------------------------------------------------------------

    def _engine_names(self, direction):
        return self._engine._names(0, direction)

    def get_weights(self):
        """Keras's list: per direction kernel (I, 3H), recurrent_kernel (H, 3H), bias."""
        weights = []
        for d in range(self.directions):
            w_ih, w_hh, b_ih, b_hh = self._engine_names(d)
            weights.append(swap_gate_blocks(self.params[w_ih]).T.copy())
            weights.append(swap_gate_blocks(self.params[w_hh]).T.copy())
            if self.use_bias:
                if self.reset_after:
                    weights.append(np.stack([swap_gate_blocks(self.params[b_ih]),
                                             swap_gate_blocks(self.params[b_hh])]))
                else:
                    weights.append(swap_gate_blocks(self.params[b_ih] + self.params[b_hh]))
        return weights

    def set_weights(self, weights):
        """Load Keras's list (see get_weights), checking every shape before changing anything."""
        I, H = self.input_shape[-1], self.units
        shapes = [(I, 3 * H), (H, 3 * H)]
        if self.use_bias:
            shapes.append((2, 3 * H) if self.reset_after else (3 * H,))
        shapes = shapes * self.directions
        if len(weights) != len(shapes):
            raise ValueError(f"layer '{self.name}' (GRU) takes {len(shapes)} weight arrays "
                             f"(kernel, recurrent_kernel{', bias' if self.use_bias else ''} per "
                             f"direction), got {len(weights)}")
        arrays = [np.asarray(w) for w in weights]
        for i, (w, shape) in enumerate(zip(arrays, shapes)):
            if w.shape != shape:
                raise ValueError(f"layer '{self.name}' (GRU): weight {i} must have shape {shape}, "
                                 f"got {w.shape}")
        per_direction = len(shapes) // self.directions
        for d in range(self.directions):
            kernel, recurrent, *bias = arrays[d * per_direction:(d + 1) * per_direction]
            w_ih, w_hh, b_ih, b_hh = self._engine_names(d)
            self.params[w_ih][...] = swap_gate_blocks(kernel.T)
            self.params[w_hh][...] = swap_gate_blocks(recurrent.T)
            if self.use_bias:
                if self.reset_after:
                    self.params[b_ih][...] = swap_gate_blocks(bias[0][0])
                    self.params[b_hh][...] = swap_gate_blocks(bias[0][1])
                else:
                    self.params[b_ih][...] = swap_gate_blocks(bias[0])
                    self.params[b_hh][...] = 0

    # ---- forward and backward -------------------------------------------------------------------

    def forward(self, x, training, rng):
        mask = None
        if training and rng is not None and self.dropout > 0:
            keep = 1.0 - self.dropout
            mask = (rng.random((x.shape[0], 1, x.shape[2])) < keep).astype(self.dtype)
            mask /= self.dtype.type(keep)
            x = x * mask
        self._engine.train(training)
        # without return_sequences, inference needs only the final states: the engine then
        # never holds every step's output (see cgru.gru.INFERENCE_BLOCK_BYTES)
        y, h_n = self._engine._run(x, None, None, with_outputs=training or self.return_sequences)
        H = self.units
        if self.return_sequences:
            first, second = (y[..., :H], y[..., H:]) if self.directions == 2 else (y, None)
        else:
            first, second = (h_n[0], h_n[1]) if self.directions == 2 else (h_n[0], None)
        self._cache = (mask, first, second, y.shape) if training else None  # y: training only
        if second is None:
            return first
        mode = self.merge_mode
        if mode == "concat":
            return y if self.return_sequences else np.concatenate([first, second], axis=-1)
        if mode == "sum":
            return first + second
        if mode == "ave":
            return (first + second) * self.dtype.type(0.5)
        return first * second  # "mul"

    def backward(self, d_out):
        if self._cache is None:
            raise RuntimeError(f"layer '{self.name}': backward needs a training forward first")
        mask, first, second, y_shape = self._cache
        self._cache = None
        H = self.units
        if self.directions == 1:
            d_first, d_second = d_out, None
        elif self.merge_mode == "concat":
            d_first, d_second = d_out[..., :H], d_out[..., H:]
        elif self.merge_mode == "sum":
            d_first = d_second = d_out
        elif self.merge_mode == "ave":
            d_first = d_second = d_out * self.dtype.type(0.5)
        else:  # "mul": d(a b)/da = b
            d_first, d_second = d_out * second, d_out * first
        parts = [d_first] if d_second is None else [d_first, d_second]
        if self.return_sequences:
            dy = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
            dx, _ = self._engine.backward(np.ascontiguousarray(dy, dtype=self.dtype))
        else:
            dy = np.zeros(y_shape, self.dtype)
            dh_n = np.ascontiguousarray(np.stack(parts), dtype=self.dtype)
            dx, _ = self._engine.backward(dy, dh_n)
        return dx if mask is None else dx * mask

    def get_config(self):
        return {"name": self.name, "units": self.units,
                "return_sequences": self.return_sequences, "reset_after": self.reset_after,
                "dropout": self.dropout, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}

    @classmethod
    def from_config(cls, config):
        """The layer get_config() describes; ValueError naming the setting for anything else."""
        config = _config(config, "GRU")
        args = dict(config)
        for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            if key in args:
                args[key] = _initializer(args[key], key, "GRU")
        return _same_config(_construct(cls, args), config)

    def __repr__(self):
        return (f"GRU({self.units}, return_sequences={self.return_sequences}, "
                f"reset_after={self.reset_after}, name={self.name!r})")


class Bidirectional(Layer):
    """Runs a GRU layer forward and backward in time and merges the two outputs.

    merge_mode: 'concat' (default, output width 2 * units), 'sum', 'ave' or 'mul'. The backward
    direction's output is aligned with the input's time steps, as in Keras.
    """

    MERGE_MODES = ("concat", "sum", "ave", "mul")

    def __init__(self, layer, merge_mode="concat", name=None):
        super().__init__(name)
        if not isinstance(layer, GRU):
            raise TypeError(f"Bidirectional wraps a cgru.layers.GRU, got {type(layer).__name__}")
        if layer.built or layer.directions != 1:
            raise ValueError("Bidirectional needs a fresh GRU layer (not built, not already "
                             "wrapped)")
        if merge_mode not in self.MERGE_MODES:
            raise ValueError(f"Bidirectional: merge_mode must be one of {self.MERGE_MODES}, got "
                             f"{merge_mode!r}")
        self.layer = layer
        layer.directions, layer.merge_mode = 2, merge_mode

    @property
    def merge_mode(self):
        return self.layer.merge_mode

    def build(self, input_shape, rng, dtype):
        if self.layer.name is None:
            self.layer.name = f"{self.name}_gru"
        self.layer.build(input_shape, rng, dtype)
        super().build(input_shape, rng, dtype)
        self.params, self.grads = self.layer.params, self.layer.grads

    @property
    def trainable(self):
        return self.layer.trainable

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_weights(self):
        return self.layer.get_weights()

    def set_weights(self, weights):
        self.layer.set_weights(weights)

    def forward(self, x, training, rng):
        return self.layer.forward(x, training, rng)

    def backward(self, d_out):
        return self.layer.backward(d_out)

    def get_config(self):
        return {"name": self.name, "merge_mode": self.merge_mode,
                "layer": {"class": "GRU", "config": self.layer.get_config()}}

    def param_shapes(self, input_shape):
        return self.layer.param_shapes(input_shape)

    @classmethod
    def from_config(cls, config):
        config = _config(config, "Bidirectional")
        inner = config.get("layer")
        if not (isinstance(inner, dict) and set(inner) == {"class", "config"}
                and inner["class"] == "GRU"):
            raise ValueError(f"Bidirectional config: layer must be {{'class': 'GRU', 'config': "
                             f"{{...}}}}, got {inner!r:.80}")
        args = {k: v for k, v in config.items() if k != "layer"}
        return _same_config(_construct(cls, args, GRU.from_config(inner["config"])), config)


ACTIVATIONS = (None, "linear", "relu", "sigmoid", "tanh", "softmax")


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis: (batch, features) or, per time step,
    (batch, time, features). kernel (features, units) as in Keras."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        super().__init__(name)
        self.units = _check_units(units, "Dense")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Dense: activation must be one of {ACTIVATIONS}, got "
                             f"{activation!r}")
        self.activation = None if activation == "linear" else activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._cache = None

    def param_shapes(self, input_shape):
        shapes = {"kernel": (input_shape[-1], self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def build(self, input_shape, rng, dtype):
        super().build(input_shape, rng, dtype)
        shapes = self.param_shapes(input_shape)
        self.params = {"kernel": self.kernel_initializer(shapes["kernel"], rng, dtype)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer(shapes["bias"], rng, dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training, rng):
        z = x @ self.params["kernel"]
        if self.use_bias:
            z += self.params["bias"]
        act = self.activation
        if act is None:
            out = z
        elif act == "relu":
            out = np.maximum(z, 0)
        elif act == "sigmoid":
            out = 0.5 * (1 + np.tanh(0.5 * z))  # sigmoid without overflow
        elif act == "tanh":
            out = np.tanh(z)
        else:  # softmax over the last axis
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            out = e / e.sum(axis=-1, keepdims=True)
        out = out.astype(self.dtype, copy=False)
        self._cache = (x, out) if training else None
        return out

    def backward(self, d_out):
        if self._cache is None:
            raise RuntimeError(f"layer '{self.name}': backward needs a training forward first")
        x, out = self._cache
        self._cache = None
        act = self.activation
        if act is None:
            dz = d_out
        elif act == "relu":
            dz = d_out * (out > 0)
        elif act == "sigmoid":
            # d sigmoid(z)/dz = s (1 - s)
            dz = d_out * out * (1 - out)
        elif act == "tanh":
            # d tanh(z)/dz = 1 - t^2
            dz = d_out * (1 - out * out)
        else:
            # softmax: dz_k = s_k (g_k - sum_j g_j s_j)
            dz = out * (d_out - (d_out * out).sum(axis=-1, keepdims=True))
        features = x.shape[-1]
        x2, dz2 = x.reshape(-1, features), dz.reshape(-1, self.units)
        self.grads["kernel"] += x2.T @ dz2
        if self.use_bias:
            self.grads["bias"] += dz2.sum(axis=0)
        return (dz @ self.params["kernel"].T).astype(self.dtype, copy=False)

    def get_config(self):
        return {"name": self.name, "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}

    @classmethod
    def from_config(cls, config):
        config = _config(config, "Dense")
        args = dict(config)
        for key in ("kernel_initializer", "bias_initializer"):
            if key in args:
                args[key] = _initializer(args[key], key, "Dense")
        return _same_config(_construct(cls, args), config)

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r}, name={self.name!r})"


class Dropout(Layer):
    """Zeroes each input element with probability `rate` in training and scales the rest by
    1 / (1 - rate); the identity at inference."""

    def __init__(self, rate, name=None):
        super().__init__(name)
        self.rate = _check_rate(rate, "rate", "Dropout")
        self._mask = None

    def forward(self, x, training, rng):
        if not training or rng is None or self.rate == 0:
            self._mask = None
            return x
        keep = 1.0 - self.rate
        self._mask = (rng.random(x.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
        return x * self._mask

    def backward(self, d_out):
        return d_out if self._mask is None else d_out * self._mask

    def get_config(self):
        return {"name": self.name, "rate": self.rate}

    @classmethod
    def from_config(cls, config):
        config = _config(config, "Dropout")
        return _same_config(_construct(cls, dict(config)), config)

    def __repr__(self):
        return f"Dropout({self.rate}, name={self.name!r})"


CLASSES = {"GRU": GRU, "Bidirectional": Bidirectional, "Dense": Dense, "Dropout": Dropout}
