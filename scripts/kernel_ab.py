"""The kernels of an earlier revision against the working tree's, in one process, call by call.

    python scripts/kernel_ab.py REV [MODE:H:B:T ...]      e.g. python scripts/kernel_ab.py HEAD~1 LSTM:256:1:150

``lucid_tvm/kernels/recurrent.py`` as of git revision REV (with the working tree's other kernel
modules: gates, layout, spec, tvmscript) and as it is now are each built into a layer module for every shape
(input size = hidden size) and timed as ``scratch_ab.py`` times its two builds: every variant the
runtime may choose, alone on the same chunk, the two in turn, and their outputs compared bit for
bit. Timing two builds in turn inside one process is what separates a change of a few percent
from this VM's drift between runs.
"""

import argparse
import importlib.util
import inspect
import subprocess
import tempfile
from pathlib import Path

from lucid_tvm import barrier, build
from lucid_tvm.kernels import recurrent
from lucid_tvm.kernels.spec import NUM_GATES
from lucid_tvm.schedule import compile_module, default_schedule
from scratch_ab import compare

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["GRU:64:1:200", "LSTM:64:1:200", "RNN_TANH:256:1:150", "LSTM:256:1:150", "GRU:512:1:25",
          "LSTM:1024:1:25", "LSTM:128:32:100"]


def recurrent_at(rev, directory):
    """recurrent.py as of ``rev``, imported as a module (T.prim_func needs a source file)."""
    source = subprocess.run(["git", "show", f"{rev}:lucid_tvm/kernels/recurrent.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("from .", "from lucid_tvm.kernels.")  # its sibling modules, as they are now
    path = Path(directory) / "recurrent_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("recurrent_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "gather_steps"):  # before 790d226: lower_layer asks for it
        module.gather_steps = recurrent.gather_steps
    if "cores" not in inspect.signature(module.projection).parameters:  # before: a task per block
        projection = module.projection
        module.projection = lambda *args, cores=1, **kwargs: projection(*args, **kwargs)
    return module


def builds_from(sources):
    """A ``builds`` for ``scratch_ab.compare``: the layer's module from each kernels module."""
    def builds(spec, directory):
        target, modules = build.host_target(), {}
        for name, source in sources.items():
            build.recurrent = source  # the kernels module lower_layer builds from
            try:
                lowered = build.lower_layer(spec, default_schedule(target, NUM_GATES[spec.mode], spec.hidden_size,
                                                                   spec.dtype))
            finally:
                build.recurrent = recurrent
            path = f"{directory}/{spec.mode}{spec.hidden_size}_{name}.so"
            barrier.export_library(compile_module(lowered, target), path)
            modules[name] = barrier.load_module(path)
        return modules
    return builds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print("ns per step of the recurrence (one thread, split by hidden blocks, split by batch rows) and")
    print(f"us per call of one chunk's projection, {args.rev} -> the working tree:\n")
    print("| cell | H | B | steps | recur | recur_parallel | recur_batch_parallel | project us | project_parallel us | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        builds = builds_from({"rev": recurrent_at(args.rev, directory), "now": recurrent})
        for case in args.shapes:
            compare(case, args.calls, directory, builds)


if __name__ == "__main__":
    main()
