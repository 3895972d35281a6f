"""scikit-learn estimators on cgru: `GRURegressor` and `GRUClassifier`.

    from cgru.sklearn import GRUClassifier

    clf = GRUClassifier(units=32, epochs=100, random_state=0)
    clf.fit(X_train, y_train)              # X: (n_samples, n_timesteps[, n_features])
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

Each estimator builds a `cgru.Sequential` of `num_layers` GRU layers (each optionally
`Bidirectional` and followed by `Dropout`) and a `Dense` head, trains it with `fit` and keeps it
as `model_`. They follow scikit-learn's conventions, so `Pipeline`, `GridSearchCV`,
`cross_val_score`, `clone` and pickling work, and they pass scikit-learn's estimator checks
(`sklearn.utils.estimator_checks`).

Input X, as in tslearn:
- 2-D (n_samples, n_timesteps): one value per time step (a univariate series per row).
- 3-D (n_samples, n_timesteps, n_features): `n_features` values per time step.

`n_features_in_` is what scikit-learn checks between `fit` and `predict`. For 2-D X it is the
number of columns, X.shape[1] (here: time steps), as scikit-learn's own checks require; predict
then needs the same number of columns. For 3-D X it is the number of features per time step,
X.shape[2] (tslearn's choice): the network runs on sequences of any length, so predict accepts
3-D sequences of any length with the same number of features. Predict needs X of the same
layout (2-D or 3-D) as fit.

Targets: the regressor fits y of shape (n_samples,) or (n_samples, n_outputs) with the mean
squared error, with a linear output; scale y to about unit size for the network to learn
quickly (e.g. `sklearn.compose.TransformedTargetRegressor` with a `StandardScaler`). The
classifier takes any labels (numbers or strings): two classes train one sigmoid output with
binary cross-entropy, more classes a softmax with sparse categorical cross-entropy.

Reproducibility: a fit draws one seed from `random_state` for the network's weights, the
shuffling, the dropout masks and the validation split, so the same int `random_state` and the
same data give the same predictions, bit for bit.

scikit-learn is an optional dependency: `import cgru` never imports this module or scikit-learn.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

try:  # absolute imports: the top-level scikit-learn package, not this module
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, check_random_state
except ImportError as e:
    raise ImportError("cgru.sklearn needs scikit-learn: pip install scikit-learn") from e

try:
    from sklearn.utils.validation import validate_data as _sklearn_validate_data
except ImportError:  # scikit-learn < 1.6: the same function is a method of BaseEstimator
    def _sklearn_validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from . import callbacks as _callbacks
from . import layers as _layers
from . import optimizers as _optimizers
from ._typing import ArrayLike, Self
from .models import Sequential

__all__ = ["GRURegressor", "GRUClassifier"]

_OPTIMIZERS = {"adam": _optimizers.Adam, "rmsprop": _optimizers.RMSprop, "sgd": _optimizers.SGD}

# The parameters both estimators share, for their docstrings (numpydoc).
_PARAMETERS_DOC = """\
    units : int, default=32
        Units of each GRU layer (per direction when `bidirectional`).

    num_layers : int, default=1
        Number of stacked GRU layers; all but the last return their whole output sequence to
        the next, the last returns its final state to the output layer.

    bidirectional : bool, default=False
        Whether each GRU layer reads the sequence forward and backward (`Bidirectional`, its
        two outputs concatenated).

    dropout : float, default=0.0
        Fraction in [0, 1) of each GRU layer's outputs dropped while training (a `Dropout`
        layer after every GRU layer); 0 adds no dropout.

    epochs : int, default=100
        Number of passes over the training data (fewer when `early_stopping` stops first).

    batch_size : int, default=32
        Samples per optimizer update; the last batch of an epoch may be smaller.

    learning_rate : float, default=1e-3
        Learning rate (step size) of the optimizer.

    optimizer : {"adam", "rmsprop", "sgd"}, default="adam"
        Optimizer, with its Keras defaults apart from `learning_rate`.

    validation_fraction : float, default=0.0
        Fraction in [0, 1) of the training data held out (drawn at random; stratified by class
        for the classifier when every class allows it) to report `val_loss` each epoch in
        `history_` and to drive `early_stopping`. 0 holds nothing out.

    early_stopping : bool, default=False
        Whether to stop training when the monitored loss has not improved for `patience`
        consecutive epochs: the validation loss when `validation_fraction` > 0,
        else the training loss. The model then keeps the weights of its best epoch.

    patience : int, default=10
        Epochs without improvement tolerated by `early_stopping` (as `n_iter_no_change` of
        scikit-learn's MLP estimators).

    shuffle : bool, default=True
        Whether to shuffle the training samples before each epoch.

    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the shuffling, the dropout masks and the validation split. Pass an
        int for reproducible results across calls.

    verbose : int, default=0
        0: silent; 1: one line per epoch (to stderr); 2: a progress bar per epoch (needs tqdm).

    dtype : {"float32", "float64"}, default="float32"
        Floating-point type of the network's weights and computations.
"""

_ATTRIBUTES_DOC = """\
    model_ : cgru.Sequential
        The trained network.

    history_ : dict
        Per-epoch logs of the training: {"loss": [...]} and, with `validation_fraction` > 0,
        "val_loss".

    n_iter_ : int
        Number of epochs run.

    n_features_in_ : int
        For 2-D X, the number of columns (time steps); for 3-D X, the number of features per
        time step.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the columns of X, when fit got a DataFrame whose column names are all strings.

    n_timesteps_in_ : int
        Length of the training sequences. 3-D X of any length is accepted after fit; 2-D X must
        have `n_features_in_` columns.
"""


class _GRUEstimator(BaseEstimator):
    """What the regressor and classifier share: parameters, their checks, input validation, the
    network and its training. Subclasses define `fit` (checking and encoding y), `_output` (the
    output layer and the loss) and the prediction methods."""

    def __init__(self, units: int = 32, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, epochs: int = 100, batch_size: int = 32,
                 learning_rate: float = 1e-3, optimizer: str = "adam",
                 validation_fraction: float = 0.0, early_stopping: bool = False,
                 patience: int = 10, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, verbose: int = 0,
                 dtype: str = "float32") -> None:
        # stored as given (scikit-learn's rule): fit checks them
        self.units = units
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.shuffle = shuffle
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype

    # ---- tags: what scikit-learn's checks and meta-estimators may assume ------------------------

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"allow_nd": True}

    def __sklearn_is_fitted__(self):
        # fitted once fit has trained the network (model_ is the last attribute it sets)
        return hasattr(self, "model_")

    # ---- parameters -----------------------------------------------------------------------------

    def _invalid(self, name, expected):
        """The ValueError for parameter `name`: what it must be and what it is."""
        return ValueError(f"{type(self).__name__}: {name} must be {expected}, got "
                          f"{getattr(self, name)!r}")

    def _check_int(self, name, low, bool_too=False):
        value = getattr(self, name)
        if (isinstance(value, (bool, np.bool_)) and not bool_too) \
                or not isinstance(value, (numbers.Integral, np.bool_)) or value < low:
            raise self._invalid(name, f"an integer >= {low}")
        return int(value)

    def _check_fraction(self, name):
        value = getattr(self, name)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                or not 0.0 <= value < 1.0:
            raise self._invalid(name, "a number in [0, 1)")
        return float(value)

    def _check_bool(self, name):
        value = getattr(self, name)
        if not isinstance(value, (bool, np.bool_)):
            raise self._invalid(name, "True or False")
        return bool(value)

    def _check_learning_rate(self):
        value = self.learning_rate
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                or not np.isfinite(value) or value <= 0:
            raise self._invalid("learning_rate", "a finite number > 0")
        return float(value)

    def _check_optimizer(self):
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in _OPTIMIZERS:
            raise self._invalid("optimizer", f"one of {sorted(_OPTIMIZERS)}")
        return self.optimizer.lower()

    def _check_random_state(self):
        try:
            return check_random_state(self.random_state)
        except ValueError:
            raise self._invalid("random_state", "None, an int or a numpy RandomState") from None

    def _check_dtype(self):
        dtype = None
        if self.dtype is not None:  # np.dtype(None) would be float64
            try:
                dtype = np.dtype(self.dtype)
            except TypeError:
                pass
        if dtype not in (np.float32, np.float64):
            raise self._invalid("dtype", "'float32' or 'float64'")
        return dtype

    def _checked_params(self):
        """The parameters checked, in the constructor's order, and converted to plain Python
        values for the cgru calls: {name: value}. A ValueError names the first wrong one."""
        return {
            "units": self._check_int("units", 1),
            "num_layers": self._check_int("num_layers", 1),
            "bidirectional": self._check_bool("bidirectional"),
            "dropout": self._check_fraction("dropout"),
            "epochs": self._check_int("epochs", 1),
            "batch_size": self._check_int("batch_size", 1),
            "learning_rate": self._check_learning_rate(),
            "optimizer": self._check_optimizer(),
            "validation_fraction": self._check_fraction("validation_fraction"),
            "early_stopping": self._check_bool("early_stopping"),
            "patience": self._check_int("patience", 0),
            "shuffle": self._check_bool("shuffle"),
            "random_state": self._check_random_state(),  # a RandomState
            "verbose": self._check_int("verbose", 0, bool_too=True),  # True: 1
            "dtype": self._check_dtype(),  # a numpy dtype
        }

    # ---- input validation -----------------------------------------------------------------------

    def _validate(self, X, y="no_validation", reset=False, dtype=None, **y_checks):
        """X (and y when given) checked and converted by scikit-learn (finite real numbers, at
        least one sample, feature names), then X's layout: 2-D or 3-D, and after fit the
        layout and number of features of the training X. Returns X as (n, time, features)
        in `dtype` (the fitted network's after fit), and y when given. `reset` records X's
        layout (fit)."""
        # ensure_2d=False: validate_data then leaves n_features_in_ to us, as 3-D X counts
        # its features on the last axis (see the module docstring); 1-D X is refused below.
        dtype = self.model_.dtype if dtype is None else dtype
        checks = dict(allow_nd=True, ensure_2d=False, dtype=dtype.type)
        with_y = not (isinstance(y, str) and y == "no_validation")  # fit passes y, even None
        if with_y:
            X, y = _sklearn_validate_data(self, X, y, reset=reset, **checks, **y_checks)
        else:
            X = _sklearn_validate_data(self, X, reset=reset, **checks)
        name = type(self).__name__
        if X.ndim not in (2, 3):
            raise ValueError(
                f"{name}: X must be 2-D (n_samples, n_timesteps) or 3-D (n_samples, "
                f"n_timesteps, n_features), got a {X.ndim}-D array of shape {X.shape}. Reshape "
                f"your data: X.reshape(1, -1) if it is one sequence, X.reshape(-1, 1) if it "
                f"holds one value per sample.")
        if X.ndim == 3 and 0 in X.shape[1:]:
            raise ValueError(f"{name}: found 3-D X of shape {X.shape}, with no time steps or "
                             f"no features; at least one of each is required")
        n_features = X.shape[1] if X.ndim == 2 else X.shape[2]
        if reset:
            self.n_features_in_ = n_features
            self.n_timesteps_in_ = X.shape[1]
            self._X_ndim = X.ndim
        else:
            if X.ndim != self._X_ndim:
                layout = ("2-D (n_samples, n_timesteps)" if self._X_ndim == 2
                          else "3-D (n_samples, n_timesteps, n_features)")
                raise ValueError(f"{name} was fitted on {layout} X; X of the same layout is "
                                 f"required, got a {X.ndim}-D array of shape {X.shape}")
            if n_features != self.n_features_in_:
                what = "features" if X.ndim == 2 else "features per time step"
                # scikit-learn's own wording, which its estimator checks look for
                raise ValueError(f"X has {n_features} {what}, but {name} is expecting "
                                 f"{self.n_features_in_} {what} as input.")
        X = X[:, :, np.newaxis] if X.ndim == 2 else X
        return (X, y) if with_y else X

    # ---- the network ----------------------------------------------------------------------------

    def _fit_network(self, params, X, targets, stratify=None):
        """Build, compile and train the network on X (n, time, features) and `targets`, the
        encoded y, with the checked `params`; records model_, history_ and n_iter_.
        `stratify`: class codes for a stratified validation split."""
        p = params
        out_units, activation, loss = self._output(targets)
        seed, split_seed = (int(s) for s in
                            p["random_state"].randint(np.iinfo(np.int32).max, size=2))

        model = Sequential(seed=seed, dtype=p["dtype"].name)
        # any number of time steps: 3-D X of another length is scored after fit
        model.add(_layers.Input(shape=(None, X.shape[2])))
        for i in range(p["num_layers"]):
            gru = _layers.GRU(p["units"], return_sequences=i < p["num_layers"] - 1)
            model.add(_layers.Bidirectional(gru) if p["bidirectional"] else gru)
            if p["dropout"] > 0:
                model.add(_layers.Dropout(p["dropout"]))
        model.add(_layers.Dense(out_units, activation=activation))
        model.compile(optimizer=_OPTIMIZERS[p["optimizer"]](learning_rate=p["learning_rate"]),
                      loss=loss)

        validation_data = None
        if p["validation_fraction"] > 0:
            X, targets, validation_data = self._split(X, targets, p["validation_fraction"],
                                                      stratify, split_seed)
        callbacks = []
        if p["early_stopping"]:
            monitor = "loss" if validation_data is None else "val_loss"
            callbacks.append(_callbacks.EarlyStopping(monitor=monitor, patience=p["patience"],
                                                      restore_best_weights=True))
        # cgru's fit: verbose=2 prints a line per epoch, verbose=1 draws a progress bar
        verbose = {0: 0, 1: 2}.get(p["verbose"], 1)
        history = model.fit(X, targets, batch_size=p["batch_size"], epochs=p["epochs"],
                            verbose=verbose, shuffle=p["shuffle"],
                            validation_data=validation_data, callbacks=callbacks)
        self.model_ = model
        self.history_ = {key: [float(v) for v in values]
                         for key, values in history.history.items()}
        self.n_iter_ = len(history.epoch)
        return self

    def _split(self, X, targets, fraction, stratify, seed):
        """(X_train, targets_train, (X_val, targets_val)): `fraction` of the samples drawn at
        random, stratified by `stratify` when given and every class allows it."""
        n = len(X)
        n_val = int(np.ceil(fraction * n))  # as train_test_split counts
        if n_val >= n:
            raise ValueError(f"{type(self).__name__}: validation_fraction={fraction} of {n} "
                             f"samples leaves no training samples; use a smaller "
                             f"validation_fraction or more samples")
        indices = np.arange(n)
        try:
            train, val = train_test_split(indices, test_size=n_val, random_state=seed,
                                          stratify=stratify)
        except ValueError:  # a class too small to stratify: a plain random split
            train, val = train_test_split(indices, test_size=n_val, random_state=seed)
        return X[train], targets[train], (X[val], targets[val])

    def _predict_network(self, X):
        """The network's outputs for X, checked against the training X."""
        check_is_fitted(self)
        return self.model_.predict(self._validate(X))


class GRURegressor(RegressorMixin, _GRUEstimator):
    __doc__ = f"""Regression of sequences with a GRU network (cgru).

    A stack of GRU layers reads each sequence; a linear `Dense` layer maps the last one's
    final state to the targets, trained with the mean squared error. `score` is R^2.

    Parameters
    ----------
{_PARAMETERS_DOC}
    Attributes
    ----------
{_ATTRIBUTES_DOC}
    n_outputs_ : int
        Number of targets: 1 for y of shape (n_samples,), else y.shape[1].

    Examples
    --------
    >>> import numpy as np
    >>> from cgru.sklearn import GRURegressor
    >>> X = np.random.default_rng(0).standard_normal((200, 10))   # 200 series of 10 steps
    >>> y = X[:, -3:].sum(axis=1)
    >>> reg = GRURegressor(units=16, epochs=20, random_state=0).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):
        return {**super()._more_tags(), "multioutput": True}

    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Train a new network on sequences X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or (n_samples, n_timesteps, n_features)
            Training sequences.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.

        Returns
        -------
        self : GRURegressor
            The fitted estimator.
        """
        params = self._checked_params()
        X, y = self._validate(X, y, reset=True, dtype=params["dtype"], multi_output=True,
                              y_numeric=True)
        self._y_1d = y.ndim == 1
        targets = y.reshape(len(y), -1).astype(params["dtype"], copy=False)
        self.n_outputs_ = targets.shape[1]
        return self._fit_network(params, X, targets)

    def _output(self, targets):
        """(units, activation, loss) of the output layer: linear, one unit per target."""
        return targets.shape[1], None, "mse"

    def predict(self, X: ArrayLike) -> npt.NDArray[np.float64]:
        """Predicted targets for sequences X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or (n_samples, n_timesteps, n_features)
            Sequences, in the layout of the training X.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions (float64, as scikit-learn's regressors return), 1-D when fit got a
            1-D y.
        """
        out = self._predict_network(X).astype(np.float64)
        return out[:, 0] if self._y_1d else out


class GRUClassifier(ClassifierMixin, _GRUEstimator):
    __doc__ = f"""Classification of sequences with a GRU network (cgru).

    A stack of GRU layers reads each sequence; a `Dense` layer maps the last one's final state
    to class probabilities: one sigmoid output with binary cross-entropy for two classes, a
    softmax with sparse categorical cross-entropy for more. Labels may be any values
    (numbers, strings); `score` is the accuracy.

    Parameters
    ----------
{_PARAMETERS_DOC}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted; column k of `predict_proba` is the probability of
        `classes_[k]`.

{_ATTRIBUTES_DOC}
    Examples
    --------
    >>> import numpy as np
    >>> from cgru.sklearn import GRUClassifier
    >>> X = np.random.default_rng(0).standard_normal((200, 10))   # 200 series of 10 steps
    >>> y = np.where(X[:, -1] > 0, "up", "down")
    >>> clf = GRUClassifier(units=16, epochs=20, random_state=0).fit(X, y)
    >>> clf.classes_
    array(['down', 'up'], dtype='<U4')
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Train a new network on sequences X and class labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or (n_samples, n_timesteps, n_features)
            Training sequences.
        y : array-like of shape (n_samples,)
            Class labels (numbers or strings), at least two distinct ones.

        Returns
        -------
        self : GRUClassifier
            The fitted estimator.
        """
        params = self._checked_params()
        X, y = self._validate(X, y, reset=True, dtype=params["dtype"], multi_output=False)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(f"GRUClassifier needs samples of at least 2 classes in y; y holds "
                             f"one class only: {encoder.classes_[0]!r}")
        self.classes_ = encoder.classes_
        codes = encoder.transform(y)
        return self._fit_network(params, X, codes, stratify=codes)

    def _output(self, codes):
        """(units, activation, loss) of the output layer, for the class codes 0 .. k-1."""
        if len(self.classes_) == 2:  # one sigmoid unit: the probability of classes_[1]
            return 1, "sigmoid", "binary_crossentropy"
        return len(self.classes_), "softmax", "sparse_categorical_crossentropy"

    def predict_proba(self, X: ArrayLike) -> npt.NDArray[np.float64]:
        """Class probabilities for sequences X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or (n_samples, n_timesteps, n_features)
            Sequences, in the layout of the training X.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), float64
            Column k holds the probability of `classes_[k]`; each row sums to 1.
        """
        out = self._predict_network(X).astype(np.float64)
        if len(self.classes_) == 2:
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out / out.sum(axis=1, keepdims=True)  # the softmax, summed in float64

    def predict(self, X: ArrayLike) -> npt.NDArray[Any]:
        """Predicted class labels for sequences X: the most probable class of each.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or (n_samples, n_timesteps, n_features)
            Sequences, in the layout of the training X.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from `classes_`.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
