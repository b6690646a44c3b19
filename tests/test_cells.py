"""RNNCell, LSTMCell and GRUCell against torch.nn cells on the same weights."""

import numpy as np
import pytest
import torch

import lucid_tvm.nn as nn
from conftest import assert_close, torch_twin

CELLS = [
    ("RNNCell", {"nonlinearity": "tanh"}),
    ("RNNCell", {"nonlinearity": "relu"}),
    ("LSTMCell", {}),
    ("GRUCell", {}),
]
I, H, B = 6, 9, 4


def _twin(name, kwargs, bias, dtype):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(I, H, bias=bias, **kwargs)
    ref = ref.double() if dtype == np.float64 else ref
    ours = getattr(nn, name)(I, H, bias=bias, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name,kwargs", CELLS, ids=[f"{n}-{k.get('nonlinearity', '')}" for n, k in CELLS])
def test_cell_matches_torch(name, kwargs, bias, batched, with_hx, dtype, rng):
    ref, ours = _twin(name, kwargs, bias, dtype)
    lead = (B,) if batched else ()
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    hx = None
    if with_hx:
        hx = rng.standard_normal(lead + (H,)).astype(dtype)
        if name == "LSTMCell":
            hx = (hx, rng.standard_normal(lead + (H,)).astype(dtype))
    thx = None if hx is None else (
        tuple(map(torch.from_numpy, hx)) if isinstance(hx, tuple) else torch.from_numpy(hx))
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), thx)
    got = ours(x, hx)
    if name == "LSTMCell":
        assert_close(got[0], expected[0], dtype)
        assert_close(got[1], expected[1], dtype)
    else:
        assert_close(got, expected, dtype)


def test_cell_attributes():
    cell = nn.RNNCell(3, 5, nonlinearity="relu")
    assert isinstance(cell.nonlinearity, nn.ReLU)
    assert isinstance(nn.RNNCell(3, 5).nonlinearity, nn.Tanh)
    lstm = nn.LSTMCell(3, 5, bias=False)
    assert lstm.weight_ih.shape == (20, 3) and lstm.weight_hh.shape == (20, 5)
    assert lstm.bias_ih is None and lstm.bias_hh is None
    assert [k for k, _ in lstm.named_parameters()] == ["weight_ih", "weight_hh"]
    gru = nn.GRUCell(3, 5)
    bound = 1 / np.sqrt(5)
    for p in gru.parameters():
        assert p.dtype == np.float32
        assert np.abs(p.numpy()).max() <= bound


def test_parameter_update_is_seen(rng):
    """Changing a parameter between calls must not reuse stale packed weights."""
    cell = nn.GRUCell(I, H)
    x = rng.standard_normal((B, I)).astype(np.float32)
    before = cell(x).numpy().copy()
    cell.weight_hh.data = cell.weight_hh.numpy() * 0  # h is zero at the start: no change expected
    cell.weight_ih.data = cell.weight_ih.numpy() * 2
    cell.bias_hh.data = cell.bias_hh.numpy() + 1  # the biases are part of the packed weights too
    ref = torch.nn.GRUCell(I, H)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in cell.state_dict().items()})
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))
    after = cell(x)
    assert_close(after, expected)
    assert not np.allclose(after.numpy(), before)
    cell.bias_ih.data = cell.bias_ih.numpy() - 1  # a bias alone changed: repacked too
    ref.bias_ih.data -= 1
    with torch.no_grad():
        assert_close(cell(x), ref(torch.from_numpy(x)))
    with pytest.raises(ValueError, match="read-only"):
        cell.weight_ih.numpy()[0, 0] = 1.0


def test_a_cell_assigned_into_layers_is_used(rng):
    """``module.layers[i] = cell``, as torch's ModuleList takes it, is seen by the next call (the
    one-layer fast path included); other indices and values are refused as torch's are."""
    ref, seq = torch_twin("GRU", I, H)
    other_ref, other = torch_twin("GRU", I, H)
    with torch.no_grad():
        for p in other_ref.parameters():
            p.mul_(-1)
    other.load_state_dict(other_ref.state_dict())
    x = rng.standard_normal((4, B, I)).astype(np.float32)
    seq(x)
    seq(x)  # the fast path made and used
    seq.layers[np.int64(-1)] = other.layers[0]  # any integer, as operator.index takes it
    with torch.no_grad():
        assert_close(seq(x)[0], other_ref(torch.from_numpy(x))[0])
    with pytest.raises(IndexError, match="index 1 is out of range for a ModuleList of 1"):
        seq.layers[1] = other.layers[0]
    with pytest.raises(TypeError, match="ModuleList indices must be integers, not str"):
        seq.layers["0"] = other.layers[0]
    for value in (np.zeros(3), None):  # (torch's takes None; a layer cannot run without a cell)
        with pytest.raises(TypeError, match=f"cannot assign {type(value).__name__} as submodule '0'"):
            seq.layers[0] = value


def test_parameter_swap_and_module_dtype_are_seen(rng):
    """A Parameter object moved in from another module (no data written), and a module converted
    to float64, are seen on the next call of a sequence module (cells run the same path)."""
    seq = nn.LSTM(I, H)
    donor = nn.LSTM(I, H)
    x = rng.standard_normal((4, B, I)).astype(np.float32)
    seq(x)
    seq.layers[0].weight_hh = donor.layers[0].weight_hh  # the same array in two modules, no write
    ref = torch.nn.LSTM(I, H)
    cell = seq.layers[0]
    ref.load_state_dict({f"{name}_l0": torch.from_numpy(np.array(getattr(cell, name).numpy()))
                         for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    with torch.no_grad():
        assert_close(seq(x)[0], ref(torch.from_numpy(x))[0])
    seq.double()
    assert seq(x.astype(np.float64))[0].dtype == np.float64
    with torch.no_grad():
        assert_close(seq(x.astype(np.float64))[0], ref.double()(torch.from_numpy(x).double())[0], np.float64)
