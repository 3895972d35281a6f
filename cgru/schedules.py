"""Learning-rate schedules: called with the number of updates done so far, they return the rate.

Reached as `cgru.optimizers.schedules`. One update is one batch; an epoch of N samples at batch
size b is ceil(N / b) updates.
"""
from __future__ import annotations

import math
from typing import Any

from . import _checks, _registry


class LearningRateSchedule:
    def get_config(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps); with staircase=True the exponent
    is floored, which makes it a step decay (as Keras)."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, decay_rate: float,
                 staircase: bool = False) -> None:
        self.initial_learning_rate = float(_checks.positive(
            initial_learning_rate, "initial_learning_rate", "ExponentialDecay"))
        self.decay_steps = _checks.positive(decay_steps, "decay_steps", "ExponentialDecay")
        self.decay_rate = float(_checks.positive(decay_rate, "decay_rate", "ExponentialDecay"))
        self.staircase = bool(staircase)

    def __call__(self, step: int) -> float:
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate ** exponent


class StepDecay(LearningRateSchedule):
    """initial_learning_rate * factor ** floor(step / step_size): the rate drops by `factor`
    every `step_size` updates (PyTorch's StepLR, counted in updates)."""

    def __init__(self, initial_learning_rate: float, step_size: int,
                 factor: float = 0.5) -> None:
        self.initial_learning_rate = float(_checks.positive(
            initial_learning_rate, "initial_learning_rate", "StepDecay"))
        self.step_size = _checks.positive_int(step_size, "step_size", "StepDecay")
        self.factor = float(_checks.positive(factor, "factor", "StepDecay"))

    def __call__(self, step: int) -> float:
        return self.initial_learning_rate * self.factor ** (step // self.step_size)


def serialize(schedule):
    return _registry.serialize(schedule)


def deserialize(spec):
    return _registry.deserialize(spec, (ExponentialDecay, StepDecay))
