// examples/walkthrough_gradcheck.cpp — gradcheck catches a deliberately wrong backward.
//
// We write a new op, "cube" (y = x^3), the way every op in autograd/ops_*.cpp is written:
// forward, then attach() a node whose closure is the backward. The wrong version forgets
// the factor 3 in dy/dx = 3x^2; gradcheck compares the tape's gradient with central
// differences and points at the first element where they disagree.
// Run: build/bin/walkthrough_gradcheck
#include <iostream>

#include "autograd/autograd.hpp"

using namespace tg;

template <class T>
Tensor<T> cube(const Tensor<T>& x, bool correct) {
  Tensor<T> out(xt::xarray<T>(x.value() * x.value() * x.value()));  // y = x^3
  if (needs_grad<T>({&x}))
    attach<T>(out, "cube", {x}, [x, correct](const xt::xarray<T>& dy) {
      // dx = dy * 3x^2   (the wrong version drops the 3)
      T k = correct ? T(3) : T(1);
      x.accumulate_grad(xt::xarray<T>(dy * k * x.value() * x.value()), "cube");
    });
  return out;
}

int main() {
  Generator gen(0);
  auto x = Tensor<double>::randn({2, 3}, gen, 0.0, 1.0, true);
  for (bool correct : {false, true}) {
    auto r = gradcheck([&](auto& in) { return cube(in[0], correct); }, {x});
    std::cout << (correct ? "correct backward: " : "wrong backward:   ") << r.summary() << "\n";
  }
  return 0;
}
