// tests/test_activation_checkpoint.cpp — checkpoint() (Note [Activation checkpointing] in
// autograd/activation_checkpoint.hpp): gradients as without it (inputs and the leaves the segment
// captures, one and several outputs), gradcheck and gradgradcheck through it, the segment's
// graph freed after the forward, refusals (a captured intermediate, a segment that computes
// something else when rerun), and CausalLM::set_checkpoint_layers on a dense and an MoE
// model: the same loss and gradients.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "autograd/autograd.hpp"
#include "nn/config.hpp"
#include "nn/model.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;

namespace {

// A small two-layer block: tanh(x W1) W2 + x, and a second output sum(x * x).
std::vector<TD> block(const TD& x, const TD& w1, const TD& w2) {
  TD h = tanh(matmul(x, w1));
  return {matmul(h, w2) + x, sum(x * x)};
}

double max_diff(const xt::xarray<double>& a, const xt::xarray<double>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}

}  // namespace

TEST_CASE("checkpoint: the same gradients for the inputs and for the leaves the segment captures") {
  Generator gen(3);
  TD x = TD::randn({4, 5}, gen, 0, 1, true);
  TD w1 = TD::randn({5, 7}, gen, 0, 0.5, true), w2 = TD::randn({7, 5}, gen, 0, 0.5, true);
  auto loss_of = [&](const std::vector<TD>& outs) { return sum(outs[0] * outs[0]) + outs[1] * 0.25; };

  loss_of(block(x * 2.0, w1, w2)).backward();  // x * 2.0: the segment's input is an intermediate
  const xt::xarray<double> gx = x.grad(), g1 = w1.grad(), g2 = w2.grad();
  x.zero_grad(), w1.zero_grad(), w2.zero_grad();

  TD x2 = x * 2.0;
  auto outs = checkpoint<double>([&](const std::vector<TD>& in) { return block(in[0], w1, w2); }, {x2}, "block");
  REQUIRE(outs.size() == 2);
  CHECK(outs[0].shape() == Shape{4, 5});
  CHECK(outs[1].shape() == Shape{});
  // The segment's graph is gone: one checkpoint node (and the split/reshape of its outputs).
  const std::string dump = Tape<double>::current().dump();
  CHECK(dump.find("checkpoint[block]") != std::string::npos);
  CHECK(dump.find("tanh") == std::string::npos);
  loss_of(outs).backward();
  CHECK(max_diff(x.grad(), gx) < 1e-14);
  CHECK(max_diff(w1.grad(), g1) < 1e-14);
  CHECK(max_diff(w2.grad(), g2) < 1e-14);
}

TEST_CASE("checkpoint: gradcheck and gradgradcheck through a segment with captured weights") {
  GradcheckFn f = [](const std::vector<TD>& in) {
    const TD w1 = in[1], w2 = in[2];
    auto outs = checkpoint<double>([w1, w2](const std::vector<TD>& s) { return block(s[0], w1, w2); }, {in[0]});
    return sum(outs[0] * outs[0]) + outs[1];
  };
  Generator gen(5);
  std::vector<TD> inputs = {TD::randn({3, 4}, gen, 0, 1, true), TD::randn({4, 6}, gen, 0, 0.5, true),
                            TD::randn({6, 4}, gen, 0, 0.5, true)};
  auto r1 = gradcheck(f, inputs);
  CHECK_MESSAGE(r1.ok, r1.summary());
  auto r2 = gradgradcheck(f, inputs);
  CHECK_MESSAGE(r2.ok, r2.summary());
}

TEST_CASE("checkpoint: a captured intermediate that needs a gradient is refused, naming its op") {
  TD w = TD::ones({3}, true);
  TD hidden = w * 2.0;  // made outside the segment, not passed in
  TD x = TD::ones({3}, true);
  const std::string msg =
      THROW_MSG(checkpoint<double>([&](const std::vector<TD>& in) { return std::vector<TD>{in[0] * hidden}; }, {x}));
  CHECK(msg.find("made by op 'mul_scalar' outside it") != std::string::npos);
  CHECK(msg.find("pass it in the inputs") != std::string::npos);
}

TEST_CASE("checkpoint: a segment that computes other values when rerun is an error in backward") {
  TD x = TD::ones({3}, true);
  int runs = 0;
  auto outs = checkpoint<double>(
      [&](const std::vector<TD>& in) { return std::vector<TD>{in[0] * double(++runs)}; }, {x}, "drifting");
  const std::string msg = THROW_MSG(sum(outs[0]).backward());
  CHECK(msg.find("checkpoint[drifting]") != std::string::npos);
  CHECK(msg.find("other values when run again") != std::string::npos);
}

TEST_CASE("checkpoint: outside grad mode it is just the function") {
  TD x = TD::ones({2}, true);
  NoGrad off;
  auto outs = checkpoint<double>([](const std::vector<TD>& in) { return std::vector<TD>{in[0] + 1.0}; }, {x});
  CHECK_FALSE(outs[0].requires_grad());
  CHECK(outs[0].value()(1) == 2.0);
}

TEST_CASE("CausalLM::set_checkpoint_layers: the same loss and gradients, dense and MoE") {
  for (const char* size : {"tiny", "tiny_moe"}) {
    CAPTURE(size);
    nn::ModelConfig c = nn::named_size(size);
    nn::CausalLM<double> a(c, 11), b(c, 11);
    b.set_checkpoint_layers(true);
    Generator gen(2);
    Index tokens = Index::from_shape({2, 9});
    for (auto& t : tokens) t = std::int64_t(gen.next_u64() % c.vocab_size);
    auto la = a.loss(tokens), lb = b.loss(tokens);
    CHECK(std::abs(la.loss.item() - lb.loss.item()) < 1e-14);
    la.loss.backward();
    lb.loss.backward();
    auto pa = a.named_parameters(), pb = b.named_parameters();
    double worst = 0;
    for (std::size_t i = 0; i < pa.size(); ++i) {
      CAPTURE(pa[i].first);
      REQUIRE(pb[i].second.has_grad());
      worst = std::max(worst, max_diff(pa[i].second.grad(), pb[i].second.grad()));
    }
    CHECK(worst < 1e-13);
  }
}
