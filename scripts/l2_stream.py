"""How fast a batch-1 tile can stream its weights from L2, depending on what multiplies them.

    python scripts/l2_stream.py [--kib-per-core 512]

A TIR loop shaped like a batch-1 LSTM tile of ``kernels/recurrent.py`` (4 gates of 16 lanes, the k
loop split 4 ways into 16 accumulators kept in registers), on every core, each over its own
weights (sized to sit in its L2), read again and again. Only the multiplier changes: ``h[k]``
broadcast from memory (what the recurrence does), ``h[k]`` stored pre-broadcast as a vector, a
value computed from ``k``, and a constant. The best of 7 calls, as GB/s read by all cores, to
compare with the L2 bandwidth ``machine_limits.py`` measures by adding the weights up. (With other
block lengths and k splits the same loop moved between 250 and 480 GB/s with either multiplier;
see "Numbers and where they leave room" in ``docs/design.md``.)
"""

import argparse
import os
import time

import numpy as np
import tvm
from tvm.script import tirx as T

from lucid_tvm.build import host_target
from lucid_tvm.kernels.recurrent import ON_STACK
from lucid_tvm.schedule import compile_module

GATES, SPLIT, REPEATS = 4, 4, 200
MULTIPLIERS = {"h[k] broadcast from memory": 0, "h[k] pre-broadcast vector": 1,
               "computed from k": 2, "constant": 3}


def stream_kernel(kind, cores, blocks, k_size, lanes):
    G, S = GATES, SPLIT

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib-per-core", type=int, default=512)
    args = parser.parse_args()
    target = host_target()
    cores = int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))
    lanes, k_size = 16, 256
    blocks = max(1, args.kib_per_core * 1024 // (k_size * GATES * lanes * 4))
    arrays = (tvm.runtime.tensor(np.ones((cores, blocks, k_size, GATES, lanes), np.float32)),
              tvm.runtime.tensor(np.ones((cores, k_size), np.float32)),
              tvm.runtime.tensor(np.ones((cores, k_size, lanes), np.float32)),
              tvm.runtime.empty((cores, blocks, GATES, lanes), "float32"))
    nbytes = cores * blocks * k_size * GATES * lanes * 4 * REPEATS
    print(f"{cores} cores, {nbytes // cores // REPEATS >> 10} KiB of weights per core:")
    for name, kind in MULTIPLIERS.items():
        function = compile_module(tvm.IRModule({"main": stream_kernel(kind, cores, blocks, k_size, lanes)}), target)["main"]
        function(*arrays)
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            function(*arrays)
            best = min(best, time.perf_counter() - start)
        print(f"  multiplier {name:28s} {nbytes / best / 1e9:6.0f} GB/s")


if __name__ == "__main__":
    main()
