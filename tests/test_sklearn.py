"""cgru.sklearn: GRURegressor and GRUClassifier are scikit-learn estimators.

They pass scikit-learn's own estimator checks, learn simple sequence tasks, take 2-D and 3-D X,
are reproducible from random_state, work in Pipeline / GridSearchCV / cross_val_score, survive
pickling, refuse bad parameters by name, and scikit-learn stays optional for `import cgru`.
"""
import inspect
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from cgru.sklearn import GRUClassifier, GRURegressor  # noqa: E402

# Small and quick settings for the tests (the defaults train longer, with 32 units).
FAST = dict(units=16, epochs=20, learning_rate=0.01)


def _regression_data(n=400, timesteps=8, seed=0):
    """2-D X (n, timesteps), one value per step; y the sum of the last three steps."""
    X = np.random.default_rng(seed).standard_normal((n, timesteps))
    return X, X[:, -3:].sum(axis=1)


def _trend_data(n=400, timesteps=12, seed=0):
    """3-D X (n, timesteps, 2): feature 0 a falling, flat or rising line plus noise, feature 1
    noise alone; labels 'falling', 'flat', 'rising'."""
    rng = np.random.default_rng(seed)
    slope = rng.integers(-1, 2, size=n)
    line = slope[:, None] * np.linspace(-1, 1, timesteps) + 0.3 * rng.standard_normal(
        (n, timesteps))
    X = np.stack([line, rng.standard_normal((n, timesteps))], axis=2)
    return X, np.array(["falling", "flat", "rising"])[slope + 1]


# ---- scikit-learn's estimator checks ------------------------------------------------------------

# Checks expected to fail, {check name: reason}: none. Every check passes (scikit-learn 1.4.2,
# 1.5.2 and 1.9.1 tried; the pandas checks need pandas installed, else they are skipped).
EXPECTED_FAILED_CHECKS = {}

# Enough training for the checks that require a good score on their small data sets
# (check_regressors_train: R^2 > 0.5; check_classifiers_train: accuracy > 0.83).
CHECKED = [GRURegressor(units=16, epochs=50, learning_rate=0.01),
           GRUClassifier(units=16, epochs=50, learning_rate=0.01)]

_check_options = {}
if "expected_failed_checks" in inspect.signature(parametrize_with_checks).parameters:  # >= 1.6
    _check_options["expected_failed_checks"] = lambda estimator: EXPECTED_FAILED_CHECKS


@parametrize_with_checks(CHECKED, **_check_options)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ---- learning -----------------------------------------------------------------------------------

def test_regressor_learns_the_sum_of_the_last_steps():
    X, y = _regression_data()
    reg = GRURegressor(**FAST, random_state=0).fit(X[:300], y[:300])
    assert reg.score(X[300:], y[300:]) > 0.9
    prediction = reg.predict(X[300:])
    assert prediction.shape == (100,) and prediction.dtype == np.float64


def test_classifier_learns_the_trend_and_gives_probabilities():
    X, labels = _trend_data()
    clf = GRUClassifier(**FAST, random_state=0).fit(X[:300], labels[:300])
    assert clf.score(X[300:], labels[300:]) > 0.9
    proba = clf.predict_proba(X[300:])
    assert proba.shape == (100, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all((proba >= 0) & (proba <= 1))
    # predict is the most probable class
    np.testing.assert_array_equal(clf.predict(X[300:]), clf.classes_[proba.argmax(axis=1)])


def test_binary_classifier_with_string_labels():
    X, labels = _trend_data()
    y = np.where(labels == "rising", "up", "not up")
    clf = GRUClassifier(**FAST, random_state=0).fit(X[:300], y[:300])
    np.testing.assert_array_equal(clf.classes_, ["not up", "up"])
    predicted = clf.predict(X[300:])
    assert predicted.dtype == y.dtype and set(predicted) <= {"up", "not up"}
    assert clf.score(X[300:], y[300:]) > 0.9
    proba = clf.predict_proba(X[300:])
    assert proba.shape == (100, 2)  # columns: P(classes_[0]) = 1 - P(classes_[1])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert clf.model_.layers[-1].units == 1  # one sigmoid output for two classes


def test_labels_round_trip():
    X, labels = _trend_data(n=120)
    codes = {"falling": -7, "flat": 3, "rising": 11}
    for y in (labels, labels.astype(object), np.array([codes[v] for v in labels])):
        clf = GRUClassifier(**FAST, random_state=0).fit(X, y)
        np.testing.assert_array_equal(clf.classes_, np.unique(y))
        assert set(clf.predict(X)) <= set(np.unique(y))


def test_one_class_is_refused():
    X, _ = _trend_data(n=20)
    with pytest.raises(ValueError, match="one class"):
        GRUClassifier(**FAST).fit(X, ["same"] * 20)


def test_multi_output_regression_and_column_y():
    X, y = _regression_data(n=100)
    Y = np.column_stack([y, -y])
    reg = GRURegressor(**FAST, random_state=0).fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (100, 2)
    # y of shape (n, 1) gives predictions (n, 1), the same numbers as y of shape (n,)
    column = GRURegressor(**FAST, random_state=0).fit(X, y[:, None]).predict(X)
    flat = GRURegressor(**FAST, random_state=0).fit(X, y).predict(X)
    assert column.shape == (100, 1) and flat.shape == (100,)
    np.testing.assert_array_equal(column[:, 0], flat)


def test_network_structure_follows_the_parameters():
    X, labels = _trend_data(n=60)
    clf = GRUClassifier(units=5, num_layers=2, bidirectional=True, dropout=0.2, epochs=2,
                        random_state=0).fit(X, labels)
    kinds = [type(layer).__name__ for layer in clf.model_.layers]
    assert kinds == ["Bidirectional", "Dropout", "Bidirectional", "Dropout", "Dense"]
    assert clf.model_.layers[0].layer.units == 5 and clf.model_.layers[-1].units == 3
    assert clf.model_.dtype == np.float32
    reg = GRURegressor(units=3, epochs=1, dtype="float64", random_state=0)
    reg.fit(*_regression_data(n=20))
    assert [type(layer).__name__ for layer in reg.model_.layers] == ["GRU", "Dense"]
    assert reg.model_.dtype == np.float64


# ---- input layouts ------------------------------------------------------------------------------

def test_2d_x_is_one_value_per_step_with_the_same_steps_at_predict():
    X, y = _regression_data(n=60, timesteps=8)
    reg = GRURegressor(**FAST, random_state=0).fit(X, y)
    assert reg.n_features_in_ == 8 and reg.n_timesteps_in_ == 8  # columns, as scikit-learn counts
    assert reg.model_.input_shape[-1] == 1
    # the same sequences given as 3-D (n, 8, 1) train the same network
    reg3 = GRURegressor(**FAST, random_state=0).fit(X[:, :, None], y)
    assert reg3.n_features_in_ == 1
    np.testing.assert_array_equal(reg.predict(X), reg3.predict(X[:, :, None]))
    with pytest.raises(ValueError, match="X has 5 features, but GRURegressor is expecting 8"):
        reg.predict(X[:, :5])
    with pytest.raises(ValueError, match="fitted on 2-D"):
        reg.predict(X[:, :, None])


def test_3d_x_predicts_sequences_of_any_length_with_the_same_features():
    X, labels = _trend_data(n=100, timesteps=12)
    clf = GRUClassifier(**FAST, random_state=0).fit(X, labels)
    assert clf.n_features_in_ == 2 and clf.n_timesteps_in_ == 12
    assert clf.predict(X[:, :7]).shape == (100,)
    assert clf.predict(np.concatenate([X, X], axis=1)).shape == (100,)
    with pytest.raises(ValueError, match="X has 1 features per time step, but GRUClassifier "
                                         "is expecting 2"):
        clf.predict(X[:, :, :1])
    with pytest.raises(ValueError, match="fitted on 3-D"):
        clf.predict(X[:, :, 0])


@pytest.mark.parametrize("X, match", [
    (np.zeros(10), "Reshape your data"),
    (np.zeros((10, 3, 2, 1)), "must be 2-D .* or 3-D"),
    (np.zeros((10, 0, 2)), "no time steps or no features"),
    (np.full((10, 4), np.nan), "NaN"),
])
def test_malformed_x_is_refused(X, match):
    with pytest.raises(ValueError, match=match):
        GRURegressor(**FAST).fit(X, np.zeros(10))


# ---- reproducibility ----------------------------------------------------------------------------

def test_the_same_random_state_gives_identical_predictions():
    X, labels = _trend_data(n=120)
    settings = dict(FAST, dropout=0.2, validation_fraction=0.2, early_stopping=True, patience=2)

    def proba(random_state):
        return GRUClassifier(**settings, random_state=random_state).fit(X, labels) \
            .predict_proba(X)

    np.testing.assert_array_equal(proba(7), proba(7))
    np.testing.assert_array_equal(proba(np.random.RandomState(7)),
                                  proba(np.random.RandomState(7)))
    assert not np.array_equal(proba(7), proba(8))
    # refitting one estimator with an int random_state repeats the fit
    clf = GRUClassifier(**settings, random_state=3)
    first = clf.fit(X, labels).predict_proba(X)
    np.testing.assert_array_equal(clf.fit(X, labels).predict_proba(X), first)


# ---- training options ---------------------------------------------------------------------------

def test_history_validation_and_early_stopping():
    X, y = _regression_data(n=200)
    reg = GRURegressor(**dict(FAST, epochs=5), random_state=0).fit(X, y)
    assert reg.n_iter_ == 5 and list(reg.history_) == ["loss"] and len(reg.history_["loss"]) == 5

    reg = GRURegressor(**dict(FAST, epochs=5), validation_fraction=0.25, random_state=0).fit(X, y)
    assert sorted(reg.history_) == ["loss", "val_loss"] and len(reg.history_["val_loss"]) == 5

    # early stopping on the validation loss: training stops once it has not improved for
    # `patience` epochs in a row, and the model keeps the weights of its best epoch
    reg = GRURegressor(**dict(FAST, epochs=300), validation_fraction=0.25, early_stopping=True,
                       patience=3, random_state=0).fit(X[:40], y[:40])
    losses = reg.history_["val_loss"]
    assert reg.n_iter_ < 300 and len(losses) == reg.n_iter_
    assert reg.n_iter_ == int(np.argmin(losses)) + 1 + 3


def test_verbose_prints_one_line_per_epoch(capsys):
    X, y = _regression_data(n=40)
    GRURegressor(**dict(FAST, epochs=3), verbose=1, random_state=0).fit(X, y)
    assert capsys.readouterr().err.count("Epoch ") == 3


# ---- scikit-learn tools -------------------------------------------------------------------------

def test_pipeline_with_scaler():
    X, y = _regression_data()
    pipe = make_pipeline(StandardScaler(), GRURegressor(**FAST, random_state=0))
    assert pipe.fit(X[:300], y[:300]).score(X[300:], y[300:]) > 0.9
    # a transformer can shape the sequences: 2-D columns to 3-D (n, steps, 1)
    to_3d = FunctionTransformer(lambda X: np.asarray(X)[:, :, None])
    pipe = make_pipeline(to_3d, GRURegressor(**FAST, random_state=0)).fit(X[:300], y[:300])
    assert pipe[-1].n_features_in_ == 1 and pipe.score(X[300:], y[300:]) > 0.9


def test_grid_search_and_cross_validation():
    X, labels = _trend_data(n=160)
    grid = GridSearchCV(GRUClassifier(epochs=10, random_state=0),
                        {"units": [4, 12], "learning_rate": [0.003, 0.03]}, cv=2)
    grid.fit(X, labels)
    assert len(grid.cv_results_["params"]) == 4
    assert grid.best_params_["units"] in (4, 12)
    assert grid.best_estimator_.model_.layers[0].units == grid.best_params_["units"]
    assert grid.score(X, labels) > 0.8

    scores = cross_val_score(GRURegressor(**FAST, random_state=0), *_regression_data(n=150), cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.5)


def test_clone_and_parameters():
    reg = GRURegressor(units=7, learning_rate=0.02)
    assert reg.get_params()["units"] == 7
    assert reg.set_params(units=9) is reg and reg.units == 9
    X, y = _regression_data(n=30)
    reg.set_params(epochs=1).fit(X, y)
    fresh = clone(reg)
    assert fresh.get_params() == reg.get_params() and not hasattr(fresh, "model_")
    assert "units=9" in repr(reg)


def test_pickled_estimator_predicts_the_same():
    X, labels = _trend_data(n=100)
    clf = GRUClassifier(**FAST, random_state=0).fit(X, labels)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(again.classes_, clf.classes_)
    assert again.history_ == clf.history_ and again.n_iter_ == clf.n_iter_


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("Estimator", [GRURegressor, GRUClassifier])
def test_not_fitted(Estimator):
    X = np.zeros((3, 4))
    methods = ["predict", "score"] + (["predict_proba"] if Estimator is GRUClassifier else [])
    for method in methods:
        args = (X, np.zeros(3)) if method == "score" else (X,)
        with pytest.raises(NotFittedError):
            getattr(Estimator(), method)(*args)


@pytest.mark.parametrize("name, value", [
    ("units", 0), ("units", 2.5), ("num_layers", 0), ("bidirectional", "yes"),
    ("dropout", 1.0), ("dropout", -0.1), ("epochs", 0), ("batch_size", 0),
    ("learning_rate", 0), ("learning_rate", float("nan")), ("optimizer", "adagrad"),
    ("validation_fraction", 1.0), ("early_stopping", 1), ("patience", -1), ("shuffle", None),
    ("random_state", "seed"), ("random_state", np.random.default_rng(0)), ("verbose", -1),
    ("verbose", "loud"), ("dtype", "float16"), ("dtype", "nonsense"), ("dtype", None),
])
def test_bad_parameters_are_refused_by_name(name, value):
    X, y = _regression_data(n=20)
    estimator = GRURegressor(**{name: value})  # __init__ stores without checking
    assert getattr(estimator, name) is value
    with pytest.raises(ValueError, match=rf"GRURegressor: {name} must be .*, got "
                                         rf"{re.escape(repr(value))}$"):
        estimator.fit(X, y)


def test_numpy_scalars_are_good_parameters():
    # as a grid of np.arange or np.linspace gives them
    X, y = _regression_data(n=40)
    reg = GRURegressor(units=np.int64(4), epochs=np.int32(3), batch_size=np.int64(16),
                       learning_rate=np.float32(0.01), dropout=np.float64(0.1),
                       early_stopping=np.bool_(True), patience=np.int64(1), verbose=False,
                       random_state=np.int64(0)).fit(X, y)
    assert reg.model_.layers[0].units == 4 and 1 <= reg.n_iter_ <= 3


def test_validation_fraction_too_large_for_the_data():
    X, y = _regression_data(n=3)
    with pytest.raises(ValueError, match="validation_fraction=0.9 of 3 samples"):
        GRURegressor(**FAST, validation_fraction=0.9).fit(X, y)


# ---- scikit-learn stays optional ----------------------------------------------------------------

def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_import_cgru_does_not_import_sklearn():
    result = _run_python("import sys, cgru, cgru.models, cgru.layers\n"
                         "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
                         "assert 'cgru.sklearn' not in sys.modules\n")
    assert result.returncode == 0, result.stderr


def test_cgru_sklearn_without_scikit_learn_says_how_to_install_it():
    result = _run_python("import sys\n"
                         "sys.modules['sklearn'] = None  # as if scikit-learn were not installed\n"
                         "try:\n"
                         "    import cgru.sklearn\n"
                         "except ImportError as e:\n"
                         "    print(e)\n"
                         "else:\n"
                         "    raise SystemExit('no ImportError')\n")
    assert result.returncode == 0, result.stderr
    assert "pip install scikit-learn" in result.stdout
