"""GRU and Bidirectional layers on the cgru engine, with Keras 3's masks, states and options.

`GRU` keeps its weights in the engine's layout (PyTorch's names and gate order r, z, n);
`get_weights()` / `set_weights()` speak Keras's layout (kernel (I, 3H), recurrent_kernel (H, 3H),
bias (2, 3H) with reset_after else (3H,); gate order z, r, n), so Keras weights load as they are.
`Bidirectional` runs its GRU's engine in both directions at once and owns the merge.

Masks: a masked step keeps the previous state, as in Keras. Every mask runs at engine speed
through `_MaskPlan`: a mask that marks each sequence's tail as padding (what `mask_zero` and
`Masking` give for padded batches) becomes the engine's `lengths` as it is; a mask with holes
first moves each sequence's valid steps to its front (a gather), which gives the same states,
then spreads the outputs back. Outputs at masked steps are Keras's: a GRU repeats its last valid
output there (zeros before the first valid step), Bidirectional gives zeros.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _checks, conventions, initializers
from .._typing import Array, ArrayLike, FloatArray, Self
from ..gru import GRU as _EngineGRU
from ..gru import QUANTIZATION_MODES as _QUANTIZATION_MODES
from .base import Layer, Wrapper, _config, _construct, _same_config


class _MaskPlan:
    """How a (batch, time) boolean mask runs on the engine.

    lengths[b]: the valid steps of sequence b; the engine runs max(lengths, 1) steps (a sequence
    with no valid step is run one step and then given its initial state and zero outputs).
    tail: the valid steps are each sequence's first ones, so the engine reads x as it is;
    otherwise src[b, p] is the time of sequence b's p-th valid step (compact() gathers them).
    pos[b, t]: the index of the last valid step at or before t among sequence b's valid steps
    (-1 before the first), which says where each original step's output comes from."""

    def __init__(self, mask):
        mask = np.asarray(mask, dtype=bool)
        B, T = mask.shape
        self.mask = mask
        self.lengths = mask.sum(axis=1)
        self.empty = self.lengths == 0
        self.any_empty = bool(self.empty.any())
        self.engine_lengths = np.maximum(self.lengths, 1)
        steps = np.arange(T)
        self.tail = bool(np.array_equal(mask, steps < self.lengths[:, None]))
        self.pos = np.cumsum(mask, axis=1) - 1
        if not self.tail:
            self.src = np.argsort(~mask, axis=1, kind="stable")  # valid steps first, in order
            self.filled = steps < self.lengths[:, None]          # compacted positions in use

    def compact(self, x):
        """(B, T, F): each sequence's valid steps first, zeros after (the engine's input)."""
        if self.tail:
            return x
        xc = np.take_along_axis(x, self.src[:, :, None], axis=1)
        xc[~self.filled] = 0
        return xc

    def spread(self, dxc):
        """The gradient of compact(): each compacted step's gradient back at its time."""
        if self.tail:
            return dxc
        dx = np.zeros_like(dxc)
        np.put_along_axis(dx, self.src[:, :, None], dxc * self.filled[:, :, None], axis=1)
        return dx

    def expand(self, yc, carry):
        """(B, T, H) outputs at the original steps from the engine's (compacted) outputs: a
        valid step's own; a masked step's the last valid one (carry) or zeros."""
        # Fix (tests/test_keras_layers.py, mask 'tail_and_empty'): the engine runs an empty
        # sequence for one step, so its first output is not zero; it took this shortcut.
        if self.tail and not carry and not self.any_empty:
            return yc  # the engine writes zeros past each length
        where = np.maximum(self.pos, 0)[:, :, None]
        y = np.take_along_axis(yc, where, axis=1)
        y *= (self.mask if not carry else self.pos >= 0)[:, :, None]
        return y

    def expand_backward(self, d_y, carry):
        """d loss / d engine outputs from d loss / d expand()'s outputs."""
        if not carry:
            d_y = d_y * self.mask[:, :, None]
            if self.tail:
                return d_y
            return np.take_along_axis(d_y, self.src[:, :, None], axis=1) * \
                self.filled[:, :, None]
        if self.tail:
            # each padded step repeats the output of its sequence's last valid step
            d_yc = d_y * self.mask[:, :, None]
            tails = (d_y * ~self.mask[:, :, None]).sum(axis=1)
            rows = np.flatnonzero(~self.empty)
            d_yc[rows, self.lengths[rows] - 1] += tails[rows]
            return d_yc
        d_yc = np.zeros_like(d_y)
        b, t = np.nonzero(self.pos >= 0)
        np.add.at(d_yc, (b, self.pos[b, t]), d_y[b, t])
        return d_yc


class GRU(Layer):
    """A GRU layer; input (batch, time, features), output (batch, units) or, with
    return_sequences=True, (batch, time, units); with return_state=True also the final state.

    Args mirror `keras.layers.GRU`: units, return_sequences, return_state, go_backwards (read the
    sequence from its end; sequence outputs then come in that order, as Keras), stateful (keep
    the final state of each call as the next call's initial state, for a fixed batch size, until
    `reset_states()`), reset_after (True: PyTorch/cuDNN form), dropout (on the inputs, one mask
    per sequence shared by all time steps, as Keras), kernel_initializer ('glorot_uniform'),
    recurrent_initializer ('orthogonal'), bias_initializer ('zeros'), use_bias. The engine's
    activations are sigmoid and tanh. Called as `gru(x, initial_state=h0, mask=mask)`.

    quantized: None, "bfloat16" for a layer whose recurrent weights are stored in bfloat16 once
    built, "bfloat16_all" for its input weights too, or "int8" for recurrent weights in int8
    (see `quantize`; saved models record it here).
    """

    def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, reset_after: bool = True,
                 dropout: float = 0.0,
                 kernel_initializer: str | initializers.Initializer = "glorot_uniform",
                 recurrent_initializer: str | initializers.Initializer = "orthogonal",
                 bias_initializer: str | initializers.Initializer = "zeros",
                 use_bias: bool = True, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", recurrent_dropout: float = 0.0,
                 unroll: bool = False, quantized: str | None = None, name: str | None = None,
                 **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        if quantized is not None and quantized not in _QUANTIZATION_MODES:
            raise ValueError(f"GRU: quantized must be None or one of "
                             f"{list(_QUANTIZATION_MODES)}, got {quantized!r}")
        self._quantized = quantized
        self.units = _checks.positive_int(units, "units", "GRU")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.reset_after = bool(reset_after)
        self.dropout = _checks.rate(dropout, "dropout", "GRU")
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
        self.directions = 1        # 2 when a Bidirectional runs it
        self._engine = None
        self._cache = None
        self._states = None        # stateful: the last call's final states (D, batch, units)

    # ---- building -------------------------------------------------------------------------------

    def _check_input(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"layer '{self._label}' (GRU) takes input (batch, time, features); "
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
        if self._quantized is not None:
            self._engine.quantize(self._quantized)

    def load_parameter(self, name: str, value: Array) -> None:
        self._engine._assign_parameter(name, value)  # a quantized weight: rounded to bfloat16

    # ---- reduced precision ----------------------------------------------------------------------

    @property
    def quantized(self) -> str | None:
        """None, or the mode the weights are stored in ("bfloat16", "bfloat16_all", "int8")."""
        return self._quantized

    def quantize(self, mode: str) -> None:
        """Store the weights in `mode` ("bfloat16", "bfloat16_all", "int8"), in place, as Keras 3's
        `layer.quantize(mode)`: see `cgru.GRU.quantize`. The layer then runs inference only."""
        if not self.built:
            raise ValueError(f"layer '{self._label}' (GRU): quantize needs a built layer; build "
                             f"the model (or call it on data) first")
        self._engine.quantize(mode)
        self._quantized = mode

    def build_for(self, input_shapes, rng, dtype):
        self.build(input_shapes[0], rng, dtype)

    @property
    def trainable(self) -> dict[str, FloatArray]:
        # reset_after=False has one bias (Keras's); the engine's bias_hh stays at zero
        if self.reset_after:
            return self.params
        return {k: v for k, v in self.params.items() if not k.startswith("bias_hh")}

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def output_shapes(self, input_shapes):
        self._check_initial_shapes(input_shapes[1:])
        y = self.compute_output_shape(input_shapes[0])
        return [y] + [(self.units,)] * (self.directions if self.return_state else 0)

    def _check_initial_shapes(self, shapes):
        for i, shape in enumerate(shapes):
            if shape is not None and tuple(shape) != (self.units,):
                raise ValueError(f"initial_state: layer '{self._label}' takes states (batch, "
                                 f"{self.units}); state {i} has shape (batch, "
                                 f"{', '.join(map(str, shape))})")

    def check_built_for(self, input_shapes, dtype=None):
        super().check_built_for(input_shapes[:1], dtype)

    # ---- calling --------------------------------------------------------------------------------

    def _call_inputs(self, inputs, initial_state=None):
        if initial_state is None:
            return [inputs]
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) \
            else [initial_state]
        if len(states) != self.directions:
            raise ValueError(f"initial_state: layer '{self._label}' takes {self.directions} "
                             f"state(s) (one per direction), got {len(states)}")
        return [inputs] + states

    def output_masks(self, inputs, masks):
        out = masks[0] if self.return_sequences else None
        return [out] + [None] * (self.directions if self.return_state else 0)

    def forward(self, x, training, rng, mask=None):
        return self.forward_arrays([x], [mask], training, rng)[0]

    def forward_arrays(self, inputs, masks, training, rng):
        seqs, finals, empty = self._recur(inputs[0], masks[0], inputs[1:], training, rng,
                                          self.return_sequences, carry=True)
        y = seqs[0] if self.return_sequences else self._last_output(finals[0], empty)
        return [y] + (finals if self.return_state else [])

    def backward(self, d_out):
        return self.backward_arrays([d_out])[0]

    def backward_arrays(self, d_outputs):
        d_y = d_outputs[0]
        d_state = d_outputs[1] if self.return_state and len(d_outputs) > 1 else None
        if self.return_sequences:
            dx, d_initial = self._recur_backward([d_y], [d_state])
        else:
            dx, d_initial = self._recur_backward(None, [_sum(self._last_output_grad(d_y),
                                                              d_state)])
        return [dx] + d_initial

    def reset_states(self) -> None:
        """Stateful: forget the kept states; the next call starts from zeros (any batch size)."""
        self._states = None

    # Fix (tests/test_keras_layers.py::test_all_masked_row_with_initial_state...): without
    # return_sequences Keras returns its last output, which is zeros for a sequence with no valid
    # step, while that sequence's final state stays its initial state; the final state was
    # returned as the output, so a given (non-zero) initial state leaked into y.
    def _last_output(self, final, empty):
        """Keras's last output from a direction's final states: zeros for the sequences with no
        valid step (`empty`, from the same call's _recur, or None)."""
        if empty is None:
            return final
        out = final.copy()
        out[empty] = 0
        return out

    def _last_output_grad(self, d_last):
        """The gradient _last_output passes to the final states (after the training forward
        kept in _cache): none for the sequences with no valid step."""
        plan = None if self._cache is None else self._cache[1]
        if d_last is None or plan is None or not plan.any_empty:
            return d_last
        d_last = d_last.copy()
        d_last[plan.empty] = 0
        return d_last

    # ---- the recurrence, shared with Bidirectional ------------------------------------------

    def _initial_states(self, given, B):
        """(D, B, H) initial states: the given ones, a stateful layer's kept ones, or None."""
        D, H = self.directions, self.units
        if given:
            states = []
            for i, h in enumerate(given):
                h = np.asarray(h)
                if h.shape != (B, H):
                    raise ValueError(f"initial_state: layer '{self._label}' takes states of shape "
                                     f"(batch, units) = {(B, H)}; state {i} has shape {h.shape}")
                states.append(h)
            return np.ascontiguousarray(np.stack(states), dtype=self.dtype)
        if not self.stateful:
            return None
        if self._states is None:
            self._states = np.zeros((D, B, H), self.dtype)
        elif self._states.shape[1] != B:
            raise ValueError(f"x: the stateful layer '{self._label}' keeps states for batches of "
                             f"{self._states.shape[1]}; this batch holds {B} sequences. Feed "
                             f"batches of {self._states.shape[1]}, or call reset_states() "
                             f"to start over")
        return self._states

    def _recur(self, x, mask, given_states, training, rng, want_sequences, carry):
        """Run the engine over x (B, T, F): per direction the output sequences (B, T, H), in
        Keras's masked form (if want_sequences), and the final states (B, H); and the sequences
        with no valid step (a boolean (B,) array), or None. Inference keeps nothing on the layer
        that a later part of the same call reads (threads may share the model for predict)."""
        B, T, _ = x.shape
        H, D = self.units, self.directions
        drop = None
        if training and rng is not None and self.dropout > 0:
            keep = 1.0 - self.dropout
            drop = (rng.random((B, 1, x.shape[2])) < keep).astype(self.dtype)
            drop /= self.dtype.type(keep)
            x = x * drop
        if self.go_backwards:
            x = x[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        plan = None if mask is None else _MaskPlan(mask)
        if plan is not None and plan.tail and not plan.any_empty and plan.lengths.min() == T:
            plan = None  # nothing masked
        h0 = self._initial_states(given_states, B)
        self._engine.train(training)
        # without sequence outputs, inference needs only the final states: the engine then
        # never holds every step's output (see cgru.gru.INFERENCE_BLOCK_BYTES)
        y, h_n = self._engine._run(x if plan is None else plan.compact(x), h0,
                                   None if plan is None else plan.engine_lengths,
                                   with_outputs=training or want_sequences)
        finals = [h_n[d] for d in range(D)]
        empty = plan.empty if plan is not None and plan.any_empty else None
        if plan is not None and plan.any_empty:  # no valid step: the initial state stays
            for d in range(D):
                finals[d] = finals[d].copy()
                finals[d][plan.empty] = 0 if h0 is None else h0[d][plan.empty]
        seqs = None
        if want_sequences:
            parts = [y] if D == 1 else [y[..., :H], y[..., H:]]
            seqs = parts if plan is None else [plan.expand(p, carry) for p in parts]
        if self.stateful:
            self._states = np.ascontiguousarray(np.stack(finals))
        self._cache = (drop, plan, None if y is None else y.shape, carry,
                       len(given_states) > 0, B) if training else None
        return seqs, finals, empty

    def _recur_backward(self, d_seqs, d_finals):
        """(d x, [d initial state per direction] when states were given) from the gradients of
        _recur's outputs (None where none reached the loss)."""
        if self._cache is None:
            raise RuntimeError(f"layer '{self._label}': backward needs a training forward first")
        drop, plan, y_shape, carry, states_given, B = self._cache
        self._cache = None
        H, D = self.units, self.directions
        if d_seqs is not None and any(d is not None for d in d_seqs):
            parts = [np.zeros(y_shape[:2] + (H,), self.dtype) if d is None else
                     (d if plan is None else plan.expand_backward(d, carry)) for d in d_seqs]
            dy = parts[0] if D == 1 else np.concatenate(parts, axis=-1)
        else:
            dy = np.zeros(y_shape, self.dtype)
        dh_n = np.stack([np.zeros((B, H), self.dtype) if d is None else d for d in d_finals])
        passed = None
        if plan is not None and plan.any_empty:  # those finals were the initial states
            passed = dh_n[:, plan.empty].copy()
            dh_n[:, plan.empty] = 0
        dx, dh0 = self._engine.backward(np.ascontiguousarray(dy, dtype=self.dtype),
                                        np.ascontiguousarray(dh_n, dtype=self.dtype))
        if plan is not None:
            dx = plan.spread(dx)
        if self.go_backwards:
            dx = dx[:, ::-1]
        if drop is not None:
            dx = dx * drop
        d_initial = []
        if states_given:
            if passed is not None:
                dh0 = dh0.copy()
                dh0[:, plan.empty] += passed
            d_initial = [dh0[d] for d in range(D)]
        return np.ascontiguousarray(dx), d_initial

    # ---- Keras's weight layout ------------------------------------------------------------------

    def _engine_names(self, direction):
        return self._engine._names(0, direction)

    def get_weights(self) -> list[Array]:
        """Keras's list: per direction kernel (I, 3H), recurrent_kernel (H, 3H), bias
        (cgru.conventions). None before the layer is built, as in Keras."""
        if not self.built:
            return []  # fix: this raised AttributeError ('NoneType' object has no '_names')
        weights = []
        for d in range(self.directions):
            w_ih, w_hh, b_ih, b_hh = self._engine_names(d)
            weights += conventions.engine_to_keras(
                self.params[w_ih], self.params[w_hh], self.params.get(b_ih),
                self.params.get(b_hh), self.reset_after)
        return weights

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Load Keras's list (see get_weights), checking every shape before changing anything."""
        self._require_weights()
        shapes = conventions.keras_shapes(self.input_shape[-1], self.units, self.use_bias,
                                          self.reset_after) * self.directions
        if len(weights) != len(shapes):
            raise ValueError(f"layer '{self._label}' (GRU) takes {len(shapes)} weight arrays "
                             f"(kernel, recurrent_kernel{', bias' if self.use_bias else ''} per "
                             f"direction), got {len(weights)}")
        arrays = [np.asarray(w) for w in weights]
        for i, (w, shape) in enumerate(zip(arrays, shapes)):
            if w.shape != shape:
                raise ValueError(f"layer '{self._label}' (GRU): weight {i} must have shape "
                                 f"{shape}, got {w.shape}")
        per_direction = len(shapes) // self.directions
        for d in range(self.directions):
            kernel, recurrent, *bias = arrays[d * per_direction:(d + 1) * per_direction]
            engine = conventions.keras_to_engine(kernel, recurrent, bias[0] if bias else None,
                                                 self.reset_after)
            for name, value in zip(self._engine_names(d), engine):
                if value is not None:  # a quantized weight is rounded to bfloat16 again
                    self._engine._assign_parameter(name, value)

    # ---- config ---------------------------------------------------------------------------------

    # settings added after the file format's first version: files without them get these
    _LATER_SETTINGS = {"return_state": False, "go_backwards": False, "stateful": False,
                       "quantized": None}
    _INITIALIZER_KEYS = ("kernel_initializer", "recurrent_initializer", "bias_initializer")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "units": self.units,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "stateful": self.stateful,
                "reset_after": self.reset_after, "dropout": self.dropout,
                "use_bias": self.use_bias, "quantized": self.quantized,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


    def __repr__(self) -> str:
        options = "".join(f", {k}=True" for k in ("return_sequences", "return_state",
                                                   "go_backwards", "stateful")
                          if getattr(self, k))
        return f"GRU({self.units}{options}, reset_after={self.reset_after}, name={self.name!r})"


def _sum(a, b):
    """a + b where either may be None (no gradient)."""
    if a is None:
        return b
    return a if b is None else a + b


class Bidirectional(Wrapper):
    """Runs a GRU layer forward and backward in time and merges the two outputs.

    merge_mode: 'concat' (default, output width 2 * units), 'sum', 'ave' or 'mul'. The backward
    direction's output is aligned with the input's time steps, and masked steps output zeros,
    as in Keras. With the GRU's return_state=True the outputs are [y, h_forward, h_backward].
    """

    MERGE_MODES = ("concat", "sum", "ave", "mul")

    def __init__(self, layer: GRU, merge_mode: str = "concat", name: str | None = None,
                 **shape_keywords: Any) -> None:
        if not isinstance(layer, GRU):
            raise TypeError(f"Bidirectional wraps a cgru.layers.GRU, got {type(layer).__name__}")
        if layer.built or layer.directions != 1:
            raise ValueError("Bidirectional needs a fresh GRU layer (not built, not already "
                             "wrapped)")
        if layer.go_backwards:
            raise ValueError("Bidirectional: the wrapped GRU must read forward "
                             "(go_backwards=False); Bidirectional adds the backward direction")
        if merge_mode not in self.MERGE_MODES:
            raise ValueError(f"Bidirectional: merge_mode must be one of {self.MERGE_MODES}, got "
                             f"{merge_mode!r}")
        super().__init__(layer, name, **shape_keywords)
        self.merge_mode = merge_mode
        layer.directions = 2
        if self.declared_input_shape is None:
            self.declared_batch_size = layer.declared_batch_size
            self.declared_input_shape = layer.declared_input_shape
        self._parts = None

    def compute_output_shape(self, input_shape):
        self.layer._check_input(input_shape)
        width = self.layer.units * (2 if self.merge_mode == "concat" else 1)
        return (input_shape[0], width) if self.layer.return_sequences else (width,)

    def output_shapes(self, input_shapes):
        states = self.layer.output_shapes(input_shapes)[1:]
        return [self.compute_output_shape(input_shapes[0])] + states

    def check_built_for(self, input_shapes, dtype=None):
        super().check_built_for(input_shapes[:1], dtype)

    def _call_inputs(self, inputs, initial_state=None):
        return self.layer._call_inputs(inputs, initial_state)

    def output_masks(self, inputs, masks):
        return self.layer.output_masks(inputs, masks)

    def reset_states(self) -> None:
        self.layer.reset_states()

    # ---- forward and backward: the merge ------------------------------------------------------

    def forward(self, x, training, rng, mask=None):
        return self.forward_arrays([x], [mask], training, rng)[0]

    def forward_arrays(self, inputs, masks, training, rng):
        gru = self.layer
        seqs, finals, empty = gru._recur(inputs[0], masks[0], inputs[1:], training, rng,
                                         gru.return_sequences, carry=False)
        first, second = seqs if gru.return_sequences else [gru._last_output(f, empty)
                                                           for f in finals]
        self._parts = (first, second) if training and self.merge_mode == "mul" else None
        mode = self.merge_mode
        if mode == "concat":
            y = np.concatenate([first, second], axis=-1)
        elif mode == "sum":
            y = first + second
        elif mode == "ave":
            y = (first + second) * self.dtype.type(0.5)
        else:
            y = first * second
        return [y] + (finals if gru.return_state else [])

    def backward(self, d_out):
        return self.backward_arrays([d_out])[0]

    def backward_arrays(self, d_outputs):
        gru, H = self.layer, self.layer.units
        d_out = d_outputs[0]
        if d_out is None:
            d_first = d_second = None
        elif self.merge_mode == "concat":
            d_first, d_second = d_out[..., :H], d_out[..., H:]
        elif self.merge_mode == "sum":
            d_first = d_second = d_out
        elif self.merge_mode == "ave":
            d_first = d_second = d_out * self.dtype.type(0.5)
        else:  # "mul": d(a b)/da = b
            first, second = self._parts
            d_first, d_second = d_out * second, d_out * first
        self._parts = None
        d_states = list(d_outputs[1:3]) if gru.return_state else []
        d_states += [None] * (2 - len(d_states))
        if gru.return_sequences:
            dx, d_initial = gru._recur_backward([d_first, d_second], d_states)
        else:
            dx, d_initial = gru._recur_backward(
                None, [_sum(gru._last_output_grad(d_first), d_states[0]),
                       _sum(gru._last_output_grad(d_second), d_states[1])])
        return [dx] + d_initial

    def release(self):
        self._parts = None
        super().release()

    @property
    def quantized(self) -> str | None:
        """The wrapped GRU's quantization: None, "bfloat16", "bfloat16_all" or "int8"."""
        return self.layer.quantized

    def quantize(self, mode: str) -> None:
        """Quantize both directions' weights (see `GRU.quantize`)."""
        self.layer.quantize(mode)

    # ---- config ---------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "merge_mode": self.merge_mode}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        config = _config(config, "Bidirectional")
        inner = config.get("layer")
        if not (isinstance(inner, dict) and set(inner) == {"class", "config"}
                and inner["class"] == "GRU"):
            raise ValueError(f"Bidirectional config: layer must be {{'class': 'GRU', 'config': "
                             f"{{...}}}}, got {inner!r:.80}")
        gru = GRU.from_config(inner["config"])
        args = {k: v for k, v in config.items() if k != "layer"}
        layer = _construct(cls, args, gru)
        config = dict(config, layer={"class": "GRU", "config": gru.get_config()})
        return _same_config(layer, config)
