"""Floor 2: how the kernels run on a target. Default CPU schedules, chosen from the layer's shape.

The recurrent kernels (``kernels/recurrent.py``) take three knobs; this module picks them:

- ``lanes``: elements per SIMD vector of the target (16 float32 on AVX-512, 8 on AVX2).
- ``rows``: rows that share each weight vector load; accumulators take ``rows * gates`` vector
  registers, so 24 of AVX-512's 32 stay busy and the rest hold the broadcast and the weights.
- ``parallel``: whether a step's hidden blocks are spread over the thread pool. A parallel launch
  costs about 1 us here, more than a whole step of a small layer, so small layers run on one thread.
"""

from dataclasses import dataclass

import numpy as np
from tvm.target import codegen

# Below this many multiply-adds per step and batch row, one thread beats a launch per step.
PARALLEL_STEP_MACS = 64 * 1024


@dataclass(frozen=True)
class CpuSchedule:
    lanes: int
    rows: int
    project_parallel: bool
    recur_parallel: bool


def vector_lanes(target, dtype):
    bits = codegen.llvm_get_vector_width(target)
    return max(1, bits // (8 * np.dtype(dtype).itemsize))


def default_schedule(target, num_gates, hidden_size, dtype):
    """Knobs for kernels producing ``num_gates * hidden_size`` columns (a GEMM: num_gates=1)."""
    gates = num_gates
    return CpuSchedule(
        lanes=vector_lanes(target, dtype),
        rows=min(8, 24 // gates),
        project_parallel=True,
        recur_parallel=gates * hidden_size * hidden_size >= PARALLEL_STEP_MACS,
    )
