"""lucid_tvm's barrier (``kernels/barrier.cc``) against TVM's, on the same compiled kernels.

    python scripts/barrier_ab.py [--calls 200]
    python scripts/barrier_ab.py --busy    # with one process spinning on a core meanwhile
    python scripts/barrier_ab.py --colocate  # every call starting with both tasks on one CPU

First a compiled loop whose steps do nothing but meet, linked with and without our barrier. Then
for each layer: median us per step of a whole call (T steps) on one thread, and split by hidden
blocks (the variant that meets at a barrier every step) with TVM's ``TVMBackendParallelBarrier``
and with ours in the library's barrier slot. The three run in turn, call by call, and must give
the same output bit for bit. ``--busy`` imitates a noisy neighbour on a shared VM (as in
``variant_choice.py``), where a task waits at the barrier for a partner that lost its core.
``--colocate`` puts the calling thread and TVM's workers on one CPU before every call, where a
worker woken from its sleep often lands: TVM's barrier leaves them there, ours moves a worker that
waits on its partner's CPU to an idle one.
"""

import argparse
import ctypes
import functools
import math
import multiprocessing
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import tvm
from tvm.script import tirx as T

import lucid_tvm.nn as nn
from lucid_tvm import barrier, runtime
from lucid_tvm.build import host_target
from scratch_ab import in_turn

# (mode, hidden size = input size, batch, steps): layers whose steps last 0.3-30 us.
SHAPES = [("RNN_TANH", 128, 1, 200), ("RNN_TANH", 256, 1, 150), ("RNN_RELU", 256, 1, 150),
          ("GRU", 128, 4, 200), ("LSTM", 128, 1, 200), ("GRU", 256, 1, 150), ("LSTM", 256, 1, 150),
          ("RNN_TANH", 512, 1, 25), ("GRU", 512, 1, 25), ("LSTM", 512, 1, 25)]


def spin():
    while True:
        pass


def empty_steps(steps=10000, calls=30):
    """Median us per step of a parallel region whose steps only meet, with TVM's barrier and ours."""
    launch = functools.partial(T.serial, annotations={"pragma_parallel_launch_point": 1})
    meet = functools.partial(T.parallel, annotations={"pragma_parallel_barrier_when_finish": 1})

    @T.prim_func
    def meet_only(a: T.Buffer((2, 16), "float32"), n: T.int32):
        for _ in launch(n):
            for task in meet(2):
                a[task, 0] = a[task, 0] + a[1 - task, 1]

    built = tvm.tirx.build(meet_only, target=host_target())
    functions, times = {}, {"TVM barrier": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        built.export_library(f"{tmp}/tvm.so")
        barrier.export_library(built, f"{tmp}/ours.so")
        functions = {"TVM barrier": barrier.load_module(f"{tmp}/tvm.so")["meet_only"],
                     "ours": barrier.load_module(f"{tmp}/ours.so")["meet_only"]}
    a = tvm.runtime.tensor(np.zeros((2, 16), np.float32))
    for call in range(calls):
        for name, function in in_turn(list(functions.items()), call):
            start = time.perf_counter()
            function(a, steps)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) / steps * 1e6 for name, t in times.items()}


def cpu_ticks():
    """User and system CPU ticks of each thread of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])
    return ticks


def workers_of(run):
    """The threads other than this one that used a CPU while ``run()`` ran: TVM's workers (and any
    other pool's threads busy meanwhile, which are then moved with them)."""
    before = cpu_ticks()
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        run()
    me = threading.get_native_id()
    return [tid for tid, ticks in cpu_ticks().items() if tid != me and ticks > before.get(tid, ticks)]


def colocate(workers):
    """Move this thread and ``workers`` to the first CPU of this thread's mask, then give all of
    them back their masks: they stay there until something moves them. A thread that has ended is
    skipped."""
    masks = {}
    try:
        for tid in [0, *workers]:
            try:
                masks[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {min(masks[0])})
            except ProcessLookupError:
                masks.pop(tid, None)
    finally:
        for tid, mask in masks.items():
            try:
                os.sched_setaffinity(tid, mask)
            except ProcessLookupError:
                pass


def compare(mode, hidden, batch, steps, calls, together=False):
    layer = nn.RNNBase(mode, hidden, hidden).eval()
    x = np.random.default_rng(0).standard_normal((steps, batch, hidden)).astype(np.float32)
    layer(x)
    kernel = layer.layers[0]._kernel()
    recur = runtime._plans.__dict__[kernel.identity].run_chunk
    names = [runner.name for runner in recur.variants]
    slot, ours = barrier.barrier_slot(runtime.registered(kernel.identity).path)
    tvms = ctypes.cast(ctypes.CDLL(None).TVMBackendParallelBarrier, ctypes.c_void_p).value
    serial, hidden_split = names.index("recur"), names.index("recur_parallel")
    configs = {"one thread": (serial, ours), "TVM barrier": (hidden_split, tvms), "ours": (hidden_split, ours)}
    times, outputs = {name: [] for name in configs}, {}
    recur.countdown = math.inf  # no trials of other variants: each config runs what it names
    if together:
        recur.current = hidden_split
        workers = workers_of(lambda: layer(x))
    try:
        for call in range(calls):
            for name, (variant, function) in in_turn(list(configs.items()), call):
                recur.current, slot.value = variant, function
                if together:
                    colocate(workers)
                start = time.perf_counter()
                out = layer(x)[0].numpy()
                times[name].append(time.perf_counter() - start)
                outputs[name] = out
    finally:
        slot.value = ours
    same = all(np.array_equal(out, outputs["one thread"]) for out in outputs.values())
    return {name: statistics.median(t) / steps * 1e6 for name, t in times.items()}, same


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--colocate", action="store_true",
                        help="start every call with TVM's workers on the calling thread's CPU")
    args = parser.parse_args()
    busy = multiprocessing.Process(target=spin, daemon=True) if args.busy else None
    if busy:
        busy.start()
    try:
        print("one core kept busy by another process" if busy else "a quiet machine",
              "with each call starting on one CPU" if args.colocate else "")
        us = empty_steps()
        print(f"steps that only meet: {us['TVM barrier']:.3f} us per step with TVM's barrier, "
              f"{us['ours']:.3f} with ours")
        print(f"median us per step of {args.calls} calls each, the three in turn")
        print(f"{'layer':22} | {'one thread':>10} | {'TVM barrier':>11} | {'ours':>7} | ours/TVM | same")
        for mode, hidden, batch, steps in SHAPES:
            us, same = compare(mode, hidden, batch, steps, args.calls, args.colocate)
            name = f"{mode} {hidden}/{batch}/{steps}"
            print(f"{name:22} | {us['one thread']:10.3f} | {us['TVM barrier']:11.3f} | {us['ours']:7.3f} | "
                  f"{us['ours'] / us['TVM barrier']:8.2f} | {'yes' if same else 'NO'}")
    finally:
        if busy:
            busy.terminate()


if __name__ == "__main__":
    main()
