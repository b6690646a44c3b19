"""TIR kernels of a recurrent layer: the input projection of all steps, and the time loop.

A layer-direction runs a sequence chunk by chunk (a chunk is a few steps, see
``schedule.chunk_steps``), two compiled calls per chunk:

1. ``project``: ``xp = x @ W_ih^T + b_ih`` for every step of the chunk at once, one GEMM.
2. ``recur``: the chunk's time loop. Each step computes ``h @ W_hh^T + b_hh`` for every hidden
   block and applies the gate equations of :mod:`.gates`, writing ``h_t`` into the output row of
   step t and into a two-row state buffer that the next step reads.

The hidden split's chunks use ``project_first`` instead of ``project``: it also computes the
chunk's first step's ``h @ W_hh^T``, which the step then skips (``hp_ready``).

Or one call that does both, ``recur`` with ``split="projection"``: where the recurrence runs on one
thread, another core projects the chunk's next few steps meanwhile, which takes the projection
off the critical path of a small layer.

Sequence length and batch are symbolic: one compiled module serves every T and B. The caller's
arrays, the input ``x`` and the output ``y``, are declared aligned to their element size only, so
any C-contiguous array is read and written in place (their vector accesses compile to unaligned
instructions, as fast as aligned ones on aligned data); the weights and the workspace are 64-byte
aligned. Hidden and input sizes, dtype and the knobs below are fixed per module:

- ``lanes``: SIMD width in elements (hidden units per block),
- ``rows``: rows (batch entries or time-batch rows) that share one weight load in registers,
- ``wide``: (or None) a taller tile reading a few gates at a time, for rows in bulk (``_row_tiles``),
- ``parallel``: split hidden blocks across the thread pool (per GEMM, and in every time step).
- ``tiles_first``: the order of a step's work: every block's ``h @ W_hh^T``, then every block's
  gate math; or block by block (see ``step``).
- ``pieces``: ranges of k a block's ``W_hh`` is read in when it is turned (see ``recurrence``).

The loop nest here is the CPU schedule itself; the knobs are chosen in :mod:`lucid_tvm.schedule`.
"""

import functools

import numpy as np
from tvm import tirx

from .gates import gate, new_cell, new_hidden
from .layout import num_blocks
from .spec import NUM_GATES
from .tvmscript import T

# Per-tile scratch (accumulators, gate values) on the stack. TVM 0.27 turns every "local"
# allocation on a CPU (and "global" ones of 1 KB or more) into a TVMBackendAllocWorkspace /
# FreeWorkspace pair where the buffer is declared; inside the parallel steps that is once per
# hidden block and step. (The annotation survives only without StorageRewrite:
# ``schedule.pass_config``.)
ON_STACK = {"disable_lower_builtin": True}


# The tiles, largest first, that make up the rows left over after the full tiles of R rows.
REMAINDER_TILES = (4, 2, 1)


def _row_tiles(G, L, R, dtype, pieces=1, wide=None):
    """Macros for ``out[m, blk] = a[m, :] @ w[blk] + bias[blk]`` over packed weights, the inner
    kernel of both the projection and each recurrent step: ``tile`` does ``nrows`` rows with one
    weight load shared by all of them, ``remainder`` the last ``rest < R <= 8`` rows as tiles of
    4, 2 and 1 smaller than R (which covers any rest below 8, hence R <= 8), and ``in_order``
    does the same summing every row in the order of a full tile (no split k loop, see below);
    ``blocks_row`` does one row against several blocks in one loop. Each takes ``turn``: read the
    block in ``pieces`` ranges of k, last first (the recurrence's odd steps).

    ``wide`` (or None): ``(rows, gates)`` of a tile that ``all_rows`` and ``full_tiles`` run
    before tiles of R rows, a multiple of R rows reading its block's gates that many at a time,
    one k loop each: where R rows of all gates leave registers unused (see
    ``schedule.wide_tile``). It sums every row as a full tile does, so the answers are the same."""
    if not 2 <= R <= 8:
        raise ValueError(f"rows must be in [2, 8], got {R}")
    wide_rows, wide_gates = wide or (0, 0)
    if wide is not None and (wide_rows % R or G % wide_gates):
        raise ValueError(f"a wide tile's rows must be a multiple of {R} and its gates divide {G}, got {wide}")
    # Fewer rows than R leave too few independent FMA chains to hide the FMA latency (a batch-1
    # LSTM step has 4): the k loop is then split S ways into separate accumulators (interleaved,
    # so w is still read in order), keeping about as many accumulators as a full tile. Except a
    # 1-row tile whose h[k] multiplies 3 or more AVX-512 vectors of weights (192 bytes): at batch 1
    # it streams W_hh from L2 or L3, and on Zen 5 it did so 5-35% faster split 2 ways than 4 (3 ways
    # and 1 way were slower; numbers in docs/design.md). With 2 vectors (RNN 32) 2 ways leave 4
    # accumulators, and its L1-resident step waits on the FMA latency: it keeps 4 ways.
    ways = {nrows: min(4, R // nrows) for nrows in (R, *REMAINDER_TILES) if nrows <= R}
    if G * L * np.dtype(dtype).itemsize >= 192:
        ways[1] = 2
    # float16 sums in float32, as torch's CPU GEMMs do: summed in float16, a sum of 2048 ones
    # stays at 2048 (a bias gradient over a batch of 4096, the tracetorch face's backward).
    acc_dtype = "float32" if dtype == "float16" else dtype

    def widen(value):
        return value if acc_dtype == dtype else T.cast(value, acc_dtype)

    def narrow(value):
        return value if acc_dtype == dtype else T.cast(value, dtype)

    @T.macro
    def accumulate(nrows, n_blk, S, ko, row0, blk, a, w, acc, g0=0, n_g=G):
        # Gates g0 .. g0 + n_g - 1 (acc holds those only).
        for r in T.unroll(nrows):
            for s in T.unroll(S):
                for c in T.unroll(n_blk):
                    for g in T.unroll(n_g):
                        for l in T.vectorized(L):
                            acc[s, r, c, g, l] = acc[s, r, c, g, l] + widen(a[row0 + r, ko * S + s]) * widen(
                                w[blk + c, ko * S + s, g0 + g, l])

    @T.macro
    def prefetch(k, blk, w, ahead, ahead_line, other):
        # Row k's gate vector ``ahead_line`` of block ``ahead`` of ``w`` and of block ``blk`` of
        # ``other``, either of them None for none (see ``split_tile``).
        if ahead is not None:  # (read, locality 2: prefetcht1)
            T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of(w[ahead, k, ahead_line, 0]), 0, 2, 1))
        if other is not None:
            T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of(
                other[blk, T.min(k, other.shape[1] - 1), ahead_line, 0]), 0, 2, 1))

    @T.macro
    def split_tile(nrows, n_blk, S, row0, blk, a, w, bias, out, turn, ahead=None, ahead_line=0, other=None):
        # Rows row0 .. row0+nrows-1 against blocks blk .. blk+n_blk-1 (see ``blocks_row``).
        # ``ahead`` (a block, or None): prefetch its gate vector ``ahead_line`` of every k into L2
        # meanwhile, one cache line per k (see ``projection``); so too of block ``blk`` of the
        # packed weight ``other`` (or None), row k of it beside row k of ``w`` (the rows past
        # ``w``'s are left to the hardware prefetcher). Row k * H // K instead, spread over all of
        # it, made LLVM's loop 2x slower (an integer division per k).
        acc = T.alloc_buffer((S, nrows, n_blk, G, L), acc_dtype, scope="local", annotations=ON_STACK)
        for r, c, g in T.grid(nrows, n_blk, G):
            for l in T.vectorized(L):
                acc[0, r, c, g, l] = widen(bias[blk + c, g, l])
            for s in range(1, S):
                for l in T.vectorized(L):
                    acc[s, r, c, g, l] = T.cast(0, acc_dtype)
        # A turned block (see ``recurrence``) is read in ``pieces`` ranges of k, last range first,
        # each upwards, which the hardware prefetcher streams. Only tiles of few rows (those that
        # split k) turn: they stream W_hh from L2, where wider tiles wait on their FMAs. The piece
        # bounds are constants once the piece loop is unrolled: with bounds computed at run time
        # (even read in order) LSTM 128's one-thread step was 11% slower, and with a constant trip
        # count from a start computed at run time RNN 128's was 16% slower.
        # (Python's ``and`` stops at a false constant, so with one piece or an unsplit k loop the
        # turned form is never built, and ``turn`` is tested at run time only where it matters.)
        if pieces > 1 and S > 1 and turn:
            for piece in T.unroll(pieces):
                for ko in range((pieces - 1 - piece) * (a.shape[1] // S) // pieces,
                                (pieces - piece) * (a.shape[1] // S) // pieces):
                    accumulate(nrows, n_blk, S, ko, row0, blk, a, w, acc)
        else:
            for ko in range(a.shape[1] // S):
                prefetch(ko * S, blk, w, ahead, ahead_line, other)
                accumulate(nrows, n_blk, S, ko, row0, blk, a, w, acc)
        if S > 1:
            for kr in range(a.shape[1] % S):
                k = T.bind(a.shape[1] // S * S + kr)
                for r in T.unroll(nrows):
                    for c in T.unroll(n_blk):
                        for g in T.unroll(G):
                            for l in T.vectorized(L):
                                acc[0, r, c, g, l] = acc[0, r, c, g, l] + widen(a[row0 + r, k]) * widen(
                                    w[blk + c, k, g, l])
            for r, c, g in T.grid(nrows, n_blk, G):
                for s in range(1, S):
                    for l in T.vectorized(L):
                        acc[0, r, c, g, l] = acc[0, r, c, g, l] + acc[s, r, c, g, l]
        for r, c, g in T.grid(nrows, n_blk, G):
            for l in T.vectorized(L):
                out[row0 + r, blk + c, g, l] = narrow(acc[0, r, c, g, l])

    @T.macro
    def wide_tile(row0, blk, a, w, bias, out, ahead=None, tile_index=0, other=None):
        # The wide tile's rows against block ``blk``, ``wide_gates`` gates at a time, each group one
        # pass over k: every row and gate summed as in a full tile (from the bias, k in order).
        # Each pass prefetches its own gate vector (``split_tile``'s ``ahead``).
        for group in T.unroll(G // wide_gates):
            acc = T.alloc_buffer((1, wide_rows, 1, wide_gates, L), acc_dtype, scope="local", annotations=ON_STACK)
            for r, g in T.grid(wide_rows, wide_gates):
                for l in T.vectorized(L):
                    acc[0, r, 0, g, l] = widen(bias[blk, group * wide_gates + g, l])
            for k in range(a.shape[1]):
                prefetch(k, blk, w, ahead, (tile_index * (G // wide_gates) + group) % G, other)
                accumulate(wide_rows, 1, 1, k, row0, blk, a, w, acc, group * wide_gates, wide_gates)
            for r, g in T.grid(wide_rows, wide_gates):
                for l in T.vectorized(L):
                    out[row0 + r, blk, group * wide_gates + g, l] = narrow(acc[0, r, 0, g, l])

    @T.macro
    def tile(nrows, row0, blk, a, w, bias, out, turn):
        split_tile(nrows, 1, ways[nrows], row0, blk, a, w, bias, out, turn)

    @T.macro
    def full_tiles(n_tiles, row0, blk, a, w, bias, out, turn, ahead=None, other=None, wide_only=False):
        # ``n_tiles`` full tiles of R rows from ``row0``, or as many of them as it can in wide
        # tiles first. Full tile i (or wide tile i's group j) prefetches gate vector i % G (or
        # that of group i * groups + j) of block ``ahead``, so that the first G bring all of it
        # into L2; likewise of block ``blk`` of ``other``. ``wide_only``: only wide tiles do.
        if wide is None:
            for i in range(n_tiles):
                split_tile(R, 1, ways[R], row0 + i * R, blk, a, w, bias, out, turn, None if wide_only else ahead, i % G,
                           None if wide_only else other)
        else:
            for i in range(n_tiles // (wide_rows // R)):
                wide_tile(row0 + i * wide_rows, blk, a, w, bias, out, ahead, i, other)
            for i in range(n_tiles % (wide_rows // R)):
                split_tile(R, 1, ways[R], row0 + (n_tiles - n_tiles % (wide_rows // R) + i) * R, blk, a, w, bias, out,
                           turn, None if wide_only else ahead, i % G, None if wide_only else other)

    @T.macro
    def blocks_row(n_blk, row, blk0, a, w, bias, out, turn):
        # One row against the n_blk blocks from blk0 in one k loop, each block's sums those of its
        # own 1-row tile bit for bit: one loop of n_blk times the independent FMA chains, where a
        # 1-row tile per block leaves each block's loop waiting on its few (``recurrence``).
        split_tile(1, n_blk, ways[1], row, blk0, a, w, bias, out, turn)

    @T.macro
    def tiles_of_4_2_1(rest, row0, blk, a, w, bias, out, split_k, turn):
        # (A tile of R rows or more is never part of a rest below R, and is not built: Python's
        # ``and`` stops at the false constant.)
        if R > 4 and rest >= 4:
            split_tile(4, 1, ways[4] if split_k else 1, row0, blk, a, w, bias, out, turn)
        if R > 2 and rest % 4 >= 2:
            split_tile(2, 1, ways[2] if split_k else 1, row0 + rest // 4 * 4, blk, a, w, bias, out, turn)
        if rest % 2 == 1:
            split_tile(1, 1, ways[1] if split_k else 1, row0 + rest // 2 * 2, blk, a, w, bias, out, turn)

    @T.macro
    def remainder(rest, row0, blk, a, w, bias, out, turn):
        tiles_of_4_2_1(rest, row0, blk, a, w, bias, out, True, turn)

    @T.macro
    def in_order(rest, row0, blk, a, w, bias, out, turn):
        tiles_of_4_2_1(rest, row0, blk, a, w, bias, out, False, turn)

    @T.macro
    def all_rows(n_out, blk, a, w, bias, out, ahead=None, other=None):
        # Full tiles from row 0, then the last ``n_out % R`` rows: each row's sums are in the same
        # order however the rows are split into calls, as long as every part but the last has a
        # multiple of R rows. Full tiles prefetch block ``ahead`` and ``other`` (``full_tiles``).
        rest = T.bind(n_out % R)
        full_tiles(n_out // R, 0, blk, a, w, bias, out, False, ahead, other)
        remainder(rest, n_out - rest, blk, a, w, bias, out, False)

    return tile, full_tiles, remainder, in_order, all_rows, blocks_row, ways


def projection(num_gates, output_size, dtype, lanes, rows, parallel, first_step=False, cores=1, wide=None):
    """PrimFunc ``project(x (M, K), w (NB, K, G, L), b (NB, G, L), xp (N, NB, G, L), first_row)``.

    ``xp[i] = x[first_row + i] @ W^T + b`` for i < N, with a (G*output_size, K) weight packed by
    :func:`.layout.pack_weight`. M, N and K are symbolic: the same GEMM serves every input size,
    and ``first_row`` lets a sequence be projected chunk by chunk into one small workspace.

    With ``first_step`` (``project_first``, on all cores) it also takes the recurrence's ``h
    (B, H)``, ``w_hh (NB, H, G, L)``, ``b_hh (NB, G, L)`` and ``hp (B, NB, G, L)``, and computes
    the chunk's first step's ``hp = h @ W_hh^T + b_hh`` block by block beside the projection,
    summed as the recurrence's step sums it; ``recur`` with ``hp_ready`` then skips that part of
    its first step. Where ``W_hh`` is not in cache at the chunk's start (hidden size 1024 at
    batch 1, where the weights of two layers outgrow the L3), the recurrence's first step waited
    on it from DRAM with nothing else to do; streamed here, it overlaps the projection's FMAs.

    The parallel ones run one task per core (``cores``), each with a range of whole blocks, and
    the blocks left over when they do not share out evenly (GRU 100's 7 blocks on 2 cores: 3 each
    and one left) split by row tiles among all the tasks.
    """
    G, L, R, H = num_gates, lanes, rows, output_size
    NB = num_blocks(output_size, lanes)
    element = np.dtype(dtype).itemsize
    P = cores
    whole, left = NB // P, NB % P  # whole blocks per task, and the blocks left over

    tile, _, remainder, _, all_rows, _, _ = _row_tiles(G, L, R, dtype, wide=wide)

    @T.macro
    def share_of_rows(task, n_out, blk, a, w, bias, out):
        # Task ``task``'s share of block ``blk``'s full row tiles, and the last task the rows past
        # them: every row in the tile ``all_rows`` gives it, so summed as every variant sums it.
        for t in range(task * (n_out // R) // P, (task + 1) * (n_out // R) // P):
            tile(R, t * R, blk, a, w, bias, out, False)
        if task == P - 1:
            remainder(n_out % R, n_out - n_out % R, blk, a, w, bias, out, False)

    if not first_step:

        @T.prim_func
        def project(x_h: T.handle, w_h: T.handle, b_h: T.handle, xp_h: T.handle, first_row: T.int32):
            T.func_attr({"global_symbol": "project", "tirx.noalias": True})
            # 64-bit sizes: with 32-bit ones each row of a tile computed its address anew every k
            # (``movslq``, ``lea``), and the AVX2 LSTM's wide tile ran at 132-142 GFLOP/s, not 161-166.
            n_m, n_k, n_out = T.int64(), T.int64(), T.int64()
            x = T.match_buffer(x_h, (n_m, n_k), dtype, align=element)
            w = T.match_buffer(w_h, (NB, n_k, G, L), dtype)
            b = T.match_buffer(b_h, (NB, G, L), dtype)
            xp = T.match_buffer(xp_h, (n_out, NB, G, L), dtype)
            rows_in = T.decl_buffer((n_out, n_k), dtype, data=x.data, elem_offset=first_row * n_k, align=element)
            # Each task runs every row against a block of weights while the block is in the core's
            # cache, so W is read from memory once per call (as in the recurrence's steps). Tasks
            # of (row tile, block) re-read all of W for every row tile: from DRAM when W does not
            # stay in L3 (W_ih beside W_hh at hidden size 1024), and even from cache they took
            # 10-25% longer, on every shape measured. Only the blocks left over after an even
            # share of whole blocks are split by row tiles, each read by every task: with a task
            # per block, 7 blocks on 2 cores ran 4 on one (GRU 100 -9% a call with the leftover
            # shared, GRU 40's 3 blocks -19%, LSTM 200's 13 -6%; docs/design.md).
            # The parallel one prefetches the task's next block while it runs the rows against this
            # one: where W comes from DRAM or L3 (hidden size 1024), the first row tile of each block
            # otherwise waits on it (LSTM 1024/1 -9%, GRU 1024/1 -6% a call, batches of 16-64 -2 to
            # -3%, others within 1%; a 2-layer GRU 1024/1 call -3 to -4%, docs/design.md). Not the
            # one-thread call, which runs small projections whose W is in cache: prefetching made
            # GRU 64's and 512's 42-70% slower.
            if parallel:
                for task in T.parallel(P):
                    for j in range(whole):
                        all_rows(n_out, task * whole + j, rows_in, w, b, xp, T.min(task * whole + j + 1, NB - 1))
                    for blk in range(NB - left, NB):
                        share_of_rows(task, n_out, blk, rows_in, w, b, xp)
            else:
                for blk in range(NB):
                    all_rows(n_out, blk, rows_in, w, b, xp)

        return project

    @T.prim_func
    def project_first(x_h: T.handle, w_h: T.handle, b_h: T.handle, xp_h: T.handle, first_row: T.int32,
                      h_h: T.handle, u_h: T.handle, rb_h: T.handle, hp_h: T.handle):
        T.func_attr({"global_symbol": "project_first", "tirx.noalias": True})
        n_m, n_k, n_out, n_b = T.int64(), T.int64(), T.int64(), T.int32()
        x = T.match_buffer(x_h, (n_m, n_k), dtype, align=element)
        w = T.match_buffer(w_h, (NB, n_k, G, L), dtype)
        b = T.match_buffer(b_h, (NB, G, L), dtype)
        xp = T.match_buffer(xp_h, (n_out, NB, G, L), dtype)
        h = T.match_buffer(h_h, (n_b, H), dtype)
        u = T.match_buffer(u_h, (NB, H, G, L), dtype)
        rb = T.match_buffer(rb_h, (NB, G, L), dtype)
        hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
        rows_in = T.decl_buffer((n_out, n_k), dtype, data=x.data, elem_offset=first_row * n_k, align=element)
        # The projection's tiles prefetch this block of W_hh as well as the next block of W_ih,
        # so that both stream in while the FMAs run: without, the h rows waited on W_hh after
        # them (GRU 1024 at batch 1, 25 steps, L3 flushed: 1425 us a call against 1274).
        for task in T.parallel(P):
            for j in range(whole):
                all_rows(n_out, task * whole + j, rows_in, w, b, xp, T.min(task * whole + j + 1, NB - 1), u)
                all_rows(n_b, task * whole + j, h, u, rb, hp)
            for blk in range(NB - left, NB):
                share_of_rows(task, n_out, blk, rows_in, w, b, xp)
                share_of_rows(task, n_b, blk, h, u, rb, hp)

    return project_first


def gather_steps(input_size, dtype):
    """PrimFunc ``gather(x (B, T, I), rows (N, I), first_step)``: ``rows[s * B + b] = x[b,
    first_step + s]`` for the N / B steps from ``first_step``, a chunk of a batch-first input as
    the time-major rows ``project`` reads. One thread: the copy of a chunk (a few hundred KB at
    most) is too short to pay for a parallel launch, and took 17-23 us on two threads against 17
    on one for RNN 40->128/32/100's four chunks. Rows are written in order, each row a run of
    ``input_size`` values known here, so it compiles to whole vector moves: 12-17 us where numpy
    took 22-28 for the transposing copy of the whole input."""
    I, element = input_size, np.dtype(dtype).itemsize

    @T.prim_func
    def gather(x_h: T.handle, rows_h: T.handle, first_step: T.int32):
        T.func_attr({"global_symbol": "gather", "tirx.noalias": True})
        n_b, n_t, n_rows = T.int32(), T.int32(), T.int32()
        x = T.match_buffer(x_h, (n_b, n_t, I), dtype, align=element)
        rows = T.match_buffer(rows_h, (n_rows, I), dtype)
        for s, b, i in T.grid(n_rows // n_b, n_b, I):
            rows[s * n_b + b, i] = x[b, first_step + s, i]

    return gather


def recurrence(mode, hidden_size, dtype, lanes, rows, split=None, parts=1, tiles_first=False, pieces=1,
               wide=None):
    """PrimFunc ``recur`` running ``n`` steps of one layer-direction (one chunk of a sequence).

    Arguments: ``xp (n, B, NB, G, L)`` from :func:`projection`, packed ``w (NB, H, G, L)`` and
    ``rb (NB, G, L)`` (``W_hh``, ``b_hh``), the state ``hs (2, B, H)`` (``h`` in ``hs[0]`` on entry
    and on exit; ``hs[1]`` is the other half of a double buffer), [LSTM: ``cs (B, H)``, the cell
    state, updated in place], the workspace ``hp (B, NB, G, L)`` (one step's
    ``h @ W_hh^T + b_hh``), the output ``y (T, B, YW)`` written at columns ``yoff .. yoff+H`` (so
    both directions of a bidirectional layer share one output), ``t0`` (the chunk's first time
    index), ``reverse`` (0 or 1) and ``hp_ready`` (1 when :func:`projection`'s ``project_first``
    has put the first step's ``h @ W_hh^T + b_hh`` in ``hp``, else 0; not taken with
    ``split="projection"``). Step s handles time ``t0 + s``, or ``t0 + n-1-s`` in reverse.

    ``split`` says how the work is spread over the thread pool:

    - None: one thread.
    - ``"hidden"``: the whole chunk is one parallel region of ``parts`` tasks (one per core, at
      most one per block); each task always owns the same range of hidden blocks (so its slice of
      ``W_hh`` stays in its core's cache) and the tasks meet at one barrier per step.
      Double-buffering ``h`` makes that single barrier enough.
    - ``"batch"``: ``parts`` tasks (one per core) each run the whole chunk for their own rows of
      the batch. Rows are independent sequences, so there is no barrier and no hidden state
      crosses cores; each core reads all of ``W_hh``, which pays where it fits in the core's cache.
    - ``"projection"``: one task runs the steps on one thread, as with None, while another
      projects the next part of the chunk (of ``sub`` steps) into ``xp``; they meet once per part.
      The function then takes the projection's arguments first: ``x (M, K)``, packed ``w_ih`` and
      ``b_ih``, ``first_row`` (the chunk's first row of x) and ``sub``, whose rows
      (``sub * B``) must be a multiple of ``rows`` for its answers to be those of ``project``
      (numbers in docs/design.md).
    """
    G, H, L, R = NUM_GATES[mode], hidden_size, lanes, rows
    NB = num_blocks(hidden_size, lanes)
    element = np.dtype(dtype).itemsize
    full_blocks, tail = H // L, H % L
    is_lstm = mode == "LSTM"
    if split not in (None, "hidden", "batch", "projection"):
        raise ValueError(f"split must be None, 'hidden', 'batch' or 'projection', got {split!r}")
    if split == "hidden":
        time_steps = functools.partial(T.serial, annotations={"pragma_parallel_launch_point": 1})
        hidden_tasks = functools.partial(T.parallel, annotations={"pragma_parallel_barrier_when_finish": 1})
    else:
        time_steps, hidden_tasks = T.serial, T.serial
    n_parts = parts if split == "batch" else 1
    n_tasks = min(parts, NB) if split == "hidden" else 1

    _, full_tiles, remainder, in_order, all_rows, blocks_row, ways = _row_tiles(G, L, R, dtype, pieces, wide)
    # A one-row step on one thread runs all blocks' tiles as one loop (``blocks_row``) where their
    # accumulators fit in those of a full tile (LSTM to 48, GRU to 64 units on AVX-512). Its step
    # waits on a chain of latencies with W_hh in L1 or close: LSTM 32/1 8-16% and GRU 32/1 24%
    # faster, GRU 64/1 4-8%. With more rows it stays per block: the last odd row fused this way
    # and the others in 2-row tiles per block made LSTM 33/3 5% slower (docs/design.md).
    fuse_blocks = n_tasks == 1 and n_parts == 1 and pieces == 1 and ways[1] * NB <= R

    # The blocks at either end of a hidden-split task's range: each step reads its range in the
    # other direction from the last (see ``step``), so the block read last in one step is read
    # first in the next, with the tail of its W_hh still in the core's L1 when the block is larger
    # than L1. On odd steps such a block is read last piece first, so that a step starts on the
    # weights still cached: the last piece of the even step, and on the next even step the first
    # piece, which the odd step read last. Every variant turns the same blocks on the same steps
    # (those of the hidden split, whichever variant runs), so all sum in the same order.
    def task_first(task, n):
        """The first block of task ``task`` of ``n`` (``NB`` for ``task == n``)."""
        return task * NB // n

    n_hidden = min(parts, NB)
    # Two blocks' 1-row tiles in one loop stream W_hh from L2 2-11% faster a step than one at a
    # time (RNN 256-512, LSTM 128); three or four were slower for RNN and LSTM (docs/design.md).
    # Only where their accumulators fit in a full tile's: beyond, they spill to the stack every k
    # (AVX2's 16 registers).
    unit = 2 if 2 * ways[1] <= R else 1

    def units(task):
        """The blocks of hidden-split task ``task``, as a one-row step of that split reads them:
        in ``unit``s from the first (``blocks_row``): pairs, the last alone where the count is
        odd, or one block at a time."""
        lo, hi = task_first(task, n_hidden), task_first(task + 1, n_hidden)
        return [list(range(b, min(b + unit, hi))) for b in range(lo, hi, unit)]

    # The blocks read first and last by each task (their units), so turned on odd steps.
    ends = sorted({b for t in range(n_hidden) for b in units(t)[0] + units(t)[-1]})

    def in_step_order(j, n, odd):
        """The ``j``-th of a task's ``n`` blocks (or units) as a step reads them: forwards on even
        steps, backwards on odd ones (see ``step``)."""
        return T.if_then_else(odd, n - 1 - j, j)

    def next_block(first, j, count, odd):
        """The block a step reads after its ``j``-th of ``count`` from ``first`` (the last one
        itself), for the wide tiles to prefetch: with all of a block's rows in wide tiles it
        waits long on its FMAs, and the next block's stream overlaps them (LSTM 1024/16/25 on
        AVX2 0.72-0.87x the time a call; docs/design.md). Not with tiles of R rows: LSTM 512/4/25
        took 1.08x as long with them prefetching."""
        return first + in_step_order(T.min(j + 1, count - 1), count, odd) if wide else None

    def turned(odd, blk):
        return tirx.And(odd, functools.reduce(tirx.Or, [blk == end for end in ends]))

    def computes_tiles(hp_ready, s):
        """Whether step ``s`` computes its ``h @ W_hh^T + b_hh`` (not if ``hp_ready`` says that
        ``project_first`` did, on step 0)."""
        return True if hp_ready is None else tirx.Or(hp_ready == 0, s != 0)

    def ordered_rows(n_b):
        """How many of the first rows the one-thread variant sums in full-tile order: its full
        tiles, and the first tiles of the rest that do not split k, those of more than R / 2 rows
        (the 4-row tile at rows 5-7, the 2-row tile at rows 3). It sums the rest, its last 1-3
        rows (up to 7 at rows = 8), with k split."""
        full = n_b // R * R
        unsplit = [size for size in REMAINDER_TILES if size < R and ways[size] == 1]
        # (One such tile at most: it has more than R / 2 rows.)
        return full + T.if_then_else(n_b % R >= unsplit[0], unsplit[0], 0) if unsplit else full

    def part_start(part, n_b, ordered):
        """First row of batch-split ``part`` (``n_b`` for ``part == n_parts``): an even share of the
        rows, except that the rows summed with k split all go to the last part."""
        even = (2 * part * n_b + n_parts) // (2 * n_parts)
        return T.if_then_else(part == n_parts, n_b, T.min(ordered, even))

    def activation(g, xp, hp, act, tt, b, blk, l):
        return gate(mode, g, xp[tt, b, blk, g, l], hp[b, blk, g, l], lambda k: act[k, l])

    @T.macro
    def gate_math(width, row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t):
        # Only ``width`` lanes are stored: a tail block's padding would spill into the next columns.
        act = T.alloc_buffer((G + is_lstm, L), dtype, scope="local", annotations=ON_STACK)
        for b in range(row0, row0 + n_rows):
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
            # vectorized wrongly by TVM 0.27 (every lane gets the last lane's value). The new cell
            # state goes to the scratch first, which LLVM keeps in a register, and tanh reads it
            # there: read back from ``cst`` after its store, LLVM loaded it again in pieces (lane 0
            # from the register, lanes 1, 2-3 and 4-7 from memory) right behind the whole-vector
            # store, and AVX2 LSTM gate math took about 15% longer in L1 (docs/design.md).
            if is_lstm:
                for l in T.vectorized(width):
                    act[G, l] = new_cell(lambda k: act[k, l], cst[b, blk * L + l])
                for l in T.vectorized(width):
                    cst[b, blk * L + l] = act[G, l]
            for l in T.vectorized(width):
                hnext[b, blk * L + l] = new_hidden(
                    mode, lambda k: act[k, l], hprev[b, blk * L + l], act[G, l] if is_lstm else None)
                y[t, b, yoff + blk * L + l] = hnext[b, blk * L + l]

    @T.macro
    def row_tiles(row0, n_rows, n_split, blk, hprev, w, rb, hp, turn, ahead):
        # Wide tiles prefetch block ``ahead`` (see ``step``).
        if n_parts == 1:  # (the general form below covers one part too, with tiles it never runs)
            full_tiles(n_rows // R, row0, blk, hprev, w, rb, hp, turn, ahead, None, True)
            rest = T.bind(n_rows % R)
            remainder(rest, row0 + n_rows - rest, blk, hprev, w, rb, hp, turn)
        else:
            # A part of the batch: first its rows that the one-thread variant sums in full-tile
            # order, in that order (full tiles, then tiles of 4, 2, 1 that do not split k), then
            # (the last part only) the ``n_split`` rows it sums with k split, in its tiles.
            n_ordered = T.bind(n_rows - n_split)
            full_tiles(n_ordered // R, row0, blk, hprev, w, rb, hp, turn, ahead, None, True)
            rest = T.bind(n_ordered % R)
            in_order(rest, row0 + n_ordered - rest, blk, hprev, w, rb, hp, turn)
            remainder(n_split, row0 + n_ordered, blk, hprev, w, rb, hp, turn)

    @T.macro
    def block_gates(row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t):
        # The gate math exists once (twice with a tail block), not once per tile shape.
        if tail == 0:
            gate_math(L, row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
        elif blk < full_blocks:
            gate_math(L, row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
        else:
            gate_math(tail, row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)

    @T.macro
    def all_gates(first, count, odd, row0, n_rows, xp, hp, hprev, hnext, y, yoff, cst, tt, t):
        # Every block's gate math, in the step's block order.
        for j in range(count):
            blk = T.bind(first + in_step_order(j, count, odd))
            block_gates(row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)

    @T.macro
    def step(row0, n_rows, n_split, xp, w, rb, hprev, hnext, hp, y, yoff, cst, tt, t, odd, tiles):
        # Each task (one unless split by hidden blocks) runs its own range of blocks, forwards
        # on even steps and backwards on odd ones: a range larger than the core's cache then
        # starts where the last step left off, on the blocks still cached. In one direction
        # every step, least-recently-used eviction drops each block just before it is read
        # again, and the whole range comes from the next level every step.
        # ``tiles_first``: every block's h @ W_hh^T first, then every block's gate math, so that
        # the gate math of one block overlaps that of the next; else block by block, so that the
        # weights streamed in for one block's tile overlap the previous block's gate math.
        # ``tiles`` (false only on a chunk's first step, when ``project_first`` has computed its
        # h @ W_hh^T into hp): whether to compute it.
        for task in hidden_tasks(n_tasks):
            first = T.bind(task_first(task, n_tasks))
            count = T.bind(task_first(task + 1, n_tasks) - first)
            if fuse_blocks and n_rows == 1:
                # The gate math of the few blocks unrolled, in one order every step (it reads no
                # weights, so the step's order does not matter to it): against a loop over them in
                # the step's order, LSTM 32/1 and 33/1 10-13% faster a step, GRU 32/1 and 64/1
                # 3-6%, LSTM 48/1 unchanged (docs/design.md).
                if tiles:
                    blocks_row(NB, row0, 0, hprev, w, rb, hp, False)
                for blk in T.unroll(NB):
                    block_gates(row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
            elif split == "hidden" and n_rows == 1:
                # The task's blocks in ``unit``s, each one k loop: those of ``units``, which says
                # which of them turn.
                n_units = T.bind((count + unit - 1) // unit)
                for j in range(n_units):
                    blk = T.bind(first + unit * in_step_order(j, n_units, odd))
                    n_blk = T.bind(T.min(unit, first + count - blk))
                    if tiles:
                        if unit == 2 and n_blk == 2:
                            blocks_row(2, row0, blk, hprev, w, rb, hp, turned(odd, blk))
                        else:
                            blocks_row(1, row0, blk, hprev, w, rb, hp, turned(odd, blk))
                    if not tiles_first:
                        for c in range(n_blk):
                            block_gates(row0, n_rows, blk + c, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
                if tiles_first:
                    all_gates(first, count, odd, row0, n_rows, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
            elif tiles_first:
                if tiles:
                    for j in range(count):
                        blk = T.bind(first + in_step_order(j, count, odd))
                        row_tiles(row0, n_rows, n_split, blk, hprev, w, rb, hp, turned(odd, blk), None)
                all_gates(first, count, odd, row0, n_rows, xp, hp, hprev, hnext, y, yoff, cst, tt, t)
            else:
                for j in range(count):
                    blk = T.bind(first + in_step_order(j, count, odd))
                    if tiles:
                        row_tiles(row0, n_rows, n_split, blk, hprev, w, rb, hp, turned(odd, blk),
                                  next_block(first, j, count, odd))
                    block_gates(row0, n_rows, blk, xp, hp, hprev, hnext, y, yoff, cst, tt, t)

    @T.macro
    def run_steps(first_s, n_run, row0, n_rows, n_split, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse,
                  hp_ready=None):
        # Steps first_s .. first_s + n_run - 1 of the chunk's n_s; with ``hp_ready`` true, step 0's
        # h @ W_hh^T + b_hh is in hp already.
        for i in time_steps(n_run):
            s = T.bind(first_s + i)
            tt = T.bind(T.if_then_else(reverse != 0, n_s - 1 - s, s))
            hprev = T.decl_buffer((n_b, H), dtype, data=hs.data, elem_offset=s % 2 * n_b * H)
            hnext = T.decl_buffer((n_b, H), dtype, data=hs.data, elem_offset=(s + 1) % 2 * n_b * H)
            step(row0, n_rows, n_split, xp, w, rb, hprev, hnext, hp, y, yoff, cst, tt, t0 + tt, s % 2 == 1,
                 computes_tiles(hp_ready, s))

    @T.macro
    def end_of_chunk(row0, n_rows, n_s, hs):
        if n_s % 2 == 1:  # the last step wrote hs[1]; the next chunk starts from hs[0]
            for b, j in T.grid(n_rows, H):
                hs[0, row0 + b, j] = hs[1, row0 + b, j]

    @T.macro
    def rows_time_loop(row0, n_rows, n_split, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse, hp_ready):
        run_steps(0, n_s, row0, n_rows, n_split, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse, hp_ready)
        end_of_chunk(row0, n_rows, n_s, hs)

    @T.macro
    def projecting_time_loop(x, wi, bi, first_row, sub, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0,
                             reverse):
        # Round c: task 0 projects part c of the chunk's steps (in the order the recurrence takes
        # them) while task 1 runs the steps of part c - 1, then both meet. Part j is the steps
        # j * sub .. min((j + 1) * sub, n_s) - 1 in time order; sub * n_b is a multiple of R, so
        # every row is projected exactly as ``project`` does it over the whole chunk.
        n_sub = T.bind((n_s + sub - 1) // sub)
        n_k = T.bind(x.shape[1])
        for c in T.serial(n_sub + 1, annotations={"pragma_parallel_launch_point": 1}):
            for task in T.parallel(2, annotations={"pragma_parallel_barrier_when_finish": 1}):
                if task == 0:
                    if c < n_sub:
                        j = T.bind(T.if_then_else(reverse != 0, n_sub - 1 - c, c))
                        n_out = T.bind((T.min(j * sub + sub, n_s) - j * sub) * n_b)
                        rows_in = T.decl_buffer((n_out, n_k), dtype, data=x.data,
                                                elem_offset=(first_row + j * sub * n_b) * n_k, align=element)
                        rows_out = T.decl_buffer((n_out, NB, G, L), dtype, data=xp.data,
                                                 elem_offset=j * sub * n_b * NB * G * L)
                        for blk in range(NB):
                            all_rows(n_out, blk, rows_in, wi, bi, rows_out)
                elif c > 0:
                    j = T.bind(T.if_then_else(reverse != 0, n_sub - c, c - 1))
                    lo = T.bind(j * sub)
                    hi = T.bind(T.min(lo + sub, n_s))
                    # The part's first step and step count, read back from the stack (see time_loop).
                    span = T.alloc_buffer((2,), "int32", scope="local", annotations=ON_STACK)
                    span[0] = T.if_then_else(reverse != 0, n_s - hi, lo)
                    span[1] = hi - lo
                    first_s, n_run = T.bind(span[0]), T.bind(span[1])
                    run_steps(first_s, n_run, 0, n_b, 0, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse)
        end_of_chunk(0, n_b, n_s, hs)

    @T.macro
    def time_loop(n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse, hp_ready):
        if n_parts == 1:
            rows_time_loop(0, n_b, 0, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse, hp_ready)
        else:
            # Even shares of the batch, each row summed in the same order as in the one-thread
            # variants (see row_tiles), so that every variant gives the same answer.
            # The part's first row, rows and rows with k split are read back from the stack:
            # TVM's simplifier sees through a value bound by T.bind to its definition, and with
            # these chains of if_then_else and min it took most of the module's compile time.
            # Stored, they are opaque to it: LSTM 128's recur_batch_parallel compiled in 0.45 s
            # rather than 1.24, recur_projecting (the same for its part's steps) in 0.84 rather
            # than 2.94, for the same answers at the same speed (docs/design.md).
            ordered = T.bind(ordered_rows(n_b))
            for part in T.parallel(n_parts):
                rows = T.alloc_buffer((3,), "int32", scope="local", annotations=ON_STACK)
                rows[0] = part_start(part, n_b, ordered)
                rows[1] = part_start(part + 1, n_b, ordered) - rows[0]
                rows[2] = T.if_then_else(part == n_parts - 1, n_b - ordered, 0)
                first, n_rows, n_split = T.bind(rows[0]), T.bind(rows[1]), T.bind(rows[2])
                rows_time_loop(first, n_rows, n_split, n_s, n_b, xp, w, rb, hs, cst, hp, y, yoff, t0, reverse,
                               hp_ready)

    if split == "projection" and is_lstm:

        @T.prim_func
        def recur(x_h: T.handle, wi_h: T.handle, bi_h: T.handle, first_row: T.int32, sub: T.int32,
                  xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle, cs_h: T.handle,
                  hp_h: T.handle, y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw, n_m, n_k = T.int32(), T.int32(), T.int32(), T.int32(), T.int64(), T.int64()
            x = T.match_buffer(x_h, (n_m, n_k), dtype, align=element)
            wi = T.match_buffer(wi_h, (NB, n_k, G, L), dtype)
            bi = T.match_buffer(bi_h, (NB, G, L), dtype)
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            cs = T.match_buffer(cs_h, (n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype, align=element)
            projecting_time_loop(x, wi, bi, first_row, sub, n_s, n_b, xp, w, rb, hs, cs, hp, y, yoff, t0, reverse)

    elif split == "projection":

        @T.prim_func
        def recur(x_h: T.handle, wi_h: T.handle, bi_h: T.handle, first_row: T.int32, sub: T.int32,
                  xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle,
                  hp_h: T.handle, y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw, n_m, n_k = T.int32(), T.int32(), T.int32(), T.int32(), T.int64(), T.int64()
            x = T.match_buffer(x_h, (n_m, n_k), dtype, align=element)
            wi = T.match_buffer(wi_h, (NB, n_k, G, L), dtype)
            bi = T.match_buffer(bi_h, (NB, G, L), dtype)
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype, align=element)
            projecting_time_loop(x, wi, bi, first_row, sub, n_s, n_b, xp, w, rb, hs, None, hp, y, yoff, t0, reverse)

    elif is_lstm:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle, cs_h: T.handle,
                  hp_h: T.handle, y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32, hp_ready: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw = T.int32(), T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            # The cell state is updated in place: each unit is read and written by one task only.
            cs = T.match_buffer(cs_h, (n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype, align=element)
            time_loop(n_s, n_b, xp, w, rb, hs, cs, hp, y, yoff, t0, reverse, hp_ready)

    else:

        @T.prim_func
        def recur(xp_h: T.handle, w_h: T.handle, rb_h: T.handle, hs_h: T.handle,
                  hp_h: T.handle, y_h: T.handle, yoff: T.int32, t0: T.int32, reverse: T.int32, hp_ready: T.int32):
            T.func_attr({"global_symbol": "recur", "tirx.noalias": True})
            n_s, n_b, n_t, yw = T.int32(), T.int32(), T.int32(), T.int32()
            xp = T.match_buffer(xp_h, (n_s, n_b, NB, G, L), dtype)
            w = T.match_buffer(w_h, (NB, H, G, L), dtype)
            rb = T.match_buffer(rb_h, (NB, G, L), dtype)
            hs = T.match_buffer(hs_h, (2, n_b, H), dtype)
            hp = T.match_buffer(hp_h, (n_b, NB, G, L), dtype)
            y = T.match_buffer(y_h, (n_t, n_b, yw), dtype, align=element)
            time_loop(n_s, n_b, xp, w, rb, hs, None, hp, y, yoff, t0, reverse, hp_ready)

    return recur
