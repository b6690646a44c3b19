"""Tune the input projections of layer configurations into schedules/<hardware-key>/.

    python scripts/tune.py LSTM --input-size 512 --hidden-size 512 --batch 64 --seq-len 25
    python scripts/tune.py --benchmark-shapes --trials 16   # every shape of scripts/bench.py --full
    python scripts/tune.py --remeasure     # time this CPU's database against the default again

Options are those of ``lucid-tvm tune``. Run it under ``nice -n 19`` on a shared machine; it
measures on the target, so the machine should be otherwise quiet for the numbers to mean much.
"""

import sys
import time

from lucid_tvm import cli, tuning

# scripts/bench.py --full: (H, B, T) with input size = hidden size, and I=40, H=128, B=32, T=100.
BENCHMARK_SHAPES = [(256, 256, 1, 150), (256, 256, 16, 150), (512, 512, 1, 25), (512, 512, 4, 25),
                    (512, 512, 64, 25), (1024, 1024, 1, 25), (1024, 1024, 16, 25), (40, 128, 32, 100)]
# RNN_RELU has the same projection as RNN_TANH.
BENCHMARK_MODES = ("LSTM", "GRU", "RNN_TANH")


def benchmark_shapes(trials):
    started = time.perf_counter()
    configs = [(mode, i, h, b, t) for i, h, b, t in BENCHMARK_SHAPES for mode in BENCHMARK_MODES]
    for index, (mode, i, h, b, t) in enumerate(configs, 1):
        print(f"=== config {index}/{len(configs)}: {mode} I={i} H={h} B={b} T={t}, 2 layers "
              f"({time.perf_counter() - started:.0f} s so far)", flush=True)
        tuning.tune(mode, i, h, b, t, trials=trials, num_layers=2)


if __name__ == "__main__":
    if "--remeasure" in sys.argv:
        tuning.remeasure()
    elif "--benchmark-shapes" in sys.argv:
        args = sys.argv[1:]
        trials = int(args[args.index("--trials") + 1]) if "--trials" in args else 16
        benchmark_shapes(trials)
    else:
        sys.exit(cli.main(["tune"] + sys.argv[1:]))
