"""cgru's Keras layers, one at a time, specified against Keras 3 (the oracle) and against finite
differences.

1. Outputs: each layer called eagerly, `layer(x, mask=mask)`, gives what the same Keras layer
   gives with the same weights (copied with get_weights / set_weights: cgru speaks Keras's
   layout and order) on random weights and inputs, within 1e-5 in float32. Masks follow Keras:
   a masked step keeps the GRU's state; a GRU's output at a masked step repeats its previous
   output (zeros before the first valid step); Bidirectional gives zeros at masked steps; a
   sequence with no valid step keeps its initial state and outputs zeros.
2. Gradients: `model.gradients` on tiny float64 models equals central finite differences of the
   loss the model reports (evaluate), for every layer and every masked path (tail padding, holes,
   an all-masked row), go_backwards, return_state, initial_state from another layer,
   Bidirectional in each merge mode, Embedding, Masking, TimeDistributed, Concatenate, Add,
   sample_weight and class_weight, masked sparse_categorical_crossentropy.
3. Bad input to a layer: a clear exception naming the argument or the layer.

Whole models, losses, the functional API and saving: tests/test_functional.py.
"""
import itertools
import os

import numpy as np
import pytest

import cgru
from cgru import layers, optimizers

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch: no TensorFlow needed

B, T, F, H = 4, 6, 3, 5

# (batch, time) masks, True where a step is valid
MASKS = {
    "none": None,
    "tail": np.array([[1, 1, 1, 1, 1, 1],
                      [1, 1, 1, 1, 0, 0],
                      [1, 0, 0, 0, 0, 0],
                      [1, 1, 1, 0, 0, 0]], bool),
    "pre_padding": np.array([[1, 1, 1, 1, 1, 1],  # Keras's pad_sequences default
                             [0, 0, 1, 1, 1, 1],
                             [0, 0, 0, 0, 0, 1],
                             [0, 0, 0, 1, 1, 1]], bool),
    "holes": np.array([[1, 0, 1, 1, 0, 1],
                       [0, 0, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1, 1],
                       [0, 1, 0, 1, 0, 1]], bool),
    "tail_and_empty": np.array([[1, 1, 1, 1, 1, 0],
                                [0, 0, 0, 0, 0, 0],
                                [1, 1, 1, 1, 1, 1],
                                [1, 1, 0, 0, 0, 0]], bool),
    "all_masked_row": np.array([[1, 0, 1, 1, 0, 1],
                                [0, 0, 0, 0, 0, 0],
                                [1, 1, 1, 0, 0, 0],
                                [0, 1, 1, 1, 1, 1]], bool),
}
MASKED = {k: v for k, v in MASKS.items() if v is not None}


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def numpy(keras, value):
    if isinstance(value, (list, tuple)):
        return [numpy(keras, v) for v in value]
    return keras.ops.convert_to_numpy(value)


def close(actual, expected, what="", atol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=what)


def data(seed=0, dtype=np.float32, shape=(B, T, F)):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def randomized(keras_layer, input_shape, seed=1):
    """Build the Keras layer and give it random weights (non-zero biases too); returns them."""
    keras_layer.build(input_shape)
    rng = np.random.default_rng(seed)
    weights = [w + 0.5 * rng.standard_normal(w.shape).astype(w.dtype)
               for w in keras_layer.get_weights()]
    keras_layer.set_weights(weights)
    return weights


def twin(cgru_layer, weights, x):
    """Build the cgru layer on x (an eager call) and load Keras's weights."""
    cgru_layer(x[:1])
    cgru_layer.set_weights(weights)
    return cgru_layer


def as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


# ==== 1. each layer against Keras ================================================================

GRU_OPTIONS = [dict(return_sequences=rs, return_state=st, go_backwards=gb, reset_after=ra,
                    use_bias=ub)
               for rs, st, gb, ra, ub in itertools.product([True, False], repeat=5)]


def options_id(options):
    return "-".join(k for k, v in options.items() if v) or "defaults_off"


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("options", GRU_OPTIONS, ids=options_id)
def test_gru_equals_keras(keras, options, mask):
    x, m = data(), MASKS[mask]
    if m is not None:
        x[~m] = 7.0  # values at masked steps must not matter
    ours_layer = layers.GRU(H, **options)
    theirs_layer = keras.layers.GRU(H, **options)
    ours_layer = twin(ours_layer, randomized(theirs_layer, (None, T, F)), x)
    ours, theirs = as_list(ours_layer(x, mask=m)), as_list(theirs_layer(x, mask=m))
    assert len(ours) == len(theirs) == (2 if options["return_state"] else 1)
    for i, (a, b) in enumerate(zip(ours, numpy(keras, theirs))):
        assert a.shape == b.shape
        close(a, b, f"output {i}")


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_gru_initial_state_equals_keras(keras, mask, return_sequences, go_backwards):
    x, m = data(), MASKS[mask]
    h0 = data(2, shape=(B, H))
    options = dict(return_sequences=return_sequences, return_state=True,
                   go_backwards=go_backwards)
    theirs_layer = keras.layers.GRU(H, **options)
    ours_layer = twin(layers.GRU(H, **options), randomized(theirs_layer, (None, T, F)), x)
    ours = ours_layer(x, mask=m, initial_state=h0)
    theirs = numpy(keras, theirs_layer(x, mask=m, initial_state=h0))
    close(ours[0], theirs[0], "output")
    close(ours[1], theirs[1], "state")


def test_all_masked_row_with_initial_state_gives_zero_output_and_keeps_state(keras):
    """A sequence with no valid step: Keras's last output is zeros, its state the initial one
    (cgru returned the initial state as the output)."""
    x, m = data(), MASKS["all_masked_row"]
    h0 = data(2, shape=(B, H))
    theirs_layer = keras.layers.GRU(H, return_state=True)
    ours_layer = twin(layers.GRU(H, return_state=True), randomized(theirs_layer, (None, T, F)), x)
    y, h = ours_layer(x, mask=m, initial_state=h0)
    np.testing.assert_array_equal(y[1], 0)
    np.testing.assert_array_equal(h[1], h0[1])
    theirs = numpy(keras, theirs_layer(x, mask=m, initial_state=h0))
    close(y, theirs[0])
    close(h, theirs[1])

    bi_theirs = keras.layers.Bidirectional(keras.layers.GRU(H, return_state=True))
    bi = twin(layers.Bidirectional(layers.GRU(H, return_state=True)),
              randomized(bi_theirs, (None, T, F)), x)
    ours = bi(x, mask=m, initial_state=[h0, 2 * h0])
    np.testing.assert_array_equal(ours[0][1], 0)
    np.testing.assert_array_equal(ours[2][1], 2 * h0[1])
    for a, b in zip(ours, numpy(keras, bi_theirs(x, mask=m, initial_state=[h0, 2 * h0]))):
        close(a, b)


def compacted_run(options, weights, x, m, b):
    """Sequence b's valid steps alone, through a fresh unmasked GRU with the same weights."""
    layer = layers.GRU(H, **options)
    layer(x[:1])
    layer.set_weights(weights)
    return layer(x[b:b + 1, m[b]]) if m[b].any() else None


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("mask", MASKED, ids=str)
def test_masked_steps_keep_the_state_and_repeat_the_output(mask, go_backwards):
    """Keras's mask semantics, stated without Keras: the state is the state of the valid steps
    alone; the output at a masked step repeats the last valid step's output, zeros before the
    first one (in reading order: from the end with go_backwards)."""
    x, m = data(3), MASKS[mask]
    options = dict(return_sequences=True, return_state=True, go_backwards=go_backwards)
    gru = layers.GRU(H, **options)
    y, h = gru(x, mask=m)
    weights = gru.get_weights()
    for b in range(B):
        valid = m[b][::-1] if go_backwards else m[b]  # in reading order
        alone = compacted_run(options, weights, x, m, b)
        if alone is None:
            np.testing.assert_array_equal(y[b], 0)
            np.testing.assert_array_equal(h[b], 0)
            continue
        y_alone, h_alone = alone
        close(h[b], h_alone[0], f"state of sequence {b}")
        seen = np.cumsum(valid) - 1  # index of the last valid step so far, in reading order
        for t in range(T):
            expected = 0 if seen[t] < 0 else y_alone[0, seen[t]]
            close(y[b, t], expected * np.ones(H), f"sequence {b} step {t}")


@pytest.mark.parametrize("mask", MASKED, ids=str)
def test_bidirectional_gives_zeros_at_masked_steps(mask):
    x, m = data(4), MASKS[mask]
    bi = layers.Bidirectional(layers.GRU(H, return_sequences=True))
    y = bi(x, mask=m)
    np.testing.assert_array_equal(y[~m], 0)
    assert np.all(np.abs(y[m]).sum(axis=-1) > 0)
    # each direction reads only the valid steps: the backward half at a sequence's last valid
    # step has seen that step alone
    weights = bi.get_weights()
    backward = layers.GRU(H, go_backwards=True)
    backward(x[:1])
    backward.set_weights(weights[3:])
    for b in range(B):
        if m[b].any():
            last = np.flatnonzero(m[b])[-1]
            close(y[b, last, H:], backward(x[b:b + 1, last:last + 1])[0])


MERGE_MODES = ["concat", "sum", "ave", "mul"]


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_bidirectional_equals_keras(keras, merge_mode, return_sequences, mask):
    x, m = data(5), MASKS[mask]
    make = dict(return_sequences=return_sequences, return_state=True)
    theirs_layer = keras.layers.Bidirectional(keras.layers.GRU(H, **make), merge_mode=merge_mode)
    weights = randomized(theirs_layer, (None, T, F))
    ours_layer = twin(layers.Bidirectional(layers.GRU(H, **make), merge_mode=merge_mode),
                      weights, x)
    ours = ours_layer(x, mask=m)  # [y, h_forward, h_backward]
    theirs = numpy(keras, theirs_layer(x, mask=m))
    assert len(ours) == len(theirs) == 3
    for i, (a, b) in enumerate(zip(ours, theirs)):
        close(a, b, f"output {i}")
    states = [data(6, shape=(B, H)), data(7, shape=(B, H))]
    ours = ours_layer(x, mask=m, initial_state=states)
    theirs = numpy(keras, theirs_layer(x, mask=m, initial_state=states))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        close(a, b, f"output {i} from initial states")


@pytest.mark.parametrize("reset_after", [True, False])
def test_bidirectional_without_return_state_equals_keras(keras, reset_after):
    x, m = data(8), MASKS["holes"]
    theirs_layer = keras.layers.Bidirectional(
        keras.layers.GRU(H, return_sequences=True, reset_after=reset_after))
    ours_layer = twin(layers.Bidirectional(layers.GRU(H, return_sequences=True,
                                                      reset_after=reset_after)),
                      randomized(theirs_layer, (None, T, F)), x)
    out = ours_layer(x, mask=m)
    assert isinstance(out, np.ndarray) and out.shape == (B, T, 2 * H)
    close(out, numpy(keras, theirs_layer(x, mask=m)))


@pytest.mark.parametrize("mask_zero", [True, False])
def test_embedding_equals_keras(keras, mask_zero):
    idx = np.random.default_rng(0).integers(0, 9, (B, T))
    idx[1, 3:] = 0
    theirs_layer = keras.layers.Embedding(9, 4, mask_zero=mask_zero)
    weights = randomized(theirs_layer, (None, T))
    ours_layer = layers.Embedding(9, 4, mask_zero=mask_zero)
    ours_layer(idx)
    ours_layer.set_weights(weights)
    close(ours_layer(idx), numpy(keras, theirs_layer(idx)))
    ours_mask = ours_layer.compute_mask(idx, None)
    theirs_mask = theirs_layer.compute_mask(idx)
    if mask_zero:
        np.testing.assert_array_equal(ours_mask, numpy(keras, theirs_mask))
        np.testing.assert_array_equal(ours_mask, idx != 0)
    else:
        assert ours_mask is None and theirs_mask is None


@pytest.mark.parametrize("mask_value", [0.0, -1.0])
def test_masking_equals_keras(keras, mask_value):
    x = data(9)
    x[0, 4:] = mask_value
    x[2, 1] = mask_value
    x[3, 2, 0] = mask_value  # one feature only: not masked
    ours_layer, theirs_layer = layers.Masking(mask_value), keras.layers.Masking(mask_value)
    close(ours_layer(x), numpy(keras, theirs_layer(x)))
    expected = numpy(keras, theirs_layer.compute_mask(x))
    np.testing.assert_array_equal(ours_layer.compute_mask(x, None), expected)
    assert not expected[0, 4:].any() and not expected[2, 1] and expected[3, 2]


def test_masking_keeps_the_mask_it_receives():
    """Where cgru differs from Keras: a Masking layer after a masked layer keeps the steps the
    incoming mask marks as padding (Keras's Masking ignores its incoming mask, so after
    Masking(0.0), Masking(-1.0) would mark the zeroed steps valid again)."""
    x = data(19)
    x[0, 4:] = 0.0
    x[1, 2] = -1.0
    incoming = np.any(x != 0.0, axis=-1)
    mask = layers.Masking(-1.0).compute_mask(x, incoming)
    np.testing.assert_array_equal(mask, incoming & np.any(x != -1.0, axis=-1))
    assert not mask[0, 4:].any() and not mask[1, 2] and mask.sum() == B * T - 3


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_time_distributed_dense_equals_keras(keras, activation):
    x = data(10)
    theirs_layer = keras.layers.TimeDistributed(keras.layers.Dense(4, activation=activation))
    weights = randomized(theirs_layer, (None, T, F))
    ours_layer = twin(layers.TimeDistributed(layers.Dense(4, activation=activation)), weights, x)
    close(ours_layer(x), numpy(keras, theirs_layer(x)))
    # the same weights as a Dense on every step
    dense = twin(layers.Dense(4, activation=activation), weights, x[:, 0])
    close(ours_layer(x)[:, 2], dense(x[:, 2]))


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_concatenate_equals_keras(keras, axis):
    a, b = data(11), data(12, shape=(B, T, 2) if axis in (-1, 2) else (B, 2, F))
    close(layers.Concatenate(axis=axis)([a, b]),
          numpy(keras, keras.layers.Concatenate(axis=axis)([a, b])))


def test_add_equals_keras(keras):
    a, b, c = data(13), data(14), data(15)
    close(layers.Add()([a, b, c]), numpy(keras, keras.layers.Add()([a, b, c])))


def test_layers_compute_in_float64_given_float64_arrays(keras):
    """Float64 arrays build float64 layers, equal to Keras's float64 GRU to 1e-12 unmasked.
    Keras's masked loop on the PyTorch backend is off by about 1e-8 in float64 (its unmasked run
    on the valid steps alone is exact), so masked outputs are compared with that run."""
    x = data(16, dtype=np.float64)
    theirs_layer = keras.layers.GRU(H, return_sequences=True, dtype="float64")
    ours_layer = twin(layers.GRU(H, return_sequences=True), randomized(theirs_layer,
                                                                       (None, T, F)), x)
    y = ours_layer(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, numpy(keras, theirs_layer(x)), rtol=1e-12, atol=1e-12)
    m = MASKS["holes"]
    y = ours_layer(x, mask=m)
    for b in range(B):
        alone = numpy(keras, theirs_layer(x[b:b + 1, m[b]]))[0]
        np.testing.assert_allclose(y[b, m[b]], alone, rtol=1e-12, atol=1e-12)
    close(y, numpy(keras, theirs_layer(x, mask=m)), atol=1e-7)


STATEFUL = {
    "gru": lambda api: api.GRU(H, stateful=True, return_sequences=True),
    "go_backwards": lambda api: api.GRU(H, stateful=True, go_backwards=True,
                                        return_sequences=True),
    "return_state": lambda api: api.GRU(H, stateful=True, return_state=True),
    "bidirectional": lambda api: api.Bidirectional(api.GRU(H, stateful=True,
                                                           return_sequences=True)),
}


@pytest.mark.parametrize("mask", ["none", "tail_and_empty", "holes"])
@pytest.mark.parametrize("make", STATEFUL, ids=str)
def test_stateful_layers_carry_their_state_between_calls_as_keras(keras, make, mask):
    x, m = data(17), MASKS[mask]
    theirs_layer = STATEFUL[make](keras.layers)
    weights = randomized(theirs_layer, (B, T, F))
    ours_layer = twin(STATEFUL[make](layers), weights, x)
    ours_layer.reset_states()
    for call in range(3):  # each call goes on from the state the last one ended in
        for a, b in zip(as_list(ours_layer(x, mask=m)), numpy(keras, as_list(theirs_layer(
                x, mask=m)))):
            close(a, b, f"call {call}")
    ours_layer.reset_states()
    theirs_layer.reset_states()
    for a, b in zip(as_list(ours_layer(x, mask=m)), numpy(keras, as_list(theirs_layer(
            x, mask=m)))):
        close(a, b, "after reset_states")


def test_a_stateful_sequence_split_in_two_calls_equals_one_call():
    x = data(18)
    gru = layers.GRU(H, stateful=True, return_sequences=True)
    first, second = gru(x[:, :2]), gru(x[:, 2:])
    gru.reset_states()
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), gru(x), rtol=1e-6,
                               atol=1e-6)


# ==== 2. gradients against finite differences (float64) ========================================

def evaluated_loss(model, x, y, sample_weight=None):
    return model.evaluate(x, y, batch_size=1 << 20, sample_weight=sample_weight)


def check_gradients(model, x, y, seed=0, per_param=6, eps=1e-6, grads=None,
                    sample_weight=None):
    """model.gradients (or `grads`) against central differences of the loss evaluate reports,
    on `per_param` random entries of every trainable array (all entries of small ones)."""
    rng = np.random.default_rng(seed)
    if grads is None:
        _, grads = model.gradients(x, y, training=False)
    assert set(grads) == set(model.trainable_weights)
    checked = 0
    for name, param in model.trainable_weights.items():
        flat = param.reshape(-1)
        picks = range(flat.size) if flat.size <= 2 * per_param else \
            rng.choice(flat.size, size=per_param, replace=False)
        for i in picks:
            saved = flat[i]
            flat[i] = saved + eps
            up = evaluated_loss(model, x, y, sample_weight)
            flat[i] = saved - eps
            down = evaluated_loss(model, x, y, sample_weight)
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            assert grads[name].reshape(-1)[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), \
                f"{name}[{i}]"
            checked += 1
    return checked


def perturbed(model, seed=0):
    """Non-zero biases and larger weights, so every path carries gradient."""
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights.values():
        w += 0.3 * rng.standard_normal(w.shape)
    return model


def masked_inputs(mask, seed=0):
    """Float inputs whose masked steps are all zeros (what Masking() marks)."""
    x = data(seed, dtype=np.float64)
    return x if mask is None else np.where(mask[:, :, None], x, 0.0)


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_masked_gru_gradients(mask, return_sequences, go_backwards):
    """Masking -> GRU -> GRU -> Dense: the first GRU's gradients check the second GRU's input
    gradient through the mask too."""
    m = MASKS[mask]
    inputs = cgru.Input((None, F))
    h = layers.Masking()(inputs)
    h = layers.GRU(4, return_sequences=True, go_backwards=go_backwards)(h)
    h = layers.GRU(3, return_sequences=return_sequences, reset_after=False)(h)
    model = perturbed(cgru.Model(inputs, layers.Dense(2)(h), dtype="float64", seed=1))
    model.compile("sgd", "mse")
    y = data(1, np.float64, (B, T, 2) if return_sequences else (B, 2))
    check_gradients(model, masked_inputs(m), y)


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_masked_bidirectional_gradients(merge_mode, return_sequences, mask):
    inputs = cgru.Input((None, F))
    h = layers.Masking()(inputs)
    h = layers.TimeDistributed(layers.Dense(3, activation="tanh"))(h)
    h = layers.Bidirectional(layers.GRU(3, return_sequences=return_sequences),
                             merge_mode=merge_mode)(h)
    model = perturbed(cgru.Model(inputs, layers.Dense(2)(h), dtype="float64", seed=2))
    model.compile("sgd", "mse")
    y = data(2, np.float64, (B, T, 2) if return_sequences else (B, 2))
    check_gradients(model, masked_inputs(MASKS[mask]), y)


@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_bidirectional_return_state_gradients(mask):
    """[y, h_forward, h_backward] each reach the loss."""
    inputs = cgru.Input((None, F))
    y, h_fw, h_bw = layers.Bidirectional(layers.GRU(3, return_state=True), merge_mode="mul")(
        layers.Masking()(inputs))
    out = layers.Dense(2)(layers.Concatenate()([y, layers.Add()([h_fw, h_bw]), h_bw]))
    model = perturbed(cgru.Model(inputs, out, dtype="float64", seed=3))
    model.compile("sgd", "mse")
    check_gradients(model, masked_inputs(MASKS[mask]), data(3, np.float64, (B, 2)))


@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_return_state_in_a_graph_gradients(mask):
    """GRU(return_sequences, return_state): its sequence through TimeDistributed and a second
    GRU, its state through a Dense, joined by Concatenate and Add."""
    inputs = cgru.Input((None, F))
    seq, state = layers.GRU(4, return_sequences=True, return_state=True)(
        layers.Masking()(inputs))
    from_state = layers.Dense(3)(state)
    from_seq = layers.GRU(3)(layers.TimeDistributed(layers.Dense(3))(seq))
    out = layers.Add()([layers.Concatenate()([from_state, from_seq]),
                        layers.Concatenate()([from_seq, from_state])])
    model = perturbed(cgru.Model(inputs, out, dtype="float64", seed=4))
    model.compile("sgd", "mse")
    check_gradients(model, masked_inputs(MASKS[mask]), data(4, np.float64, (B, 6)))


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["gru", "bidirectional"])
def test_outputs_at_masked_steps_pass_gradients_back(mask, bidirectional):
    """Add with an unmasked tensor drops the mask (as Keras), so the loss reads the outputs at
    masked steps: a GRU's repeated outputs send their gradient to the step they repeat;
    Bidirectional's zeros send none."""
    series, other = cgru.Input((None, F)), cgru.Input((None, 2))
    masked = layers.Masking()(series)
    if bidirectional:
        seq = layers.Bidirectional(layers.GRU(2, return_sequences=True), merge_mode="sum")(masked)
    else:
        seq = layers.GRU(2, return_sequences=True)(masked)
    joined = layers.Add()([seq, layers.TimeDistributed(layers.Dense(2))(other)])
    out = layers.TimeDistributed(layers.Dense(1))(layers.GRU(3, return_sequences=True)(joined))
    model = perturbed(cgru.Model([series, other], out, dtype="float64", seed=12))
    model.compile("sgd", "mse")
    x = [masked_inputs(MASKS[mask]), data(13, np.float64, (B, T, 2))]
    check_gradients(model, x, data(14, np.float64, (B, T, 1)))


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["gru", "bidirectional"])
def test_encoder_decoder_initial_state_gradients(mask, bidirectional):
    """The decoder starts from the encoder's final state(s): gradients flow through
    initial_state into the encoder (an all-masked encoder row passes its zero state on)."""
    enc_in, dec_in = cgru.Input((None, F)), cgru.Input((None, 2))
    encoded = layers.Masking()(enc_in)
    if bidirectional:
        _, h_fw, h_bw = layers.Bidirectional(layers.GRU(4, return_state=True),
                                             merge_mode="sum")(encoded)
        decoded = layers.Bidirectional(layers.GRU(4, return_sequences=True),
                                       merge_mode="ave")(dec_in, initial_state=[h_fw, h_bw])
    else:
        _, state = layers.GRU(4, return_state=True)(encoded)
        decoded = layers.GRU(4, return_sequences=True)(dec_in, initial_state=state)
    out = layers.TimeDistributed(layers.Dense(1))(decoded)
    model = perturbed(cgru.Model([enc_in, dec_in], out, dtype="float64", seed=5))
    model.compile("sgd", "mse")
    x = [masked_inputs(MASKS[mask]), data(5, np.float64, (B, 5, 2))]
    check_gradients(model, x, data(6, np.float64, (B, 5, 1)))


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["gru", "bidirectional"])
def test_decoder_with_initial_state_and_masks_gradients(mask, bidirectional):
    """The masked GRU is the one given the initial state: an all-masked row's final state is
    its initial state, and its gradient passes through to the encoder."""
    enc_in, dec_in = cgru.Input((None, 2)), cgru.Input((None, F))
    _, state = layers.GRU(4, return_state=True)(enc_in)
    masked = layers.Masking()(dec_in)
    if bidirectional:
        decoded, h_fw, h_bw = layers.Bidirectional(layers.GRU(4, return_state=True))(
            masked, initial_state=[state, layers.Dense(4)(state)])
        decoded = layers.Concatenate()([decoded, h_fw, h_bw])
    else:
        decoded, h = layers.GRU(4, return_state=True)(masked, initial_state=state)
        decoded = layers.Concatenate()([decoded, h])
    model = perturbed(cgru.Model([enc_in, dec_in], layers.Dense(2)(decoded), dtype="float64",
                                 seed=6))
    model.compile("sgd", "mse")
    x = [data(7, np.float64, (B, 3, 2)), masked_inputs(MASKS[mask])]
    check_gradients(model, x, data(8, np.float64, (B, 2)))


def token_ids(mask, vocabulary=7, seed=0):
    idx = np.random.default_rng(seed).integers(1, vocabulary, (B, T))
    return idx if mask is None else np.where(mask, idx, 0)


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("mask_zero", [True, False])
def test_embedding_gradients(mask_zero, mask):
    """Every embedding entry against finite differences (rows of index 0 and rows never used
    included); with mask_zero the GRU's input gradient goes through the mask's compaction."""
    inputs = cgru.Input((None,), dtype="int64")
    h = layers.Embedding(7, 3, mask_zero=mask_zero)(inputs)
    h = layers.GRU(4)(h)
    model = perturbed(cgru.Model(inputs, layers.Dense(3, activation="softmax")(h),
                                 dtype="float64", seed=7))
    model.compile("sgd", "sparse_categorical_crossentropy")
    y = np.random.default_rng(1).integers(0, 3, B)
    assert check_gradients(model, token_ids(MASKS[mask]), y, per_param=21) >= 21


@pytest.mark.parametrize("mask", MASKED, ids=str)
def test_masked_sparse_categorical_crossentropy_on_sequences_gradients(mask):
    """A tagger: the loss is the mean over valid steps only."""
    model = perturbed(cgru.Sequential([
        layers.Embedding(7, 3, mask_zero=True),
        layers.GRU(4, return_sequences=True),
        layers.TimeDistributed(layers.Dense(3, activation="softmax")),
    ], dtype="float64", seed=8))
    model.compile("sgd", "sparse_categorical_crossentropy")
    idx = token_ids(MASKS[mask])
    model.build((None, None))
    y = np.random.default_rng(2).integers(0, 3, (B, T))
    check_gradients(model, idx, y)
    # masked targets do not count: changing them changes neither the loss nor the gradients
    loss, grads = model.gradients(idx, y, training=False)
    y2 = np.where(idx == 0, (y + 1) % 3, y)
    loss2, grads2 = model.gradients(idx, y2, training=False)
    assert loss2 == loss
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k])


def sgd_gradients(model, x, y, **weights):
    """The gradients one train_on_batch applies, read from a plain SGD step of rate 1."""
    before = {k: v.copy() for k, v in model.trainable_weights.items()}
    model.train_on_batch(x, y, **weights)
    grads = {k: before[k] - v for k, v in model.trainable_weights.items()}
    for k, v in model.trainable_weights.items():
        v[...] = before[k]
    return grads


def classifier(seed):
    model = perturbed(cgru.Sequential([layers.Masking(), layers.GRU(4),
                                       layers.Dense(1, activation="sigmoid")],
                                      dtype="float64", seed=seed))
    model.compile(optimizers.SGD(learning_rate=1.0), "binary_crossentropy")
    model.build((None, None, F))
    return model


def test_sample_weight_gradients():
    model = classifier(9)
    x, y = masked_inputs(MASKS["tail"]), np.array([1.0, 0.0, 1.0, 0.0])
    sample_weight = np.array([0.5, 2.0, 0.0, 1.5])
    grads = sgd_gradients(model, x, y, sample_weight=sample_weight)
    check_gradients(model, x, y, grads=grads, sample_weight=sample_weight)
    # and it is the weighted mean: sum_i w_i g_i / n
    singles = [model.gradients(x[i:i + 1], y[i:i + 1], training=False)[1] for i in range(B)]
    for k in grads:
        expected = sum(w * g[k] for w, g in zip(sample_weight, singles)) / B
        np.testing.assert_allclose(grads[k], expected, rtol=1e-10, atol=1e-12)


def test_class_weight_gradients():
    model = classifier(10)
    x, y = masked_inputs(MASKS["holes"]), np.array([1.0, 0.0, 1.0, 1.0])
    grads = sgd_gradients(model, x, y, class_weight={0: 3.0, 1: 0.25})
    check_gradients(model, x, y, grads=grads, sample_weight=np.array([0.25, 3.0, 0.25, 0.25]))


def test_per_step_sample_weight_and_mask_gradients():
    """(batch, time) sample weights on a masked sequence output: weighted sum over valid steps,
    divided by the number of valid steps."""
    model = perturbed(cgru.Sequential([layers.Masking(), layers.GRU(3, return_sequences=True),
                                       layers.Dense(2)], dtype="float64", seed=11))
    model.compile(optimizers.SGD(learning_rate=1.0), "mse")
    m = MASKS["holes"]
    x, y = masked_inputs(m), data(12, np.float64, (B, T, 2))
    w = np.random.default_rng(3).uniform(0, 2, (B, T))
    model.build(x.shape)
    grads = sgd_gradients(model, x, y, sample_weight=w)
    check_gradients(model, x, y, grads=grads, sample_weight=w)
    out = model.predict(x)
    expected = (((out - y) ** 2).mean(axis=-1) * w * m).sum() / m.sum()
    assert evaluated_loss(model, x, y, w) == pytest.approx(expected, rel=1e-12)


# ==== 3. bad input to a layer ===================================================================

def test_masks_of_the_wrong_shape_or_dtype_are_refused():
    x = data()
    gru = layers.GRU(H)
    for bad in (np.ones((B, T + 1), bool), np.ones((B,), bool), np.ones((B, T, 1), bool),
                np.ones((B + 1, T), bool)):
        with pytest.raises(ValueError, match=r"mask must be a boolean array \(batch, time\)"):
            gru(x, mask=bad)
    for bad in (np.ones((B, T)), np.full((B, T), "yes")):
        with pytest.raises(ValueError, match=f"mask must be a boolean array.*dtype {bad.dtype}"):
            gru(x, mask=bad)
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        layers.Bidirectional(layers.GRU(H))(x, mask=np.ones((T, B), bool))
    # 0/1 integers are a mask, as in Keras
    np.testing.assert_array_equal(gru(x, mask=MASKS["tail"].astype(np.int8)),
                                  gru(x, mask=MASKS["tail"]))


@pytest.mark.parametrize("indices, message", [
    (np.array([[1, 2, 9]]), r"indices in \[0, 8\] \(input_dim=9\); got values from 1 to 9"),
    (np.array([[1, -1, 2]]), r"indices in \[0, 8\].*got values from -1 to 2"),
    (np.array([[1.0, 2.5, 3.0]]), "non-integer values"),
    (np.array([[1.0, np.nan, 3.0]]), "non-integer values"),
    (np.array([["a", "b"]]), "input 0 must be a real array.*dtype <U1"),
], ids=["too-large", "negative", "fraction", "nan", "strings"])
def test_embedding_refuses_bad_indices(indices, message):
    embedding = layers.Embedding(9, 2, name="words")
    with pytest.raises((ValueError, TypeError), match=r"layer 'words'"):
        embedding(indices)
    with pytest.raises((ValueError, TypeError), match=message):
        embedding(indices)


def test_embedding_takes_whole_floats_as_indices():
    embedding = layers.Embedding(9, 2)
    idx = np.array([[1, 8, 0]])
    np.testing.assert_array_equal(embedding(idx.astype(float)), embedding(idx))


def test_stateful_layer_fed_another_batch_size_is_refused():
    gru = layers.GRU(H, stateful=True, name="controller")
    gru(data())
    with pytest.raises(ValueError, match=r"stateful layer 'controller' keeps states for "
                                         r"batches of 4; this batch holds 3"):
        gru(data()[:3])
    gru.reset_states()
    assert gru(data()[:3]).shape == (3, H)  # after reset_states any batch size starts over


def test_initial_state_of_the_wrong_shape_or_count_is_refused():
    x = data()
    gru = layers.GRU(H, name="decoder")
    with pytest.raises(ValueError, match=r"initial_state: layer 'decoder' takes states of "
                                         r"shape \(batch, units\) = \(4, 5\)"):
        gru(x, initial_state=np.zeros((B, H + 1), np.float32))
    with pytest.raises(ValueError, match=r"initial_state: layer 'decoder' takes 1 state"):
        gru(x, initial_state=[np.zeros((B, H), np.float32)] * 2)
    bi = layers.Bidirectional(layers.GRU(H), name="both")
    with pytest.raises(ValueError, match=r"initial_state: layer 'both_gru' takes 2 state"):
        bi(x, initial_state=np.zeros((B, H), np.float32))
    # before a model names it, a layer is named by its class (not 'None')
    with pytest.raises(ValueError, match=r"initial_state: layer 'GRU' takes states \(batch, "
                                         r"5\); state 0 has shape \(batch, 4\)"):
        layers.GRU(H)(cgru.Input((None, 3)), initial_state=cgru.Input((4,)))


def test_a_built_layer_refuses_other_features():
    gru = layers.GRU(H, name="g")
    gru(data())
    with pytest.raises(ValueError, match=r"layer 'g' was built for input \(batch, 6, 3\); "
                                         r"here it gets \(batch, 6, 4\)"):
        gru(data(shape=(B, T, 4)))


def test_an_unbuilt_layer_has_no_weights_to_set():
    gru = layers.GRU(H, name="late")
    assert gru.get_weights() == [] and layers.Bidirectional(layers.GRU(H)).get_weights() == []
    with pytest.raises(ValueError, match="layer 'late' is not built yet, so it has no weights "
                                         "to set: call it on data"):
        gru.set_weights([np.zeros((F, 3 * H))])
    with pytest.raises(ValueError, match="layer 'Dense' is not built yet"):
        layers.TimeDistributed(layers.Dense(2)).set_weights([np.zeros((F, 2)), np.zeros(2)])
    # a Sequential with a declared input is built at once, as in Keras
    model = cgru.Sequential([cgru.Input((None, F)), layers.GRU(H, name="g")])
    model.get_layer("g").set_weights(model.get_weights())


def test_wrappers_refuse_what_they_cannot_wrap():
    with pytest.raises(TypeError, match="Bidirectional wraps a cgru.layers.GRU, got Dense"):
        layers.Bidirectional(layers.Dense(3))
    with pytest.raises(TypeError, match="TimeDistributed wraps a cgru.layers.Dense or Dropout, "
                                        "got GRU"):
        layers.TimeDistributed(layers.GRU(3))
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        layers.Bidirectional(layers.GRU(3), merge_mode="max")
    with pytest.raises(ValueError, match="go_backwards=False"):
        layers.Bidirectional(layers.GRU(3, go_backwards=True))


def test_a_call_mixing_arrays_and_symbolic_tensors_is_refused():
    symbolic = cgru.Input((None, 3))
    with pytest.raises(TypeError, match=r"layer 'joiner': mix of symbolic tensors and arrays"):
        layers.Concatenate(name="joiner")([symbolic, data()])
    with pytest.raises(TypeError, match=r"mix of symbolic tensors and arrays"):
        layers.GRU(H)(data(), initial_state=layers.Dense(H)(cgru.Input((2,))))
    with pytest.raises(ValueError, match="mask: in a functional model masks come from the "
                                         "layers"):
        layers.GRU(H)(symbolic, mask=np.ones((B, T), bool))


def test_merge_layers_refuse_bad_lists():
    with pytest.raises(ValueError, match="Concatenate takes a list of at least 2 inputs"):
        layers.Concatenate()(data())
    with pytest.raises(ValueError, match=r"layer 'plus' \(Add\): inputs must have one shape"):
        layers.Add(name="plus")([data(), data(shape=(B, T, 2))])
    with pytest.raises(ValueError, match=r"\(Concatenate\): inputs must agree on every axis"):
        layers.Concatenate(name="c")([data(), data(shape=(B, T + 1, 2))])
