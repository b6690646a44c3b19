"""Floor 4: calling the compiled kernels on host arrays.

Arrays reach the kernels zero-copy through DLPack. The layers' inputs and outputs need only be
C-contiguous arrays of the layer's dtype (:func:`contiguous`): the kernels declare them aligned to
their element alone. Everything the runtime allocates for the kernels (packed weights, the
workspace) is 64-byte aligned (:func:`aligned`), which TVM requires of buffers declared the
default way (an AVX kernel may fault on a misaligned one).
"""

import contextlib
import ctypes
import functools
import itertools
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi

from .kernels.layout import num_blocks, pack_bias, pack_weight, packed_row_bytes
from .kernels.spec import MAX_ELEMENTS, LayerSpec
from .schedule import PROJECTING_ROWS, STACK_CHUNK_BYTES, chunk_steps

ALIGNMENT = 64


def _address(a):
    """Where a C-contiguous array's data starts. ctypes' view of the buffer costs a quarter of
    ``a.ctypes.data`` (which matters on every call of a small layer) but needs a writable one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):  # read-only or empty
        return a.ctypes.data


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array, 64-byte aligned, with the strides TVM requires even
    when it is empty (numpy picks others for empty arrays, such as zeros, and TVM rejects them)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    strides = None  # numpy's, unless empty (computed only then: this runs on every layer call)
    if not nbytes:
        strides = [dtype.itemsize * math.prod(shape[i + 1:]) for i in range(len(shape))]
    return np.ndarray(shape, dtype, raw, -_address(raw) % ALIGNMENT, strides)


def aligned(a, dtype):
    """``a`` as a C-contiguous, 64-byte aligned array of ``dtype``; no copy when it already is one."""
    a = np.asarray(a)
    if in_place(a, dtype) and _address(a) % ALIGNMENT == 0:
        return a
    out = aligned_empty(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def in_place(a, dtype):
    """Whether the layers' kernels read and write the array ``a`` in place: C-contiguous, of
    ``dtype``, its elements aligned to their size, and writable (numpy cannot export a read-only
    array through the DLPack version TVM asks for). Never an empty array: numpy calls any empty
    array C-contiguous whatever its strides, and TVM rejects strides that are not compact."""
    flags = a.flags  # a new object at every access
    return a.size > 0 and a.dtype == dtype and flags.c_contiguous and flags.aligned and flags.writeable


def contiguous(a, dtype):
    """``a`` as an array the layers' kernels read and write in place (:func:`in_place`); no copy
    when it already is one."""
    a = np.asarray(a)
    return a if in_place(a, dtype) else aligned(a, dtype)


def _dl(a):
    """A 64-byte aligned, C-contiguous array as a DLPack tensor (TVM checks both)."""
    return tvm.runtime.from_dlpack(a)


def _has(module, name):
    try:
        module[name]
    except AttributeError:
        return False
    return True


@dataclass
class Compiled:
    """A compiled module with the schedule knobs it was built with and its shared library."""

    module: object
    schedule: dict
    path: object = None  # the .so it was loaded from, if any
    digest: str = None  # that file's SHA-256 when it was loaded (checked then), to export it by


# Compiled modules by what they compute (not how): ("layer", mode, I, H, dtype),
# ("projection", mode, I, H, rows, dtype) (a tuned input projection of one chunk),
# ("gemm", N, dtype), ("tracetorch", kind, H, I, dtype). Filled by compiling on first use, or by
# lucid_tvm.load from an artifact, in which case no compiler is needed.
_registry = {}
_registry_lock = threading.Lock()  # held only to read or write _registry, never while compiling
# One compile at a time (here and in export): TVM's compiler is not known to be safe in two
# threads at once, and two threads asking for one kernel compile it once.
compile_lock = threading.Lock()
_recorders = []
# Bumped whenever a module is registered over the cache, so that objects holding kernels made
# earlier (a cell's cached kernel) know to look them up again.
_generation = 0


def registry_generation():
    return _generation


def compiled(identity, compile):
    """The registered module for ``identity``, compiled by ``compile()`` if there is none yet
    (None, registering nothing, if ``compile()`` returns None: a tuned projection without its
    record). Other threads' lookups go on meanwhile: a thread's first call of a new batch size of a
    compiled layer, which looks here, waited 4.9 s for another thread's compile of a new layer
    kind while the registry's lock was held throughout."""
    with _registry_lock:
        entry = _registry.get(identity)
    if entry is None:
        with compile_lock:
            with _registry_lock:
                entry = _registry.get(identity)
            if entry is None:
                built = compile()
                if built is None:
                    return None
                entry = Compiled(*built)
                with _registry_lock:  # one registered meanwhile (from an artifact) stays
                    entry = _registry.setdefault(identity, entry)
    return entry


def _made_once(make):
    """``make(*args)`` kept per ``args``, like ``functools.lru_cache``, but made once however many
    threads ask first: two kernel objects of one layer kind each had the thread's workspace plan
    remade on every call that alternated between them (two GRU 6->11 first called from two
    threads, then in turn on one: 14.3 us a call against 6.9). Each ``args`` has its own lock,
    held while ``make`` compiles, so that making one (from a compiled module) never waits for
    another's compile; ``cache_clear()`` forgets them all, and one made while a module was
    registered (:func:`register`) is not kept: it may hold the module registered before."""
    made, locks, lock = {}, {}, threading.Lock()

    def new_locks():  # in a forked child, where a lock another thread held would stay held
        nonlocal lock
        lock = threading.Lock()
        locks.clear()

    os.register_at_fork(after_in_child=new_locks)

    @functools.wraps(make)
    def get(*args):
        found = made.get(args)
        if found is None:
            with lock:
                args_lock = locks.setdefault(args, threading.Lock())
            with args_lock:
                found = made.get(args)
                if found is None:
                    generation = _generation
                    found = make(*args)
                    with lock:  # not kept if a module was registered meanwhile (see cache_clear)
                        if _generation == generation:
                            made[args] = found
        return found

    def cache_clear():
        with lock:
            made.clear()

    get.cache_clear = cache_clear
    return get


def _note_use(identity):
    for used in _recorders:
        used.add(identity)


def registered(identity):
    """The module registered for ``identity`` (KeyError if none)."""
    with _registry_lock:
        return _registry[identity]


def register(identity, entry):
    """Use ``entry`` for ``identity`` from now on (kernel objects made earlier are dropped)."""
    global _generation
    with _registry_lock:
        _registry[identity] = entry
        _generation += 1
    layer_kernel.cache_clear()
    gemm.cache_clear()
    cuda_layer_kernel.cache_clear()


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
    try:
        from . import build
    except ImportError as err:  # TVM's runtime alone, which fails deep inside tvm's imports
        raise ImportError(f"lucid_tvm needs a kernel that no loaded artifact holds (a layer size, "
                          f"dtype or backward the example input did not use), and this TVM cannot "
                          f"compile one ({err}); export the layer with an example that uses it, or "
                          f"install the full apache-tvm") from err
    return build


def _first_tried(serial, parallel, macs, limit):
    """A kernel on one thread and on all (``parallel`` None if not compiled) as variants for
    :class:`_Faster`: the parallel one first when ``macs`` reach the schedule's ``limit``; the
    serial one alone on a thread without a thread pool (:func:`_without_pool`)."""
    if parallel is None or _without_pool():
        return (serial,)
    return (parallel, serial) if limit is None or macs >= limit else (serial, parallel)


def _pack_layer(spec, lanes, w_ih, w_hh, b_ih, b_hh):
    """(W_ih, b_ih, W_hh, b_hh) of one layer-direction in the kernels' layout, as 64-byte aligned
    numpy arrays."""
    s = spec
    return (pack_weight(w_ih, s.num_gates, s.hidden_size, lanes, s.dtype, aligned_empty),
            pack_bias(b_ih, s.num_gates, s.hidden_size, lanes, s.dtype, aligned_empty),
            pack_weight(w_hh, s.num_gates, s.hidden_size, lanes, s.dtype, aligned_empty),
            pack_bias(b_hh, s.num_gates, s.hidden_size, lanes, s.dtype, aligned_empty))


class LayerKernel:
    """The compiled kernels of one layer-direction kind (mode, sizes, dtype) on this CPU."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = ("layer", spec.mode, spec.input_size, spec.hidden_size, spec.dtype)
        entry = compiled(self.identity, lambda: _build().compile_identity(self.identity))
        self.module, self.lanes = entry.module, entry.schedule["lanes"]
        self.schedule = entry.schedule
        self.functions = {name: self.module[name] for name in
                          ("gather", "project", "recur", "project_parallel", "recur_parallel",
                           "recur_batch_parallel", "recur_projecting", "project_first")
                          if _has(self.module, name)}
        self.blocks = num_blocks(spec.hidden_size, self.lanes)
        self.row_bytes = packed_row_bytes(spec.num_gates, spec.hidden_size, self.lanes, spec.dtype)
        self.row_values = self.row_bytes // np.dtype(spec.dtype).itemsize  # of a step's projection, per batch row
        self._projections = {}
        self._tuned = None

    def projection_for(self, rows):
        """The input projection of a chunk of ``rows`` rows, as a tuple of equivalent kernels
        (the first to try first), each called like ``project``: ``(x (M, K), w, b, xp, row0=0)``
        writes ``x[row0 : row0+rows] @ W^T + b`` into ``xp``. The schedule tuned for exactly that
        many rows when one is registered (from an artifact) or the tuning database of this CPU has
        a record faster than the default; else the default ``project`` on one thread and on all,
        the one the schedule's threshold picks first."""
        if _without_pool():  # and not a tuned schedule, which may run on all threads
            return (self.functions["project"],)
        if rows not in self._projections:
            tuned = self._tuned_projection(rows)
            self._projections[rows] = (tuned,) if tuned else self._variants(
                "project", rows * self.spec.input_size * self.spec.num_gates * self.spec.hidden_size,
                "parallel_call_macs")
        return self._projections[rows]

    def _tuned_projection(self, rows):
        s = self.spec
        identity = ("projection", s.mode, s.input_size, s.hidden_size, rows, s.dtype)
        with _registry_lock:
            entry = _registry.get(identity)
        if entry is None:
            if rows not in self._tuned_rows():
                return None
            entry = compiled(identity, lambda: _build().compile_identity(identity))
            if entry is None:
                return None
        if entry.schedule["lanes"] != self.lanes:  # packed for another vector width
            return None
        function = entry.module["project"]

        def project(x, w, b, xp, row0=0):
            _note_use(identity)
            # The chunk's rows and as many rows of xp. A tuned schedule declares its input 64-byte
            # aligned (the default), so unaligned rows are copied.
            chunk = aligned(np.from_dlpack(x)[row0:row0 + rows], s.dtype)
            function(_dl(chunk), w, b, xp if xp.shape[0] == rows else _dl(np.from_dlpack(xp)[:rows]))

        return project

    def _tuned_rows(self):
        """Row counts with a tuned projection in this CPU's database (read once)."""
        if self._tuned is None:
            try:
                build = _build()
                from . import tuning
            except ImportError:  # TVM's runtime alone: only what an artifact registered
                self._tuned = frozenset()
            else:
                self._tuned = tuning.tuned_rows(self.spec, build.host_target())
        return self._tuned

    def pack(self, w_ih, w_hh, b_ih, b_hh):
        """Weights in the kernels' layout, packed once and reused for every call."""
        return tuple(_dl(a) for a in _pack_layer(self.spec, self.lanes, w_ih, w_hh, b_ih, b_hh))

    def _variants(self, name, macs, threshold):
        """``name`` on one thread and on all (if compiled), in the order :func:`_first_tried` gives."""
        return _first_tried(self.functions[name], self.functions.get(name + "_parallel"), macs,
                            self.schedule.get(threshold))

    def recurrences(self, batch):
        """Names of the recurrence's variants for ``batch`` rows per step: on one thread and split
        by hidden blocks (the threshold orders these two), then split by batch rows when compiled
        and the batch can be split: only rows the one-thread variant sums in full-tile order can
        go to any part (``kernels/recurrent.py``), which are its full tiles of ``rows`` rows and the
        first tiles of the rest that do not split k (a tile of 4 at 5-7 rows a tile, of 2 at 3).
        Where one thread comes first and there are several cores, ``recur_projecting`` comes
        before them all: it runs the recurrence on one thread while another core projects the
        next few steps. Not where the hidden split comes first: there it was slower (RNN
        256/1/150: 245 us a call against 182), yet won timing trials run while another process
        held a core, and the bench then ran RNN_TANH 256/1 28% slower. Nor where the chunk's
        projection is a tuned schedule rather than the default it runs."""
        if _without_pool():
            return ("recur",)
        s, rows = self.spec, self.schedule["rows"]
        macs, limit = batch * s.num_gates * s.hidden_size ** 2, self.schedule.get("parallel_step_macs")
        one_thread_first = limit is not None and macs < limit
        names = ["recur", "recur_parallel"] if one_thread_first else ["recur_parallel", "recur"]
        if "recur_batch_parallel" in self.functions and batch >= (4 if rows < 8 else rows):
            names.append("recur_batch_parallel")
        if one_thread_first and "recur_projecting" in self.functions and self._projects_by_default():
            names.insert(0, "recur_projecting")
        return tuple(name for name in names if name in self.functions)

    def chunk_runners(self, batch):
        """One way to run a chunk per name of :meth:`recurrences`, as variants for :class:`_Faster`
        (each with its ``name``), called ``(steps, project, x_rows, w_ih, b_ih, row0, xp_rows,
        xp_steps, w_hh, b_hh, state, hp, h0, y, yoff, t0, reverse)`` with the chunk's projection
        ``project`` (:meth:`projection_for`) and the arguments of the kernels (``h0``: the state
        the chunk starts from, ``hs[0]``)."""
        def separately(name):
            recur = self.functions[name]

            def run(steps, project, x_rows, w_ih, b_ih, row0, xp_rows, xp_steps, w_hh, b_hh, state, hp, h0, y,
                    yoff, t0, reverse):
                project(steps, x_rows, w_ih, b_ih, xp_rows, row0)
                recur(xp_steps, w_hh, b_hh, *state, hp, y, yoff, t0, reverse, 0)
            run.name = name
            return run

        def first_step_projected(name):
            # The hidden split runs after ``project_first``, which computes the first step's
            # h @ W_hh^T beside the projection: where W_hh comes from DRAM (the weights of a stack
            # outgrow the L3), that stream overlaps the projection's FMAs rather than stalling
            # the first step (GRU 2 x 1024 at batch 1, 25 steps: docs/design.md).
            project_first, recur = self.functions["project_first"], self.functions[name]

            def run(steps, project, x_rows, w_ih, b_ih, row0, xp_rows, xp_steps, w_hh, b_hh, state, hp, h0, y,
                    yoff, t0, reverse):
                project_first(x_rows, w_ih, b_ih, xp_rows, row0, h0, w_hh, b_hh, hp)
                recur(xp_steps, w_hh, b_hh, *state, hp, y, yoff, t0, reverse, 1)
            run.name = name
            return run

        def projecting(name):
            recur = self.functions[name]
            # Steps per part: the fewest with at least PROJECTING_ROWS rows whose rows are a multiple
            # of the tile's, so that the parts' projections sum each row as one call over the chunk.
            tile = self.schedule["rows"] // math.gcd(self.schedule["rows"], batch)
            part = -(-PROJECTING_ROWS // (tile * batch)) * tile

            def run(steps, project, x_rows, w_ih, b_ih, row0, xp_rows, xp_steps, w_hh, b_hh, state, hp, h0, y,
                    yoff, t0, reverse):
                recur(x_rows, w_ih, b_ih, row0, part, xp_steps, w_hh, b_hh, *state, hp, y, yoff, t0, reverse)
            run.name = name
            return run

        fused = "project_first" in self.functions and self._projects_by_default()
        return tuple(projecting(name) if name == "recur_projecting"
                     else first_step_projected(name) if name == "recur_parallel" and fused
                     else separately(name) for name in self.recurrences(batch))

    def _projects_by_default(self):
        """Whether every chunk's projection is the default ``project``: no tuned schedule of it is
        registered (from an artifact) or in this CPU's tuning database."""
        s = self.spec
        with _registry_lock:
            tuned = any(key[0] == "projection" and key[1:4] == (s.mode, s.input_size, s.hidden_size)
                        and key[5] == s.dtype for key in _registry)
        return not tuned and not self._tuned_rows()

    def run(self, packed, x, h0, c0, y, yoff, reverse, hn, cn):
        """One direction over a whole sequence.

        ``x`` (T, B, I) and the output ``y`` (T, B, YW) (columns ``yoff .. yoff+H`` are written)
        are C-contiguous arrays of the layer's dtype, as :func:`contiguous` makes them; or ``x`` is
        the time-major view ``x_bf.transpose(1, 0, 2)`` of such a batch-first array (B, T, I),
        which is copied into the workspace a chunk of steps at a time (:meth:`_Plan.gather`)
        rather than whole. ``h0`` and, for LSTM, ``c0`` are (B, H) arrays or None for zeros. The
        final hidden state (the output row of the last step processed) and LSTM's final cell
        state are copied into ``hn`` and ``cn`` (B, H), each unless None.
        """
        _note_use(self.identity)
        n_t, n_b, _ = x.shape
        plan = self._plan(n_b)
        chunks = plan.chunks(n_t, reverse)  # first: it may grow the workspace
        _load_state(plan.h0, h0)
        if plan.cs is not None:
            _load_state(plan.cs, c0)
        w_ih, b_ih, w_hh, b_hh = packed
        time_major = x.flags.c_contiguous
        # x and y go to a one-chunk call's kernels as numpy arrays: TVM takes them through DLPack
        # itself (0.2 us each) and checks their shapes and strides as a tensor's, where making the
        # tensors here costs 0.5 us each; a longer call makes them once for all its chunks.
        x_rows = x.reshape(n_t * n_b, -1) if time_major else x.transpose(1, 0, 2)
        if len(chunks) > 1:
            x_rows, y = tvm_ffi.from_dlpack(x_rows), tvm_ffi.from_dlpack(y)
        run_chunk, state, hp, h0_tensor = plan.run_chunk, plan.state, plan.hp_tensor, plan.h0_tensor
        for steps, t0, project, xp_rows, xp_steps in chunks:
            rows, row0 = (x_rows, t0 * n_b) if time_major else (plan.gather(x_rows, t0, steps), 0)
            run_chunk(steps, steps, project, rows, w_ih, b_ih, row0, xp_rows, xp_steps, w_hh, b_hh, state, hp,
                      h0_tensor, y, yoff, t0, int(reverse))
        if hn is not None:
            hn[...] = plan.h0
        if cn is not None:
            cn[...] = plan.cs

    def _plan(self, n_b):
        """This thread's :class:`_Plan` for sequences of ``n_b`` rows per step: made on the first
        call with that batch and kept (one per layer kind and thread) for the next, whatever its
        length; a kernel registered since (from an artifact) gets its own."""
        plans = _plans.__dict__
        plan = plans.get(self.identity)
        if plan is None or plan.kernel is not self or plan.batch != n_b:
            plan = plans[self.identity] = _Plan(self, n_b)
        return plan


def _load_state(buffer, value):
    """An initial state into its workspace buffer: ``value`` (B, H), or zeros for None."""
    if value is None:
        buffer.fill(0)  # half the time of ``buffer[...] = 0``, on every call of a small layer
    else:
        buffer[...] = value


class _Faster:
    """Calls the fastest of equivalent kernels (one thread, or all split one way or another) for
    one shape: ``f(work, *args)`` runs one of them on ``args`` and times it per unit of ``work``
    (steps).

    Which variant is fastest depends on the machine and, on a shared VM, on the minute: a parallel
    step waits at its barrier for a core another process holds. On the 2-core VM of
    ``docs/perf`` the parallel recurrence ran up to 2x slower than the serial one for minutes at
    a time (where traced, TVM's worker had woken on the caller's core, which the barrier now
    undoes: docs/design.md, "Spinning"), and the crossover moved between 64K and 150K
    multiply-adds per step. So the schedule's threshold only picks the first; every ``gap`` calls
    another variant (each in turn) runs for a trial of ``SAMPLES`` calls, and whichever ran faster
    is used from then on. The gap doubles while the choice holds (up to ``MAX_GAP`` calls), so
    trying a clearly slower variant costs little. All variants compute every value in the same
    order, so the choice never changes an answer.

    Only the trial's calls and as many calls before it (the current variant) are timed, since the
    clock costs a small layer's call more than the rest of this, and each side counts its fastest
    call. With trials of one call against one, LSTM 64/8/100 stayed on the hidden split for all of
    600 calls, twice, though the batch split is faster (0.169 ms a call against 0.184,
    ``scripts/variant_choice.py --each``); with two it ran the batch split from call 12 on.
    """

    FIRST_GAP, MAX_GAP, SAMPLES = 16, 256, 2

    def __init__(self, variants):
        self.variants = variants
        self.seconds = [math.inf] * len(variants)  # fastest time per unit of work in the last round
        self.current = 0
        self.trials = 0  # trials so far: the next one runs the variant after the current
        self.gap = self.FIRST_GAP
        self.countdown = self.gap if len(variants) > 1 else math.inf

    def __call__(self, work, *args):
        # countdown SAMPLES .. 1: the current variant, timed; 0 .. 1 - SAMPLES: the trial's.
        self.countdown -= 1
        if self.countdown > self.SAMPLES:
            self.variants[self.current](*args)
            return
        trial = self.countdown <= 0
        if self.countdown == 0:
            self.trials += 1
        index = self._candidate() if trial else self.current
        start = time.perf_counter()
        self.variants[index](*args)
        elapsed = (time.perf_counter() - start) / work
        first = self.countdown in (self.SAMPLES, 0)
        self.seconds[index] = elapsed if first else min(self.seconds[index], elapsed)
        if self.countdown == 1 - self.SAMPLES:
            if self.seconds[index] < self.seconds[self.current]:
                self.current, self.gap, self.trials = index, self.FIRST_GAP, 0
            else:
                self.gap = min(2 * self.gap, self.MAX_GAP)
            self.countdown = self.gap

    def _candidate(self):
        """The variant of this trial: the ``trials``-th after the current, skipping the current."""
        n = len(self.variants)
        return (self.current + 1 + (self.trials - 1) % (n - 1)) % n


# Per thread: the last _Plan of each layer kind. A layer runs its directions and layers one after
# another on the caller's thread, so layers of one kind can share a workspace; threads cannot.
_plans = threading.local()

# Per thread: the _Faster of each kernel and batch (recurrence) or row count (projection), kept
# across plans. A plan is remade whenever its kind changes batch, and a fresh _Faster runs its
# first trial (the slower variant, twice) within a few calls: alternating GRU 512 x 2 layers at
# batch 1 with the same layer kind at batch 4, nine calls each, the batch-1 calls took 1.18 ms
# against 0.74 called alone, as their learned choice started over every time.
_choices = threading.local()
MAX_CHOICES = 256  # per thread; past it the choices start over (a few hundred bytes each)


# Per thread: ``without_pool`` is set, in a forked child, on the thread that forked it if that
# thread had made kernel choices (every call that can run on all threads makes one first). TVM
# gives each thread that launches a parallel kernel a pool of worker threads, and a child holds a
# copy of the forking thread but none of its workers: the child's first parallel launch waited
# for them forever. TVM cannot restart that pool (its reset joins the missing workers, and the
# child aborts), so that thread then runs every kernel on itself, as torch's DataLoader workers
# run torch on one thread, and with the default projection rather than a tuned one (which may run
# on all threads; the two agree within the tuning check's 1e-4, not bit for bit). The child's
# other threads get pools of their own. (A thread whose choices ran only one-thread variants has
# no pool yet, but is held to one thread all the same.)
_forked = threading.local()


def _without_pool():
    return getattr(_forked, "without_pool", False)


def _after_fork_in_child():
    global _registry_lock, compile_lock
    if _choices.__dict__:
        _forked.without_pool = True
    _choices.__dict__.clear()
    _plans.__dict__.clear()  # their choices
    # Fresh locks: a thread of the parent that held one (compiling) is not in the child. (A compile
    # cut off there may have held TVM's or LLVM's own locks too, which no fresh lock here frees.)
    _registry_lock, compile_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _choice(key, variants):
    """This thread's _Faster for ``key``, made over ``variants()`` on first use."""
    kept = _choices.__dict__
    faster = kept.get(key)
    if faster is None:
        if len(kept) >= MAX_CHOICES:
            kept.clear()
        faster = kept[key] = _Faster(variants())
    return faster


def release_workspaces():
    """Drop this thread's kept workspaces (the next call of each layer kind allocates its own)."""
    _plans.__dict__.clear()


def between_layers(shape, dtype):
    """This thread's buffer for what one layer of a stack hands the next, kept for the next call
    when it holds at most ``STACK_CHUNK_BYTES`` (a unidirectional stack's chunk; a bidirectional
    one hands on the whole sequence): views of its first values serve smaller calls.

    Allocated and freed on every call, such a buffer and the output, freed together when the
    caller drops the output, made glibc give their memory back to the system (they passed its
    trim threshold), and the page faults of the next call took as long as the layers: RNN
    40->128, batch 32, 100 steps, 2 layers, 1.86 ms and 878 page faults a call, 0.98 ms and none
    with the buffer kept. A larger buffer is filled by layers that take far longer than its
    page faults, and kept it would hold its memory after the call."""
    size = math.prod(shape)
    kept = _plans.__dict__.get("between layers")
    if kept is None or kept.dtype != dtype or kept.size < size:
        kept = np.empty(size, dtype)
        if kept.nbytes <= STACK_CHUNK_BYTES:
            _plans.__dict__["between layers"] = kept
    return kept[:size].reshape(shape)


class _Plan:
    """Everything a sequence of ``batch`` rows per step needs besides its input, weights and
    outputs, at any length: the workspace as DLPack views, and the choice of kernel variants.

    The workspace is one 64-byte aligned allocation holding a chunk of projected steps ``xp``
    (not the whole sequence), one step's ``h @ W_hh^T + b_hh`` (``hp``), the double-buffered
    hidden state ``hs`` and LSTM's cell state ``cs``, each starting 64-byte aligned: at most
    256 to 1024 rows (as many as fit 512 KB), or B rows if more, of ``G * H_padded`` values
    (``schedule.chunk_steps``), plus one step. It grows to the longest chunk seen. A batch-first
    input's rows of one chunk (:meth:`gather`) go to a buffer of their own, made on first use.

    The variant chosen depends on the batch, not on the length, so sequences of varying length
    keep what was learned (and skip this setup): a plan per length tried the first variant anew
    at each length, LSTM 256/16 alternating 150 and 151 steps ran 10% slower than at 150 alone.
    What was learned also outlives the plan (:func:`_choice`), for a kind whose batch changes.
    """

    def __init__(self, kernel, batch):
        self.kernel, self.batch = kernel, batch
        self.run_chunk = _choice((kernel, "chunk", batch), lambda: kernel.chunk_runners(batch))
        self.capacity = 0  # steps of xp the workspace holds
        self.views = {}  # by chunk length: its projection and views of xp in this workspace
        self.last_call, self.last_chunks = None, ()  # (length, direction) of the last call, its chunks

    def fit(self, n_steps):
        """Steps per chunk and the chunks' first steps for a sequence of ``n_steps``, with a
        workspace that holds one chunk."""
        chunk = chunk_steps(n_steps, self.batch, self.kernel.row_bytes)
        if chunk > self.capacity:
            self._allocate(chunk)
        return chunk, range(0, n_steps, chunk)

    def chunks(self, n_steps, reverse):
        """``(steps, t0, project, xp_rows, xp_steps)`` of each chunk of a sequence of ``n_steps``,
        in the order a direction runs them (see :meth:`fit` and :meth:`chunk`). The last call's
        answer is kept: a small layer's call is a few microseconds."""
        if self.last_call != (n_steps, reverse):
            chunk, starts = self.fit(n_steps)
            chunks = []
            for t0 in starts:
                steps = min(chunk, n_steps - t0)
                chunks.append((steps, t0) + self.chunk(steps))
            self.last_call, self.last_chunks = (n_steps, reverse), tuple(reversed(chunks) if reverse else chunks)
        return self.last_chunks

    def chunk(self, steps):
        """For a chunk of ``steps``: its projection (kept across workspaces) and views of xp."""
        entry = self.views.get(steps)
        if entry is None:
            rows = steps * self.batch
            project = _choice((self.kernel, "project", rows), lambda: self.kernel.projection_for(rows))
            xp = self.xp[:steps]
            entry = self.views[steps] = (project, _dl(xp.reshape((-1,) + xp.shape[2:])), _dl(xp))
        return entry

    def gather(self, x_bf, t0, steps):
        """Steps ``t0 .. t0+steps`` of a batch-first input ``x_bf`` (B, T, I) (DLPack) copied into
        this plan's input buffer as the time-major rows the projection reads, returned as DLPack.
        A chunk's copy rather than the whole input's keeps a call's memory linear in a step."""
        rows = self.rows.get(steps)
        if rows is None:
            if self.x_chunk is None:
                s = self.kernel.spec
                self.x_chunk = aligned_empty((self.capacity * self.batch, s.input_size), s.dtype)
            rows = self.rows[steps] = _dl(self.x_chunk[:steps * self.batch])
        self.kernel.functions["gather"](x_bf, rows, t0)
        return rows

    def _allocate(self, steps):
        kernel, n_b = self.kernel, self.batch
        s = kernel.spec
        packed_shape = (kernel.blocks, s.num_gates, kernel.lanes)
        step_size = n_b * math.prod(packed_shape)
        state_size = n_b * s.hidden_size
        unit = ALIGNMENT // np.dtype(s.dtype).itemsize
        is_lstm = s.mode == "LSTM"
        ends = itertools.accumulate(-(-size // unit) * unit for size in
                                    (steps * step_size, step_size, 2 * state_size, state_size * is_lstm))
        xp_end, hp_end, hs_end, cs_end = ends
        workspace = aligned_empty((cs_end,), s.dtype)
        self.xp = workspace[:steps * step_size].reshape((steps, n_b) + packed_shape)
        self.hp_tensor = _dl(workspace[xp_end:xp_end + step_size].reshape((n_b,) + packed_shape))
        self.hs = workspace[hp_end:hp_end + 2 * state_size].reshape(2, n_b, s.hidden_size)
        self.h0 = self.hs[0]  # where a chunk starts from
        self.h0_tensor = _dl(self.h0)
        self.cs = workspace[hs_end:hs_end + state_size].reshape(n_b, s.hidden_size) if is_lstm else None
        self.state = (_dl(self.hs),) if self.cs is None else (_dl(self.hs), _dl(self.cs))
        self.capacity, self.views = steps, {}
        self.x_chunk, self.rows = None, {}  # gather's input buffer, made on first use, and its views
        self.last_call, self.last_chunks = None, ()  # views of the old workspace


@_made_once
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
        self._parallel_macs = entry.schedule["parallel_call_macs"]
        # On one thread and on all, each call site keeping the faster: called between torch's ops
        # (the tracetorch face's backward), the pool waits for cores that torch's OpenMP threads
        # spin on after their work, and one thread is then faster (docs/design.md, "Threads"). An
        # artifact written before holds one project, on all threads.
        self._serial = entry.module["project"]
        self._parallel = entry.module["project_parallel"] if _has(entry.module, "project_parallel") else None
        self.blocks = num_blocks(output_size, self.lanes)
        self.width = self.blocks * self.lanes

    def pack(self, w, b=None):
        """Weights (output_size, K) and bias in the GEMM's layout."""
        _within_index_range("a GEMM's packed operand", self.width, w.shape[1], "use a smaller batch or layer")
        return (_dl(pack_weight(w, 1, self.output_size, self.lanes, self.dtype, aligned_empty)),
                _dl(pack_bias(b, 1, self.output_size, self.lanes, self.dtype, aligned_empty)))

    def __call__(self, x, packed, one_thread=False):
        """``x @ W^T + b`` with ``packed`` from :meth:`pack`; ``one_thread`` runs it on the calling
        thread only, never waking the pool (the tracetorch face's training steps, ``tracetorch/_step.py``)."""
        _note_use(self.identity)
        rows, k = x.shape
        _within_index_range("a GEMM's input or output", rows, max(k, self.width), "use a smaller batch or layer")
        out = aligned_empty((rows, self.width), self.dtype)
        args = (contiguous(x, self.dtype), *packed, _dl(out.reshape(rows, self.blocks, 1, self.lanes)), 0)
        if one_thread:
            self._serial(*args)
        else:
            _choice((self, rows, k), lambda: _first_tried(self._serial, self._parallel, rows * k * self.output_size,
                                                          self._parallel_macs))(1, *args)
        return out


def _within_index_range(what, rows, width, advice):
    """An array of ``rows`` x ``width`` values within the kernels' 32-bit indices, else a
    ValueError naming it and giving ``advice``. (The tracetorch face's elementwise kernels take
    arrays no larger than its GEMMs' of the same step.)"""
    if rows * width > MAX_ELEMENTS:
        raise ValueError(f"lucid_tvm: {what} of {rows} x {width} values outgrows the kernels' 32-bit "
                         f"indices ({MAX_ELEMENTS} values an array); {advice}")


@_made_once
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


# -- NVIDIA GPUs -------------------------------------------------------------------------------

CUDA = "cuda"  # registry key prefix: (CUDA, identity) is the GPU module of ``identity``


def cuda_device_present():
    """Whether TVM's runtime sees a CUDA device here."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - a runtime without CUDA support has no device either
        return False


class CudaLayerKernel:
    """The GPU kernels of one layer-direction kind (``kernels/cuda.py``): the same ``project`` /
    ``recur`` calls as the CPU kernels, on GPU buffers passed zero-copy through DLPack (torch CUDA
    tensors, for instance). The module comes from a loaded CUDA artifact, or is compiled for this
    machine's GPU on first use (which needs the compiler and nvcc). Packed weights live on GPU
    ``device_index``."""

    def __init__(self, spec, device_index=0):
        self.spec = spec
        self.identity = ("layer", spec.mode, spec.input_size, spec.hidden_size, spec.dtype)

        def compile_here():
            build = _build()
            return build.compile_identity(self.identity, build.parse_target("cuda"))

        entry = compiled((CUDA, self.identity), compile_here)
        self.lanes = entry.schedule["lanes"]
        self._project = entry.module["project"]
        self._recur = entry.module["recur"]
        self.blocks = num_blocks(spec.hidden_size, self.lanes)
        self.device = tvm.cuda(device_index)

    def pack(self, w_ih, w_hh, b_ih, b_hh):
        """Packed weights, copied to the GPU once."""
        _within_index_range("the GPU kernels' packed weights", max(self.spec.input_size, self.spec.hidden_size),
                            self.packed_width, "use a smaller layer")
        arrays = _pack_layer(self.spec, self.lanes, w_ih, w_hh, b_ih, b_hh)
        return tuple(tvm.runtime.tensor(a, device=self.device) for a in arrays)

    def run(self, packed, x, hs, cs, y, yoff, reverse, xp, hp):
        """One direction over a whole sequence, all arguments DLPack GPU tensors of the layer's
        dtype, C-contiguous: ``x`` (T, B, I); ``hs`` (2, B, H) with h0 in ``hs[0]`` (the final h is
        there afterwards); ``cs`` (B, H), LSTM only, c0 in, c_n out; ``y`` (T, B, YW), columns
        ``yoff .. yoff+H`` written; workspaces ``xp`` (T*B, NB*G*L) and ``hp`` (B, NB*G*L).
        The projection covers all T steps at once (GPU memory is not the limit the CPU's chunking
        is for), so the recurrence runs with ``t0 = 0``. A sequence whose arrays would outgrow the
        kernels' 32-bit indices comes a chunk of steps at a time (``nn/gpu.py``), ``hs`` and
        ``cs`` carrying the state from one to the next."""
        _note_use(self.identity)
        s = self.spec
        n_t, n_b = x.shape[0], x.shape[1]
        w_ih, b_ih, w_hh, b_hh = packed
        packed_shape = (self.blocks, s.num_gates, self.lanes)
        x, xp = _dl(x), _dl(xp)
        self._project(x._create_view((n_t * n_b, s.input_size)), w_ih, b_ih,
                      xp._create_view((n_t * n_b,) + packed_shape), 0)
        state = (_dl(hs), _dl(cs)) if s.mode == "LSTM" else (_dl(hs),)
        self._recur(xp._create_view((n_t, n_b) + packed_shape), w_hh, b_hh, *state,
                    _dl(hp)._create_view((n_b,) + packed_shape), _dl(y), yoff, 0, int(reverse))

    @property
    def packed_width(self):
        """Row length ``NB*G*L`` of the ``xp`` and ``hp`` workspaces :meth:`run` takes."""
        return self.blocks * self.spec.num_gates * self.lanes


@_made_once
def cuda_layer_kernel(mode, input_size, hidden_size, dtype, device_index=0):
    return CudaLayerKernel(LayerSpec(mode, input_size, hidden_size, np.dtype(dtype).name), device_index)
