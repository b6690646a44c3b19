"""TIR kernels of a recurrent layer for NVIDIA GPUs, with the same calls as the CPU kernels.

Both functions have the names and arguments of the CPU versions in :mod:`.recurrent`, so the
runtime drives either the same way (weights packed by :func:`.layout.pack_weight` with ``lanes``
hidden units per block; on the GPU one block is one warp of 32 units):

- ``project(x (M, K), w (NB, K, G, L), b (NB, G, L), xp (n, NB, G, L), row0)``:
  ``xp[i] = x[row0 + i] @ W^T + b`` for ``i < n``. One thread per output column (block, gate,
  lane), ``rows`` consecutive rows per thread so each weight load serves ``rows`` rows; the
  loads of a warp are 32 consecutive floats. M, K and n are symbolic.
- ``recur(xp (n, B, NB, G, L), w (NB, H, G, L), rb (NB, G, L), hs (2, B, H), [cs (B, H)],
  hp (B, NB, G, L), y (T, B, YW), yoff, t0, reverse)``: n time steps. The loop over steps runs on
  the host and launches one kernel per step (TVM splits the PrimFunc into host and device code):
  one thread per (batch row, hidden unit) computes all G gates of its unit,
  ``h @ W_hh^T + b_hh``, applies the gate equations of :mod:`.gates` and writes ``h_t`` to
  ``y[t, :, yoff + j]`` and to the other row of ``hs``. Step s handles time
  ``t = t0 + (n - 1 - s if reverse else s)`` and reads ``xp[t - t0]``; h is in ``hs[0]`` on entry
  and on exit, LSTM's cell state is updated in place in ``cs``. ``hp`` is part of the shared
  signature (the CPU kernel keeps ``h @ W_hh^T + b_hh`` there); here each thread keeps its gates in
  registers and ``hp`` is not touched. T, B and n are symbolic.

The loop nests are the CUDA schedule itself; the knobs (``lanes``, ``threads`` per thread block,
``rows``) are chosen in :mod:`lucid_tvm.schedule`.
"""

from .gates import gate, new_cell, new_hidden
from .layout import num_blocks
from .spec import NUM_GATES
from .tvmscript import T


def projection(num_gates, output_size, dtype, lanes, threads, rows):
    """PrimFunc ``project(x, w, b, xp, row0)`` for a (G*output_size, K) weight packed with
    ``lanes`` units per block."""
    G, L, TB, R = num_gates, lanes, threads, rows
    NB = num_blocks(output_size, lanes)
    C = NB * G * L  # output columns, padding included (its weights are zero)

    @T.prim_func
    def project(x_h: T.handle, w_h: T.handle, b_h: T.handle, xp_h: T.handle, row0: T.int32):
        T.func_attr({"global_symbol": "project", "tirx.noalias": True})
        n_m, n_k, n_rows = T.int32(), T.int32(), T.int32()
        x = T.match_buffer(x_h, (n_m, n_k), dtype)
        w = T.match_buffer(w_h, (NB, n_k, G, L), dtype)
        b = T.match_buffer(b_h, (NB, G, L), dtype)
        xp = T.match_buffer(xp_h, (n_rows, NB, G, L), dtype)
        for by in T.thread_binding((C + TB - 1) // TB, thread="blockIdx.y"):
            for bx in T.thread_binding((n_rows + R - 1) // R, thread="blockIdx.x"):
                for tx in T.thread_binding(TB, thread="threadIdx.x"):
                    col = T.bind(by * TB + tx)
                    if col < C:
                        blk = T.bind(col // (G * L))
                        g = T.bind(col // L % G)
                        lane = T.bind(col % L)
                        acc = T.alloc_buffer((R,), dtype, scope="local")
                        for r in T.unroll(R):
                            acc[r] = b[blk, g, lane]
                        for k in range(n_k):
                            for r in T.unroll(R):
                                # Rows past n read the last row (no branch in the inner loop);
                                # their sums are never stored.
                                acc[r] = acc[r] + x[row0 + T.min(bx * R + r, n_rows - 1), k] * w[blk, k, g, lane]
                        for r in T.unroll(R):
                            if bx * R + r < n_rows:
                                xp[bx * R + r, blk, g, lane] = acc[r]

    return project


def recurrence(mode, hidden_size, dtype, lanes, threads):
    """PrimFunc ``recur`` running ``n`` steps of one layer-direction (arguments in the module
    docstring)."""
    G, H, L, TB = NUM_GATES[mode], hidden_size, lanes, threads
    NB = num_blocks(hidden_size, lanes)
    is_lstm = mode == "LSTM"

    @T.macro
    def unit_step(i, xp, w, rb, hs, cs, y, yoff, src, tt, t0):
        """Thread ``i`` = (batch row, hidden unit): one unit's gates and new state."""
        b = T.bind(i // H)
        j = T.bind(i % H)
        blk = T.bind(j // L)
        lane = T.bind(j % L)
        acc = T.alloc_buffer((G,), dtype, scope="local")
        act = T.alloc_buffer((G,), dtype, scope="local")
        for g in T.unroll(G):
            acc[g] = rb[blk, g, lane]
        for k in range(H):
            for g in T.unroll(G):
                acc[g] = acc[g] + hs[src, b, k] * w[blk, k, g, lane]
        # One statement per gate (a constant `if` picks the gates this mode has).
        act[0] = gate(mode, 0, xp[tt - t0, b, blk, 0, lane], acc[0], lambda k: act[k])
        if G > 1:
            act[1] = gate(mode, 1, xp[tt - t0, b, blk, 1, lane], acc[1], lambda k: act[k])
        if G > 2:
            act[2] = gate(mode, 2, xp[tt - t0, b, blk, 2, lane], acc[2], lambda k: act[k])
        if G > 3:
            act[3] = gate(mode, 3, xp[tt - t0, b, blk, 3, lane], acc[3], lambda k: act[k])
        if is_lstm:
            cs[b, j] = new_cell(lambda k: act[k], cs[b, j])
        y[tt, b, yoff + j] = new_hidden(mode, lambda k: act[k], hs[src, b, j], cs[b, j] if is_lstm else None)
        hs[1 - src, b, j] = y[tt, b, yoff + j]

    @T.macro
    def time_loop(n_s, n_b, xp, w, rb, hs, cs, y, yoff, t0, reverse):
        # Host code: one kernel launch per step; steps run in order on the stream.
        for s in range(n_s):
            tt = T.bind(T.if_then_else(reverse != 0, t0 + n_s - 1 - s, t0 + s))
            src = T.bind(s % 2)
            for bx in T.thread_binding((n_b * H + TB - 1) // TB, thread="blockIdx.x"):
                for tx in T.thread_binding(TB, thread="threadIdx.x"):
                    if bx * TB + tx < n_b * H:
                        unit_step(bx * TB + tx, xp, w, rb, hs, cs, y, yoff, src, tt, t0)
        # After an odd number of steps the last h is in hs[1]; the contract wants it in hs[0].
        if n_s % 2 == 1:
            for bx in T.thread_binding((n_b * H + TB - 1) // TB, thread="blockIdx.x"):
                for tx in T.thread_binding(TB, thread="threadIdx.x"):
                    if bx * TB + tx < n_b * H:
                        hs[0, (bx * TB + tx) // H, (bx * TB + tx) % H] = hs[1, (bx * TB + tx) // H, (bx * TB + tx) % H]

    if is_lstm:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle, cs_h: T.handle,
                  hp_h: T.handle, y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw = T.int32(), T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            cs = T.match_buffer(cs_h, (n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)  # noqa: F841 - see the module docstring
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype)
            time_loop(n_s, n_b, xp, w, rb, hs, cs, y, yoff, t0, reverse)

    else:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle, hp_h: T.handle,
                  y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw = T.int32(), T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)  # noqa: F841 - see the module docstring
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype)
            time_loop(n_s, n_b, xp, w, rb, hs, None, y, yoff, t0, reverse)

    return recur
