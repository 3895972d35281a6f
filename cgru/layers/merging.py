"""Layers that merge branches of a functional model: Concatenate and Add (Keras 3's)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer


class _Merge(Layer):
    """A layer of two or more inputs, called on a list: `Concatenate()([a, b])`. The output's
    mask (Add's, as Keras's merge layers) holds where any input's mask holds, and there is none
    when an input has none."""

    def _call_inputs(self, inputs, **call_args):
        if call_args:
            raise TypeError(f"{type(self).__name__} takes no call arguments "
                            f"{', '.join(sorted(call_args))}")
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"{type(self).__name__} takes a list of at least 2 inputs, got "
                             f"{type(inputs).__name__}")
        return list(inputs)

    def build_for(self, input_shapes, rng, dtype):
        self.output_shapes(input_shapes)
        self.input_shape = tuple(input_shapes[0])
        self.dtype = np.dtype(dtype)
        self.built = True

    def check_built_for(self, input_shapes, dtype=None):
        self.output_shapes(input_shapes)

    def check_input_kinds(self, kinds):
        if any(k != "float" for k in kinds):
            raise TypeError(f"layer '{self.name or type(self).__name__}' takes real values; an "
                            f"input holds integer indices")

    def output_masks(self, inputs, masks):
        # Fix (tests/test_functional.py::test_merge_masks_follow_keras): Keras 3's merge layers
        # (keras/src/layers/merging/base_merge.py) give no mask when an input has none, else
        # the OR of the masks (a step is valid where any input is valid); this was the AND.
        if any(m is None for m in masks):
            return [None]
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return [out]

    def release(self):
        pass


class Concatenate(_Merge):
    """Joins its inputs along `axis` (the last by default); the other sizes must agree."""

    def __init__(self, axis: int = -1, name: str | None = None, **shape_keywords: Any) -> None:
        super().__init__(name, **shape_keywords)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"Concatenate: axis must be a non-zero integer (not the batch "
                             f"axis), got {axis!r}")
        self.axis = int(axis)
        self._widths = None

    def output_shapes(self, input_shapes):
        ndim = len(input_shapes[0])
        axis = self.axis - 1 if self.axis > 0 else ndim + self.axis
        if not 0 <= axis < ndim or any(len(s) != ndim for s in input_shapes):
            raise ValueError(f"layer '{self._label}' (Concatenate): axis {self.axis} does not fit "
                             f"inputs (batch, ...) of shapes {[tuple(s) for s in input_shapes]}")
        for i in range(ndim):
            sizes = {s[i] for s in input_shapes if s[i] is not None}
            if i != axis and len(sizes) > 1:
                raise ValueError(f"layer '{self._label}' (Concatenate): inputs must agree on every "
                                 f"axis but {self.axis}; got shapes "
                                 f"{[tuple(s) for s in input_shapes]}")
        joined = [s[axis] for s in input_shapes]
        out = list(next((s for s in input_shapes), ()))
        out[axis] = None if None in joined else sum(joined)
        return [tuple(out)]

    def forward_arrays(self, inputs, masks, training, rng):
        self._widths = [a.shape[self.axis] for a in inputs]
        return [np.concatenate(inputs, axis=self.axis)]

    def backward_arrays(self, d_outputs):
        cuts = np.cumsum(self._widths)[:-1]
        return [np.ascontiguousarray(d) for d in np.split(d_outputs[0], cuts, axis=self.axis)]

    def output_masks(self, inputs, masks):
        """Keras's rule: a step is valid where any input is valid there, an input without a
        mask counting as valid everywhere; joined along the time axis (axis=1), the masks are
        joined too."""
        if all(m is None for m in masks):
            return [None]
        # Fix (tests/test_functional.py::test_merge_masks_follow_keras): masks are (batch,
        # time) for (batch, time, features) inputs; joining along an axis before the last (the
        # time axis) joins the masks along it (an OR of (B, T1) and (B, T2) masks failed).
        ndim = inputs[0].ndim
        axis = self.axis if self.axis > 0 else ndim + self.axis
        full = [np.ones(a.shape[:ndim - 1], bool) if m is None else m
                for a, m in zip(inputs, masks)]
        if axis < ndim - 1:
            return [np.concatenate(full, axis=axis)]
        out = full[0]
        for m in full[1:]:
            out = out | m
        return [out]

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "axis": self.axis}


class Add(_Merge):
    """The element-wise sum of its inputs, which must have one shape."""

    def output_shapes(self, input_shapes):
        shapes = {tuple(s) for s in input_shapes}
        if len(shapes) != 1:
            raise ValueError(f"layer '{self._label}' (Add): inputs must have one shape, got "
                             f"{[tuple(s) for s in input_shapes]}")
        return [tuple(input_shapes[0])]

    def forward_arrays(self, inputs, masks, training, rng):
        self._count = len(inputs)
        out = inputs[0].copy()
        for a in inputs[1:]:
            out += a
        return [out]

    def backward_arrays(self, d_outputs):
        # d (a + b) / da = 1
        return [d_outputs[0]] * self._count
