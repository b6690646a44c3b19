"""One step of a tracetorch layer on compiled kernels: forward, and backward for autograd.

Each step is a few calls: the Linear over cat([H, x]) on the compiled GEMM, the cell's
elementwise kernels (``kernels/tracetorch.py``), and for the backward two more GEMMs per Linear:
``d[H, x] = dpre @ W`` and ``[dW | db] = dpre^T @ [H, x, 1]``. Arrays are numpy (zero-copy views
of torch tensors). Weights are packed once per parameter version and storage (torch bumps
``_version`` on every in-place change, so an optimizer step is noticed), and compared bit for bit
with those packed where writes torch does not count are usual (``StepEngine.compare_values``).

A step autograd records (training) runs its GEMMs on the calling thread, forward and backward.
A training loop runs torch's parallel ops between the face's calls (the autograd engine adds each
step's weight gradients into ``.grad``, the optimizer steps), whose OpenMP threads then spin for
milliseconds: a parallel GEMM waits for the core one of them holds, and its own spinning worker
slows torch's next add, which its own time does not show (docs/design.md, "Threads"). Inference
keeps the faster of one thread and all, as measured at each call site.
"""

import numpy as np

from ..runtime import Functions, aligned, aligned_empty, gemm


# Rows of the batch a weight gradient's GEMM sums at a time. The GEMM sums its k (here the
# batch) in one running sum per output, whose rounding grows with the rows summed: LSTM 16's
# gradients at 200,704 rows were 7e-6 of their norm off float64's, torch's 5e-7. Chunks of rows
# summed apart, then added, keep it that of one chunk.
WEIGHT_GRAD_ROWS = 8192

# Each kind's Linear modules over cat([H, x]), by their outputs in hidden sizes.
LINEAR_OUTPUTS = {"SimpleRNN": (1,), "LSTM": (4,), "GRU": (2, 1)}

# The one torch tensor of a step whose memory the arrays saved for its backward share (the others
# are copies): the new H, the incoming C, the incoming H. They are those tracetorch's own ops save
# (tanh's output; C in f * C; H in H * r), so autograd refuses a backward after an in-place change
# to one of them where it refuses tracetorch's, and other in-place changes leave both right.
SAVED_STATE = {"SimpleRNN": "h_new", "LSTM": "c", "GRU": "h"}


def _same_bits(a, b):
    """Whether the arrays of the tuples ``a`` and ``b`` (or Nones) hold the same bits."""
    return all((x is None) == (y is None) and (x is None or np.array_equal(x.view(f"u{x.itemsize}"),
                                                                            y.view(f"u{y.itemsize}")))
               for x, y in zip(a, b))


class _PackedLinear:
    """A torch Linear's weights packed for the forward GEMM (W) and, on the first backward, for
    the input-gradient GEMM (W^T): inference never compiles or packs the backward's kernels.
    ``what`` names the Linear in errors; ``shape`` is the (out, in) its weight must have."""

    def __init__(self, linear, dtype, what, shape):
        self.linear, self.dtype, self.what, self.shape = linear, dtype, what, shape
        self.forward_gemm = gemm(shape[0], dtype)
        self._key, self._values = None, None  # of the weights last packed

    def packed(self, compare_values=False, weights=None):
        """Itself, with ``weights`` (a weight and bias, the bias maybe None) packed, by default the
        Linear's as they are now; ``compare_values``: compare them with those last packed, whatever
        the version counters say."""
        w, b = weights or (self.linear.weight, self.linear.bias)
        key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        if key != self._key or compare_values:
            values = (w.detach().numpy(), None if b is None else b.detach().numpy())
            if key != self._key or not _same_bits(self._values, values):
                self._pack(key, values, (w.detach(), None if b is None else b.detach()))
        return self

    def _pack(self, key, values, tensors):
        # A Linear replaced by one of other sizes, or given other weights: tracetorch fails in
        # torch's matmul, or not at all where only the output is wider; we say which.
        w, b = values
        if w.shape != self.shape or (b is not None and b.shape != self.shape[:1]):
            raise ValueError(f"{self.what}: expected a Linear({self.shape[1]}, {self.shape[0]}), got weight "
                             f"{w.shape}" + ("" if b is None else f" and bias {b.shape}"))
        self.forward = self.forward_gemm.pack(w, b)
        self.transposed = None
        self._key, self._values = key, (w.copy(), None if b is None else b.copy())
        # The packed tensors' memory is kept: after ``p.data = new`` freed it, a later tensor at
        # the same address would have matched the key.
        self._held = tensors

    def __call__(self, x, one_thread):
        return self.forward_gemm(x, self.forward, one_thread)

    def input_grad(self, dpre):
        """``dpre @ W``, with the W packed (a copy of it: the Linear may hold another by now)."""
        input_grad_gemm = gemm(self.shape[1], self.dtype)
        if self.transposed is None:
            self.transposed = input_grad_gemm.pack(self._values[0].T)
        return input_grad_gemm(dpre, self.transposed, one_thread=True)[:, :input_grad_gemm.output_size]

    def weight_grad(self, dpre, inputs):
        """(dW, db) from dpre (B, out) and the Linear's inputs (B, in); db is None without a bias
        (in the weights packed)."""
        batch, width = inputs.shape
        ones = np.ones((batch, 1), self.dtype)
        extended = np.concatenate([inputs, ones], axis=1)  # the last column yields db
        wgemm = gemm(width + 1, self.dtype)
        full = None
        for first in range(0, max(batch, 1), WEIGHT_GRAD_ROWS):  # (an empty batch: one GEMM, of zeros)
            rows = slice(first, first + WEIGHT_GRAD_ROWS)
            # (The GEMM makes its input contiguous.)
            part = wgemm(dpre[rows].T, wgemm.pack(extended[rows].T), one_thread=True)
            full = part if full is None else np.add(full, part, out=full)
        return full[:, :width], None if self._values[1] is None else full[:, width]


class StepEngine:
    """Forward and backward of one tracetorch layer kind for fixed sizes and dtype."""

    def __init__(self, kind, linears, in_features, out_features, dtype):
        """``linears``: name -> torch Linear, in the order of ``LINEAR_OUTPUTS[kind]``."""
        self.kind, self.dtype = kind, dtype
        self.hidden = out_features
        self.linears = [_PackedLinear(linear, dtype, f"{kind}.{name}", (k * out_features, in_features + out_features))
                        for (name, linear), k in zip(linears.items(), LINEAR_OUTPUTS[kind])]
        self.fns = Functions(("tracetorch", kind, out_features, in_features, dtype))
        # Writes through ``param.data`` (manual SGD, clipping, an EMA) or a numpy view leave
        # ``_version`` as it was. Where they are usual, after a backward and at a new sequence
        # (``zero_states``), the next forward compares the weights with a copy of those packed
        # (15 us for 512 KB, where packing W and W^T again took 100-200): not on every call,
        # which would add as much to each step of a small layer.
        self.compare_values = False

    def runs(self, linears):
        """Whether this engine computes with these Linear modules (not ones since replaced)."""
        return all(packed.linear is linear for packed, linear in zip(self.linears, linears.values()))

    def weights_packed(self):
        """Each Linear's weight and bias (the bias maybe None) as last packed: detached tensors of
        the storage a step computed with, in the order :meth:`backward` takes them."""
        return tuple(tensor for linear in self.linears for tensor in linear._held)

    def _empty(self, batch, width=None):
        return aligned_empty((batch, width or self.hidden), self.dtype)

    def forward(self, x, h, c=None, training=False):
        """(h_new, c_new or None, saved-for-backward); ``training``: a step autograd records (the
        LSTM keeps nothing for a backward without it)."""
        compare, self.compare_values = self.compare_values, False
        batch = x.shape[0]
        # The GEMM reads its input where it is (any C-contiguous array): no aligned copy.
        hx = np.concatenate([h, x], axis=1, dtype=self.dtype)
        first = self.linears[0].packed(compare)
        pre = first(hx, training)
        h_new = self._empty(batch)
        if self.kind == "SimpleRNN":
            self.fns.forward(pre, h_new)
            return h_new, None, (hx, h_new)
        if self.kind == "LSTM":
            c, c_new, acts = aligned(c, self.dtype), self._empty(batch), self._empty(batch, 4 * self.hidden)
            self.fns.forward(pre, c, h_new, c_new, acts.reshape(batch, 4, self.hidden))
            if not training:
                return h_new, c_new, None
            # c_new is the new C state, which the caller may change in place (a reset): a copy.
            c_kept = self._empty(batch)
            np.copyto(c_kept, c_new)
            return h_new, c_new, (hx, c, c_kept, acts)
        h = aligned(h, self.dtype)
        ru, rhx = self._empty(batch, 2 * self.hidden), self._empty(batch, hx.shape[1])
        self.fns.forward_gates(pre, h, aligned(x, self.dtype), ru, rhx)
        cand = self._empty(batch)
        self.fns.forward_out(self.linears[1].packed(compare)(rhx, training), h, ru, h_new, cand)
        return h_new, None, (hx, h, ru, rhx, cand)

    def backward(self, saved, weights, dh, dc=None):
        """(dx, dh_prev, dc_prev or None, [(dW, db) per Linear]) of a step the forward computed
        with ``weights`` (:meth:`weights_packed` after it), which need not be the Linears' any
        more (``torch.func.functional_call``, a Parameter replaced since, ``p.data = new``)."""
        self.compare_values = True
        dh = aligned(dh, self.dtype)
        batch, hidden = dh.shape
        if self.kind in ("SimpleRNN", "LSTM"):
            linear = self.linears[0].packed(weights=weights)
            if self.kind == "SimpleRNN":
                hx, h_new = saved
                dpre, dc_prev = self._empty(batch), None
                self.fns.backward(h_new, dh, dpre)
            else:
                hx, c, c_new, acts = saved
                dpre, dc_prev = self._empty(batch, 4 * hidden), self._empty(batch)
                self.fns.backward(acts, c, c_new, dh, aligned(dc, self.dtype), dpre.reshape(batch, 4, hidden), dc_prev)
            dhx = linear.input_grad(dpre)
            return dhx[:, hidden:], dhx[:, :hidden], dc_prev, [linear.weight_grad(dpre, hx)]
        hx, h, ru, rhx, cand = saved
        gates, candidate = self.linears[0].packed(weights=weights[:2]), self.linears[1].packed(weights=weights[2:])
        dpre2, du, dh_direct = self._empty(batch), self._empty(batch), self._empty(batch)
        self.fns.backward_out(h, ru, cand, dh, dpre2, du, dh_direct)
        drhx = aligned(candidate.input_grad(dpre2), self.dtype)
        dpre1, dh_acc = self._empty(batch, 2 * hidden), self._empty(batch)
        self.fns.backward_gates(h, ru, drhx, du, dh_direct, dpre1.reshape(batch, 2, hidden), dh_acc)
        dhx = gates.input_grad(dpre1)
        dx = drhx[:, hidden:] + dhx[:, hidden:]
        dh_prev = dh_acc + dhx[:, :hidden]
        return dx, dh_prev, None, [gates.weight_grad(dpre1, hx), candidate.weight_grad(dpre2, rhx)]
