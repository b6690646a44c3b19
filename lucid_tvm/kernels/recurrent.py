"""TIR kernels of a recurrent layer: the input projection of all steps, and the time loop.

A layer-direction runs as two compiled calls:

1. ``project``: ``xp = x @ W_ih^T + b_ih`` for every step at once, one GEMM over (T*B) rows.
2. ``recur``: the time loop. Each step computes ``h @ W_hh^T + b_hh`` for every hidden block and
   applies the gate equations of :mod:`.gates`, writing ``h_t`` into the output row of step t and
   into a two-row state buffer that the next step reads.

Sequence length and batch are symbolic: one compiled module serves every T and B. Hidden and
input sizes, dtype and the knobs below are fixed per module:

- ``lanes``: SIMD width in elements (hidden units per block),
- ``rows``: rows (batch entries or time-batch rows) that share one weight load in registers,
- ``parallel``: split hidden blocks across the thread pool (per GEMM, and per time step).

The loop nest here is the CPU schedule itself; the knobs are chosen in :mod:`lucid_tvm.schedule`.
"""

from tvm.script import tirx as T

from .gates import gate, new_cell, new_hidden
from .layout import num_blocks
from .spec import NUM_GATES


def _row_tiles(G, L, R, dtype):
    """Macros for ``out[m, blk] = a[m, :] @ w[blk] + bias[blk]`` over packed weights, the inner
    kernel of both the projection and each recurrent step: ``tile`` does ``nrows`` rows with one
    weight load shared by all of them, ``remainder`` the last ``rest < R <= 8`` rows as tiles of
    4, 2 and 1 (which covers any rest below 8, hence R in [4, 8])."""
    if not 4 <= R <= 8:
        raise ValueError(f"rows must be in [4, 8], got {R}")

    @T.macro
    def tile(nrows, row0, blk, a, w, bias, out):
        acc = T.alloc_buffer((R, G, L), dtype, scope="local")
        for r, g in T.grid(nrows, G):
            for l in T.vectorized(L):
                acc[r, g, l] = bias[blk, g, l]
        for k in range(a.shape[1]):
            for r in T.unroll(nrows):
                for g in T.unroll(G):
                    for l in T.vectorized(L):
                        acc[r, g, l] = acc[r, g, l] + a[row0 + r, k] * w[blk, k, g, l]
        for r, g in T.grid(nrows, G):
            for l in T.vectorized(L):
                out[row0 + r, blk, g, l] = acc[r, g, l]

    @T.macro
    def remainder(rest, row0, blk, a, w, bias, out):
        if rest >= 4:
            tile(4, row0, blk, a, w, bias, out)
        if rest % 4 >= 2:
            tile(2, row0 + rest // 4 * 4, blk, a, w, bias, out)
        if rest % 2 == 1:
            tile(1, row0 + rest // 2 * 2, blk, a, w, bias, out)

    return tile, remainder


def projection(num_gates, output_size, dtype, lanes, rows, parallel):
    """PrimFunc ``project(x (M, K), w (NB, K, G, L), b (NB, G, L), xp (M, NB, G, L))``.

    ``xp = x @ W^T + b`` for a (G*output_size, K) weight packed by :func:`.layout.pack_weight`.
    M and K are symbolic: the same GEMM serves every input size.
    """
    G, L, R = num_gates, lanes, rows
    NB = num_blocks(output_size, lanes)
    loop = T.parallel if parallel else T.serial

    tile, remainder = _row_tiles(G, L, R, dtype)

    @T.prim_func
    def project(x_h: T.handle, w_h: T.handle, b_h: T.handle, xp_h: T.handle):
        T.func_attr({"global_symbol": "project", "tirx.noalias": True})
        n_m, n_k = T.int32(), T.int32()
        x = T.match_buffer(x_h, (n_m, n_k), dtype)
        w = T.match_buffer(w_h, (NB, n_k, G, L), dtype)
        b = T.match_buffer(b_h, (NB, G, L), dtype)
        xp = T.match_buffer(xp_h, (n_m, NB, G, L), dtype)
        # Blocks vary fastest, so a task's neighbours share its rows of x.
        for p in loop((n_m // R) * NB):
            tile(R, (p // NB) * R, p % NB, x, w, b, xp)
        rest = T.bind(n_m % R)
        for blk in loop(T.if_then_else(rest > 0, NB, 0)):
            remainder(rest, n_m - rest, blk, x, w, b, xp)

    return project


def recurrence(mode, hidden_size, dtype, lanes, rows, parallel):
    """PrimFunc ``recur`` running the whole time loop of one layer-direction.

    Arguments: ``xp (T, B, NB, G, L)`` from :func:`projection`, packed ``w (NB, H, G, L)`` and
    ``rb (NB, G, L)`` (``W_hh``, ``b_hh``), ``h0 (B, H)``, [LSTM: ``c0 (B, H)``], the output
    ``y (T, B, YW)`` written at columns ``yoff .. yoff+H`` (so both directions of a bidirectional
    layer share one output), [LSTM: ``cn (B, H)``, the final cell state], the workspaces
    ``hs (2, B, H)`` (previous and next hidden state) and ``hp (B, NB, G, L)`` (one step's
    ``h @ W_hh^T + b_hh``), and ``reverse`` (0 or 1). The final hidden state is the output row of
    the last step processed.
    """
    G, H, L, R = NUM_GATES[mode], hidden_size, lanes, rows
    NB = num_blocks(hidden_size, lanes)
    full_blocks, tail = H // L, H % L
    is_lstm = mode == "LSTM"
    loop = T.parallel if parallel else T.serial

    def activation(g, xp, hp, act, tt, b, blk, l):
        return gate(mode, g, xp[tt, b, blk, g, l], hp[b, blk, g, l], lambda k: act[k, l])

    tile, remainder = _row_tiles(G, L, R, dtype)

    @T.macro
    def gate_math(width, n_b, blk, xp, hp, hprev, hnext, y, yoff, cst, tt):
        # Only ``width`` lanes are stored: a tail block's padding would spill into the next columns.
        act = T.alloc_buffer((G, L), dtype, scope="local")
        for b in range(n_b):
            # One statement per gate (a constant `if` picks the gates this mode has).
            for l in T.vectorized(width):
                act[0, l] = activation(0, xp, hp, act, tt, b, blk, l)
            if G > 1:
                for l in T.vectorized(width):
                    act[1, l] = activation(1, xp, hp, act, tt, b, blk, l)
            if G > 2:
                for l in T.vectorized(width):
                    act[2, l] = activation(2, xp, hp, act, tt, b, blk, l)
            if G > 3:
                for l in T.vectorized(width):
                    act[3, l] = activation(3, xp, hp, act, tt, b, blk, l)
            # Stores rather than let-bound values: a let of an expression with lets inside is
            # vectorized wrongly by TVM 0.27 (every lane gets the last lane's value).
            for l in T.vectorized(width):
                if is_lstm:
                    cst[b, blk * L + l] = new_cell(lambda k: act[k, l], cst[b, blk * L + l])
                y[tt, b, yoff + blk * L + l] = new_hidden(
                    mode, lambda k: act[k, l], hprev[b, blk * L + l], cst[b, blk * L + l] if is_lstm else None)
                hnext[b, blk * L + l] = y[tt, b, yoff + blk * L + l]

    @T.macro
    def step(n_b, xp, w, rb, hprev, hnext, hp, y, yoff, cst, tt):
        for blk in loop(NB):
            for bo in range(n_b // R):
                tile(R, bo * R, blk, hprev, w, rb, hp)
            rest = T.bind(n_b % R)
            remainder(rest, n_b - rest, blk, hprev, w, rb, hp)
            # The gate math exists once (twice with a tail block), not once per tile shape.
            if tail == 0:
                gate_math(L, n_b, blk, xp, hp, hprev, hnext, y, yoff, cst, tt)
            elif blk < full_blocks:
                gate_math(L, n_b, blk, xp, hp, hprev, hnext, y, yoff, cst, tt)
            else:
                gate_math(tail, n_b, blk, xp, hp, hprev, hnext, y, yoff, cst, tt)

    @T.macro
    def time_loop(n_t, n_b, xp, w, rb, h0, y, yoff, cst, hs, hp, reverse):
        for b, j in T.grid(n_b, H):
            hs[0, b, j] = h0[b, j]
        for s in range(n_t):
            tt = T.bind(T.if_then_else(reverse != 0, n_t - 1 - s, s))
            hprev = T.decl_buffer((n_b, H), dtype, data=hs.data, elem_offset=s % 2 * n_b * H)
            hnext = T.decl_buffer((n_b, H), dtype, data=hs.data, elem_offset=(s + 1) % 2 * n_b * H)
            step(n_b, xp, w, rb, hprev, hnext, hp, y, yoff, cst, tt)

    if is_lstm:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, h0_h: T.handle, c0_h: T.handle,
                  y_h: T.handle, cn_h: T.handle, hs_h: T.handle, hp_h: T.handle,
                  yoff: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_t, n_b, yw = T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_t, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            h0 = T.match_buffer(h0_h, (n_b, H), dtype)
            c0 = T.match_buffer(c0_h, (n_b, H), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype)
            cn = T.match_buffer(cn_h, (n_b, H), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            # The cell state is updated in place: each unit is read and written by one task only.
            for b, j in T.grid(n_b, H):
                cn[b, j] = c0[b, j]
            time_loop(n_t, n_b, xp, w, rb, h0, y, yoff, cn, hs, hp, reverse)

    else:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, h0_h: T.handle,
                  y_h: T.handle, hs_h: T.handle, hp_h: T.handle, yoff: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_t, n_b, yw = T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_t, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            h0 = T.match_buffer(h0_h, (n_b, H), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            time_loop(n_t, n_b, xp, w, rb, h0, y, yoff, None, hs, hp, reverse)

    return recur
