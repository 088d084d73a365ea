// autograd/ops_shape.cpp — ops that move data without arithmetic: reshape, permute,
// transpose, slice, concat, split, index_select / index_add, masked_fill, where.
#include <algorithm>
#include <numeric>

#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "autograd/ops_common.hpp"

namespace tg {

using namespace detail;  // the helpers of autograd/ops_common.hpp

// ---- broadcasting as ops (the differentiable backward of every broadcasting op) ----

template <class T>
Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape) {
  // y = x summed over the axes broadcasting would add or stretch to go from `shape` to x's
  detail::require_defined(x, "sum_to", "x");
  const Shape sx = x.shape();
  if (sx == shape) return x;
  if (broadcast_shapes(shape, sx, "sum_to") != sx)
    fail("sum_to: " + shape_to_string(sx) + " does not broadcast from " + shape_to_string(shape));
  Tensor<T> out(sum_to(x.value(), shape));
  if (needs_grad<T>({&x}))
    // dx = dy broadcast back to x's shape
    attach<T>(out, "sum_to", {x}, [x, sx](const xt::xarray<T>& dy) {
      x.accumulate_grad(xt::xarray<T>(xt::broadcast(dy, sx)), "sum_to");
    }, shape_to_string(shape)).vjp = [sx](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {broadcast_to(dy, sx)};
    };
  return out;
}

template <class T>
Tensor<T> broadcast_to(const Tensor<T>& x, const Shape& shape) {
  // y = x copied along the axes it lacks or has as 1
  detail::require_defined(x, "broadcast_to", "x");
  const Shape sx = x.shape();
  if (sx == shape) return x;
  if (broadcast_shapes(sx, shape, "broadcast_to") != shape)
    fail("broadcast_to: " + shape_to_string(sx) + " does not broadcast to " + shape_to_string(shape));
  Tensor<T> out(xt::xarray<T>(xt::broadcast(x.value(), shape)));
  if (needs_grad<T>({&x}))
    // dx = sum_to(dy, x's shape)
    attach<T>(out, "broadcast_to", {x}, [x, sx](const xt::xarray<T>& dy) {
      x.accumulate_grad(sum_to(dy, sx), "broadcast_to");
    }, shape_to_string(shape)).vjp = [sx](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {sum_to(dy, sx)};
    };
  return out;
}

template <class T>
Tensor<T> reshape(const Tensor<T>& x, const std::vector<std::int64_t>& shape_in) {
  detail::require_defined(x, "reshape", "x");
  const Shape sx = x.shape();
  Shape s;
  int infer = -1;
  std::size_t known = 1;
  for (std::size_t i = 0; i < shape_in.size(); ++i) {
    if (shape_in[i] == -1) {
      if (infer >= 0) fail("reshape: " + shape_to_string(sx) + " -> " + shape_to_string(shape_in) + ": more than one -1");
      infer = static_cast<int>(i);
      s.push_back(1);
    } else if (shape_in[i] < 0) {
      fail("reshape: " + shape_to_string(sx) + " -> " + shape_to_string(shape_in) + ": negative size");
    } else {
      s.push_back(static_cast<std::size_t>(shape_in[i]));
      known *= s.back();
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      fail("reshape: " + shape_to_string(sx) + " -> " + shape_to_string(shape_in) + ": cannot infer -1");
    s[infer] = x.numel() / known;
  }
  if (prod(s) != x.numel())
    fail("reshape: " + shape_to_string(sx) + " (" + std::to_string(x.numel()) + " elements) -> " +
         shape_to_string(shape_in) + " (" + std::to_string(prod(s)) + " elements)");
  // To its own shape: x itself, no copy and no node (the attention's G1 path reshapes
  // query pieces that already have their shape when K == H).
  if (s == sx) return x;
  xt::xarray<T> y = x.value();
  y.reshape(s);
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x}))
    attach<T>(out, "reshape", {x}, [x, sx](const xt::xarray<T>& dy) {
      // dx = dy with x's shape
      xt::xarray<T> dx = dy;
      dx.reshape(sx);
      x.accumulate_grad(std::move(dx), "reshape");
    }).vjp = [sx](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {reshape(dy, dims_of(sx))}; };
  return out;
}

template <class T>
Tensor<T> permute(const Tensor<T>& x, const std::vector<std::size_t>& perm) {
  detail::require_defined(x, "permute", "x");
  const Shape sx = x.shape();
  std::vector<std::size_t> check = perm;
  std::sort(check.begin(), check.end());
  for (std::size_t i = 0; i < check.size(); ++i)
    if (check[i] != i || check.size() != sx.size())
      fail("permute: " + shape_to_string(perm) + " is not a permutation of the axes of " + shape_to_string(sx));
  Tensor<T> out(xt::xarray<T>(xt::transpose(x.value(), perm)));
  if (needs_grad<T>({&x})) {
    std::vector<std::size_t> inv(perm.size());
    for (std::size_t i = 0; i < perm.size(); ++i) inv[perm[i]] = i;
    attach<T>(out, "permute", {x}, [x, inv](const xt::xarray<T>& dy) {
      // dx = dy permuted back
      x.accumulate_grad(xt::xarray<T>(xt::transpose(dy, inv)), "permute");
    }, shape_to_string(perm)).vjp = [inv](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {permute(dy, inv)}; };
  }
  return out;
}

template <class T>
Tensor<T> transpose(const Tensor<T>& x, int a0, int a1) {
  detail::require_defined(x, "transpose", "x");
  const Shape sx = x.shape();
  std::size_t i = detail::norm_axis(a0, sx.size(), "transpose", sx), j = detail::norm_axis(a1, sx.size(), "transpose", sx);
  std::vector<std::size_t> perm(sx.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[i], perm[j]);
  return permute(x, perm);
}

template <class T>
Tensor<T> slice(const Tensor<T>& x, int axis_in, std::int64_t start, std::int64_t stop) {
  detail::require_defined(x, "slice", "x");
  const Shape sx = x.shape();
  const std::size_t axis = detail::norm_axis(axis_in, sx.size(), "slice", sx);
  const std::int64_t n = static_cast<std::int64_t>(sx[axis]);
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  if (start < 0 || stop > n || start > stop)
    fail("slice: [" + std::to_string(start) + ":" + std::to_string(stop) + ") on axis " + std::to_string(axis_in) +
         " of shape " + shape_to_string(sx));
  // View x as (outer, n, inner) and copy rows [start, stop) of the middle axis.
  const std::size_t outer = prod(sx, 0, axis), inner = prod(sx, axis + 1), m = stop - start;
  Shape so = sx;
  so[axis] = m;
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  for (std::size_t o = 0; o < outer; ++o)
    std::copy_n(x.value().data() + (o * n + start) * inner, m * inner, y.data() + o * m * inner);
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x}))
    attach<T>(out, "slice", {x}, [x, outer, inner, n, m, start](const xt::xarray<T>& dy) {
      // dx = zeros with dy placed at [start, stop). Added straight into x's gradient
      // buffer: the pieces of a split each fill their own rows of one buffer (the one
      // exception to Note [Gradient buffers] in tensor.cpp).
      T* dx = x.grad_for_accumulation().data();
      for (std::size_t o = 0; o < outer; ++o) {
        T* d = dx + (o * n + start) * inner;
        const T* g = dy.data() + o * m * inner;
        for (std::size_t j = 0; j < m * inner; ++j) d[j] += g[j];
      }
    }, "axis=" + std::to_string(axis) + "," + std::to_string(start) + ":" + std::to_string(stop))
        .vjp = [sx, axis, start, stop, n](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // dx = [zeros before, dy, zeros after] along the axis (the zeros are constants)
      std::vector<Tensor<T>> parts;
      Shape s = sx;
      if (start > 0) s[axis] = std::size_t(start), parts.push_back(Tensor<T>::zeros(s));
      parts.push_back(dy);
      if (stop < n) s[axis] = std::size_t(n - stop), parts.push_back(Tensor<T>::zeros(s));
      return {parts.size() == 1 ? dy : concat(parts, int(axis))};
    };
  return out;
}

template <class T>
Tensor<T> concat(const std::vector<Tensor<T>>& xs, int axis_in) {
  if (xs.empty()) fail("concat: no tensors given");
  for (auto& t : xs) detail::require_defined(t, "concat", "xs[i]");
  const Shape s0 = xs[0].shape();
  const std::size_t axis = detail::norm_axis(axis_in, s0.size(), "concat", s0);
  std::size_t total = 0;
  std::vector<std::size_t> sizes;
  for (auto& t : xs) {
    Shape s = t.shape();
    bool ok = s.size() == s0.size();
    for (std::size_t i = 0; ok && i < s.size(); ++i) ok = i == axis || s[i] == s0[i];
    if (!ok) fail("concat: shapes " + shape_to_string(s0) + " and " + shape_to_string(s) + " differ off axis " +
                  std::to_string(axis_in));
    sizes.push_back(s[axis]);
    total += s[axis];
  }
  const std::size_t outer = prod(s0, 0, axis), inner = prod(s0, axis + 1);
  Shape so = s0;
  so[axis] = total;
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  std::size_t off = 0;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    for (std::size_t o = 0; o < outer; ++o)
      std::copy_n(xs[k].value().data() + o * sizes[k] * inner, sizes[k] * inner, y.data() + (o * total + off) * inner);
    off += sizes[k];
  }
  Tensor<T> out(std::move(y));
  std::vector<const Tensor<T>*> ptrs;
  bool any = false;
  for (auto& t : xs) any = any || t.requires_grad();
  if (grad_enabled() && any)
    attach<T>(out, "concat", xs, [xs, sizes, outer, inner, total](const xt::xarray<T>& dy) {
      // each input's gradient is its slice of dy
      std::size_t off = 0;
      for (std::size_t k = 0; k < xs.size(); ++k) {
        if (xs[k].requires_grad()) {
          xt::xarray<T> dx = xt::xarray<T>::from_shape(xs[k].value().shape());
          for (std::size_t o = 0; o < outer; ++o)
            std::copy_n(dy.data() + (o * total + off) * inner, sizes[k] * inner, dx.data() + o * sizes[k] * inner);
          xs[k].accumulate_grad(std::move(dx), "concat");
        }
        off += sizes[k];
      }
    }, "axis=" + std::to_string(axis)).vjp = [xs, sizes, axis](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // each input's gradient is its slice of dy
      Grads<T> g;
      std::int64_t off = 0;
      for (std::size_t k = 0; k < xs.size(); ++k) {
        g.push_back(grad_if(xs[k], [&] { return slice(dy, int(axis), off, off + std::int64_t(sizes[k])); }));
        off += std::int64_t(sizes[k]);
      }
      return g;
    };
  return out;
}

template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<std::size_t>& sizes, int axis_in) {
  detail::require_defined(x, "split", "x");
  const Shape sx = x.shape();
  const std::size_t axis = detail::norm_axis(axis_in, sx.size(), "split", sx);
  std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t(0));
  if (total != sx[axis])
    fail("split: sizes " + shape_to_string(sizes) + " add up to " + std::to_string(total) + ", but axis " +
         std::to_string(axis_in) + " of " + shape_to_string(sx) + " has " + std::to_string(sx[axis]));
  // Each piece is a slice: its own node, so each piece's backward is independent.
  std::vector<Tensor<T>> r;
  std::int64_t off = 0;
  for (auto s : sizes) {
    r.push_back(slice(x, static_cast<int>(axis), off, off + static_cast<std::int64_t>(s)));
    off += s;
  }
  return r;
}

template <class T>
Tensor<T> index_select(const Tensor<T>& x, const Index& idx) {
  detail::require_defined(x, "index_select", "x");
  const Shape sx = x.shape();
  if (sx.empty()) fail("index_select: x must have at least one dimension");
  if (idx.dimension() != 1) fail("index_select: indices must be 1-D, got " + shape_to_string(idx.shape()));
  const std::size_t N = sx[0], row = prod(sx, 1), M = idx.size();
  for (std::size_t i = 0; i < M; ++i)
    if (idx(i) < 0 || static_cast<std::size_t>(idx(i)) >= N)
      fail("index_select: index " + std::to_string(idx(i)) + " at position " + std::to_string(i) +
           " is out of range for " + std::to_string(N) + " rows of " + shape_to_string(sx));
  Shape so = sx;
  so[0] = M;
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  for (std::size_t i = 0; i < M; ++i) std::copy_n(x.value().data() + idx(i) * row, row, y.data() + i * row);
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x}))
    attach<T>(out, "index_select", {x}, [x, idx, row, M](const xt::xarray<T>& dy) {
      // dx[idx[i]] += dy[i]
      xt::xarray<T> dx = xt::zeros<T>(x.value().shape());
      for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = 0; j < row; ++j) dx.data()[idx(i) * row + j] += dy.data()[i * row + j];
      x.accumulate_grad(std::move(dx), "index_select");
    }).vjp = [idx, N](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {index_add(N, idx, dy)}; };
  return out;
}

template <class T>
Tensor<T> index_add(std::size_t N, const Index& idx, const Tensor<T>& src) {
  detail::require_defined(src, "index_add", "src");
  const Shape ss = src.shape();
  if (ss.empty() || idx.dimension() != 1 || idx.size() != ss[0])
    fail("index_add: indices " + shape_to_string(idx.shape()) + " must be 1-D with one entry per row of src " +
         shape_to_string(ss));
  const std::size_t row = prod(ss, 1), M = ss[0];
  for (std::size_t i = 0; i < M; ++i)
    if (idx(i) < 0 || static_cast<std::size_t>(idx(i)) >= N)
      fail("index_add: index " + std::to_string(idx(i)) + " at position " + std::to_string(i) +
           " is out of range for " + std::to_string(N) + " rows");
  Shape so = ss;
  so[0] = N;
  xt::xarray<T> y = xt::zeros<T>(so);
  for (std::size_t i = 0; i < M; ++i)
    for (std::size_t j = 0; j < row; ++j) y.data()[idx(i) * row + j] += src.value().data()[i * row + j];
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&src}))
    attach<T>(out, "index_add", {src}, [src, idx, row, M](const xt::xarray<T>& dy) {
      // dsrc[i] = dy[idx[i]]
      xt::xarray<T> ds = xt::xarray<T>::from_shape(src.value().shape());
      for (std::size_t i = 0; i < M; ++i) std::copy_n(dy.data() + idx(i) * row, row, ds.data() + i * row);
      src.accumulate_grad(std::move(ds), "index_add");
    }).vjp = [idx](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {index_select(dy, idx)}; };
  return out;
}

template <class T>
Tensor<T> masked_fill(const Tensor<T>& x, const xt::xarray<bool>& mask, Scalar<T> value) {
  detail::require_defined(x, "masked_fill", "x");
  const Shape sx = x.shape();
  Shape bs = broadcast_shapes(sx, detail::to_shape(mask.shape()), "masked_fill");
  if (bs != sx)
    fail("masked_fill: mask " + shape_to_string(mask.shape()) + " does not broadcast to x " + shape_to_string(sx));
  auto m = std::make_shared<xt::xarray<bool>>(xt::broadcast(mask, sx));
  Tensor<T> out(xt::xarray<T>(xt::where(*m, value, x.value())));
  if (needs_grad<T>({&x}))
    attach<T>(out, "masked_fill", {x}, [x, m](const xt::xarray<T>& dy) {
      // dx = dy where the mask is off
      x.accumulate_grad(xt::xarray<T>(xt::where(*m, T(0), dy)), "masked_fill");
    }).vjp = [m](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {masked_fill(dy, *m, T(0))}; };
  return out;
}

template <class T>
Tensor<T> where(const xt::xarray<bool>& cond, const Tensor<T>& a, const Tensor<T>& b) {
  detail::require_defined(a, "where", "a");
  detail::require_defined(b, "where", "b");
  const Shape sa = a.shape(), sb = b.shape();
  Shape s = broadcast_shapes(broadcast_shapes(detail::to_shape(cond.shape()), sa, "where"), sb, "where");
  auto c = std::make_shared<xt::xarray<bool>>(xt::broadcast(cond, s));
  Tensor<T> out(xt::xarray<T>(xt::where(*c, xt::broadcast(a.value(), s), xt::broadcast(b.value(), s))));
  if (needs_grad<T>({&a, &b}))
    attach<T>(out, "where", {a, b}, [a, b, c, sa, sb](const xt::xarray<T>& dy) {
      // da = dy * cond, db = dy * !cond
      if (a.requires_grad()) a.accumulate_grad(sum_to(xt::xarray<T>(xt::where(*c, dy, T(0))), sa), "where");
      if (b.requires_grad()) b.accumulate_grad(sum_to(xt::xarray<T>(xt::where(*c, T(0), dy)), sb), "where");
    }).vjp = [a, b, c, sa, sb](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {grad_if(a, [&] { return sum_to(masked_fill(dy, xt::xarray<bool>(!*c), T(0)), sa); }),
              grad_if(b, [&] { return sum_to(masked_fill(dy, *c, T(0)), sb); })};
    };
  return out;
}

#define TG_INSTANTIATE(T)                                                                         \
  template Tensor<T> sum_to<T>(const Tensor<T>&, const Shape&);                                   \
  template Tensor<T> broadcast_to<T>(const Tensor<T>&, const Shape&);                             \
  template Tensor<T> reshape<T>(const Tensor<T>&, const std::vector<std::int64_t>&);              \
  template Tensor<T> permute<T>(const Tensor<T>&, const std::vector<std::size_t>&);               \
  template Tensor<T> transpose<T>(const Tensor<T>&, int, int);                                    \
  template Tensor<T> slice<T>(const Tensor<T>&, int, std::int64_t, std::int64_t);                 \
  template Tensor<T> concat<T>(const std::vector<Tensor<T>>&, int);                               \
  template std::vector<Tensor<T>> split<T>(const Tensor<T>&, const std::vector<std::size_t>&, int); \
  template Tensor<T> index_select<T>(const Tensor<T>&, const Index&);                             \
  template Tensor<T> index_add<T>(std::size_t, const Index&, const Tensor<T>&);                   \
  template Tensor<T> masked_fill<T>(const Tensor<T>&, const xt::xarray<bool>&, T);                \
  template Tensor<T> where<T>(const xt::xarray<bool>&, const Tensor<T>&, const Tensor<T>&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
