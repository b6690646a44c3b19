"""The recurrence of an earlier revision against the working tree's, in one process, call by call.

    python scripts/kernel_ab.py REV [MODE:H:B:T ...]      e.g. python scripts/kernel_ab.py HEAD~1 LSTM:256:1:150

``lucid_tvm/kernels/recurrent.py`` as of git revision REV (with the working tree's other kernel
modules: gates, layout, spec) and as it is now are each built into a layer module for every shape
(input size = hidden size) and linked with our barrier. Every recurrence variant then runs alone
on the same projected chunk, the two builds in turn; prints the medians in ns per step and
whether all outputs agree bit for bit. Timing two builds in turn inside one process is what
separates a change of a few percent from this VM's drift between runs.
"""

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from lucid_tvm import barrier, build, runtime
from lucid_tvm.kernels import recurrent
from lucid_tvm.kernels.spec import LayerSpec, NUM_GATES
from lucid_tvm.schedule import compile_module, default_schedule

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["GRU:64:1:200", "LSTM:64:1:200", "RNN_TANH:256:1:150", "LSTM:256:1:150", "GRU:512:1:25",
          "LSTM:1024:1:25", "LSTM:128:32:100"]
VARIANTS = ("recur", "recur_parallel", "recur_batch_parallel")


def recurrent_at(rev, directory):
    """recurrent.py as of ``rev``, imported as a module (T.prim_func needs a source file)."""
    source = subprocess.run(["git", "show", f"{rev}:lucid_tvm/kernels/recurrent.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    for name in ("gates", "layout", "spec"):
        source = source.replace(f"from .{name} import", f"from lucid_tvm.kernels.{name} import")
    path = Path(directory) / "recurrent_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("recurrent_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev")
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--calls", type=int, default=30000, help="steps timed per variant and build")
    args = parser.parse_args()
    target, directory = build.host_target(), tempfile.mkdtemp()
    sources = {args.rev: recurrent_at(args.rev, directory), "now": recurrent}
    for shape in args.shapes:
        mode, hidden, batch, steps = shape.split(":")
        hidden, batch, steps = int(hidden), int(batch), int(steps)
        spec, gates = LayerSpec(mode, hidden, hidden, "float32"), NUM_GATES[mode]
        libraries = {}
        for name, source in sources.items():
            build.recurrent = source  # lower_layer's kernels module
            module = build.lower_layer(spec, default_schedule(target, gates, hidden, "float32"))
            path = str(Path(directory) / f"{mode}{hidden}_{len(libraries)}.so")
            barrier.export_library(compile_module(module, target), path)
            libraries[name] = barrier.load_module(path)
        build.recurrent = recurrent
        kernel = runtime.layer_kernel(mode, hidden, hidden, "float32")
        rng = np.random.default_rng(0)
        packed = kernel.pack(*(0.1 * rng.standard_normal(s).astype(np.float32)
                               for s in ((gates * hidden, hidden),) * 2 + ((gates * hidden,),) * 2))
        plan = kernel._plan(batch)
        chunk, _ = plan.fit(steps)
        _, xp_rows, xp_steps = plan.chunk(chunk)
        x = rng.standard_normal((chunk * batch, hidden)).astype(np.float32)
        libraries["now"]["project"](runtime._dl_io(x), packed[0], packed[1], xp_rows, 0)
        y = np.zeros((chunk, batch, hidden), np.float32)
        out = runtime._dl_io(y)
        names = [n for n in VARIANTS if n in kernel.functions]
        times = {(build_name, n): [] for n in names for build_name in libraries}
        outputs = {}
        for call in range(max(60, args.calls // chunk)):
            for n in names:
                for build_name, library in libraries.items():
                    if call == 0:  # the same initial state for the outputs compared
                        plan.hs[...] = 0
                        if plan.cs is not None:
                            plan.cs[...] = 0
                    start = time.perf_counter()
                    library[n](xp_steps, packed[2], packed[3], *plan.state, plan.hp_tensor, out, 0, 0, 0)
                    times[build_name, n].append(time.perf_counter() - start)
                    if call == 0:
                        outputs[build_name, n] = y.copy()
        reference = next(iter(outputs.values()))
        same = all(np.array_equal(o, reference) for o in outputs.values())
        cells = [f"{n}: " + " -> ".join(f"{statistics.median(times[b, n][20:]) / chunk * 1e9:.0f}" for b in libraries)
                 for n in names]
        print(f"{shape:18s} ns/step {args.rev} -> now | " + " | ".join(cells) + (" | same" if same else " | DIFFERENT"),
              flush=True)


if __name__ == "__main__":
    main()
