"""Type information for the public API (issue 16): `cgru/py.typed` ships, every public function
and method below is annotated, and a typed user script type-checks against cgru under
`mypy --strict` (when mypy is installed). The internals need not pass mypy --strict."""
import importlib
import inspect
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cgru

# The public API that must carry annotations, by module: "name" is a module-level function (or
# class: its __init__), "Class.member" a method, classmethod or property of that class.
_LAYER_METHODS = ["__init__", "__call__", "get_weights", "set_weights", "get_config"]
_LAYERS = ["GRU", "Bidirectional", "Dense", "Dropout", "Embedding", "Masking", "TimeDistributed",
           "Concatenate", "Add"]
_HOOKS = ["set_model", "on_train_begin", "on_epoch_begin", "on_train_batch_begin",
          "on_train_batch_end", "on_batch_begin", "on_batch_end", "on_epoch_end", "on_train_end"]
_CALLBACKS = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
              "CSVLogger", "TerminateOnNaN"]
_LOSSES = ["MeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError", "Huber",
           "LogCosh", "BinaryCrossentropy", "CategoricalCrossentropy",
           "SparseCategoricalCrossentropy"]
_METRICS = ["MeanSquaredError", "RootMeanSquaredError", "MeanAbsoluteError",
            "MeanAbsolutePercentageError", "BinaryAccuracy", "CategoricalAccuracy",
            "SparseCategoricalAccuracy"]

PUBLIC_API = {
    "cgru.gru": ["set_num_threads", "get_num_threads"] + [f"GRU.{m}" for m in [
        "__init__", "forward", "__call__", "backward", "step", "train", "eval", "zero_grad",
        "state_dict", "load_state_dict", "named_parameters", "parameters",
        # properties
        "input_size", "hidden_size", "num_layers", "bias", "bidirectional", "reset_after",
        "dtype", "num_directions", "batch_first", "dropout"]],
    "cgru.models": ["load_model"] + [f"Model.{m}" for m in [
        "__init__", "compile", "fit", "predict", "evaluate", "train_on_batch", "gradients",
        "summary", "get_layer", "get_weights", "set_weights", "save", "reset_states",
        "get_config", "from_config", "inputs", "outputs", "trainable_weights"]] + [
        f"Sequential.{m}" for m in ["__init__", "add", "build"]],
    "cgru.graph": ["Input", "KerasTensor.__init__"],
    "cgru.layers": [f"Layer.{m}" for m in _LAYER_METHODS] + [
        f"{layer}.{m}" for layer in _LAYERS for m in _LAYER_METHODS + ["from_config"]] + [
        "GRU.reset_states", "Bidirectional.reset_states"],
    "cgru.callbacks": [f"{cb}.{m}" for cb in _CALLBACKS for m in ["__init__"] + _HOOKS],
    "cgru.losses": ["get", "serialize", "deserialize", "Loss.__call__", "Loss.gradient"] + [
        f"{loss}.{m}" for loss in _LOSSES for m in ["__init__", "__call__", "gradient"]],
    "cgru.metrics": ["get", "Metric.__init__", "Metric.reset", "Metric.result"] + [
        f"{metric}.{m}" for metric in _METRICS for m in ["__init__", "update", "result"]],
    "cgru.optimizers": ["get", "serialize", "deserialize"] + [
        f"{opt}.{m}" for opt in ["Optimizer", "SGD", "Adam", "RMSprop"]
        for m in ["__init__", "apply", "get_config", "current_learning_rate"]],
    "cgru.schedules": [f"{s}.{m}" for s in ["ExponentialDecay", "StepDecay"]
                       for m in ["__init__", "__call__"]],
    "cgru.interop": ["from_torch", "to_torch", "from_keras", "to_keras", "export_onnx",
                     "load_onnx", "from_seed_convention"],
    "cgru.distributed": ["rank", "size", "is_root"],
    "cgru.dask": ["predict"],
    "cgru.sklearn": [f"{est}.{m}" for est, methods in [
        ("GRURegressor", ["__init__", "fit", "predict"]),
        ("GRUClassifier", ["__init__", "fit", "predict", "predict_proba"])] for m in methods],
}
# modules of optional dependencies: their entries are checked where the dependency is installed
_OPTIONAL = {"cgru.dask": "dask", "cgru.sklearn": "sklearn"}


def _function(module, dotted):
    """The function behind `dotted` in `module`: a method, a classmethod's function, a
    property's getter, or a class's __init__."""
    owner, _, member = dotted.rpartition(".")
    obj = getattr(module, owner) if owner else module
    if owner:
        raw = inspect.getattr_static(obj, member)
        if isinstance(raw, property):
            return raw.fget
        if isinstance(raw, (classmethod, staticmethod)):
            return raw.__func__
    value = getattr(obj, member)
    return value.__init__ if inspect.isclass(value) else value


def _unannotated(function):
    """What `function` leaves unannotated: its return, and each parameter but self and cls."""
    signature = inspect.signature(function)
    missing = [] if signature.return_annotation is not inspect.Signature.empty else ["return"]
    missing += [name for i, (name, parameter) in enumerate(signature.parameters.items())
                if parameter.annotation is inspect.Parameter.empty
                and not (i == 0 and name in ("self", "cls"))]
    return missing


def test_py_typed_marker_ships():
    assert (Path(cgru.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_public_functions_and_methods_are_annotated(module_name):
    if module_name in _OPTIONAL:
        pytest.importorskip(_OPTIONAL[module_name])
    module = importlib.import_module(module_name)
    problems = []
    for dotted in PUBLIC_API[module_name]:
        function = _function(module, dotted)
        if function is object.__init__:  # a class that takes no arguments and defines none
            continue
        missing = _unannotated(function)
        if missing:
            problems.append(f"{module_name}.{dotted}: no annotation for {', '.join(missing)}")
    assert not problems, "\n".join(problems)


# A user's script, as the README uses the API; assert_type fails if cgru's types were not found
# (an unresolved cgru would make every name Any).
_USER_SCRIPT = '''
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import cgru
from cgru import callbacks, interop, layers, losses, optimizers


def keras_style() -> None:
    X = np.random.rand(16, 6, 3).astype(np.float32)
    y = X[:, -2:, :1].sum(axis=1)
    model = cgru.Sequential([layers.GRU(8, return_sequences=True, input_shape=(None, 3)),
                             layers.GRU(4), layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    history = model.fit(X, y, epochs=1, verbose=0, callbacks=[callbacks.EarlyStopping()])
    assert_type(history, callbacks.History)
    assert_type(model.evaluate(X, y, return_dict=True), dict[str, float])
    assert_type(model.get_layer(index=0), layers.Layer)
    assert_type(model.train_on_batch(X, y), float)
    assert_type(model.summary(print_fn=None), str)
    print(model.predict(X).shape, model.get_weights()[0].shape)


def functional() -> cgru.Model:
    inputs = cgru.Input(shape=(None, 3))
    assert_type(inputs, cgru.graph.KerasTensor)
    h = layers.GRU(8, return_sequences=True)(inputs)
    model = cgru.Model(inputs, layers.TimeDistributed(layers.Dense(1))(h))
    model.compile(optimizers.Adam(learning_rate=1e-3), losses.Huber(1.0))
    assert_type(layers.Dense.from_config(layers.Dense(2).get_config()), layers.Dense)
    return model


def engine() -> None:
    assert_type(cgru.get_num_threads(), int)
    gru = cgru.GRU(3, 4, num_layers=2, batch_first=True)
    assert_type(gru.eval(), cgru.GRU)
    y, h_n = gru(np.ones((2, 5, 3), np.float32))
    assert_type(y, npt.NDArray[np.floating[Any]])
    assert_type(gru.step(np.ones((2, 3), np.float32), h_n), npt.NDArray[np.floating[Any]])
    for name, value in gru.named_parameters():
        print(name.upper(), value.shape)
    assert_type(gru.hidden_size, int)


def signatures() -> None:
    from_torch: Callable[..., cgru.GRU] = interop.from_torch
    load: Callable[..., cgru.Model] = cgru.load_model
    print(from_torch, load)


class Stop(callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.stop_training = epoch > 2
'''


def _mypy_path():
    """MYPYPATH for finding this cgru: the folder holding the package, unless that is a
    site-packages folder (mypy finds installed packages itself, and refuses those in MYPYPATH).
    An editable install runs through an import hook, which mypy does not follow."""
    parent = str(Path(cgru.__file__).resolve().parent.parent)
    folders = site.getsitepackages() + [site.getusersitepackages()]
    installed = {str(Path(p).resolve()) for p in folders}
    return None if parent in installed else parent


def test_a_typed_user_script_type_checks_under_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(_USER_SCRIPT))
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    path = _mypy_path()
    if path is not None:
        env["MYPYPATH"] = path
    # silent: cgru's internals are not held to --strict, only what a user's code sees of them;
    # third-party packages without types (torch's dependencies, ...) are not this test's concern
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
               "--ignore-missing-imports", "--cache-dir", str(tmp_path / ".mypy_cache"),
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
               str(script)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Success: no issues found" in output, output
