"""cgru.GRU / cgru.Sequential <-> ONNX (opset 17 GRU nodes, MatMul/Gemm + Add as Dense).

ONNX keeps W (D, 3H, I), R (D, 3H, H), B (D, 6H) = [Wb, Rb] in gate order z, r, n, and
`linear_before_reset` is cgru's `reset_after` (see cgru.conventions).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import layers as _layers
from ..conventions import swap_gate_blocks
from ..gru import GRU
from ..models import Sequential
from ._common import refuse_quantized, require

ONNX_OPSET = 17
_ONNX_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}


class _Graph:
    """Nodes and initializers of an ONNX graph under construction."""

    def __init__(self, onnx, dtype):
        self.onnx, self.helper, self.numpy_helper = onnx, onnx.helper, onnx.numpy_helper
        self.dtype = dtype
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem, array):
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, stem=None, outputs=1, **attrs):
        names = [self.name(stem or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def gru(self, x, params, names_per_direction, hidden_size, reset_after, lengths):
        """One ONNX GRU node; returns (Y (T, D, B, H), Y_h (D, B, H))."""
        W, R, B = [], [], []
        for w_ih, w_hh, b_ih, b_hh in names_per_direction:
            W.append(swap_gate_blocks(params[w_ih]))
            R.append(swap_gate_blocks(params[w_hh]))
            biases = [params.get(b_ih), params.get(b_hh)]
            B.append(np.concatenate([swap_gate_blocks(b) if b is not None else
                                     np.zeros(3 * hidden_size, self.dtype) for b in biases]))
        direction = "bidirectional" if len(W) == 2 else "forward"
        inputs = [x, self.const("W", np.stack(W)), self.const("R", np.stack(R)),
                  self.const("B", np.stack(B))] + ([lengths] if lengths else [])
        return self.op("GRU", inputs, "gru", outputs=2, hidden_size=hidden_size,
                       direction=direction, linear_before_reset=int(reset_after))

    def concat_directions(self, y):
        """(T, D, B, H) -> (T, B, D * H)."""
        t = self.op("Transpose", [y], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const("shape", np.array([0, 0, -1], np.int64))])

    def last_state(self, y_h):
        """(D, B, H) -> (B, D * H)."""
        t = self.op("Transpose", [y_h], perm=[1, 0, 2])
        return self.op("Reshape", [t, self.const("shape", np.array([0, -1], np.int64))])


def export_onnx(gru_or_model: GRU | Sequential, path: str | os.PathLike[str],
                lengths: bool = False) -> None:
    """Write a cgru.GRU or cgru.Sequential to an .onnx file (opset 17) that ONNX Runtime runs
    with the same outputs.

    cgru.GRU: inputs `x` ((T, B, I), or (B, T, I) with batch_first) and, with lengths=True,
    `lengths` (B,) int32 (ONNX's sequence_lens); outputs `y` and `h_n` as cgru returns them
    (initial state zero). cgru.Sequential: input `x` (B, T, F), output `y`; Dropout is dropped
    (inference). Weights keep the model's dtype (ONNX Runtime's GRU runs float32 only). The
    architecture also goes into the file's metadata, so load_onnx restores it exactly.
    """
    obj = gru_or_model
    refuse_quantized(obj, "export_onnx", "ONNX")
    onnx = require("onnx", "onnx")
    helper = onnx.helper
    if isinstance(obj, GRU):
        graph, inputs, outputs, meta = _export_gru(onnx, obj, lengths)
    elif isinstance(obj, Sequential):
        if lengths:
            raise ValueError("export_onnx: lengths=True applies to a cgru.GRU; a Sequential "
                             "takes whole sequences")
        obj._require_built("export_onnx")
        graph, inputs, outputs, meta = _export_sequential(onnx, obj)
    else:
        raise TypeError(f"export_onnx takes a cgru.GRU or cgru.Sequential, got "
                        f"{type(obj).__name__}")
    onnx_graph = helper.make_graph(graph.nodes, "cgru", inputs, outputs, graph.initializers)
    model = helper.make_model(onnx_graph, producer_name="cgru",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = min(model.ir_version, 8)
    helper.set_model_props(model, {"cgru": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _elem_type(onnx, dtype):
    return onnx.TensorProto.DOUBLE if dtype == np.float64 else onnx.TensorProto.FLOAT


def _export_gru(onnx, gru, lengths):
    helper = onnx.helper
    g = _Graph(onnx, gru.dtype)
    elem = _elem_type(onnx, gru.dtype)
    x_shape = ["batch", "time", gru.input_size] if gru.batch_first else \
        ["time", "batch", gru.input_size]
    inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    x = "x"
    if gru.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    seq_lens = None
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, ["batch"]))
        seq_lens = "lengths"
    states = []
    for layer in range(gru.num_layers):
        names = [gru._names(layer, d) for d in range(gru.num_directions)]
        y, y_h = g.gru(x, gru.params, names, gru.hidden_size, gru.reset_after, seq_lens)
        x = g.concat_directions(y)
        states.append(y_h)
    y = g.op("Transpose", [x], perm=[1, 0, 2]) if gru.batch_first else x
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    g.nodes.append(helper.make_node("Concat", states, ["h_n"], axis=0) if len(states) > 1 else
                   helper.make_node("Identity", states, ["h_n"]))
    D, H = gru.num_directions, gru.hidden_size
    y_shape = ["batch", "time", D * H] if gru.batch_first else ["time", "batch", D * H]
    outputs = [helper.make_tensor_value_info("y", elem, y_shape),
               helper.make_tensor_value_info("h_n", elem, [gru.num_layers * D, "batch", H])]
    meta = {"kind": "GRU", "input_size": gru.input_size, "hidden_size": H,
            "num_layers": gru.num_layers, "bias": gru.bias, "batch_first": gru.batch_first,
            "bidirectional": gru.bidirectional, "reset_after": gru.reset_after,
            "dtype": gru.dtype.name}
    return g, inputs, outputs, meta


def _export_sequential(onnx, model):
    """A Sequential's layers as ONNX nodes. A padding mask (Embedding(mask_zero), Masking)
    becomes the GRU nodes' sequence_lens: the count of each sequence's valid steps, which is the
    mask exactly when it pads each sequence's tail (masks with holes have no ONNX form)."""
    helper = onnx.helper
    g = _Graph(onnx, model.dtype)
    elem = _elem_type(onnx, model.dtype)
    reads_indices = model.inputs[0].kind == "int"
    if reads_indices:
        inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, ["batch", "time"])]
    else:
        inputs = [helper.make_tensor_value_info("x", elem,
                                                ["batch", "time", model.input_shape[-1]])]
    x, layout = "x", "BTF"  # BTF, TBF (time-major sequence) or BF (one vector per sample)
    lens = None             # (batch,) int32 valid steps, while a mask is in force
    for layer in model.layers:
        where = f"export_onnx: layer '{layer.name}' ({type(layer).__name__})"
        inner = layer.layer if isinstance(layer, _layers.TimeDistributed) else layer
        if isinstance(inner, _layers.Dropout):
            continue
        if isinstance(layer, _layers.Embedding):
            ids = x
            x = g.op("Gather", [g.const("embeddings", layer.params["embeddings"]), ids], axis=0)
            if layer.mask_zero:
                valid = g.op("Not", [g.op("Equal", [ids, g.const("zero", np.array(0,
                                                                                np.int64))])])
                lens = g.op("ReduceSum", [g.op("Cast", [valid], to=onnx.TensorProto.INT32),
                                          g.const("axes", np.array([1], np.int64))],
                            keepdims=0)
        elif isinstance(layer, _layers.Masking):
            value = g.const("mask_value", np.array(layer.mask_value, model.dtype))
            differs = g.op("Cast", [g.op("Not", [g.op("Equal", [x, value])])], to=elem)
            keep = g.op("ReduceMax", [differs], axes=[2], keepdims=1)   # (B, T, 1)
            x = g.op("Mul", [x, keep])
            lens = g.op("ReduceSum", [g.op("Cast", [keep], to=onnx.TensorProto.INT32),
                                      g.const("axes", np.array([1, 2], np.int64))], keepdims=0)
        elif isinstance(layer, (_layers.GRU, _layers.Bidirectional)):
            gru = layer.layer if isinstance(layer, _layers.Bidirectional) else layer
            for option in ("go_backwards", "stateful", "return_state"):
                if getattr(gru, option):
                    raise ValueError(f"{where}: {option}=True has no ONNX form here")
            if lens is not None and gru.return_sequences and gru.directions == 1:
                raise ValueError(f"{where} returns sequences after a mask: ONNX's GRU outputs "
                                 f"zeros at padded steps, where cgru (as Keras) repeats the "
                                 f"last valid output")
            if layout == "BTF":
                x = g.op("Transpose", [x], perm=[1, 0, 2])
            names = [gru._engine_names(d) for d in range(gru.directions)]
            y, y_h = g.gru(x, gru.params, names, gru.units, gru.reset_after, lens)
            mode = layer.merge_mode if isinstance(layer, _layers.Bidirectional) else "concat"
            if gru.return_sequences:
                x, layout, axis = y, "TBF", 1
            else:
                x, layout, axis = y_h, "BF", 0
                lens = None  # the mask stays behind with the time axis
            if mode == "concat":
                x = g.concat_directions(x) if layout == "TBF" else g.last_state(x)
            elif mode == "sum":
                x = g.op("ReduceSum", [x, g.const("axes", np.array([axis], np.int64))],
                         keepdims=0)
            elif mode == "ave":
                x = g.op("ReduceMean", [x], axes=[axis], keepdims=0)
            else:
                x = g.op("ReduceProd", [x], axes=[axis], keepdims=0)
        elif isinstance(inner, _layers.Dense):
            if layout == "TBF":
                x, layout = g.op("Transpose", [x], perm=[1, 0, 2]), "BTF"
            x = g.op("MatMul", [x, g.const("kernel", inner.params["kernel"])])
            if inner.use_bias:
                x = g.op("Add", [x, g.const("bias", inner.params["bias"])])
            if inner.activation is not None:
                op = {v: k for k, v in _ONNX_ACTIVATIONS.items()}[inner.activation]
                x = g.op(op, [x], axis=-1) if op == "Softmax" else g.op(op, [x])
        else:
            raise ValueError(f"{where} has no ONNX form; export_onnx writes GRU, Bidirectional, "
                             f"Dense, Dropout, Embedding, Masking and TimeDistributed layers")
    if layout == "TBF":
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    g.nodes.append(helper.make_node("Identity", [x], ["y"]))
    out_shape = ["batch", "time", None] if layout != "BF" else ["batch", None]
    outputs = [helper.make_tensor_value_info("y", elem, out_shape)]
    meta = {"kind": "Sequential", "name": model.name, "dtype": model.dtype.name,
            "input_shape": list(model.input_shape),
            "layers": [{"class": type(l).__name__, "config": l.get_config()}
                       for l in model.layers]}
    return g, inputs, outputs, meta


def _gru_blocks(onnx, graph, path):
    """Per GRU node, in graph order: attributes and weights (W, R, B as NumPy arrays)."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # Constant nodes hold weights in some exporters
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    blocks, dense = [], []
    for node in graph.node:
        if node.op_type == "GRU":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            where = f"{path}: GRU node '{node.name or node.output[0]}'"
            for bad in ("clip", "activation_alpha", "activation_beta"):
                if bad in attrs:
                    raise ValueError(f"{where} sets '{bad}', which cgru cannot represent")
            acts = [a.decode() if isinstance(a, bytes) else a
                    for a in attrs.get("activations", [])]
            if acts and [a.lower() for a in acts] != ["sigmoid", "tanh"] * (len(acts) // 2):
                raise ValueError(f"{where} uses activations {acts}; cgru computes Sigmoid and "
                                 f"Tanh")
            if attrs.get("layout", 0) != 0:
                raise ValueError(f"{where} has layout=1 (batch-first); cgru reads layout=0")
            direction = attrs.get("direction", b"forward")
            direction = direction.decode() if isinstance(direction, bytes) else direction
            if direction == "reverse":
                raise ValueError(f"{where} runs direction='reverse' alone, which cgru cannot "
                                 f"represent")
            ins = list(node.input) + [""] * (6 - len(node.input))
            for i, what in ((1, "W"), (2, "R"), (3, "B")):
                if ins[i] and ins[i] not in constants:
                    raise ValueError(f"{where}: its {what} is computed in the graph, not stored; "
                                     f"cgru imports stored weights only")
            if ins[5] and not (ins[5] in constants and not constants[ins[5]].any()):
                raise ValueError(f"{where} has a non-zero initial_h; cgru imports GRUs that "
                                 f"start from zero")
            W, R = constants[ins[1]], constants[ins[2]]
            H = int(attrs.get("hidden_size", R.shape[-1]))
            B = constants[ins[3]] if ins[3] else np.zeros((W.shape[0], 6 * H), W.dtype)
            y_used = bool(consumers.get(node.output[0])) or node.output[0] in outputs
            blocks.append({"W": W, "R": R, "B": B, "hidden_size": H,
                           "reset_after": bool(attrs.get("linear_before_reset", 0)),
                           "directions": W.shape[0], "sequences": y_used,
                           "has_lengths": bool(ins[4])})
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 \
                and node.input[1] in constants and constants[node.input[1]].ndim == 2:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                raise ValueError(f"{path}: Gemm with transA=1 cannot be read as a Dense layer")
            kernel = constants[node.input[1]]
            if attrs.get("transB", 0):
                kernel = kernel.T
            kernel = kernel * attrs.get("alpha", 1.0)
            bias, out = None, node.output[0]
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                bias = np.broadcast_to(constants[node.input[2]] * attrs.get("beta", 1.0),
                                       (kernel.shape[1],))
            nxt = consumers.get(out, [])
            if bias is None and len(nxt) == 1 and nxt[0].op_type == "Add":
                other = [i for i in nxt[0].input if i != out]
                if other and other[0] in constants:
                    bias = np.broadcast_to(constants[other[0]], (kernel.shape[1],))
                    out = nxt[0].output[0]
                    nxt = consumers.get(out, [])
            activation = None
            if len(nxt) == 1 and nxt[0].op_type in _ONNX_ACTIVATIONS:
                activation = _ONNX_ACTIVATIONS[nxt[0].op_type]
            dense.append({"kernel": kernel, "bias": bias, "activation": activation})
    return blocks, dense


def _set_gru_weights(params, names_per_direction, block, use_bias):
    H = block["hidden_size"]
    for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(names_per_direction):
        params[w_ih][...] = swap_gate_blocks(block["W"][d])
        params[w_hh][...] = swap_gate_blocks(block["R"][d])
        if use_bias:
            params[b_ih][...] = swap_gate_blocks(block["B"][d][:3 * H])
            params[b_hh][...] = swap_gate_blocks(block["B"][d][3 * H:])


def load_onnx(path: str | os.PathLike[str]) -> GRU | Sequential:
    """Read GRU nodes (and MatMul/Gemm + Add, with a Relu/Sigmoid/Tanh/Softmax after them, as
    Dense layers) from an .onnx file.

    Files written by export_onnx come back as they were exported (cgru.GRU or cgru.Sequential).
    Other files: a chain of GRU nodes with nothing after them becomes a cgru.GRU; GRU nodes
    followed by MatMul/Gemm become a cgru.Sequential of GRU (Bidirectional for
    direction='bidirectional') and Dense layers. Anything that would compute differently in
    cgru (clip, other activations, layout=1, a non-zero initial state, computed weights) is
    refused with a ValueError.
    """
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") \
            from None
    blocks, dense = _gru_blocks(onnx, model.graph, path)
    if not blocks:
        raise ValueError(f"{path} has no GRU node")
    meta = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(meta["cgru"]) if "cgru" in meta else None
    if meta and meta["kind"] == "GRU":
        gru = GRU(meta["input_size"], meta["hidden_size"], num_layers=meta["num_layers"],
                  bias=meta["bias"], batch_first=meta["batch_first"],
                  bidirectional=meta["bidirectional"], reset_after=meta["reset_after"],
                  dtype=meta["dtype"])
        return _fill_gru(gru, blocks, path)
    if meta and meta["kind"] == "Sequential":
        result = Sequential(name=meta["name"], dtype=meta["dtype"])
        for spec in meta["layers"]:
            result.add(_layers.CLASSES[spec["class"]].from_config(spec["config"]))
        result.build((None,) + tuple(meta["input_shape"]))
        result._onnx_gather_tables = _gather_tables(onnx, model.graph)
        return _fill_sequential(result, blocks, dense, path)

    first = blocks[0]
    dtype = "float64" if first["W"].dtype == np.float64 else "float32"
    if not dense:
        same = all(b["hidden_size"] == first["hidden_size"] and b["directions"] ==
                   first["directions"] and b["reset_after"] == first["reset_after"]
                   for b in blocks)
        if not same:
            raise ValueError(f"{path}: its GRU nodes differ in size, direction or variant; "
                             f"cgru.GRU needs them alike")
        gru = GRU(first["W"].shape[-1], first["hidden_size"], num_layers=len(blocks),
                  bidirectional=first["directions"] == 2, reset_after=first["reset_after"],
                  dtype=dtype)
        return _fill_gru(gru, blocks, path)
    result = Sequential(dtype=dtype)
    for i, b in enumerate(blocks):
        sequences = b["sequences"] if i == len(blocks) - 1 else True
        gru = _layers.GRU(b["hidden_size"], return_sequences=sequences,
                          reset_after=b["reset_after"])
        result.add(_layers.Bidirectional(gru) if b["directions"] == 2 else gru)
    for d in dense:
        result.add(_layers.Dense(d["kernel"].shape[1], activation=d["activation"],
                                 use_bias=d["bias"] is not None))
    result.build((None, None, first["W"].shape[-1]))
    return _fill_sequential(result, blocks, dense, path)


def _gather_tables(onnx, graph):
    """The constant tables that Gather nodes read, in graph order."""
    constants = {i.name: i for i in graph.initializer}
    return [onnx.numpy_helper.to_array(constants[node.input[0]]) for node in graph.node
            if node.op_type == "Gather" and node.input[0] in constants]


def _fill_gru(gru, blocks, path):
    if len(blocks) != gru.num_layers:
        raise ValueError(f"{path}: {len(blocks)} GRU nodes for {gru.num_layers} layers")
    for layer, block in enumerate(blocks):
        names = [gru._names(layer, d) for d in range(gru.num_directions)]
        _check_block(block, gru.params[names[0][0]].shape[1], gru.hidden_size,
                     gru.num_directions, path)
        _set_gru_weights(gru.params, names, block, gru.bias)
    return gru


def _fill_sequential(model, blocks, dense, path):
    grus = [l.layer if isinstance(l, _layers.Bidirectional) else l for l in model.layers
            if isinstance(l, (_layers.GRU, _layers.Bidirectional))]
    denses = [getattr(l, "layer", l) for l in model.layers
              if isinstance(getattr(l, "layer", l), _layers.Dense)]
    _fill_embeddings(model, path)
    if len(grus) != len(blocks) or len(denses) != len(dense):
        raise ValueError(f"{path}: {len(blocks)} GRU and {len(dense)} dense blocks do not match "
                         f"the {len(grus)} GRU and {len(denses)} Dense layers described")
    for gru, block in zip(grus, blocks):
        names = [gru._engine_names(d) for d in range(gru.directions)]
        _check_block(block, gru.input_shape[-1], gru.units, gru.directions, path)
        _set_gru_weights(gru.params, names, block, gru.use_bias)
        if gru.use_bias and not gru.reset_after:  # the layer keeps one bias: fold Rb into Wb
            for _, _, b_ih, b_hh in names:
                gru.params[b_ih] += gru.params[b_hh]
                gru.params[b_hh][...] = 0
    for layer, block in zip(denses, dense):
        if block["kernel"].shape != layer.params["kernel"].shape:
            raise ValueError(f"{path}: a dense kernel of shape {block['kernel'].shape} where "
                             f"{layer.params['kernel'].shape} was expected")
        layer.params["kernel"][...] = block["kernel"]
        if layer.use_bias:
            layer.params["bias"][...] = block["bias"]
    return model


def _fill_embeddings(model, path):
    """Embedding tables of a file export_onnx wrote: the initializers of its Gather nodes."""
    tables = getattr(model, "_onnx_gather_tables", [])
    layers = [l for l in model.layers if isinstance(l, _layers.Embedding)]
    if len(tables) != len(layers):
        raise ValueError(f"{path}: {len(tables)} Gather tables for {len(layers)} Embedding "
                         f"layers described")
    for layer, table in zip(layers, tables):
        if table.shape != layer.params["embeddings"].shape:
            raise ValueError(f"{path}: an embedding table of shape {table.shape} where "
                             f"{layer.params['embeddings'].shape} was expected")
        layer.params["embeddings"][...] = table


def _check_block(block, input_size, hidden_size, directions, path):
    expected = (directions, 3 * hidden_size, input_size)
    if block["W"].shape != expected or block["R"].shape != (directions, 3 * hidden_size,
                                                            hidden_size):
        raise ValueError(f"{path}: a GRU node's W {block['W'].shape} / R {block['R'].shape} "
                         f"do not fit W {expected}")
