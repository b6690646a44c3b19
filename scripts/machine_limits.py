"""Measure this machine's limits for recurrent layers: FMA peak and read bandwidth per cache level.

    python scripts/machine_limits.py          # prints the numbers
    python scripts/machine_limits.py -o FILE  # ... and writes them to FILE (JSON)

How: small TIR kernels compiled for this CPU, run on every core at once (one task per core):

- FMA peak: the best rate of lucid_tvm's packed GEMM (LSTM and GRU layers' input projections,
  M x 512 x 2048 and x 1536), whose inner loop is nothing but vector FMAs. (A synthetic loop of dependent
  FMAs on a local buffer reached only 40% of it: LLVM kept that buffer in memory, which is what TVM
  does with a "local" buffer unless told otherwise; see "Scratch on the stack" in docs/design.md.)
- Read bandwidth: each task sums its own buffer over and over with 8 vector accumulators, kept in
  registers (as TVM workspaces, every add went through memory and the L2 figure came out at 259
  GB/s against 448-479). The buffer per task is sized to sit in that core's L2, in the shared L3,
  or in DRAM.

Each kernel runs several times; the best time counts (the machine's limit, not its noise).
``bench.py`` samples the same kernels (:class:`Probe`) in every round of its own run, and turns
the median of its rounds' limits into a lower bound per benchmark shape.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

from lucid_tvm import runtime
from lucid_tvm.build import host_target
from lucid_tvm.kernels.recurrent import ON_STACK
from lucid_tvm.schedule import compile_module, vector_lanes


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


class Probe:
    """The limit kernels compiled and their buffers made once, so that the limits can be measured
    again and again: ``bench.py`` samples them in every round, beside the layers it times."""

    def __init__(self):
        self.target = host_target()
        self.cores = worker_count()
        lanes = vector_lanes(self.target, "float32")
        build = lambda f: compile_module(tvm.IRModule({"main": f}), self.target)["main"]  # noqa: E731
        out = tvm.runtime.empty((self.cores, lanes), "float32")

        # LSTM and GRU layers' input projections (on AVX-512, 6 rows x 4 gates and 8 rows x 3
        # gates = 24 accumulators per tile; on AVX2, whose 16 registers hold fewer, 2 x 4 and
        # 4 x 3), the best of a few shapes (tile edges and caches differ).
        rng = np.random.default_rng(0)
        self.projections = []  # (flops a call, function, arguments)
        for mode, gates in (("LSTM", 4), ("GRU", 3)):
            kernel = runtime.layer_kernel(mode, 512, 512, "float32")
            w = rng.standard_normal((gates * 512, 512))
            w_ih, b_ih, _, _ = kernel.pack(w, w, None, None)
            for rows in (48, 192, 768):
                x = runtime.aligned(rng.standard_normal((rows, 512)), "float32")
                xp = runtime.aligned_empty((rows, kernel.blocks, gates, kernel.lanes), "float32")
                self.projections.append((2 * rows * 512 * gates * 512, kernel.functions["project_parallel"],
                                         (runtime._dl(x), w_ih, b_ih, runtime._dl(xp), 0)))

        self.l2, self.l3 = _cache_sizes()
        self.reads = {}  # level: (bytes read a call, function, arguments)
        for level, per_task_bytes, repeats in (("L2", self.l2 // 2, 400),
                                               ("L3", min(self.l3 // (2 * self.cores), 8 << 20), 8),
                                               ("DRAM", 256 << 20, 1)):
            per_task = per_task_bytes // 4 // (8 * lanes) * (8 * lanes)
            read, nbytes = read_kernel(self.cores, lanes, per_task, repeats)
            buf = tvm.runtime.tensor(np.ones((self.cores, per_task // lanes, lanes), np.float32))
            self.reads[level] = (nbytes, build(read), (buf, out))

    def sample(self, fma_runs=40, read_runs=5):
        """The limits: for each kernel the best of its runs (the machine's limit, not its noise)."""
        peak = max(flops / best_time(function, args, runs=fma_runs) for flops, function, args in self.projections)
        bandwidth = {level: nbytes / best_time(function, args, runs=read_runs if level != "DRAM" else 3)
                     for level, (nbytes, function, args) in self.reads.items()}
        return {"fma_peak_flops": peak, "bandwidth_bytes_per_s": bandwidth}

    def describe(self, limits, method):
        """``limits`` (from :meth:`sample`) with the machine they were measured on, as saved."""
        return {"cpu": str(self.target.attrs["mcpu"]), "cores": self.cores, **limits,
                "l2_bytes_per_core": self.l2, "l3_bytes": self.l3, "method": method}


def median_limits(samples):
    """The median of each limit over several :meth:`Probe.sample` results."""
    return {"fma_peak_flops": statistics.median(s["fma_peak_flops"] for s in samples),
            "bandwidth_bytes_per_s": {level: statistics.median(s["bandwidth_bytes_per_s"][level] for s in samples)
                                      for level in samples[0]["bandwidth_bytes_per_s"]}}


def measure():
    probe = Probe()
    return probe.describe(probe.sample(), "scripts/machine_limits.py: TIR kernels on every core, best of several runs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="also write the limits to this JSON file")
    args = parser.parse_args()
    limits = measure()
    print(f"{limits['cpu']}, {limits['cores']} cores: FMA peak {limits['fma_peak_flops'] / 1e9:.0f} GFLOP/s (float32)")
    for level, value in limits["bandwidth_bytes_per_s"].items():
        print(f"  read bandwidth from {level:4s}: {value / 1e9:7.1f} GB/s (all cores)")
    print(f"  L2 {limits['l2_bytes_per_core'] >> 10} KiB per core, L3 {limits['l3_bytes'] >> 20} MiB")
    if args.output:
        args.output.write_text(json.dumps(limits, indent=2))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
