// tests/test_nn_golden.cpp — the C++ model against the independent PyTorch reference.
//
// What it is for: for every case folder in tests/golden/model/ (written by
// tests/reference/make_golden_model.py from nn/MODEL.md, not from this code), load
// config.json, weights.safetensors and tokens.txt, run forward + loss + backward, and
// compare logits, loss, the MoE aux / z losses and the gradient of every parameter with
// expected.safetensors: relative error max|a - b| / max|b| per tensor <= 1e-9 in float64
// and <= 1e-4 in float32. The set of grad.* entries must equal the set of parameters.
//
// What it is not: a test of the reference (its own self-checks do that) or of safetensors
// parsing (tests/test_safetensors*.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "autograd/autograd.hpp"
#include "nn/nn.hpp"

using namespace tg;
using namespace tg::nn;
namespace fs = std::filesystem;

namespace {

const fs::path kGoldenDir = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "model";

std::vector<std::string> golden_cases() {
  std::vector<std::string> r;
  if (!fs::is_directory(kGoldenDir)) return r;
  for (auto& e : fs::directory_iterator(kGoldenDir))
    if (e.is_directory()) r.push_back(e.path().filename().string());
  std::sort(r.begin(), r.end());
  return r;
}

// tokens.txt: whitespace-separated ids, one sequence per line, all of one length.
Index read_tokens(const fs::path& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in, "cannot open " << path);
  std::vector<std::vector<std::int64_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<std::int64_t> row;
    std::int64_t v;
    while (ls >> v) row.push_back(v);
    if (!row.empty()) rows.push_back(row);
  }
  REQUIRE(!rows.empty());
  Index t = Index::from_shape({rows.size(), rows[0].size()});
  for (std::size_t b = 0; b < rows.size(); ++b) {
    REQUIRE_MESSAGE(rows[b].size() == rows[0].size(), path << ": line " << b + 1 << " has another length");
    for (std::size_t i = 0; i < rows[b].size(); ++i) t(b, i) = rows[b][i];
  }
  return t;
}

// max|a - b| / max|b|, with shapes required equal.
template <class T>
double rel_error(const xt::xarray<T>& a, const xt::xarray<double>& b, const std::string& what) {
  const Shape sa(a.shape().begin(), a.shape().end()), sb(b.shape().begin(), b.shape().end());
  REQUIRE_MESSAGE(sa == sb, what << ": shape " << shape_to_string(sa) << " vs expected " << shape_to_string(sb));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - b.data()[i]));
    den = std::max(den, std::abs(b.data()[i]));
  }
  if (den == 0) return num;  // an all-zero expected tensor: absolute error
  return num / den;
}

struct CaseResult {
  double logits = 0, loss = 0, aux = 0, z = 0, grad = 0;  // worst relative errors
  std::string worst_grad;
  std::size_t n_grads = 0;
};

template <class T>
CaseResult run_case(const std::string& name, double tol) {
  const fs::path dir = kGoldenDir / name;
  INFO("golden case " << name << " in " << std::string(dtype_name<T>()));
  for (const char* f : {"config.json", "weights.safetensors", "tokens.txt", "expected.safetensors"})
    REQUIRE_MESSAGE(fs::exists(dir / f), (dir / f).string() << " is missing");
  const ModelConfig cfg = ModelConfig::load((dir / "config.json").string());
  CausalLM<T> model(cfg);
  const auto weights = st::SafeTensorsFile::load((dir / "weights.safetensors").string());
  model.load_from(weights, (dir / "weights.safetensors").string());
  const Index tokens = read_tokens(dir / "tokens.txt");
  const auto expected = st::SafeTensorsFile::load((dir / "expected.safetensors").string());

  LossOutput<T> out = model.loss(tokens);
  model.zero_grad();
  out.loss.backward();

  CaseResult r;
  r.logits = rel_error(out.logits.value(), expected.get<double>("logits"), "logits");
  CHECK_MESSAGE(r.logits <= tol, name << " logits rel err " << r.logits);
  r.loss = rel_error(out.loss.value(), expected.get<double>("loss"), "loss");
  CHECK_MESSAGE(r.loss <= tol, name << " loss rel err " << r.loss);
  const bool moe = expected.contains("aux_loss");
  CHECK_MESSAGE(moe == cfg.is_moe(), name << ": aux_loss present " << moe << " but is_moe " << cfg.is_moe());
  CHECK(expected.contains("z_loss") == moe);
  if (moe && cfg.is_moe()) {
    r.aux = rel_error(out.aux.value(), expected.get<double>("aux_loss"), "aux_loss");
    r.z = rel_error(out.z.value(), expected.get<double>("z_loss"), "z_loss");
    CHECK_MESSAGE(r.aux <= tol, name << " aux_loss rel err " << r.aux);
    CHECK_MESSAGE(r.z <= tol, name << " z_loss rel err " << r.z);
  }
  // Every grad.* against every parameter: no missing, no extra.
  std::set<std::string> grad_keys;
  for (auto& k : expected.names()) {
    if (k.rfind("grad.", 0) == 0)
      grad_keys.insert(k.substr(5));
    else
      CHECK_MESSAGE((k == "logits" || k == "loss" || k == "aux_loss" || k == "z_loss"),
                    name << ": unexpected entry '" << k << "' in expected.safetensors");
  }
  std::set<std::string> params;
  for (auto& [pname, p] : model.named_parameters()) {
    params.insert(pname);
    CHECK_MESSAGE(grad_keys.count(pname), name << ": no grad." << pname << " in expected.safetensors");
    if (!grad_keys.count(pname)) continue;
    const xt::xarray<T> g = p.has_grad() ? p.grad() : xt::xarray<T>(xt::zeros<T>(p.shape()));
    const double e = rel_error(g, expected.get<double>("grad." + pname), "grad." + pname);
    CHECK_MESSAGE(e <= tol, name << " grad." << pname << " rel err " << e);
    ++r.n_grads;
    if (e >= r.grad) r.grad = e, r.worst_grad = pname;
  }
  for (auto& k : grad_keys) CHECK_MESSAGE(params.count(k), name << ": grad." << k << " names no model parameter");
  return r;
}

}  // namespace

TEST_CASE("golden: the folder exists and holds cases (no vacuous pass)") {
  REQUIRE_MESSAGE(fs::is_directory(kGoldenDir), kGoldenDir.string() << " is missing: run "
                                                                        "tests/reference/make_golden_model.py");
  const auto cases = golden_cases();
  REQUIRE_MESSAGE(!cases.empty(), kGoldenDir.string() << " holds no case folders");
  // Every preset of MODEL.md's table has its case.
  for (const auto& p : list_presets()) CHECK_MESSAGE(fs::is_directory(kGoldenDir / p), "no golden case for preset " << p);
}

template <class T>
void run_all(double tol) {
  const auto cases = golden_cases();
  REQUIRE(!cases.empty());
  double worst = 0;
  for (const auto& name : cases) {
    CaseResult r = run_case<T>(name, tol);
    worst = std::max({worst, r.logits, r.loss, r.aux, r.z, r.grad});
    std::ostringstream moe;
    if (r.aux || r.z) moe << ", aux " << r.aux << ", z " << r.z;
    MESSAGE(std::string(dtype_name<T>()) << " " << name << ": logits " << r.logits << ", loss " << r.loss
                                         << moe.str() << ", worst of " << r.n_grads << " grads " << r.grad << " ("
                                         << r.worst_grad << ")");
  }
  MESSAGE(std::string(dtype_name<T>()) << ": " << cases.size() << " cases, worst relative error " << worst << " (tolerance "
                          << tol << ")");
}

TEST_CASE("golden: float64 forward, loss and every gradient to 1e-9") { run_all<double>(1e-9); }

TEST_CASE("golden: float32 forward, loss and every gradient to 1e-4") { run_all<float>(1e-4); }
