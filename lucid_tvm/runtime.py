"""Floor 4: calling the compiled kernels on host arrays.

Arrays reach the kernels zero-copy through DLPack. TVM requires 64-byte aligned, C-contiguous
buffers (an AVX kernel may fault on a misaligned one), so anything else (views, odd strides,
unaligned buffers) is copied once into an aligned buffer first; outputs are allocated aligned.
"""

import functools

import numpy as np
import tvm

from .build import LayerSpec, compile_layer
from .kernels.layout import num_blocks, pack_bias, pack_weight

ALIGNMENT = 64


def aligned_empty(shape, dtype):
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned(a, dtype):
    """``a`` as a C-contiguous, 64-byte aligned array of ``dtype``; no copy when it already is one."""
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
        return a
    out = aligned_empty(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def _dl(a):
    return tvm.runtime.from_dlpack(a)


class LayerKernel:
    """The compiled kernels of one layer-direction kind (mode, sizes, dtype) on this CPU."""

    def __init__(self, spec):
        self.spec = spec
        self.module, self.schedule = compile_layer(spec)
        self._project = self.module["project"]
        self._recur = self.module["recur"]
        self.blocks = num_blocks(spec.hidden_size, self.schedule.lanes)

    def pack(self, w_ih, w_hh, b_ih, b_hh):
        """Weights in the kernels' layout, packed once and reused for every call."""
        s, lanes = self.spec, self.schedule.lanes
        arrays = (
            pack_weight(w_ih, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_bias(b_ih, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_weight(w_hh, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_bias(b_hh, s.num_gates, s.hidden_size, lanes, s.dtype),
        )
        return tuple(_dl(aligned(a, s.dtype)) for a in arrays)

    def run(self, packed, x, h0, c0, y, yoff, reverse, cn):
        """One direction over a whole sequence.

        ``x`` (T, B, I), ``h0``/``c0`` (B, H) and the outputs ``y`` (T, B, YW) (columns
        ``yoff .. yoff+H`` are written) and ``cn`` (B, H, LSTM only) must come from :func:`aligned`
        or :func:`aligned_empty` with the layer's dtype.
        """
        s = self.spec
        n_t, n_b = x.shape[0], x.shape[1]
        w_ih, b_ih, w_hh, b_hh = packed
        xp = aligned_empty((n_t, n_b, self.blocks, s.num_gates, self.schedule.lanes), s.dtype)
        self._project(_dl(x.reshape(n_t * n_b, s.input_size)), w_ih, b_ih,
                      _dl(xp.reshape(n_t * n_b, self.blocks, s.num_gates, self.schedule.lanes)))
        if s.mode == "LSTM":
            self._recur(_dl(xp), w_hh, b_hh, _dl(h0), _dl(c0), _dl(y), _dl(cn), yoff, int(reverse))
        else:
            self._recur(_dl(xp), w_hh, b_hh, _dl(h0), _dl(y), yoff, int(reverse))


@functools.lru_cache(maxsize=None)
def layer_kernel(mode, input_size, hidden_size, dtype):
    return LayerKernel(LayerSpec(mode, input_size, hidden_size, np.dtype(dtype).name))
