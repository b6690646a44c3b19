"""Fit the polynomial coefficients of lucid_tvm/kernels/fastmath.py (float32 exp and tanh).

    python scripts/fit_fastmath.py

Both are near-minimax in relative error: weighted least squares on Chebyshev-spaced points,
reweighted by Lawson's rule toward the points of largest error (and, for the rational tanh, by the
last denominator, as in Sanathanan-Koerner). It prints each fit's error in float64 and when
evaluated in float32 as the kernels do (Estrin's scheme) with float32 coefficients, and the
coefficients, highest power first, as fastmath.py lists them. The kernels' accuracy is tested in
tests/test_fastmath.py.
"""

import numpy as np

LN2 = np.log(2.0)
TANH_CLAMP = 8.0  # 1 - tanh(8) = 2.3e-7; beyond 8 the kernels return +-1 (8 * 0.125 is exactly 1)


def _estrin32(coefficients, x):
    """Evaluate highest-power-first ``coefficients`` at float32 ``x`` in float32, in the order
    the kernels do (``fastmath._estrin``): pairs ``c_2i + c_2i+1 x``, then Horner's rule in x^2."""
    low_first = [np.float32(c) for c in coefficients[::-1]]
    pairs = [low_first[i] + low_first[i + 1] * x if i + 1 < len(low_first) else np.full_like(x, low_first[i])
             for i in range(0, len(low_first), 2)]
    x2 = x * x
    result = pairs[-1]
    for pair in pairs[-2::-1]:
        result = result * x2 + pair
    return result


def _lawson(design, target, weight, relative_error, denominator=None, iterations=80):
    """Coefficients c of ``design @ c ~ target`` minimising the largest ``relative_error(c)``,
    approximately: weighted least squares, the weights raised where the error is largest
    (Lawson) and, for a rational fit, divided by the last denominator (Sanathanan-Koerner)."""
    best = None
    for _ in range(iterations):
        c, *_ = np.linalg.lstsq(design * weight[:, None], target * weight, rcond=None)
        error = np.abs(relative_error(c))
        if best is None or error.max() < best[0]:
            best = (error.max(), c)
        weight = weight * np.sqrt(error / error.max() + 0.02)
        if denominator is not None:
            q = denominator(c)
            weight = weight / q * q.mean()
    return best[1]


def fit_exp(degree=5):
    """exp(r) on |r| <= ln2 / 2 (the reduced argument), relative error."""
    r = 0.5 * LN2 * np.cos(np.linspace(0, np.pi, 20001))
    f = np.exp(r)
    design = r[:, None] ** np.arange(degree + 1)
    c = _lawson(design, f, 1 / f, lambda c: (design @ c - f) / f)
    coefficients = [float(v) for v in c[::-1].astype(np.float32)]
    grid = np.linspace(-0.5 * LN2, 0.5 * LN2, 1_000_001).astype(np.float32)
    exact = np.exp(grid.astype(np.float64))
    error32 = np.abs(_estrin32(coefficients, grid) - exact) / exact
    return coefficients, np.abs((design @ c - f) / f).max(), error32.max()


def fit_tanh(p_degree=5, q_degree=3, clamp=TANH_CLAMP):
    """tanh(x) = x p(x^2) / q(x^2) on 0 < x <= clamp, q(0) = 1, relative error."""
    x = np.unique(np.concatenate([clamp * (1 - np.cos(np.linspace(0, np.pi / 2, 40000))),
                                  np.linspace(1e-4, clamp, 40000)]))
    x = x[x > 0]
    s = (x / clamp) ** 2  # scaled x^2 keeps the least-squares problem well conditioned
    f = np.tanh(x)
    design = np.hstack([x[:, None] * s[:, None] ** np.arange(p_degree + 1),
                        -f[:, None] * s[:, None] ** np.arange(1, q_degree + 1)])

    def numerator_and_denominator(c):
        return (x * np.polyval(c[:p_degree + 1][::-1], s),
                np.polyval(np.concatenate([[1.0], c[p_degree + 1:]])[::-1], s))

    def relative_error(c):
        p, q = numerator_and_denominator(c)
        return (p / q - f) / f

    c = _lawson(design, f, 1 / f, relative_error, lambda c: numerator_and_denominator(c)[1])
    # Coefficients of s^k are those of x^(2k) times clamp^(2k).
    p = c[:p_degree + 1] / clamp ** (2 * np.arange(p_degree + 1))
    q = np.concatenate([[1.0], c[p_degree + 1:] / clamp ** (2 * np.arange(1, q_degree + 1))])
    p32, q32 = [float(v) for v in p[::-1].astype(np.float32)], [float(v) for v in q[::-1].astype(np.float32)]
    grid = np.linspace(0, clamp, 2_000_001).astype(np.float32)[1:]
    t = grid * grid
    exact = np.tanh(grid.astype(np.float64))
    error32 = np.abs(grid * _estrin32(p32, t) / _estrin32(q32, t) - exact) / exact
    error64 = np.abs(x * np.polyval(p[::-1], x * x) / np.polyval(q[::-1], x * x) - f) / f
    return (p32, q32), error64.max(), error32.max()


if __name__ == "__main__":
    exp_coefficients, e64, e32 = fit_exp()
    print(f"exp, degree 5 on |r| <= ln2/2: max relative error {e64:.2e} (float64), {e32:.2e} (float32)")
    print(f"  _EXP_POLY = {exp_coefficients}")
    (p, q), e64, e32 = fit_tanh()
    print(f"tanh = x p(x^2) / q(x^2), degrees 5/3 on |x| <= {TANH_CLAMP}: max relative error "
          f"{e64:.2e} (float64), {e32:.2e} (float32)")
    print(f"  _TANH_P = {p}")
    print(f"  _TANH_Q = {q}")
