"""Keras-style layers for `cgru.Sequential` and `cgru.Model`.

- `base`: the Layer protocol (building, calling on arrays or symbolic tensors, weights, config).
- `recurrent`: GRU and Bidirectional on the engine, with masks, states and stateful use.
- `core`: Dense, Dropout, Embedding, Masking, TimeDistributed.
- `merging`: Concatenate, Add.
"""
from ..conventions import swap_gate_blocks
from ..graph import Input
from .base import MAX_UNITS, Layer
from .core import ACTIVATIONS, Dense, Dropout, Embedding, Masking, TimeDistributed
from .merging import Add, Concatenate
from .recurrent import GRU, Bidirectional

# The layers a model file may name, by class name.
CLASSES = {cls.__name__: cls for cls in (GRU, Bidirectional, Dense, Dropout, Embedding, Masking,
                                         TimeDistributed, Concatenate, Add)}

__all__ = ["Input", "Layer", "GRU", "Bidirectional", "Dense", "Dropout", "Embedding", "Masking",
           "TimeDistributed", "Concatenate", "Add", "ACTIVATIONS", "CLASSES", "MAX_UNITS",
           "swap_gate_blocks"]
