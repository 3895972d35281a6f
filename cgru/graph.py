"""Layer graphs: symbolic tensors (`cgru.Input`, and what calling a layer on one returns), and
how a model runs a graph.

    inputs = cgru.Input(shape=(None, 3))           # (batch, time, features), time free
    h = layers.GRU(32, return_sequences=True)(inputs)
    outputs = layers.TimeDistributed(layers.Dense(1))(h)
    model = cgru.Model(inputs, outputs)

A `KerasTensor` knows its shape (batch axis first, None where free), its dtype kind and the
`Node` (one call of a layer) that makes it. A `Graph` collects the nodes between given inputs
and outputs in an order where every node comes after the nodes it reads (Keras's "topological
order"), runs them forward keeping each tensor's value and mask, and backward in reverse order,
summing the gradients of a tensor read by several nodes.

A layer calls `forward_arrays(inputs, masks, training, rng)` with lists (one entry per input
tensor) and returns a list (one per output tensor); `backward_arrays(d_outputs)` takes a list
(None for an output that reached no loss) and returns one gradient per input (None for inputs
that take none, such as integer indices); `output_masks(inputs, masks)` says each output's mask
(a (batch, time) boolean array, or None).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import numpy.typing as npt


class KerasTensor:
    """A symbolic tensor: shape (batch first, None where free), dtype kind ('float' or 'int'),
    and the node that produces it (its `index`-th output)."""

    def __init__(self, shape: Iterable[int | None], kind: str, node: InputNode | Node,
                 index: int, name: str | None) -> None:
        self.shape: tuple[int | None, ...] = tuple(shape)
        self.kind = kind
        self.node = node
        self.index = index
        self.name = name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, kind={self.kind!r}, name={self.name!r}>"


class InputNode:
    """Where a graph starts: `cgru.Input(...)`."""

    def __init__(self, shape, batch_size, kind, name):
        self.shape = tuple(shape)          # without the batch axis
        self.batch_size = batch_size
        self.kind = kind
        self.name = name
        self.inputs = []
        self.layer = None
        self.outputs = [KerasTensor((batch_size,) + self.shape, kind, self, 0, name)]


_input_count = [0]  # Inputs made so far: their default names (input_layer, input_layer_1, ...)


def Input(shape: int | Iterable[int | None], batch_size: int | None = None,
          dtype: npt.DTypeLike | None = None, name: str | None = None) -> KerasTensor:
    """A symbolic input of `shape` (without the batch axis; None for a free size, e.g. (None, 3)
    for sequences of any length with 3 features, (None,) for token indices): the start of a
    `cgru.Model`, or the first entry of a `cgru.Sequential`. dtype: None or a float dtype for
    real values, an integer dtype ('int32', 'int64') for indices (what an Embedding reads).
    batch_size fixes the batch (needed by stateful GRUs)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"Input: shape must be a tuple of sizes, got {shape!r}") from None
    if not shape or not all(s is None or (isinstance(s, (int, np.integer))
                                          and not isinstance(s, bool) and s > 0) for s in shape):
        raise ValueError(f"Input: shape must be a tuple of positive sizes (None for any), got "
                         f"{shape!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or
                                   batch_size < 1):
        raise ValueError(f"Input: batch_size must be None or an integer >= 1, got "
                         f"{batch_size!r}")
    kind = "float"
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"Input: dtype must be a NumPy dtype name, got {dtype!r}") from None
        if np.issubdtype(dt, np.integer):
            kind = "int"
        elif not np.issubdtype(dt, np.floating):
            raise ValueError(f"Input: dtype must be a float or integer dtype, got {dtype!r}")
    if name is None:
        name = "input_layer" + (f"_{_input_count[0]}" if _input_count[0] else "")
        _input_count[0] += 1
    elif not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"Input: name must be a non-empty string without '/', got {name!r}")
    node = InputNode(tuple(None if s is None else int(s) for s in shape),
                     None if batch_size is None else int(batch_size), kind, name)
    return node.outputs[0]


class Node:
    """One call of `layer` on the tensors `inputs` (a list), making `len(output_shapes)` outputs."""

    def __init__(self, layer, inputs, output_shapes, output_kinds):
        self.layer = layer
        self.inputs = list(inputs)
        self.outputs = [KerasTensor(shape, kind, self, i, layer.name)
                        for i, (shape, kind) in enumerate(zip(output_shapes, output_kinds))]


def is_symbolic(value):
    return isinstance(value, KerasTensor)


class Graph:
    """The layer calls between `inputs` and `outputs` (lists of KerasTensor), ready to run."""

    def __init__(self, inputs, outputs):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        for what, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not tensors:
                raise ValueError(f"Model: {what} must name at least one tensor")
            for t in tensors:
                if not is_symbolic(t):
                    raise TypeError(f"Model: {what} must be symbolic tensors (from cgru.Input "
                                    f"and layer calls), got {type(t).__name__}")
        for t in self.inputs:
            if not isinstance(t.node, InputNode):
                raise ValueError(f"Model: inputs must come from cgru.Input; {t!r} is the output "
                                 f"of layer '{t.node.layer.name}'")
        if len({id(t) for t in self.inputs}) != len(self.inputs):
            raise ValueError("Model: an input tensor appears twice in inputs")
        self.nodes = self._ordered_nodes()
        layers = [node.layer for node in self.nodes]
        seen = set()
        for layer in layers:
            if id(layer) in seen:
                raise ValueError(f"Model: layer '{layer.name}' is called twice in the graph; "
                                 f"cgru runs each layer once per model (make a second layer)")
            seen.add(id(layer))
        self.layers = layers

    def _ordered_nodes(self):
        """Every node the outputs depend on, each after its inputs' nodes; refuses a graph that
        needs an Input not in `inputs`, and an input the outputs do not depend on."""
        given = {id(t.node) for t in self.inputs}
        order, state = [], {}  # state: 1 visiting, 2 done

        def visit(node):
            if state.get(id(node)) == 2:
                return
            if isinstance(node, InputNode):
                if id(node) not in given:
                    raise ValueError(f"Model: the outputs depend on the Input '{node.name}' "
                                     f"{node.outputs[0].shape}, which is not in inputs; pass "
                                     f"it in inputs")
                state[id(node)] = 2
                return
            state[id(node)] = 1
            for t in node.inputs:
                visit(t.node)
            state[id(node)] = 2
            order.append(node)

        for t in self.outputs:
            visit(t.node)
        unused = [t for t in self.inputs if state.get(id(t.node)) != 2]
        if unused:
            raise ValueError(f"Model: input '{unused[0].name}' {unused[0].shape} is disconnected: "
                             f"none of the outputs depends on it; remove it from inputs or "
                             f"connect it")
        return order

    # ---- running ------------------------------------------------------------------------------

    def forward(self, arrays, training, rng):
        """(output values, output masks) for input `arrays` (a list, one per input)."""
        values = {id(t): a for t, a in zip(self.inputs, arrays)}
        masks = {id(t): None for t in self.inputs}
        for node in self.nodes:
            ins = [values[id(t)] for t in node.inputs]
            in_masks = [masks[id(t)] for t in node.inputs]
            outs = node.layer.forward_arrays(ins, in_masks, training, rng)
            out_masks = node.layer.output_masks(ins, in_masks)
            for t, value, mask in zip(node.outputs, outs, out_masks):
                values[id(t)] = value
                masks[id(t)] = mask
        return [values[id(t)] for t in self.outputs], [masks[id(t)] for t in self.outputs]

    def backward(self, d_outputs):
        """Backward through every node after a training forward, from d loss / d output (a list,
        None for an output that reached no loss); layers add into their `grads`."""
        grads = {}
        for t, d in zip(self.outputs, d_outputs):
            if d is not None:
                grads[id(t)] = d
        for node in reversed(self.nodes):
            d_outs = [grads.pop(id(t), None) for t in node.outputs]
            if all(d is None for d in d_outs):
                node.layer.release()  # nothing reaches the loss through it
                continue
            d_ins = node.layer.backward_arrays(d_outs)
            for t, d in zip(node.inputs, d_ins):
                if d is None:
                    continue
                key = id(t)
                grads[key] = d if key not in grads else grads[key] + d
