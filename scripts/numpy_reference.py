"""A plain numpy implementation of the lucid / PyTorch recurrent equations: the demo's oracle and
the benchmark's "numpy loop" (one GEMM for the input projection, then a Python loop over steps)."""

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def run_layer(mode, x, w_ih, w_hh, b_ih, b_hh, h, c=None):
    """One direction of one layer over x (T, B, I); returns (y (T, B, H), h_T, c_T)."""
    steps, batch, _ = x.shape
    xp = (x.reshape(steps * batch, -1) @ w_ih.T + b_ih).reshape(steps, batch, -1)
    ys = np.empty((steps, batch, h.shape[-1]), x.dtype)
    for t in range(steps):
        hp = h @ w_hh.T + b_hh
        if mode == "RNN_TANH":
            h = np.tanh(xp[t] + hp)
        elif mode == "RNN_RELU":
            h = np.maximum(xp[t] + hp, 0)
        elif mode == "LSTM":
            i, f, g, o = np.split(xp[t] + hp, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:  # GRU
            xr, xz, xn = np.split(xp[t], 3, axis=1)
            hr, hz, hn = np.split(hp, 3, axis=1)
            r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
            n = np.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
        ys[t] = h
    return ys, h, c


def run_stack(mode, x, weights, num_layers):
    """Unidirectional stack; ``weights`` is a PyTorch-style state dict of numpy arrays."""
    batch = x.shape[1]
    for layer in range(num_layers):
        w = {k: weights[f"{k}_l{layer}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        hidden = w["weight_hh"].shape[1]
        zeros = np.zeros((batch, hidden), x.dtype)
        x, _, _ = run_layer(mode, x, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                            zeros, zeros if mode == "LSTM" else None)
    return x
