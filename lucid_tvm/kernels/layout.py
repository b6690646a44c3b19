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


def pack_weight(w, num_gates, hidden_size, lanes, dtype):
    """(G*H, K) -> (NB, K, G, L), zero padded past H."""
    k = w.shape[1]
    nb = num_blocks(hidden_size, lanes)
    out = np.zeros((nb * lanes, num_gates, k), dtype=dtype)  # unit, gate, k
    out[:hidden_size] = np.asarray(w, dtype=dtype).reshape(num_gates, hidden_size, k).transpose(1, 0, 2)
    return np.ascontiguousarray(out.reshape(nb, lanes, num_gates, k).transpose(0, 3, 2, 1))


def pack_bias(b, num_gates, hidden_size, lanes, dtype):
    """(G*H,) or None -> (NB, G, L); None is zeros."""
    nb = num_blocks(hidden_size, lanes)
    out = np.zeros((nb * lanes, num_gates), dtype=dtype)  # unit, gate
    if b is not None:
        out[:hidden_size] = np.asarray(b, dtype=dtype).reshape(num_gates, hidden_size).T
    return np.ascontiguousarray(out.reshape(nb, lanes, num_gates).transpose(0, 2, 1))
