"""Dense, Dropout, Embedding, Masking and TimeDistributed, with Keras 3's arguments and masks.

Masks are (batch, time) booleans: Embedding(mask_zero=True) and Masking make them, the GRU and
Bidirectional read them, and the other layers here pass them on.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks, initializers
from .._typing import Self
from .base import Layer, Wrapper, _config, _construct, _same_config

ACTIVATIONS = (None, "linear", "relu", "sigmoid", "tanh", "softmax")


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis: (batch, features) or, per time step,
    (batch, time, features). kernel (features, units) as in Keras."""

    _INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer")

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: str | initializers.Initializer = "glorot_uniform",
                 bias_initializer: str | initializers.Initializer = "zeros",
                 name: str | None = None, **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        self.units = _checks.positive_int(units, "units", "Dense")
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

    def forward(self, x, training, rng, mask=None):
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
            raise RuntimeError(f"layer '{self._label}': backward needs a training forward first")
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

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}

    def __repr__(self) -> str:
        return f"Dense({self.units}, activation={self.activation!r}, name={self.name!r})"


class Dropout(Layer):
    """Zeroes each input element with probability `rate` in training and scales the rest by
    1 / (1 - rate); the identity at inference."""

    def __init__(self, rate: float, name: str | None = None, **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        self.rate = _checks.rate(rate, "rate", "Dropout")
        self._mask = None

    def forward(self, x, training, rng, mask=None):
        if not training or rng is None or self.rate == 0:
            self._mask = None
            return x
        keep = 1.0 - self.rate
        self._mask = (rng.random(x.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
        return x * self._mask

    def backward(self, d_out):
        return d_out if self._mask is None else d_out * self._mask

    def release(self):
        self._mask = None

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate}

    def __repr__(self) -> str:
        return f"Dropout({self.rate}, name={self.name!r})"


class Embedding(Layer):
    """Integer indices (batch, time) to vectors (batch, time, output_dim): row i of
    `embeddings` (input_dim, output_dim) for index i.

    mask_zero=True treats index 0 as padding: it makes the (batch, time) mask that the layers
    after it read (a GRU then skips those steps), and input_dim must count index 0. Indices
    must be integers in [0, input_dim)."""

    _INITIALIZER_KEYS = ("embeddings_initializer",)

    def __init__(self, input_dim: int, output_dim: int,
                 embeddings_initializer: str | initializers.Initializer = "uniform",
                 mask_zero: bool = False, name: str | None = None,
                 **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        self.input_dim = _checks.positive_int(input_dim, "input_dim", "Embedding")
        self.output_dim = _checks.positive_int(output_dim, "output_dim", "Embedding")
        self.embeddings_initializer = initializers.get(embeddings_initializer,
                                                       "embeddings_initializer")
        self.mask_zero = bool(mask_zero)
        self._cache = None

    def check_input_kinds(self, kinds):
        pass  # indices; real arrays holding integers are accepted and checked when run

    def param_shapes(self, input_shape):
        return {"embeddings": (self.input_dim, self.output_dim)}

    def build(self, input_shape, rng, dtype):
        super().build(input_shape, rng, dtype)
        if np.issubdtype(np.dtype(dtype), np.integer):
            dtype = np.float32
        self.dtype = np.dtype(dtype)
        self.params = {"embeddings": self.embeddings_initializer(
            (self.input_dim, self.output_dim), rng, self.dtype)}
        self.grads = {"embeddings": np.zeros_like(self.params["embeddings"])}

    def check_built_for(self, input_shapes, dtype=None):
        if self.input_shape is not None and len(input_shapes[0]) != len(self.input_shape):
            raise ValueError(f"layer '{self._label}' (Embedding) was built for indices (batch, "
                             f"{', '.join(map(str, self.input_shape))}); here it gets (batch, "
                             f"{', '.join(map(str, input_shapes[0]))})")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _indices(self, x):
        idx = np.asarray(x)
        if not (np.issubdtype(idx.dtype, np.integer) or np.issubdtype(idx.dtype, np.floating)):
            raise TypeError(f"x: layer '{self._label}' (Embedding) takes integer indices, got "
                            f"dtype {idx.dtype}")
        if np.issubdtype(idx.dtype, np.floating):
            if not np.all(np.isfinite(idx)) or not np.all(idx == np.round(idx)):
                raise ValueError(f"x: layer '{self._label}' (Embedding) takes integer indices; "
                                 f"its input holds non-integer values")
            idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.input_dim):
            raise ValueError(f"x: layer '{self._label}' (Embedding) takes indices in [0, "
                             f"{self.input_dim - 1}] (input_dim={self.input_dim}); got values "
                             f"from {idx.min()} to {idx.max()}")
        return idx

    def forward(self, x, training, rng, mask=None):
        idx = self._indices(x)
        self._cache = idx if training else None
        return self.params["embeddings"][idx]

    def backward(self, d_out):
        if self._cache is None:
            raise RuntimeError(f"layer '{self._label}': backward needs a training forward first")
        idx, self._cache = self._cache, None
        # d loss / d embeddings[i] = sum of d_out over the positions holding index i
        np.add.at(self.grads["embeddings"], idx.reshape(-1),
                  d_out.reshape(-1, self.output_dim))
        return None  # indices take no gradient

    def compute_mask(self, x, mask):
        if not self.mask_zero:
            return mask
        return np.asarray(x) != 0

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "mask_zero": self.mask_zero,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer)}



class Masking(Layer):
    """Marks the time steps whose features all equal `mask_value` as padding: the mask the
    layers after it read (a GRU skips those steps). Its output is the input with those steps
    zeroed, as Keras's."""

    def __init__(self, mask_value: float = 0.0, name: str | None = None,
                 **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        self.mask_value = float(_checks.number(mask_value, "mask_value", "Masking"))
        self._cache = None

    def _keep(self, x):
        if x.ndim != 3:
            raise ValueError(f"x: layer '{self._label}' (Masking) takes (batch, time, features), "
                             f"got shape {x.shape}")
        return np.any(x != self.mask_value, axis=-1)

    def forward(self, x, training, rng, mask=None):
        keep = self._keep(x)
        self._cache = keep if training else None
        return x * keep[:, :, None].astype(x.dtype)

    def backward(self, d_out):
        keep, self._cache = self._cache, None
        return d_out * keep[:, :, None].astype(d_out.dtype)

    def compute_mask(self, x, mask):
        keep = self._keep(np.asarray(x))
        return keep if mask is None else keep & mask

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "mask_value": self.mask_value}


class TimeDistributed(Wrapper):
    """Applies `layer` to every time step: (batch, time, ...) -> (batch, time, ...'). The
    layer's weights are shared by all steps; the mask passes on."""

    def __init__(self, layer: Dense | Dropout, name: str | None = None,
                 **shape_keywords: Any) -> None:
        if not isinstance(layer, (Dense, Dropout)):
            raise TypeError(f"TimeDistributed wraps a cgru.layers.Dense or Dropout, got "
                            f"{type(layer).__name__}")
        if layer.built:
            raise ValueError("TimeDistributed needs a fresh layer (not built)")
        super().__init__(layer, name, **shape_keywords)

    def _check_input(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"layer '{self._label}' (TimeDistributed) takes (batch, time, ...); "
                             f"it got (batch, {', '.join(map(str, input_shape))})")

    def _inner_shape(self, input_shape):
        self._check_input(input_shape)
        return tuple(input_shape[1:])

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return (input_shape[0],) + tuple(self.layer.compute_output_shape(input_shape[1:]))

    def forward(self, x, training, rng, mask=None):
        B, T = x.shape[:2]
        y = self.layer.forward(x.reshape((B * T,) + x.shape[2:]), training, rng)
        return y.reshape((B, T) + y.shape[1:])

    def backward(self, d_out):
        B, T = d_out.shape[:2]
        dx = self.layer.backward(d_out.reshape((B * T,) + d_out.shape[2:]))
        return dx.reshape((B, T) + dx.shape[1:])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        config = _config(config, "TimeDistributed")
        inner = config.get("layer")
        kinds = {"Dense": Dense, "Dropout": Dropout}
        if not (isinstance(inner, dict) and set(inner) == {"class", "config"}
                and inner["class"] in kinds):
            raise ValueError(f"TimeDistributed config: layer must be {{'class': 'Dense' or "
                             f"'Dropout', 'config': {{...}}}}, got {inner!r:.80}")
        args = {k: v for k, v in config.items() if k != "layer"}
        return _same_config(_construct(cls, args, kinds[inner["class"]].from_config(
            inner["config"])), config)
