"""Optimizers with Keras's names, defaults and update rules.

`optimizer.apply(params, grads)` updates every array of `params` in place from the array of
the same name in `grads`. Before the update rule, the gradients pass through, in this order:
clipping (`clipvalue` per element, `clipnorm` per array, `global_clipnorm` over all arrays) and
L2 weight decay (`weight_decay * param` is added to the gradient, which is the gradient of
`weight_decay / 2 * ||param||^2`; this is `torch.optim`'s `weight_decay`, not Keras 3's decoupled
one). `learning_rate` is a number or a schedule from `cgru.optimizers.schedules`, evaluated at
the number of updates done so far (`iterations`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from . import _checks, _registry, schedules
from ._typing import ArrayLike, FloatArray


def _optional_float(value, name, cls):
    """A clipping threshold or an epsilon: a number > 0, as a float, or None."""
    value = _checks.positive(value, name, cls, optional=True)
    return None if value is None else float(value)


class Optimizer:
    slot_names = ()

    def __init__(self, learning_rate: float | schedules.LearningRateSchedule,
                 weight_decay: float = 0.0, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None) -> None:
        cls = type(self).__name__
        if isinstance(learning_rate, schedules.LearningRateSchedule):
            self.learning_rate = learning_rate
        else:
            try:
                self.learning_rate = float(_checks.positive(learning_rate, "learning_rate", cls))
            except ValueError:
                raise ValueError(f"{cls}: learning_rate must be a number > 0 or a schedule, got "
                                 f"{learning_rate!r}") from None
        self.weight_decay = float(_checks.non_negative(weight_decay, "weight_decay", cls))
        self.clipnorm = _optional_float(clipnorm, "clipnorm", cls)
        self.clipvalue = _optional_float(clipvalue, "clipvalue", cls)
        self.global_clipnorm = _optional_float(global_clipnorm, "global_clipnorm", cls)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError(f"{cls}: give clipnorm or global_clipnorm, not both")
        self.iterations = 0
        self.slots = {name: {} for name in self.slot_names}

    # ---- the pipeline ---------------------------------------------------------------------------

    def current_learning_rate(self) -> float:
        lr = self.learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    def apply(self, params: Mapping[str, FloatArray], grads: Mapping[str, ArrayLike]) -> None:
        """One update of every array in `params` (in place) from `grads`."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise KeyError(f"{type(self).__name__}.apply: no gradient for {missing}")
        grads = self._processed(params, grads)
        lr = self.current_learning_rate()
        self.iterations += 1
        for name, param in params.items():
            slots = {s: self._slot(s, name, param) for s in self.slot_names}
            self._update(param, grads[name], lr, slots)

    def _slot(self, slot, name, param):
        table = self.slots[slot]
        if name not in table:
            table[name] = np.zeros_like(param)
        return table[name]

    def _processed(self, params, grads):
        out = {name: grads[name] for name in params}
        if self.clipvalue is not None:
            out = {k: np.clip(g, -self.clipvalue, self.clipvalue) for k, g in out.items()}
        if self.clipnorm is not None:
            for k, g in out.items():
                norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
                if norm > self.clipnorm:
                    out[k] = g * (self.clipnorm / norm)
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64)))
                                 for g in out.values()))
            if norm > self.global_clipnorm:
                scale = self.global_clipnorm / norm
                out = {k: g * scale for k, g in out.items()}
        if self.weight_decay:
            out = {k: g + self.weight_decay * params[k] for k, g in out.items()}
        return out

    # ---- saving ---------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        lr = self.learning_rate
        return {"learning_rate": schedules.serialize(lr) if callable(lr) else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    def get_state(self) -> tuple[dict[str, FloatArray], int]:
        """{'slot/param_name': array} and the number of updates done."""
        arrays = {f"{slot}/{name}": value for slot, table in self.slots.items()
                  for name, value in table.items()}
        return arrays, self.iterations

    def set_state(self, arrays: Mapping[str, FloatArray], iterations: int,
                  params: Mapping[str, FloatArray]) -> None:
        """Restore slots saved by get_state; each must match its parameter's shape."""
        slots = {name: {} for name in self.slot_names}
        for key, value in arrays.items():
            slot, _, name = key.partition("/")
            if slot not in slots or name not in params:
                raise ValueError(f"optimizer state entry '{key}' does not belong to a "
                                 f"{type(self).__name__} of this model")
            if value.shape != params[name].shape:
                raise ValueError(f"optimizer state entry '{key}' has shape {value.shape}, the "
                                 f"parameter has {params[name].shape}")
            slots[slot][name] = np.array(value, dtype=params[name].dtype)
        self.slots = slots
        self.iterations = int(iterations)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if v)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent; with momentum v = momentum * v - lr * g, p += v; Nesterov
    p += momentum * v - lr * g (Keras's rule; the same iterates as torch.optim.SGD at a fixed lr)."""

    slot_names = ("momentum",)

    def __init__(self, learning_rate: float | schedules.LearningRateSchedule = 0.01,
                 momentum: float = 0.0, nesterov: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.momentum = _checks.rate(momentum, "momentum", "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        if self.momentum == 0:
            self.slots = {}
            self.slot_names = ()

    def _update(self, param, grad, lr, slots):
        if self.momentum == 0:
            param -= lr * grad
            return
        velocity = slots["momentum"]
        velocity *= self.momentum
        velocity -= lr * grad
        if self.nesterov:
            param += self.momentum * velocity - lr * grad
        else:
            param += velocity

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), Keras's form:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)."""

    slot_names = ("m", "v")

    def __init__(self, learning_rate: float | schedules.LearningRateSchedule = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.beta_1 = _checks.rate(beta_1, "beta_1", "Adam")
        self.beta_2 = _checks.rate(beta_2, "beta_2", "Adam")
        self.epsilon = _optional_float(epsilon, "epsilon", "Adam")

    def _update(self, param, grad, lr, slots):
        t = self.iterations  # already counts this update
        step = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        m, v = slots["m"], slots["v"]
        m += (1 - self.beta_1) * (grad - m)
        v += (1 - self.beta_2) * (np.square(grad) - v)
        param -= step * m / (np.sqrt(v) + self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop, Keras's form: v = rho v + (1 - rho) g^2; centered subtracts the squared running
    mean of g; step = lr g / sqrt(v + epsilon); with momentum, m = momentum m + step, p -= m."""

    slot_names = ("velocity", "average_grad", "momentum")

    def __init__(self, learning_rate: float | schedules.LearningRateSchedule = 0.001,
                 rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
                 centered: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.rho = _checks.rate(rho, "rho", "RMSprop")
        self.momentum = _checks.rate(momentum, "momentum", "RMSprop")
        self.epsilon = _optional_float(epsilon, "epsilon", "RMSprop")
        self.centered = bool(centered)
        self.slot_names = ("velocity",) + (("average_grad",) if self.centered else ()) + \
            (("momentum",) if self.momentum else ())
        self.slots = {name: {} for name in self.slot_names}

    def _update(self, param, grad, lr, slots):
        velocity = slots["velocity"]
        velocity *= self.rho
        velocity += (1 - self.rho) * np.square(grad)
        denominator = velocity + self.epsilon
        if self.centered:
            average = slots["average_grad"]
            average *= self.rho
            average += (1 - self.rho) * grad
            denominator -= np.square(average)
        increment = lr * grad / np.sqrt(denominator)
        if self.momentum:
            moment = slots["momentum"]
            moment *= self.momentum
            moment += increment
            param -= moment
        else:
            param -= increment

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier: str | Optimizer) -> Optimizer:
    """An optimizer from a name ('adam', 'sgd', 'rmsprop', with Keras's defaults) or an instance."""
    return _registry.resolve(identifier, Optimizer, _BY_NAME, "optimizer", "optimizers")


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    return _registry.serialize(optimizer)


def deserialize(spec: dict[str, Any]) -> Optimizer:
    config = dict(spec["config"])
    if isinstance(config["learning_rate"], dict):
        config["learning_rate"] = schedules.deserialize(config["learning_rate"])
    return _registry.deserialize({"class": spec["class"], "config": config}, _BY_NAME.values())
