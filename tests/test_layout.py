"""The packed weight layout (``kernels/layout.py``) against its definition, element by element."""

import numpy as np
import pytest

from lucid_tvm.kernels.layout import num_blocks, pack_bias, pack_weight
from lucid_tvm.runtime import ALIGNMENT, aligned_empty


def _by_definition(w, gates, hidden, lanes):
    """out[block, k, gate, lane] = w[gate * H + block * L + lane, k], zero past H."""
    nb, k = num_blocks(hidden, lanes), w.shape[1]
    out = np.zeros((nb, k, gates, lanes))
    for block in range(nb):
        for lane in range(lanes):
            unit = block * lanes + lane
            if unit < hidden:
                for gate in range(gates):
                    out[block, :, gate, lane] = w[gate * hidden + unit]
    return out


@pytest.mark.parametrize("gates, hidden, k, lanes", [(4, 32, 5, 16), (3, 33, 7, 16), (1, 5, 3, 16),
                                                     (1, 130, 1, 64), (4, 64, 0, 16)])
@pytest.mark.parametrize("source", ["float32", "float64 transposed"])
def test_pack_weight_and_bias_by_definition(gates, hidden, k, lanes, source, rng):
    w = rng.standard_normal((gates * hidden, k))
    if source == "float32":
        w = w.astype(np.float32)
    else:  # a view of another dtype, as the tracetorch face's W^T
        w = np.ascontiguousarray(w.T).T
    expected = _by_definition(w, gates, hidden, lanes).astype(np.float32)
    packed = pack_weight(w, gates, hidden, lanes, "float32", aligned_empty)
    assert packed.dtype == np.float32 and packed.flags.c_contiguous
    assert packed.ctypes.data % ALIGNMENT == 0 or packed.size == 0
    np.testing.assert_array_equal(packed, expected)
    b = w[:, 0] if k else rng.standard_normal(gates * hidden)
    bias = pack_bias(b, gates, hidden, lanes, "float32", aligned_empty)
    assert bias.shape == expected.shape[:1] + expected.shape[2:] and bias.ctypes.data % ALIGNMENT == 0
    np.testing.assert_array_equal(bias, _by_definition(b[:, None], gates, hidden, lanes)[:, 0].astype(np.float32))
    np.testing.assert_array_equal(pack_bias(None, gates, hidden, lanes, "float32"), np.zeros_like(bias))
