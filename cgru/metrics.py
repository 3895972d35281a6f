"""Metrics reported by `fit` and `evaluate`: running sums over the batches of an epoch.

Each metric accumulates with `update(y_true, y_pred)` and reports `result()` over everything it
saw since `reset()`, so an epoch's value does not depend on how the data was batched.
"""
from __future__ import annotations

import numpy as np

from . import losses as _losses
from ._typing import ArrayLike


class Metric:
    name = "metric"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._total = 0.0
        self._count = 0

    def result(self) -> float:
        return self._total / self._count if self._count else float("nan")


class MeanSquaredError(Metric):
    name = "mse"

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_true, y_pred = _losses._check_pair(y_true, y_pred, self.name)
        self._total += float(np.sum((y_pred - y_true) ** 2, dtype=np.float64))
        self._count += y_pred.size


class RootMeanSquaredError(MeanSquaredError):
    name = "rmse"

    def result(self) -> float:
        return float(np.sqrt(super().result()))


class MeanAbsoluteError(Metric):
    name = "mae"

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_true, y_pred = _losses._check_pair(y_true, y_pred, self.name)
        self._total += float(np.sum(np.abs(y_pred - y_true), dtype=np.float64))
        self._count += y_pred.size


class MeanAbsolutePercentageError(Metric):
    """100 |y - p| / max(|y|, 1e-7), averaged (Keras's mape)."""

    name = "mape"

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_true, y_pred = _losses._check_pair(y_true, y_pred, self.name)
        scale = np.maximum(np.abs(y_true), y_pred.dtype.type(_losses.EPSILON))
        self._total += float(np.sum(100.0 * np.abs(y_true - y_pred) / scale, dtype=np.float64))
        self._count += y_pred.size


class BinaryAccuracy(Metric):
    """Share of outputs on the right side of `threshold` (0.5; use 0.0 for logits)."""

    name = "binary_accuracy"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        super().__init__()

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_true, y_pred = _losses._check_pair(y_true, y_pred, self.name)
        self._total += float(np.sum((y_pred > self.threshold) == (y_true > 0.5)))
        self._count += y_pred.size


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_true, y_pred = _losses._check_pair(y_true, y_pred, self.name)
        hits = np.argmax(y_pred, axis=-1) == np.argmax(y_true, axis=-1)
        self._total += float(np.sum(hits))
        self._count += hits.size


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        y_pred = np.asarray(y_pred)
        labels = np.asarray(y_true).reshape(y_pred.shape[:-1])
        hits = np.argmax(y_pred, axis=-1) == labels
        self._total += float(np.sum(hits))
        self._count += hits.size


_BY_NAME = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "rmse": RootMeanSquaredError, "root_mean_squared_error": RootMeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mape": MeanAbsolutePercentageError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
}


def get(identifier: str | Metric, loss: _losses.Loss | None) -> Metric:
    """A fresh metric from its name; 'accuracy' picks the kind that matches the loss (as Keras)."""
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise ValueError(f"metrics must be names like 'mae' or 'accuracy', got {identifier!r}")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        if isinstance(loss, _losses.SparseCategoricalCrossentropy):
            metric = SparseCategoricalAccuracy()
        elif isinstance(loss, _losses.CategoricalCrossentropy):
            metric = CategoricalAccuracy()
        elif isinstance(loss, _losses.BinaryCrossentropy):
            metric = BinaryAccuracy(threshold=0.0 if loss.from_logits else 0.5)
        else:
            raise ValueError("metric 'accuracy' needs a cross-entropy loss; for regression use "
                             "'mae', 'mse' or 'rmse'")
        metric.name = "accuracy"
        return metric
    if key not in _BY_NAME:
        raise ValueError(f"metrics must be among {sorted(_BY_NAME) + ['accuracy']}, got "
                         f"{identifier!r}")
    return _BY_NAME[key]()
