"""Keras 3 <-> cgru: Sequential and functional models, and single layers, with their weights.

Layers that convert both ways: GRU (return_sequences, return_state, go_backwards, stateful,
reset_after, dropout, use_bias), Bidirectional(GRU), Dense, Dropout, Embedding (mask_zero),
Masking, TimeDistributed(Dense or Dropout), Concatenate, Add, and Keras's InputLayer. cgru keeps
Keras's weight layout for each of them (see cgru.conventions), so weights move with
get_weights / set_weights. Masks need no conversion: both frameworks derive them from the same
layers. Anything else (another layer, a Keras op applied to tensors, a layer called twice)
raises ValueError naming it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import graph as _graph
from .. import layers as _layers
from ..models import Model, Sequential
from ._common import refuse_quantized


def _keras():
    try:
        import keras
    except ImportError as e:
        raise ImportError(f"this conversion needs keras 3 with a backend: pip install keras, and "
                          f"set KERAS_BACKEND=torch when TensorFlow is not installed ({e})") \
            from None
    return keras


# ---- one layer ----------------------------------------------------------------------------------

def _gru_from_keras_config(config, where, go_backwards_ok=True):
    for key, allowed in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if config.get(key, allowed) != allowed:
            raise ValueError(f"{where}: {key}={config[key]!r} cannot be represented; cgru "
                             f"computes {key}='{allowed}'")
    if config.get("recurrent_dropout"):
        raise ValueError(f"{where}: recurrent_dropout={config['recurrent_dropout']} cannot be "
                         f"represented in cgru")
    if config.get("go_backwards") and not go_backwards_ok:
        raise ValueError(f"{where}: go_backwards=True inside Bidirectional cannot be represented")
    return _layers.GRU(config["units"], return_sequences=config.get("return_sequences", False),
                       return_state=config.get("return_state", False),
                       go_backwards=config.get("go_backwards", False),
                       stateful=config.get("stateful", False),
                       reset_after=config.get("reset_after", True),
                       dropout=config.get("dropout", 0.0), use_bias=config.get("use_bias", True),
                       name=config.get("name"))


def _layer_from_keras(layer):
    """A cgru layer (not built) with the settings of one Keras layer."""
    kind = type(layer).__name__
    where = f"Keras layer '{layer.name}' ({kind})"
    config = layer.get_config()
    name = config.get("name")
    if kind == "GRU":
        return _gru_from_keras_config(config, where)
    if kind == "Bidirectional":
        forward, backward = layer.forward_layer, layer.backward_layer
        if type(forward).__name__ != "GRU":
            raise ValueError(f"{where}: only a GRU inside Bidirectional converts")
        f_config, b_config = forward.get_config(), backward.get_config()
        for key in ("units", "reset_after", "use_bias", "return_sequences", "return_state",
                    "activation", "recurrent_activation", "stateful"):
            if f_config.get(key) != b_config.get(key):
                raise ValueError(f"{where}: its forward and backward GRUs differ in {key}")
        if config.get("merge_mode") not in _layers.Bidirectional.MERGE_MODES:
            raise ValueError(f"{where}: merge_mode={config.get('merge_mode')!r} cannot be "
                             f"represented; cgru merges with {_layers.Bidirectional.MERGE_MODES}")
        inner = _gru_from_keras_config(dict(f_config, name=None), where, go_backwards_ok=False)
        return _layers.Bidirectional(inner, merge_mode=config["merge_mode"], name=name)
    if kind == "Dense":
        activation = config.get("activation")
        if activation not in _layers.ACTIVATIONS:
            raise ValueError(f"{where}: activation={activation!r} cannot be represented; cgru's "
                             f"Dense takes {_layers.ACTIVATIONS}")
        return _layers.Dense(config["units"], activation=activation,
                             use_bias=config.get("use_bias", True), name=name)
    if kind == "Dropout":
        if config.get("noise_shape") is not None:
            raise ValueError(f"{where}: noise_shape cannot be represented")
        return _layers.Dropout(config["rate"], name=name)
    if kind == "Embedding":
        return _layers.Embedding(config["input_dim"], config["output_dim"],
                                 mask_zero=config.get("mask_zero", False), name=name)
    if kind == "Masking":
        return _layers.Masking(config.get("mask_value", 0.0), name=name)
    if kind == "TimeDistributed":
        inner = _layer_from_keras(layer.layer)
        inner.name = None
        return _layers.TimeDistributed(inner, name=name)
    if kind == "Concatenate":
        return _layers.Concatenate(axis=config.get("axis", -1), name=name)
    if kind == "Add":
        return _layers.Add(name=name)
    raise ValueError(f"{where} cannot be represented; cgru converts "
                     f"{', '.join(sorted(_FROM_KERAS))} and InputLayer")


_FROM_KERAS = {"GRU", "Bidirectional", "Dense", "Dropout", "Embedding", "Masking",
               "TimeDistributed", "Concatenate", "Add"}


def _layer_to_keras(keras, layer):
    """The Keras layer with the settings of one cgru layer."""
    if isinstance(layer, _layers.Bidirectional):
        inner = _layer_to_keras(keras, layer.layer)
        return keras.layers.Bidirectional(inner, merge_mode=layer.merge_mode, name=layer.name)
    if isinstance(layer, _layers.GRU):
        return keras.layers.GRU(layer.units, return_sequences=layer.return_sequences,
                                return_state=layer.return_state,
                                go_backwards=layer.go_backwards, stateful=layer.stateful,
                                reset_after=layer.reset_after, dropout=layer.dropout,
                                use_bias=layer.use_bias, name=layer.name)
    if isinstance(layer, _layers.Dense):
        return keras.layers.Dense(layer.units, activation=layer.activation,
                                  use_bias=layer.use_bias, name=layer.name)
    if isinstance(layer, _layers.Dropout):
        return keras.layers.Dropout(layer.rate, name=layer.name)
    if isinstance(layer, _layers.Embedding):
        return keras.layers.Embedding(layer.input_dim, layer.output_dim,
                                      mask_zero=layer.mask_zero, name=layer.name)
    if isinstance(layer, _layers.Masking):
        return keras.layers.Masking(layer.mask_value, name=layer.name)
    if isinstance(layer, _layers.TimeDistributed):
        return keras.layers.TimeDistributed(_layer_to_keras(keras, layer.layer), name=layer.name)
    if isinstance(layer, _layers.Concatenate):
        return keras.layers.Concatenate(axis=layer.axis, name=layer.name)
    if isinstance(layer, _layers.Add):
        return keras.layers.Add(name=layer.name)
    raise ValueError(f"to_keras: no Keras counterpart for {type(layer).__name__}")


# ---- Keras -> cgru ------------------------------------------------------------------------------

def from_keras(layer_or_model: Any) -> Model | _layers.Layer:
    """The cgru counterpart of a built Keras 3 model or layer, with its weights: a Sequential
    gives a cgru.Sequential, a functional Model a cgru.Model, one layer a built cgru layer."""
    obj = layer_or_model
    kind = type(obj).__name__
    keras = _keras()
    if isinstance(obj, keras.Sequential):
        return _from_sequential(obj)
    if isinstance(obj, keras.Model):
        return _from_functional(obj)
    if isinstance(obj, keras.layers.Layer):
        if not obj.built or not obj.get_weights():
            raise ValueError("from_keras: build the Keras layer first (call it on data), so "
                             "its weights exist")
        layer, weights = _layer_from_keras(obj), obj.get_weights()
        if isinstance(layer, _layers.Embedding):
            shape = (None,)
        elif isinstance(layer, (_layers.GRU, _layers.Bidirectional, _layers.TimeDistributed)):
            shape = (None, weights[0].shape[0])
        else:
            shape = (weights[0].shape[0],)
        layer.build_for([shape], np.random.default_rng(0), _dtype_of([obj]))
        layer.set_weights(weights)
        return layer
    raise TypeError(f"from_keras converts a Keras Sequential, functional Model or layer, got "
                    f"{kind}")


def _dtype_of(keras_layers):
    weights = [w for layer in keras_layers for w in layer.get_weights()]
    return "float64" if any(w.dtype == np.float64 for w in weights) else "float32"


def _from_sequential(keras_model):
    keras_layers = [l for l in keras_model.layers if type(l).__name__ != "InputLayer"]
    if not keras_model.built or any(not l.built for l in keras_layers):
        raise ValueError("from_keras: build the Keras model first (call it on data or give it "
                         "an Input), so its weights exist")
    converted = [_layer_from_keras(l) for l in keras_layers]
    model = Sequential(converted, dtype=_dtype_of(keras_layers), name=keras_model.name)
    input_shape = tuple(keras_model.inputs[0].shape) if keras_model.inputs else None
    if input_shape is None:
        raise ValueError("from_keras: the Keras Sequential has no known input shape; give it "
                         "a keras.Input")
    model._declared_batch = input_shape[0]
    model.build(input_shape)
    for ours, theirs in zip(converted, keras_layers):
        ours.set_weights(theirs.get_weights())
    return model


def _history(value):
    """(layer name, node index, tensor index) of a Keras tensor in a functional config."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return tuple(value["config"]["keras_history"])
    return None


def _from_functional(keras_model):
    config = keras_model.get_config()
    specs = {spec["name"]: spec for spec in config["layers"]}
    made = {}          # layer name -> cgru outputs (list)
    converted = []     # (cgru layer, keras layer) for the weights
    inputs = {}

    def tensor(history):
        name, node, index = history
        if node != 0:
            raise ValueError(f"from_keras: Keras layer '{name}' is called more than once; cgru "
                             f"calls each layer once per model")
        if name not in made:
            made[name] = call(name)
        return made[name][index]

    def call(name):
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"from_keras: the Keras model reads '{name}', which is not one of "
                             f"its layers")
        kind = spec["class_name"]
        if kind == "InputLayer":
            shape = spec["config"]["batch_shape"]
            dtype = spec["config"].get("dtype", "float32")
            t = _graph.Input(tuple(shape[1:]), batch_size=shape[0], name=name,
                             dtype=dtype if "int" in str(dtype) else None)
            inputs[name] = t
            return [t]
        if kind not in _FROM_KERAS:
            raise ValueError(f"from_keras: Keras '{name}' ({kind}) cannot be represented; cgru "
                             f"converts {', '.join(sorted(_FROM_KERAS))} and InputLayer")
        nodes = spec["inbound_nodes"]
        if len(nodes) != 1:
            raise ValueError(f"from_keras: Keras layer '{name}' is called {len(nodes)} times; "
                             f"cgru calls each layer once per model")
        keras_layer = keras_model.get_layer(name)
        layer = _layer_from_keras(keras_layer)
        converted.append((layer, keras_layer))
        args, kwargs = nodes[0]["args"], nodes[0]["kwargs"]
        first = args[0]
        ins = [tensor(_history(v)) for v in first] if isinstance(first, list) \
            else [tensor(_history(first))]
        state = kwargs.get("initial_state")
        states = [] if state is None else [tensor(_history(v)) for v in
                                           (state if isinstance(state, list) else [state])]
        out = layer._symbolic_call(ins + states)  # masks follow from the layers themselves
        return out if isinstance(out, list) else [out]

    def refs(entry):
        return [tuple(entry)] if entry and isinstance(entry[0], str) else \
            [tuple(e) for e in entry]

    outputs = [tensor(h) for h in refs(config["output_layers"])]
    input_refs = refs(config["input_layers"])
    for name, _, _ in input_refs:
        if name not in made:
            raise ValueError(f"from_keras: the Keras input '{name}' is disconnected from the "
                             f"outputs")
    model_inputs = [made[name][0] for name, _, _ in input_refs]
    # Keras remembers whether the model was made on one tensor or on a list of them
    single_in = not isinstance(getattr(keras_model, "_inputs_struct", model_inputs),
                               (list, tuple))
    single_out = not isinstance(getattr(keras_model, "_outputs_struct", outputs), (list, tuple))
    model = Model(model_inputs[0] if single_in else model_inputs,
                  outputs[0] if single_out else outputs, name=keras_model.name,
                  dtype=_dtype_of([k for _, k in converted]))
    for ours, theirs in converted:
        ours.set_weights(theirs.get_weights())
    return model


# ---- cgru -> Keras ------------------------------------------------------------------------------

def to_keras(model: Model) -> Any:
    """A built Keras model with the layers and weights of a built cgru.Sequential (a
    keras.Sequential) or cgru.Model (a functional keras.Model)."""
    if not isinstance(model, Model):
        raise TypeError(f"to_keras converts a cgru.Sequential or cgru.Model, got "
                        f"{type(model).__name__}")
    refuse_quantized(model, "to_keras", "Keras")
    keras = _keras()
    model._require_built("to_keras")
    pairs = []
    if isinstance(model, Sequential):
        t = model.inputs[0]
        dtype = "int32" if t.kind == "int" else model.dtype.name
        keras_layers = [_layer_to_keras(keras, l) for l in model.layers]
        keras_model = keras.Sequential([keras.Input(shape=tuple(t.shape[1:]),
                                                    batch_size=t.node.batch_size, dtype=dtype)]
                                       + keras_layers, name=model.name)
        pairs = list(zip(model.layers, keras_layers))
    else:
        tensors = {}
        keras_inputs = []
        for t in model.inputs:
            k = keras.Input(shape=tuple(t.shape[1:]), batch_size=t.node.batch_size,
                            dtype="int32" if t.kind == "int" else model.dtype.name,
                            name=t.node.name)
            tensors[id(t)] = k
            keras_inputs.append(k)
        for node in model._graph.nodes:
            klayer = _layer_to_keras(keras, node.layer)
            pairs.append((node.layer, klayer))
            ins = [tensors[id(t)] for t in node.inputs]
            if isinstance(node.layer, (_layers.Concatenate, _layers.Add)):
                out = klayer(ins)
            elif len(ins) > 1:
                out = klayer(ins[0], initial_state=ins[1:])
            else:
                out = klayer(ins[0])
            outs = out if isinstance(out, (list, tuple)) else [out]
            for t, k in zip(node.outputs, outs):
                tensors[id(t)] = k
        keras_outputs = [tensors[id(t)] for t in model.outputs]
        keras_model = keras.Model(keras_inputs[0] if model._single_input else keras_inputs,
                                  keras_outputs[0] if model._single_output else keras_outputs,
                                  name=model.name)
    for ours, theirs in pairs:
        theirs.set_weights(ours.get_weights())
    return keras_model
