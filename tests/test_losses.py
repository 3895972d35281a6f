"""Losses: values by hand, gradients against central finite differences (float64)."""
import numpy as np
import pytest

from cgru import losses

ALL_LOSSES = [
    losses.MeanSquaredError(), losses.MeanAbsoluteError(),
    losses.BinaryCrossentropy(), losses.BinaryCrossentropy(from_logits=True),
    losses.CategoricalCrossentropy(), losses.CategoricalCrossentropy(from_logits=True),
    losses.SparseCategoricalCrossentropy(),
    losses.SparseCategoricalCrossentropy(from_logits=True),
]


def sample(loss, shape, rng):
    """(y_true, y_pred) in the loss's domain, away from kinks and clip edges."""
    logits = isinstance(loss, (losses.BinaryCrossentropy, losses.CategoricalCrossentropy)) \
        and loss.from_logits
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        y_true = rng.integers(0, shape[-1], shape[:-1])
    elif isinstance(loss, losses.CategoricalCrossentropy):
        y_true = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    elif isinstance(loss, losses.BinaryCrossentropy):
        y_true = rng.integers(0, 2, shape).astype(float)
    else:
        y_true = rng.standard_normal(shape)
    if logits or isinstance(loss, (losses.MeanSquaredError, losses.MeanAbsoluteError)):
        y_pred = rng.standard_normal(shape) * 2
    else:
        y_pred = rng.uniform(0.05, 0.95, shape)
    return y_true, y_pred


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=repr)
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3)], ids=["outputs", "sequences"])
def test_gradient_matches_finite_differences(loss, shape):
    rng = np.random.default_rng(1)
    y_true, y_pred = sample(loss, shape, rng)
    grad = loss.gradient(y_true, y_pred)
    assert grad.shape == y_pred.shape
    eps = 1e-6
    numeric = np.zeros_like(y_pred)
    for i in np.ndindex(shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (loss(y_true, up) - loss(y_true, down)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_mean_squared_and_absolute_error_by_hand():
    y, p = np.array([[1.0], [2.0]]), np.array([[1.5], [1.0]])
    assert losses.MeanSquaredError()(y, p) == pytest.approx((0.25 + 1.0) / 2)
    assert losses.MeanAbsoluteError()(y, p) == pytest.approx((0.5 + 1.0) / 2)


def test_targets_of_shape_batch_fit_outputs_of_shape_batch_by_one():
    assert losses.get("mse")(np.array([1.0, 2.0]), np.array([[1.0], [4.0]])) == pytest.approx(2.0)


def test_sequence_outputs_average_over_batch_and_time():
    y = np.zeros((2, 3, 1))
    p = np.arange(6.0).reshape(2, 3, 1)
    assert losses.MeanSquaredError()(y, p) == pytest.approx(np.mean(np.arange(6.0) ** 2))


def test_binary_crossentropy_by_hand():
    value = losses.BinaryCrossentropy()(np.array([[1.0], [0.0]]), np.array([[0.8], [0.4]]))
    assert value == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)


def test_binary_crossentropy_from_logits_equals_it_on_sigmoid_and_survives_huge_logits():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (6, 2)).astype(float)
    logits = rng.standard_normal((6, 2))
    from_probs = losses.BinaryCrossentropy()(y, 1 / (1 + np.exp(-logits)))
    assert losses.BinaryCrossentropy(from_logits=True)(y, logits) == pytest.approx(from_probs)
    huge = losses.BinaryCrossentropy(from_logits=True)
    assert huge(np.array([[0.0]]), np.array([[1000.0]])) == pytest.approx(1000.0)
    assert np.isfinite(huge.gradient(np.array([[0.0]]), np.array([[-1000.0]]))).all()


def test_categorical_crossentropy_by_hand_and_sparse_labels_agree():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    expected = -(np.log(0.7) + np.log(0.8)) / 2
    assert losses.CategoricalCrossentropy()(y, p) == pytest.approx(expected)
    assert losses.SparseCategoricalCrossentropy()(np.array([0, 2]), p) == pytest.approx(expected)


def test_categorical_crossentropy_from_logits_is_stable():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    loss = losses.CategoricalCrossentropy(from_logits=True)
    assert loss(np.array([[1.0, 0, 0]]), logits) == pytest.approx(0.0)
    assert loss(np.array([[0, 1.0, 0]]), logits) == pytest.approx(1000.0)


def test_mismatched_shapes_name_both():
    with pytest.raises(ValueError, match=r"shape \(4, 2\), got \(4, 3\)"):
        losses.MeanSquaredError()(np.zeros((4, 3)), np.zeros((4, 2)))


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0.5, 1]])
def test_sparse_labels_outside_the_classes_are_refused(labels):
    with pytest.raises(ValueError, match="label"):
        losses.SparseCategoricalCrossentropy()(np.array(labels), np.full((2, 3), 1 / 3))


def test_unknown_loss_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="mean_squared_error"):
        losses.get("hinge")
