"""Weight initializers with Keras's names, formulas and defaults.

An initializer is called as `init(shape, rng, dtype)` and returns a new array. Shapes follow
Keras: a kernel is (fan_in, fan_out), e.g. a GRU kernel (input_size, 3 * units) and a recurrent
kernel (units, 3 * units). `rng` is a `numpy.random.Generator`; the model seeds it, so the same
seed gives the same weights.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import numpy.typing as npt

from . import _checks, _registry
from ._typing import Array

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it gives the truncated
# draw the variance asked for (as Keras's variance-scaling initializers do).
_TRUNCATED_STD = 0.87962566103423978


def _fans(shape):
    """(fan_in, fan_out) of a kernel: rows and columns of a matrix, the size of a vector."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, mean, stddev):
    """Normal draws, redrawn until they fall within two standard deviations of the mean."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return mean + stddev * values


class Initializer(_registry.Configurable):
    def __call__(self, shape: Iterable[int], rng: np.random.Generator,
                 dtype: npt.DTypeLike = "float32") -> Array:
        return np.asarray(self.sample(tuple(shape), rng), dtype=dtype)


class Zeros(Initializer):
    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    def sample(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def sample(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05) -> None:
        if not maxval > minval:
            raise ValueError(f"RandomUniform: maxval must exceed minval, got minval={minval}, "
                             f"maxval={maxval}")
        self.minval, self.maxval = float(minval), float(maxval)

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval}


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean, self.stddev = float(mean), float(stddev)

    def sample(self, shape, rng):
        return self.mean + self.stddev * rng.standard_normal(shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(Initializer):
    """Normal(mean, stddev) with draws beyond two standard deviations redrawn (as Keras)."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean = float(_checks.number(mean, "mean", "TruncatedNormal"))
        self.stddev = float(_checks.positive(stddev, "stddev", "TruncatedNormal"))

    def sample(self, shape, rng):
        return _truncated_normal(rng, shape, self.mean, self.stddev)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


class GlorotUniform(Initializer):
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010; Keras's default kernel)."""

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)


class GlorotNormal(Initializer):
    """Truncated normal with variance 2 / (fan_in + fan_out)."""

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        return _truncated_normal(rng, shape, 0.0,
                                 np.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD)


class HeUniform(Initializer):
    """Uniform in +-sqrt(6 / fan_in) (He et al. 2015)."""

    def sample(self, shape, rng):
        fan_in, _ = _fans(shape)
        limit = np.sqrt(6.0 / fan_in)
        return rng.uniform(-limit, limit, shape)


class HeNormal(Initializer):
    """Truncated normal with variance 2 / fan_in."""

    def sample(self, shape, rng):
        fan_in, _ = _fans(shape)
        return _truncated_normal(rng, shape, 0.0, np.sqrt(2.0 / fan_in) / _TRUNCATED_STD)


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times `gain`: orthonormal rows or columns, whichever are fewer.

    Keras's default for a GRU's recurrent kernel (units, 3 * units): its rows are orthonormal.
    """

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal needs a shape of 2 or more dimensions, got {shape}")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))  # a unique, uniformly distributed Q
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {"gain": self.gain}


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "constant": Constant, "random_uniform": RandomUniform,
    "uniform": RandomUniform, "random_normal": RandomNormal, "truncated_normal": TruncatedNormal,
    "glorot_uniform": GlorotUniform, "xavier_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "xavier_normal": GlorotNormal, "he_uniform": HeUniform,
    "he_normal": HeNormal, "orthogonal": Orthogonal,
}


def get(identifier: str | Initializer, argument: str = "initializer") -> Initializer:
    """An initializer from a name ('glorot_uniform', 'orthogonal', ...) or an instance."""
    return _registry.resolve(identifier, Initializer, _BY_NAME, argument, "initializers")


def serialize(initializer: Initializer) -> dict[str, Any]:
    return _registry.serialize(initializer)


def deserialize(spec: dict[str, Any]) -> Initializer:
    return _registry.deserialize(spec, set(_BY_NAME.values()))
