// tests/test_teaching.cpp — the walk-throughs of examples/teaching.hpp (run by `tapegrad demo`
// and examples/walkthrough_*): Newton's method converges to the minimum, the gradient
// penalty's second-order gradient agrees with central differences, the printed tape names
// its tensors, and the graphs are written as DOT (and PNG when Graphviz's dot is installed).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "examples/teaching.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;

TEST_CASE("teaching: Newton's method with the Hessian from grad(create_graph) reaches the minimum") {
  std::ostringstream os;
  const double dist = tg::teaching::newton_demo(os);
  CHECK(dist < 1e-10);
  CHECK(os.str().find("step 0: (x, y) = (-1.2000000000, +1.0000000000)") != std::string::npos);
}

TEST_CASE("teaching: the gradient of a gradient penalty matches central differences, its tape and its graph") {
  const fs::path dir = tg::testing::scratch_dir("teaching");
  std::ostringstream os;
  const double err = tg::teaching::gradient_penalty_demo(os, (dir / "penalty.dot").string());
  CHECK(err < 1e-7);
  const std::string out = os.str();
  CHECK(out.find("-> df/dx:(3)") != std::string::npos);  // the backward's ops, on the tape
  CHECK(out.find("tanh (") != std::string::npos);
  const std::string dot = tg::testing::read_all(dir / "penalty.dot");
  CHECK(dot.rfind("digraph tape {", 0) == 0);
  CHECK(dot.find("df/dx (3)") != std::string::npos);
  if (std::system("command -v dot >/dev/null 2>&1") == 0) {
    const std::string png = tg::testing::read_all(dir / "penalty.png");
    REQUIRE(png.size() > 8);
    CHECK(png.substr(1, 3) == "PNG");
  }
}

TEST_CASE("teaching: the scalar tape demo draws f's graph with its values and gradients") {
  const fs::path dir = tg::testing::scratch_dir("teaching_scalar");
  std::ostringstream os;
  tg::teaching::scalar_tape_demo(os, (dir / "tape.dot").string());
  const std::string dot = tg::testing::read_all(dir / "tape.dot");
  CHECK(dot.find("label=\"a ()\\nvalue 0.5\\ngrad") != std::string::npos);
  CHECK(os.str().find("mul (a:(), b:()) -> ab:()") != std::string::npos);
}

TEST_CASE("teaching: the custom op of Note [Writing an op] passes gradcheck and gradgradcheck") {
  std::ostringstream os;
  CHECK(tg::teaching::custom_op_demo(os));
  CHECK(os.str().find("gradcheck passed") != std::string::npos);
  CHECK(os.str().find("gradgrad") != std::string::npos);
  // and its values: softplus(0) = log 2, large |x| stays finite and exact
  using TD = tg::Tensor<double>;
  TD y = tg::teaching::softplus(TD::from(xt::xarray<double>{0.0, 800.0, -800.0}));
  CHECK(y.value()(0) == doctest::Approx(std::log(2.0)));
  CHECK(y.value()(1) == 800.0);
  CHECK(y.value()(2) >= 0.0);
}
