"""The base of every layer: names, weights, building, calling on arrays or symbolic tensors, and
the config helpers that rebuild a layer from a file exactly.

A layer is built on first use from the shape of its input (without the batch axis), drawing its
weights from the model's seeded generator (or, called alone on arrays, from a fresh one). It
runs through the graph protocol of `cgru.graph` (`forward_arrays`, `backward_arrays`,
`output_masks`); a layer with one input and one output writes `forward(x, training, rng, mask)`
and `backward(d_out)` and inherits the rest. Backward returns the gradient for the layer's
input and adds parameter gradients into `layer.grads` (the model zeroes them before each batch).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import graph as _graph
from .. import initializers
from .._typing import Array, ArrayLike, FloatArray, Self


# The most units a layer read from a file may declare (a GRU of 65536 units holds 51 GB of
# recurrent weights in float32: anything larger is a damaged or crafted file).
MAX_UNITS = 1 << 16
# The most rows an Embedding read from a file may declare.
MAX_VOCABULARY = 1 << 24


def _config(config, cls):
    """from_config's first check: a dict with string keys (a copy), units within MAX_UNITS."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{cls} config must be a dict of settings, got {config!r:.80}")
    limits = {"units": MAX_UNITS, "output_dim": MAX_UNITS, "input_dim": MAX_VOCABULARY}
    for key, limit in limits.items():
        size = config.get(key, 1)
        if isinstance(size, int) and not isinstance(size, bool) and size > limit:
            raise ValueError(f"{cls} config: {key} must be at most {limit}, got {size}")
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


def _declared_shape(cls, input_shape, batch_input_shape, batch_size):
    """Keras's input_shape / batch_input_shape keywords of a first layer: (batch size or None,
    shape without the batch axis), checked; (None, None) when neither is given."""
    if input_shape is not None and batch_input_shape is not None:
        raise ValueError(f"{cls}: give input_shape or batch_input_shape, not both")
    if batch_input_shape is not None:
        try:
            shape = tuple(batch_input_shape)
        except TypeError:
            raise ValueError(f"{cls}: batch_input_shape must be a tuple (batch, ...), got "
                             f"{batch_input_shape!r}") from None
        if len(shape) < 2:
            raise ValueError(f"{cls}: batch_input_shape must be (batch, ...), got {shape!r}")
        batch_size, input_shape = shape[0], shape[1:]
    if input_shape is None:
        return None, None
    tensor = _graph.Input(input_shape, batch_size=batch_size)  # the same checks as Input
    return tensor.node.batch_size, tensor.node.shape


class Layer:
    """Base of the layers: a name, parameters (`params`) and their gradients (`grads`).

    Keras's `input_shape=(time, features)` (or `batch_input_shape`, `batch_size`) is accepted
    by every layer: on the first layer of a Sequential it declares the model's input."""

    def __init__(self, name: str | None = None, input_shape: Sequence[int | None] | None = None,
                 batch_input_shape: Sequence[int | None] | None = None,
                 batch_size: int | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string without "
                             f"'/', got {name!r}")
        self.name = name
        self.built = False
        self.input_shape = None
        self.params: dict[str, FloatArray] = {}
        self.grads: dict[str, FloatArray] = {}
        self.declared_batch_size, self.declared_input_shape = _declared_shape(
            type(self).__name__, input_shape, batch_input_shape, batch_size)

    @property
    def trainable(self) -> dict[str, FloatArray]:
        """{name: array} the optimizer updates (a subset of params)."""
        return self.params

    # Fix (tests/test_keras_layers.py::test_initial_state_of_the_wrong_shape_or_count_is_refused
    # and others): a layer gets its name from the model it joins, after its first (symbolic or
    # eager) call, so messages raised by that call said "layer 'None'"; they name the class.
    @property
    def _label(self):
        """The layer's name for messages: its name, or its class name before it has one."""
        return self.name or type(self).__name__

    # ---- building -------------------------------------------------------------------------------

    def build(self, input_shape, rng, dtype):
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.built = True

    def build_for(self, input_shapes, rng, dtype):
        """Build for the shapes of every input (a list); one-input layers build for the first."""
        self.build(input_shapes[0], rng, dtype)

    def check_built_for(self, input_shapes, dtype=None):
        """A built layer must get the features (and dtype) it was built for."""
        shape = input_shapes[0]
        if self.input_shape is not None and (len(shape) != len(self.input_shape) or
                                             shape[-1] != self.input_shape[-1]):
            raise ValueError(f"layer '{self._label}' was built for input (batch, "
                             f"{', '.join(map(str, self.input_shape))}); here it gets (batch, "
                             f"{', '.join(map(str, shape))})")
        if dtype is not None and np.dtype(dtype) != self.dtype:
            raise ValueError(f"layer '{self._label}' was built for {self.dtype} weights; the model "
                             f"computes in {np.dtype(dtype)}")

    def param_shapes(self, input_shape):
        """{name: shape} of the `params` that build(input_shape) creates, without creating them
        (load_model compares a file's arrays with these before allocating anything)."""
        return {}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def output_shapes(self, input_shapes):
        """Shapes (without the batch axis) of every output, for the shapes of every input."""
        return [tuple(self.compute_output_shape(input_shapes[0]))]

    # ---- the graph protocol (see cgru.graph) ----------------------------------------------------

    def forward_arrays(self, inputs, masks, training, rng):
        return [self.forward(inputs[0], training, rng, mask=masks[0])]

    def backward_arrays(self, d_outputs):
        return [self.backward(d_outputs[0])]

    def output_masks(self, inputs, masks):
        return [self.compute_mask(inputs[0], masks[0])]

    def compute_mask(self, x, mask):
        """The output's mask from the input's: passed on unchanged by default."""
        return mask

    def release(self):
        """Forget what a training forward kept for a backward that will not come."""
        self._cache = None

    # ---- calling: on arrays (eager) or on symbolic tensors (functional) -------------------------

    def _call_inputs(self, inputs, **call_args):
        """The list of input tensors of a call; layers with extra inputs extend it."""
        if call_args:
            raise TypeError(f"{type(self).__name__} takes no call arguments "
                            f"{', '.join(sorted(call_args))}")
        return [inputs]

    def __call__(self, inputs: Any, training: bool = False, mask: ArrayLike | None = None,
                 **call_args: Any) -> Any:
        """On symbolic tensors: a KerasTensor (or a list, for several outputs) for a functional
        model. On arrays: the layer's output in inference mode (training=True applies dropout),
        building the layer on first use with a fresh random generator; `mask` (batch, time)."""
        tensors = self._call_inputs(inputs, **call_args)
        symbolic = [_graph.is_symbolic(t) for t in tensors]
        if any(symbolic):
            if not all(symbolic):
                raise TypeError(f"layer '{self.name or type(self).__name__}': mix of symbolic "
                                f"tensors and arrays in one call; make every input a "
                                f"cgru.Input or a layer's output")
            if mask is not None:
                raise ValueError("mask: in a functional model masks come from the layers "
                                 "(Embedding(mask_zero=True), Masking), not from a call argument")
            return self._symbolic_call(tensors)
        arrays = [self._eager_array(t, i) for i, t in enumerate(tensors)]
        if not self.built:
            dtype = next((a.dtype for a in arrays if a.dtype == np.float64), np.float32)
            self.build_for([a.shape[1:] for a in arrays], np.random.default_rng(), dtype)
        else:
            self.check_built_for([a.shape[1:] for a in arrays])
        masks = [None if mask is None else _eager_mask(mask, arrays[0])] + \
            [None] * (len(arrays) - 1)
        outs = self.forward_arrays(arrays, masks, bool(training),
                                   np.random.default_rng() if training else None)
        if training:
            self.release()
        return outs[0] if len(outs) == 1 else outs

    def _eager_array(self, value, position):
        a = np.asarray(value)
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or a.ndim < 2:
            raise ValueError(f"layer '{self.name or type(self).__name__}': input {position} must "
                             f"be a real array (batch, ...), got dtype {a.dtype} shape {a.shape}")
        if self.built and np.issubdtype(a.dtype, np.floating):
            return np.ascontiguousarray(a, dtype=self.dtype)
        if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float64:
            return np.ascontiguousarray(a, dtype=np.float32)
        return np.ascontiguousarray(a)

    def _symbolic_call(self, tensors):
        shapes = [t.shape[1:] for t in tensors]
        if self.built:
            self.check_built_for(shapes)
        self.check_input_kinds([t.kind for t in tensors])
        outs = self.output_shapes(shapes)
        node = _graph.Node(self, tensors, outs, ["float"] * len(outs))
        batch = tensors[0].shape[0]
        for t in node.outputs:
            t.shape = (batch,) + tuple(t.shape)
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def check_input_kinds(self, kinds):
        """Real-valued inputs only, unless the layer reads indices (Embedding)."""
        if kinds[0] != "float":
            raise TypeError(f"layer '{self.name or type(self).__name__}' takes real values; its "
                            f"input holds integer indices (an Embedding reads those)")

    # ---- weights ------------------------------------------------------------------------------

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def count_params(self) -> int:
        return int(sum(p.size for p in self.trainable.values()))

    def get_weights(self) -> list[Array]:
        return [self.params[k].copy() for k in self.params]

    def _require_weights(self):
        # Fix (tests/test_keras_layers.py::test_an_unbuilt_layer_has_no_weights_to_set): an
        # unbuilt layer said it takes 0 weight arrays (a GRU raised a TypeError).
        if not self.built:
            raise ValueError(f"layer '{self._label}' is not built yet, so it has no weights to "
                             f"set: call it on data, or build the model it is in, first")

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        self._require_weights()
        names = list(self.params)
        if len(weights) != len(names):
            raise ValueError(f"layer '{self._label}' takes {len(names)} weight arrays "
                             f"({', '.join(names)}), got {len(weights)}")
        arrays = []
        for name, w in zip(names, weights):
            w = np.asarray(w)
            if w.shape != self.params[name].shape:
                raise ValueError(f"layer '{self._label}': weight '{name}' must have shape "
                                 f"{self.params[name].shape}, got {w.shape}")
            arrays.append(w)
        for name, w in zip(names, arrays):
            self.params[name][...] = w

    def load_parameter(self, name: str, value: Array) -> None:
        """params[name] = value, value checked by the caller (load_model); a layer whose
        parameters are stored otherwise (a quantized GRU) converts it."""
        self.params[name][...] = value

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    # What from_config needs to know of a class: the config keys that hold initializers, and
    # the settings added after the file format's first version (files without them get these)
    _INITIALIZER_KEYS: tuple[str, ...] = ()
    _LATER_SETTINGS: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """The layer get_config() describes; ValueError naming the setting for anything else."""
        config = {**cls._LATER_SETTINGS, **_config(config, cls.__name__)}
        args = dict(config)
        for key in cls._INITIALIZER_KEYS:
            if key in args:
                args[key] = _initializer(args[key], key, cls.__name__)
        return _same_config(_construct(cls, args), config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Wrapper(Layer):
    """A layer that runs another one, `layer` (Bidirectional, TimeDistributed, as Keras's
    Wrapper): the inner layer is named after the wrapper, built with it, and its parameters,
    gradients and Keras weights are the wrapper's."""

    def __init__(self, layer: Layer, name: str | None = None, **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        self.layer = layer
        if layer.name is None and name is not None:
            self._name_inner()  # as build() names it, so that messages name it now

    def _name_inner(self) -> None:
        if self.layer.name is None:
            self.layer.name = f"{self.name}_{type(self.layer).__name__.lower()}"

    def _inner_shape(self, input_shape):
        """The input shape the inner layer sees (without the batch axis)."""
        return tuple(input_shape)

    def build(self, input_shape, rng, dtype):
        self._name_inner()
        self.layer.build(self._inner_shape(input_shape), rng, dtype)
        super().build(input_shape, rng, dtype)
        self.params, self.grads = self.layer.params, self.layer.grads

    def param_shapes(self, input_shape):
        return self.layer.param_shapes(self._inner_shape(input_shape))

    @property
    def trainable(self) -> dict[str, FloatArray]:
        return self.layer.trainable

    def get_weights(self) -> list[Array]:
        return self.layer.get_weights()

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        self.layer.set_weights(weights)

    def load_parameter(self, name: str, value: Array) -> None:
        self.layer.load_parameter(name, value)

    def release(self):
        self.layer.release()

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name,
                "layer": {"class": type(self.layer).__name__, "config": self.layer.get_config()}}


def _eager_mask(mask, x):
    m = np.asarray(mask)
    if m.shape != x.shape[:2] or not (m.dtype == bool or np.issubdtype(m.dtype, np.integer)):
        raise ValueError(f"mask must be a boolean array (batch, time) = {x.shape[:2]}, got "
                         f"dtype {m.dtype} shape {m.shape}")
    return m.astype(bool)

