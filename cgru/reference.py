"""Reference GRU in plain NumPy, one time step at a time, written straight from the equations.

It shares no code with the engine: the tests use it as their oracle and the benchmarks as their
baseline. Time-major only: x is (T, B, I). Parameters use PyTorch's names and shapes
(`weight_ih_l0 (3H, I)`, `weight_hh_l0 (3H, H)`, `bias_ih_l0 (3H)`, `bias_hh_l0 (3H)`, with a
`_reverse` suffix for the second direction), gates in the order r, z, n.

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))       reset_after=True
    n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)       reset_after=False
    h' = (1 - z) * n + z * h
"""
import numpy as np


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _names(layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return ("weight_ih" + suffix, "weight_hh" + suffix, "bias_ih" + suffix, "bias_hh" + suffix)


def _cell_forward(x_t, h, w_ih, w_hh, b_ih, b_hh, reset_after):
    """One step for a batch: returns h_new and what the backward step needs."""
    H = h.shape[1]
    gi = x_t @ w_ih.T + b_ih
    if reset_after:
        gh = h @ w_hh.T + b_hh
        r = _sigmoid(gi[:, :H] + gh[:, :H])
        z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = np.tanh(gi[:, 2 * H:] + r * hn)
        aux = hn
    else:
        r = _sigmoid(gi[:, :H] + h @ w_hh[:H].T + b_hh[:H])
        z = _sigmoid(gi[:, H:2 * H] + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
        rh = r * h
        n = np.tanh(gi[:, 2 * H:] + rh @ w_hh[2 * H:].T + b_hh[2 * H:])
        aux = rh
    h_new = (1.0 - z) * n + z * h
    return h_new, (x_t, h, r, z, n, aux)


def _cell_backward(dh, saved, w_ih, w_hh, reset_after):
    """Gradients of one step: dx_t, dh_prev, and (dW_ih, dW_hh, db_ih, db_hh)."""
    x_t, h, r, z, n, aux = saved
    H = h.shape[1]
    dn = dh * (1.0 - z)
    dz = dh * (h - n)
    dh_prev = dh * z
    da_n = dn * (1.0 - n * n)
    da_z = dz * z * (1.0 - z)
    if reset_after:
        hn = aux
        da_r = da_n * hn * r * (1.0 - r)
        d_gh = np.concatenate([da_r, da_z, da_n * r], axis=1)
        dw_hh = d_gh.T @ h
        db_hh = d_gh.sum(axis=0)
        dh_prev = dh_prev + d_gh @ w_hh
    else:
        rh = aux
        d_rh = da_n @ w_hh[2 * H:]
        da_r = d_rh * h * r * (1.0 - r)
        dh_prev = dh_prev + d_rh * r
        d_rz = np.concatenate([da_r, da_z], axis=1)
        dh_prev = dh_prev + d_rz @ w_hh[:2 * H]
        dw_hh = np.concatenate([d_rz.T @ h, da_n.T @ rh], axis=0)
        db_hh = np.concatenate([da_r, da_z, da_n], axis=1).sum(axis=0)
    d_gi = np.concatenate([da_r, da_z, da_n], axis=1)
    return d_gi @ w_ih, dh_prev, (d_gi.T @ x_t, dw_hh, d_gi.sum(axis=0), db_hh)


def gru_forward(x, params, h0=None, *, num_layers=1, bidirectional=False, reset_after=True,
                lengths=None, dropout_masks=None):
    """Forward of a stacked GRU. x (T, B, I); h0 (num_layers * D, B, H) or None.

    lengths (B,): steps past a sequence's length keep its state and output zeros; the reverse
    direction starts at each sequence's own last step. dropout_masks: None or a list, one per
    layer boundary, of arrays (T, B, D*H) that multiply a layer's output before the next layer.
    Returns y (T, B, D*H), h_n (num_layers * D, B, H) and a cache for gru_backward.
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((num_layers * D, B, H), x.dtype) if h0 is None else h0
    h_n = np.zeros((num_layers * D, B, H), x.dtype)
    cache = {"layers": [], "num_layers": num_layers, "D": D, "reset_after": reset_after,
             "lengths": lengths, "dropout_masks": dropout_masks, "params": params}
    inp = x
    for layer in range(num_layers):
        y = np.zeros((T, B, D * H), x.dtype)
        steps_of_layer = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh = (params.get(k) for k in _names(layer, d))
            if b_ih is None:
                b_ih = b_hh = np.zeros(3 * H, x.dtype)
            h = h0[layer * D + d]
            steps = {}
            times = range(T - 1, -1, -1) if d == 1 else range(T)
            for t in times:
                active = (t < lengths)[:, None]
                h_new, saved = _cell_forward(inp[t], h, w_ih, w_hh, b_ih, b_hh, reset_after)
                steps[t] = (saved, active)
                h = np.where(active, h_new, h)
                y[t, :, d * H:(d + 1) * H] = np.where(active, h_new, 0.0)
            h_n[layer * D + d] = h
            steps_of_layer.append(steps)
        cache["layers"].append((inp, steps_of_layer))
        inp = y if dropout_masks is None or layer == num_layers - 1 else y * dropout_masks[layer]
    return y, h_n, cache


def gru_backward(dy, dh_n, cache):
    """Gradients of a gru_forward: returns dx (T, B, I), dh0 and a dict of parameter gradients."""
    params, D, reset_after = cache["params"], cache["D"], cache["reset_after"]
    num_layers = cache["num_layers"]
    T, B, _ = dy.shape
    H = params["weight_hh_l0"].shape[1]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dh0 = np.zeros((num_layers * D, B, H), dy.dtype)
    dh_n = np.zeros_like(dh0) if dh_n is None else dh_n
    for layer in range(num_layers - 1, -1, -1):
        inp, steps_of_layer = cache["layers"][layer]
        dx = np.zeros_like(inp)
        for d in range(D):
            k_ih, k_hh, kb_ih, kb_hh = _names(layer, d)
            w_ih, w_hh = params[k_ih], params[k_hh]
            dh = dh_n[layer * D + d]
            times = range(T) if d == 1 else range(T - 1, -1, -1)
            for t in times:
                saved, active = steps_of_layer[d][t]
                dh_step = dh + np.where(active, dy[t, :, d * H:(d + 1) * H], 0.0)
                dx_t, dh_prev, (dw_ih, dw_hh, db_ih, db_hh) = _cell_backward(
                    dh_step * active, saved, w_ih, w_hh, reset_after)
                dx[t] += dx_t
                dh = np.where(active, dh_prev, dh)
                grads[k_ih] += dw_ih
                grads[k_hh] += dw_hh
                if kb_ih in grads:
                    grads[kb_ih] += db_ih
                    grads[kb_hh] += db_hh
            dh0[layer * D + d] = dh
        if layer > 0:
            masks = cache["dropout_masks"]
            dy = dx if masks is None else dx * masks[layer - 1]
        else:
            dy = dx
    return dy, dh0, grads
