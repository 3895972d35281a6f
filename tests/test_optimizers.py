"""Each optimizer's update against a step computed by hand from its documented rule."""
import math

import numpy as np
import pytest

from cgru import optimizers
from cgru.optimizers import schedules


def run(optimizer, p0, grads):
    """Apply each gradient in turn to a copy of p0 (float64); returns the final parameter."""
    params = {"w": np.array(p0, dtype=np.float64)}
    for g in grads:
        optimizer.apply(params, {"w": np.array(g, dtype=np.float64)})
    return params["w"]


def test_sgd_plain_step_is_p_minus_lr_g():
    p = run(optimizers.SGD(learning_rate=0.1), [1.0, 2.0], [[0.5, -1.0]])
    np.testing.assert_allclose(p, [1.0 - 0.05, 2.0 + 0.1], rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps():
    # v1 = -0.1*0.5 = -0.05; p1 = 0.95; v2 = 0.9*(-0.05) - 0.1*1.0 = -0.145; p2 = 0.805
    p = run(optimizers.SGD(0.1, momentum=0.9), [1.0], [[0.5], [1.0]])
    np.testing.assert_allclose(p, [0.805], rtol=0, atol=1e-15)


def test_sgd_nesterov_two_steps():
    # step 1: v1 = -0.05; p1 = 1 + 0.9*(-0.05) - 0.05 = 0.905
    # step 2: v2 = 0.9*(-0.05) - 0.1 = -0.145; p2 = 0.905 + 0.9*(-0.145) - 0.1 = 0.6745
    p = run(optimizers.SGD(0.1, momentum=0.9, nesterov=True), [1.0], [[0.5], [1.0]])
    np.testing.assert_allclose(p, [0.6745], rtol=0, atol=1e-15)


def test_adam_two_steps():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    g1, g2 = 0.5, -0.2
    m1, v1 = 0.1 * g1, 0.001 * g1 ** 2
    p1 = 1.0 - lr * math.sqrt(1 - b2) / (1 - b1) * m1 / (math.sqrt(v1) + eps)
    m2, v2 = b1 * m1 + 0.1 * g2, b2 * v1 + 0.001 * g2 ** 2
    p2 = p1 - lr * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2) * m2 / (math.sqrt(v2) + eps)
    p = run(optimizers.Adam(lr, epsilon=eps), [1.0], [[g1], [g2]])
    np.testing.assert_allclose(p, [p2], rtol=1e-14)
    assert abs(p1 - (1.0 - lr)) < 1e-6  # Adam's first step is about lr * sign(g)


def test_rmsprop_step():
    # v = 0.1 * 0.25 = 0.025; p = 1 - 0.01 * 0.5 / sqrt(0.025 + 1e-7)
    p = run(optimizers.RMSprop(0.01), [1.0], [[0.5]])
    np.testing.assert_allclose(p, [1.0 - 0.01 * 0.5 / math.sqrt(0.025 + 1e-7)], rtol=1e-14)


def test_rmsprop_centered_with_momentum_two_steps():
    lr, rho, mom, eps = 0.01, 0.9, 0.5, 1e-7
    v = a = m = 0.0
    p = 1.0
    for g in (0.5, -0.3):
        v = rho * v + (1 - rho) * g * g
        a = rho * a + (1 - rho) * g
        m = mom * m + lr * g / math.sqrt(v - a * a + eps)
        p -= m
    got = run(optimizers.RMSprop(lr, rho=rho, momentum=mom, centered=True), [1.0], [[0.5], [-0.3]])
    np.testing.assert_allclose(got, [p], rtol=1e-14)


def test_weight_decay_adds_decay_times_param_to_the_gradient():
    p = run(optimizers.SGD(0.1, weight_decay=0.01), [2.0], [[0.5]])
    np.testing.assert_allclose(p, [2.0 - 0.1 * (0.5 + 0.01 * 2.0)], rtol=1e-15)


def test_global_clipnorm_scales_all_gradients_together():
    params = {"a": np.array([0.0]), "b": np.array([0.0])}
    optimizers.SGD(1.0, global_clipnorm=1.0).apply(params, {"a": np.array([3.0]),
                                                            "b": np.array([4.0])})
    np.testing.assert_allclose([params["a"][0], params["b"][0]], [-0.6, -0.8], rtol=1e-15)


def test_global_clipnorm_leaves_small_gradients_alone():
    p = run(optimizers.SGD(1.0, global_clipnorm=10.0), [0.0, 0.0], [[3.0, 4.0]])
    np.testing.assert_allclose(p, [-3.0, -4.0])


def test_clipnorm_is_per_array():
    params = {"a": np.array([0.0, 0.0]), "b": np.array([0.0])}
    optimizers.SGD(1.0, clipnorm=1.0).apply(params, {"a": np.array([3.0, 4.0]),
                                                     "b": np.array([0.5])})
    np.testing.assert_allclose(params["a"], [-0.6, -0.8])
    np.testing.assert_allclose(params["b"], [-0.5])


def test_clipvalue_clips_each_element():
    p = run(optimizers.SGD(1.0, clipvalue=0.5), [0.0, 0.0, 0.0], [[2.0, -3.0, 0.1]])
    np.testing.assert_allclose(p, [-0.5, 0.5, -0.1])


def test_exponential_decay_and_its_staircase():
    smooth = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    stairs = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert smooth(0) == 0.1 and math.isclose(smooth(5), 0.1 * 0.5 ** 0.5)
    assert math.isclose(smooth(20), 0.025)
    assert stairs(9) == 0.1 and stairs(10) == 0.05 and stairs(25) == 0.025


def test_step_decay_drops_by_factor_every_step_size_updates():
    schedule = schedules.StepDecay(1.0, step_size=3, factor=0.1)
    assert [schedule(i) for i in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_optimizer_reads_the_schedule_at_its_update_count():
    opt = optimizers.SGD(schedules.StepDecay(1.0, step_size=1, factor=0.5))
    p = run(opt, [0.0], [[1.0], [1.0], [1.0]])  # steps of 1, 0.5, 0.25
    np.testing.assert_allclose(p, [-1.75])
    assert opt.iterations == 3


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(4) for _ in range(6)]
    straight = run(optimizers.Adam(0.05), np.ones(4), grads)
    first = optimizers.Adam(0.05)
    params = {"w": np.ones(4)}
    for g in grads[:3]:
        first.apply(params, {"w": g})
    arrays, iterations = first.get_state()
    second = optimizers.Adam(0.05)
    second.set_state(arrays, iterations, params)
    for g in grads[3:]:
        second.apply(params, {"w": g})
    np.testing.assert_array_equal(params["w"], straight)


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.SGD(learning_rate=-1), "learning_rate"),
    (lambda: optimizers.SGD(momentum=1.5), "momentum"),
    (lambda: optimizers.SGD(nesterov=True), "nesterov"),
    (lambda: optimizers.Adam(beta_1=1.0), "beta_1"),
    (lambda: optimizers.Adam(clipnorm=1.0, global_clipnorm=1.0), "not both"),
    (lambda: optimizers.RMSprop(rho=-0.1), "rho"),
    (lambda: optimizers.get("adamw"), "optimizer must be one of"),
])
def test_bad_settings_raise_naming_the_setting(make, message):
    with pytest.raises(ValueError, match=message):
        make()
