"""Property-based tests: random configurations against torch.nn and tracetorch.

Example counts are kept small so the suite stays fast; ``scripts/property_sweep.py`` runs the same
properties with many more examples.
"""

import os

import numpy as np
import torch
import tracetorch as ref_tt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lucid_tvm.tracetorch as tt
from conftest import TOLERANCE, torch_twin

EXAMPLES = int(os.environ.get("LUCID_TVM_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("LUCID_TVM_EXAMPLES"),
                    suppress_health_check=list(HealthCheck))
# Few distinct sizes: each new size compiles kernels.
SIZES = st.sampled_from([1, 3, 16, 17, 40, 64])


def _strided(rng, shape, dtype, kind):
    """An array of ``shape``: contiguous, a strided view, or a transposed (Fortran-order) copy."""
    if kind == "strided":
        big = rng.standard_normal(tuple(2 * n for n in shape)).astype(dtype)
        return big[tuple(slice(1, None, 2) for _ in shape)]
    a = rng.standard_normal(shape).astype(dtype)
    return np.asfortranarray(a) if kind == "fortran" else a


@SETTINGS
@given(mode=st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]), layers=st.integers(1, 3),
       input_size=SIZES, hidden=SIZES, batch=st.integers(1, 9), steps=st.integers(1, 50),
       bias=st.booleans(), batch_first=st.booleans(), bidirectional=st.booleans(),
       hx=st.sampled_from(["none", "full", "2d"]), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["contiguous", "strided", "fortran"]), seed=st.integers(0, 2**16))
def test_sequence_layers_match_torch(mode, layers, input_size, hidden, batch, steps, bias, batch_first,
                                     bidirectional, hx, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    ref, ours = torch_twin(mode, input_size, hidden, dtype, num_layers=layers, bias=bias,
                           batch_first=batch_first, bidirectional=bidirectional)
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = _strided(rng, shape, dtype, layout)
    stack = layers * (2 if bidirectional else 1)
    states = None
    if hx == "full" or (hx == "2d" and stack == 1):  # a 2-D hx is (batch, hidden) for one layer-direction
        shape = (stack, batch, hidden) if hx == "full" else (batch, hidden)
        states = [_strided(rng, shape, dtype, layout) for _ in range(2 if mode == "LSTM" else 1)]
    ours_hx = None if states is None else (tuple(states) if mode == "LSTM" else states[0])
    torch_states = None if states is None else [
        torch.from_numpy(np.ascontiguousarray(s)).reshape(stack, batch, hidden) for s in states]
    ref_hx = None if states is None else (tuple(torch_states) if mode == "LSTM" else torch_states[0])
    with torch.no_grad():
        expected, _ = ref(torch.from_numpy(np.ascontiguousarray(x)), ref_hx)
    got, _ = ours(x, ours_hx)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=TOLERANCE[dtype] * (1 + steps / 10))


@SETTINGS
@given(kind=st.sampled_from(["SimpleRNN", "LSTM", "GRU"]), in_features=SIZES, out_features=SIZES,
       lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), dim=st.integers(-3, 2),
       steps=st.integers(1, 6), dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_tracetorch_layers_match_tracetorch(kind, in_features, out_features, lead, dim, steps, dtype, seed):
    ndim = len(lead) + 1
    dim = dim % ndim if -ndim <= dim < ndim else -1
    torch.manual_seed(seed)
    ref = getattr(ref_tt.rnn, kind)(in_features, out_features, dim).to(dtype)
    ours = getattr(tt.rnn, kind)(in_features, out_features, dim).to(dtype)
    ours.load_state_dict(ref.state_dict())
    shape = list(lead)
    shape.insert(dim % ndim, in_features)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    with torch.no_grad():
        for _ in range(steps):
            x = torch.randn(shape, dtype=dtype)
            torch.testing.assert_close(ours(x), ref(x), atol=atol, rtol=0)
