"""How fast a batch-1 tile can stream its weights from L2, depending on what multiplies them.

    python scripts/l2_stream.py [--kib-per-core 512]

A TIR loop shaped like a batch-1 LSTM tile of ``kernels/recurrent.py`` (4 gates of 16 lanes, the k
loop split 4 ways into 16 accumulators kept in registers), on every core, each over its own
weights (sized to sit in its L2), read again and again. Only the multiplier changes: ``h[k]``
broadcast from memory (what the recurrence does), ``h[k]`` stored pre-broadcast as a vector, a
value computed from ``k``, and a constant. The best of 7 calls, as GB/s read by all cores, to
compare with the L2 bandwidth ``machine_limits.py`` measures by adding the weights up.

A second table keeps ``h[k]`` broadcast from memory and changes how many vectors (gates of 16
lanes) each ``h[k]`` multiplies, the k loop still split 4 ways: on Zen 5, 1 to 3 vectors (a GRU
block) streamed at 490-523 GB/s and 4 to 8 (an LSTM block, an RNN block of 64 lanes) at 264-320.
Reading the recurrence's blocks in pieces of 2 vectors did not carry that over to the layers, and the
k split this loop reads fastest with is not the one the layers step fastest with (2 ways); see
"Numbers and where they leave room" in ``docs/design.md``.
"""

import argparse

import numpy as np
import tvm
from tvm.script import tirx as T

from lucid_tvm.build import host_target
from lucid_tvm.kernels.recurrent import ON_STACK
from lucid_tvm.schedule import compile_module
from machine_limits import best_time, worker_count

GATES, SPLIT, REPEATS = 4, 4, 200
VECTORS_PER_K = (1, 2, 3, 4, 5, 6, 8)
MULTIPLIERS = {"h[k] broadcast from memory": 0, "h[k] pre-broadcast vector": 1,
               "computed from k": 2, "constant": 3}


def stream_kernel(kind, cores, blocks, k_size, lanes, gates=GATES):
    G, S = gates, SPLIT

    @T.prim_func
    def stream(w: T.Buffer((cores, blocks, k_size, G, lanes), "float32"), h: T.Buffer((cores, k_size), "float32"),
               hb: T.Buffer((cores, k_size, lanes), "float32"), out: T.Buffer((cores, blocks, G, lanes), "float32")):
        for task in T.parallel(cores):
            for _ in range(REPEATS):
                for b in range(blocks):
                    acc = T.alloc_buffer((S, G, lanes), "float32", scope="local", annotations=ON_STACK)
                    for s, g in T.grid(S, G):
                        for l in T.vectorized(lanes):
                            acc[s, g, l] = T.float32(0)
                    for ko in range(k_size // S):
                        for s in T.unroll(S):
                            for g in T.unroll(G):
                                for l in T.vectorized(lanes):
                                    if kind == 0:
                                        acc[s, g, l] = acc[s, g, l] + h[task, ko * S + s] * w[task, b, ko * S + s, g, l]
                                    elif kind == 1:
                                        acc[s, g, l] = acc[s, g, l] + hb[task, ko * S + s, l] * w[task, b, ko * S + s, g, l]
                                    elif kind == 2:
                                        acc[s, g, l] = acc[s, g, l] + T.Cast("float32", ko * S + s) * w[task, b, ko * S + s, g, l]
                                    else:
                                        acc[s, g, l] = acc[s, g, l] + T.float32(1.0001) * w[task, b, ko * S + s, g, l]
                    for g in T.unroll(G):
                        for l in T.vectorized(lanes):
                            out[task, b, g, l] = acc[0, g, l] + acc[1, g, l] + acc[2, g, l] + acc[3, g, l]

    return stream


def read_rate(kind, gates, cores, kib_per_core, target, lanes=16, k_size=256):
    """GB/s read by all cores, the best of 7 calls."""
    blocks = max(1, kib_per_core * 1024 // (k_size * gates * lanes * 4))
    arrays = (tvm.runtime.tensor(np.ones((cores, blocks, k_size, gates, lanes), np.float32)),
              tvm.runtime.tensor(np.ones((cores, k_size), np.float32)),
              tvm.runtime.tensor(np.ones((cores, k_size, lanes), np.float32)),
              tvm.runtime.empty((cores, blocks, gates, lanes), "float32"))
    kernel = stream_kernel(kind, cores, blocks, k_size, lanes, gates)
    function = compile_module(tvm.IRModule({"main": kernel}), target)["main"]
    return cores * blocks * k_size * gates * lanes * 4 * REPEATS / best_time(function, arrays) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib-per-core", type=int, default=512)
    args = parser.parse_args()
    target = host_target()
    cores = worker_count()
    print(f"{cores} cores, about {args.kib_per_core} KiB of weights per core, {GATES} vectors per k:")
    for name, kind in MULTIPLIERS.items():
        print(f"  multiplier {name:28s} {read_rate(kind, GATES, cores, args.kib_per_core, target):6.0f} GB/s")
    print("h[k] broadcast from memory, by vectors per k:")
    for vectors in VECTORS_PER_K:
        print(f"  {vectors} vectors per k {read_rate(0, vectors, cores, args.kib_per_core, target):6.0f} GB/s")


if __name__ == "__main__":
    main()
