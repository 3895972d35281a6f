"""Argument checks shared by every module: one wording for each kind of setting.

Each check names the argument and its owner ("GRU: hidden_size must be an integer >= 1, got 0"),
accepts Python and NumPy numbers, refuses bool (True is not a size or a rate), NaN and infinities,
and returns the value as a plain Python number (an integer stays an integer). A value of the wrong
kind or out of range raises ValueError, as the constructors always have; `flag` raises TypeError.
"""
import math

import numpy as np

_INTEGERS = (int, np.integer)
_NUMBERS = (int, float, np.integer, np.floating)


def _fail(owner, name, requirement, value):
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}{name} must be {requirement}, got {value!r}")


def _bounds(low, high, low_open, high_open):
    """'in [0, 1)', '>= 0', '> 0', '<= 1' ...: the range a check requires, as words."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _within(value, low, high, low_open, high_open):
    return not ((low is not None and (value <= low if low_open else value < low))
                or (high is not None and (value >= high if high_open else value > high)))


def integer(value, name, owner=None, low=None, high=None):
    """An integer in [low, high] (either bound may be None), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, _INTEGERS) \
            or not _within(value, low, high, False, False):
        requirement = " ".join(filter(None, ["an integer", _bounds(low, high, False, False)]))
        raise _fail(owner, name, requirement, value)
    return int(value)


def number(value, name, owner=None, low=None, high=None, low_open=False, high_open=False,
           optional=False):
    """A finite real number within the bounds (open or closed; either may be None), as a Python
    int or float; None too when optional."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBERS) or not math.isfinite(value) \
            or not _within(value, low, high, low_open, high_open):
        requirement = " ".join(filter(None, ["a number", _bounds(low, high, low_open, high_open)]))
        raise _fail(owner, name, requirement + (" or None" if optional else ""), value)
    return int(value) if isinstance(value, _INTEGERS) else float(value)


# ---- the common cases, by name -------------------------------------------------------------------

def positive_int(value, name, owner=None):
    """A size or a count of at least one: units, num_layers, batch_size, epochs."""
    return integer(value, name, owner, low=1)


def non_negative_int(value, name, owner=None):
    """A count that may be zero: patience, cooldown."""
    return integer(value, name, owner, low=0)


def rate(value, name, owner=None):
    """A dropout rate, a decay or momentum factor: a number in [0, 1), as a float."""
    return float(number(value, name, owner, low=0, high=1, high_open=True))


def positive(value, name, owner=None, optional=False):
    """A number > 0 (a learning rate, a norm, an epsilon); None too when optional."""
    return number(value, name, owner, low=0, low_open=True, optional=optional)


def non_negative(value, name, owner=None):
    """A number >= 0 (a weight decay, a minimum learning rate)."""
    return number(value, name, owner, low=0)


def flag(value, name, owner=None):
    """True or False (Python or NumPy bool), as a Python bool; anything else is a TypeError
    (1 or 'yes' is more likely a misplaced argument than a choice)."""
    if not isinstance(value, (bool, np.bool_)):
        prefix = f"{owner}: " if owner else ""
        raise TypeError(f"{prefix}{name} must be True or False, got {value!r}")
    return bool(value)
