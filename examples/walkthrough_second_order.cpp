// examples/walkthrough_second_order.cpp — the gradient of a gradient, twice: Newton's method
// (the Hessian as the gradient of grad(create_graph=true)) and a gradient penalty (a loss
// holding a gradient, differentiated; its tape printed, and drawn when given a path).
// Run: build/bin/walkthrough_second_order [penalty.dot]
#include "teaching.hpp"

int main(int argc, char** argv) {
  const double dist = tg::teaching::newton_demo();
  std::cout << "\n";
  const double err = tg::teaching::gradient_penalty_demo(std::cout, argc > 1 ? argv[1] : "");
  return dist < 1e-10 && err < 1e-7 ? 0 : 1;
}
