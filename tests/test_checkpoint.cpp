// tests/test_checkpoint.cpp — the library's training pieces without the program:
// nn/checkpoint (save, load, refusals), nn/train_step (one step by name, non-finite steps
// change nothing).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/kernels/dispatch.hpp"
#include "nn/checkpoint.hpp"
#include "nn/config.hpp"
#include "nn/data.hpp"
#include "nn/train_step.hpp"
#include "optim/optim.hpp"
#include "test_util.hpp"

using namespace tg;
namespace fs = std::filesystem;

namespace {

nn::ModelConfig tiny() {
  nn::ModelConfig c = nn::named_size("tiny");
  c.vocab_size = 256;
  return c;
}

Index batch_of(std::uint64_t seed, std::size_t B = 2, std::size_t T = 8) {
  Generator g(seed);
  Index x = Index::from_shape({B, T + 1});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<std::int64_t>(g.next_u64() % 256);
  return x;
}

template <class T>
struct Run {
  nn::CausalLM<T> model;
  optim::AdamW<T> opt;
  explicit Run(std::uint64_t seed) : model(tiny(), seed), opt(optim::make_param_groups(model.named_parameters(), 0.1)) {}
};

template <class T>
std::vector<T> flat_weights(const nn::CausalLM<T>& m) {
  std::vector<T> v;
  for (const auto& [name, value] : m.state_dict()) v.insert(v.end(), value.begin(), value.end());
  return v;
}

}  // namespace

TEST_CASE("train_step: one step is zero_grad, loss, backward, clip, step - a non-finite step changes nothing") {
  Run<float> a(1), b(1);
  const Index x = batch_of(7);
  const train::StepResult r = train::train_step(a.model, a.opt, x, 1e-3, 1.0);
  CHECK(r.finite);
  CHECK(std::isfinite(r.loss));
  CHECK(r.grad_norm > 0);
  // The same by hand.
  b.opt.zero_grad();
  const auto out = b.model.loss(x);
  out.loss.backward();
  const double gn = optim::clip_grad_norm(b.opt.parameters(), 1.0);
  b.opt.set_lr(1e-3);
  b.opt.step();
  CHECK(gn == r.grad_norm);
  CHECK(flat_weights(a.model) == flat_weights(b.model));

  // A NaN weight makes the loss NaN: the step reports it and does not move the optimizer.
  Run<float> c(2);
  auto params = c.model.named_parameters();
  for (auto& [name, p] : params)
    if (name == "model.norm.weight") p.mutable_value().data()[0] = std::numeric_limits<float>::quiet_NaN();
  const auto before = flat_weights(c.model);
  const train::StepResult bad = train::train_step(c.model, c.opt, x, 1e-3, 1.0);
  CHECK_FALSE(bad.finite);
  CHECK(c.opt.step_count() == 0);
  const auto after = flat_weights(c.model);
  REQUIRE(after.size() == before.size());
  for (std::size_t i = 0; i < after.size(); ++i)
    if (!std::isnan(before[i])) REQUIRE(after[i] == before[i]);
}

TEST_CASE("checkpoint: save then load restores weights, moments and the training state exactly") {
  const fs::path dir = tg::testing::scratch_dir("checkpoint") / "roundtrip";
  fs::create_directories(dir);
  Run<float> a(3);
  for (int s = 0; s < 2; ++s) train::train_step(a.model, a.opt, batch_of(10 + s), 1e-3, 1.0);
  Generator g(5);
  g.next_u64();
  train::TrainState st;
  st.step = 2, st.elapsed_s = 1.25, st.tokens_seen = 36, st.data_rng = data::generator_state(g);
  train::save_checkpoint(dir.string(), a.model, a.opt, st);

  Run<float> b(4);  // another initialisation
  const train::TrainState got = train::load_checkpoint(dir.string(), b.model, b.opt);
  CHECK(got.step == 2);
  CHECK(got.elapsed_s == 1.25);
  CHECK(got.tokens_seen == 36);
  CHECK(got.data_rng == st.data_rng);
  CHECK(flat_weights(a.model) == flat_weights(b.model));
  // The next step is the same in both.
  train::train_step(a.model, a.opt, batch_of(20), 1e-3, 1.0);
  train::train_step(b.model, b.opt, batch_of(20), 1e-3, 1.0);
  CHECK(flat_weights(a.model) == flat_weights(b.model));

  SUBCASE("a model of another shape is refused, naming the weights") {
    nn::ModelConfig other = tiny();
    other.hidden_size *= 2;
    other.intermediate_size *= 2;
    nn::CausalLM<float> m(other, 1);
    optim::AdamW<float> o(optim::make_param_groups(m.named_parameters(), 0.1));
    const std::string msg = THROW_MSG(train::load_checkpoint(dir.string(), m, o));
    CHECK(msg.find("do not fit") != std::string::npos);
  }
  SUBCASE("a folder without a checkpoint") {
    Run<float> c(1);
    const std::string msg = THROW_MSG(train::load_checkpoint((dir / "nothing").string(), c.model, c.opt));
    CHECK(msg.find("no checkpoint") != std::string::npos);
  }
}

TEST_CASE("run checkpoints: step folders, keep K, newest complete wins, non-finite refused and skipped") {
  const fs::path run = tg::testing::scratch_dir("checkpoint") / "run";
  fs::create_directories(run);
  Run<float> a(3);
  train::TrainState st;
  Generator g(1);
  st.data_rng = data::generator_state(g);
  for (int s = 1; s <= 3; ++s) {
    train::train_step(a.model, a.opt, batch_of(s), 1e-3, 1.0);
    st.step = s;
    const std::string dir = train::save_run_checkpoint(run.string(), a.model, a.opt, st, 2);
    CHECK(fs::path(dir).filename() == "step-00000" + std::to_string(s));
  }
  auto all = train::list_checkpoints(run.string());
  REQUIRE(all.size() == 2);  // keep = 2
  CHECK(all[0].step == 3);
  CHECK(all[1].step == 2);

  // Leftovers of an interrupted save do not count and are cleaned.
  fs::create_directories(run / "checkpoints" / "step-000009");                 // no manifest
  fs::create_directories(run / "checkpoints" / "step-000010.tmp.123");         // a temporary
  std::ofstream((run / "metrics.csv.tmp.77").string()) << "x";
  CHECK(train::latest_checkpoint(run.string()) == (run / "checkpoints" / "step-000003").string());
  CHECK(train::clean_interrupted_saves(run.string()).size() == 3);
  CHECK(train::list_checkpoints(run.string()).size() == 2);

  // A NaN weight: the save is refused, naming the tensor; the finite checkpoints stay.
  Run<float> bad(3);
  for (auto& [name, p] : bad.model.named_parameters())
    if (name == "model.norm.weight") p.mutable_value().data()[0] = std::numeric_limits<float>::quiet_NaN();
  st.step = 4;
  const std::string msg = THROW_MSG(train::save_run_checkpoint(run.string(), bad.model, bad.opt, st, 2));
  CHECK(msg.find("model.norm.weight") != std::string::npos);
  CHECK(msg.find("NaN or Inf") != std::string::npos);
  CHECK(train::list_checkpoints(run.string()).size() == 2);

  // The newest folder damaged (a NaN written into it by hand): resume skips it, says why,
  // and loads the one before.
  {
    const fs::path newest = run / "checkpoints" / "step-000003";
    Run<float> c(9);
    train::TrainState s3 = train::load_checkpoint(newest.string(), c.model, c.opt);
    CHECK(s3.step == 3);
    for (auto& [name, p] : c.model.named_parameters())
      if (name == "model.norm.weight") p.mutable_value().data()[0] = std::numeric_limits<float>::infinity();
    train::save_checkpoint(newest.string(), c.model, c.opt, s3);  // bypasses the check, as a bad disk would
    // The sizes still match the manifest (same shapes): only the finite check catches it.
    Run<float> d(5);
    std::string used;
    std::vector<std::string> skipped;
    const train::TrainState got = train::load_latest_checkpoint(run.string(), d.model, d.opt, &used, &skipped);
    CHECK(got.step == 2);
    CHECK(fs::path(used).filename() == "step-000002");
    REQUIRE(skipped.size() == 1);
    CHECK(skipped[0].find("NaN or Inf") != std::string::npos);
  }

  // A run folder of the older layout (the two files beside config.json) still loads.
  const fs::path old = tg::testing::scratch_dir("checkpoint") / "old";
  fs::create_directories(old);
  st.step = 3;
  train::save_checkpoint(old.string(), a.model, a.opt, st);
  Run<float> e(6);
  std::string used;
  CHECK(train::load_latest_checkpoint(old.string(), e.model, e.opt, &used).step == 3);
  CHECK(used == old.string());
  CHECK(flat_weights(e.model) == flat_weights(a.model));
}

TEST_CASE("train_step on the naive kernel twins (ReferenceKernels) agrees with the fast kernels - every preset of the zoo, and MoE") {
  // Every kernel a training step uses (GEMM, attention, norms, softmax, cross-entropy,
  // embedding, RoPE, SwiGLU, the gate, AdamW) has a twin that ReferenceKernels switches to:
  // three steps each way, float64, the same losses and weights to round-off.
  std::vector<std::pair<std::string, nn::ModelConfig>> cases;
  for (const auto& p : nn::list_presets()) {
    if (p == "more_experts") continue;
    cases.emplace_back(p, nn::with_preset(tiny(), p));
  }
  nn::ModelConfig moe = nn::named_size("tiny_moe");
  moe.vocab_size = 256;
  cases.emplace_back("more_experts (tiny_moe)", nn::with_preset(moe, "more_experts"));
  for (const auto& [name, c] : cases) {
    CAPTURE(name);
    nn::CausalLM<double> fast(c, 5), ref(c, 5);
    optim::AdamW<double> of(optim::make_param_groups(fast.named_parameters(), 0.1)),
        orf(optim::make_param_groups(ref.named_parameters(), 0.1));
    double worst_loss = 0;
    for (std::uint64_t s = 0; s < 3; ++s) {
      const Index x = batch_of(40 + s);
      const double lf = train::train_step(fast, of, x, 1e-2, 1.0).loss;
      double lr_ = 0;
      {
        ReferenceKernels naive;
        lr_ = train::train_step(ref, orf, x, 1e-2, 1.0).loss;
      }
      worst_loss = std::max(worst_loss, std::abs(lf - lr_) / std::abs(lf));
    }
    CHECK(worst_loss < 1e-12);
    const auto wf = flat_weights(fast), wr = flat_weights(ref);
    REQUIRE(wf.size() == wr.size());
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < wf.size(); ++i) worst = std::max(worst, std::abs(wf[i] - wr[i])), scale = std::max(scale, std::abs(wf[i]));
    CHECK(worst <= 1e-11 * scale);
  }
}
