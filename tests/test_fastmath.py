"""The kernels' float32 sigmoid and tanh (``kernels/fastmath.py``), compiled vectorized as in the
gate math, against numpy in float64 over the whole float range: relative error below 1e-6 wherever
the true value is a normal float, NaN kept, infinities and signed zeros right. And the float64
tanh (TVM's, with a series near 0) against numpy."""

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from lucid_tvm.build import host_target
from lucid_tvm.kernels import fastmath

LANES = 16
TINY = np.finfo(np.float32).tiny  # smallest normal float32


def _compiled(function, dtype="float32"):
    @T.prim_func
    def apply(x_h: T.handle, y_h: T.handle):
        T.func_attr({"global_symbol": "apply", "tirx.noalias": True})
        n = T.int32()
        x = T.match_buffer(x_h, (n,), dtype)
        y = T.match_buffer(y_h, (n,), dtype)
        for i in range(n // LANES):
            for l in T.vectorized(LANES):
                y[i * LANES + l] = function(x[i * LANES + l])

    return tvm.compile(tvm.IRModule({"apply": apply}), target=host_target())["apply"]


@pytest.fixture(scope="module")
def kernels():
    return {"sigmoid": _compiled(fastmath.sigmoid), "tanh": _compiled(fastmath.tanh)}


def _inputs():
    """Every float32 around 0, a dense grid where the functions bend, and magnitudes from the
    smallest subnormal to the largest float, both signs."""
    magnitudes = np.concatenate([
        np.geomspace(1e-45, 3.4e38, 400_000),
        np.linspace(0, 30, 1_000_001)[1:],
        np.arange(1, 2**21, dtype=np.uint32).view(np.float32),  # the smallest subnormals, one by one
        np.nextafter(np.float32([0.25, 9.0, 87.0, 88.0, 88.4, 89.0]), np.float32(np.inf)),  # around branch points
        np.float32([0.25, 9.0, 87.0, 88.0, 88.4, 89.0, 1e-30, 3.4028235e38]),
    ]).astype(np.float32)
    values = np.concatenate([magnitudes, -magnitudes, np.float32([0.0, -0.0])])
    return np.concatenate([values, np.zeros(-len(values) % LANES, np.float32)])


def _run(kernel, x):
    y = np.empty_like(x)
    kernel(tvm.runtime.tensor(x), out := tvm.runtime.tensor(y))
    return out.numpy()


def _relative_error(got, exact):
    normal = np.abs(exact) >= TINY
    return np.abs(got[normal].astype(np.float64) - exact[normal]) / np.abs(exact[normal])


def test_sigmoid_relative_error(kernels):
    x = _inputs()
    got = _run(kernels["sigmoid"], x)
    x64 = x.astype(np.float64)
    e = np.exp(-np.abs(x64))  # no overflow
    exact = np.where(x64 >= 0, 1 / (1 + e), e / (1 + e))
    assert _relative_error(got, exact).max() < 1e-6
    # Below the normal range the answer is tiny, never negative, never more than 2 normal floats,
    # and 0 where torch's float32 sigmoid is (exp(-x) overflows: x below -88.73).
    assert ((got >= 0) & (got <= 2 * TINY))[np.abs(exact) < TINY].all()
    assert (got[x < -88.73] == 0).all()


def test_tanh_relative_error(kernels):
    x = _inputs()
    got = _run(kernels["tanh"], x)
    exact = np.tanh(x.astype(np.float64))
    assert _relative_error(got, exact).max() < 1e-6
    assert (np.abs(got) <= 1).all()
    small = np.abs(exact) < TINY  # subnormal inputs: tanh(x) is x up to one subnormal step
    assert np.abs(got[small].astype(np.float64) - exact[small]).max() <= 1.5e-45


def test_special_values(kernels):
    x = np.zeros(LANES, np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    sig, tanh = _run(kernels["sigmoid"], x), _run(kernels["tanh"], x)
    assert np.isnan(sig[0]) and np.isnan(tanh[0])
    np.testing.assert_array_equal(sig[[1, 3]], [1.0, 0.5])
    assert sig[2] == 0  # sigmoid(-inf), so that sigmoid(-inf) * inf is NaN as in torch
    np.testing.assert_array_equal(tanh[1:5], [1.0, -1.0, 0.0, -0.0])
    assert np.signbit(tanh[4])


def test_float64_tanh_keeps_its_digits_near_zero():
    """TVM's own tanh cancels near 0 (tanh(1e-12) 2e-5 off, tanh(1e-20) 0); the series there."""
    magnitudes = np.concatenate([np.geomspace(1e-300, 20, 100_000), [2.0**-6, np.nextafter(2.0**-6, 0)]])
    x = np.concatenate([magnitudes, -magnitudes, [0.0, -0.0, np.nan]])
    x = np.concatenate([x, np.zeros(-len(x) % LANES)])
    got = _run(_compiled(fastmath.tanh, "float64"), x)
    exact = np.tanh(x)
    finite = ~np.isnan(x) & (x != 0)
    assert (np.abs(got[finite] - exact[finite]) / np.abs(exact[finite])).max() < 1e-14
    assert np.isnan(got[np.isnan(x)]).all() and np.signbit(got[np.flatnonzero(x == 0)[1]])
