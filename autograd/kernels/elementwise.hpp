// autograd/kernels/elementwise.hpp — elementwise maps, plain and with broadcasting.
//
// What it is for: the loops under the unary ops (exp, log, sqrt, rsqrt, tanh,
// sigmoid, silu, relu, gelu, abs; unary.cpp) and the binary ops on equal-length
// arrays (add, sub, mul, div; binary.cpp). Every fast kernel is
// vectorised with xsimd and threaded with OpenMP above a size threshold; each
// has a `_naive` twin with the same signature, a plain scalar loop over std::
// math, kept as its test oracle and as the readable definition.
//
// Also the binary ops with numpy broadcasting (binary_broadcast_forward /
// _backward; broadcast.cpp): the inputs are described by strides over the output's axes, 0
// where an input is broadcast, and the backward sums over those axes itself.
//
// What it is not: general strided views, or anything that knows a Tensor or
// the tape. Arrays are raw, contiguous, row-major; the op layer reshapes.
// Softmax and cross-entropy live in softmax.hpp.
//
// Shapes are given in comments: `x is (n)`, `x is (rows, n)`.
// Backward kernels ACCUMULATE (`dx += ...`), as the tape expects; the one
// exception, binary_broadcast_backward, writes (see there).
#pragma once

#include <cstdint>

namespace tg::kernels {

// ---- unary maps ------------------------------------------------------------

// The unary functions, with their forward formula and the derivative the
// backward kernel applies (s = sigmoid, Φ = standard normal CDF, φ its pdf):
//   Exp       y = e^x                     dx += dy * y
//   Log       y = ln x                    dx += dy / x
//   Sqrt      y = √x                      dx += dy * 0.5 / y
//   Rsqrt     y = 1/√x                    dx += dy * (-0.5) * y³
//   Tanh      y = tanh x                  dx += dy * (1 - y²)
//   Sigmoid   y = 1 / (1 + e^-x)          dx += dy * y (1 - y)
//   Silu      y = x / (1 + e^-x)          dx += dy * s (1 + x (1 - s)),  s = sigmoid(x)
//   Relu      y = max(x, 0)               dx += dy * [y > 0]
//   GeluTanh  y = x s(2u),                dx += dy * (s + 2 x s (1 - s) u'),  s = s(2u)
//             u = √(2/π) (x + 0.044715 x³)       u' = √(2/π) (1 + 3·0.044715 x²)
//   GeluErf   y = x Φ(x)                  dx += dy * (Φ(x) + x φ(x))
//   Abs       y = |x|                     dx += dy * sign(x)   (sign(0) = 0)
// See Note [Stable gelu] for why the gelus are written this way.
enum class Unary { Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Silu, Relu, GeluTanh, GeluErf, Abs };

// Name of a unary function ("exp", "gelu_tanh", ...), for messages and tests.
const char* unary_name(Unary f);

// Which saved arrays unary_backward reads for f: the op layer saves only
// those (the other pointer may then be nullptr).
//   uses y: Exp, Sqrt, Rsqrt, Tanh, Sigmoid, Relu
//   uses x: Log, Silu, GeluTanh, GeluErf, Abs
bool unary_backward_uses_x(Unary f);
bool unary_backward_uses_y(Unary f);

// y = f(x).  x, y are (n); y may alias x.
template <class T>
void unary_forward(Unary f, int64_t n, const T* x, T* y);
template <class T>
void unary_forward_naive(Unary f, int64_t n, const T* x, T* y);

// dx += dy * f'(x).  x, y = f(x), dy, dx are (n); see unary_backward_uses_x/_y
// for which of x and y must be valid.
template <class T>
void unary_backward(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx);
template <class T>
void unary_backward_naive(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx);

// Note [Stable gelu]
// The textbook gelu_tanh, 0.5 x (1 + tanh u), and gelu_erf, 0.5 x (1 + erf(x/√2)),
// lose all relative accuracy for negative x: 1 + tanh u and 1 + erf(.) cancel.
// The identities 0.5 (1 + tanh u) = sigmoid(2u) and 0.5 (1 + erf(x/√2)) =
// 0.5 erfc(-x/√2) give the same functions without the cancellation, so both the
// fast and the naive kernels use them. For |x| > 1e4 the cubic in u is computed
// from x clamped to ±1e4 (the sigmoid is saturated long before), so x³ never
// overflows and the derivative never forms 0·∞.
//
// Note [Vector erfc]
// xsimd 8.1's erf/erfc for double are off by up to 68 / 3e4 ulp (and more for
// erfc beyond 2.2), so gelu_erf uses its own vector erfc: for z >= 0,
//   erfc(z) = exp(-z²) · G(t) / (z + 2),   t = (z - 2) / (z + 2) in [-1, 1),
// where G(t) = erfcx(z) (z + 2) is smooth and bounded on [-1, 1] (G(-1) = 2,
// G(1) = 1/√π) and is approximated by its Chebyshev interpolant (degree 29 for
// double, 12 for float; coefficients made with mpmath, evaluated by Horner in t).
// exp(-z²) is taken as exp(-hi)(1 - lo) with z² = hi + lo split exactly by an
// FMA. For z < 0, erfc(z) = 2 - erfc(-z). Measured: <= 5 ulp from the exact
// erfc in float and double over its whole normal range (glibc's erfc: <= 3.5).
//
// Note [Accuracy of the fast maps]
// The fast maps use xsimd 8.1's exp, log, tanh and sqrt. Measured against
// long-double references (1.6M random points per range, this machine):
// exp <= 1.5 ulp (float) / 0.9 ulp (double), log <= 0.75 ulp, tanh <= 1.35
// ulp, sqrt correctly rounded. xsimd's rsqrt (a 12-bit estimate) and its
// erf/erfc (up to 68 / 3e4 ulp in double) are not used. Fast vs naive twin:
// <= 1-2 ulp for exp/log/tanh, <= 4 ulp for sigmoid/silu/gelu_tanh, <= 6 ulp
// for gelu_erf; bitwise equal for sqrt, rsqrt, relu, abs. Two differences at
// the edges of the range: xsimd::exp returns +inf a little early (x > 88.376
// float / 709.436 double, where the true value is still below the largest
// finite number) and returns 0 where the result would be subnormal (below
// ~1.2e-38 float / 2.2e-308 double); sigmoid, silu and the gelus inherit this
// (results below the smallest normal number become 0).

// ---- binary maps -----------------------------------------------------------

enum class Binary { Add, Sub, Mul, Div };

const char* binary_name(Binary op);

// z = x op y.  x, y, z are (n); z may alias x or y.
template <class T>
void binary_forward(Binary op, int64_t n, const T* x, const T* y, T* z);
template <class T>
void binary_forward_naive(Binary op, int64_t n, const T* x, const T* y, T* z);

// Backward of z = x op y, accumulating; dx or dy may be nullptr (not wanted).
//   Add: dx += dz            dy += dz
//   Sub: dx += dz            dy -= dz
//   Mul: dx += dz * y        dy += dz * x
//   Div: dx += dz / y        dy -= (dz / y) * x / y
// x is read only for Mul and Div (and then must be valid if dy is wanted);
// y likewise. All arrays are (n).
template <class T>
void binary_backward(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx, T* dy);
template <class T>
void binary_backward_naive(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx,
                           T* dy);

// ---- binary maps with broadcasting ---------------------------------------------
//
// z = a op b where a and b broadcast (numpy rules) to z's shape out_shape, of
// rank `rank` (0 allowed: one element). z is contiguous, row-major. a and b
// are contiguous row-major arrays of their own shapes; each is described by
// its strides over z's axes (in elements), made by broadcast_strides: 0 on the
// axes the input lacks (leading) or has as size 1, elsewhere its row-major
// stride. So a's element for z's index (i_0, ..., i_{rank-1}) is
// a[Σ_k i_k a_strides[k]], and a holds Π_{k: a_strides[k] != 0} out_shape[k]
// elements. Strides that are not of this form throw std::invalid_argument.
//   e.g. z (B,T,H,D) = y (B,T,H,D) * g (B,T,H,1):  g_strides = (T·H, H, 1, 0)
//        z (B,T,C)   = x (B,T,C) + bias (C):        bias_strides = (0, 0, 1)
//
// The fast kernels first drop z's size-1 axes and merge neighbouring axes
// along which both inputs are contiguous or both broadcast; the innermost
// merged axis is then a vector loop in which each input is either contiguous
// or one value (stride 0): the gate above becomes (B·T·H, D) with g constant
// along D, the bias (B·T, C) with bias constant along B·T.

// The strides of an input of shape in_shape (rank in_rank <= out_rank) over
// the axes of out_shape, aligned on the right: 0 where the input lacks the
// axis or has size 1, elsewhere its row-major stride. strides is (out_rank).
// Throws std::invalid_argument if in_shape does not broadcast to out_shape.
void broadcast_strides(int out_rank, const int64_t* out_shape, int in_rank, const int64_t* in_shape,
                       int64_t* strides);

// z = a op b, broadcasting.  z is out_shape; a, b as above. z must not overlap
// a or b. Bitwise equal to the naive twin (one rounding per element).
template <class T>
void binary_broadcast_forward(Binary op, int rank, const int64_t* out_shape, const int64_t* a_strides,
                              const int64_t* b_strides, const T* a, const T* b, T* z);
template <class T>
void binary_broadcast_forward_naive(Binary op, int rank, const int64_t* out_shape,
                                    const int64_t* a_strides, const int64_t* b_strides, const T* a,
                                    const T* b, T* z);

// Backward of z = a op b with broadcasting: da gets, for each element of a,
// the sum over the z elements it was broadcast to of the binary_backward
// terms (Add: dz; Sub: dz, -dz; Mul: dz·b, dz·a; Div: dz/b, -(dz/b)·a/b),
// and likewise db (Note [sum_to] in autograd/ops_elementwise.cpp).
// dz is out_shape; da (shape of a) and db (shape of b) are WRITTEN, not
// accumulated (unlike binary_backward: the op layer would only zero-fill a
// fresh array to add into it); either may be nullptr (not wanted). a is read
// only for Mul/Div db, b only for Mul da and Div. An element of a that is
// broadcast to no element of z (z empty) gets 0.
// Sums accumulate in double (Note [Accumulation in double]); an element that
// is not summed (a has z's full shape) is the binary_backward term itself,
// bitwise. Threaded with each thread owning its output elements, or with
// per-thread partial sums added in thread order when the reduced input has
// fewer rows than threads: reproducible at a fixed thread count.
template <class T>
void binary_broadcast_backward(Binary op, int rank, const int64_t* out_shape, const int64_t* a_strides,
                               const int64_t* b_strides, const T* a, const T* b, const T* dz, T* da,
                               T* db);
template <class T>
void binary_broadcast_backward_naive(Binary op, int rank, const int64_t* out_shape,
                                     const int64_t* a_strides, const int64_t* b_strides, const T* a,
                                     const T* b, const T* dz, T* da, T* db);

// Note [Accumulation in double]
// Sums accumulate in double for both T = float and T = double, and the result
// is rounded to T once. For float that makes a sum of 10⁵ terms as accurate
// as one rounding (the float sum would drift by ~√n ulps), at no visible cost
// (these loops are memory bound). The naive twins do the same, so they are
// accurate oracles. The fast kernels sum in a different order (vector lanes,
// per-thread blocks), so in double the two agree to round-off, not bitwise.

}  // namespace tg::kernels
