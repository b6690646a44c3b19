"""sigmoid and tanh for the kernels, written with plain arithmetic so they vectorize.

TVM lowers ``tirx.exp`` / ``tirx.tanh`` / ``tirx.sigmoid`` to scalar libm calls, which dominate a
recurrent step at small batch. For float32 these versions use only multiply-adds, min/max, one
division and bit operations, so LLVM keeps them in SIMD registers. Relative error is
below 1e-6 wherever the result is a normal float (``tests/test_fastmath.py``, against numpy in
float64); NaN propagates. float16 goes through them in float32 and is rounded once, as torch's
CPU ops compute it (TVM's intrinsics in float16 round at every operation). float64 keeps TVM's
intrinsics (tanh with its series near 0).

The gate math of a small layer is bound by these instructions (with a batch) or by their latency
(two of them in a row per LSTM step), so they are as short as the accuracy allows, and their
polynomials are evaluated by Estrin's scheme rather than Horner's rule (a shorter chain of
dependent operations; up to 5% off a small layer's step, ``docs/design.md``). The
coefficients come from ``scripts/fit_fastmath.py`` (near-minimax relative error):

- sigmoid: ``1 / (1 + exp(-x))``. exp: ``-x = n ln2 + r`` with ``|r| <= ln2 / 2``, a degree-5
  polynomial in r (7.5e-8), and ``2^n`` built in the exponent bits. x is clamped to [-89, 87]:
  at 87, 2^n stays a normal float; at -89, n is 128, whose exponent bits are those of +inf, so
  sigmoid is exactly 0 from -88.4 down (where its true value is subnormal) as torch's is, and
  ``sigmoid(-inf) * inf`` is NaN as in torch (a GRU's reset gate on an infinite state).
- tanh: ``x p(x^2) / q(x^2)`` with p of degree 5 and q of degree 3 (8.9e-8) for ``|x| <= 8``,
  and +-1 beyond (``1 - tanh(8)`` is 2.3e-7). Odd, so -0 stays -0.
"""

from tvm import tirx

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.4286068203094173e-06
# Highest power first.
_EXP_POLY = [0.008297652937471867, 0.04191538318991661, 0.16667574644088745, 0.49998894333839417,
             0.9999997019767761, 1.0000001192092896]
# e^-s for the polynomial's e^r at s = -r: the odd powers' coefficients negated.
_EXP_POLY_MINUS = [-c if (len(_EXP_POLY) - 1 - i) % 2 else c for i, c in enumerate(_EXP_POLY)]
# 1.5 * 2^23 + 127: the sum of it and a float y of magnitude below 2^22 is a float of ulp 1, y
# rounded to the nearest integer, and its last 9 bits are that integer plus 127 (modulo 512), the
# exponent field of 2^n for -126 <= n <= 128.
_SHIFTER = 12582912.0 + 127.0
_TANH_CLAMP = 8.0  # a power of two: beyond it, clamped x times 1/8 is exactly +-1
_TANH_P = [2.6117101536993204e-11, -1.562191265236379e-08, 1.0161680620512925e-05,
           0.0030155007261782885, 0.13006393611431122, 1.0]
_TANH_Q = [0.00024137584841810167, 0.02414800599217415, 0.46339720487594604, 1.0]


def _expr(x):
    return x.asobject() if hasattr(x, "asobject") else x  # a TE tensor element -> PrimExpr


def _is_fast(x):
    return str(x.ty.dtype) == "float32"


def _is_half(x):
    return str(x.ty.dtype) == "float16"


def _in_float32(function, x):
    """``function`` of a float16 ``x`` computed in float32 and rounded once."""
    return tirx.Cast("float16", function(tirx.Cast("float32", x)))


def _f(value):
    return tirx.const(value, "float32")


def _estrin(coefficients, x):
    """The polynomial of highest-power-first ``coefficients`` at ``x`` (a variable), by Estrin's
    scheme: pairs ``c_2i + c_2i+1 x`` side by side, then Horner's rule in ``x^2`` over them. A
    degree-5 polynomial is then a chain of 3 dependent operations (``x^2`` and two multiply-adds)
    instead of Horner's 5, and in the gate math of a small layer's step that chain is the critical
    path."""
    low_first = coefficients[::-1]
    pairs = [_f(low_first[i]) + _f(low_first[i + 1]) * x if i + 1 < len(low_first) else _f(low_first[i])
             for i in range(0, len(low_first), 2)]

    def in_x2(x2):
        result = pairs[-1]
        for pair in pairs[-2::-1]:
            result = result * x2 + pair
        return result

    return let(x * x, in_x2)


def let(value, body):
    """``body(v)`` with v bound to value once. Use it for any value used more than once: a copied
    expression is computed once per copy, and nested copies grow the code (and the compile time)
    exponentially. Each call makes a fresh variable, so build an expression once per use site."""
    var = tirx.Var("v", str(value.ty.dtype))
    return tirx.Let(var, value, body(var))


def _clamped(x, low, high, body):
    """``body(c)`` with ``c`` x limited to [low, high], NaN kept: each bound is a select that keeps
    x when its comparison fails, as a NaN's does. LLVM makes each one x86 min or max instruction
    with the operands in the order that returns x for a NaN, where ``tirx.min`` / ``tirx.max``
    return the bound; NaN then runs through the arithmetic after, and no compare and blend at the
    end is needed to put it back (10 of the 179 instructions per vector of an AVX2 LSTM's gate math)."""
    return let(tirx.Select(x < low, low, x), lambda v: let(tirx.Select(v > high, high, v), body))


def _exp_minus(x):
    """e^-x for float32, as 2^n e^r with -x = n ln2 + r and |r| <= ln2 / 2, x clamped to [-89, 87]
    (see the module's notes). n comes rounded to the nearest integer as the last bits of
    ``-x log2e + _SHIFTER`` (a float of ulp 1 there), so that shifting those bits into the exponent
    field makes 2^n: no rounding, conversion or integer add. Negated throughout (``s = -r``, the
    odd coefficients negated), so that -x is never formed. A NaN stays NaN: the clamp keeps it, and
    the polynomial of it is NaN whatever 2^n its bits make."""
    def clamped(x):
        def rounded(t):
            def split(n):
                def reduced(s):
                    scale = tirx.reinterpret("float32", tirx.shift_left(tirx.reinterpret("int32", t),
                                                                        tirx.const(23, "int32")))
                    return _estrin(_EXP_POLY_MINUS, s) * scale

                return let(x + n * _f(_LN2_HI) + n * _f(_LN2_LO), reduced)

            return let(t - _f(_SHIFTER), split)

        return let(x * _f(-_LOG2E) + _f(_SHIFTER), rounded)

    return _clamped(x, _f(-89.0), _f(87.0), clamped)


def sigmoid(x):
    x = _expr(x)
    if not _is_fast(x):
        return _in_float32(sigmoid, x) if _is_half(x) else tirx.sigmoid(x)
    return let(x, lambda v: _f(1.0) / (_f(1.0) + _exp_minus(v)))


def _tanh_intrinsic(x):
    """TVM's tanh, but for ``|x| < 2^-6`` its Taylor series to x^7 (relative error below 1e-16
    there). TVM computes ``(1 - e^-2x) / (1 + e^-2x)``, whose subtraction leaves few correct
    digits near 0: in float64, tanh(1e-12) came out 2e-5 off and tanh(1e-20) as 0."""
    dtype = str(x.ty.dtype)

    def on(v):
        series = let(v * v, lambda t: v * (((tirx.const(-17 / 315, dtype) * t + tirx.const(2 / 15, dtype)) * t
                                            + tirx.const(-1 / 3, dtype)) * t + tirx.const(1.0, dtype)))
        return tirx.Select(tirx.abs(v) < tirx.const(2.0**-6, dtype), series, tirx.tanh(v))

    return let(x, on)


def tanh(x):
    x = _expr(x)
    if not _is_fast(x):
        return _in_float32(tanh, x) if _is_half(x) else _tanh_intrinsic(x)

    def on(v):
        def clamped(c):
            rational = let(c * c, lambda t: c * _estrin(_TANH_P, t) / _estrin(_TANH_Q, t))
            return tirx.Select(c == v, rational, c * _f(1.0 / _TANH_CLAMP))  # +-1 past the clamp

        return _clamped(v, _f(-_TANH_CLAMP), _f(_TANH_CLAMP), clamped)

    return let(x, on)
