// autograd/ops_linalg.cpp — matmul, linear and the reductions (sum, mean, max).
#include <algorithm>
#include <numeric>

#include <xtensor/xmanipulation.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xsort.hpp>

#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/gemm.hpp"
#include "autograd/ops_common.hpp"

namespace tg {

using namespace detail;  // the helpers of autograd/ops_common.hpp

// All products run on kernels::gemm (packed, blocked, xsimd + OpenMP) or, in reference
// mode, on its naive twin; see autograd/kernels/gemm.hpp. Transposes are never
// materialised: the kernel reads A or B transposed.

template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
  detail::require_defined(a, "matmul", "a");
  detail::require_defined(b, "matmul", "b");
  const Shape sa = a.shape(), sb = b.shape();
  auto bad = [&](const std::string& why) {
    fail("matmul: " + shape_to_string(sa) + " @ " + shape_to_string(sb) + ": " + why);
  };
  if (sa.size() < 2 || sb.size() < 2) bad("both operands need at least 2 dimensions");
  const std::size_t M = sa[sa.size() - 2], K = sa.back(), N = sb.back();
  if (sb[sb.size() - 2] != K)
    bad("inner dimensions " + std::to_string(K) + " != " + std::to_string(sb[sb.size() - 2]));
  // b shared (2-D weight) or batched with the same leading shape as a.
  const bool shared = sb.size() == 2;
  if (!shared && !std::equal(sa.begin(), sa.end() - 2, sb.begin(), sb.end() - 2))
    bad("batch shapes differ (b must be 2-D or have a's batch shape)");
  const std::size_t batch = prod(sa, 0, sa.size() - 2);
  Shape so(sa.begin(), sa.end() - 2);
  so.push_back(M);
  so.push_back(N);
  // out (batch, M, N) = a (batch, M, K) @ b (batch or 1, K, N)
  xt::xarray<T> out = xt::xarray<T>::from_shape(so);
  if (shared)  // one GEMM over all batch rows: (batch*M, K) @ (K, N)
    TG_KERNEL(gemm)(false, false, batch * M, N, K, T(1), a.value().data(), K, b.value().data(), N, T(0), out.data(), N);
  else
    TG_KERNEL(gemm_batched)(false, false, M, N, K, T(1), a.value().data(), K, M * K, b.value().data(), N, K * N, T(0),
                            out.data(), N, M * N, batch);
  Tensor<T> r(std::move(out));
  detail::check_forward(r, "matmul", {&a, &b});
  if (needs_grad<T>({&a, &b}))
    attach<T>(r, "matmul", {a, b}, [a, b, batch, M, N, K, shared](const xt::xarray<T>& dz) {
      // dz (batch,M,N).  da = dz @ b^T (batch,M,K);  db = a^T @ dz (K,N), summed over batch if shared
      if (a.requires_grad()) {
        xt::xarray<T> da = xt::xarray<T>::from_shape(a.value().shape());
        if (shared)
          TG_KERNEL(gemm)(false, true, batch * M, K, N, T(1), dz.data(), N, b.value().data(), N, T(0), da.data(), K);
        else
          TG_KERNEL(gemm_batched)(false, true, M, K, N, T(1), dz.data(), N, M * N, b.value().data(), N, K * N, T(0),
                                  da.data(), K, M * K, batch);
        a.accumulate_grad(std::move(da), "matmul");
      }
      if (b.requires_grad()) {
        xt::xarray<T> db = xt::xarray<T>::from_shape(b.value().shape());
        if (shared)
          TG_KERNEL(gemm)(true, false, K, N, batch * M, T(1), a.value().data(), K, dz.data(), N, T(0), db.data(), N);
        else
          TG_KERNEL(gemm_batched)(true, false, K, N, M, T(1), a.value().data(), K, M * K, dz.data(), N, M * N, T(0),
                                  db.data(), N, K * N, batch);
        b.accumulate_grad(std::move(db), "matmul");
      }
    }).vjp = [a, b, shared, K, N](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> {
      // The same products as ops: da = dz @ bᵀ;  db = aᵀ @ dz (rows of every batch stacked when b is shared)
      return {grad_if(a, [&] { return matmul(dz, transpose(b, -2, -1)); }), grad_if(b, [&] {
                if (!shared) return matmul(transpose(a, -2, -1), dz);
                return matmul(transpose(reshape(a, {-1, std::int64_t(K)}), 0, 1), reshape(dz, {-1, std::int64_t(N)}));
              })};
    };
  return r;
}

template <class T>
Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& bias) {
  detail::require_defined(x, "linear", "x");
  detail::require_defined(w, "linear", "w");
  const Shape sx = x.shape(), sw = w.shape();
  if (sw.size() != 2 || sx.empty() || sx.back() != sw[1])
    fail("linear: x " + shape_to_string(sx) + " with weight " + shape_to_string(sw) +
         ": weight must be (out, in) with in == x's last dimension");
  const std::size_t in = sw[1], outf = sw[0], rows = prod(sx, 0, sx.size() - 1);
  if (bias.defined() && (bias.dim() != 1 || bias.shape()[0] != outf))
    fail("linear: bias " + bias.shape_str() + " does not match weight " + shape_to_string(sw) +
         " (expected (" + std::to_string(outf) + "))");
  Shape so(sx.begin(), sx.end() - 1);
  so.push_back(outf);
  // y (rows,out) = x (rows,in) @ w^T (in,out) [+ bias]
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  T beta = T(0);
  if (bias.defined()) {
    for (std::size_t r = 0; r < rows; ++r) std::copy_n(bias.value().data(), outf, y.data() + r * outf);
    beta = T(1);
  }
  TG_KERNEL(gemm)(false, true, rows, outf, in, T(1), x.value().data(), in, w.value().data(), in, beta, y.data(), outf);
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "linear", {&x, &w, &bias});
  if (needs_grad<T>({&x, &w, &bias}))
    attach<T>(out, "linear", {x, w, bias}, [x, w, bias, rows, in, outf](const xt::xarray<T>& dy) {
      // dy (rows,out).  dx = dy @ w (rows,in);  dw = dy^T @ x (out,in);  dbias = Σ_rows dy
      if (x.requires_grad()) {
        xt::xarray<T> dx = xt::xarray<T>::from_shape(x.value().shape());
        TG_KERNEL(gemm)(false, false, rows, in, outf, T(1), dy.data(), outf, w.value().data(), in, T(0), dx.data(), in);
        x.accumulate_grad(std::move(dx), "linear");
      }
      if (w.requires_grad()) {
        xt::xarray<T> dw = xt::xarray<T>::from_shape(w.value().shape());
        TG_KERNEL(gemm)(true, false, outf, in, rows, T(1), dy.data(), outf, x.value().data(), in, T(0), dw.data(), in);
        w.accumulate_grad(std::move(dw), "linear");
      }
      if (bias.defined() && bias.requires_grad()) {
        xt::xarray<T> db = xt::zeros<T>({outf});
        for (std::size_t r = 0; r < rows; ++r)
          for (std::size_t j = 0; j < outf; ++j) db(j) += dy.data()[r * outf + j];
        bias.accumulate_grad(std::move(db), "linear");
      }
    }).vjp = [x, w, bias, rows, in, outf](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // As ops on dy viewed (rows,out): dx = dy @ w;  dw = dyᵀ @ x;  dbias = Σ_rows dy
      Tensor<T> dy2 = reshape(dy, {std::int64_t(rows), std::int64_t(outf)});
      return {grad_if(x, [&] { return reshape(matmul(dy2, w), dims_of(x.shape())); }),
              grad_if(w, [&] { return matmul(transpose(dy2, 0, 1), reshape(x, {std::int64_t(rows), std::int64_t(in)})); }),
              grad_if(bias, [&] { return sum(dy2, {0}); })};
    };
  return out;
}

// ---- reductions ----------------------------------------------------------------------

namespace {

std::vector<std::size_t> norm_axes(const std::vector<int>& axes, std::size_t n, const char* op, const Shape& s) {
  std::vector<std::size_t> r;
  if (axes.empty()) {
    r.resize(n);
    std::iota(r.begin(), r.end(), 0);
    return r;
  }
  for (int a : axes) {
    std::size_t k = detail::norm_axis(a, n, op, s);
    if (std::find(r.begin(), r.end(), k) != r.end())
      fail(std::string(op) + ": axis " + std::to_string(a) + " given twice for shape " + shape_to_string(s));
    r.push_back(k);
  }
  std::sort(r.begin(), r.end());
  return r;
}

// The shape of a reduction over `axes` with keepdims (1 on reduced axes).
Shape kept_shape(const Shape& s, const std::vector<std::size_t>& axes) {
  Shape k = s;
  for (auto a : axes) k[a] = 1;
  return k;
}

// The shape of a reduction over `axes` without keepdims.
Shape dropped_shape(const Shape& s, const std::vector<std::size_t>& axes) {
  Shape r;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (std::find(axes.begin(), axes.end(), i) == axes.end()) r.push_back(s[i]);
  return r;
}

}  // namespace

template <class T>
Tensor<T> sum(const Tensor<T>& x, std::vector<int> axes_in, bool keepdims) {
  detail::require_defined(x, "sum", "x");
  const Shape sx = x.shape();
  auto axes = norm_axes(axes_in, sx.size(), "sum", sx);
  const Shape kept = kept_shape(sx, axes);
  xt::xarray<T> y = detail::reduce_sum_keepdims(x.value(), axes);
  if (!keepdims) y.reshape(dropped_shape(sx, axes));
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "sum", {&x});
  if (needs_grad<T>({&x}))
    attach<T>(out, "sum", {x}, [x, kept, sx](const xt::xarray<T>& dy) {
      // dx = dy broadcast back over the summed axes
      xt::xarray<T> d = dy;
      d.reshape(kept);
      x.accumulate_grad(xt::xarray<T>(xt::broadcast(d, sx)), "sum");
    }).vjp = [kept, sx](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {broadcast_to(reshape(dy, dims_of(kept)), sx)};
    };
  return out;
}

template <class T>
Tensor<T> mean(const Tensor<T>& x, std::vector<int> axes_in, bool keepdims) {
  detail::require_defined(x, "mean", "x");
  const Shape sx = x.shape();
  auto axes = norm_axes(axes_in, sx.size(), "mean", sx);
  std::size_t count = 1;
  for (auto a : axes) count *= sx[a];
  if (count == 0) fail("mean: reducing over zero elements of shape " + shape_to_string(sx));
  const Shape kept = kept_shape(sx, axes);
  xt::xarray<T> y = detail::reduce_sum_keepdims(x.value(), axes);
  y /= T(count);
  if (!keepdims) y.reshape(dropped_shape(sx, axes));
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "mean", {&x});
  if (needs_grad<T>({&x}))
    attach<T>(out, "mean", {x}, [x, kept, sx, count](const xt::xarray<T>& dy) {
      // dx = dy / count, broadcast back
      xt::xarray<T> d = dy / T(count);
      d.reshape(kept);
      x.accumulate_grad(xt::xarray<T>(xt::broadcast(d, sx)), "mean");
    }).vjp = [kept, sx, count](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {broadcast_to(reshape(dy, dims_of(kept)), sx) * (T(1) / T(count))};
    };
  return out;
}

template <class T>
Tensor<T> max(const Tensor<T>& x, int axis_in, bool keepdims) {
  detail::require_defined(x, "max", "x");
  const Shape sx = x.shape();
  const std::size_t axis = detail::norm_axis(axis_in, sx.size(), "max", sx);
  if (sx[axis] == 0) fail("max: axis " + std::to_string(axis_in) + " of shape " + shape_to_string(sx) + " is empty");
  // View x as (outer, n, inner); y[o, i] = max_k x[o, k, i], arg[o, i] = first k reaching it.
  const std::size_t outer = prod(sx, 0, axis), n = sx[axis], inner = prod(sx, axis + 1);
  Shape kept = sx;
  kept[axis] = 1;
  xt::xarray<T> y = xt::xarray<T>::from_shape(kept);
  std::vector<std::size_t> arg(outer * inner);
  const T* xp = x.value().data();
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t i = 0; i < inner; ++i) {
      std::size_t best = 0;
      T bv = xp[o * n * inner + i];
      for (std::size_t k = 1; k < n; ++k) {
        T v = xp[(o * n + k) * inner + i];
        if (v > bv || (std::isnan(v) && !std::isnan(bv))) bv = v, best = k;
      }
      y.data()[o * inner + i] = bv;
      arg[o * inner + i] = best;
    }
  if (!keepdims) {
    Shape s = sx;
    s.erase(s.begin() + axis);
    y.reshape(s);
  }
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x})) {
    auto argp = std::make_shared<std::vector<std::size_t>>(std::move(arg));
    attach<T>(out, "max", {x}, [x, argp, outer, n, inner](const xt::xarray<T>& dy) {
      // dx[o, arg, i] = dy[o, i]; zero elsewhere
      const auto& arg = *argp;
      xt::xarray<T> dx = xt::zeros<T>(x.value().shape());
      for (std::size_t o = 0; o < outer; ++o)
        for (std::size_t i = 0; i < inner; ++i) dx.data()[(o * n + arg[o * inner + i]) * inner + i] = dy.data()[o * inner + i];
      x.accumulate_grad(std::move(dx), "max");
    }, "axis=" + std::to_string(axis)).vjp = [argp, sx, kept, outer, n, inner](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // dx = dy broadcast back, times the (constant) one-hot of the arg max
      xt::xarray<T> onehot = xt::zeros<T>(sx);
      for (std::size_t o = 0; o < outer; ++o)
        for (std::size_t i = 0; i < inner; ++i) onehot.data()[(o * n + (*argp)[o * inner + i]) * inner + i] = T(1);
      return {broadcast_to(reshape(dy, dims_of(kept)), sx) * constant(std::move(onehot))};
    };
  }
  return out;
}

#define TG_INSTANTIATE(T)                                                               \
  template Tensor<T> matmul<T>(const Tensor<T>&, const Tensor<T>&);                     \
  template Tensor<T> linear<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&);   \
  template Tensor<T> sum<T>(const Tensor<T>&, std::vector<int>, bool);                  \
  template Tensor<T> mean<T>(const Tensor<T>&, std::vector<int>, bool);                 \
  template Tensor<T> max<T>(const Tensor<T>&, int, bool);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
