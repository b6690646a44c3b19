"""The gate equations of each recurrent cell, written once as TIR expressions.

These are the lucid / PyTorch equations. For one hidden unit, ``x(g)`` is gate ``g`` of
``x @ W_ih^T + b_ih`` and ``h(g)`` is gate ``g`` of ``h @ W_hh^T + b_hh``:

- RNN_TANH / RNN_RELU: ``h' = act(x(0) + h(0))``
- LSTM (gates i, f, g, o): ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``
- GRU (gates r, z, n): ``n = tanh(x(n) + sigmoid(r) * h(n))``, ``h' = (1 - z) * n + z * h``
"""

from tvm import tirx

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
NUM_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _const(value, like):
    return tirx.const(value, str(like.ty.dtype))


def relu(x):
    # Select rather than max: max(NaN, 0) lowers to maxnum and would return 0, torch.relu returns NaN.
    zero = _const(0, x)
    return tirx.Select(x < zero, zero, x)


def cell_update(mode, x, h, h_prev, c_prev):
    """New (hidden, cell) of one unit; the cell is None except for LSTM.

    ``x`` and ``h`` are callables from a gate index to its pre-activation expression;
    ``h_prev`` and ``c_prev`` are the unit's previous hidden and cell values (c_prev only for LSTM).
    """
    if mode == "RNN_TANH":
        return tirx.tanh(x(0) + h(0)), None
    if mode == "RNN_RELU":
        return relu(x(0) + h(0)), None
    if mode == "LSTM":
        i, f = tirx.sigmoid(x(0) + h(0)), tirx.sigmoid(x(1) + h(1))
        g, o = tirx.tanh(x(2) + h(2)), tirx.sigmoid(x(3) + h(3))
        c = f * c_prev + i * g
        return o * tirx.tanh(c), c
    if mode == "GRU":
        r, z = tirx.sigmoid(x(0) + h(0)), tirx.sigmoid(x(1) + h(1))
        n = tirx.tanh(x(2) + r * h(2))
        return (_const(1, n) - z) * n + z * h_prev, None
    raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {MODES}")
