"""One recurrence variant of a layer under several schedules (lanes x rows), timed in turn.

    python scripts/step_schedules.py RNN_TANH:128:32:32 recur_batch_parallel 64x6 32x8 16x8
    python scripts/step_schedules.py GRU:256:1:150 recur_parallel 16x8x1 16x8x3

The layer is MODE:H:B:STEPS (input size = hidden size). For each LANESxROWS[xPIECES] the variant is
compiled from the working tree with the other knobs of the default schedule, its weights packed
for those lanes, and run on the same projected steps; the schedules go call by call in turn,
each first in its turn (``scratch_ab.in_turn``). Prints ns per step and each output's largest
difference from the first schedule's: other rows or lanes sum in another order, so a few ulps
apart, not equal. It answers whether the default schedule suits a shape, which ``kernel_ab.py``
(two revisions of the kernels under one schedule) does not.
"""

import argparse
import dataclasses
import statistics
import tempfile
import time

import numpy as np
import tvm

from lucid_tvm import barrier, build, runtime
from lucid_tvm.kernels import layout, recurrent
from lucid_tvm.kernels.spec import NUM_GATES
from lucid_tvm.schedule import compile_module, default_schedule
from scratch_ab import in_turn, parse_case

SPLITS = {"recur": None, "recur_parallel": "hidden", "recur_batch_parallel": "batch"}


def variant_call(mode, hidden, batch, steps, schedule, split, directory):
    """``(run, y)``: ``run()`` computes ``steps`` steps from a zero state into ``y``."""
    gates, lanes = NUM_GATES[mode], schedule.lanes
    rng = np.random.default_rng(0)  # the same weights and inputs for every schedule
    w_hh = 0.1 * rng.standard_normal((gates * hidden, hidden)).astype(np.float32)
    b_hh = 0.1 * rng.standard_normal(gates * hidden).astype(np.float32)
    xp_rows = rng.standard_normal((steps * batch, gates * hidden)).astype(np.float32)
    function = recurrent.recurrence(mode, hidden, "float32", lanes, schedule.rows, split, schedule.cores,
                                    schedule.tiles_first, schedule.pieces, schedule.wide)
    path = f"{directory}/{mode}{hidden}_{lanes}x{schedule.rows}x{schedule.pieces}.so"
    module = compile_module(tvm.IRModule({"recur": function.with_attr("global_symbol", "recur")}),
                            build.host_target())
    barrier.export_library(module, path)
    recur = barrier.load_module(path)["recur"]
    blocks = layout.num_blocks(hidden, lanes)
    w = layout.pack_weight(w_hh, gates, hidden, lanes, "float32", runtime.aligned_empty)
    rb = layout.pack_bias(b_hh, gates, hidden, lanes, "float32", runtime.aligned_empty)
    # A projected row has the packed layout of a bias, (NB, G, L).
    xp = runtime.aligned(np.reshape([layout.pack_bias(row, gates, hidden, lanes, "float32") for row in xp_rows],
                                    (steps, batch, blocks, gates, lanes)), np.float32)
    states = [runtime.aligned_empty((2, batch, hidden), np.float32)]
    if mode == "LSTM":
        states.append(runtime.aligned_empty((batch, hidden), np.float32))
    hp = runtime.aligned_empty((batch, blocks, gates, lanes), np.float32)
    y = np.zeros((steps, batch, hidden), np.float32)
    args = [runtime._dl(a) for a in (xp, w, rb, *states, hp)] + [y, 0, 0, 0, 0]  # yoff, t0, reverse, hp_ready

    def run():
        for state in states:
            state.fill(0)
        recur(*args)
    return run, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", help="MODE:H:B:STEPS, e.g. RNN_TANH:128:32:32")
    parser.add_argument("variant", choices=sorted(SPLITS))
    parser.add_argument("schedules", nargs="+", help="LANESxROWS or LANESxROWSxPIECES, e.g. 64x6")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    mode, hidden, batch, steps = parse_case(args.shape)
    default = default_schedule(build.host_target(), NUM_GATES[mode], hidden, "float32")
    print(f"default: {default}")
    with tempfile.TemporaryDirectory() as directory:
        calls = {}
        for text in args.schedules:
            lanes, rows, *pieces = (int(v) for v in text.split("x"))
            # (The default wide tile is a multiple of the default rows: none with other rows.)
            schedule = dataclasses.replace(default, lanes=lanes, rows=rows,
                                           pieces=pieces[0] if pieces else default.pieces,
                                           wide=default.wide if rows == default.rows else None)
            calls[text] = variant_call(mode, hidden, batch, steps, schedule, SPLITS[args.variant], directory)
        times = {text: [] for text in calls}
        for call in range(args.calls):
            for text, (run, _) in in_turn(list(calls.items()), call):
                start = time.perf_counter()
                run()
                times[text].append(time.perf_counter() - start)
    first = next(iter(calls.values()))[1]
    for text, (_, y) in calls.items():
        step_ns = statistics.median(times[text][args.calls // 10:]) / steps * 1e9
        print(f"{text:>6s}: {step_ns:7.0f} ns a step, max difference from {args.schedules[0]} "
              f"{np.abs(y - first).max():.1e}")


if __name__ == "__main__":
    main()
