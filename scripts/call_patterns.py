"""How a layer's call time depends on how it is called, beside the benchmark's fixed shape.

Two patterns of real use, each timed against its plain twin, interleaved in one process, medians
of microseconds per step, with the page faults per call (``getrusage``):

- ``dropped``: the caller drops each output at once (``model(x)`` in a loop), against keeping it
  until the next call. Freed buffers that glibc gives back to the system cost page faults on the
  next call (``runtime.between_layers``).
- ``varying``: sequence lengths alternating by a step or more, against one length. Each layer
  keeps one plan per batch size whatever the length (``runtime._Plan``).

    python scripts/call_patterns.py [--rounds 20]
"""

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lucid_tvm.nn as nn  # noqa: E402
from scratch_ab import in_turn  # noqa: E402

# (mode, layers, input size, hidden size, batch, lengths, batch_first)
CASES = [
    ("RNN_TANH", 2, 40, 128, 32, (100,), True),
    ("LSTM", 2, 40, 128, 32, (100,), True),
    ("LSTM", 1, 32, 32, 1, (50, 51), False),
    ("GRU", 1, 256, 256, 8, (100, 101), False),
    ("LSTM", 2, 256, 256, 16, (150, 151), False),
]
CALLS, SKIPPED = 25, 5  # calls per turn, and the first ones of each turn left out


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def turn(model, inputs, keep, steps):
    """One turn of CALLS calls on ``inputs`` in turn: microseconds per step of each call counted,
    and their page faults."""
    times, faulted, held = [], 0, [None]
    for i in range(CALLS):
        x = inputs[i % len(inputs)]
        before, start = faults(), time.perf_counter()
        out = model(x)
        elapsed = time.perf_counter() - start
        if i >= SKIPPED:
            times.append(elapsed * 1e6 / steps(x))
            faulted += faults() - before
        held[0] = out if keep else None  # kept until the next call's output replaces it
        del out
    return times, faulted


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print("| cell | L | I | H | B | T | bf | pattern | us a step | faults a call | plain twin: us a step | faults a call | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, layers, inputs, hidden, batch, lengths, batch_first in CASES:
        model = nn.RNNBase(mode, inputs, hidden, num_layers=layers, batch_first=batch_first).eval()
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((batch, t, inputs) if batch_first else (t, batch, inputs)).astype(np.float32)
              for t in lengths]
        if len(lengths) > 1:  # varying lengths, against the first length alone (outputs kept)
            pattern, twin = "varying", {"inputs": xs[:1], "keep": True}
            mine = {"inputs": xs, "keep": True}
        else:  # outputs dropped, against outputs kept
            pattern, twin = "dropped", {"inputs": xs, "keep": True}
            mine = {"inputs": xs, "keep": False}
        model(xs[0])  # compiles or loads, outside the timing
        steps = (lambda x: x.shape[1]) if batch_first else (lambda x: x.shape[0])
        times, faulted = {"mine": [], "twin": []}, {"mine": 0, "twin": 0}
        for round_ in range(args.rounds):  # the two interleaved, each going first in turn
            for name, how in in_turn([("mine", mine), ("twin", twin)], round_):
                t, f = turn(model, how["inputs"], how["keep"], steps)
                times[name] += t
                faulted[name] += f
        us, twin_us = (statistics.median(times[n]) for n in ("mine", "twin"))
        per_call = {n: faulted[n] / len(times[n]) for n in faulted}
        shown_lengths = ",".join(map(str, lengths))
        print(f"| {mode} | {layers} | {inputs} | {hidden} | {batch} | {shown_lengths} | {'y' if batch_first else 'n'} "
              f"| {pattern} | {us:.2f} | {per_call['mine']:.0f} | {twin_us:.2f} | {per_call['twin']:.0f} "
              f"| {us / twin_us:.2f} |", flush=True)


if __name__ == "__main__":
    main()
