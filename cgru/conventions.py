"""Gate layouts and weight conventions, in one place: how cgru's weights correspond to those of
PyTorch, Keras 3, ONNX and texts that write the update gate the other way round.

- Gate order. cgru and PyTorch keep the gate blocks r, z, n (rows [0, H), [H, 2H), [2H, 3H) of
  weight_ih, weight_hh and the biases); Keras and ONNX keep z, r, n. `swap_gate_blocks` turns
  one order into the other (it is its own inverse).
- Keras's layout. Per direction: kernel (I, 3H) and recurrent_kernel (H, 3H), the transposes of
  weight_ih and weight_hh; bias (2, 3H) = [input bias, recurrent bias] with reset_after=True,
  a single (3H,) bias with reset_after=False. With one bias, the n gate's recurrent bias is
  inside the reset product in cgru's form, so Keras's single bias is all input bias: cgru keeps
  it in bias_ih and holds bias_hh at zero (`keras_to_engine`, `engine_to_keras`).
- ONNX's layout. W (D, 3H, I), R (D, 3H, H), B (D, 6H) = [input biases, recurrent biases], gate
  order z, r, n; `linear_before_reset` is cgru's `reset_after`.
- The update-gate convention. Some texts write h' = (1 - u) h + u n; that is cgru's model with
  u = 1 - z, and since 1 - sigmoid(a) = sigmoid(-a), negating the update gate's rows converts
  (`from_seed_convention`).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ._typing import Array, ArrayLike


def swap_gate_blocks(a: ArrayLike, axis: int = 0) -> Array:
    """Reorder the three gate blocks along `axis` between Keras/ONNX (z, r, n) and PyTorch/cgru
    (r, z, n). The swap is its own inverse."""
    a = np.asarray(a)
    H = a.shape[axis] // 3
    first, second, third = np.split(a, [H, 2 * H], axis=axis)
    return np.concatenate([second, first, third], axis=axis)


def engine_to_keras(w_ih, w_hh, b_ih, b_hh, reset_after):
    """[kernel, recurrent_kernel(, bias)] in Keras's layout from one direction's engine arrays
    (b_ih and b_hh None without biases)."""
    weights = [swap_gate_blocks(w_ih).T.copy(), swap_gate_blocks(w_hh).T.copy()]
    if b_ih is not None:
        if reset_after:
            weights.append(np.stack([swap_gate_blocks(b_ih), swap_gate_blocks(b_hh)]))
        else:
            weights.append(swap_gate_blocks(b_ih + b_hh))
    return weights


def keras_to_engine(kernel, recurrent_kernel, bias, reset_after):
    """(w_ih, w_hh, b_ih, b_hh) in the engine's layout from one direction's Keras arrays (bias
    None without biases; then b_ih and b_hh are None too)."""
    w_ih, w_hh = swap_gate_blocks(kernel.T), swap_gate_blocks(recurrent_kernel.T)
    if bias is None:
        return w_ih, w_hh, None, None
    if reset_after:
        return w_ih, w_hh, swap_gate_blocks(bias[0]), swap_gate_blocks(bias[1])
    return w_ih, w_hh, swap_gate_blocks(bias), np.zeros_like(bias)


def keras_shapes(input_size, hidden_size, use_bias, reset_after):
    """Shapes of one direction's Keras arrays [kernel, recurrent_kernel(, bias)]."""
    I, H = input_size, hidden_size
    shapes = [(I, 3 * H), (H, 3 * H)]
    if use_bias:
        shapes.append((2, 3 * H) if reset_after else (3 * H,))
    return shapes


def from_seed_convention(state_dict: Mapping[str, ArrayLike]) -> dict[str, Array]:
    """Weights written for h' = (1 - u) * h + u * n (update gate u = 1 - z), converted to
    cgru's h' = (1 - z) * n + z * h.

    Takes and returns a state dict with PyTorch's names and layout (gate blocks r, u, n in rows
    [0, H), [H, 2H), [2H, 3H)). Negating the update gate's rows of every weight and bias gives
    the same model; nothing else changes.
    """
    converted = {}
    for name, value in state_dict.items():
        arr = np.array(value, copy=True)
        if not name.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            raise KeyError(f"from_seed_convention: {name!r} is not a GRU weight or bias name "
                           f"(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ...)")
        if arr.shape[0] % 3:
            raise ValueError(f"from_seed_convention: {name!r} has {arr.shape[0]} rows, not a "
                             f"multiple of 3 (three gate blocks)")
        H = arr.shape[0] // 3
        arr[H:2 * H] *= -1
        converted[name] = arr
    return converted
