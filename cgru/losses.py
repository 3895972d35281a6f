"""Losses with Keras's names and reductions, each with its gradient.

A loss is called as `loss(y_true, y_pred)` and returns a float; `loss.gradient(y_true, y_pred)`
returns d loss / d y_pred with y_pred's shape. Outputs are (batch, units) or, for sequences,
(batch, time, units); the loss averages over every position (batch and time) and, for the
element-wise losses, over units too, as Keras does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _checks, _registry
from ._typing import ArrayLike, FloatArray

# Keras clips probabilities into [EPSILON, 1 - EPSILON] before taking logs.
EPSILON = 1e-7


def _check_pair(y_true, y_pred, name):
    y_pred = np.asarray(y_pred)
    y_true = np.asarray(y_true)
    if y_true.shape != y_pred.shape and y_pred.shape[-1:] == (1,) \
            and y_true.shape == y_pred.shape[:-1]:
        y_true = y_true[..., None]  # targets (N,) for outputs (N, 1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{name}: y_true must have the model output's shape {y_pred.shape}, "
                         f"got {y_true.shape}")
    return y_true.astype(y_pred.dtype, copy=False), y_pred


class Loss(_registry.Configurable):
    name = "loss"

    def __call__(self, y_true: ArrayLike, y_pred: ArrayLike) -> float:
        y_true, y_pred = self._prepare(y_true, y_pred)
        return float(np.sum(self._pointwise(y_true, y_pred)) / self._count(y_pred))

    def gradient(self, y_true: ArrayLike, y_pred: ArrayLike) -> FloatArray:
        y_true, y_pred = self._prepare(y_true, y_pred)
        return (self._pointwise_gradient(y_true, y_pred) / self._count(y_pred)).astype(
            y_pred.dtype, copy=False)

    def _prepare(self, y_true, y_pred):
        return _check_pair(y_true, y_pred, self.name)

    def _count(self, y_pred):
        return y_pred.size  # element-wise losses: mean over every element


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def _pointwise(self, y, p):
        return (p - y) ** 2

    # d/dp (p - y)^2 = 2 (p - y)
    def _pointwise_gradient(self, y, p):
        return 2.0 * (p - y)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def _pointwise(self, y, p):
        return np.abs(p - y)

    # d/dp |p - y| = sign(p - y)   (0 at p == y)
    def _pointwise_gradient(self, y, p):
        return np.sign(p - y)


class MeanAbsolutePercentageError(Loss):
    """100 |y - p| / max(|y|, EPSILON), averaged (Keras's mape: a target of 0 counts as EPSILON,
    so predictions for zero targets weigh in at 1e9 % per unit of error)."""

    name = "mean_absolute_percentage_error"

    def _pointwise(self, y, p):
        return 100.0 * np.abs(y - p) / np.maximum(np.abs(y), y.dtype.type(EPSILON))

    # d/dp 100 |y - p| / max(|y|, eps) = 100 sign(p - y) / max(|y|, eps)   (0 at p == y)
    def _pointwise_gradient(self, y, p):
        return 100.0 * np.sign(p - y) / np.maximum(np.abs(y), y.dtype.type(EPSILON))


class Huber(Loss):
    """With x = p - y: x^2 / 2 where |x| <= delta, delta (|x| - delta / 2) beyond (Keras's
    huber): quadratic near the target, linear far from it, continuous with its slope."""

    name = "huber_loss"

    def __init__(self, delta: float = 1.0) -> None:
        self.delta = float(_checks.positive(delta, "delta", "Huber"))

    def _pointwise(self, y, p):
        x = p - y
        a = np.abs(x)
        return np.where(a <= self.delta, 0.5 * x * x, self.delta * a - 0.5 * self.delta ** 2)

    # d/dp = x where |x| <= delta, delta sign(x) beyond: x clipped into [-delta, delta]
    def _pointwise_gradient(self, y, p):
        return np.clip(p - y, -self.delta, self.delta)

    def get_config(self) -> dict[str, Any]:
        return {"delta": self.delta}


class LogCosh(Loss):
    """log(cosh(x)) with x = p - y, computed as Keras does, x + softplus(-2x) - log 2, which never
    overflows: about x^2 / 2 near the target, |x| - log 2 far from it."""

    name = "log_cosh"

    def _pointwise(self, y, p):
        x = p - y
        return x + np.logaddexp(0.0, -2.0 * x) - math.log(2.0)

    # d/dx log(cosh(x)) = tanh(x), and dx/dp = 1
    def _pointwise_gradient(self, y, p):
        return np.tanh(p - y)


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)); with from_logits=True, p = sigmoid(logit), computed stably."""

    name = "binary_crossentropy"

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def _pointwise(self, y, p):
        if self.from_logits:
            # log(1 + e^-|x|) + max(x, 0) - x y: never overflows
            return np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
        q = np.clip(p, EPSILON, 1 - EPSILON)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))

    def _pointwise_gradient(self, y, p):
        if self.from_logits:
            # d/dx = sigmoid(x) - y
            return 0.5 * (1 + np.tanh(0.5 * p)) - y
        inside = (p > EPSILON) & (p < 1 - EPSILON)
        q = np.clip(p, EPSILON, 1 - EPSILON)
        # d/dp = (p - y) / (p (1 - p)) inside the clip range, 0 where clipped
        return np.where(inside, (q - y) / (q * (1 - q)), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}


class CategoricalCrossentropy(Loss):
    """-sum_k y_k log p_k over the last axis, averaged over positions.

    From probabilities, p is first normalised to sum to 1 and clipped (as Keras); from logits,
    p = softmax(logits), computed stably.
    """

    name = "categorical_crossentropy"

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def _count(self, y_pred):
        return y_pred.size // y_pred.shape[-1]

    def _pointwise(self, y, p):
        if self.from_logits:
            shifted = p - p.max(axis=-1, keepdims=True)
            log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            return -y * log_softmax
        q = np.clip(p / p.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON)
        return -y * np.log(q)

    def _pointwise_gradient(self, y, p):
        if self.from_logits:
            # d/dx_k = softmax(x)_k sum(y) - y_k
            shifted = np.exp(p - p.max(axis=-1, keepdims=True))
            softmax = shifted / shifted.sum(axis=-1, keepdims=True)
            return softmax * y.sum(axis=-1, keepdims=True) - y
        total = p.sum(axis=-1, keepdims=True)
        q = p / total
        inside = (q > EPSILON) & (q < 1 - EPSILON)
        # with q = p / sum(p): dL/dq_j = -y_j / q_j (0 where clipped),
        # dL/dp_k = (dL/dq_k - sum_j dL/dq_j q_j) / sum(p)
        d_q = np.where(inside, -y / np.clip(q, EPSILON, 1 - EPSILON), 0.0)
        return (d_q - (d_q * q).sum(axis=-1, keepdims=True)) / total

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class labels of shape y_pred.shape[:-1]."""

    name = "sparse_categorical_crossentropy"

    def _prepare(self, y_true, y_pred):
        y_pred = np.asarray(y_pred)
        labels = np.asarray(y_true)
        if labels.shape == y_pred.shape[:-1] + (1,) and y_pred.ndim > 1:
            labels = labels[..., 0]
        if labels.shape != y_pred.shape[:-1]:
            raise ValueError(f"{self.name}: y_true must hold one class label per position, shape "
                             f"{y_pred.shape[:-1]}, got {labels.shape}")
        if labels.size and not np.all(labels == np.round(labels)):
            raise ValueError(f"{self.name}: y_true must hold integer class labels")
        labels = labels.astype(np.int64)
        classes = y_pred.shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"{self.name}: class labels must lie in [0, {classes - 1}], got "
                             f"values from {labels.min()} to {labels.max()}")
        one_hot = np.zeros(y_pred.shape, y_pred.dtype)
        np.put_along_axis(one_hot, labels[..., None], 1, axis=-1)
        return one_hot, y_pred


_BY_NAME = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mape": MeanAbsolutePercentageError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "huber": Huber, "huber_loss": Huber,
    "log_cosh": LogCosh, "logcosh": LogCosh,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}


def get(identifier: str | Loss) -> Loss:
    """A loss from a name ('mse', 'binary_crossentropy', ...) or an instance."""
    return _registry.resolve(identifier, Loss, _BY_NAME, "loss", "losses")


def serialize(loss: Loss) -> dict[str, Any]:
    return _registry.serialize(loss)


def deserialize(spec: dict[str, Any]) -> Loss:
    return _registry.deserialize(spec, set(_BY_NAME.values()))
