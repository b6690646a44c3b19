r"""Tune the input projections of layer configurations into schedules/<hardware-key>/.

    python scripts/tune.py LSTM --input-size 512 --hidden-size 512 --batch 64 --seq-len 25
    python scripts/tune.py --benchmark-shapes --trials 16   # every shape of scripts/bench.py --full
    python scripts/tune.py --remeasure     # time this CPU's database against the default again
    python scripts/tune.py --remeasure --target "llvm -mcpu=cortex-a72 -num-cores=4" \
        --rpc-tracker HOST:PORT --rpc-key KEY  # a board's database, timed on the board

Options are those of ``lucid-tvm tune``. Run it under ``nice -n 19`` on a shared machine; it
measures on the target, so the machine should be otherwise quiet for the numbers to mean much.
"""

import argparse
import sys
import time

from lucid_tvm import cli, tuning

# scripts/bench.py --full: (H, B, T) with input size = hidden size, and I=40, H=128, B=32, T=100.
BENCHMARK_SHAPES = [(256, 256, 1, 150), (256, 256, 16, 150), (512, 512, 1, 25), (512, 512, 4, 25),
                    (512, 512, 64, 25), (1024, 1024, 1, 25), (1024, 1024, 16, 25), (40, 128, 32, 100)]
# RNN_RELU has the same projection as RNN_TANH.
BENCHMARK_MODES = ("LSTM", "GRU", "RNN_TANH")


def benchmark_shapes(trials, target):
    started = time.perf_counter()
    configs = [(mode, i, h, b, t) for i, h, b, t in BENCHMARK_SHAPES for mode in BENCHMARK_MODES]
    for index, (mode, i, h, b, t) in enumerate(configs, 1):
        print(f"=== config {index}/{len(configs)}: {mode} I={i} H={h} B={b} T={t}, 2 layers "
              f"({time.perf_counter() - started:.0f} s so far)", flush=True)
        tuning.tune(mode, i, h, b, t, target=target, trials=trials, num_layers=2)


def main(argv):
    if "--remeasure" not in argv and "--benchmark-shapes" not in argv:
        return cli.main(["tune"] + argv)  # one configuration, as ``lucid-tvm tune``
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_mutually_exclusive_group(required=True)
    job.add_argument("--remeasure", action="store_true", help="time the target's database against the default again")
    job.add_argument("--benchmark-shapes", action="store_true", help="tune every shape of scripts/bench.py --full")
    parser.add_argument("--target", default="llvm", help='"llvm" (this CPU) or e.g. "llvm -mcpu=znver3 -num-cores=8"')
    parser.add_argument("--trials", type=int, default=16, help="meta_schedule trials per workload (--benchmark-shapes)")
    parser.add_argument("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: measure on a remote device (--remeasure)")
    parser.add_argument("--rpc-key", help="the remote device's key at the tracker")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    try:
        if args.remeasure:
            tuning.remeasure(target=args.target, runner=cli.rpc_runner(args.rpc_tracker, args.rpc_key))
        else:
            if args.rpc_tracker or args.rpc_key:
                parser.error("--benchmark-shapes measures here; tune one configuration for a device with "
                             "lucid-tvm tune --rpc-tracker")
            benchmark_shapes(args.trials, args.target)
    except (ValueError, TypeError, OSError) as err:
        print(f"tune.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
