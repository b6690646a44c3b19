"""The packed weight layout the recurrent kernels read, and the numpy code that packs it.

Hidden units are grouped in blocks of ``lanes`` (one SIMD vector). A weight matrix of shape
(G*H, K) (PyTorch's ``weight_ih`` / ``weight_hh``) is stored as ``[block][k][gate][lane]``: the
inner loop of a kernel broadcasts one input value ``a[k]`` and issues one multiply-add per gate
per vector straight from memory, and all gates of a unit land in the same task, so the gate
math needs no exchange between tasks. Units past H in the last block are zero padding.
"""

import numpy as np


def num_blocks(hidden_size, lanes):
    return -(-hidden_size // lanes)


def packed_row_bytes(num_gates, hidden_size, lanes, dtype):
    """Bytes of one row of packed outputs (a step's projection or ``h @ W_hh^T`` for one batch
    entry): every gate of every block, the padding included."""
    return num_blocks(hidden_size, lanes) * num_gates * lanes * np.dtype(dtype).itemsize


def pack_weight(w, num_gates, hidden_size, lanes, dtype, empty=np.empty):
    """(G*H, K) -> (NB, K, G, L), zero padded past H, in a new array ``empty(shape, dtype)`` (the
    runtime's aligns it), by one strided copy straight from ``w`` (cast to ``dtype``). Three
    copies, each into a fresh array whose pages fault on first touch, made the first call of a
    large layer and a tracetorch training step markedly slower (docs/design.md, "Packed weights")."""
    w = np.asarray(w)
    k, nb, full = w.shape[1], num_blocks(hidden_size, lanes), hidden_size // lanes
    units = w.reshape(num_gates, hidden_size, k)  # a view, also of a transposed w
    out = empty((nb, k, num_gates, lanes), dtype)
    np.copyto(out[:full], units[:, :full * lanes].reshape(num_gates, full, lanes, k).transpose(1, 3, 0, 2),
              casting="unsafe")
    if full < nb:  # the last block: its units, then zeros
        tail = hidden_size - full * lanes
        np.copyto(out[full, :, :, :tail], units[:, full * lanes:].transpose(2, 0, 1), casting="unsafe")
        out[full, :, :, tail:] = 0
    return out


def pack_bias(b, num_gates, hidden_size, lanes, dtype, empty=np.empty):
    """(G*H,) or None -> (NB, G, L) in a new array ``empty(shape, dtype)``; None is zeros."""
    shape = (num_blocks(hidden_size, lanes), num_gates, lanes)
    if b is None:
        out = empty(shape, dtype)
        out[...] = 0
        return out
    return pack_weight(np.asarray(b).reshape(-1, 1), num_gates, hidden_size, lanes, dtype, empty).reshape(shape)
