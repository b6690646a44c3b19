import numpy as np
import pytest
import torch

import lucid_tvm.nn as nn

TORCH_CLASSES = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}


def torch_twin(mode, input_size, hidden_size, dtype=np.float32, **kwargs):
    """A torch.nn module and a lucid_tvm RNNBase with the same weights (loaded from torch's flat keys)."""
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    ref = TORCH_CLASSES[mode](input_size, hidden_size, **kwargs, **extra)
    ref = ref.double() if dtype == np.float64 else ref
    ours = nn.RNNBase(mode, input_size, hidden_size, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def assert_close(ours, ref, dtype=np.float32):
    ours = np.asarray(ours)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape
    assert ours.dtype == np.dtype(dtype)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOLERANCE[dtype])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
