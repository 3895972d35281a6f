"""How the quantized GRUs' tests (test_quantize.py, test_quantize_int8.py) hold the engine to an
emulation of one step: each step of a forward from the state the engine output before it
(teacher forcing: an error shows at the step that makes it, and a rounding tie decided either
way cannot compound), and each layer of a step() from the state it was given. Each test module
brings its emulated_step(x, h, w_ih, w_hh, b_ih, b_hh, reset_after) -> (the new state in
float64, how far the engine may be from it beyond float32 rounding)."""
import numpy as np

import cgru

# A one-step comparison with the emulation allows float32 rounding of the gates and their
# activations; nothing of a reduced precision's size (bfloat16: a relative 2**-9) fits in it.
STEP_ATOL = 2e-5
# How far the engine's float32 r * h (reset_after=False) can be from the emulation's float64 one
# before it is rounded or quantized: its sigmoid is within 2.5e-7 of exact (test_equations bounds
# it), its sums float32. Where a rounding decision lies this close, either side is right.
RH_MARGIN = 1e-6


def assert_step_matches(actual, expected, slack, what):
    error = np.abs(actual.astype(np.float64) - expected)
    assert np.all(error <= STEP_ATOL + slack), (
        f"{what}: off the emulation by up to {error.max():.3g} (allowed {STEP_ATOL} plus "
        f"rounding slack up to {slack.max():.3g})")


def layer_weights(params, layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return [params[kind + suffix] for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def check_layer_step_by_step(emulated_step, x, y, h0, h_n, params, layer, D, reset_after,
                             lengths, what):
    """Every step of one layer (both directions) of an engine forward (outputs y, last states
    h_n, from h0) against emulated_step with the layer's weights in params. Steps past a
    sequence's length output zeros; h_n is each sequence's last valid state."""
    T, B, _ = x.shape
    H = h0.shape[-1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    rows = np.arange(B)
    for d in range(D):
        y_d = y[:, :, d * H:(d + 1) * H]
        weights = layer_weights(params, layer, d)
        for t in range(T):
            if d == 0:
                prev = y_d[t - 1] if t > 0 else h0[d]
            else:  # the reverse direction starts at each sequence's own last step
                after = y_d[t + 1] if t + 1 < T else np.zeros_like(h0[d])
                prev = np.where((t + 1 < lengths)[:, None], after, h0[d])
            active = t < lengths
            expected, slack = emulated_step(x[t], prev, *weights, reset_after)
            assert_step_matches(y_d[t][active], expected[active], slack[active],
                                f"{what}, layer {layer}, direction {d}, t={t}")
            assert np.all(y_d[t][~active] == 0), f"{what}: a padded step output non-zero"
        last = np.zeros(B, int) if d == 1 else lengths - 1
        np.testing.assert_array_equal(h_n[d], y_d[last, rows], err_msg=f"{what}: h_n")


def first_layer_alone(params, mode, x, h0, lengths, bidirectional, reset_after):
    """(outputs, last states) of the first layer of a stack, run on its own: a one-layer GRU
    with the stack's layer-0 weights from params, quantized in mode, on x from h0 (the layer's
    rows of the stack's initial state). Its outputs are what the second layer's check takes."""
    D = 2 if bidirectional else 1
    lower = cgru.GRU(x.shape[-1], h0.shape[-1], bidirectional=bidirectional,
                     reset_after=reset_after)
    lower.load_state_dict({k: v for k, v in params.items() if "_l0" in k})
    lower.quantize(mode)
    return lower(x, h0[:D], lengths=lengths)


def check_step_layer_by_layer(emulated_step, new, x, h, params, reset_after):
    """new, the states step(x, h) returned, against emulated_step layer by layer: each layer from
    its state in h, its input the new state of the layer below (x for the first)."""
    layer_input = x
    for layer in range(len(new)):
        expected, slack = emulated_step(layer_input, h[layer], *layer_weights(params, layer, 0),
                                        reset_after)
        assert_step_matches(new[layer], expected, slack, f"layer {layer}")
        layer_input = new[layer]


def cpu_has(flag):
    """Whether Linux lists `flag` (as /proc/cpuinfo spells it, e.g. avx512_bf16) among the CPU's
    flags (False where it cannot tell)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False
