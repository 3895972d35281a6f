"""Whole models: cgru.Model / cgru.Sequential against Keras 3 (the oracle), Keras's loss
reductions, masked training, the functional API, saving, and bad graphs.

1. Models against Keras: the same architecture is built by one function from either library
   (`api` is cgru or Keras), weights are copied by layer name, and predictions, evaluate() and
   the weights after a few epochs of plain SGD agree within 1e-5 (float32): an
   Embedding(mask_zero)+GRU+Dense text classifier, a GRU+TimeDistributed(Dense) forecaster,
   Bidirectional with masks, branching graphs, stateful GRUs.
2. Loss reductions as Keras's: the mean over positions; sample weights multiply each position's
   loss; class weights are per-class sample weights (1 for a class not named); with masked
   sequence outputs the mean is over the valid positions only.
3. Masks in training: a padded batch's gradient is the average of the gradients of each
   sequence alone, unpadded (weighted by valid steps for sequence outputs).
4. The functional API: get_layer, summary, get_config / from_config, save / load (bit-identical
   predictions), a free time axis, input_shape, the file-name rules.
5. Bad graphs and bad data: a clear exception naming the tensor, layer or argument.

Layers alone and gradients against finite differences: tests/test_keras_layers.py.
"""
import os
import types

import numpy as np
import pytest

import cgru
from cgru import layers, optimizers

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch: no TensorFlow needed

VOCABULARY, EMBED, UNITS = 20, 6, 8
CGRU = types.SimpleNamespace(layers=layers, Input=cgru.Input, Model=cgru.Model,
                             Sequential=cgru.Sequential, SGD=optimizers.SGD, name="cgru")


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def KERAS(keras):
    return types.SimpleNamespace(layers=keras.layers, Input=keras.Input, Model=keras.Model,
                                 Sequential=keras.Sequential, SGD=keras.optimizers.SGD,
                                 name="keras")


def numpy(keras, value):
    return keras.ops.convert_to_numpy(value)


def close(actual, expected, what="", atol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=what)


def copy_weights(source, target, seed=None):
    """Keras model -> cgru model, layer by layer by name (optionally randomizing the source's
    weights first, biases included)."""
    rng = np.random.default_rng(seed)
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if seed is not None:
            weights = [w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in weights]
            layer.set_weights(weights)
        target.get_layer(layer.name).set_weights(weights)


def assert_same_weights(keras_model, cgru_model, atol=1e-5):
    for layer in keras_model.layers:
        if not layer.get_weights():
            continue  # Keras lists its InputLayers; cgru's layers are the layer calls only
        for i, (theirs, ours) in enumerate(zip(layer.get_weights(),
                                               cgru_model.get_layer(layer.name).get_weights())):
            close(ours, theirs, f"{layer.name} weight {i}", atol=atol)


def padded(lengths, T, seed=0, holes=False, pre=False):
    """Integer sequences (1..VOCABULARY-1) of the given lengths, padded with 0 at the end (or
    at the start, as Keras's pad_sequences does by default; with holes, also zeros inside)."""
    rng = np.random.default_rng(seed)
    idx = np.zeros((len(lengths), T), np.int64)
    for i, n in enumerate(lengths):
        idx[i, :n] = rng.integers(1, VOCABULARY, n)
        if pre:
            idx[i] = np.roll(idx[i], T - n)
    if holes:
        idx[rng.random(idx.shape) < 0.25] = 0
    return idx


LENGTHS = [12, 3, 7, 1, 10, 5, 12, 2]
WITH_EMPTY = [12, 3, 0, 7, 1, 10, 5, 2]  # an empty sequence: all padding


# ==== 1. whole models against Keras =============================================================

def text_classifier(api):
    inputs = api.Input((None,), dtype="int32", name="tokens")
    h = api.layers.Embedding(VOCABULARY, EMBED, mask_zero=True, name="embed")(inputs)
    h = api.layers.GRU(UNITS, name="gru")(h)
    outputs = api.layers.Dense(1, activation="sigmoid", name="out")(h)
    return api.Model(inputs, outputs)


def forecaster(api, features=2):
    inputs = api.Input((None, features), name="series")
    h = api.layers.GRU(UNITS, return_sequences=True, name="gru")(inputs)
    h = api.layers.GRU(4, return_sequences=True, reset_after=False, name="gru2")(h)
    outputs = api.layers.TimeDistributed(api.layers.Dense(1), name="head")(h)
    return api.Model(inputs, outputs)


def bidirectional_tagger(api, merge_mode="concat"):
    inputs = api.Input((None,), dtype="int32", name="tokens")
    h = api.layers.Embedding(VOCABULARY, EMBED, mask_zero=True, name="embed")(inputs)
    h = api.layers.Bidirectional(api.layers.GRU(UNITS, return_sequences=True),
                                 merge_mode=merge_mode, name="bi")(h)
    outputs = api.layers.TimeDistributed(api.layers.Dense(3, activation="softmax"),
                                         name="tags")(h)
    return api.Model(inputs, outputs)


def bidirectional_classifier(api):
    inputs = api.Input((None,), dtype="int32", name="tokens")
    h = api.layers.Embedding(VOCABULARY, EMBED, mask_zero=True, name="embed")(inputs)
    h = api.layers.Bidirectional(api.layers.GRU(UNITS, return_sequences=True), name="bi")(h)
    h = api.layers.Bidirectional(api.layers.GRU(4), merge_mode="sum", name="bi2")(h)
    outputs = api.layers.Dense(3, activation="softmax", name="out")(h)
    return api.Model(inputs, outputs)


def twins(KERAS, build, seed=0, **kwargs):
    theirs, ours = build(KERAS, **kwargs), build(CGRU, **kwargs)
    copy_weights(theirs, ours, seed)
    return theirs, ours


def train_both(theirs, ours, KERAS, x, y, loss, epochs=3, batch_size=4, lr=0.5,
               metrics=None, **fit):
    theirs.compile(KERAS.SGD(lr), loss, metrics=metrics)
    ours.compile(CGRU.SGD(lr), loss, metrics=metrics)
    h_theirs = theirs.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0,
                          **fit).history
    h_ours = ours.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0,
                      **fit).history
    return h_theirs, h_ours


@pytest.mark.parametrize("padding", ["post", "pre", "holes"])
def test_text_classifier_equals_keras(keras, KERAS, padding):
    """Embedding(mask_zero) + GRU + Dense(sigmoid) on padded sequences of varying lengths (one
    empty): predictions, loss and accuracy, and the weights after three epochs of SGD."""
    x = padded(WITH_EMPTY, 12, holes=padding == "holes", pre=padding == "pre")
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    theirs, ours = twins(KERAS, text_classifier)
    close(ours.predict(x), theirs.predict(x, verbose=0))
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "binary_crossentropy",
                                  metrics=["accuracy"])
    close(h_ours["loss"], h_theirs["loss"])
    close(h_ours["accuracy"], h_theirs["accuracy"])
    assert_same_weights(theirs, ours)
    expected = theirs.evaluate(x, y, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, return_dict=True)
    assert got.keys() == expected.keys() == {"loss", "accuracy"}
    close(got["loss"], expected["loss"])
    assert got["accuracy"] == pytest.approx(expected["accuracy"])


def test_forecaster_equals_keras(keras, KERAS):
    """A functional GRU(return_sequences) + TimeDistributed(Dense) forecaster: predictions and
    training, on float inputs, with mse."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 15, 2)).astype(np.float32)
    y = np.cumsum(x[..., :1], axis=1) * 0.1
    theirs, ours = twins(KERAS, forecaster, seed=2)
    close(ours.predict(x), theirs.predict(x, verbose=0))
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "mse", metrics=["mae"], lr=0.1)
    close(h_ours["loss"], h_theirs["loss"])
    close(h_ours["mae"], h_theirs["mae"])
    assert_same_weights(theirs, ours)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
def test_bidirectional_tagger_with_masks_equals_keras(keras, KERAS, merge_mode):
    """Bidirectional over Embedding(mask_zero) in a functional model, with per-step softmax and
    the masked sparse_categorical_crossentropy: masked steps count neither in loss nor
    accuracy."""
    x = padded(WITH_EMPTY, 12, seed=3)
    y = np.random.default_rng(4).integers(0, 3, x.shape)
    theirs, ours = twins(KERAS, bidirectional_tagger, seed=5, merge_mode=merge_mode)
    close(ours.predict(x), theirs.predict(x, verbose=0))
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], epochs=2)
    close(h_ours["loss"], h_theirs["loss"])
    close(h_ours["accuracy"], h_theirs["accuracy"])
    assert_same_weights(theirs, ours)


def test_stacked_bidirectional_classifier_equals_keras(keras, KERAS):
    x = padded(LENGTHS, 12, seed=6, holes=True)
    y = np.random.default_rng(7).integers(0, 3, len(x))
    theirs, ours = twins(KERAS, bidirectional_classifier, seed=8)
    close(ours.predict(x), theirs.predict(x, verbose=0))
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "sparse_categorical_crossentropy",
                                  epochs=2)
    close(h_ours["loss"], h_theirs["loss"])
    assert_same_weights(theirs, ours)


def branching(api):
    """Two inputs; GRU states and sequences merged by Concatenate and Add."""
    series = api.Input((None, 3), name="series")
    extra = api.Input((None, 2), name="extra")
    seq, state = api.layers.GRU(UNITS, return_sequences=True, return_state=True,
                                name="encoder")(api.layers.Masking(name="mask")(series))
    other = api.layers.TimeDistributed(api.layers.Dense(UNITS), name="proj")(extra)
    joined = api.layers.Add(name="add")([seq, other])
    summary = api.layers.GRU(4, go_backwards=True, name="summary")(joined)
    both = api.layers.Concatenate(name="concat")([summary, state])
    return api.Model([series, extra], api.layers.Dense(1, name="out")(both))


def test_branching_graph_equals_keras(keras, KERAS):
    rng = np.random.default_rng(9)
    series = rng.standard_normal((6, 9, 3)).astype(np.float32)
    series[0, 5:] = 0
    series[3, 2] = 0
    extra = rng.standard_normal((6, 9, 2)).astype(np.float32)
    y = rng.standard_normal((6, 1)).astype(np.float32)
    theirs, ours = twins(KERAS, branching, seed=10)
    close(ours.predict([series, extra]), theirs.predict([series, extra], verbose=0))
    h_theirs, h_ours = train_both(theirs, ours, KERAS, [series, extra], y, "mse", lr=0.1)
    close(h_ours["loss"], h_theirs["loss"])
    assert_same_weights(theirs, ours)


def merges(api, merge, axis=-1):
    a, b = api.Input((None, 3), name="a"), api.Input((None, 3), name="b")
    masked_a = api.layers.Masking(name="mask_a")(a)
    masked_b = api.layers.Masking(name="mask_b")(b)
    second = {"both": masked_b, "one": b}
    if merge.startswith("concat"):
        joined = api.layers.Concatenate(axis=axis, name="join")([masked_a, second[merge[7:]]])
    else:
        joined = api.layers.Add(name="join")([masked_a, second[merge[4:]]])
    return api.Model([a, b], api.layers.GRU(UNITS, return_sequences=True, name="gru")(joined))


@pytest.mark.parametrize("merge, axis", [("concat_both", -1), ("concat_one", -1),
                                         ("concat_both", 1), ("concat_one", 1),
                                         ("add_both", -1), ("add_one", -1)])
def test_merge_masks_follow_keras(keras, KERAS, merge, axis):
    """Keras's merge masks: Concatenate's step is valid where any input's is (an input without
    a mask is valid everywhere; along the time axis the masks are joined); Add has no mask when
    an input has none, else the OR. (cgru used the AND, and failed along the time axis.)"""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
    a[0, 4:] = a[1, :2] = a[2, 3] = 0
    b[0, 3:] = b[1, 1] = b[3, :] = 0
    theirs, ours = twins(KERAS, merges, merge=merge, axis=axis)
    close(ours.predict([a, b]), theirs.predict([a, b], verbose=0))


# ---- stateful ----------------------------------------------------------------------------------

def stateful(api, batch):
    return api.Sequential([api.Input((None, 2), batch_size=batch),
                           api.layers.GRU(UNITS, stateful=True, return_sequences=True,
                                          name="gru"),
                           api.layers.Dense(1, name="out")])


def keras_reset(model):
    for layer in model.layers:
        if hasattr(layer, "reset_state"):
            layer.reset_state()


def test_stateful_gru_one_step_at_a_time_equals_the_whole_sequence_and_keras(keras, KERAS):
    """A control loop: a stateful model fed one step at a time (fixed batch) gives what it
    gives for the whole sequence at once, and what Keras's stateful model gives."""
    x = np.random.default_rng(12).standard_normal((3, 10, 2)).astype(np.float32)
    theirs, ours = twins(KERAS, stateful, seed=13, batch=3)
    whole = ours.predict(x, batch_size=3)
    ours.reset_states()
    steps = np.concatenate([ours.predict(x[:, t:t + 1], batch_size=3) for t in range(10)], axis=1)
    np.testing.assert_allclose(steps, whole, rtol=1e-6, atol=1e-6)
    keras_reset(theirs)
    theirs_steps = np.concatenate([theirs.predict(x[:, t:t + 1], batch_size=3, verbose=0)
                                   for t in range(10)], axis=1)
    close(steps, theirs_steps)
    # the state goes on from where it stopped, until reset_states()
    close(ours.predict(x, batch_size=3), theirs.predict(x, batch_size=3, verbose=0))
    assert not np.allclose(ours.predict(x, batch_size=3), whole, atol=1e-3)
    ours.reset_states()
    np.testing.assert_array_equal(ours.predict(x, batch_size=3), whole)
    # layer by layer: the GRU layer's reset_states too
    ours.predict(x, batch_size=3)
    ours.get_layer("gru").reset_states()
    np.testing.assert_array_equal(ours.predict(x, batch_size=3), whole)


def test_stateful_predict_runs_batches_in_order_as_keras(keras, KERAS):
    """predict(batch_size=2) on 6 sequences: three batches of 2, each from its own kept state
    (sequence i continues from sequence i-2's state within one predict call)."""
    x = np.random.default_rng(14).standard_normal((6, 5, 2)).astype(np.float32)
    theirs, ours = twins(KERAS, stateful, seed=15, batch=2)
    close(ours.predict(x, batch_size=2), theirs.predict(x, batch_size=2, verbose=0))


def carried_state(api):
    """What a stateful GRU model computes for one batch, with the kept state as an input."""
    series, state = api.Input((None, 2), name="series"), api.Input((UNITS,), name="state")
    h = api.layers.GRU(UNITS, return_sequences=True, name="gru")(series, initial_state=state)
    return api.Model([series, state], api.layers.Dense(1, name="out")(h))


def test_stateful_training_carries_states_between_batches_as_keras(keras, KERAS):
    """Truncated backpropagation through time: each train_on_batch starts from the state the
    previous batch ended in (computed before that batch's update) and does not backpropagate
    into it. Keras 3.15's own stateful training fails on the PyTorch backend (its in-place
    state update breaks autograd), so the oracle is Keras's GRU given that state as
    initial_state."""
    x = np.random.default_rng(16).standard_normal((3, 12, 2)).astype(np.float32)
    y = np.sin(np.cumsum(x[..., :1], axis=1))
    theirs, ours = carried_state(KERAS), stateful(CGRU, batch=3)
    copy_weights(theirs, ours, seed=17)
    theirs.compile(KERAS.SGD(0.2), "mse")
    ours.compile(CGRU.SGD(0.2), "mse")
    state = np.zeros((3, UNITS), np.float32)
    for chunk in range(3):  # 4 steps at a time
        part = slice(4 * chunk, 4 * chunk + 4)
        final = numpy(keras, theirs.get_layer("gru")(x[:, part], initial_state=state))[:, -1]
        theirs_loss = float(np.asarray(theirs.train_on_batch([x[:, part], state], y[:, part])))
        ours_loss = ours.train_on_batch(x[:, part], y[:, part])
        close(ours_loss, theirs_loss, f"chunk {chunk}")
        close(ours.get_layer("gru")._states[0], final, f"state after chunk {chunk}")
        state = final
    assert_same_weights(theirs, ours)


# ==== 2. loss reductions as Keras's =============================================================

def test_sample_weight_per_sample_as_keras(keras, KERAS):
    x = padded(LENGTHS, 12, seed=18)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 0.25, 1.5])
    theirs, ours = twins(KERAS, text_classifier, seed=19)
    for model in (theirs, ours):
        model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    for batch_size in (8, 3):
        expected = theirs.evaluate(x, y, sample_weight=w, batch_size=batch_size, verbose=0,
                                   return_dict=True)
        got = ours.evaluate(x, y, sample_weight=w, batch_size=batch_size, return_dict=True)
        close(got["loss"], expected["loss"], f"batch_size={batch_size}")
        # 'metrics' (unlike Keras's weighted_metrics) ignore sample weights
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
    # by hand: the mean over samples of w_i * loss_i
    p = ours.predict(x)[:, 0].astype(np.float64)
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert ours.evaluate(x, y, sample_weight=w, batch_size=8, return_dict=True)["loss"] == \
        pytest.approx(np.mean(w * losses), rel=1e-6)


@pytest.mark.parametrize("class_weight", [{0: 0.3, 1: 2.0}, {1: 4.0}], ids=["both", "one"])
def test_class_weight_as_keras(keras, KERAS, class_weight):
    """class_weight weighs each sample by its class, 1 for a class it does not name (as Keras
    3; cgru refused such a dict)."""
    x = padded(LENGTHS, 12, seed=20)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    theirs, ours = twins(KERAS, text_classifier, seed=21)
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "binary_crossentropy", epochs=1,
                                  batch_size=8, class_weight=class_weight)
    close(h_ours["loss"], h_theirs["loss"])
    assert_same_weights(theirs, ours)


def test_class_weight_with_sparse_labels_as_keras(keras, KERAS):
    x = padded(LENGTHS, 12, seed=22)
    y = np.random.default_rng(23).integers(0, 3, len(x))
    theirs, ours = twins(KERAS, bidirectional_classifier, seed=24)
    class_weight = {0: 1.5, 2: 0.2}
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y, "sparse_categorical_crossentropy",
                                  epochs=1, batch_size=8, class_weight=class_weight)
    close(h_ours["loss"], h_theirs["loss"])
    assert_same_weights(theirs, ours)


def test_masked_sequence_loss_is_the_mean_over_valid_steps_as_keras(keras, KERAS):
    x = padded(WITH_EMPTY, 12, seed=25)
    y = np.random.default_rng(26).integers(0, 3, x.shape)
    theirs, ours = twins(KERAS, bidirectional_tagger, seed=27)
    for model in (theirs, ours):
        model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    for batch_size in (8, 3):
        expected = theirs.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        got = ours.evaluate(x, y, batch_size=batch_size, return_dict=True)
        close(got["loss"], expected["loss"], f"batch_size={batch_size}")
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
    # by hand: the mean of -log p[label] over the valid steps; accuracy over them too
    p = ours.predict(x).astype(np.float64)
    valid = x != 0
    nll = -np.log(np.take_along_axis(p, y[..., None], axis=-1)[..., 0])
    got = ours.evaluate(x, y, batch_size=8, return_dict=True)
    assert got["loss"] == pytest.approx(nll[valid].mean(), rel=1e-6)
    assert got["accuracy"] == pytest.approx(np.mean(p.argmax(-1)[valid] == y[valid]))
    # per-step sample weights with the mask: (batch, time) weights, as Keras takes them
    w = np.random.default_rng(28).uniform(0, 2, x.shape)
    expected = theirs.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0,
                               return_dict=True)["loss"]
    got = ours.evaluate(x, y, sample_weight=w, batch_size=8, return_dict=True)["loss"]
    close(got, expected)
    assert got == pytest.approx((nll * w)[valid].sum() / valid.sum(), rel=1e-6)


def test_weights_with_a_trailing_axis_of_one_as_keras(keras, KERAS):
    """(batch, 1) sample weights, and class weights for (batch, 1) sparse labels, weigh each
    sample as (batch,) ones do (cgru refused both: 'sample_weight of shape (8, 1) does not
    fit')."""
    x = padded(LENGTHS, 12, seed=46)
    y = np.random.default_rng(47).integers(0, 3, len(x))
    w = np.linspace(0.2, 2.0, len(x))
    theirs, ours = twins(KERAS, bidirectional_classifier, seed=48)
    for model in (theirs, ours):
        model.compile("sgd", "sparse_categorical_crossentropy")
    expected = theirs.evaluate(x, y, sample_weight=w, verbose=0)
    close(ours.evaluate(x, y[:, None], sample_weight=w[:, None]), expected)
    close(ours.evaluate(x, y, sample_weight=w[:, None]), expected)
    h_theirs, h_ours = train_both(theirs, ours, KERAS, x, y[:, None],
                                  "sparse_categorical_crossentropy", epochs=1, batch_size=8,
                                  class_weight={0: 0.5, 1: 2.0, 2: 1.5})
    close(h_ours["loss"], h_theirs["loss"])
    assert_same_weights(theirs, ours)


def test_per_sample_weights_on_masked_sequences():
    """cgru also takes one weight per sample for sequence outputs (Keras needs (batch, time)):
    the same as repeating it over the steps."""
    x = padded(LENGTHS, 12, seed=29)
    y = np.random.default_rng(30).integers(0, 3, x.shape)
    model = bidirectional_tagger(CGRU)
    model.compile("sgd", "sparse_categorical_crossentropy")
    w = np.linspace(0.1, 2, len(x))
    assert model.evaluate(x, y, sample_weight=w) == pytest.approx(
        model.evaluate(x, y, sample_weight=np.repeat(w[:, None], 12, axis=1)), rel=1e-12)


# ==== 3. masks in training ======================================================================

def gradients_of(model, x, y):
    return model.gradients(x, y, training=False)[1]


def float64_classifier(seed, masking=False):
    first = layers.Masking() if masking else layers.Embedding(VOCABULARY, 4, mask_zero=True)
    model = cgru.Sequential([first, layers.GRU(5), layers.Dense(1, activation="sigmoid")],
                            dtype="float64", seed=seed)
    model.compile(optimizers.SGD(0.5), "binary_crossentropy")
    return model


@pytest.mark.parametrize("holes", [False, True], ids=["padded", "holes"])
def test_padded_batch_gradient_is_the_mean_of_the_unpadded_sequences_gradients(holes):
    """Embedding(mask_zero): the gradient of a padded batch equals the mean (the loss is a mean
    over samples) of the gradients of each sequence alone without its masked steps."""
    x = padded(LENGTHS, 14, seed=31, holes=holes)
    x[x.sum(axis=1) == 0, 0] = 1  # every sequence keeps a step
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float64)
    model = float64_classifier(32)
    model.build((None, None))
    batch = gradients_of(model, x, y)
    singles = [gradients_of(model, x[i:i + 1, x[i] != 0], y[i:i + 1]) for i in range(len(x))]
    for name in batch:
        np.testing.assert_allclose(batch[name], np.mean([g[name] for g in singles], axis=0),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


def test_masking_layer_batch_gradient_is_the_mean_of_the_unpadded_sequences_gradients():
    rng = np.random.default_rng(33)
    x = rng.standard_normal((len(LENGTHS), 12, 3))
    for i, n in enumerate(LENGTHS):
        x[i, n:] = 0
    y = rng.integers(0, 2, len(x)).astype(np.float64)
    model = float64_classifier(34, masking=True)
    model.build((None, None, 3))
    batch = gradients_of(model, x, y)
    singles = [gradients_of(model, x[i:i + 1, :n], y[i:i + 1]) for i, n in enumerate(LENGTHS)]
    for name in batch:
        np.testing.assert_allclose(batch[name], np.mean([g[name] for g in singles], axis=0),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


def test_masked_sequence_output_gradient_weighs_sequences_by_their_valid_steps():
    """Per-step outputs: the loss is the mean over every valid step of the batch, so sequence i
    (n_i valid steps) contributes n_i / sum(n) of its own mean-loss gradient."""
    x = padded(LENGTHS, 12, seed=35)
    y = np.random.default_rng(36).integers(0, 3, x.shape)
    model = cgru.Sequential([layers.Embedding(VOCABULARY, 4, mask_zero=True),
                             layers.Bidirectional(layers.GRU(4, return_sequences=True)),
                             layers.Dense(3, activation="softmax")], dtype="float64", seed=37)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.build((None, None))
    batch = gradients_of(model, x, y)
    n = np.array(LENGTHS)
    singles = [gradients_of(model, x[i:i + 1, :k], y[i:i + 1, :k]) for i, k in enumerate(n)]
    for name in batch:
        expected = sum(k * g[name] for k, g in zip(n, singles)) / n.sum()
        np.testing.assert_allclose(batch[name], expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_training_on_a_padded_batch_equals_training_on_the_sequences_one_by_one():
    """Three epochs of SGD on the padded batch take the same steps as SGD with the averaged
    gradients of the unpadded sequences."""
    x = padded(LENGTHS, 12, seed=38)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float64)
    padded_model, one_by_one = float64_classifier(39), float64_classifier(39)
    padded_model.fit(x, y, epochs=3, batch_size=len(x), shuffle=False, verbose=0)
    one_by_one.build((None, None))
    for _ in range(3):
        singles = [gradients_of(one_by_one, x[i:i + 1, :n], y[i:i + 1])
                   for i, n in enumerate(LENGTHS)]
        for name, w in one_by_one.trainable_weights.items():
            w -= 0.5 * np.mean([g[name] for g in singles], axis=0)
    for name, w in padded_model.trainable_weights.items():
        np.testing.assert_allclose(w, one_by_one.trainable_weights[name], rtol=1e-9,
                                   atol=1e-12, err_msg=name)


def test_more_padding_changes_nothing():
    x = padded(LENGTHS, 12, seed=40)
    wider = np.pad(x, ((0, 0), (0, 9)))
    model = bidirectional_classifier(CGRU)
    np.testing.assert_array_equal(model.predict(wider), model.predict(x))
    tagger = bidirectional_tagger(CGRU)
    np.testing.assert_array_equal(tagger.predict(wider)[:, :12], tagger.predict(x))


# ==== 4. the functional API =====================================================================

def test_model_of_one_input_and_one_output_composes_its_layers():
    inputs = cgru.Input((None, 3))
    gru, dense = layers.GRU(4), layers.Dense(2)
    model = cgru.Model(inputs, dense(gru(inputs)))
    x = np.random.default_rng(41).standard_normal((5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), dense(gru(x)), rtol=1e-6, atol=1e-6)
    assert model.layers == [gru, dense] and model.input_shape == (None, 3)
    assert [layer.name for layer in model.layers] == ["gru", "dense"]


def test_get_layer_by_name_and_index():
    model = branching(CGRU)
    assert model.get_layer("encoder").units == UNITS
    assert model.get_layer(index=-1).name == "out"
    with pytest.raises(ValueError, match=r"no layer named 'nope'; the layers are \["):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="give name or index"):
        model.get_layer()
    with pytest.raises(ValueError, match="index must be an integer within the model's"):
        model.get_layer(index=99)


def test_summary_lists_every_layer_with_keras_parameter_counts(keras, KERAS):
    theirs, ours = branching(KERAS), branching(CGRU)
    text = ours.summary(print_fn=None)
    for layer in theirs.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        assert layer.name in text
        assert ours.get_layer(layer.name).count_params() == layer.count_params(), layer.name
    assert ours.count_params() == theirs.count_params()
    assert f"Total params: {theirs.count_params():,}" in text
    assert "(None, None, 8), (None, 8)" in text  # the encoder's two outputs


@pytest.mark.parametrize("build", [branching, bidirectional_tagger, text_classifier, forecaster])
def test_get_config_and_from_config_rebuild_the_architecture(build):
    model = build(CGRU)
    config = model.get_config()
    again = cgru.Model.from_config(config)
    assert again.get_config() == config
    assert [type(l) for l in again.layers] == [type(l) for l in model.layers]
    assert [l.name for l in again.layers] == [l.name for l in model.layers]
    again.set_weights(model.get_weights())
    x = sample_inputs(model)
    for a, b in zip(np.atleast_1d(again.predict(x)), np.atleast_1d(model.predict(x))):
        np.testing.assert_array_equal(a, b)


def sample_inputs(model, n=5, T=9):
    rng = np.random.default_rng(42)
    xs = []
    for tensor in model.inputs:
        if tensor.kind == "int":
            xs.append(padded([T, 4, 1, 6, 8][:n], T, seed=43))
        else:
            x = rng.standard_normal((n, T) + tuple(tensor.shape[2:])).astype(np.float32)
            x[1, 5:] = 0  # padding for a Masking layer
            xs.append(x)
    return xs[0] if len(xs) == 1 else xs


@pytest.mark.parametrize("build", [branching, bidirectional_tagger, text_classifier, forecaster,
                                   bidirectional_classifier])
def test_save_and_load_give_bit_identical_predictions(tmp_path, build):
    model = build(CGRU)
    model.compile("adam", "mse")
    x = sample_inputs(model)
    y = np.zeros_like(model.predict(x))
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = cgru.load_model(path)
    assert type(loaded) is cgru.Model
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    assert loaded.get_config() == model.get_config()
    # training goes on identically (optimizer state and generator saved)
    model.fit(x, y, epochs=1, verbose=0)
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_sequential_with_embedding_saves_and_loads(tmp_path):
    model = cgru.Sequential([layers.Embedding(VOCABULARY, 4, mask_zero=True),
                             layers.GRU(5), layers.Dense(1, activation="sigmoid")], seed=44)
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    x = padded(LENGTHS, 12, seed=45)
    model.fit(x, np.arange(8) % 2, epochs=2, verbose=0)
    model.save(tmp_path / "text.npz")
    loaded = cgru.load_model(tmp_path / "text.npz")
    assert type(loaded) is cgru.Sequential
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, np.arange(8) % 2, return_dict=True) == \
        model.evaluate(x, np.arange(8) % 2, return_dict=True)


@pytest.mark.parametrize("extension", [".keras", ".h5", ".hdf5"])
def test_keras_file_names_are_refused_naming_to_keras(tmp_path, extension):
    model = text_classifier(CGRU)
    path = tmp_path / f"m{extension}"
    with pytest.raises(ValueError, match=r"cgru\.interop\.to_keras\(model\)\.save"):
        model.save(path)
    assert not path.exists()


def test_the_time_axis_stays_free():
    rng = np.random.default_rng(46)
    model = cgru.Sequential([layers.GRU(6, return_sequences=True), layers.GRU(4),
                             layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(rng.standard_normal((16, 12, 2)), rng.standard_normal((16, 1)), epochs=1,
              verbose=0)
    assert model.input_shape == (None, 2)
    assert model.predict(rng.standard_normal((3, 20, 2))).shape == (3, 1)
    functional = forecaster(CGRU)
    assert functional.predict(rng.standard_normal((3, 20, 2))).shape == (3, 20, 1)
    assert functional.predict(rng.standard_normal((3, 5, 2))).shape == (3, 5, 1)


def test_input_shape_on_a_first_layer_declares_the_input():
    model = cgru.Sequential([layers.GRU(8, input_shape=(10, 1)), layers.Dense(1)])
    assert model.input_shape == (10, 1)
    model.summary(print_fn=None)  # built from the declaration, before any data
    assert model.count_params() == 3 * (8 + 8 * 8 + 2 * 8) + 9
    assert model.predict(np.zeros((2, 10, 1))).shape == (2, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 10, 1\), got \(2, 12, 1\)"):
        model.predict(np.zeros((2, 12, 1)))
    batched = cgru.Sequential([layers.GRU(8, batch_input_shape=(4, None, 2), stateful=True)])
    assert batched.input_shape == (None, 2)
    assert batched.predict(np.zeros((4, 7, 2)), batch_size=4).shape == (4, 8)
    bidirectional = cgru.Sequential([layers.Bidirectional(layers.GRU(3), input_shape=(None, 5))])
    assert bidirectional.input_shape == (None, 5)


def test_predict_verbose_and_evaluate_return_dict():
    model = text_classifier(CGRU)
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    x = padded(LENGTHS, 12)
    y = np.arange(8) % 2
    np.testing.assert_array_equal(model.predict(x, verbose=1), model.predict(x))
    logs = model.evaluate(x, y, return_dict=True)
    assert list(logs) == ["loss", "accuracy"]
    assert model.evaluate(x, y) == [logs["loss"], logs["accuracy"]]


# ==== 5. bad graphs and bad data ================================================================

def test_a_disconnected_input_is_refused():
    a, b = cgru.Input((None, 3), name="used"), cgru.Input((None, 2), name="unused")
    with pytest.raises(ValueError, match=r"input 'unused' \(None, None, 2\) is disconnected"):
        cgru.Model([a, b], layers.GRU(4)(a))


def test_an_output_needing_an_input_not_in_inputs_is_refused():
    a, b = cgru.Input((None, 3), name="given"), cgru.Input((None, 3), name="forgotten")
    out = layers.Add()([layers.GRU(4)(a), layers.GRU(4)(b)])
    with pytest.raises(ValueError, match=r"the outputs depend on the Input 'forgotten' "
                                         r"\(None, None, 3\), which is not in inputs"):
        cgru.Model(a, out)


def test_a_layer_called_twice_in_one_graph_is_refused():
    inputs = cgru.Input((None, 3))
    shared = layers.TimeDistributed(layers.Dense(3), name="shared")
    with pytest.raises(ValueError, match=r"layer 'shared' is called twice in the graph"):
        cgru.Model(inputs, shared(shared(inputs)))


def test_model_inputs_and_outputs_must_be_symbolic():
    inputs = cgru.Input((None, 3))
    hidden = layers.GRU(4, return_sequences=True)(inputs)
    with pytest.raises(ValueError, match=r"inputs must come from cgru.Input; .* is the output "
                                         r"of layer"):
        cgru.Model(hidden, layers.GRU(2)(hidden))
    with pytest.raises(TypeError, match="outputs must be symbolic tensors"):
        cgru.Model(inputs, np.zeros(3))
    with pytest.raises(TypeError, match="give the cgru.Input tensor"):
        cgru.Model(inputs)


def test_an_embedding_model_fed_non_integer_values_is_refused():
    model = text_classifier(CGRU)
    with pytest.raises(ValueError, match=r"x must hold integer indices \(an Embedding reads "
                                         r"it\)"):
        model.predict(np.full((2, 5), 1.5))
    with pytest.raises(ValueError, match=r"layer 'embed' \(Embedding\) takes indices in "
                                         r"\[0, 19\].*got values from 0 to 20"):
        model.predict(np.array([[1, 20, 0]]))


def test_a_two_input_model_fed_one_array_is_refused():
    model = branching(CGRU)
    with pytest.raises(ValueError, match="x must be a list of 2 arrays, one per model input"):
        model.predict(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"x\[1\] must have shape \(batch, None, 2\)"):
        model.predict([np.zeros((2, 4, 3)), np.zeros((2, 4, 3))])


def test_a_stateful_model_fed_another_batch_size_is_refused():
    model = stateful(CGRU, batch=3)
    x = np.zeros((3, 4, 2), np.float32)
    model.predict(x, batch_size=3)
    with pytest.raises(ValueError, match=r"x: the stateful layer 'gru' keeps states for "
                                         r"batches of 3; this batch holds 2 sequences"):
        model.predict(np.zeros((2, 4, 2)), batch_size=2)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"keeps states for batches of 3; this batch holds 4"):
        model.fit(np.zeros((8, 4, 2)), np.zeros((8, 4, 1)), batch_size=4, verbose=0)


def test_bad_sample_and_class_weights_are_refused():
    model = text_classifier(CGRU)
    model.compile("sgd", "binary_crossentropy")
    x, y = padded(LENGTHS, 12), np.arange(8) % 2
    with pytest.raises(ValueError, match=r"sample_weight must hold one finite weight >= 0 per "
                                         r"sample \(shape \(8,\)\)"):
        model.fit(x, y, sample_weight=np.ones(7), verbose=0)
    with pytest.raises(ValueError, match="sample_weight must hold one finite weight"):
        model.fit(x, y, sample_weight=-np.ones(8), verbose=0)
    with pytest.raises(ValueError, match="class_weight must map class indices to finite "
                                         "weights >= 0"):
        model.fit(x, y, class_weight={0: 1.0, 1: np.nan}, verbose=0)
    with pytest.raises(ValueError, match="class_weight must be a dict"):
        model.fit(x, y, class_weight=[1.0, 2.0], verbose=0)


def test_integer_inputs_go_to_an_embedding_only():
    tokens = cgru.Input((None,), dtype="int64", name="tokens")
    with pytest.raises(TypeError, match=r"layer 'GRU' takes real values; its input holds "
                                        r"integer indices"):
        layers.GRU(4)(tokens)
    ids = cgru.Input((None, 1), dtype="int64")
    with pytest.raises(TypeError, match=r"layer 'reader' takes real values; its input holds "
                                        r"integer indices \(an Embedding reads those\)"):
        layers.GRU(4, name="reader")(ids)
    with pytest.raises(TypeError, match=r"layer 'Concatenate' takes real values"):
        layers.Concatenate()([ids, cgru.Input((None, 1))])
