"""Where a sequence layer's call goes: each compiled kernel's time inside real calls, and the rest.

    python scripts/call_parts.py LSTM:2:1024:1024:1:25 GRU:1:256:256:1:150 [--calls 60]
    python scripts/call_parts.py --full       # the benchmark's shapes (--extra: the shapes it adds)

Every compiled function of the layer's kernels (``LayerKernel.functions``: the projections, the
recurrence variants, ``gather``) is wrapped with a timer before the first call, and the layer is
then called as a user calls it, again and again on one input. ``kernel_ab.py`` times one kernel
alone on a chunk whose weights stay in cache; here each kernel runs with the caches as the call
leaves them. A stack whose weights outgrow the L3, for one, reads each layer's from DRAM again.

For each kernel (the layer kind: its input and hidden size) and function, the median ms a call
spends in it, over the calls that ran it, how many times such a call runs it (once per layer
and chunk) and in how many calls it ran (``runtime._Faster`` tries the other variants now and
then); then the median call, the median of its kernels' sum, and the rest: Python, allocation,
the state copies.
"""

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import lucid_tvm.nn as nn
from lucid_tvm import runtime

sys.path.insert(0, str(Path(__file__).parent))
from cases import EXTRA_CASES, FULL_CASES, parse_shape  # noqa: E402


# Each timed function appends ``((kernel, function), seconds)`` here. The runtime keeps what it made
# from a kernel's functions across layers and calls (``runtime._choice``), so a kernel's functions
# are wrapped once, for every shape that uses it, and all log to this list.
LOG = []


def time_functions(kernel, label):
    """Wrap ``kernel``'s compiled functions, once, to log their times as ``label``'s."""
    if getattr(kernel, "timed_by_call_parts", False):
        return

    def wrap(name, function):
        def call(*args):
            start = time.perf_counter()
            function(*args)
            LOG.append(((label, name), time.perf_counter() - start))
        return call

    kernel.functions = {name: wrap(name, function) for name, function in kernel.functions.items()}
    kernel.timed_by_call_parts = True


def call_parts(case, calls):
    """(median call seconds, median kernels' seconds, {(kernel, function): [(seconds, runs) per call
    that ran it]})."""
    layer = nn.RNNBase(case.mode, case.input_size, case.hidden, num_layers=case.layers,
                       batch_first=case.batch_first).eval()
    # Before the first call: the runtime's variants keep the functions they are made with.
    for input_size in {case.input_size, case.hidden} if case.layers > 1 else {case.input_size}:
        time_functions(runtime.layer_kernel(case.mode, input_size, case.hidden, "float32"),
                       f"{input_size}->{case.hidden}")
    shape = (case.batch, case.steps) if case.batch_first else (case.steps, case.batch)
    x = np.random.default_rng(0).standard_normal((*shape, case.input_size)).astype(np.float32)
    for _ in range(max(3, calls // 4)):  # compile, allocate, let the runtime settle its choices
        layer(x)
    totals, kernels, parts = [], [], collections.defaultdict(list)
    for _ in range(calls):
        LOG.clear()
        start = time.perf_counter()
        layer(x)
        totals.append(time.perf_counter() - start)
        kernels.append(sum(seconds for _, seconds in LOG))
        seconds, count = collections.Counter(), collections.Counter()
        for key, elapsed in LOG:
            seconds[key] += elapsed
            count[key] += 1
        for key in seconds:
            parts[key].append((seconds[key], count[key]))
    return statistics.median(totals), statistics.median(kernels), parts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", type=parse_shape, metavar="MODE:L:I:H:B:T[:bf]")
    parser.add_argument("--full", action="store_true", help="the benchmark's --full shapes")
    parser.add_argument("--extra", action="store_true", help="the benchmark's --extra shapes")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per shape")
    args = parser.parse_args()
    cases = args.shapes + (FULL_CASES if args.full else []) + (EXTRA_CASES if args.extra else [])
    if not cases or args.calls < 1:
        parser.error("name at least one shape (or --full, --extra), and --calls of at least 1")
    for case in cases:
        call, kernels, parts = call_parts(case, args.calls)
        print(f"{case.mode} {case.layers} x {case.input_size}->{case.hidden}, batch {case.batch}, "
              f"{case.steps} steps{', batch-first' if case.batch_first else ''}: call {call * 1e3:.3f} ms, "
              f"kernels {kernels * 1e3:.3f}, the rest {(call - kernels) * 1e3:.3f}")
        for (kernel, name), values in sorted(parts.items()):
            seconds, runs = zip(*values)
            print(f"    {kernel:>11s} {name:22s} {statistics.median(seconds) * 1e3:8.3f} ms, "
                  f"runs a call: {statistics.median(runs):g}, in {len(values)} of {args.calls} calls")


if __name__ == "__main__":
    main()
