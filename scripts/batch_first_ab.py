"""A batch-first input read in place against the same input copied time-major first, in one
process, call by call: median us per call and the ratio of the two per block of calls.

    python scripts/batch_first_ab.py [MODE:I:H:B:T:L ...]     e.g. RNN_TANH:40:128:32:100:1

"in place" is a batch-first module called with the (B, T, I) input; "copied" is a time-major module
with the same weights called with ``np.ascontiguousarray(x.transpose(1, 0, 2))``, the transposing
copy counted in its time (what the runtime did before reading batch-first inputs in place, and
still does where a chunk holds fewer steps than a tile has rows). Alternating the two call by call
is what separates a few percent from this shared VM's drift.
"""

import argparse
import statistics
import time

import numpy as np

import lucid_tvm.nn as nn

SHAPES = ["RNN_TANH:40:128:32:100:1", "RNN_RELU:40:128:32:100:2", "LSTM:40:128:32:100:1", "GRU:40:128:32:100:1",
          "RNN_TANH:64:64:8:200:1", "LSTM:512:512:64:25:1", "LSTM:1024:1024:64:25:1", "GRU:512:512:4:25:1"]
BLOCK = 50  # pairs of calls per block


def compare(spec, blocks):
    mode, *sizes = spec.split(":")
    input_size, hidden, batch, steps, layers = map(int, sizes)
    in_place = nn.RNNBase(mode, input_size, hidden, num_layers=layers, batch_first=True).eval()
    copied = nn.RNNBase(mode, input_size, hidden, num_layers=layers).eval()
    copied.load_state_dict(in_place.state_dict())
    x = np.random.default_rng(0).standard_normal((batch, steps, input_size)).astype(np.float32)
    calls = {"in place": lambda: in_place(x), "copied": lambda: copied(np.ascontiguousarray(x.transpose(1, 0, 2)))}
    got, want = (calls[name]()[0].numpy() for name in ("in place", "copied"))
    error = float(np.abs(got - want.transpose(1, 0, 2)).max())
    for _ in range(30):
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(blocks * BLOCK):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ratios = [statistics.median(times["in place"][i:i + BLOCK]) / statistics.median(times["copied"][i:i + BLOCK])
              for i in range(0, blocks * BLOCK, BLOCK)]
    median = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    print(f"| {spec} | {median['copied']:.1f} | {median['in place']:.1f} | {statistics.median(ratios):.3f} "
          f"| {min(ratios):.3f}-{max(ratios):.3f} | {error:.1e} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    print("| MODE:I:H:B:T:L | copied us | in place us | in place / copied (median of blocks) | range | max diff |")
    print("|---|---|---|---|---|---|")
    for spec in args.shapes:
        compare(spec, args.blocks)


if __name__ == "__main__":
    main()
