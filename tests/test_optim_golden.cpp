// tests/test_optim_golden.cpp — optim/ against torch.optim: 20-step AdamW and SGD
// trajectories (clipping, the learning-rate schedule, parameter groups) recorded in float64
// by tests/reference/make_golden_optim.py (layout: tests/reference/README.md,
// "tests/golden/optim/"), replayed in float64 (to round-off) and float32 (to float
// round-off of torch's float64).
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/autograd.hpp"
#include "optim_test_util.hpp"
#include "nn/safetensors.hpp"
#include "optim/optim.hpp"

using namespace tg;
using namespace tg::optim;
using tg::testing::rel_err;
using tg::testing::set_grad;

// =====================================================================================
// golden trajectories: torch.optim in float64 (tests/reference/make_golden_optim.py;
// layout in tests/reference/README.md, "tests/golden/optim/")
// =====================================================================================

namespace {

std::string golden_path(const std::string& name) {
  return std::string(TAPEGRAD_SOURCE_DIR) + "/tests/golden/optim/" + name + ".safetensors";
}

// Replays one golden case with optimizer scalar type T: the recorded gradient of every
// step is fed (clipped first when the case clips), with the learning rate of our schedule
// (checked against the recorded one); the parameters after every step, the clipping norms
// and the final optimizer state are compared with torch's. Returns the worst relative
// error of the parameters over all steps.
template <class T>
double replay_golden(const std::string& name, double tol) {
  const std::string path = golden_path(name);
  INFO("golden file " << path << " (make it with /usr/bin/python3 tests/reference/make_golden_optim.py)");
  REQUIRE(std::filesystem::exists(path));
  const auto f = st::SafeTensorsFile::load(path);
  auto meta = [&](const std::string& key) {
    REQUIRE_MESSAGE(f.metadata().count(key) == 1, "metadata key " << key);
    return nlohmann::json::parse(f.metadata().at(key));
  };
  const std::string optimizer = meta("optimizer");
  const int steps = meta("steps");
  REQUIRE(steps == 20);

  // parameters and their groups, as the reference built them
  std::map<std::string, Tensor<T>> params;
  std::vector<ParamGroup<T>> groups;
  for (const auto& g : meta("groups")) {
    ParamGroup<T> group{"wd=" + std::to_string(double(g["weight_decay"])), {}, double(g["weight_decay"]), 1.0};
    for (const std::string n : g["params"]) {
      params[n] = Tensor<T>(xt::xarray<T>(f.get<T>("p0." + n)), true);
      group.params.emplace_back(n, params[n]);
    }
    groups.push_back(std::move(group));
  }
  REQUIRE(params.size() == meta("param_names").size());
  std::vector<Tensor<T>> all;
  for (auto& [n, p] : params) all.push_back(p);

  std::unique_ptr<Optimizer<T>> opt;
  const double base_lr = meta("lr");
  if (optimizer == "adamw") {
    opt = std::make_unique<AdamW<T>>(groups, AdamWOptions{base_lr, meta("betas")[0], meta("betas")[1], meta("eps"),
                                                          /*weight_decay (every group sets its own)=*/0.0});
  } else {
    REQUIRE(optimizer == "sgd");
    opt = std::make_unique<SGD<T>>(groups, SGDOptions{base_lr, meta("momentum"), meta("dampening"), 0.0,
                                                      bool(meta("nesterov"))});
  }
  const auto sched_json = meta("schedule");
  const LrSchedule schedule =
      sched_json.is_null()
          ? LrSchedule::constant(base_lr)
          : LrSchedule::warmup_cosine(sched_json["peak_lr"], sched_json["warmup_steps"], sched_json["total_steps"],
                                      sched_json["floor_lr"]);
  const auto max_norm_json = meta("max_norm");

  double worst = 0;
  for (int t = 0; t < steps; ++t) {
    CAPTURE(t);
    const std::string ts = std::to_string(t);
    for (auto& [n, p] : params) set_grad(p, f.get<T>("grad." + ts + "." + n));
    if (!max_norm_json.is_null()) {
      const double norm = clip_grad_norm(all, double(max_norm_json));
      const double ref = f.get<double>("norm." + ts)();
      // float32: the gradients themselves are rounded to float, so the norm is off by ~1e-8
      const double norm_tol = std::is_same_v<T, double> ? 1e-12 : 1e-6;
      CHECK(std::abs(norm - ref) <= norm_tol * ref);
    }
    const double lr = schedule.at(t), ref_lr = f.get<double>("lr." + ts)();
    CHECK(std::abs(lr - ref_lr) <= 1e-14 * ref_lr);
    opt->set_lr(lr);
    opt->step();
    for (auto& [n, p] : params) {
      CAPTURE(n);
      const double e = rel_err(xt::cast<double>(p.value()), f.get<double>("p." + ts + "." + n));
      CHECK(e < tol);
      worst = std::max(worst, e);
    }
  }
  // the optimizer state after the last step, under torch's names with "state." in front
  std::size_t compared = 0;
  for (const auto& [key, arr] : opt->state_dict()) {
    if (key.rfind("step.", 0) == 0) {
      CHECK(arr(0) == T(steps));  // every parameter had a gradient at every step
      continue;
    }
    if (optimizer == "sgd" && key == "step") continue;  // torch's SGD has no step count
    CAPTURE(key);
    REQUIRE(f.contains("state." + key));
    xt::xarray<double> ref = f.get<double>("state." + key);
    if (ref.size() == 1 && arr.size() == 1) ref.reshape({1});  // torch's step is 0-d, ours (1)
    CHECK(rel_err(xt::cast<double>(arr), ref) < tol);
    ++compared;
  }
  CHECK(compared == (optimizer == "adamw" ? 2 * params.size() + 1 : params.size()));
  return worst;
}

const std::vector<std::string> kGoldenCases{"adamw", "adamw_clip_schedule", "sgd_momentum", "sgd_nesterov"};

}  // namespace

TEST_CASE("golden: 20-step AdamW / SGD trajectories (clipping, schedule, groups) match torch.optim in float64") {
  for (const auto& name : kGoldenCases) {
    CAPTURE(name);
    const double worst = replay_golden<double>(name, 1e-9);
    MESSAGE(name << ": worst relative error of the parameters over 20 steps (float64) = " << worst);
  }
}

TEST_CASE("golden: the same cases in float32 stay within float round-off of torch's float64") {
  for (const auto& name : kGoldenCases) {
    CAPTURE(name);
    replay_golden<float>(name, 1e-4);
  }
}
