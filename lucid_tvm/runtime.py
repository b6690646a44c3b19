"""Floor 4: calling the compiled kernels on host arrays.

Arrays reach the kernels zero-copy through DLPack. TVM requires 64-byte aligned, C-contiguous
buffers (an AVX kernel may fault on a misaligned one), so anything else (views, odd strides,
unaligned buffers) is copied once into an aligned buffer first; outputs are allocated aligned.
"""

import contextlib
import functools
import threading
from dataclasses import dataclass

import numpy as np
import tvm

from .kernels.layout import num_blocks, pack_bias, pack_weight
from .kernels.spec import LayerSpec

ALIGNMENT = 64


def aligned_empty(shape, dtype):
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned(a, dtype):
    """``a`` as a C-contiguous, 64-byte aligned array of ``dtype``; no copy when it already is one."""
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
        return a
    out = aligned_empty(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def _dl(a):
    return tvm.runtime.from_dlpack(a)


@dataclass
class Compiled:
    """A compiled module with the schedule knobs it was built with and its shared library."""

    module: object
    schedule: dict
    path: object = None  # the .so it was loaded from, if any


# Compiled modules by what they compute (not how): ("layer", mode, I, H, dtype),
# ("projection", mode, I, H, rows, dtype) (a tuned input projection of one chunk),
# ("gemm", N, dtype), ("tracetorch", kind, H, I, dtype). Filled by compiling on first use, or by
# lucid_tvm.load from an artifact, in which case no compiler is needed.
_registry = {}
_registry_lock = threading.Lock()
_recorders = []


def compiled(identity, compile):
    """The registered module for ``identity``, compiled by ``compile()`` if there is none yet."""
    with _registry_lock:
        if identity not in _registry:
            _registry[identity] = Compiled(*compile())
        return _registry[identity]


def _note_use(identity):
    for used in _recorders:
        used.add(identity)


def registered(identity):
    """The module registered for ``identity`` (KeyError if none)."""
    with _registry_lock:
        return _registry[identity]


def register(identity, entry):
    """Use ``entry`` for ``identity`` from now on (kernel objects made earlier are dropped)."""
    with _registry_lock:
        _registry[identity] = entry
    layer_kernel.cache_clear()
    gemm.cache_clear()


@contextlib.contextmanager
def recording():
    """Collect the identities of every module run inside the block (for export)."""
    used = set()
    _recorders.append(used)
    try:
        yield used
    finally:
        _recorders.remove(used)


def _build():
    # The compiler is imported on first compile only: loading an artifact needs TVM's runtime alone.
    from . import build

    return build


class LayerKernel:
    """The compiled kernels of one layer-direction kind (mode, sizes, dtype) on this CPU."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = ("layer", spec.mode, spec.input_size, spec.hidden_size, spec.dtype)
        entry = compiled(self.identity, lambda: _build().compile_identity(self.identity))
        self.module, self.lanes = entry.module, entry.schedule["lanes"]
        self._project = self.module["project"]
        self._recur = self.module["recur"]
        self.blocks = num_blocks(spec.hidden_size, self.lanes)
        self._projections = {}

    def projection_for(self, rows):
        """The input projection of a chunk of ``rows`` rows, called like ``project``: ``(x (M, K),
        w, b, xp, row0=0)`` writes ``x[row0 : row0+rows] @ W^T + b`` into ``xp``. The schedule tuned
        for exactly that many rows when one is registered (from an artifact) or the tuning database
        of this CPU has a record faster than the default, else the default ``project``."""
        if rows not in self._projections:
            self._projections[rows] = self._tuned_projection(rows) or self._project
        return self._projections[rows]

    def _tuned_projection(self, rows):
        s = self.spec
        identity = ("projection", s.mode, s.input_size, s.hidden_size, rows, s.dtype)
        with _registry_lock:
            entry = _registry.get(identity)
        if entry is None:
            try:
                built = _build().compile_identity(identity)
            except ImportError:  # TVM's runtime alone: only what an artifact registered
                return None
            if built is None:
                return None
            entry = compiled(identity, lambda: built)
        if entry.schedule["lanes"] != self.lanes:  # packed for another vector width
            return None
        function = entry.module["project"]

        def project(x, w, b, xp, row0=0):
            _note_use(identity)
            if row0 == 0 and x.shape[0] == rows and xp.shape[0] == rows:
                function(x, w, b, xp)
            else:  # the chunk's rows (copied only if unaligned) and as many rows of xp
                chunk = aligned(np.from_dlpack(x)[row0:row0 + rows], s.dtype)
                function(_dl(chunk), w, b, _dl(np.from_dlpack(xp)[:rows]))

        return project

    def pack(self, w_ih, w_hh, b_ih, b_hh):
        """Weights in the kernels' layout, packed once and reused for every call."""
        s, lanes = self.spec, self.lanes
        arrays = (
            pack_weight(w_ih, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_bias(b_ih, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_weight(w_hh, s.num_gates, s.hidden_size, lanes, s.dtype),
            pack_bias(b_hh, s.num_gates, s.hidden_size, lanes, s.dtype),
        )
        return tuple(_dl(aligned(a, s.dtype)) for a in arrays)

    def run(self, packed, x, h0, c0, y, yoff, reverse, cn):
        """One direction over a whole sequence.

        ``x`` (T, B, I), ``h0``/``c0`` (B, H) and the outputs ``y`` (T, B, YW) (columns
        ``yoff .. yoff+H`` are written) and ``cn`` (B, H, LSTM only) must come from :func:`aligned`
        or :func:`aligned_empty` with the layer's dtype.
        """
        _note_use(self.identity)
        s = self.spec
        n_t, n_b = x.shape[0], x.shape[1]
        w_ih, b_ih, w_hh, b_hh = packed
        packed_shape = (self.blocks, s.num_gates, self.lanes)
        xp = aligned_empty((n_t, n_b) + packed_shape, s.dtype)
        self.projection_for(n_t * n_b)(_dl(x.reshape(n_t * n_b, -1)), w_ih, b_ih, _dl(xp.reshape((n_t * n_b,) + packed_shape)))
        workspace = (_dl(aligned_empty((2, n_b, s.hidden_size), s.dtype)),
                     _dl(aligned_empty((n_b,) + packed_shape, s.dtype)))
        if s.mode == "LSTM":
            self._recur(_dl(xp), w_hh, b_hh, _dl(h0), _dl(c0), _dl(y), _dl(cn), *workspace, yoff, int(reverse))
        else:
            self._recur(_dl(xp), w_hh, b_hh, _dl(h0), _dl(y), *workspace, yoff, int(reverse))


@functools.lru_cache(maxsize=None)
def layer_kernel(mode, input_size, hidden_size, dtype):
    return LayerKernel(LayerSpec(mode, input_size, hidden_size, np.dtype(dtype).name))


class Gemm:
    """``x @ W^T + b`` on the compiled GEMM, for weights W of ``output_size`` rows and any K.

    The result is ``(M, width)`` with ``width`` the output size rounded up to whole SIMD vectors;
    the columns past ``output_size`` are zero when the weights' padding is.
    """

    def __init__(self, output_size, dtype):
        self.output_size, self.dtype = output_size, np.dtype(dtype).name
        self.identity = ("gemm", output_size, self.dtype)
        entry = compiled(self.identity, lambda: _build().compile_identity(self.identity))
        self.lanes = entry.schedule["lanes"]
        self._project = entry.module["project"]
        self.blocks = num_blocks(output_size, self.lanes)
        self.width = self.blocks * self.lanes

    def pack(self, w, b=None):
        """Weights (output_size, K) and bias in the GEMM's layout."""
        return (_dl(aligned(pack_weight(w, 1, self.output_size, self.lanes, self.dtype), self.dtype)),
                _dl(aligned(pack_bias(b, 1, self.output_size, self.lanes, self.dtype), self.dtype)))

    def __call__(self, x, packed):
        _note_use(self.identity)
        out = aligned_empty((x.shape[0], self.width), self.dtype)
        self._project(_dl(aligned(x, self.dtype)), *packed,
                      _dl(out.reshape(x.shape[0], self.blocks, 1, self.lanes)))
        return out


@functools.lru_cache(maxsize=None)
def gemm(output_size, dtype):
    return Gemm(output_size, np.dtype(dtype).name)


class Functions:
    """Named compiled functions called on numpy arrays: ``fns.name(*arrays)`` (outputs last).

    ``identity`` is the registry key, e.g. ``("tracetorch", kind, hidden, input_size, dtype)``.
    """

    def __init__(self, identity):
        self.identity = identity
        self.module = compiled(identity, lambda: _build().compile_identity(identity)).module

    def __getattr__(self, name):
        function = self.module[name]

        def call(*arrays):
            _note_use(self.identity)
            function(*(_dl(a) for a in arrays))

        setattr(self, name, call)  # looked up once: later calls skip the module's name lookup
        return call
