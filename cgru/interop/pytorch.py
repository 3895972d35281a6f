"""torch.nn.GRU <-> cgru.GRU: the same names, layout and gate order, so the state dict moves as
it is."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..gru import GRU
from ._common import refuse_quantized, require

if TYPE_CHECKING:
    import torch


def from_torch(module: torch.nn.GRU) -> GRU:
    """A cgru.GRU with the options and weights of a `torch.nn.GRU` (any layers, directions,
    batch_first, bias); float64 modules give a float64 GRU, others float32."""
    torch = require("torch", "torch==2.13.0")
    if not isinstance(module, torch.nn.GRU):
        raise TypeError(f"from_torch converts a torch.nn.GRU, got {type(module).__name__} (for "
                        f"a GRU with a Linear head, see the README's recipe)")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    dtype = "float64" if next(iter(state.values())).dtype == torch.float64 else "float32"
    gru = GRU(module.input_size, module.hidden_size, num_layers=module.num_layers,
              bias=module.bias, batch_first=module.batch_first, dropout=float(module.dropout),
              bidirectional=module.bidirectional, dtype=dtype)
    gru.load_state_dict({k: v.to(torch.float64).numpy() for k, v in state.items()})
    gru.train(module.training)
    return gru


def to_torch(gru: GRU) -> torch.nn.GRU:
    """A `torch.nn.GRU` with the options and weights of a cgru.GRU (reset_after=True only:
    PyTorch has no reset-before GRU)."""
    if not isinstance(gru, GRU):
        raise TypeError(f"to_torch converts a cgru.GRU, got {type(gru).__name__}")
    refuse_quantized(gru, "to_torch", "PyTorch")
    torch = require("torch", "torch==2.13.0")
    if not gru.reset_after:
        raise ValueError("to_torch: PyTorch's GRU computes reset_after=True only; this cgru.GRU "
                         "has reset_after=False")
    module = torch.nn.GRU(gru.input_size, gru.hidden_size, num_layers=gru.num_layers,
                          bias=gru.bias, batch_first=gru.batch_first, dropout=gru.dropout,
                          bidirectional=gru.bidirectional)
    module = module.double() if gru.dtype == np.float64 else module.float()
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in gru.params.items()})
    module.train(gru.training)
    return module
