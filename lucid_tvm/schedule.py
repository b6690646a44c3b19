"""Floor 2: how the kernels run on a target. Default schedules, chosen from the layer's shape.

The CPU kernels (``kernels/recurrent.py``) take these knobs; this module picks them:

- ``lanes``: hidden units per block, one, two or four SIMD vectors of the target (a vector is 16
  float32 on AVX-512, 8 on AVX2); layers with few gates get wider blocks, unless a narrower one
  pads the layer less or shares it out more evenly among the cores.
- ``rows``: rows that share each weight vector load, 2 to 8: as many as leave their
  ``rows * gates * vectors per block`` accumulators, the block's weight vectors and the
  broadcast input in the vector registers (:func:`vector_registers`).
- ``wide``: a taller tile for rows in bulk, reading a few gates at a time, where that keeps more
  accumulators in the registers (:func:`wide_tile`: an LSTM on AVX2).
- ``tiles_first``: a step runs every hidden block's ``h @ W_hh^T`` before any block's gate math
  where ``W_hh`` fits in the core's L1 cache (``L1_BYTES``): such a step waits on its chain of
  dependent operations, and the gate math of one block then overlaps the next block's. Where the
  step streams ``W_hh`` from L2 or beyond, block by block overlaps one block's loads with the
  previous block's gate math (numbers in ``docs/design.md``).
- ``pieces``: a block of ``W_hh`` larger than half the L1 is read in pieces of at most that, and
  the blocks a step reads first read the piece the last step left in L1 first (``recurrence``
  in ``kernels/recurrent.py``). Only blocks whose ``h[k]`` multiplies 4 or more vectors (RNN,
  LSTM): those stream from L2 well below its bandwidth, so a piece read from L1 pays (RNN 256 at
  batch 1, blocks of 64 KB: 11-13% faster a step split by hidden blocks with pieces of 16 KB,
  4% with 8 KB); GRU's 3 vectors stream near it, and its steps ran 2-4% slower (docs/design.md).
  Blocks of more than ``MAX_PIECES`` pieces are read whole: the L1 holds too small a share of a
  core's slice to show (RNN and LSTM 1024 at batch 1), and every piece is another copy of the
  tile's k loop to compile (LSTM 1024: 4.8 -> 9.5 s a module).
- ``parallel_step_macs``: from how many multiply-adds per step (batch included) a sequence runs
  on the whole thread pool, in one parallel region with a barrier per step. A barrier costs
  about 0.1 us here (``barrier.py``), plus the wait for the slower task, which is as much as a
  whole step of a small layer, so small steps run on one thread.
- ``parallel_call_macs``: the same for one projection call, where waking the pool costs ~5 us.
- ``cores``: the target's cores. A third recurrence splits the batch rows into that many parts,
  one per core, each running the whole chunk without barriers (``kernels/recurrent.py``).

All variants of each kernel are compiled. The two thresholds only say which one a new shape
tries first (the batch and sequence length are known only at the call); the runtime then keeps
whichever it measures faster (``runtime._Faster``), since on a shared machine that changes.

The GPU kernels (``kernels/cuda.py``) take the knobs of :class:`CudaSchedule`.
"""

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.target import codegen

from .kernels.layout import num_blocks, packed_row_bytes

# Below this many multiply-adds per step, one thread beats two meeting at a barrier every step.
PARALLEL_STEP_MACS = 64 * 1024
# Below this many multiply-adds per projection call, one thread beats waking the pool (~5 us).
PARALLEL_CALL_MACS = 512 * 1024
# A core's L1 data cache, at least (Zen 5 and recent Intel cores have 48 KB, many others 32 KB).
L1_BYTES = 32 * 1024
# The most pieces a block of W_hh is read in (see ``pieces`` above).
MAX_PIECES = 8


@dataclass(frozen=True)
class CpuSchedule:
    lanes: int
    rows: int
    parallel_step_macs: int
    parallel_call_macs: int
    cores: int = 1
    tiles_first: bool = False
    pieces: int = 1
    wide: tuple | None = None


def vector_bits(target):
    """SIMD register width of a CPU target. x86 is read from its features: TVM 0.27's
    ``llvm_get_vector_width`` answers 512 for AVX2-only CPUs such as haswell."""
    for feature, bits in (("avx512f", 512), ("avx", 256), ("sse2", 128)):
        if codegen.llvm_cpu_has_features(feature, target):
            return bits
    return codegen.llvm_get_vector_width(target)  # e.g. 128 for AArch64 NEON


def vector_registers(target):
    """SIMD registers of a CPU target: 32 on AVX-512 and AArch64, 16 on x86 without AVX-512."""
    x86_without_avx512 = (codegen.llvm_cpu_has_features("sse2", target)
                          and not codegen.llvm_cpu_has_features("avx512f", target))
    return 16 if x86_without_avx512 else 32


def vector_lanes(target, dtype):
    return max(1, vector_bits(target) // (8 * np.dtype(dtype).itemsize))


def _most_columns(size, block, cores):
    """The most columns a core computes where ``size`` columns, padded to whole blocks of
    ``block``, are shared out block by block among ``cores``."""
    return -(-num_blocks(size, block) // cores) * block


def wide_tile(registers, gates, vectors, rows):
    """``(rows, gates)`` of a tile for rows in bulk that keeps more accumulators in the registers
    than ``rows`` rows of all gates, by reading a block's gates that many at a time (one pass over
    k each), or None. Its rows are a multiple of ``rows``, at most 8. On AVX2 (16 registers) an
    LSTM's 2 rows of 4 gates keep 8 accumulators, too few to hide the FMA latency on two FMA
    pipes; 6 rows of 2 gates keep 12: its input projection ran at 166 GFLOP/s against 144
    (docs/design.md, "x86 without AVX-512"). With 32 registers no layout gains."""
    best, most = None, rows * gates * vectors
    for n_g in range(1, gates):
        if gates % n_g == 0:
            n_rows = min(8, (registers - n_g * vectors - 1) // (n_g * vectors)) // rows * rows
            if n_rows * n_g * vectors > most:
                best, most = (n_rows, n_g), n_rows * n_g * vectors
    return best


def default_schedule(target, num_gates, hidden_size, dtype):
    """Knobs for kernels producing ``num_gates * hidden_size`` columns (a GEMM: num_gates=1)."""
    gates, simd = num_gates, vector_lanes(target, dtype)
    registers = vector_registers(target)
    # Few gates leave accumulators unused: a block then spans several vectors (up to 4), so one
    # broadcast input value feeds more FMAs. Never wider than the layer itself, and a power of two:
    # blocks of 3 vectors (48 lanes for hidden sizes 33-48 on AVX-512) compiled to code 3-18x
    # slower a step than blocks of 2 or 4 (docs/design.md). (Three quarters of the registers for
    # the accumulators of 6 rows.)
    vectors = max(1, min(4, registers * 3 // 4 // (6 * gates), -(-hidden_size // simd)))
    vectors = 1 << (vectors.bit_length() - 1)
    # A column of padding costs as much as a real one, and a step split by hidden blocks waits for
    # the core with the most. Blocks of 2 vectors are never worse on either count than blocks of 4,
    # and where they are better (RNN 160: 160 columns rather than 192; RNN 192 on 2 cores: 96
    # columns a core rather than 128) they were faster: RNN_TANH 50-704 at batch 1-32, whole calls
    # up to 21% faster, none more than 1% slower (docs/design.md, "Blocks wider than a vector").
    cores = max(1, int(target.attrs.get("num-cores", 1)))
    if vectors == 4 and any(_most_columns(hidden_size, 2 * simd, n) < _most_columns(hidden_size, 4 * simd, n)
                            for n in (1, cores)):
        vectors = 2
    lanes = simd * vectors
    recurrent_weight_bytes = hidden_size * packed_row_bytes(gates, hidden_size, lanes, dtype)  # W_hh packed
    pieces = -(-hidden_size * gates * lanes * np.dtype(dtype).itemsize // (L1_BYTES // 2))  # of a W_hh block
    # Each row's accumulators, the block's weight vectors (loaded once, used by every row) and the
    # broadcast input value (counted as float32's: float16, which sums in float32, takes more).
    # One more row spills them to the stack every k: on AVX2 (16 registers) an LSTM input
    # projection ran at 72 GFLOP/s with 4 rows and 145 with 2, a GRU's at 78 with 5 rows and 164
    # with 4, an RNN's (blocks of 2 vectors) at 48 with 7 rows and 156 with 6 (docs/design.md,
    # "x86 without AVX-512").
    rows = min(8, max(2, (registers - gates * vectors - 1) // (gates * vectors)))
    return CpuSchedule(
        lanes=lanes,
        rows=rows,
        wide=wide_tile(registers, gates, vectors, rows),
        parallel_step_macs=PARALLEL_STEP_MACS,
        parallel_call_macs=PARALLEL_CALL_MACS,
        cores=cores,
        tiles_first=recurrent_weight_bytes <= L1_BYTES,
        pieces=pieces if gates * vectors >= 4 and pieces <= MAX_PIECES else 1,
    )


def pass_config(target):
    """TVM pass options the kernels compile with for ``target`` (part of the kernel cache key).
    CPUs go without TVM's StorageRewrite: it drops the annotation that keeps the kernels' per-tile
    scratch on the stack (``kernels/recurrent.py``), and merges nothing our kernels need merged."""
    return {"tirx.disable_storage_rewrite": target.kind.name == "llvm"}


def compile_module(mod, target):
    """``mod`` (an IRModule of TIR) compiled for ``target`` as the kernels are, tuning candidates
    included."""
    with tvm.transform.PassContext(config=pass_config(target)):
        return tvm.tirx.build(mod, target=target)


# The input projection runs a chunk of steps at a time, so the workspace holds one chunk of
# projected rows, not the whole sequence: 256 rows keep the GEMM efficient, and short rows (small
# hidden sizes) go up to as many as fill CHUNK_BYTES, at most MAX_CHUNK_ROWS, since every chunk
# costs two kernel calls and a parallel launch each: RNN 40->128 at batch 32 and 100 steps ran 13
# chunks of 8 steps before, 4 of 32 now (docs/design.md). At least one step.
CHUNK_ROWS = 256
CHUNK_BYTES = 512 * 1024
MAX_CHUNK_ROWS = 1024


# The recurrence that projects as it goes (``recur_projecting``) does it in parts of this many
# rows or a few more: fewer meet more often, more leave the recurrence waiting longer for the
# first part. Measured on LSTM 32 / GRU 64 at batch 1 and LSTM 33 at batch 3, best at 12-16 rows.
PROJECTING_ROWS = 16


def chunk_steps(n_steps, batch, row_bytes):
    """Steps per projection chunk for a sequence of ``n_steps`` and ``batch`` rows per step,
    each projected row ``row_bytes`` long (all gates of all packed blocks)."""
    rows = min(MAX_CHUNK_ROWS, max(CHUNK_ROWS, CHUNK_BYTES // row_bytes))
    return max(1, min(n_steps, rows // max(batch, 1)))


# A unidirectional stack whose layers would hand on more than STACK_CHUNK_BYTES of output runs a
# chunk of steps at a time through all its layers, so what one layer hands the next is one chunk,
# not the whole sequence: memory beyond the output stops growing with the sequence (LSTM 32 x 3
# layers, batch 16, 20000 steps: 78.7 MiB beyond the output before, 4.5 now). A chunk is whole
# projection chunks up to that many bytes. Against the whole sequence, in one process
# (docs/design.md): 4 MiB ran within the noise (0.88-1.03x the time), one projection chunk per
# layer call 1.01-1.06x.
STACK_CHUNK_BYTES = 4 * 1024 * 1024


def stack_chunk_steps(n_steps, batch, row_bytes, step_bytes):
    """Steps per chunk of a unidirectional stack of ``n_steps`` and ``batch`` rows per step: whole
    projection chunks (:func:`chunk_steps`, rows ``row_bytes`` long) holding at most
    ``STACK_CHUNK_BYTES`` of a layer's output, one step of which is ``step_bytes`` (not 0); at
    least one projection chunk."""
    chunk = chunk_steps(n_steps, batch, row_bytes)
    return min(n_steps, chunk * max(1, STACK_CHUNK_BYTES // (chunk * step_bytes)))


@dataclass(frozen=True)
class CudaSchedule:
    """Knobs of the GPU kernels (``kernels/cuda.py``): ``lanes`` hidden units per packed block (a
    warp, so a warp's weight loads are contiguous), ``threads`` per thread block, and ``rows`` of
    the projection that share each weight load in registers."""

    lanes: int
    threads: int
    rows: int


def default_cuda_schedule(target, num_gates, hidden_size):
    """One warp per packed block; thread blocks of up to 128 threads, no larger than the work
    (a layer with few columns would leave most of a 128-thread block idle)."""
    warp = int(target.attrs.get("thread_warp_size", 32))
    columns = -(-num_gates * hidden_size // warp) * warp
    threads = min(128, int(target.attrs.get("max_num_threads", 1024)), columns)
    return CudaSchedule(lanes=warp, threads=threads, rows=8)
