"""A batch-first layer (its first layer copies the input chunk by chunk with ``gather``) against the
same weights run time-major on a whole transposed copy of the input, the way before ``gather``.

    python scripts/batch_first_ab.py [--pairs 50] [--blocks 8] [MODE:I:H:B:T:L ...]

Whole calls, the two ways alternated call by call in one process (drift between runs of this VM
is larger than the difference); the ratio is the median over blocks of the ratio of the blocks'
medians. The two outputs are checked equal bit for bit first.
"""

import argparse
import statistics
import time

import numpy as np

from lucid_tvm import nn
from scratch_ab import in_turn

SHAPES = ["RNN_TANH:40:128:32:100:1", "RNN_RELU:40:128:32:100:2", "LSTM:40:128:32:100:1", "GRU:40:128:32:100:1",
          "GRU:512:512:4:25:1", "RNN_TANH:64:64:8:200:1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        mode, *sizes = shape.split(":")
        input_size, hidden, batch, steps, layers = map(int, sizes)
        batch_first = nn.RNNBase(mode, input_size, hidden, num_layers=layers, batch_first=True)
        time_major = nn.RNNBase(mode, input_size, hidden, num_layers=layers)
        time_major.load_state_dict(batch_first.state_dict())
        x = rng.standard_normal((batch, steps, input_size)).astype(np.float32)
        ways = (lambda: batch_first(x), lambda: time_major(np.ascontiguousarray(x.transpose(1, 0, 2))))
        a, b = (np.asarray(way()[0].numpy()) for way in ways)
        assert np.array_equal(a, b.transpose(1, 0, 2)), shape
        for _ in range(2 * args.pairs):
            for way in ways:
                way()
        ratios, medians = [], []
        for _ in range(args.blocks):
            times = ([], [])
            for pair in range(args.pairs):
                for way, kept in in_turn(list(zip(ways, times)), pair):
                    start = time.perf_counter()
                    way()
                    kept.append(time.perf_counter() - start)
            medians = [statistics.median(kept) for kept in times]
            ratios.append(medians[0] / medians[1])
        print(f"{shape}: gather {medians[0] * 1e6:.0f} us, whole copy {medians[1] * 1e6:.0f} us (last block); "
              f"ratio {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f} over blocks)", flush=True)


if __name__ == "__main__":
    main()
