"""Tile scratch on the stack (how ``lucid_tvm.build`` compiles) against TVM's default passes, which
turn each tile's accumulators and gate values into TVMBackendAllocWorkspace / FreeWorkspace calls.

    python scripts/scratch_ab.py [--calls 300] [MODE:H:B:T ...]

For each layer (input size = hidden size) the same TIR is compiled both ways and linked with our
barrier. Every variant of the recurrence the runtime may choose for that batch, and both input
projections of one chunk, run alone, the two builds call by call in turn; medians per step (per
call for the projections) and the build's outputs compared bit for bit.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import tvm

from lucid_tvm import barrier, build, runtime
from lucid_tvm.kernels.spec import LayerSpec, NUM_GATES
from lucid_tvm.schedule import compile_module, default_schedule

SHAPES = ["LSTM:32:1:200", "GRU:64:1:200", "RNN_TANH:256:1:150", "LSTM:256:1:150", "GRU:128:4:1000",
          "LSTM:128:4:200", "RNN_TANH:128:32:100", "LSTM:1024:1:25", "GRU:512:64:25"]
# (recur_projecting, which projects as it goes, takes the projection's arguments too: not timed here.)
RECURRENCES = ("recur", "recur_parallel", "recur_batch_parallel")
PROJECTIONS = ("project", "project_parallel")


def parse_case(text):
    """``MODE:H:B:T`` (input size = hidden size) -> (mode, hidden, batch, steps)."""
    mode, hidden, batch, steps = text.split(":")
    return mode, int(hidden), int(batch), int(steps)


def in_turn(items, i):
    """``items`` rotated by ``i``: timed side by side, each goes first in turn (whichever runs
    later in a round can find the buffers they share already in cache)."""
    i %= len(items)
    return items[i:] + items[:i]


def builds(spec, directory):
    """The layer's module compiled with TVM's default passes and as lucid_tvm compiles it."""
    target = build.host_target()
    lowered = build.lower_layer(spec, default_schedule(target, NUM_GATES[spec.mode], spec.hidden_size, spec.dtype))
    modules = {}
    for name, compile in (("workspaces", lambda: tvm.tirx.build(lowered, target=target)),
                          ("stack", lambda: compile_module(lowered, target))):
        path = f"{directory}/{spec.mode}{spec.hidden_size}_{name}.so"
        barrier.export_library(compile(), path)
        modules[name] = barrier.load_module(path)
    return modules


def compare(case, calls, directory, builds=builds):
    """Prints a table row for ``case`` (MODE:H:B:T): the two modules ``builds(spec, directory)``
    returns (before, after), called in turn."""
    mode, hidden, batch, steps = parse_case(case)
    spec, gates = LayerSpec(mode, hidden, hidden, "float32"), NUM_GATES[mode]
    modules = builds(spec, directory)
    kernel = runtime.layer_kernel(mode, hidden, hidden, "float32")
    rng = np.random.default_rng(0)
    weights = kernel.pack(*(0.1 * rng.standard_normal(shape).astype(np.float32)
                            for shape in ((gates * hidden, hidden), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,))))
    plan = kernel._plan(batch)
    chunk, _ = plan.fit(steps)
    _, xp_rows, xp_steps = plan.chunk(chunk)
    x = rng.standard_normal((chunk * batch, hidden)).astype(np.float32)
    y = np.zeros((chunk, batch, hidden), np.float32)
    recurrences = [n for n in RECURRENCES if n in kernel.recurrences(batch)]

    def project(module, name):
        module[name](x, weights[0], weights[1], xp_rows, 0)

    def recur(module, name):
        # hp_ready = 0 (every step computes its own h @ W_hh^T); kernels from before project_first
        # do not take it.
        ready = (0,) if runtime._has(module, "project_first") else ()
        module[name](xp_steps, weights[2], weights[3], *plan.state, plan.hp_tensor, y, 0, 0, 0, *ready)

    project(list(modules.values())[-1], "project")  # the "after" build projects the chunk for both
    answers = {}
    for built, module in modules.items():
        for name in recurrences:
            plan.hs.fill(0)
            if plan.cs is not None:
                plan.cs.fill(0)
            recur(module, name)
            answers[built, name] = y.copy()
    first = next(iter(answers.values()))
    same = all(np.array_equal(a, first) for a in answers.values())

    times = {(built, name): [] for built in modules for name in recurrences + list(PROJECTIONS)}
    # The two builds take turns going first: with the same kernels in both, the one that ran
    # second in every pair ran 1-5% faster (the first brings the shared buffers into cache).
    pairs = list(modules.items())
    for call in range(calls):
        for name in recurrences + list(PROJECTIONS):
            for built, module in in_turn(pairs, call):
                run = project if name in PROJECTIONS else recur
                start = time.perf_counter()
                run(module, name)
                times[built, name].append(time.perf_counter() - start)

    def cell(name, per):
        before, after = (statistics.median(times[b, name][calls // 10:]) / per * 1e9 for b in modules)
        return f"{before:.0f} -> {after:.0f} ({after / before - 1:+.0%})"

    print(f"| {mode} | {hidden} | {batch} | {chunk} | "
          + " | ".join(cell(n, chunk) if n in recurrences else "" for n in RECURRENCES) + " | "
          + " | ".join(cell(n, 1000) for n in PROJECTIONS) + f" | {'yes' if same else 'NO'} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print("ns per step of the recurrence (one thread, split by hidden blocks, split by batch rows) and")
    print("us per call of one chunk's projection, TVM's default passes -> scratch on the stack:\n")
    print("| cell | H | B | steps | recur | recur_parallel | recur_batch_parallel | project us | project_parallel us | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for case in args.shapes:
            compare(case, args.calls, directory)


if __name__ == "__main__":
    main()
