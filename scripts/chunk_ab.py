"""Two settings of the projection chunk's size (``schedule.CHUNK_BYTES``, ``MAX_CHUNK_ROWS``) in one
process: whole calls of each layer, the settings alternated in blocks of calls (each block starts
from fresh workspaces), and the ratio of the second's median to the first's per pair of blocks.

    python scripts/chunk_ab.py [--bytes KB] [--rows N] [MODE:I:H:B:T:L[:bf] ...]

The first setting is the committed one; the second is ``--bytes`` KB and ``--rows`` rows at most.
"""

import argparse
import statistics
import time

import numpy as np

import lucid_tvm.nn as nn
from lucid_tvm import runtime, schedule
from scratch_ab import in_turn

SHAPES = ["RNN_TANH:40:128:32:100:1:bf", "LSTM:128:128:4:1000:1", "RNN_TANH:256:256:1:2000:1", "GRU:256:256:1:2000:1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--bytes", type=int, default=1024, help="KB of projected rows a chunk, at most")
    parser.add_argument("--rows", type=int, default=2048, help="rows a chunk, at most")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    settings = ((schedule.CHUNK_BYTES, schedule.MAX_CHUNK_ROWS), (args.bytes * 1024, args.rows))
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        mode, *sizes = shape.split(":")
        input_size, hidden, batch, steps, layers = map(int, sizes[:5])
        batch_first = len(sizes) > 5
        layer = nn.RNNBase(mode, input_size, hidden, num_layers=layers, batch_first=batch_first).eval()
        x = rng.standard_normal((batch, steps, input_size) if batch_first else (steps, batch, input_size))
        x = x.astype(np.float32)
        medians = ([], [])
        for block in range(args.blocks):
            for which in in_turn([0, 1], block):
                schedule.CHUNK_BYTES, schedule.MAX_CHUNK_ROWS = settings[which]
                runtime.release_workspaces()
                for _ in range(args.calls // 3):
                    layer(x)
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    layer(x)
                    times.append(time.perf_counter() - start)
                medians[which].append(statistics.median(times))
        schedule.CHUNK_BYTES, schedule.MAX_CHUNK_ROWS = settings[0]
        ratios = [b / a for a, b in zip(*medians)]
        print(f"{shape}: {statistics.median(medians[0]) * 1e6:.0f} -> {statistics.median(medians[1]) * 1e6:.0f} us, "
              f"ratio {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)


if __name__ == "__main__":
    main()
