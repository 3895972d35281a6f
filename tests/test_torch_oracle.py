"""torch.nn.GRU as oracle: same state dict, same outputs and autograd gradients, every option."""
import itertools

import numpy as np
import pytest

import cgru

torch = pytest.importorskip("torch")

OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", OPTIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_and_gradients_match_torch(num_layers, bidirectional, batch_first, bias, dtype):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    T, B, I, H = 7, 3, 5, 11
    D = 2 if bidirectional else 1
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    reference = torch.nn.GRU(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                             bidirectional=bidirectional).to(tdtype)
    gru = cgru.GRU(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional, dtype=dtype)
    gru.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})

    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((num_layers * D, B, H)).astype(dtype)
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    y_t, h_n_t = reference(x_t, h0_t)
    dy = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    dh_n = rng.standard_normal(tuple(h_n_t.shape)).astype(dtype)
    ((y_t * torch.tensor(dy)).sum() + (h_n_t * torch.tensor(dh_n)).sum()).backward()

    y, h_n = gru(x, h0)
    dx, dh0 = gru.backward(dy, dh_n)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, y_t.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, h_n_t.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), **tol)
    np.testing.assert_allclose(dh0, h0_t.grad.numpy(), **tol)
    for name, p in reference.named_parameters():
        np.testing.assert_allclose(gru.grads[name], p.grad.numpy(), err_msg=name, **tol)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_match_torch_packed_sequences(bidirectional):
    rng = np.random.default_rng(2)
    T, B, I, H = 8, 4, 3, 6
    reference = torch.nn.GRU(I, H, num_layers=2, bidirectional=bidirectional).double()
    gru = cgru.GRU(I, H, num_layers=2, bidirectional=bidirectional, dtype="float64")
    gru.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    lengths = np.array([8, 3, 5, 1])
    x_t = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths),
                                                     enforce_sorted=False)
    out_packed, h_n_t = reference(packed)
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, total_length=T)
    dy = rng.standard_normal(tuple(y_t.shape))
    ((y_t * torch.tensor(dy)).sum() + h_n_t.sum()).backward()

    y, h_n = gru(x, lengths=lengths)
    dx, _ = gru.backward(dy, np.ones_like(h_n))
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n, h_n_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in reference.named_parameters():
        np.testing.assert_allclose(gru.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_unbatched_input_matches_torch():
    reference = torch.nn.GRU(4, 5, num_layers=2).double()
    gru = cgru.GRU(4, 5, num_layers=2, dtype="float64")
    gru.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((6, 4))
    y_t, h_n_t = reference(torch.tensor(x))
    y, h_n = gru(x)
    assert y.shape == (6, 5) and h_n.shape == (2, 5)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, h_n_t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_step_matches_torch_gru_cell_stack():
    reference = torch.nn.GRU(3, 7, num_layers=2).double()
    gru = cgru.GRU(3, 7, num_layers=2, dtype="float64")
    gru.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(4).standard_normal((5, 2, 3))
    _, h_n_t = reference(torch.tensor(x))
    h = np.zeros((2, 2, 7))
    for t in range(5):
        h = gru.step(x[t], h, out=h)
    np.testing.assert_allclose(h, h_n_t.detach().numpy(), rtol=1e-12, atol=1e-14)
