"""Measure this machine's limits for recurrent layers: FMA peak and read bandwidth per cache level.

    python scripts/machine_limits.py          # prints the numbers, writes docs/perf/machine.json
    python scripts/machine_limits.py -o FILE  # ... writes FILE instead

How: small TIR kernels compiled for this CPU, run on every core at once (one task per core):

- FMA peak: the best rate of lucid_tvm's packed GEMM (an LSTM layer's input projection, M x 512
  x 2048, 24 accumulators per tile), whose inner loop is nothing but vector FMAs. (A synthetic loop of dependent
  FMAs on a local buffer reached only 40% of it: LLVM kept that buffer in memory, which is what TVM
  does with a "local" buffer unless told otherwise; see "Scratch on the stack" in docs/design.md.)
- Read bandwidth: each task sums its own buffer over and over with 8 vector accumulators, kept in
  registers (as TVM workspaces, every add went through memory and the L2 figure came out at 259
  GB/s against 448-479). The buffer per task is sized to sit in that core's L2, in the shared L3,
  or in DRAM.

Each kernel runs several times; the best time counts (the machine's limit, not its noise).
``bench.py`` turns these into a lower bound per benchmark shape.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

from lucid_tvm import runtime
from lucid_tvm.build import host_target
from lucid_tvm.kernels.recurrent import ON_STACK
from lucid_tvm.schedule import compile_module, vector_lanes

OUT = Path(__file__).resolve().parent.parent / "docs" / "perf" / "machine.json"


def _cache_sizes():
    """(L2 bytes per core, L3 bytes in all) from sysfs."""
    sizes = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in base.glob("index*"):
        level = int((index / "level").read_text())
        if (index / "type").read_text().strip() in ("Unified", "Data"):
            text = (index / "size").read_text().strip()
            sizes[level] = int(text[:-1]) * 1024 if text.endswith("K") else int(text)
    return sizes.get(2, 1 << 20), sizes.get(3, 32 << 20)


def read_kernel(cores, lanes, per_task, repeats):
    vectors = per_task // lanes

    @T.prim_func
    def read(buf: T.Buffer((cores, vectors, lanes), "float32"), out: T.Buffer((cores, lanes), "float32")):
        for task in T.parallel(cores):
            acc = T.alloc_buffer((8, lanes), "float32", scope="local", annotations=ON_STACK)
            for r in T.unroll(8):
                for l in T.vectorized(lanes):
                    acc[r, l] = T.float32(0)
            for _ in range(repeats):
                for v in range(vectors // 8):
                    for r in T.unroll(8):
                        for l in T.vectorized(lanes):
                            acc[r, l] = acc[r, l] + buf[task, v * 8 + r, l]
            for l in T.vectorized(lanes):
                out[task, l] = acc[0, l] + acc[1, l] + acc[2, l] + acc[3, l] + acc[4, l] + acc[5, l] + acc[6, l] + acc[7, l]

    return read, 4 * vectors // 8 * 8 * lanes * repeats * cores


def worker_count():
    """Tasks the kernels run on: TVM's worker threads (``lucid_tvm`` sets them to the usable CPUs)."""
    return int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))


def best_time(function, args, runs=7):
    function(*args)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def measure():
    target = host_target()
    cores = worker_count()
    lanes = vector_lanes(target, "float32")
    build = lambda f: compile_module(tvm.IRModule({"main": f}), target)["main"]  # noqa: E731
    out = tvm.runtime.empty((cores, lanes), "float32")

    # An LSTM layer's input projection: 6 rows x 4 gates = 24 accumulators per tile.
    kernel = runtime.layer_kernel("LSTM", 512, 512, "float32")
    rng = np.random.default_rng(0)
    w_ih, b_ih, _, _ = kernel.pack(rng.standard_normal((2048, 512)), rng.standard_normal((2048, 512)), None, None)
    peak = 0.0
    for rows in (48, 192, 768):  # the best of a few shapes: tile edges and caches differ
        x = runtime.aligned(rng.standard_normal((rows, 512)), "float32")
        xp = runtime.aligned_empty((rows, kernel.blocks, 4, kernel.lanes), "float32")
        args = (runtime._dl(x), w_ih, b_ih, runtime._dl(xp), 0)
        peak = max(peak, 2 * rows * 512 * 2048 / best_time(kernel.functions["project_parallel"], args, runs=40))

    l2, l3 = _cache_sizes()
    bandwidth = {}
    for level, per_task_bytes, repeats in (("L2", l2 // 2, 400), ("L3", min(l3 // (2 * cores), 8 << 20), 8),
                                           ("DRAM", 256 << 20, 1)):
        per_task = per_task_bytes // 4 // (8 * lanes) * (8 * lanes)
        read, nbytes = read_kernel(cores, lanes, per_task, repeats)
        buf = tvm.runtime.tensor(np.ones((cores, per_task // lanes, lanes), np.float32))
        bandwidth[level] = nbytes / best_time(build(read), (buf, out), runs=5 if level != "DRAM" else 3)
    return {
        "cpu": str(target.attrs["mcpu"]),
        "cores": cores,
        "fma_peak_flops": peak,
        "bandwidth_bytes_per_s": bandwidth,
        "l2_bytes_per_core": l2,
        "l3_bytes": l3,
        "method": "scripts/machine_limits.py: TIR kernels on every core, best of several runs",
    }


def load_or_measure():
    """The saved limits when they were measured on this kind of machine, else new ones."""
    try:
        limits = json.loads(OUT.read_text())
        if limits["cpu"] == str(host_target().attrs["mcpu"]) and limits["cores"] == worker_count():
            return limits
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as err:  # hand-edited or cut short: measured again
        print(f"{OUT} cannot be read ({type(err).__name__}: {err}); measuring this machine again")
    return save(measure())


def save(limits, path=OUT):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(limits, indent=2))
    return limits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT, help=f"where to write the limits (default {OUT})")
    args = parser.parse_args()
    limits = save(measure(), args.output)
    print(f"{limits['cpu']}, {limits['cores']} cores: FMA peak {limits['fma_peak_flops'] / 1e9:.0f} GFLOP/s (float32)")
    for level, value in limits["bandwidth_bytes_per_s"].items():
        print(f"  read bandwidth from {level:4s}: {value / 1e9:7.1f} GB/s (all cores)")
    print(f"  L2 {limits['l2_bytes_per_core'] >> 10} KiB per core, L3 {limits['l3_bytes'] >> 20} MiB; wrote {args.output}")


if __name__ == "__main__":
    main()
