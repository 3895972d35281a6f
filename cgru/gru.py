"""`cgru.GRU`: a multi-layer GRU with the names, shapes and state dict of `torch.nn.GRU`.

This layer validates, lays arrays out contiguously, allocates one workspace per call and hands
each layer and direction to the C engine (which runs without the GIL). Everything per time step
happens in C.
"""
from __future__ import annotations

import sys
import threading
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from . import _checks, _engine
from ._fork import fork_safe_lock
from ._typing import ArrayLike, FloatArray, Self
from .quantization import QUANTIZATION_MODES, format_of, quantized

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

# An inference forward works through the batch (and, for a unidirectional GRU, the time axis) in
# blocks whose working memory stays under this many bytes, whatever T and B are: scoring a
# million sequences costs its input and output, not a copy of every gate of every step.
INFERENCE_BLOCK_BYTES = 48 * 2**20
# Each Python thread's inference workspace, one per dtype (GRU._inference_workspace).
_thread_workspaces = threading.local()
# Sequences a unidirectional GRU keeps in one block, cutting the time axis instead, when a block
# cannot hold whole sequences (the per-step products lose speed on fewer rows).
PREFERRED_BATCH_BLOCK = 256


# Held while a weight is quantized (GRU._quantize_weight): rare, and short.
_rounding_lock = fork_safe_lock()


# True once the user called set_num_threads: defaults chosen elsewhere (distributed fit) yield
_threads_set_by_user = False


def set_num_threads(n: int) -> None:
    """Set the number of threads every engine call uses (OpenMP). Overrides OMP_NUM_THREADS."""
    global _threads_set_by_user
    _engine.set_num_threads(_checks.positive_int(n, "n", "set_num_threads"))
    _threads_set_by_user = True


def get_num_threads() -> int:
    """Threads an engine call uses: set_num_threads(n), else OMP_NUM_THREADS, else the cores."""
    return _engine.get_num_threads()


def _aligned(a):
    """A copy of a whose data starts on a 64-byte boundary, so that the engine's whole-vector
    loads of its rows never straddle two cache lines (step() reads the weights in place)."""
    buffer = np.empty(a.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    out = buffer[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _contiguous(a):
    """a itself when C-contiguous and aligned, else such a copy: what the engine reads."""
    return np.require(a, requirements=["C", "A"])


class _Parameter:
    """The class attribute behind `gru.weight_ih_l0` (and every other parameter name): reading
    it gives the live array `gru.params[name]`, assigning it copies into that array (checked:
    GRU._assign_parameter), deleting it is refused."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    @classmethod
    def register(cls, names):
        """Make each of `names` a parameter attribute of GRU (once per name)."""
        for name in names:
            if not isinstance(GRU.__dict__.get(name), cls):
                setattr(GRU, name, cls(name))

    def __get__(self, gru, owner=None):
        if gru is None:
            return self
        return gru._parameter(self.name)

    def __set__(self, gru, value):
        gru._assign_parameter(self.name, value)

    def __delete__(self, gru):
        raise AttributeError(f"GRU: parameter {self.name!r} cannot be deleted: the architecture "
                             f"is fixed at construction (bias=False builds a GRU without biases)")


class _Carver:
    """Hands out consecutive pieces of a flat buffer, from `start` on, as copies of arrays."""

    def __init__(self, buffer, start):
        self.buffer, self.at = buffer, start

    def copy_of(self, a):
        piece = self.buffer[self.at:self.at + a.size].reshape(a.shape)
        self.at += a.size
        np.copyto(piece, a)
        return piece


class GRU:
    """Multi-layer GRU on the cgru engine; the API of `torch.nn.GRU` plus `reset_after`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in
            `torch.nn.GRU`.
        reset_after: True (PyTorch, cuDNN, Keras default): n = tanh(W_in x + b_in + r * (W_hn h
            + b_hn)). False (Cho et al. 2014, Keras reset_after=False, ONNX
            linear_before_reset=0): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
        dtype: "float32" or "float64"; inputs must have the same dtype.
        seed: seeds the initial weights (uniform in +-1/sqrt(hidden_size), as PyTorch) and the
            dropout masks.

    Shapes: x (T, B, input_size), or (B, T, input_size) with batch_first, or (T, input_size)
    unbatched; h0 and h_n (num_layers * D, B, hidden_size); y (T, B, D * hidden_size), with D = 2
    when bidirectional.

    Parameters, as in torch: `params` holds the live arrays under PyTorch's names
    (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, then the _reverse direction, then the
    next layer), which `named_parameters()` and `parameters()` iterate in that order and which are
    attributes too (`gru.weight_ih_l0`). Changing one of these arrays in place changes the GRU.
    Assigning an attribute (`gru.weight_ih_l0 = w`) copies w into the parameter, cast to the
    GRU's dtype, after checking it: a ValueError names the parameter, the expected shape and w's
    (torch instead refuses a plain tensor and takes only an `nn.Parameter`, which replaces the
    parameter; cgru has no Parameter type, and copying keeps every reference to the array,
    an optimizer's or a Keras-style layer's, pointing at the parameter in use).

    `repr` reads as torch's: the two sizes, then every option that differs from its default in
    torch's order (num_layers, bias, batch_first, dropout, bidirectional), then cgru's own
    (reset_after, dtype) when they differ from theirs; an option not shown has its default. So a
    float32 reset_after GRU prints exactly as the torch.nn.GRU of the same options, and the repr
    is the call that builds a GRU of the same architecture (the weights aside).

    dropout > 0 with num_layers == 1 warns (UserWarning), at construction and when set later, as
    torch does: the dropout applies between layers, so one layer never uses it.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, dtype: npt.DTypeLike = "float32",
                 seed: int | None = None) -> None:
        # the architecture is fixed at construction (read-only properties below): every
        # parameter shape and the engine's checks follow from it
        self._input_size = _checks.positive_int(input_size, "input_size", "GRU")
        self._hidden_size = _checks.positive_int(hidden_size, "hidden_size", "GRU")
        self._num_layers = _checks.positive_int(num_layers, "num_layers", "GRU")
        try:
            key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        except TypeError:
            key = None
        if key not in _DTYPES:
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self._dtype = _DTYPES[key]
        self._bias = bool(bias)
        self._bidirectional = bool(bidirectional)
        self._reset_after = bool(reset_after)
        self.batch_first = batch_first
        self._set_dropout(dropout, stacklevel=3)
        self.training = True
        # quantize(): W_hh (and W_ih with "bfloat16_all") of every layer and direction in the
        # engine's strips by name (cgru/quantization.py), with the read-only float32 array (its
        # exact value) that params holds for each
        self._strips: dict[str, np.ndarray] | None = None
        self._quantized_of: dict[str, FloatArray] = {}
        self._rng = np.random.default_rng(seed)
        self._init_run_state()
        H, D = self.hidden_size, self.num_directions
        bound = 1.0 / np.sqrt(H)
        self.params: dict[str, FloatArray] = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else D * H
            for d in range(D):
                for name, shape in zip(self._names(layer, d),
                                       [(3 * H, layer_input), (3 * H, H), (3 * H,), (3 * H,)]):
                    if name.startswith("bias") and not self.bias:
                        continue
                    self.params[name] = _aligned(
                        self._rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.grads: dict[str, FloatArray] = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._shapes = {k: v.shape for k, v in self.params.items()}
        _Parameter.register(self._shapes)

    # ---- architecture: read-only ----------------------------------------------------------------

    @property
    def input_size(self) -> int:
        """Features per time step (fixed)."""
        return self._input_size

    @property
    def hidden_size(self) -> int:
        """Hidden units (fixed)."""
        return self._hidden_size

    @property
    def num_layers(self) -> int:
        """Stacked layers (fixed)."""
        return self._num_layers

    @property
    def bias(self) -> bool:
        """Whether the layers have biases (fixed)."""
        return self._bias

    @property
    def bidirectional(self) -> bool:
        """Two directions (fixed)."""
        return self._bidirectional

    @property
    def reset_after(self) -> bool:
        """The reset variant (fixed)."""
        return self._reset_after

    @property
    def dtype(self) -> np.dtype[Any]:
        """The parameters' dtype (fixed)."""
        return self._dtype

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def batch_first(self) -> bool:
        """Inputs and outputs are (B, T, features) when True, (T, B, features) when False."""
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: bool) -> None:
        self._batch_first = _checks.flag(value, "batch_first", "GRU")

    @property
    def dropout(self) -> float:
        """Dropout on the outputs of every layer but the last, in training mode: a rate in
        [0, 1). With one layer it has nothing to apply to, and setting it > 0 warns (as torch)."""
        return self._dropout

    @dropout.setter
    def dropout(self, value: float) -> None:
        # frames above the warning: _set_dropout, this setter, the user's line
        self._set_dropout(value, stacklevel=3)

    def _set_dropout(self, value, stacklevel):
        dropout = _checks.rate(value, "dropout", "GRU")
        if dropout > 0 and self._num_layers == 1:
            # torch.nn.GRU's warning, word for word
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={self._num_layers}", UserWarning,
                          stacklevel=stacklevel)
        self._dropout = dropout

    # ---- what a training forward leaves for its backward ----------------------------------------

    def _init_run_state(self):
        # each Python thread has its own pending training forward, so that threads sharing a
        # GRU backpropagate through their own; their gradients add into `grads` one at a time
        self._pending = threading.local()
        self._grads_lock = fork_safe_lock()
        # the workspace of the last training step whose backward is done, for the next training
        # forward: a fresh one costs its page faults at every step (measured on a 2-core VM: the
        # (100, 64, 128, 256) training step took 50 ms with a fresh 33 MB workspace per call and
        # 38 ms with this one kept). A list, so that threads take it with an atomic pop.
        self._spare_workspaces = []
        # step()'s fixed arguments, checked once: the engine reads them at every time step
        self._step_layout = None if self._bidirectional else _engine.StepLayout(
            tuple(zip(*[self._names(layer, 0) for layer in range(self._num_layers)])),
            self._num_layers, self._input_size, self._hidden_size, self._reset_after, self._bias,
            self._dtype)

    @property
    def _context(self):
        return getattr(self._pending, "context", None)

    @_context.setter
    def _context(self, context):
        self._pending.context = context

    def __getstate__(self):
        # a pickled or copied GRU carries its parameters and settings, never a pending forward
        state = self.__dict__.copy()
        del state["_pending"], state["_grads_lock"], state["_spare_workspaces"]
        del state["_step_layout"]
        return state

    def __setstate__(self, state):
        # a pickle from before int8 named them for bfloat16, the one format there was then
        state.setdefault("_strips", state.pop("_bfloat16", None))
        state.setdefault("_quantized_of", state.pop("_bfloat16_of", {}))
        state.pop("_step_names", None)  # a pickle from before StepLayout
        self.__dict__.update(state)
        for value in self._quantized_of.values():  # unpickled arrays come back writeable
            value.flags.writeable = False
        if self._strips is not None:
            # the strips laid out again from the values (quantizing a value gives it back), in a
            # new dict (copy.copy shares the state's): a pickle from an engine that laid them out
            # otherwise loads too
            self._strips = {name: _aligned(quantized(value, format_of(self._strips[name]),
                                                     name)[1])
                            for name, value in self._quantized_of.items()}
        self._init_run_state()
        _Parameter.register(self._shapes)

    # ---- the parameters as attributes, as torch.nn.GRU has them ---------------------------------
    # `gru.weight_ih_l0` is a _Parameter descriptor on the class, registered when a GRU with that
    # parameter is first built or unpickled, rather than a __getattr__: a class with __getattr__
    # loses CPython's fast attribute lookups, which step() (a few microseconds) would pay for.

    def _parameter(self, name):
        """`gru.<name>`: the live array params[name], for the parameters this GRU has."""
        attributes = vars(self)  # not self._shapes: a half-unpickled instance has no attributes
        if name in attributes.get("_shapes", ()):
            params = attributes.get("params")
            if isinstance(params, dict) and name in params:
                return params[name]
            raise AttributeError(f"GRU: parameter {name!r} is missing from params (it was "
                                 f"deleted, or params was replaced)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        # the class holds the parameter names of every GRU built so far: list this one's
        names = set(super().__dir__())
        names = {n for n in names if not isinstance(getattr(GRU, n, None), _Parameter)}
        return sorted(names | set(vars(self).get("_shapes", ())))

    def _assign_parameter(self, name, value):
        """`gru.weight_ih_l0 = w`: w, checked, is copied into the live parameter array."""
        if name not in vars(self).get("_shapes", ()):
            raise AttributeError(f"GRU: this GRU has no parameter {name!r}; its parameters are "
                                 f"{list(vars(self).get('_shapes', ()))}")
        if callable(getattr(value, "detach", None)):  # a torch tensor or nn.Parameter
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):  # as load_state_dict
            raise TypeError(f"GRU: parameter {name!r} takes a floating-point array, got dtype "
                            f"{arr.dtype}")
        expected = self._shapes[name]
        if arr.shape != expected:
            raise ValueError(f"GRU: parameter {name!r} has shape {expected}, got an array of "
                             f"shape {arr.shape}")
        if self._strips is not None and name in self._strips:
            self._quantize_weight(name, arr)  # a new read-only entry, quantized
            return
        params = self.params
        target = params.get(name) if isinstance(params, dict) else None
        if isinstance(target, np.ndarray) and target.shape == expected \
                and target.dtype == self.dtype and target.flags.c_contiguous \
                and target.flags.aligned and target.flags.writeable:
            target[...] = arr
        else:  # the entry was replaced by something the engine cannot use: a proper one again
            params[name] = _aligned(arr.astype(self.dtype))

    def named_parameters(self, prefix: str = "",
                         recurse: bool = True) -> Iterator[tuple[str, FloatArray]]:
        """(name, array) for every parameter, in torch.nn.GRU's order: weight_ih_l0, weight_hh_l0,
        bias_ih_l0, bias_hh_l0, their _reverse, then the next layer. The arrays are the live
        parameters (writing into one changes the GRU). `prefix` is prepended as 'prefix.name';
        `recurse` is accepted for torch's signature (a GRU has no submodules)."""
        lead = f"{prefix}." if prefix else ""
        for name in self._shapes:
            yield lead + name, self.params[name]

    def parameters(self, recurse: bool = True) -> Iterator[FloatArray]:
        """The live parameter arrays, in named_parameters()' order."""
        for _, value in self.named_parameters():
            yield value

    # ---- PyTorch-style housekeeping -------------------------------------------------------------

    @staticmethod
    def _names(layer, direction):
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        # interned, so that step()'s lookups by these names compare keys by identity
        return [sys.intern(kind + suffix) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def train(self, mode: bool = True) -> Self:
        """Training mode: forwards keep what backward needs, and dropout applies."""
        if mode and self._strips is not None:
            raise RuntimeError(self._inference_only("train"))
        self.training = bool(mode)
        return self

    # ---- reduced precision ----------------------------------------------------------------------

    @property
    def quantized(self) -> str | None:
        """None, or the mode quantize() stored the weights in ("bfloat16", "bfloat16_all",
        "int8")."""
        strips = self._strips
        if strips is None:
            return None
        w_ih, w_hh = self._names(0, 0)[:2]
        if format_of(strips[w_hh]) == "int8":
            return "int8"
        return "bfloat16_all" if w_ih in strips else "bfloat16"

    def quantize(self, mode: str) -> Self:
        """Store the recurrent weights (modes "bfloat16", "int8") or all weights
        ("bfloat16_all") in reduced precision for faster inference, in place (as Keras 3's
        `Model.quantize(mode)`); returns the GRU.

        mode "bfloat16": every W_hh (weight_hh_l*) is rounded to the nearest bfloat16, and the
        engine multiplies it with the state rounded to bfloat16 too, summing in float32 (with
        AVX512_BF16's dot product where the CPU has it, an exact float32 emulation elsewhere).
        Inputs, outputs, states, W_ih and biases stay float32. Per time step the recurrent
        product then reads half the bytes, which is what bounds streaming and small batches.
        mode "bfloat16_all": every W_ih (weight_ih_l*) is rounded to the nearest bfloat16 too,
        and multiplied with the inputs as they are (float32 products of the rounded weights):
        step() then reads half the bytes for its input product as well.
        mode "int8": every W_hh becomes int8 with one float32 scale per output unit (max |w| /
        127 over its row), and at every step each row of the state is quantized to 8 bits with
        a scale of its own (max |h| / 127); their integer products are summed exactly, then
        scaled (with AVX512_VNNI where the CPU has it, the same integers elsewhere). A quarter
        of float32's bytes per step; weights must be finite.
        The GRU becomes inference-only: `train()`, a training forward and `backward` raise.

        Afterwards params holds each quantized weight's value (what the engine multiplies by),
        read-only; assigning one (`gru.weight_hh_l0 = w`, `load_state_dict`, replacing the params
        entry) quantizes the new value in turn. Quantize a copy (`copy.deepcopy(gru).quantize(
        mode)`) to keep a trainable float32 GRU.
        """
        if mode not in QUANTIZATION_MODES:
            raise ValueError(f"quantize: mode must be one of {list(QUANTIZATION_MODES)}, got "
                             f"{mode!r}")
        if self._strips is not None:
            raise ValueError(f"quantize: this GRU is already quantized ({self.quantized!r})")
        if self.dtype != np.float32:
            raise TypeError(f"quantize: mode {mode!r} takes a float32 GRU, got one of dtype "
                            f"{self.dtype}")
        params = self._checked_params()
        made = {}  # every weight quantized before any is stored: a refusal leaves the GRU as it was
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                names = self._names(layer, d)
                for kind, fmt in QUANTIZATION_MODES[mode]:
                    made[names[kind]] = quantized(params[names[kind]], fmt, names[kind])
        self.training = False
        self._context = None
        self._spare_workspaces.clear()  # an inference-only GRU has no training step to keep it for
        self._strips = {}
        for name, (value, strips) in made.items():
            self._store_quantized(name, value, strips)
        return self

    def _quantize_weight(self, name, w=None):
        """Weight `name` (w, else its params entry) quantized again in the format its strips
        have; a ValueError, changing nothing, for a value that format cannot hold."""
        value, strips = quantized(self.params[name] if w is None else w,
                                  format_of(self._strips[name]), name)
        self._store_quantized(name, value, strips)

    def _store_quantized(self, name, value, strips):
        """A quantized weight's value as its read-only params entry, and its strips aligned as
        the engine reads them. Under _rounding_lock, so that two threads quantizing the same
        entry (a load_state_dict, a step's refresh) leave its strips and its value from one of
        them: step() takes the strips only while params holds the value they were made from
        (_engine.gru_step)."""
        value = _aligned(value)
        value.flags.writeable = False
        strips = _aligned(strips)
        with _rounding_lock:
            self.params[name] = value
            self._strips[name] = strips
            self._quantized_of[name] = value

    def _refresh_quantized(self, checked=False):
        """A quantized entry of params replaced since it was quantized is quantized in its turn,
        once _checked_params has checked the new one (checked: it has)."""
        params = self.params
        for name, value in self._quantized_of.items():
            if params.get(name) is not value:
                if not checked:
                    self._checked_params()  # checks every entry, then comes back here
                    return
                self._quantize_weight(name)

    def _inference_only(self, what):
        return (f"{what}: this GRU is quantized to {self.quantized} and runs inference only "
                f"(forward in eval mode, step); quantize a copy to keep a trainable one")

    def eval(self) -> Self:
        """Inference mode: forwards keep nothing and skip dropout."""
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self) -> dict[str, FloatArray]:
        """Copies of the parameters under PyTorch's names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Load parameters by PyTorch's names; refuses missing, unexpected or misshapen entries."""
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: state_dict must be a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        missing = sorted(set(self.params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.params))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        loaded = {}
        for k, v in state_dict.items():
            arr = np.asarray(v)
            if arr.shape != self.params[k].shape:
                raise ValueError(f"load_state_dict: '{k}' must have shape {self.params[k].shape}, "
                                 f"got {arr.shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"load_state_dict: '{k}' must be floating point, got {arr.dtype}")
            loaded[k] = np.array(arr, dtype=self.dtype, order="C", copy=True)
        strips = self._strips or {}
        # quantized first, so that a value the format cannot hold changes nothing
        made = {k: quantized(v, format_of(strips[k]), k) for k, v in loaded.items() if k in strips}
        for k, v in loaded.items():
            if k in made:
                self._store_quantized(k, *made[k])
            else:
                self.params[k][...] = v

    def __repr__(self) -> str:
        # torch.nn.GRU's extra_repr (non-default options in its order), then cgru's own options
        options = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            options.append(f"num_layers={self.num_layers}")
        if not self.bias:
            options.append("bias=False")
        if self.batch_first:
            options.append("batch_first=True")
        if self.dropout != 0:
            options.append(f"dropout={self.dropout}")
        if self.bidirectional:
            options.append("bidirectional=True")
        if not self.reset_after:
            options.append("reset_after=False")
        if self.dtype != np.float32:
            options.append(f"dtype='{self.dtype.name}'")
        return f"{type(self).__name__}({', '.join(options)})"

    # ---- validation -----------------------------------------------------------------------------

    def _array(self, value, name):
        arr = np.asarray(value)
        if arr.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {arr.dtype} but the GRU's parameters are "
                            f"{self.dtype}; pass {name}.astype(np.{self.dtype.name}) or build the "
                            f"GRU with dtype='{arr.dtype}'")
        return arr

    def _checked_params(self):
        """The parameter arrays as the engine needs them: users may have replaced, reshaped or
        deleted entries of `params`. A misaligned array is used through an aligned copy."""
        if not isinstance(self.params, dict):
            raise TypeError(f"params must be a dict of arrays, got {type(self.params).__name__}")
        missing = [k for k in self._shapes if k not in self.params]
        unexpected = [k for k in self.params if k not in self._shapes]
        if missing or unexpected:
            raise KeyError(f"params must hold exactly this GRU's parameters: missing {missing}, "
                           f"unexpected {unexpected}")
        checked = {k: self._checked_param(k, self.params[k]) for k in self._shapes}
        if self._strips is not None:
            self._refresh_quantized(checked=True)
            checked.update((k, self.params[k]) for k in self._strips)
        return checked

    def _checked_param(self, k, v):
        """Parameter k's array v as the engine needs it (an aligned copy of a misaligned one)."""
        if not isinstance(v, np.ndarray) or v.dtype != self.dtype or not v.flags.c_contiguous:
            raise TypeError(f"params['{k}'] must be a C-contiguous {self.dtype} array; "
                            f"got {type(v).__name__} {getattr(v, 'dtype', '')}")
        if v.shape != self._shapes[k]:
            raise ValueError(f"params['{k}'] must have shape {self._shapes[k]}, got {v.shape}")
        return v if v.flags.aligned else _aligned(v)

    def _checked_grads(self):
        for k, shape in self._shapes.items():
            g = self.grads.get(k) if isinstance(self.grads, dict) else None
            if not isinstance(g, np.ndarray) or g.shape != shape or g.dtype != self.dtype \
                    or not g.flags.c_contiguous or not g.flags.aligned or not g.flags.writeable:
                raise TypeError(f"grads['{k}'] must be a writeable, aligned, C-contiguous "
                                f"{self.dtype} array of shape {shape}")

    def _time_major_input(self, x):
        x = self._array(x, "x")
        if x.ndim == 2:
            unbatched = True
            x = x[:, None, :]
        elif x.ndim == 3:
            unbatched = False
            if self.batch_first:
                x = x.transpose(1, 0, 2)
        else:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"x must be {layout}, or (T, input_size) unbatched; got shape "
                             f"{x.shape}")
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"dimension, got {I}")
        if T == 0:
            raise ValueError("x has 0 time steps; a GRU needs at least one")
        if B == 0:
            raise ValueError("x has a batch of 0 sequences; a GRU needs at least one")
        return x, unbatched  # a view: the engine gets contiguous blocks of it

    def _state(self, h, name, B, unbatched):
        """h0 / dh_n as (num_layers * D, B, H), contiguous; None stays None."""
        if h is None:
            return None
        h = self._array(h, name)
        expected = (self.num_layers * self.num_directions, B, self.hidden_size)
        if unbatched:
            if h.shape != (expected[0], expected[2]):
                raise ValueError(f"{name} must have shape {(expected[0], expected[2])} for an "
                                 f"unbatched input, got {h.shape}")
            h = h[:, None, :]
        elif h.shape != expected:
            raise ValueError(f"{name} must have shape (num_layers * num_directions, batch, "
                             f"hidden_size) = {expected}, got {h.shape}")
        return _contiguous(h)

    @staticmethod
    def _lengths(lengths, T, B):
        if lengths is None:
            return None
        arr = np.asarray(lengths)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths must have shape (batch,) = ({B},), got {arr.shape}")
        if arr.min() < 1 or arr.max() > T:
            raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got values from "
                             f"{arr.min()} to {arr.max()}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    # ---- forward and backward -------------------------------------------------------------------

    def __call__(self, x: ArrayLike, h0: ArrayLike | None = None,
                 lengths: ArrayLike | None = None) -> tuple[FloatArray, FloatArray]:
        return self.forward(x, h0, lengths)

    def forward(self, x: ArrayLike, h0: ArrayLike | None = None,
                lengths: ArrayLike | None = None) -> tuple[FloatArray, FloatArray]:
        """Run the GRU over x; returns (y, h_n). In training mode, keeps what backward needs."""
        return self._run(x, h0, lengths, with_outputs=True)

    def _run(self, x, h0, lengths, with_outputs):
        """forward(); with_outputs=False returns (None, h_n) and never holds all of y."""
        x, unbatched = self._time_major_input(x)
        T, B, _ = x.shape
        h0 = self._state(h0, "h0", B, unbatched)
        if unbatched and lengths is not None:
            raise ValueError("lengths applies to batched input only; x is unbatched (T, "
                             "input_size)")
        lengths = self._lengths(lengths, T, B)
        params = self._checked_params()
        if self.training:
            if self._strips is not None:  # training was set directly, not through train()
                raise RuntimeError(self._inference_only("a training-mode forward"))
            y, h_n = self._train_forward(x, h0, lengths, params, unbatched)
        else:
            y, h_n = self._infer(x, h0, lengths, params, with_outputs)
        if y is None:
            return None, (h_n[:, 0, :] if unbatched else h_n)
        if unbatched:
            return y[:, 0, :], h_n[:, 0, :]
        if self.batch_first:
            y = y.transpose(1, 0, 2)
        return y, h_n

    def _layer_inputs(self):
        return [self.input_size] + [self.num_directions * self.hidden_size] * (self.num_layers - 1)

    def _train_forward(self, x, h0, lengths, params, unbatched):
        """The whole sequence at once, keeping every layer's gates and states for backward."""
        T, B, _ = x.shape
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        n_threads = _engine.get_num_threads()
        # One workspace per call, carved into a saved block per layer and direction (kept for
        # backward), scratch, and the copies backward reads: x (a user may change it before
        # backward) and the parameters as they were (backward refuses ones changed since).
        sizes = [_engine.layer_workspace_size(T, B, I, H, self.reset_after, True, n_threads)
                 for I in self._layer_inputs()]
        n_saved = [s for s, _ in sizes]
        saved_total = sum(n_saved) * D
        n_scratch = max(s for _, s in sizes)
        workspace = self._training_workspace(saved_total + n_scratch + x.size
                                             + sum(v.size for v in params.values()))  # or more
        scratch = workspace[saved_total:saved_total + n_scratch]
        copies = _Carver(workspace, saved_total + n_scratch)
        h_n = np.empty((L * D, B, H), self.dtype)
        layer_input = copies.copy_of(x)
        context = {"layers": [], "lengths": lengths, "shape": (T, B), "unbatched": unbatched,
                   "scratch": scratch, "workspace": workspace,
                   "params": {k: copies.copy_of(v) for k, v in params.items()}}
        offset = 0
        for layer in range(L):
            y = np.empty((T, B, D * H), self.dtype)
            saved_blocks = []
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh = (params.get(k) for k in self._names(layer, d))
                saved = workspace[offset:offset + n_saved[layer]]
                offset += n_saved[layer]
                _engine.layer_forward(y, d * H, h_n[layer * D + d], saved, scratch, layer_input,
                                      None if h0 is None else h0[layer * D + d], w_ih, w_hh,
                                      b_ih, b_hh, lengths, self.reset_after, d == 1, True,
                                      n_threads)
                saved_blocks.append(saved)
            mask = None
            if self.dropout > 0 and layer < L - 1:
                keep = 1.0 - self.dropout
                mask = (self._rng.random(y.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
            context["layers"].append((layer_input, saved_blocks, mask))
            layer_input = y if mask is None else y * mask
        self._context = context
        self._pending.spent = False
        return y, h_n

    def _training_workspace(self, size):
        """A flat workspace of at least `size` elements for a training forward: the spare one a
        finished backward left (the GRU keeps at most one, of the size its training steps need),
        or a new one."""
        try:
            spare = self._spare_workspaces.pop()
        except IndexError:
            spare = None
        if spare is not None and spare.size >= size:
            return spare
        return np.empty(size, self.dtype)

    def _inference_blocks(self, T, B, x_in_place, with_outputs):
        """(sequences, steps) per block of an inference forward, so that the block's gates, the
        outputs between layers and any copy of its input stay within INFERENCE_BLOCK_BYTES.
        x_in_place: x is time-major and C-contiguous (a whole-batch block reads it in place)."""
        H, D, L, item = self.hidden_size, self.num_directions, self.num_layers, self.dtype.itemsize
        between = (2 if L > 2 else 1) * D * H if L > 1 else 0  # outputs between layers
        whole = 3 * H + between + (0 if x_in_place else self.input_size) \
            + (0 if with_outputs else D * H)  # with outputs, the top layer writes y in place
        if T * B * whole * item <= INFERENCE_BLOCK_BYTES:
            return B, T
        per_cell = item * (3 * H + between + D * H + self.input_size)
        cells = max(1, INFERENCE_BLOCK_BYTES // per_cell)  # (step, sequence) pairs per block
        if self.bidirectional:  # the reverse direction needs whole sequences
            return max(1, min(B, cells // T)), T
        # the per-step products stream W_hh once per block and step: keep many sequences in a
        # block and cut time, rather than the batch
        batch = min(B, max(PREFERRED_BATCH_BLOCK, cells // T))
        if 8 <= batch < B:
            batch -= batch % 8  # whole 4-row tiles of the per-step kernel
        return batch, max(1, min(T, cells // batch))

    def _inference_workspace(self, size):
        """This thread's inference workspace, shared by every GRU the thread runs and kept
        between calls (a block's worth, see INFERENCE_BLOCK_BYTES): a fresh one costs a page
        fault per 4 KB at every call, a tenth of a large forward's time."""
        key = self.dtype.char
        workspace = getattr(_thread_workspaces, key, None)
        if workspace is None or workspace.size < size:
            workspace = np.empty(size, self.dtype)
            setattr(_thread_workspaces, key, workspace)
        return workspace[:size]

    def _infer(self, x, h0, lengths, params, with_outputs):
        """Inference in blocks of the batch and, unidirectional, of time (see INFERENCE_BLOCK_BYTES):
        each time block starts from the states the previous one ended with."""
        T, B, _ = x.shape
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        n_threads = _engine.get_num_threads()
        batch, steps = self._inference_blocks(T, B, x.flags.c_contiguous and x.flags.aligned,
                                              with_outputs)
        sizes = [_engine.layer_workspace_size(steps, batch, I, H, self.reset_after, False,
                                              n_threads) for I in self._layer_inputs()]
        n_saved = max(s for s, _ in sizes)
        workspace = self._inference_workspace(n_saved + max(s for _, s in sizes))
        saved, scratch = workspace[:n_saved], workspace[n_saved:]
        y = np.empty((T, B, D * H), self.dtype) if with_outputs else None
        h_n = np.empty((L * D, B, H), self.dtype)
        whole_batch = batch == B
        # layers whose output goes to a buffer: all below the top, and the top unless it writes
        # y in place; each reads only the buffer below it, so two alternate
        writers = L - 1 + (0 if with_outputs and whole_batch else 1)
        buffers = [np.empty(steps * batch * D * H, self.dtype) for _ in range(min(2, writers))]
        for b0 in range(0, B, batch):
            b1 = min(B, b0 + batch)
            h_block = h_n[:, b0:b1] if whole_batch else np.empty((L * D, b1 - b0, H), self.dtype)
            h_start = None if h0 is None else _contiguous(h0[:, b0:b1])
            for t0 in range(0, T, steps):
                t1 = min(T, t0 + steps)
                block_lengths = None
                if lengths is not None:  # steps each sequence has in this block (0: it ended)
                    block_lengths = np.clip(lengths[b0:b1] - t0, 0, t1 - t0)
                layer_input = _contiguous(x[t0:t1, b0:b1])
                for layer in range(L):
                    shape = (t1 - t0, b1 - b0, D * H)
                    if layer == L - 1 and with_outputs and whole_batch:
                        out = y[t0:t1]  # contiguous: the engine writes the answer in place
                    else:
                        out = buffers[layer % 2][:np.prod(shape)].reshape(shape)
                    for d in range(D):
                        names = self._names(layer, d)
                        w_ih, w_hh, b_ih, b_hh = (params.get(k) for k in names)
                        if self._strips is not None:
                            w_hh = self._strips[names[1]]
                        state = layer * D + d
                        _engine.layer_forward(
                            out, d * H, h_block[state], saved, scratch, layer_input,
                            None if h_start is None else h_start[state], w_ih, w_hh, b_ih, b_hh,
                            block_lengths, self.reset_after, d == 1, False, n_threads)
                    layer_input = out
                if with_outputs and not whole_batch:
                    y[t0:t1, b0:b1] = layer_input
                h_start = h_block.copy() if t1 < T else None
            if not whole_batch:
                h_n[:, b0:b1] = h_block
        return y, h_n

    def backward(self, dy: ArrayLike,
                 dh_n: ArrayLike | None = None) -> tuple[FloatArray, FloatArray]:
        """Backpropagate through the last training-mode forward.

        dy has y's shape, dh_n h_n's (or None). Returns (dx, dh0) and adds the parameter
        gradients into `self.grads` (call `zero_grad()` to clear them). One backward per forward.
        """
        if self._strips is not None:
            raise RuntimeError(self._inference_only("backward"))
        if self._context is None:
            if getattr(self._pending, "spent", False):
                raise RuntimeError("backward was already called for the last forward; run a "
                                   "new training-mode forward before another backward")
            raise RuntimeError("backward needs a forward in training mode first (call "
                               "gru.train() and then gru(x)), in the same Python thread")
        context = self._context
        T, B = context["shape"]
        unbatched = context["unbatched"]
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        dy = self._array(dy, "dy")
        expected = ((T, D * H) if unbatched else
                    (B, T, D * H) if self.batch_first else (T, B, D * H))
        if dy.shape != expected:
            raise ValueError(f"dy must have the shape of the forward's output {expected}, "
                             f"got {dy.shape}")
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        dy = _contiguous(dy)
        dh_n = self._state(dh_n, "dh_n", B, unbatched)
        params = self._checked_params()
        changed = [k for k, v in context["params"].items() if not np.array_equal(v, params[k])]
        if changed:
            raise RuntimeError(f"parameters {changed} changed between the training forward and "
                               f"this backward, so its gradients would be wrong; run the "
                               f"forward again after changing parameters")
        self._checked_grads()
        self._context = None
        self._pending.spent = True

        n_threads = _engine.get_num_threads()
        scratch = context["scratch"]
        need = max(_engine.layer_workspace_size(T, B, I, H, self.reset_after, True, n_threads)[1]
                   for I in self._layer_inputs())
        if scratch.size < need:  # the thread count grew since the forward
            scratch = np.empty(need, self.dtype)
        dh0 = np.empty((L * D, B, H), self.dtype)
        with self._grads_lock:  # threads sharing this GRU add their gradients one at a time
            dx = self._backward_layers(context, dy, dh_n, dh0, params, scratch, n_threads)
        # nothing the caller holds views the workspace (dx, dh0 and the outputs have their own
        # memory): the next training forward may take it
        self._spare_workspaces[:] = [context["workspace"]]
        if unbatched:
            return dx[:, 0, :], dh0[:, 0, :]
        if self.batch_first:
            dx = dx.transpose(1, 0, 2)
        return dx, dh0

    def _backward_layers(self, context, dy, dh_n, dh0, params, scratch, n_threads):
        """Every layer's backward, top down; returns dx (T, B, input_size)."""
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        for layer in range(L - 1, -1, -1):
            layer_input, saved_blocks, _ = context["layers"][layer]
            dx = np.empty(layer_input.shape, self.dtype)
            for d in range(D):
                k_ih, k_hh, kb_ih, kb_hh = self._names(layer, d)
                _engine.layer_backward(
                    dx, d > 0, dh0[layer * D + d], self.grads[k_ih], self.grads[k_hh],
                    self.grads.get(kb_ih), self.grads.get(kb_hh), dy, d * H,
                    None if dh_n is None else dh_n[layer * D + d], saved_blocks[d], scratch,
                    layer_input, params[k_ih], params[k_hh], context["lengths"],
                    self.reset_after, d == 1, n_threads)
            if layer > 0:
                mask = context["layers"][layer - 1][2]
                dy = dx if mask is None else dx * mask
            else:
                dy = dx
        return dy

    # ---- streaming ------------------------------------------------------------------------------

    def step(self, x_t: ArrayLike, h: FloatArray | None = None,
             out: FloatArray | None = None) -> FloatArray:
        """One time step through all layers of a unidirectional GRU, for online use.

        x_t (B, input_size) and h (num_layers, B, hidden_size), or x_t (input_size,) and h
        (num_layers, hidden_size); h None (the default) is a zero state, as torch's hx=None.
        Returns the new state; `out` (h's shape) receives it, and may be h itself. The top
        layer's output is the returned state's last row.
        """
        layout = self._step_layout
        if layout is None:
            raise ValueError("step() runs a unidirectional GRU; this one is bidirectional")
        if h is None:
            h = self._zero_state(x_t)
        # every check happens in the engine's wrapper, in C: this runs once per time step (and
        # reads as few attributes as it can: each costs tens of nanoseconds)
        strips = self._strips
        new_h = _engine.gru_step(self.params, x_t, h, out, layout, strips, self._quantized_of)
        if new_h is None:  # a quantized weight replaced since it was quantized: quantize it
            self._refresh_quantized()
            new_h = _engine.gru_step(self.params, x_t, h, out, layout, strips, self._quantized_of)
            if new_h is None:  # replaced again, by another thread, before the step could run
                new_h = self._step_on_snapshot(x_t, h, out, layout)
        return new_h

    def _step_on_snapshot(self, x_t, h, out, layout):
        """step() on the parameters as params holds them now; a weight replaced since it was
        quantized is quantized into a private copy. For a step whose weights another thread
        replaces faster than they can be quantized in place (retrying could go on for as long as
        that thread does). Nothing of the GRU's own changes."""
        with _rounding_lock:  # strips and the values they were made from, of one moment
            params, strips = dict(self.params), dict(self._strips)
            made_from = dict(self._quantized_of)
        for name, value in made_from.items():
            if params.get(name) is not value:
                fresh, fresh_strips = quantized(self._checked_param(name, params.get(name)),
                                                format_of(strips[name]), name)
                params[name] = made_from[name] = _aligned(fresh)
                strips[name] = _aligned(fresh_strips)
        return _engine.gru_step(params, x_t, h, out, layout, strips, made_from)

    def _zero_state(self, x_t):
        """step()'s zero state for x_t: (num_layers, B, hidden_size), or (num_layers,
        hidden_size) for one unbatched row."""
        ndim = np.ndim(x_t)
        if ndim == 2:
            return np.zeros((self._num_layers, len(x_t), self._hidden_size), self._dtype)
        if ndim == 1:
            return np.zeros((self._num_layers, self._hidden_size), self._dtype)
        raise ValueError(f"step takes x_t (B, input_size) or (input_size,), got shape "
                         f"{np.shape(x_t)}")
