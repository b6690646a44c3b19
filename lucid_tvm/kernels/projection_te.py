"""The input projection of one chunk of rows as a tensor expression, for meta_schedule to tune.

Same computation and packed layout as :func:`.recurrent.projection` (a drop-in for one chunk),
but with every size static, since a tuned schedule is specific to one shape:

    xp[i, blk, g, l] = sum_k x[i, k] * w[blk, k, g, l] + b[blk, g, l]     for i < rows

``x`` holds exactly the chunk's rows (the runtime passes the chunk, not the whole sequence);
``w`` and ``b`` are packed by :func:`.layout.pack_weight` / :func:`.layout.pack_bias`.
"""

from tvm import te

from .layout import num_blocks


def projection_te(rows, input_size, output_size, num_gates, lanes, dtype):
    """The PrimFunc ``(x (rows, K), w (NB, K, G, L), b (NB, G, L), xp (rows, NB, G, L))``."""
    for name, value in (("rows", rows), ("input_size", input_size), ("output_size", output_size),
                        ("num_gates", num_gates), ("lanes", lanes)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"projection_te: {name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"projection_te: {name} must be at least 1, got {value}")
    nb, G, L, K = num_blocks(output_size, lanes), num_gates, lanes, input_size
    x = te.placeholder((rows, K), dtype, name="x")
    w = te.placeholder((nb, K, G, L), dtype, name="w")
    b = te.placeholder((nb, G, L), dtype, name="b")
    k = te.reduce_axis((0, K), name="k")
    acc = te.compute((rows, nb, G, L),
                     lambda i, blk, g, l: te.sum(x[i, k] * w[blk, k, g, l], axis=k), name="acc")
    xp = te.compute((rows, nb, G, L), lambda i, blk, g, l: acc[i, blk, g, l] + b[blk, g, l], name="xp")
    return te.create_prim_func([x, w, b, xp])
