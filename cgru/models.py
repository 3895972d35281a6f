"""Keras-style models: `Model` (a graph of layers from inputs to outputs, Keras's functional API)
and `Sequential` (the Model of a chain), with one implementation of compile / fit / predict /
evaluate / save for both. The file format lives in `cgru.saving`.
"""
from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Sequence, overload

import numpy as np

from . import _checks
from . import callbacks as _callbacks
from . import graph as _graph
from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from . import saving as _saving
from ._fork import fork_safe_lock
from ._typing import Array, ArrayLike, FloatArray

if TYPE_CHECKING:
    from .graph import KerasTensor
    from .layers import Layer
    from .losses import Loss
    from .metrics import Metric
    from .optimizers import Optimizer

# predict() runs blocks of samples whose layer outputs take at most this many bytes
PREDICT_BLOCK_BYTES = 16 * 2**20

# taken by a model's first build (Model._build_once); builds are rare and short
_first_build = fork_safe_lock()


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("g_r_u", "gru")


class Model:
    """A model of layers called on `cgru.Input` tensors, from `inputs` to `outputs`:

        inputs = cgru.Input(shape=(None, 3))
        outputs = layers.Dense(1)(layers.GRU(16)(inputs))
        model = cgru.Model(inputs, outputs)

    inputs / outputs: one symbolic tensor or a list. The layers get their weights at once, in
    the order they are called. fit and evaluate take models of one output; predict returns a
    list when there are several.

    Args:
        seed: seeds the weights, the shuffling and the dropout masks; the same seed, data and
            calls give the same model, bit for bit.
        dtype: 'float32' (default) or 'float64'.
    """

    def __init__(self, inputs: KerasTensor | Sequence[KerasTensor] | None = None,
                 outputs: KerasTensor | Sequence[KerasTensor] | None = None, name: str = "model",
                 seed: int | None = None, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float64"):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.name = name
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.layers: list[Layer] = []
        self.built = False
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.metric_names: list[str] = []
        self.stop_training = False
        self.metadata: dict[str, Any] = {}
        self._graph = None
        self._single_input = self._single_output = True
        self._replicas = None      # during a distributed fit: the ranks (cgru.distributed)
        self._dropout_rng = None   # during a distributed fit: this rank's dropout generator
        self._init_update_lock()
        if type(self) is Model:
            if inputs is None or outputs is None:
                raise TypeError("Model(inputs, outputs): give the cgru.Input tensor(s) and the "
                                "output tensor(s) of the layers called on them")
            self._set_graph(inputs, outputs)

    def _init_update_lock(self):
        # held through each training update (forward, backward, optimizer step), and by save,
        # get_weights and set_weights: from another thread, they land between two updates, never
        # inside one; reentrant, so that code run inside an update (a custom loss, say) may call
        # them too
        self._update_lock = fork_safe_lock(reentrant=True)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_update_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_update_lock()

    # ---- structure ------------------------------------------------------------------------------

    def _set_graph(self, inputs, outputs):
        """Take the graph from inputs to outputs, name its unnamed layers, build their weights."""
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
        graph = _graph.Graph([inputs] if self._single_input else list(inputs),
                             [outputs] if self._single_output else list(outputs))
        taken = {layer.name for layer in graph.layers if layer.name is not None}
        named = [layer.name for layer in graph.layers if layer.name is not None]
        if len(named) != len(taken):
            repeated = sorted({n for n in named if named.count(n) > 1})
            raise ValueError(f"two layers are named '{repeated[0]}'; layer names must be unique")
        for layer in graph.layers:
            if layer.name is None:
                layer.name = _unique_name(_snake(type(layer).__name__), taken)
                taken.add(layer.name)
        for node in graph.nodes:
            for t in node.outputs:
                t.name = node.layer.name
        for node in graph.nodes:
            shapes = [t.shape[1:] for t in node.inputs]
            if not node.layer.built:
                node.layer.build_for(shapes, self.rng, self.dtype)
            else:
                node.layer.check_built_for(shapes, self.dtype)
        self._graph = graph
        self.layers = graph.layers
        self.built = True

    @property
    def inputs(self) -> list[KerasTensor]:
        return list(self._graph.inputs) if self._graph else []

    @property
    def outputs(self) -> list[KerasTensor]:
        return list(self._graph.outputs) if self._graph else []

    @property
    def input_shape(self) -> Any:
        """The input's shape without the batch axis (None where free); a list for several."""
        shapes = [tuple(t.shape[1:]) for t in self.inputs]
        return shapes[0] if self._single_input and shapes else shapes

    def _build_declared(self):
        """Build now if the input is declared (a Sequential's cgru.Input or input_shape)."""

    def _build_once(self, build, *args):
        """Run build(*args) unless the model is built. The first calls may come from several
        threads at once (Dask's threaded scheduler; a save or get_weights in one thread while
        another trains): one builds, the others wait and use what it built."""
        if not self.built:
            with _first_build:
                if not self.built:
                    build(*args)

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """The layer called `name` (or at position `index` of `layers`)."""
        self._build_declared()
        if (name is None) == (index is None):
            raise ValueError("get_layer: give name or index, not both and not neither")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or \
                    not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"get_layer: index must be an integer within the model's "
                                 f"{len(self.layers)} layers, got {index!r}")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r}; the layers are "
                         f"{[layer.name for layer in self.layers]}")

    @property
    def trainable_weights(self) -> dict[str, FloatArray]:
        """{'layer/param': array}: what the optimizer updates."""
        return {f"{l.name}/{k}": v for l in self.layers for k, v in l.trainable.items()}

    @property
    def _gradients(self):
        return {f"{l.name}/{k}": l.grads[k] for l in self.layers for k in l.trainable}

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self) -> list[Array]:
        """Every layer's weights, in Keras's layout and order (copies, taken between two
        training updates when another thread trains the model)."""
        self._build_declared()
        with self._update_lock:
            return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: Iterable[ArrayLike]) -> None:
        """Set weights from a list like get_weights() returns; checks all before changing any."""
        self._require_built("set_weights")
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"set_weights: the model takes {expected} arrays, got {len(weights)}")

        def assign(arrays):
            i = 0
            for layer in self.layers:
                n = len(layer.get_weights())
                layer.set_weights(arrays[i:i + n])
                i += n

        with self._update_lock:  # reentrant: get_weights takes it again
            before = self.get_weights()
            try:
                assign(weights)
            except Exception:
                assign(before)
                raise

    def reset_states(self) -> None:
        """Clear the kept states of every stateful GRU (Keras's model.reset_states())."""
        for layer in self.layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()

    @property
    def _stateful(self):
        return any(getattr(getattr(l, "layer", l), "stateful", False) for l in self.layers)

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """Print (and return) the layers, their output shapes and parameter counts."""
        self._require_built("summary")
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for node in self._graph.nodes:
            layer = node.layer
            kind = type(layer).__name__
            if isinstance(layer, (_layers.Bidirectional, _layers.TimeDistributed)):
                kind = f"{kind}({type(layer.layer).__name__})"
            shapes = [t.shape for t in node.outputs]
            shape = str(shapes[0]) if len(shapes) == 1 else ", ".join(map(str, shapes))
            rows.append((f"{layer.name} ({kind})", shape, f"{layer.count_params():,}"))
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
        if not self.built:
            raise RuntimeError(f"{what} needs a built model: call model.build((None, time, "
                               f"features)), or fit/predict once, or start with cgru.Input")

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON values (layers, graph); `Model.from_config` rebuilds it
        with fresh weights."""
        self._require_built("get_config")
        return _saving.architecture(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        """A model of the architecture `config` (from get_config), with fresh weights."""
        return _saving.from_architecture(config)

    # ---- running --------------------------------------------------------------------------------

    def _forward(self, xs, training, dropout=None):
        """(outputs, masks) through the graph; training keeps what backward needs and, unless
        dropout=False, applies dropout (layers get no generator when dropout is off)."""
        rng = None
        if training if dropout is None else dropout:
            rng = self.rng if self._dropout_rng is None else self._dropout_rng
        return self._graph.forward(xs, training, rng)

    def _inputs(self, x, name="x"):
        """The model's inputs as a list of arrays, checked against the input tensors: real values
        cast to the model's dtype, or integer indices for an input an Embedding reads."""
        self._build_once(self._build_from_data, x, name)
        values = list(x) if not self._single_input else [x]
        if not self._single_input and (not isinstance(x, (list, tuple)) or
                                       len(values) != len(self.inputs)):
            raise ValueError(f"{name} must be a list of {len(self.inputs)} arrays, one per "
                             f"model input, got {type(x).__name__}")
        arrays, n = [], None
        for value, tensor in zip(values, self.inputs):
            what = name if self._single_input else f"{name}[{len(arrays)}]"
            a = _input_array(value, tensor, self.dtype, what)
            if n is not None and len(a) != n:
                raise ValueError(f"{name}: every input must hold the same number of samples, got "
                                 f"{n} and {len(a)}")
            n = len(a)
            arrays.append(a)
        return arrays

    def _build_from_data(self, x, name):
        raise RuntimeError("a Model is built when it is made")

    def __call__(self, x: ArrayLike | Sequence[ArrayLike], training: bool = False) -> Any:
        outs, _ = self._forward(self._inputs(x), training)
        return outs[0] if self._single_output else outs

    def predict(self, x: ArrayLike | Sequence[ArrayLike], batch_size: int = 32,
                verbose: int = 0) -> Any:
        """Model outputs for x in inference mode.

        The model runs in blocks of samples chosen for speed and bounded memory
        (PREDICT_BLOCK_BYTES of layer outputs per block; each GRU bounds its own working memory):
        `batch_size` is accepted as in Keras but changes neither the blocks nor the result, except
        for stateful models, which run batches of `batch_size` in order, as Keras does.
        verbose=1 shows a progress bar over the blocks."""
        batch_size = _checks.positive_int(batch_size, "batch_size", "predict")
        _check_verbose(verbose)
        xs = self._inputs(x)
        block = batch_size if self._stateful else self._predict_block(xs)
        n = len(xs[0])
        starts = range(0, n, block)
        bar = _progress_bar(len(starts), "predict") if verbose == 1 else None
        parts = []
        for start in starts:
            outs, _ = self._forward([a[start:start + block] for a in xs], False)
            parts.append(outs)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        joined = [p[0] if len(parts) == 1 else np.concatenate(p, axis=0)
                  for p in zip(*parts)]
        return joined[0] if self._single_output else joined

    def _predict_block(self, xs):
        """Samples per predict block: every layer's outputs for the block within
        PREDICT_BLOCK_BYTES (free sizes counted as in x)."""
        per_sample = sum(a[0].nbytes for a in xs)
        known = {id(t): a.shape[1:] for t, a in zip(self._graph.inputs, xs)}
        for node in self._graph.nodes:
            first = known.get(id(node.inputs[0]))
            for t in node.outputs:
                shape = [s if s is not None else (first[i] if first is not None and
                                                  i < len(first) else 1)
                         for i, s in enumerate(t.shape[1:])]
                known[id(t)] = tuple(shape)
                per_sample += int(np.prod(shape)) * self.dtype.itemsize
        return max(1, PREDICT_BLOCK_BYTES // max(1, per_sample))

    def compile(self, optimizer: str | Optimizer = "rmsprop", loss: str | Loss | None = None,
                metrics: Sequence[str | Metric] | None = None) -> None:
        """Choose the optimizer (name or instance), the loss (name or instance) and metrics."""
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='mse'")
        self.optimizer = _optimizers.get(optimizer)
        self.loss = _losses.get(loss)
        metrics = list(metrics or [])
        for m in metrics:
            _metrics.get(m, self.loss)  # fail now, not at the first epoch
        self.metric_names = [m if isinstance(m, str) else m.name for m in metrics]

    # ---- reduced precision ----------------------------------------------------------------------

    def quantize(self, mode: str) -> None:
        """Store the weights of every GRU layer (Bidirectional ones too) in `mode` ("bfloat16":
        the recurrent weights; "bfloat16_all": the input weights too; "int8": the recurrent
        weights in int8), in place, as Keras 3's `Model.quantize(mode)`; see
        `cgru.GRU.quantize`. The model then predicts and evaluates, and refuses to train. Saved
        models keep it."""
        self._require_built("quantize")
        targets = [layer for layer in self.layers if hasattr(layer, "quantize")]
        if not targets:
            raise ValueError(f"quantize: this model has no GRU layer to quantize (layers: "
                             f"{[layer.name for layer in self.layers]})")
        quantized = [layer.name for layer in targets if layer.quantized is not None]
        if quantized:
            raise ValueError(f"quantize: layers {quantized} are already quantized")
        for layer in targets:
            layer.quantize(mode)

    def _require_trainable(self, what):
        quantized = [layer.name for layer in self.layers
                     if getattr(layer, "quantized", None) is not None]
        if quantized:
            raise RuntimeError(f"{what}: layers {quantized} are quantized and run inference only "
                               f"(predict, evaluate); train a float32 model and quantize it "
                               f"afterwards")

    def _require_compiled(self, what):
        if self.loss is None:
            raise RuntimeError(f"{what} needs a compiled model: call model.compile(optimizer, "
                               f"loss) first")
        if not self._single_output:
            raise ValueError(f"{what} trains and scores models of one output; this model has "
                             f"{len(self.outputs)}")

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

    def _weights(self, sample_weight, class_weight, y, n, name="sample_weight"):
        """Per-sample (or per-step) loss weights from sample_weight and class_weight (their
        product when both are given), or None."""
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.ndim not in (1, 2) or weights.shape[0] != n or \
                    not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError(f"{name} must hold one finite weight >= 0 per sample (shape "
                                 f"({n},)) or per sample and step ({n}, time), got shape "
                                 f"{weights.shape}")
        if class_weight is not None:
            per_class = _class_weights(class_weight, y, self.loss)
            weights = per_class if weights is None else \
                _broadcast_weights(weights, per_class.shape) * per_class
        return weights

    def train_on_batch(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike,
                       sample_weight: ArrayLike | None = None,
                       class_weight: dict[int, float] | None = None) -> float:
        """One optimizer update on one batch; returns the batch's loss (before the update)."""
        self._require_compiled("train_on_batch")
        self._require_trainable("train_on_batch")
        xs = self._inputs(x)
        y = self._targets(y, len(xs[0]))
        weights = self._weights(sample_weight, class_weight, y, len(y))
        return self._train_step(xs, y, weights)[0]

    def gradients(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike,
                  training: bool = True) -> tuple[float, dict[str, FloatArray]]:
        """(loss, {'layer/param': gradient}) for one batch, without updating anything.
        training=True applies dropout as fit does."""
        self._require_compiled("gradients")
        self._require_trainable("gradients")
        xs = self._inputs(x)
        y = self._targets(y, len(xs[0]))
        with self._update_lock:  # the gradients buffers are the training updates' own
            loss, _, _ = self._backpropagate(xs, y, None, dropout=training)
            return loss, {k: g.copy() for k, g in self._gradients.items()}

    def _loss(self, y, out, mask, weights, with_gradient):
        """The batch's loss (and d loss / d out) as Keras reduces it: the mean over positions;
        with a mask, masked positions weigh 0 and the mean is over the valid ones; sample
        weights multiply each position's loss (the mean stays over positions)."""
        if mask is not None and out.ndim == 2:
            mask = None  # the output has no time axis: the mask stayed behind
        if mask is None and weights is None:
            loss = self.loss(y, out)
            return loss, (self.loss.gradient(y, out) if with_gradient else None)
        y_true, pred = self.loss._prepare(y, out)
        positions = pred.size // pred.shape[-1]
        per_position_scale = positions / self.loss._count(pred)  # 1/units for element-wise
        per_position = self.loss._pointwise(y_true, pred).sum(axis=-1) * per_position_scale
        w = np.ones(per_position.shape) if weights is None else \
            _broadcast_weights(weights, per_position.shape)
        count = positions
        if mask is not None:
            w = w * mask
            count = int(mask.sum())
        if count == 0:
            return 0.0, (np.zeros_like(pred) if with_gradient else None)
        loss = float(np.sum(per_position * w) / count)
        if not with_gradient:
            return loss, None
        grad = self.loss._pointwise_gradient(y_true, pred) * \
            (per_position_scale * w / count)[..., None]
        return loss, grad.astype(pred.dtype, copy=False)

    def _backpropagate(self, xs, y, weights, dropout=True):
        """Forward keeping what backward needs, the loss, and backward into the layers' grads.
        Returns (loss, output, output mask)."""
        outs, masks = self._forward(xs, True, dropout)
        loss, grad = self._loss(y, outs[0], masks[0], weights, True)
        for layer in self.layers:
            layer.zero_grad()
        self._graph.backward([grad])
        return loss, outs[0], masks[0]

    def _train_step(self, xs, y, weights=None):
        with self._update_lock:
            loss, out, mask = self._backpropagate(xs, y, weights)
            self.optimizer.apply(self.trainable_weights, self._gradients)
        return loss, out, mask

    def _train_share(self, xs, y, weights, batch, shuffle, replicas, metrics):
        """One update from the global batch `batch` (indices): this rank's share forward and
        backward, the gradients summed over the ranks, the same update everywhere. Returns the
        global batch's loss."""
        mine = replicas.share(batch)
        loss = 0.0
        with self._update_lock:
            if len(mine):
                xb, yb, wb = _take(xs, y, weights, mine, shuffle)
                loss, out, mask = self._backpropagate(xb, yb, wb)
                _update_metrics(metrics, yb, out, mask)
            else:  # a short last batch left this rank nothing: it adds zeros
                for layer in self.layers:
                    layer.zero_grad()
            loss = replicas.sum_gradients(self._gradients, len(mine) / len(batch), loss)
            self.optimizer.apply(self.trainable_weights, self._gradients)
        return loss

    def _writes_files(self):
        """False on the ranks other than 0 during a distributed fit: checkpoints are rank 0's."""
        return self._replicas is None or self._replicas.is_root

    @overload
    def evaluate(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike, batch_size: int = ...,
                 verbose: int = ..., sample_weight: ArrayLike | None = ..., *,
                 return_dict: Literal[True]) -> dict[str, float]: ...

    @overload
    def evaluate(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike, batch_size: int = ...,
                 verbose: int = ..., sample_weight: ArrayLike | None = ...,
                 return_dict: Literal[False] = ...) -> float | list[float]: ...

    @overload
    def evaluate(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike, batch_size: int = ...,
                 verbose: int = ..., sample_weight: ArrayLike | None = ...,
                 return_dict: bool = ...) -> float | list[float] | dict[str, float]: ...

    def evaluate(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike, batch_size: int = 32,
                 verbose: int = 0, sample_weight: ArrayLike | None = None,
                 return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """The loss and metrics over x, y in inference mode: with return_dict=True a dict
        {'loss': ..., metric: ...}; else, as Keras, the loss alone when there are no metrics, or
        the list [loss, metric, ...]."""
        self._require_compiled("evaluate")
        xs = self._inputs(x)
        y = self._targets(y, len(xs[0]))
        weights = self._weights(sample_weight, None, y, len(y))
        _check_verbose(verbose)
        logs = self._evaluate(xs, y, weights, _checks.positive_int(batch_size, "batch_size",
                                                                    "evaluate"))
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    def _evaluate(self, xs, y, weights, batch_size, replicas=None):
        """{'loss': ..., metric: ...} over xs, y; with `replicas`, each rank evaluates its share
        and the totals are summed over the ranks."""
        metrics = [_metrics.get(m, self.loss) for m in self.metric_names]
        if replicas is not None:
            start, stop = replicas.share_range(len(y))
            xs, y = [a[start:stop] for a in xs], y[start:stop]
            weights = None if weights is None else weights[start:stop]
        total, count = 0.0, len(y)
        for i in range(0, len(y), batch_size):
            piece = slice(i, i + batch_size)
            outs, masks = self._forward([a[piece] for a in xs], False)
            w = None if weights is None else weights[piece]
            loss, _ = self._loss(y[piece], outs[0], masks[0], w, False)
            total += loss * len(outs[0])
            _update_metrics(metrics, y[piece], outs[0], masks[0])
        if replicas is not None:
            total, count = replicas.sum_metrics(metrics, (total, count))
        return {"loss": total / count, **{m.name: m.result() for m in metrics}}

    def fit(self, x: ArrayLike | Sequence[ArrayLike], y: ArrayLike, batch_size: int = 32,
            epochs: int = 1, verbose: int = 1,
            callbacks: Sequence[_callbacks.Callback] | None = None,
            validation_split: float = 0.0, validation_data: Sequence[Any] | None = None,
            shuffle: bool = True, initial_epoch: int = 0, sample_weight: ArrayLike | None = None,
            class_weight: dict[int, float] | None = None,
            distributed: bool = False) -> _callbacks.History:
        """Train for `epochs` passes over (x, y); returns a `cgru.callbacks.History`.

        validation_split takes the last fraction of the samples (before shuffling, as Keras);
        validation_data=(x_val, y_val) gives them explicitly. verbose: 0 silent, 1 a progress bar
        per epoch (tqdm), 2 one line per epoch. sample_weight (per sample, or per sample and
        step) and class_weight ({class: weight}) weigh each position's loss, as Keras does.

        distributed=True: synchronous data-parallel training over MPI. Run the script under
        `mpiexec -n N`, every rank passing the same data; `batch_size` is the global batch,
        shared between the ranks, and every rank ends with the weights one process would have
        reached on the same batches (see `cgru.distributed`). Progress is shown on rank 0 only.
        Outside mpiexec it trains in this process alone.
        """
        self._require_compiled("fit")
        self._require_trainable("fit")
        xs = self._inputs(x)
        n_all = len(xs[0])
        y = self._targets(y, n_all)
        batch_size = _checks.positive_int(batch_size, "batch_size", "fit")
        epochs = _checks.positive_int(epochs, "epochs", "fit")
        _check_verbose(verbose)
        weights = self._weights(sample_weight, class_weight, y, n_all)
        if validation_data is not None and validation_split:
            raise ValueError("give validation_split or validation_data, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (x_val, y_val) or a triple "
                                 "(x_val, y_val, sample_weight_val)")
            xs_val = self._inputs(validation_data[0], "validation_data x")
            y_val = self._targets(validation_data[1], len(xs_val[0]), "validation_data y")
            w_val = None if len(validation_data) == 2 else self._weights(
                validation_data[2], None, y_val, len(y_val), "validation_data sample_weight")
        elif validation_split:
            validation_split = _checks.number(validation_split, "validation_split", "fit", low=0,
                                              high=1, low_open=True, high_open=True)
            n_val = int(n_all * validation_split)
            if n_val == 0 or n_val == n_all:
                raise ValueError(f"validation_split={validation_split} of {n_all} samples leaves "
                                 f"no training or no validation samples")
            xs, xs_val = [a[:-n_val] for a in xs], [a[-n_val:] for a in xs]
            y, y_val = y[:-n_val], y[-n_val:]
            weights, w_val = (None, None) if weights is None else (weights[:-n_val],
                                                                   weights[-n_val:])
        else:
            xs_val = y_val = w_val = None
        named = [("x", a) for a in xs] + [("y", y)] + \
            ([("validation x", a) for a in xs_val] + [("validation y", y_val)]
             if xs_val is not None else [])
        for name, arr in named:
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0]
                raise ValueError(f"{name} holds NaN or infinite values (first at index "
                                 f"{tuple(int(i) for i in bad)}); fill or drop them before fit")
        data = (xs, y, weights, xs_val, y_val, w_val)
        replicas = None
        if distributed:
            from . import distributed as _distributed
            replicas = _distributed.Replicas()
            if replicas.size == 1:
                replicas = None
        if replicas is None:
            return self._fit(data, batch_size, epochs, verbose, callbacks, shuffle,
                             initial_epoch, None)
        arrays = {f"x[{i}]": a for i, a in enumerate(xs)}
        arrays.update({f"validation x[{i}]": a for i, a in enumerate(xs_val or [])})
        replicas.check_same_call(
            {**arrays, "y": y, "validation y": y_val},
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
            return self._fit(data, batch_size, epochs, verbose if replicas.is_root else 0,
                             callbacks, shuffle, initial_epoch, replicas)
        except DriftError:
            raise  # raised on every rank at once: nobody waits
        except BaseException as error:
            replicas.abort(error)
            raise
        finally:
            self._replicas = self._dropout_rng = None

    def _fit(self, data, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch,
             replicas):
        """fit's loop over epochs and batches, on checked arrays; with `replicas`, this rank
        trains on its share of every batch and the ranks sum gradients and totals."""
        xs, y, weights, xs_val, y_val, w_val = data
        history = _callbacks.History()
        all_callbacks = list(callbacks or []) + [history]  # last, as Keras: it logs what others add
        for cb in all_callbacks:
            cb.set_model(self)
        self.stop_training = False
        for cb in all_callbacks:
            cb.on_train_begin({})
        n = len(y)
        n_batches = math.ceil(n / batch_size)
        logs = {}
        for epoch in range(initial_epoch, epochs):
            for cb in all_callbacks:
                cb.on_epoch_begin(epoch, {})
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            metrics = [_metrics.get(m, self.loss) for m in self.metric_names]
            bar = _progress_bar(n_batches, f"Epoch {epoch + 1}/{epochs}") if verbose == 1 \
                else None
            loss_sum, seen = 0.0, 0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                for cb in all_callbacks:
                    cb.on_train_batch_begin(b, {})
                if replicas is None:
                    xb, yb, wb = _take(xs, y, weights, idx, shuffle)
                    loss, out, mask = self._train_step(xb, yb, wb)
                    _update_metrics(metrics, yb, out, mask)
                else:
                    loss = self._train_share(xs, y, weights, idx, shuffle, replicas, metrics)
                loss_sum += loss * len(idx)
                seen += len(idx)
                for cb in all_callbacks:
                    cb.on_train_batch_end(b, {"loss": loss})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4g}", refresh=False)
                # a stop asked after a batch ends the epoch here; in a distributed fit the
                # ranks agree on stopping at the epoch's end instead
                if self.stop_training and replicas is None:
                    break
            if replicas is not None:
                replicas.sum_metrics(metrics)
                replicas.check_in_sync(self, epoch)
            logs = {"loss": loss_sum / seen, **{m.name: m.result() for m in metrics}}
            if xs_val is not None:
                val = self._evaluate(xs_val, y_val, w_val, batch_size, replicas)
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

    def save(self, path: str | os.PathLike[str], include_optimizer: bool = True,
             metadata: dict[str, Any] | None = None) -> None:
        """Write architecture, weights and (by default) optimizer state to one .npz file,
        atomically (see cgru.saving). `metadata`: a dict of JSON values kept with the model.
        The path must end in .npz (or have no extension): cgru writes its own format only."""
        self._require_built("save")
        _saving.save_model(self, path, include_optimizer, metadata)


class Sequential(Model):
    """A stack of layers, each feeding the next. Input (batch, time, features), or integer
    indices (batch, time) when the first layer is an Embedding.

    Args:
        layers: a list of layers (`cgru.layers.*`), optionally starting with `cgru.Input(shape)`
            (or give the first layer Keras's `input_shape=`).
        seed: seeds the weights, the shuffling and the dropout masks; the same seed, data and
            calls give the same model, bit for bit.
        dtype: 'float32' (default) or 'float64'.

    Unless declared, the input's time axis stays free: a model trained on sequences of 12 steps
    scores sequences of 20.
    """

    def __init__(self, layers: Iterable[Layer | KerasTensor] | None = None,
                 name: str = "sequential", seed: int | None = None,
                 dtype: str = "float32") -> None:
        super().__init__(name=name, seed=seed, dtype=dtype)
        self._declared_shape = None
        self._declared_batch = None
        self._declared_kind = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Layer | KerasTensor) -> None:
        if _graph.is_symbolic(layer):
            if not isinstance(layer.node, _graph.InputNode):
                raise TypeError("Sequential.add takes layers, or a cgru.Input first; got the "
                                "output of a layer call (build a cgru.Model for graphs)")
            if self.layers or self._declared_shape is not None:
                raise ValueError("Input must come first in a Sequential")
            self._declared_shape = layer.node.shape
            self._declared_batch = layer.node.batch_size
            self._declared_kind = layer.node.kind
            return
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add takes a cgru.layers layer, got "
                            f"{type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if not self.layers and self._declared_shape is None and \
                layer.declared_input_shape is not None:
            self._declared_shape = layer.declared_input_shape
            self._declared_batch = layer.declared_batch_size
        taken = {l.name for l in self.layers}
        if layer.name is None:
            layer.name = _unique_name(_snake(type(layer).__name__), taken)
        elif layer.name in taken:
            raise ValueError(f"two layers are named '{layer.name}'; layer names must be unique")
        self.layers.append(layer)

    @property
    def input_shape(self) -> Any:
        if self.built:
            return tuple(self._graph.inputs[0].shape[1:])
        return self._declared_shape

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create every layer's weights for inputs of `input_shape` = (batch, time, features)
        (batch and time may be None; (batch, time) for an Embedding's indices)."""
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = tuple(input_shape)[1:]
        reads_indices = isinstance(self.layers[0], _layers.Embedding)
        if not shape or (shape[-1] is None and not reads_indices):
            raise ValueError(f"input_shape must be (batch, time, features) with features given, "
                             f"got {tuple(input_shape)}")
        kind = self._declared_kind or ("int" if reads_indices else "float")
        tensor = _graph.Input(shape, batch_size=self._declared_batch,
                              dtype="int64" if kind == "int" else None, name="input_layer")
        inputs = out = tensor
        for layer in self.layers:
            if isinstance(out, list):
                raise ValueError(f"layer '{layer.name}' follows a layer with several outputs "
                                 f"(return_state=True); use a cgru.Model to route them")
            out = layer._symbolic_call([out])
        self._set_graph(inputs, out)

    def _build_from_data(self, x, name):
        """Build for the first data seen: the declared input shape, else x's features with the
        time axis free."""
        if self._declared_shape is not None:
            self.build((None,) + tuple(self._declared_shape))
            return
        a = np.asarray(x)
        if a.ndim < 2:
            raise ValueError(f"{name} must be (batch, time, features), got shape {a.shape}")
        if isinstance(self.layers[0] if self.layers else None, _layers.Embedding):
            self.build((None,) * a.ndim)
        else:
            self.build((None,) * (a.ndim - 1) + (a.shape[-1],))

    # Fix (tests/test_functional.py::test_stateful_gru_one_step_at_a_time_...): as in Keras,
    # a Sequential whose input is declared is built before any data, so that
    # model.get_layer(name).set_weights(...) and model.get_weights() work (they failed with
    # "TypeError: 'NoneType' object is not subscriptable" from the unbuilt layer).
    def _build_declared(self):
        if not self.built and self._declared_shape is not None and self.layers:
            self._build_once(self.build, (None,) + tuple(self._declared_shape))  # cgru.Input

    def _require_built(self, what):
        self._build_declared()
        super()._require_built(what)


def load_model(path: str | os.PathLike[str], compile: bool = True) -> Model:
    """Read a model written by `save` (see cgru.saving): a Sequential or a Model. Runs no code
    from the file; a damaged, foreign or crafted file raises ValueError naming the file and the
    cause (a missing file, FileNotFoundError). compile=False skips the optimizer, loss and
    metrics."""
    return _saving.load_model(path, compile)


# ---- helpers ------------------------------------------------------------------------------------

def _unique_name(base, taken):
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _input_array(value, tensor, dtype, name):
    """One model input: real values in `dtype`, or integer indices for an 'int' input; its rank
    and declared sizes checked."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    declared = tuple(tensor.shape[1:])
    if arr.ndim != len(declared) + 1:
        layout = "(batch, time, features)" if len(declared) == 2 else \
            f"(batch, {', '.join('?' if s is None else str(s) for s in declared)})"
        raise ValueError(f"{name} must be {layout}, got shape {arr.shape}")
    if arr.shape[0] == 0 or (arr.ndim > 1 and arr.shape[1] == 0):
        raise ValueError(f"{name} must hold at least one sequence of one step, got shape "
                         f"{arr.shape}")
    if not _shape_fits(declared, arr.shape[1:]):
        raise ValueError(f"{name} must have shape (batch, "
                         f"{', '.join(map(str, declared))}), got {arr.shape}")
    if tensor.kind == "int":
        if np.issubdtype(arr.dtype, np.integer):
            return np.ascontiguousarray(arr, dtype=np.int64)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer indices (an Embedding reads it); it "
                             f"holds non-integer values")
        return np.ascontiguousarray(arr, dtype=np.int64)
    return np.ascontiguousarray(arr, dtype=dtype)


def _update_metrics(metrics, y, out, mask):
    """Metrics over the valid positions (every position without a mask)."""
    if not metrics:
        return
    if mask is not None and out.ndim == 3:
        labels = np.asarray(y)
        y = labels[mask] if labels.shape[:2] == mask.shape else labels
        out = out[mask]
    for m in metrics:
        m.update(y, out)


def _class_weights(class_weight, y, loss):
    """Per-position weights from {class index: weight} and the targets' classes: integer labels
    (sparse), the argmax of one-hot targets, or 0/1 targets of one output."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(f"class_weight must be a dict {{class index: weight}}, got "
                         f"{class_weight!r:.80}")
    labels = np.asarray(y)
    if isinstance(loss, _losses.SparseCategoricalCrossentropy):
        classes = labels
    elif labels.ndim >= 2 and labels.shape[-1] > 1:
        classes = np.argmax(labels, axis=-1)
    else:
        classes = np.round(labels).reshape(labels.shape[:1] + labels.shape[1:-1]
                                           if labels.ndim >= 2 else labels.shape)
    classes = classes.astype(np.int64)
    if classes.ndim > 2:
        raise ValueError("class_weight is not supported for targets with more than a time axis")
    table = {}
    for k, v in class_weight.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or \
                isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or \
                not np.isfinite(v) or v < 0:
            raise ValueError(f"class_weight must map class indices to finite weights >= 0, got "
                             f"{k!r}: {v!r}")
        table[int(k)] = float(v)
    # Fix (tests/test_functional.py::test_class_weight_...): a class class_weight does not
    # name weighs 1, as in Keras 3 (data_adapter_utils.class_weight_to_sample_weights); this
    # raised a ValueError, so Keras code giving only the rare class's weight did not run.
    if classes.size and classes.min() < 0:
        raise ValueError(f"class_weight: y holds negative class {int(classes.min())}")
    lookup = np.ones(max(max(table), int(classes.max(initial=0))) + 1)
    for k, v in table.items():
        if k >= 0:
            lookup[k] = v
    return lookup[classes]


def _broadcast_weights(weights, shape):
    """(batch,) weights against (batch, time) positions, or as given."""
    weights = np.asarray(weights, dtype=np.float64)
    # Fix (tests/test_functional.py::test_weights_with_a_trailing_axis_of_one): (batch, 1)
    # sample weights, and class weights from (batch, 1) sparse labels, weigh (batch,) losses as
    # in Keras; they raised "sample_weight of shape (n, 1) does not fit".
    if weights.shape == tuple(shape) + (1,):
        weights = weights[..., 0]
    if weights.shape == tuple(shape):
        return weights
    if weights.ndim == 1 and len(shape) >= 1 and weights.shape[0] == shape[0]:
        return weights.reshape((-1,) + (1,) * (len(shape) - 1)) * np.ones(shape)
    raise ValueError(f"sample_weight of shape {weights.shape} does not fit the loss's "
                     f"positions {tuple(shape)}")


def _shape_fits(declared, actual):
    return len(declared) == len(actual) and all(d is None or d == a
                                                for d, a in zip(declared, actual))


def _take(xs, y, weights, idx, shuffled):
    """The samples idx of every input, y and the weights: gathered when shuffled, else the slice
    idx spans."""
    pick = idx if shuffled else slice(idx[0], idx[-1] + 1)
    return [a[pick] for a in xs], y[pick], None if weights is None else weights[pick]


def _check_verbose(verbose):
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")


def _progress_bar(total, description):
    from tqdm import tqdm  # imported here: importing cgru does not import tqdm
    return tqdm(total=total, desc=description, unit="batch", leave=True, dynamic_ncols=True)
