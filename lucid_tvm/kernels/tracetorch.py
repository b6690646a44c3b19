"""The tracetorch 0.19.2 cell equations, forward and backward, as TE elementwise kernels.

tracetorch computes every gate with one Linear over ``cat([H, x])`` (H first). The matrix products
run on the GEMM of :mod:`.recurrent` (``projection`` with one gate); these kernels hold the
elementwise math around them. ``pre`` is a GEMM output of shape (B, P) whose first columns are the
Linear's outputs in tracetorch's chunk order (P is the GEMM's padded width).

- SimpleRNN: ``H' = tanh(pre)``
- LSTM, chunks i, f, o, g: ``C' = sig(f) C + sig(i) tanh(g)``, ``H' = sig(o) tanh(C')``
- GRU, in two stages around the candidate GEMM:
  ``r, u = sig(pre1)``; ``cand = tanh(Linear2(cat[H * r, x]))``; ``H' = H (1 - u) + u cand``

Backward kernels take the gradient of the step's outputs and return the gradient of the
pre-activations (for the weight and input GEMMs) and of the previous states. Batch is symbolic.
"""

from tvm import te, tirx

from .fastmath import sigmoid, tanh

KINDS = ("SimpleRNN", "LSTM", "GRU")
NUM_CHUNKS = {"SimpleRNN": 1, "LSTM": 4, "GRU": 2}  # of the first Linear


def _batch_and(dtype, *shapes):
    batch = te.var("batch")
    return batch, [te.placeholder((batch,) + tuple(s), dtype, name=n) for n, s in shapes]


def simple_rnn(hidden, dtype):
    """forward(pre, h_new); backward(h_new, dh, dpre)."""
    one = tirx.const(1, dtype)
    batch, (pre,) = _batch_and(dtype, ("pre", (te.var("p"),)))
    h_new = te.compute((batch, hidden), lambda b, j: tanh(pre[b, j]), name="h_new")
    _, (h, dh) = _batch_and(dtype, ("h", (hidden,)), ("dh", (hidden,)))
    batch2 = h.shape[0]
    dpre = te.compute((batch2, hidden), lambda b, j: dh[b, j] * (one - h[b, j] * h[b, j]),
                      name="dpre")
    return {"forward": te.create_prim_func([pre, h_new]), "backward": te.create_prim_func([h, dh, dpre])}


def lstm(hidden, dtype):
    """forward(pre, c, h_new, c_new, acts); backward(acts, c, c_new, dh, dc_new, dpre, dc).

    ``acts`` keeps the activated chunks i, f, o, g for the backward, (B, 4, H) for the forward to
    write and (B, 4H) for the backward to read; ``dpre`` is (B, 4, H).
    """
    one = tirx.const(1, dtype)
    H = hidden
    batch, (pre, c) = _batch_and(dtype, ("pre", (te.var("p"),)), ("c", (H,)))

    # The sigmoids of i, f, o and the tanh of g each over its own chunks, then gathered into acts:
    # one Select of the two computes both over all four (LSTM 128, batch 32: 4.8 us -> 3.7).
    sig = te.compute((batch, 3 * H), lambda b, k: sigmoid(pre[b, k]), name="sig")
    g = te.compute((batch, H), lambda b, j: tanh(pre[b, 3 * H + j]), name="g")
    acts = te.compute((batch, 4, H), lambda b, chunk, j: tirx.Select(
        chunk < 3, sig[b, tirx.min(chunk, 2) * H + j], g[b, j]), name="acts")
    c_new = te.compute((batch, H), lambda b, j: sig[b, H + j] * c[b, j] + sig[b, j] * g[b, j], name="c_new")
    h_new = te.compute((batch, H), lambda b, j: sig[b, 2 * H + j] * tanh(c_new[b, j]), name="h_new")

    _, (a, c0, c1, dh, dc1) = _batch_and(dtype, ("acts", (4 * H,)), ("c", (H,)), ("c_new", (H,)),
                                         ("dh", (H,)), ("dc_new", (H,)))
    nb = a.shape[0]
    # tanh(C') and the total gradient reaching C' (from the output H' and from later steps), once
    # per unit: within dpre's Select, which computes all four of its sides, they were computed for
    # every gate of every unit. With dpre below, the kernel went from 12.2 us to 2.4 at LSTM 128,
    # batch 32, and from 98 to 24 at LSTM 512, batch 64.
    tanh_c = te.compute((nb, H), lambda b, j: tanh(c1[b, j]), name="tanh_c")
    dcell = te.compute((nb, H), lambda b, j: dc1[b, j] + dh[b, j] * a[b, 2 * H + j] * (
        one - tanh_c[b, j] * tanh_c[b, j]), name="dcell")

    def dpre_at(b, chunk, j):
        i, f, o, g = a[b, j], a[b, H + j], a[b, 2 * H + j], a[b, 3 * H + j]
        d = dcell[b, j]
        return tirx.Select(
            chunk == 0, d * g * i * (one - i),
            tirx.Select(chunk == 1, d * c0[b, j] * f * (one - f),
                        tirx.Select(chunk == 2, dh[b, j] * tanh_c[b, j] * o * (one - o),
                                    d * i * (one - g * g))))

    # (B, 4, H), the (B, 4H) rows of the GEMMs, so that a unit's index is a loop's, not k % H
    # (about a fifth of the kernel's time at LSTM 128, batch 32).
    dpre = te.compute((nb, 4, H), dpre_at, name="dpre")
    dc = te.compute((nb, H), lambda b, j: dcell[b, j] * a[b, H + j], name="dc")
    return {
        "forward": te.create_prim_func([pre, c, h_new, c_new, acts]),
        "backward": te.create_prim_func([a, c0, c1, dh, dc1, dpre, dc]),
    }


def gru(hidden, input_size, dtype):
    """Four kernels around the two GEMMs of a GRU step.

    - forward_gates(pre1, h, x, ru, rhx): ``ru`` = (r, u) activated; ``rhx`` = cat[H * r, x], the
      candidate GEMM's input.
    - forward_out(pre2, h, ru, h_new, cand)
    - backward_out(h, ru, cand, dh, dpre2, du, dh_direct): through H' and the candidate's tanh.
    - backward_gates(h, ru, drhx, du, dh_direct, dpre1, dh_acc): ``drhx`` is the candidate GEMM's
      input gradient; ``dh_acc`` is dH without the gates GEMM's part; ``dpre1`` is (B, 2, H).
    """
    one = tirx.const(1, dtype)
    H, I = hidden, input_size
    batch, (pre1, h, x) = _batch_and(dtype, ("pre1", (te.var("p"),)), ("h", (H,)), ("x", (I,)))
    ru = te.compute((batch, 2 * H), lambda b, k: sigmoid(pre1[b, k]), name="ru")
    # r read back from ``ru``: a Select computes both its sides, so a sigmoid here would be
    # computed for all of rhx, as many again as ``ru`` has (GRU 512 at batch 64: 20.5 us -> 13.5).
    rhx = te.compute((batch, H + I), lambda b, k: tirx.Select(
        k < H, h[b, tirx.min(k, H - 1)] * ru[b, tirx.min(k, H - 1)], x[b, tirx.max(k - H, 0)]),
        name="rhx")
    forward_gates = te.create_prim_func([pre1, h, x, ru, rhx])

    batch, (pre2, h, ru_in) = _batch_and(dtype, ("pre2", (te.var("p"),)), ("h", (H,)), ("ru", (2 * H,)))

    cand = te.compute((batch, H), lambda b, j: tanh(pre2[b, j]), name="cand")
    h_new = te.compute((batch, H), lambda b, j: h[b, j] * (one - ru_in[b, H + j]) + ru_in[b, H + j] * cand[b, j],
                       name="h_new")
    forward_out = te.create_prim_func([pre2, h, ru_in, h_new, cand])

    batch, (h, ru_in, cd, dh) = _batch_and(dtype, ("h", (H,)), ("ru", (2 * H,)), ("cand", (H,)),
                                           ("dh", (H,)))
    dpre2 = te.compute((batch, H), lambda b, j: dh[b, j] * ru_in[b, H + j] * (one - cd[b, j] * cd[b, j]),
                       name="dpre2")
    du = te.compute((batch, H), lambda b, j: dh[b, j] * (cd[b, j] - h[b, j]), name="du")
    dh_direct = te.compute((batch, H), lambda b, j: dh[b, j] * (one - ru_in[b, H + j]),
                           name="dh_direct")
    backward_out = te.create_prim_func([h, ru_in, cd, dh, dpre2, du, dh_direct])

    batch, (h, ru_in, drhx, du_in, dhd) = _batch_and(
        dtype, ("h", (H,)), ("ru", (2 * H,)), ("drhx", (te.var("q"),)), ("du", (H,)), ("dh_direct", (H,)))

    def dpre1_at(b, chunk, j):
        r, u = ru_in[b, j], ru_in[b, H + j]
        return tirx.Select(chunk == 0, drhx[b, j] * h[b, j] * r * (one - r), du_in[b, j] * u * (one - u))

    # (B, 2, H), as the LSTM's dpre: a unit's index is a loop's, not k % H (GRU 512, batch 64: 28.7 us
    # -> 9.8).
    dpre1 = te.compute((batch, 2, H), dpre1_at, name="dpre1")
    dh_acc = te.compute((batch, H), lambda b, j: dhd[b, j] + drhx[b, j] * ru_in[b, j], name="dh_acc")
    backward_gates = te.create_prim_func([h, ru_in, drhx, du_in, dhd, dpre1, dh_acc])
    return {"forward_gates": forward_gates, "forward_out": forward_out,
            "backward_out": backward_out, "backward_gates": backward_gates}


def kernels(kind, hidden, input_size, dtype):
    """name -> PrimFunc of the elementwise kernels of one tracetorch layer."""
    if kind == "SimpleRNN":
        return simple_rnn(hidden, dtype)
    if kind == "LSTM":
        return lstm(hidden, dtype)
    if kind == "GRU":
        return gru(hidden, input_size, dtype)
    raise ValueError(f"unknown tracetorch layer {kind!r}; expected one of {KINDS}")
