"""lucid-tvm: recurrent layers compiled with TVM, behind the lucid.nn API.

``import lucid_tvm as lucid`` and ``import lucid_tvm.nn as nn`` run lucid 2.x examples as written.
"""

import os

# TVM 0.27 starts half as many worker threads as there are CPUs on x86; use them all unless the
# user chose. Must be set before TVM's thread pool starts.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

__version__ = "0.1.0"

from . import nn  # noqa: E402
from .artifact import ArtifactError, export, load  # noqa: E402
from .tensor import Tensor, ones, randn, seed, zeros  # noqa: E402

__all__ = ["Tensor", "randn", "zeros", "ones", "seed", "nn", "export", "load", "ArtifactError"]
