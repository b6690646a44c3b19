"""lucid-tvm: recurrent layers compiled with TVM, behind the lucid.nn API.

``import lucid_tvm as lucid`` and ``import lucid_tvm.nn as nn`` run lucid 2.x examples as written.
"""

import os

# TVM 0.27 starts half as many worker threads as there are CPUs on x86; use them all unless the
# user chose. Must be set before TVM's thread pool starts.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
# TVM pins each worker to a core. In a process that also runs torch's, ONNX Runtime's or OpenBLAS's
# threads, a pinned worker waits for its core instead of moving, and every parallel step waits for
# it at the barrier: with those libraries interleaved (scripts/bench.py --full), unpinned workers
# made parallel layers up to 2.2x faster (GRU 256/1/150: 1.52 -> 0.70 ms); alone, both are within 2%.
os.environ.setdefault("TVM_BIND_THREADS", "0")

__version__ = "0.1.0"

from . import nn  # noqa: E402
from .artifact import ArtifactError, export, load  # noqa: E402
from .tensor import Tensor, ones, randn, seed, zeros  # noqa: E402

__all__ = ["Tensor", "randn", "zeros", "ones", "seed", "nn", "export", "load", "ArtifactError"]
