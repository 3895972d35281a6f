"""Type aliases for the annotations of the public API (`py.typed`): what the arrays it takes
and returns are, for editors and type checkers. Nothing here changes what runs."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 11):
    from typing import Self
elif TYPE_CHECKING:
    from typing_extensions import Self
else:  # Python < 3.11 at run time: annotations only name it
    Self = Any

# A floating-point array (float32 or float64), as the engine and the layers return them.
FloatArray = npt.NDArray[np.floating[Any]]
# Any array, as get_weights and the models return them.
Array = npt.NDArray[Any]
# What may be given where an array is read: arrays, nested lists, scalars.
ArrayLike = npt.ArrayLike

__all__ = ["Self", "FloatArray", "Array", "ArrayLike"]
