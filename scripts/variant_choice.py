"""The runtime's choice between one thread and all (``runtime._Faster``) against the schedule's
fixed threshold, on layers near the threshold: median ms per call, the two alternated in blocks.

    python scripts/variant_choice.py            # this machine as it is
    python scripts/variant_choice.py --busy     # with one process spinning on a core meanwhile
    python scripts/variant_choice.py --each     # every recurrence variant, forced in turn

``--busy`` imitates a noisy neighbour on a shared VM, where a parallel step waits at its barrier
for the core the other process holds. ``--each`` times each compiled variant of the recurrence
(one thread, split by hidden blocks, split by batch rows, one thread while another core
projects) in the real call path, one call of each
in turn, on the shapes of ``EACH_SHAPES``.
"""

import argparse
import math
import multiprocessing
import statistics
import time

import numpy as np

import lucid_tvm.nn as nn
from lucid_tvm import runtime
from scratch_ab import in_turn

SHAPES = [("LSTM", 32, 16, 100), ("LSTM", 96, 2, 100), ("GRU", 160, 1, 150), ("LSTM", 192, 1, 150),
          ("RNN_TANH", 256, 1, 150), ("LSTM", 64, 8, 100), ("GRU", 256, 1, 150), ("LSTM", 512, 4, 25),
          ("GRU", 40, 32, 100)]
CALLS, UNTIMED = 60, 20
EACH_SHAPES = [("RNN_TANH", 40, 128, 32, 100), ("LSTM", 40, 128, 32, 100), ("GRU", 40, 128, 32, 100),
               ("LSTM", 64, 64, 8, 100), ("RNN_TANH", 256, 256, 16, 150), ("LSTM", 256, 256, 16, 150),
               ("GRU", 512, 512, 64, 25), ("LSTM", 32, 32, 1, 200), ("GRU", 64, 64, 1, 200), ("LSTM", 33, 33, 3, 50),
               ("RNN_TANH", 32, 32, 1, 200)]


def spin():
    while True:
        pass


def block_ms(layer, x, fixed):
    """Times of CALLS - UNTIMED calls after UNTIMED ones, from a fresh workspace and choice."""
    runtime.release_workspaces()
    runtime._Faster.FIRST_GAP = 10**9 if fixed else 16  # never try another variant: the fixed rule
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - start)
    return times[UNTIMED:]


def each_variant(calls=40):
    """Median ms per call of each recurrence variant, forced in turn, for EACH_SHAPES."""
    rng = np.random.default_rng(0)
    print(f"median ms per call of {calls}, each recurrence variant forced, one call of each in turn")
    for mode, input_size, hidden, batch, steps in EACH_SHAPES:
        layer = nn.RNNBase(mode, input_size, hidden).eval()
        x = rng.standard_normal((steps, batch, input_size)).astype(np.float32)
        layer(x)
        kernel = layer.layers[0]._kernel()
        recur = runtime._plans.__dict__[kernel.identity].run_chunk
        names = [runner.name for runner in recur.variants]
        times = {name: [] for name in names}
        for _ in range(calls):
            for index, name in enumerate(names):
                recur.current, recur.countdown = index, math.inf
                start = time.perf_counter()
                layer(x)
                times[name].append(time.perf_counter() - start)
        print(f"{mode:8s} {input_size:4d}->{hidden:4d} B={batch:2d} T={steps:3d} | " +
              " | ".join(f"{name} {statistics.median(t) * 1e3:8.4f}" for name, t in times.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--each", action="store_true", help="time every recurrence variant, forced")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.each:
        return each_variant()
    busy = multiprocessing.Process(target=spin, daemon=True) if args.busy else None
    if busy:
        busy.start()
    first_gap = runtime._Faster.FIRST_GAP
    rng = np.random.default_rng(0)
    print(f"median ms per call, {args.rounds} rounds of {CALLS - UNTIMED} calls each"
          f"{', one core busy' if busy else ''}")
    try:
        for mode, hidden, batch, steps in SHAPES:
            layer = nn.RNNBase(mode, hidden, hidden).eval()
            x = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
            layer(x)
            times = {True: [], False: []}
            for round_ in range(args.rounds):
                for fixed in in_turn([True, False], round_):
                    times[fixed] += block_ms(layer, x, fixed)
            fixed, adaptive = (statistics.median(times[k]) * 1e3 for k in (True, False))
            print(f"{mode:8s} H={hidden:4d} B={batch:2d} T={steps:3d} | fixed threshold {fixed:7.3f} | "
                  f"measured choice {adaptive:7.3f} | {fixed / adaptive:5.2f}x")
    finally:
        runtime._Faster.FIRST_GAP = first_gap
        if busy:
            busy.terminate()


if __name__ == "__main__":
    main()
