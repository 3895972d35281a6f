"""Moving GRU models between cgru and PyTorch, Keras 3 and ONNX, exactly.

    from_torch(module) / to_torch(gru)             torch.nn.GRU  <->  cgru.GRU
    from_keras(layer_or_model) / to_keras(model)    Keras Sequential, functional Model or layer
                                                    <->  cgru.Sequential / cgru.Model / layer
    export_onnx(gru_or_model, path, lengths=False)  cgru.GRU or cgru.Sequential -> .onnx file
    load_onnx(path)                                 GRU nodes (+ MatMul/Gemm + Add as Dense) -> cgru
    from_seed_convention(state_dict)                weights written for h' = (1 - u) h + u n

One module per framework (`pytorch`, `keras`, `onnx`); the gate orders and weight layouts they
translate between are described in `cgru.conventions`. torch, keras and onnx are imported only
by the function that needs them; a conversion that cannot be represented exactly raises
ValueError naming what stands in the way.
"""
from ..conventions import from_seed_convention
from .keras import from_keras, to_keras
from .onnx import ONNX_OPSET, export_onnx, load_onnx
from .pytorch import from_torch, to_torch

__all__ = ["from_torch", "to_torch", "from_keras", "to_keras", "export_onnx", "load_onnx",
           "from_seed_convention", "ONNX_OPSET"]
