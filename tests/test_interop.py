"""Conversions to and from PyTorch, Keras 3 and ONNX: the source framework's outputs and the
converted model's agree within 1e-5 (float32), in both directions, for every option."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import cgru
from cgru import interop, layers

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch: no TensorFlow needed

ATOL = 1e-5


def close(actual, expected, what=""):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=ATOL, err_msg=what)


# ---- PyTorch ------------------------------------------------------------------------------------

TORCH_OPTIONS = [dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=b)
                 for L, bi, bf, b in itertools.product([1, 2], [False, True], [False, True],
                                                       [True, False])]


@pytest.mark.parametrize("options", TORCH_OPTIONS, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in o.items()))
def test_torch_gru_converts_to_cgru_and_back(options):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.GRU(5, 7, dropout=0.25 if options["num_layers"] > 1 else 0.0,
                          **options).eval()
    x = torch.randn(3, 6, 5)
    expected_y, expected_h = module(x)
    gru = interop.from_torch(module)
    y, h_n = gru(x.numpy())
    close(y, expected_y.detach().numpy(), "from_torch y")
    close(h_n, expected_h.detach().numpy(), "from_torch h_n")
    assert gru.dropout == module.dropout and not gru.training

    back = interop.to_torch(gru)
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy())
    assert back.batch_first == module.batch_first and back.bias == module.bias


def test_cgru_gru_converts_to_torch_with_the_same_outputs():
    torch = pytest.importorskip("torch")
    gru = cgru.GRU(4, 6, num_layers=2, bidirectional=True, seed=3).eval()
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    module = interop.to_torch(gru)
    y, h_n = module(torch.from_numpy(x))
    close(gru(x)[0], y.detach().numpy())
    close(gru(x)[1], h_n.detach().numpy())


def test_float64_torch_modules_stay_float64():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(3, 4).double()
    gru = interop.from_torch(module)
    assert gru.dtype == np.float64
    assert interop.to_torch(gru).weight_ih_l0.dtype == torch.float64


def test_reset_before_cannot_go_to_torch():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="reset_after=False"):
        interop.to_torch(cgru.GRU(3, 4, reset_after=False))


def test_from_torch_refuses_other_modules():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.nn.GRU, got LSTM"):
        interop.from_torch(torch.nn.LSTM(3, 4))


def test_recipe_torch_gru_with_linear_head_into_a_cgru_model():
    """The README's recipe: a GRU followed by a Linear head, as a cgru.Sequential."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    gru, head = torch.nn.GRU(3, 8, batch_first=True), torch.nn.Linear(8, 2)
    x = torch.randn(4, 10, 3)
    expected = head(gru(x)[1][0]).detach().numpy()

    model = cgru.Sequential([layers.GRU(8), layers.Dense(2)])
    model.build((None, None, 3))
    for name, value in gru.state_dict().items():
        model.layers[0].params[name][...] = value.numpy()
    model.layers[1].set_weights([head.weight.detach().numpy().T, head.bias.detach().numpy()])
    close(model.predict(x.numpy()), expected)


# ---- Keras --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_keras_gru_layer_converts_both_ways(keras, reset_after, use_bias, return_sequences):
    layer = keras.layers.GRU(6, reset_after=reset_after, use_bias=use_bias,
                             return_sequences=return_sequences, bias_initializer="uniform")
    x = np.random.default_rng(0).standard_normal((3, 7, 4)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(layer(x))
    ours = interop.from_keras(layer)
    model = cgru.Sequential([ours])
    model.build((None, None, 4))
    close(model.predict(x), expected, "from_keras")
    back = interop.to_keras(model)
    close(keras.ops.convert_to_numpy(back(x)), expected, "to_keras")


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_keras_bidirectional_converts_both_ways(keras, merge_mode, return_sequences):
    layer = keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=return_sequences,
                                                        bias_initializer="uniform"),
                                       merge_mode=merge_mode)
    x = np.random.default_rng(1).standard_normal((2, 6, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(layer(x))
    model = cgru.Sequential([interop.from_keras(layer)])
    close(model.predict(x), expected, "from_keras")
    close(keras.ops.convert_to_numpy(interop.to_keras(model)(x)), expected, "to_keras")


def test_keras_sequential_converts_both_ways(keras):
    source = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.GRU(16, return_sequences=True),
        keras.layers.Bidirectional(keras.layers.GRU(8, reset_after=False,
                                                    return_sequences=True)),
        keras.layers.Dropout(0.3),
        keras.layers.GRU(8),
        keras.layers.Dense(4, activation="softmax"),
    ])
    x = np.random.default_rng(2).standard_normal((5, 9, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(source(x))
    model = interop.from_keras(source)
    assert [type(l).__name__ for l in model.layers] == ["GRU", "Bidirectional", "Dropout",
                                                        "GRU", "Dense"]
    assert model.count_params() == source.count_params()
    close(model.predict(x), expected, "from_keras")
    back = interop.to_keras(model)
    close(keras.ops.convert_to_numpy(back(x)), expected, "to_keras")


def test_cgru_trained_model_runs_in_keras(keras):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((32, 8, 2)).astype(np.float32), rng.standard_normal((32, 1))
    model = cgru.Sequential([layers.GRU(12, return_sequences=True), layers.GRU(6),
                             layers.Dense(1)], seed=0)
    model.compile("adam", "mse")
    model.fit(x, y, epochs=2, verbose=0)
    close(keras.ops.convert_to_numpy(interop.to_keras(model)(x)), model.predict(x))


@pytest.mark.parametrize("make, message", [
    (lambda k: k.layers.GRU(4, activation="relu"), "activation='relu'"),
    (lambda k: k.layers.GRU(4, recurrent_activation="hard_sigmoid"), "recurrent_activation"),
    (lambda k: k.layers.GRU(4, recurrent_dropout=0.2), "recurrent_dropout"),
    (lambda k: k.layers.Dense(4, activation="gelu"), "activation='gelu'"),
    (lambda k: k.layers.LSTM(4), "LSTM"),
])
def test_keras_layers_cgru_cannot_represent_are_refused(keras, make, message):
    layer = make(keras)
    layer(np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match=message):
        interop.from_keras(layer)


# ---- ONNX ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def run_onnx(ort, path, **inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


ONNX_OPTIONS = [dict(num_layers=L, bidirectional=bi, reset_after=ra, batch_first=bf)
                for L, bi, ra, bf in itertools.product([1, 2], [False, True], [True, False],
                                                       [False, True])]


@pytest.mark.parametrize("options", ONNX_OPTIONS, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_exported_gru_runs_in_onnx_runtime_with_the_same_outputs(ort, tmp_path, options,
                                                                 with_lengths):
    import onnx
    gru = cgru.GRU(4, 5, seed=1, **options).eval()
    for p in gru.params.values():  # non-trivial biases
        p += np.float32(0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    if options["batch_first"]:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    lengths = np.array([6, 2, 4], np.int32) if with_lengths else None
    y, h_n = gru(x, lengths=lengths)
    path = tmp_path / "gru.onnx"
    interop.export_onnx(gru, path, lengths=with_lengths)
    onnx.checker.check_model(onnx.load(str(path)))
    feeds = {"x": x, **({"lengths": lengths} if with_lengths else {})}
    y_ort, h_ort = run_onnx(ort, path, **feeds)
    close(y_ort, y, "y")
    close(h_ort, h_n, "h_n")
    loaded = interop.load_onnx(path)
    assert isinstance(loaded, cgru.GRU) and repr(loaded) == repr(gru)
    for name, value in gru.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def test_exported_sequential_runs_in_onnx_runtime_and_loads_back(ort, tmp_path):
    model = cgru.Sequential([
        layers.GRU(8, return_sequences=True, reset_after=False),
        layers.Bidirectional(layers.GRU(6, return_sequences=True), merge_mode="sum"),
        layers.Dense(5, activation="relu"),
        layers.Dropout(0.5),
        layers.Bidirectional(layers.GRU(4), merge_mode="mul"),
        layers.Dense(3, activation="softmax"),
    ], seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    model.build(x.shape)
    for w in model.trainable_weights.values():
        w += np.float32(0.05) * rng.standard_normal(w.shape).astype(np.float32)
    path = tmp_path / "model.onnx"
    interop.export_onnx(model, path)
    (y_ort,) = run_onnx(ort, path, x=x)
    close(y_ort, model.predict(x))
    loaded = interop.load_onnx(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("merge_mode", ["concat", "ave"])
def test_exported_sequence_outputs_match(ort, tmp_path, merge_mode):
    model = cgru.Sequential([layers.Bidirectional(layers.GRU(5, return_sequences=True),
                                                  merge_mode=merge_mode),
                             layers.GRU(4, return_sequences=True)], seed=4)
    x = np.random.default_rng(5).standard_normal((2, 6, 3)).astype(np.float32)
    model.build(x.shape)
    interop.export_onnx(model, tmp_path / "m.onnx")
    close(run_onnx(ort, tmp_path / "m.onnx", x=x)[0], model.predict(x))


def hand_built_onnx(path, clip=None, activations=None, direction="forward", with_head=True):
    """An ONNX file written without cgru: GRU node, Y_h squeezed, Gemm head, Sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    D, H, I = (2 if direction == "bidirectional" else 1), 4, 3
    W = rng.standard_normal((D, 3 * H, I)).astype(np.float32) * 0.5
    R = rng.standard_normal((D, 3 * H, H)).astype(np.float32) * 0.5
    B = rng.standard_normal((D, 6 * H)).astype(np.float32) * 0.1
    head = rng.standard_normal((2, D * H)).astype(np.float32)
    head_b = rng.standard_normal(2).astype(np.float32)
    attrs = dict(hidden_size=H, direction=direction, linear_before_reset=1)
    if clip is not None:
        attrs["clip"] = clip
    if activations is not None:
        attrs["activations"] = activations
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Y_h"], **attrs),
             helper.make_node("Transpose", ["Y_h"], ["Y_hT"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["Y_hT", "flat"], ["h"])]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((W, "W"), (R, "R"), (B, "B"), (np.array([0, -1], np.int64), "flat"))]
    out = "h"
    if with_head:
        nodes += [helper.make_node("Gemm", ["h", "head", "head_b"], ["logits"], transB=1),
                  helper.make_node("Sigmoid", ["logits"], ["y"])]
        inits += [numpy_helper.from_array(head, "head"), numpy_helper.from_array(head_b,
                                                                               "head_b")]
        out = "y"
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["T", "B", I])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_foreign_onnx_gru_with_gemm_head_loads_as_a_sequential(ort, tmp_path, direction):
    path = tmp_path / "foreign.onnx"
    hand_built_onnx(path, direction=direction)
    x = np.random.default_rng(8).standard_normal((5, 3, 3)).astype(np.float32)  # (T, B, I)
    (expected,) = run_onnx(ort, path, x=x)
    model = interop.load_onnx(path)
    assert [type(l).__name__ for l in model.layers] == \
        ["Bidirectional" if direction == "bidirectional" else "GRU", "Dense"]
    close(model.predict(np.ascontiguousarray(x.transpose(1, 0, 2))), expected)


def test_foreign_onnx_gru_alone_loads_as_a_cgru_gru(ort, tmp_path):
    path = tmp_path / "foreign.onnx"
    hand_built_onnx(path, with_head=False)
    x = np.random.default_rng(9).standard_normal((5, 3, 3)).astype(np.float32)
    (expected,) = run_onnx(ort, path, x=x)
    gru = interop.load_onnx(path)
    assert isinstance(gru, cgru.GRU)
    close(gru.eval()(x)[1][0], expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip=5.0), "'clip'"),
    (dict(activations=["Relu", "Tanh"]), "activations"),
])
def test_onnx_gru_options_cgru_cannot_represent_are_refused(ort, tmp_path, kwargs, message):
    path = tmp_path / "bad.onnx"
    hand_built_onnx(path, **kwargs)
    with pytest.raises(ValueError, match=message):
        interop.load_onnx(path)


def test_non_onnx_file_is_refused(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "x.onnx"
    path.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        interop.load_onnx(path)


# ---- conventions and optional imports -----------------------------------------------------------

def seed_convention_step(x, h, p, H):
    """One step written as the seed documents do: h' = (1 - u) * h + u * n."""
    sig = lambda a: 1 / (1 + np.exp(-a))
    gi = p["weight_ih_l0"] @ x + p["bias_ih_l0"]
    gh = p["weight_hh_l0"] @ h + p["bias_hh_l0"]
    r = sig(gi[:H] + gh[:H])
    u = sig(gi[H:2 * H] + gh[H:2 * H])
    n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
    return (1 - u) * h + u * n


def test_seed_convention_weights_convert_to_the_same_model():
    H, I = 4, 3
    rng = np.random.default_rng(10)
    seed_weights = {"weight_ih_l0": rng.standard_normal((3 * H, I)),
                    "weight_hh_l0": rng.standard_normal((3 * H, H)),
                    "bias_ih_l0": rng.standard_normal(3 * H),
                    "bias_hh_l0": rng.standard_normal(3 * H)}
    gru = cgru.GRU(I, H, dtype="float64")
    gru.load_state_dict(interop.from_seed_convention(seed_weights))
    x = rng.standard_normal((6, I))
    h = np.zeros(H)
    for t in range(6):
        h = seed_convention_step(x[t], h, seed_weights, H)
    np.testing.assert_allclose(gru(x)[1][0], h, rtol=1e-12)


def test_importing_cgru_imports_no_framework():
    code = ("import sys, cgru, cgru.interop; "
            "print([m for m in ('torch', 'keras', 'onnx', 'onnxruntime', 'tqdm') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        interop.export_onnx(cgru.GRU(2, 3), tmp_path / "g.onnx")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        interop.to_torch(cgru.GRU(2, 3))


# ---- Keras functional models and the layers beyond GRU/Dense ------------------------------------

def _padded_tokens(rng, batch=6, steps=12, vocabulary=50):
    tokens = rng.integers(1, vocabulary, size=(batch, steps))
    lengths = rng.integers(3, steps + 1, size=batch)
    tokens[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    return tokens


def test_a_keras_functional_model_converts_both_ways(keras):
    rng = np.random.default_rng(20)
    series = keras.Input((None, 3), name="series")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    y, h = keras.layers.GRU(4, return_sequences=True, return_state=True)(series)
    decoded = keras.layers.GRU(4, return_sequences=True, go_backwards=True)(
        keras.layers.Embedding(50, 3)(tokens), initial_state=h)
    joined = keras.layers.Concatenate()([y, decoded])
    out = keras.layers.TimeDistributed(keras.layers.Dense(2, activation="tanh"))(
        keras.layers.Add()([joined, joined]))
    keras_model = keras.Model([series, tokens], out)
    x, t = rng.standard_normal((5, 12, 3)).astype(np.float32), _padded_tokens(rng, 5)
    expected = keras.ops.convert_to_numpy(keras_model([x, t]))
    model = interop.from_keras(keras_model)
    # Keras numbers its layer names process-wide; cgru keeps the names it was given
    assert isinstance(model, cgru.Model) and model.layers[-1].name == keras_model.layers[-1].name
    close(model.predict([x, t]), expected, "keras -> cgru")
    back = interop.to_keras(model)
    close(keras.ops.convert_to_numpy(back([x, t])), expected, "cgru -> keras")


@pytest.mark.parametrize("make", [
    lambda k: [k.layers.Embedding(50, 8, mask_zero=True),
               k.layers.Bidirectional(k.layers.GRU(6, return_sequences=True), merge_mode="sum"),
               k.layers.GRU(5), k.layers.Dense(1, activation="sigmoid")],
    lambda k: [k.layers.Embedding(50, 8, mask_zero=True), k.layers.GRU(6, return_sequences=True),
               k.layers.TimeDistributed(k.layers.Dense(3, activation="softmax"))],
], ids=["text-classifier", "tagger"])
def test_keras_models_with_masks_convert_both_ways(keras, make):
    rng = np.random.default_rng(21)
    keras_model = keras.Sequential([keras.Input((None,), dtype="int32")] + make(keras))
    tokens = _padded_tokens(rng)
    expected = keras.ops.convert_to_numpy(keras_model(tokens))
    model = interop.from_keras(keras_model)
    close(model.predict(tokens), expected, "keras -> cgru")
    close(keras.ops.convert_to_numpy(interop.to_keras(model)(tokens)), expected, "cgru -> keras")


def test_keras_ops_between_layers_are_refused_by_name(keras):
    inputs = keras.Input((None, 3))
    keras_model = keras.Model(inputs, keras.layers.GRU(4)(keras.ops.tanh(inputs)))
    with pytest.raises(ValueError, match=r"\(Tanh\) cannot be represented"):
        interop.from_keras(keras_model)


# ---- ONNX: embeddings, masks as sequence_lens, TimeDistributed ---------------------------------

@pytest.mark.parametrize("body", [
    lambda: [layers.Embedding(50, 8, mask_zero=True),
             layers.Bidirectional(layers.GRU(6, return_sequences=True)), layers.GRU(5),
             layers.Dense(2, activation="softmax")],
    lambda: [layers.Embedding(50, 8, mask_zero=True), layers.GRU(6), layers.Dense(1)],
    lambda: [layers.Embedding(50, 8), layers.GRU(6, return_sequences=True),
             layers.TimeDistributed(layers.Dense(3))],
], ids=["masked-bidirectional", "masked-last-state", "time-distributed"])
def test_exported_embedding_models_run_in_onnx_runtime_and_load_back(ort, tmp_path, body):
    tokens = _padded_tokens(np.random.default_rng(22))
    model = cgru.Sequential(body(), seed=1)
    model.build((None, None))
    path = tmp_path / "m.onnx"
    interop.export_onnx(model, path)
    expected = model.predict(tokens)
    close(run_onnx(ort, path, x=tokens.astype(np.int64))[0], expected, "onnxruntime")
    np.testing.assert_array_equal(interop.load_onnx(path).predict(tokens), expected)


def test_an_exported_masking_layer_becomes_sequence_lengths(ort, tmp_path):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((6, 12, 3)).astype(np.float32)
    lengths = rng.integers(3, 13, size=6)
    x[np.arange(12)[None, :] >= lengths[:, None]] = 0
    model = cgru.Sequential([layers.Masking(0.0), layers.GRU(6), layers.Dense(1)], seed=2)
    model.build((None, None, 3))
    interop.export_onnx(model, tmp_path / "m.onnx")
    close(run_onnx(ort, tmp_path / "m.onnx", x=x)[0], model.predict(x), "onnxruntime")


def test_sequences_after_a_mask_are_refused_by_export(ort, tmp_path):
    model = cgru.Sequential([layers.Embedding(50, 8, mask_zero=True),
                             layers.GRU(6, return_sequences=True)])
    model.build((None, None))
    with pytest.raises(ValueError, match="repeats the last valid output"):
        interop.export_onnx(model, tmp_path / "m.onnx")
