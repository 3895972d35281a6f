"""Sequential models: gradients, training, PyTorch parity, callbacks, reporting and bad input."""
import numpy as np
import pytest

import cgru
from cgru import callbacks, layers, optimizers


def finite_difference_check(model, x, y, rng, per_param=4, eps=1e-6):
    """Compare model.gradients with central differences of the loss (float64) on a few entries
    of every trainable array."""
    _, grads = model.gradients(x, y, training=False)
    for name, param in model.trainable_weights.items():
        flat = param.reshape(-1)
        for i in rng.choice(flat.size, size=min(per_param, flat.size), replace=False):
            saved = flat[i]
            flat[i] = saved + eps
            up = model.loss(y, model(x))
            flat[i] = saved - eps
            down = model.loss(y, model(x))
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            assert grads[name].reshape(-1)[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), \
                f"{name}[{i}]"


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
def test_stacked_model_gradients_match_finite_differences(merge_mode):
    rng = np.random.default_rng(0)
    model = cgru.Sequential([
        layers.GRU(5, return_sequences=True, reset_after=False),
        layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode=merge_mode),
        layers.Dense(6, activation="relu"),
        layers.GRU(3),
        layers.Dense(2, activation="tanh"),
    ], seed=1, dtype="float64")
    model.compile("sgd", "mse")
    x, y = rng.standard_normal((3, 7, 2)), rng.standard_normal((3, 2))
    model.build(x.shape)
    for w in model.trainable_weights.values():  # non-zero biases, so every path is exercised
        w += 0.1 * rng.standard_normal(w.shape)
    finite_difference_check(model, x, y, rng)


@pytest.mark.parametrize("activation, loss, targets", [
    ("softmax", "categorical_crossentropy", "one_hot"),
    ("softmax", "sparse_categorical_crossentropy", "labels"),
    ("sigmoid", "binary_crossentropy", "binary"),
    (None, cgru.losses.BinaryCrossentropy(from_logits=True), "binary"),
    (None, "mae", "real"),
])
def test_sequence_outputs_and_classification_heads_have_exact_gradients(activation, loss,
                                                                        targets):
    rng = np.random.default_rng(2)
    model = cgru.Sequential([layers.Bidirectional(layers.GRU(4, return_sequences=True)),
                             layers.Dense(3, activation=activation)], seed=3, dtype="float64")
    model.compile("adam", loss)
    x = rng.standard_normal((4, 5, 2))
    labels = rng.integers(0, 3, (4, 5))
    y = {"one_hot": np.eye(3)[labels], "labels": labels,
         "binary": rng.integers(0, 2, (4, 5, 3)).astype(float),
         "real": rng.standard_normal((4, 5, 3))}[targets]
    model.build(x.shape)
    finite_difference_check(model, x, y, rng)


def test_input_size_is_inferred_and_summary_lists_shapes_and_counts():
    model = cgru.Sequential([layers.Input((None, 3)), layers.GRU(128, return_sequences=True),
                             layers.GRU(64), layers.Dense(1)])
    text = model.summary(print_fn=None)
    # Keras counts for the same model: 3*(3*128 + 128*128 + 2*128), 3*(128*64 + 64*64 + 2*64), 65
    assert "(None, None, 128)" in text and "(None, 64)" in text and "(None, 1)" in text
    assert "51,072" in text and "37,248" in text and "65" in text
    assert model.count_params() == 51072 + 37248 + 65


def test_reset_before_gru_has_keras_parameter_count():
    model = cgru.Sequential([layers.GRU(10, reset_after=False)])
    model.build((None, 4, 3))
    assert model.count_params() == 3 * (3 * 10 + 10 * 10 + 10)


def test_small_model_overfits_a_small_data_set():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 10, 2)).astype(np.float32)
    y = np.tanh(x[:, :, 0].mean(axis=1, keepdims=True) * 3 + x[:, -1, 1:])
    model = cgru.Sequential([layers.GRU(16, return_sequences=True), layers.GRU(16),
                             layers.Dense(1)], seed=5)
    model.compile(optimizers.Adam(0.01), "mse")
    history = model.fit(x, y, epochs=300, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 1e-3 < history.history["loss"][0]
    assert model.evaluate(x, y, return_dict=True)["loss"] < 1e-3


def test_same_seed_trains_the_same_model_bit_for_bit():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((40, 6, 3)), rng.standard_normal((40, 1))

    def train():
        model = cgru.Sequential([layers.GRU(8, dropout=0.2), layers.Dropout(0.3),
                                 layers.Dense(1)], seed=7)
        model.compile("rmsprop", "mse")
        model.fit(x, y, epochs=3, batch_size=8, verbose=0)
        return model.get_weights()

    for a, b in zip(train(), train()):
        np.testing.assert_array_equal(a, b)


def test_dropout_applies_in_training_only():
    model = cgru.Sequential([layers.Dropout(0.5)], seed=0)
    x = np.ones((50, 4, 10), np.float32)
    np.testing.assert_array_equal(model.predict(x), x)
    out = model(x, training=True)
    assert set(np.unique(out)) == {0.0, 2.0}


def test_history_has_losses_metrics_and_validation_per_epoch():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((50, 5, 2)), rng.standard_normal((50, 1))
    model = cgru.Sequential([layers.GRU(4), layers.Dense(1)], seed=0)
    model.compile("adam", "mse", metrics=["mae", "rmse"])
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.2, verbose=0)
    assert sorted(history.history) == ["loss", "mae", "rmse", "val_loss", "val_mae", "val_rmse"]
    assert all(len(v) == 3 for v in history.history.values()) and history.epoch == [0, 1, 2]
    # validation_split holds out the last 20 % (10 samples), as Keras
    val = model.evaluate(x[-10:], y[-10:], return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(val["loss"])
    assert history.history["val_rmse"][-1] == pytest.approx(val["rmse"])
    assert val["rmse"] == pytest.approx(np.sqrt(val["loss"]))  # the loss is the mse


def test_verbose_zero_prints_nothing_and_verbose_one_draws_a_bar(capfd):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((20, 4, 2)), rng.standard_normal((20, 1))
    model = cgru.Sequential([layers.GRU(3), layers.Dense(1)], seed=0)
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.25)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    model.fit(x, y, epochs=2, verbose=1, validation_split=0.25)
    out, err = capfd.readouterr()
    assert "Epoch 2/2" in out + err and "val_loss" in out + err


def test_early_stopping_stops_and_restores_the_best_weights():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((30, 4, 2)), rng.standard_normal((30, 1))
    xv, yv = rng.standard_normal((10, 4, 2)), rng.standard_normal((10, 1))
    model = cgru.Sequential([layers.GRU(32), layers.Dense(1)], seed=0)
    model.compile(optimizers.SGD(0.5), "mse")  # too high a rate: validation loss soon worsens
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=100, validation_data=(xv, yv), callbacks=[stopper],
                        verbose=0)
    assert len(history.epoch) < 100 and stopper.stopped_epoch is not None
    best = min(history.history["val_loss"])
    assert model.evaluate(xv, yv, return_dict=True)["loss"] == pytest.approx(best, rel=1e-5)


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((30, 4, 2)), rng.standard_normal((30, 1))
    model = cgru.Sequential([layers.GRU(8), layers.Dense(1)], seed=0)
    model.compile(optimizers.SGD(0.5), "mse")
    path = tmp_path / "best.npz"
    history = model.fit(x, y, epochs=8, validation_split=0.3, verbose=0,
                        callbacks=[callbacks.ModelCheckpoint(path, save_best_only=True)])
    best = cgru.load_model(path)
    assert best.evaluate(x[-9:], y[-9:], return_dict=True)["loss"] == pytest.approx(
        min(history.history["val_loss"]), rel=1e-5)


def test_monitoring_a_quantity_fit_does_not_report_says_so():
    model = cgru.Sequential([layers.GRU(2), layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation"):
        model.fit(np.zeros((4, 3, 1)), np.zeros((4, 1)), verbose=0,
                  callbacks=[callbacks.EarlyStopping()])


@pytest.mark.parametrize("call, message", [
    (lambda m: m.fit(np.zeros((4, 3)), np.zeros((4, 1))), r"x must be \(batch, time, features\)"),
    (lambda m: m.fit(np.zeros((4, 3, 2)), np.zeros((5, 1))), r"one target per sequence of x \(4\)"),
    (lambda m: m.fit(np.full((4, 3, 2), np.nan), np.zeros((4, 1))), "NaN"),
    (lambda m: m.fit(np.zeros((4, 3, 2)), np.zeros((4, 1)), epochs=0), "epochs"),
    (lambda m: m.fit(np.zeros((4, 3, 2)), np.zeros((4, 1)), batch_size=-2), "batch_size"),
    (lambda m: m.fit(np.zeros((4, 3, 2)), np.zeros((4, 1)), validation_split=1.5),
     "validation_split"),
    (lambda m: m.fit(np.zeros((4, 3, 2)), np.zeros((4, 2)), verbose=0), r"shape \(4, 1\)"),
    (lambda m: m.predict(np.zeros((4, 3, 5))), r"x must have shape \(batch, None, 2\), got \(4, 3, 5\)"),
    (lambda m: m.fit(np.array([["a"]]), np.zeros(1)), "numeric"),
])
def test_bad_input_raises_a_clear_error(call, message):
    model = cgru.Sequential([layers.Input((None, 2)), layers.GRU(3), layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises((ValueError, TypeError), match=message):
        call(model)


def test_fit_before_compile_says_to_compile():
    with pytest.raises(RuntimeError, match="compile"):
        cgru.Sequential([layers.Dense(1)]).fit(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)))


def test_layer_settings_are_checked():
    with pytest.raises(ValueError, match="units"):
        layers.GRU(0)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        layers.GRU(4, recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="activation"):
        layers.GRU(4, activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        layers.Dense(4, activation="gelu")
    with pytest.raises(TypeError, match="wraps a cgru.layers.GRU"):
        layers.Bidirectional(layers.Dense(3))
    with pytest.raises(ValueError, match="merge_mode"):
        layers.Bidirectional(layers.GRU(3), merge_mode="max")


# ---- PyTorch parity: the same model, weights and batches end with the same weights -----------

def torch_twin(model):
    torch = pytest.importorskip("torch")
    gru1, gru2, dense = model.layers

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru1 = torch.nn.GRU(gru1.input_shape[-1], gru1.units, batch_first=True)
            self.gru2 = torch.nn.GRU(gru1.units, gru2.units, batch_first=True)
            self.head = torch.nn.Linear(gru2.units, dense.units)

        def forward(self, x):
            y, _ = self.gru1(x)
            _, h = self.gru2(y)
            return self.head(h[0])

    twin = Twin().double()
    with torch.no_grad():
        for ours, theirs in ((gru1, twin.gru1), (gru2, twin.gru2)):
            for name, value in ours.params.items():
                getattr(theirs, name).copy_(torch.from_numpy(value.astype(np.float64)))
        twin.head.weight.copy_(torch.from_numpy(dense.params["kernel"].T.astype(np.float64)))
        twin.head.bias.copy_(torch.from_numpy(dense.params["bias"].astype(np.float64)))
    return twin.float()


@pytest.mark.parametrize("which", ["sgd_momentum", "sgd_nesterov", "adam"])
def test_training_matches_pytorch_step_for_step(which):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((24, 12, 3)).astype(np.float32)
    y = rng.standard_normal((24, 1)).astype(np.float32)
    model = cgru.Sequential([layers.GRU(16, return_sequences=True), layers.GRU(8),
                             layers.Dense(1)], seed=13)
    model.build(x.shape)
    for w in model.trainable_weights.values():
        w += np.float32(0.05) * rng.standard_normal(w.shape).astype(np.float32)
    twin = torch_twin(model)
    if which == "adam":
        # Keras's Adam (cgru's) adds epsilon to sqrt(v), PyTorch's to sqrt(v / (1 - beta_2^t));
        # with a negligible epsilon the two rules give the same iterates
        ours = optimizers.Adam(0.01, epsilon=1e-12)
        theirs = torch.optim.Adam(twin.parameters(), lr=0.01, eps=1e-12)
    else:
        nesterov = which == "sgd_nesterov"
        ours = optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov)
        theirs = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov)
    model.compile(ours, "mse")
    for step in range(6):
        batch = slice(8 * (step % 3), 8 * (step % 3) + 8)
        ours_loss = model.train_on_batch(x[batch], y[batch])
        theirs.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(torch.from_numpy(x[batch])),
                                            torch.from_numpy(y[batch]))
        loss.backward()
        theirs.step()
        assert ours_loss == pytest.approx(loss.item(), rel=1e-4)
    gru1, gru2, dense = model.layers
    for ours_layer, theirs_gru in ((gru1, twin.gru1), (gru2, twin.gru2)):
        for name, value in ours_layer.params.items():
            np.testing.assert_allclose(value, getattr(theirs_gru, name).detach().numpy(),
                                       rtol=1e-4, atol=2e-5, err_msg=f"{ours_layer.name}/{name}")
    np.testing.assert_allclose(dense.params["kernel"], twin.head.weight.detach().numpy().T,
                               rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dense.params["bias"], twin.head.bias.detach().numpy(),
                               rtol=1e-4, atol=2e-5)
