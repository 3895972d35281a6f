"""The reduced-precision formats of a quantized GRU (`cgru.GRU.quantize`), in one place.

A mode names which weights are stored in which format: by their index in GRU._names (0: W_ih,
1: W_hh), the format each is stored in. A format turns a float32 weight (3H, K) into the value
the GRU then has (float32, what params holds) and the strips the engine multiplies
(src_c/product.h, src_c/strips_int8.h):
  "bfloat16"  each weight rounded to the nearest bfloat16 (ties to even, NaN kept NaN);
  "int8"      each row j (an output unit) as int8 q[j, k] = rint(W[j, k] / s[j]) times one
              float32 scale s[j] = max_k |W[j, k]| / 127; the value is q s rounded to float32.
Both are idempotent: a value quantized again gives the same value and strips, so that a saved
or pickled quantized GRU, whose params hold the values, loads with the same weights.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _engine
from ._typing import ArrayLike

# What GRU.quantize takes: per mode, (index in GRU._names, format) of each weight it quantizes.
QUANTIZATION_MODES = {
    "bfloat16": ((1, "bfloat16"),),
    "bfloat16_all": ((0, "bfloat16"), (1, "bfloat16")),
    "int8": ((1, "int8"),),
}
# The most inputs an int8 weight may have: the engine's 32-bit sums of K products cannot
# overflow (CGRU_INT8_MAX_K, src_c/strips_int8.h).
INT8_MAX_INPUTS = 65536

_F32 = np.float32


def to_bfloat16_bits(a: ArrayLike) -> npt.NDArray[np.uint16]:
    """The bfloat16 nearest each float32 of a (ties to even, NaN kept NaN), as the uint16 of its
    bits: the upper half of the float32 it stands for."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (bits | np.uint32(0x00400000)) >> 16, rounded).astype(np.uint16)


def from_bfloat16_bits(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """The float32 values of bfloat16 bits (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_int8(w: ArrayLike) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """(q, scale) of a finite float32 weight w (N, K): scale (N,) = max_k |w[j, k]| / 127 per
    row (0 for a row of zeros) and q (N, K) = rint(w / scale) in [-127, 127], in float32
    arithmetic."""
    w = np.ascontiguousarray(w, _F32)
    top = np.abs(w).max(axis=1)
    scale = top / _F32(127)
    divisor = np.where(scale > 0, scale, _F32(1))
    q = np.rint(w / divisor[:, None])
    return np.clip(q, -127, 127).astype(np.int8), scale


def from_int8(q: npt.NDArray[np.int8], scale: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The float32 values of int8 weights q (N, K) with row scales (N,): q scale, rounded."""
    return np.asarray(q, _F32) * np.asarray(scale, _F32)[:, None]


def quantized(w: ArrayLike, fmt: str, name: str) -> tuple[npt.NDArray[np.float32], np.ndarray]:
    """(value, strips) of weight `name` (3H, K) in format `fmt`: the float32 value the GRU then
    has, and its strips as the engine reads them (not yet aligned). A ValueError, naming the
    weight, for what the format cannot hold."""
    w = np.ascontiguousarray(w, _F32)
    if fmt == "bfloat16":
        bits = to_bfloat16_bits(w)
        return from_bfloat16_bits(bits), _engine.bf16_strips(bits)
    if fmt == "int8":
        if not np.isfinite(w).all():
            raise ValueError(f"quantize: {name} holds NaN or infinite values, which int8 weights "
                             f"cannot; int8 takes finite weights only")
        if w.shape[1] > INT8_MAX_INPUTS:
            raise ValueError(f"quantize: int8 takes weights of at most {INT8_MAX_INPUTS} inputs; "
                             f"{name} has {w.shape[1]}")
        q, scale = to_int8(w)
        return from_int8(q, scale), _engine.int8_strips(q, scale)
    raise ValueError(f"quantize: unknown format {fmt!r}")


def format_of(strips: np.ndarray) -> str:
    """The format of a weight's strips, told by their dtype (the engine's convention)."""
    return "int8" if strips.dtype == np.int8 else "bfloat16"
