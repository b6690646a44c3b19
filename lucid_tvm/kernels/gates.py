"""The gate equations of each recurrent cell, written once as TIR expressions.

These are the lucid / PyTorch equations. For one hidden unit, ``x(g)`` is gate ``g`` of
``x @ W_ih^T + b_ih`` and ``h(g)`` is gate ``g`` of ``h @ W_hh^T + b_hh``. Kernels evaluate them in
two steps, each its own statement: every gate's activation (:func:`gate`), then the new state
(:func:`new_cell`, :func:`new_hidden`); one giant expression would compile very slowly.

- RNN_TANH / RNN_RELU: ``h' = act(x(0) + h(0))``
- LSTM (gates i, f, g, o): ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``
- GRU (gates r, z, n): ``n = tanh(x(n) + sigmoid(r) * h(n))``, ``h' = (1 - z) * n + z * h``
"""

from tvm import tirx

from .fastmath import let, sigmoid, tanh

from .spec import MODES


def _const(value, like):
    return tirx.const(value, str(like.ty.dtype))


def relu(x):
    # Select rather than max: max(NaN, 0) lowers to maxnum and would return 0, torch.relu returns NaN.
    zero = _const(0, x)
    return let(x, lambda v: tirx.Select(v < zero, zero, v))


def gate(mode, g, x, h, act):
    """Activation of gate ``g`` of one unit: ``x``/``h`` are its input and hidden pre-activations,
    ``act(k)`` the activation of an earlier gate k < g (GRU's n needs r)."""
    if mode == "RNN_TANH":
        return tanh(x + h)
    if mode == "RNN_RELU":
        return relu(x + h)
    if mode == "LSTM":
        return tanh(x + h) if g == 2 else sigmoid(x + h)
    if mode == "GRU":
        return tanh(x + act(0) * h) if g == 2 else sigmoid(x + h)
    raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {MODES}")


def new_cell(act, c_prev):
    """LSTM's cell state from the activated gates i, f, g, o: ``f c + i g``."""
    return act(1) * c_prev + act(0) * act(2)


def new_hidden(mode, act, h_prev, c_new=None):
    """The unit's new hidden value from its activated gates (and LSTM's new cell state)."""
    if mode in ("RNN_TANH", "RNN_RELU"):
        return act(0)
    if mode == "LSTM":
        return act(3) * tanh(c_new)
    if mode == "GRU":
        z = act(1)
        return (_const(1, z) - z) * act(2) + z * h_prev
    raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {MODES}")
