"""Call small layers many times and report resident memory at the start and the end.

    python scripts/leak_check.py               # 100,000 calls
    python scripts/leak_check.py --calls 3000 --json

Memory is read after a warm-up (compiles, caches, allocator pools), so the growth it reports is
what the calls themselves keep.
"""

import argparse
import json
import resource
import time

import numpy as np
import torch

import lucid_tvm.nn as nn
import lucid_tvm.tracetorch as tt


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    lstm, cell = nn.LSTM(8, 16, num_layers=2), nn.GRUCell(8, 16)
    step = tt.rnn.GRU(8, 16)
    x = np.random.default_rng(0).standard_normal((4, 2, 8)).astype(np.float32)
    x_step = torch.from_numpy(x[0])
    x_grad = x_step.clone().requires_grad_()

    def call(i):
        if i % 3 == 0:
            lstm(x)
        elif i % 3 == 1:
            cell(x[0])
        elif i % 2 == 0:  # a training step: forward, compiled backward, truncation
            step(x_grad).sum().backward()
            step.detach_states()
        else:
            with torch.no_grad():
                step(x_step)

    for i in range(min(1000, args.calls)):
        call(i)
    start, began = rss_mib(), time.perf_counter()
    for i in range(args.calls):
        call(i)
    end = rss_mib()
    report = {"calls": args.calls, "rss_start_mib": round(start, 1), "rss_end_mib": round(end, 1),
              "growth_mib": round(end - start, 2), "seconds": round(time.perf_counter() - began, 1)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.calls} calls in {report['seconds']} s: resident memory {start:.1f} MiB after "
              f"warm-up, {end:.1f} MiB at the end ({end - start:+.2f} MiB)")


if __name__ == "__main__":
    main()
