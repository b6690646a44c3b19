"""sigmoid and tanh for the kernels, written with plain arithmetic so they vectorize.

TVM lowers ``tirx.exp`` / ``tirx.tanh`` / ``tirx.sigmoid`` to scalar libm calls, which dominate a
recurrent step at small batch. For float32 these versions use only multiply-adds, a floor, a
division and bit operations, so LLVM keeps them in SIMD registers. Relative error is below 1e-6
over the whole float range (tested against numpy in float64); NaN propagates. Other dtypes keep
TVM's intrinsics.

- exp (inside both): ``x = n ln2 + r`` with ``|r| <= ln2 / 2``, a degree-7 Taylor polynomial in r (truncation
  below 1e-8), and ``2^n`` built in the exponent bits. x is clamped to [-87, 88] so 2^n stays a
  normal float, which only matters where sigmoid is below 1e-38.
- tanh: ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)``, sign restored; below |x| = 0.25, where
  ``1 - e`` would cancel, its odd Taylor polynomial to x^9.
"""

from tvm import tirx

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.4286068203094173e-06
_EXP_TAYLOR = [1.0 / f for f in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0)]  # r^7 .. r^0
_TANH_TAYLOR = [62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0, 1.0]  # x^9, x^7, .. x^1


def _expr(x):
    return x.asobject() if hasattr(x, "asobject") else x  # a TE tensor element -> PrimExpr


def _is_fast(x):
    return str(x.ty.dtype) == "float32"


def _f(value):
    return tirx.const(value, "float32")


def _horner(coefficients, x):
    result = _f(coefficients[0])
    for c in coefficients[1:]:
        result = result * x + _f(c)
    return result


def let(value, body):
    """``body(v)`` with v bound to value once. Use it for any value used more than once: a copied
    expression is computed once per copy, and nested copies grow the code (and the compile time)
    exponentially. Each call makes a fresh variable, so build an expression once per use site."""
    var = tirx.Var("v", str(value.ty.dtype))
    return tirx.Let(var, value, body(var))


def _keep_nan(x, value):
    return tirx.Select(tirx.isnan(x), x, value)


def _exp32(x):
    """exp for float32 without NaN handling (callers add it once)."""
    def clamped(x):
        def split(n):
            def reduced(r):
                bits = tirx.shift_left(n.astype("int32") + tirx.const(127, "int32"), tirx.const(23, "int32"))
                return _horner(_EXP_TAYLOR, r) * tirx.reinterpret("float32", bits)

            return let(x - n * _f(_LN2_HI) - n * _f(_LN2_LO), reduced)

        return let(tirx.floor(x * _f(_LOG2E) + _f(0.5)), split)

    return let(tirx.max(tirx.min(x, _f(88.0)), _f(-87.0)), clamped)


def sigmoid(x):
    x = _expr(x)
    if not _is_fast(x):
        return tirx.sigmoid(x)
    return let(x, lambda v: _keep_nan(v, _f(1.0) / (_f(1.0) + _exp32(-v))))


def tanh(x):
    x = _expr(x)
    if not _is_fast(x):
        return tirx.tanh(x)

    def on(v):
        def magnitude(a):
            e = let(_exp32(a * _f(-2.0)), lambda e: (_f(1.0) - e) / (_f(1.0) + e))
            small = let(a * a, lambda a2: _horner(_TANH_TAYLOR, a2)) * a
            return tirx.Select(a < _f(0.25), small, e)

        m = let(tirx.abs(v), magnitude)
        return _keep_nan(v, let(m, lambda m: tirx.Select(v < _f(0.0), -m, m)))

    return let(x, on)
