"""What goes in: Tensor, numpy, torch, lucid-like tensors, float64, views, misaligned buffers, NaN."""

import warnings

import numpy as np
import pytest
import torch

import lucid_tvm as lucid
from conftest import assert_close, torch_twin

T, B, I, H = 5, 3, 4, 6


class LucidLikeTensor:
    """What a lucid 2.x tensor looks like from outside: a numpy array in ``.data``."""

    def __init__(self, data):
        self.data = data


def test_tensor_api():
    t = lucid.Tensor([[1, 2], [3, 4]])
    assert t.dtype == np.float32 and t.shape == (2, 2) and t.ndim == 2 and len(t) == 2
    assert [row.shape for row in t] == [(2,), (2,)]
    np.testing.assert_array_equal(t[1].numpy(), [3, 4])
    np.testing.assert_array_equal(np.asarray(t), t.numpy())
    np.testing.assert_array_equal(torch.from_dlpack(t).numpy(), t.numpy())
    assert repr(t) == "Tensor([[1., 2.],\n        [3., 4.]], grad=None)"
    assert lucid.Tensor([1.0], dtype=np.float64).dtype == np.float64
    assert lucid.randn(2, 3).shape == (2, 3) and lucid.randn(2, 3).dtype == np.float32
    assert lucid.zeros((2, 3)).numpy().sum() == 0 and lucid.ones(4).numpy().sum() == 4


@pytest.mark.parametrize("kind", ["tensor", "numpy", "torch", "lucid"])
def test_input_kinds_agree(kind, rng):
    ref, ours = torch_twin("LSTM", I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    wrap = {"tensor": lucid.Tensor, "numpy": lambda a: a, "torch": torch.from_numpy,
            "lucid": LucidLikeTensor}[kind]
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0]
    out = ours(wrap(x))[0]
    assert isinstance(out, lucid.Tensor)
    assert_close(out, expected)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # numpy's, on making a matrix
def test_numpy_subclass_input(rng):
    """An np.matrix (always 2-D, its own reshape) is read as the array it holds."""
    cell, x = lucid.nn.GRUCell(I, H), rng.standard_normal((B, I)).astype(np.float32)
    np.testing.assert_array_equal(cell(np.asmatrix(x)).numpy(), cell(x).numpy())


@pytest.mark.parametrize("offset", [0, 1, 3])  # elements past a 64-byte boundary
def test_contiguous_input_is_read_in_place(monkeypatch, rng, offset):
    """A C-contiguous float32 input reaches the kernels without a copy, from numpy or torch, at any
    element alignment (the kernels declare their input aligned to its element only)."""
    from lucid_tvm import runtime

    seen = []
    run = runtime.LayerKernel.run
    monkeypatch.setattr(runtime.LayerKernel, "run", lambda self, packed, x, *rest: seen.append(x) or run(self, packed, x, *rest))
    raw = np.zeros(T * B * I + 32, np.float32)
    start = -raw.ctypes.data % 64 // 4 + offset
    x = raw[start:start + T * B * I].reshape(T, B, I)
    x[...] = rng.standard_normal((T, B, I))
    assert x.ctypes.data % 64 == 4 * offset
    ref, ours = torch_twin("GRU", I, H)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.copy()))[0]
    for given in (x, torch.from_numpy(x)):
        seen.clear()
        assert_close(ours(given)[0], expected)
        assert np.shares_memory(seen[0], x)


def test_torch_tensor_requiring_grad(rng):
    ref, ours = torch_twin("GRU", I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    assert_close(ours(x)[0], ref(x)[0])


def test_float64_input_to_float32_layer_is_cast(rng):
    ref, ours = torch_twin("GRU", I, H)
    x = rng.standard_normal((T, B, I))
    out = ours(x)[0]
    assert out.dtype == np.float32
    with torch.no_grad():
        assert_close(out, ref(torch.from_numpy(x.astype(np.float32)))[0])


def test_torch_views_and_dtypes_numpy_lacks(rng):
    """A negative-bit view (``z.conj().imag``) is read as the values it shows, and bfloat16, which
    numpy has no dtype for, is cast like other float inputs."""
    ref, ours = torch_twin("GRU", I, H)
    negated = torch.randn(T, B, I, dtype=torch.complex64).conj().imag
    assert negated.is_neg()
    bf16 = torch.randn(T, B, I).bfloat16()
    for x in (negated, bf16):
        with torch.no_grad():
            assert_close(ours(x)[0], ref(x.float())[0])
    with pytest.raises(TypeError, match="dense tensor, got layout torch.sparse_coo"):
        ours(torch.zeros(T, B, I).to_sparse())
    with warnings.catch_warnings():  # torch's, once a process: the strided layout is a prototype
        warnings.simplefilter("ignore")
        nested = torch.nested.nested_tensor([torch.zeros(B, I), torch.zeros(B, I)])
    with pytest.raises(TypeError, match="dense tensor, got a nested tensor"):
        ours(nested)  # its layout is strided, but it has no shape to read


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex64])
def test_non_float_input_is_type_error(dtype):
    _, ours = torch_twin("RNN_TANH", I, H)
    with pytest.raises(TypeError, match="floating-point"):
        ours(np.zeros((T, B, I), dtype=dtype))


@pytest.mark.parametrize("bad", ["abc", None, 3, [[1.0]]])
def test_non_tensor_input_is_type_error(bad):
    _, ours = torch_twin("GRU", I, H)
    with pytest.raises(TypeError, match="GRU input|RNNBase input"):
        ours(bad)


def test_views_and_odd_strides(rng):
    ref, ours = torch_twin("LSTM", I, H, num_layers=2)
    big = rng.standard_normal((2 * T, 3 * B, 2 * I)).astype(np.float32)
    x = big[::2, ::3, 1::2]  # a strided view, not contiguous
    assert not x.flags.c_contiguous
    with torch.no_grad():
        expected = ref(torch.from_numpy(np.ascontiguousarray(x)))[0]
    assert_close(ours(x)[0], expected)
    assert_close(ours(torch.from_numpy(big)[::2, ::3, 1::2])[0], expected)


def test_misaligned_buffers(rng):
    ref, ours = torch_twin("GRU", I, H)
    raw = np.zeros(T * B * I + 1, dtype=np.float32)
    x = raw[1:].reshape(T, B, I)  # 4 bytes past an aligned start
    x[...] = rng.standard_normal((T, B, I))
    assert x.ctypes.data % 64 != 0
    h = np.zeros(B * H + 3, np.float32)[3:].reshape(1, B, H)
    h[...] = 0.25
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.copy()), torch.from_numpy(h.copy()))[0]
    assert_close(ours(x, h)[0], expected)
    # Not even aligned to its element (a float32 one byte into a buffer): copied, same answer.
    odd = np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1).reshape(T, B, I)
    assert not odd.flags.aligned
    assert_close(ours(odd, h)[0], expected)


def test_read_only_input(rng):
    """numpy cannot export a read-only array through DLPack; such input is copied, same answer."""
    ref, ours = torch_twin("LSTM", I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0]
    x.flags.writeable = False
    h = np.zeros((1, B, H), np.float32)
    h.flags.writeable = False
    assert_close(ours(x, (h, h))[0], expected)
    assert_close(ours(np.frombuffer(x.tobytes(), np.float32).reshape(T, B, I))[0], expected)


@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
def test_nan_propagates_like_torch(mode, rng):
    ref, ours = torch_twin(mode, I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[2, 1, 0] = np.nan
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    got = ours(x)[0].numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], atol=2e-5, rtol=0)


@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
def test_infinite_state_like_torch(mode, rng):
    """An infinite initial state: torch's answer has NaN where a gate saturated to 0 met the
    infinity (a GRU's reset gate: 0 * inf), so the fast sigmoid must be exactly 0 there too."""
    ref, ours = torch_twin(mode, I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h = np.zeros((1, B, H), np.float32)
    h[0, 0, 0], h[0, 2, 3] = np.inf, -np.inf
    hx = (h, np.zeros_like(h)) if mode == "LSTM" else h
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), tuple(map(torch.from_numpy, hx)) if mode == "LSTM"
                       else torch.from_numpy(h))[0].numpy()
    got = ours(x, hx)[0].numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], atol=2e-5, rtol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_inputs_past_the_kernels_index_range_run_in_chunks_or_are_refused(monkeypatch, mode, rng):
    """Past 2**31 - 1 values an array's 32-bit indices in the kernels wrap around (an 8.6 GB input
    crashed the process). With the limit lowered to a bidirectional stack's packed weights, a
    unidirectional module runs a longer sequence a chunk of steps at a time (time-major,
    batch-first, 2 layers, with hx, and again through the one-layer fast path), and what cannot be
    split so is refused."""
    from lucid_tvm import runtime
    from lucid_tvm.nn import rnn

    steps = 100
    ref, ours = torch_twin(mode, I, H, num_layers=2)
    x = rng.standard_normal((steps, B, I)).astype(np.float32)
    h0 = rng.standard_normal((2, B, H)).astype(np.float32)
    hx = (h0, h0[::-1].copy()) if mode == "LSTM" else h0
    ref_hx = tuple(map(torch.from_numpy, hx)) if mode == "LSTM" else torch.from_numpy(hx)
    ref_y, ref_state = ref(torch.from_numpy(x), ref_hx)
    one_ref, one = torch_twin(mode, I, H)
    one(x)  # a first call makes the fast path, which must step aside for a call past the limit
    row = ours.layers[0]._kernel().row_values  # a step's projection, per batch row
    limit = 2 * H * row  # a bidirectional layer 1's packed W_ih: the largest weights below
    monkeypatch.setattr(rnn, "MAX_ELEMENTS", limit)
    per_call = limit // (B * H)
    assert per_call < steps
    steps_run = []
    run = runtime.LayerKernel.run
    monkeypatch.setattr(runtime.LayerKernel, "run", lambda self, packed, x, *rest: (
        steps_run.append(x.shape[0]), run(self, packed, x, *rest))[1])
    y, state = ours(x, hx)
    assert_close(y, ref_y)
    for got, expected in zip(state if mode == "LSTM" else [state], ref_state if mode == "LSTM" else [ref_state]):
        assert_close(got, expected)  # h_n, and c_n
    ours.batch_first = True
    assert_close(ours(x.transpose(1, 0, 2).copy(), hx)[0], ref_y.transpose(0, 1))
    ours.batch_first = False
    assert_close(one(x)[0], one_ref(torch.from_numpy(x))[0])
    assert max(steps_run) == per_call and sum(steps_run) == 5 * steps  # 2 layers, twice; then one layer
    bi_ref, bi = torch_twin(mode, I, H, bidirectional=True, num_layers=2)
    with pytest.raises(ValueError, match=rf"a bidirectional module runs its whole sequence in one kernel call, "
                                         rf"and {steps} steps of a batch of {B} take {steps * B * 2 * H} values.*"
                                         rf"; it runs at most {limit // (2 * H)} steps of one sequence"):
        bi(x)
    short = x[:limit // (2 * H * 2)]  # what the advice says fits: split into batches of 2
    with pytest.raises(ValueError, match=r"; split the batch into parts of at most 2$"):
        bi(short)
    assert_close(bi(short[:, :2].copy())[0], bi_ref(torch.from_numpy(short[:, :2].copy()))[0])
    ours.layers[0]._prepared_at = None  # prepared again under the limit: how many rows a step may have
    wide = 2 * H + 1  # a batch whose one step's projection outgrows the limit
    with pytest.raises(ValueError, match=rf"one step of a batch of {wide} outgrows the kernels' 32-bit indices "
                                         rf"\({limit} values an array\) at more than {limit // row} rows; split the batch"):
        ours(np.zeros((2, wide, I), np.float32))
    with pytest.raises(ValueError, match="one step of a batch"):
        getattr(rnn, f"{mode}Cell")(I, H)(np.zeros((wide, I), np.float32))
    monkeypatch.setattr(rnn, "MAX_ELEMENTS", H * row - 1)
    with pytest.raises(ValueError, match=rf"{mode}Cell\({I}, {H}\): its packed weights, {H} x {row} values, outgrow "
                                         rf"the kernels' 32-bit indices \({H * row - 1} values an array\)"):
        getattr(rnn, f"{mode}Cell")(I, H)(np.zeros((1, I), np.float32))
