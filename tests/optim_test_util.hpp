// tests/optim_test_util.hpp — what test_optim.cpp and test_optim_golden.cpp share: setting a
// parameter's gradient by hand, and the relative error both compare trajectories with.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <xtensor/xarray.hpp>

#include "autograd/autograd.hpp"

namespace tg::testing {

// p's gradient becomes g (any earlier one dropped).
template <class T>
void set_grad(Tensor<T>& p, const xt::xarray<T>& g) {
  p.zero_grad();
  p.accumulate_grad(g, "test");
}

// max |a-b| / max(|b|, tiny)
inline double rel_err(const xt::xarray<double>& a, const xt::xarray<double>& b) {
  REQUIRE(a.shape() == b.shape());
  double num = 0, den = 1e-300;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a.flat(i) - b.flat(i)));
    den = std::max(den, std::abs(b.flat(i)));
  }
  return num / den;
}

}  // namespace tg::testing
