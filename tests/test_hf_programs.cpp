// tests/test_hf_programs.cpp — the synthetic Hugging Face folders of tests/golden/hf/
// (written by tests/reference/make_hf_folder.py: real Qwen3, Qwen3-MoE and the paper's
// configs, sharded BF16 weights with an index, tokenizer.json) through every program that
// takes one: `oracle --model`, `sample --model`, `train --init-from`, `tokenizer encode`;
// and their refusals (nothing written on an error).
//
// Tolerances. The reference computes in float64 from the very BF16 values the files hold, so
// the f64 programs differ from it only by summation order and libm: relative 1e-10 of the
// largest logit (seen: ~1e-14). f32: float32 rounding through two layers with deliberately
// large weights (logits up to ~20): 1e-4 (seen: ~1e-6). Greedy sampling must give exactly
// the reference's tokens: the script keeps every step's top-2 logit gap above 1e-3.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using tg::st::SafeTensorsFile;
using tg::testing::read_all;

namespace {

const fs::path kGolden = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "hf";
const std::vector<std::string> kCases = {"qwen3", "qwen3_moe", "paper_gated", "paper_headwise"};

fs::path program() { return fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "bin" / "tapegrad"; }
fs::path scratch() { return tg::testing::scratch_dir("hf_programs"); }

std::string sh_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

struct Run {
  int code = -1;
  std::string out, err;
};

Run tapegrad(const std::vector<std::string>& args, const std::string& stdin_text = "") {
  static int n = 0;
  const fs::path o = scratch() / ("out_" + std::to_string(n)), e = scratch() / ("err_" + std::to_string(n)),
                 i = scratch() / ("in_" + std::to_string(n));
  ++n;
  std::ofstream(i, std::ios::binary) << stdin_text;
  std::string cmd = sh_quote(program().string());
  for (const auto& a : args) cmd += " " + sh_quote(a);
  cmd += " <" + sh_quote(i.string()) + " >" + sh_quote(o.string()) + " 2>" + sh_quote(e.string());
  const int status = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  r.out = read_all(o);
  r.err = read_all(e);
  return r;
}

double rel_err(const xt::xarray<double>& got, const xt::xarray<double>& want) {
  REQUIRE(got.shape() == want.shape());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(got.data()[i] - want.data()[i]));
    scale = std::max(scale, std::abs(want.data()[i]));
  }
  return std::isnan(diff) ? INFINITY : diff / scale;
}

std::string unhex(const std::string& h) {
  std::string out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

nlohmann::json sample_json(const std::string& c) { return nlohmann::json::parse(read_all(kGolden / c / "sample.json")); }

// A copy of a golden folder to break.
fs::path copy_case(const std::string& c, const std::string& as) {
  const fs::path d = scratch() / as;
  fs::remove_all(d);
  fs::copy(kGolden / c, d);
  return d;
}

}  // namespace

TEST_CASE("oracle --model matches the reference logits of every folder (f64 and f32)") {
  for (const auto& c : kCases) {
    for (const std::string dtype : {"f64", "f32"}) {
      INFO(c << " " << dtype);
      const fs::path out = scratch() / (c + "_" + dtype + ".safetensors");
      const Run r = tapegrad({"oracle", "--model", (kGolden / c).string(), "--tokens", (kGolden / c / "tokens.txt").string(),
                              "--out", out.string(), "--dtype", dtype});
      INFO(r.err);
      REQUIRE(r.code == 0);
      CHECK(r.err.find("accepted without effect") != std::string::npos);  // the notice, once
      const auto got = SafeTensorsFile::load(out.string());
      const auto want = SafeTensorsFile::load((kGolden / c / "expected.safetensors").string());
      const double tol = dtype == "f64" ? 1e-10 : 1e-4;
      const double e = rel_err(got.get<double>("logits"), want.get<double>("logits"));
      MESSAGE(c << " " << dtype << ": logits relative error " << e);
      CHECK(e <= tol);
      CHECK(rel_err(got.get<double>("loss"), want.get<double>("loss")) <= tol);
    }
  }
}

TEST_CASE("sample --model: the folder's tokenizer encodes the prompt, greedy tokens as the reference's") {
  for (const auto& c : kCases) {
    const auto j = sample_json(c);
    const std::string prompt = j["prompt"];
    for (const std::string dtype : {"f64", "f32"}) {
      INFO(c << " " << dtype);
      const Run r = tapegrad({"sample", "--model", (kGolden / c).string(), "--prompt", prompt, "--temperature", "0",
                              "--length", std::to_string(j["greedy_ids"].size()), "--raw", "--dtype", dtype});
      INFO(r.err);
      REQUIRE(r.code == 0);
      CHECK(r.out == prompt + unhex(j["greedy_hex"]) + "\n");
      CHECK(r.err.find("tokens in") != std::string::npos);
    }
    // The prompt's ids, as the reference's BPE found them.
    const Run e = tapegrad({"tokenizer", "encode", "--tokenizer", (kGolden / c / "tokenizer.json").string()}, prompt + "\n");
    REQUIRE(e.code == 0);
    std::string want;
    for (const auto& id : j["prompt_ids"]) want += (want.empty() ? "" : " ") + std::to_string(id.get<int>());
    CHECK(e.out.substr(0, e.out.find('\n')) == want);
  }
}

TEST_CASE("train --init-from starts from the folder's weights (lr 0 keeps them bit for bit)") {
  const fs::path corpus = scratch() / "corpus.txt";
  {
    std::ofstream f(corpus);
    for (int i = 0; i < 200; ++i) f << "In the beginning God created the heaven and the earth. ";
  }
  for (const std::string c : {"qwen3", "paper_gated"}) {
    INFO(c);
    const fs::path run = scratch() / ("run_" + c);
    const Run r = tapegrad({"train", "--init-from", (kGolden / c).string(), "--data", corpus.string(), "--steps", "1",
                            "--batch", "1", "--seq-len", "8", "--lr", "0", "--min-lr", "0", "--eval-every", "1",
                            "--eval-batches", "1", "--sample-len", "0", "--out", run.string()});
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("init: weights from") != std::string::npos);
    const auto tj = nlohmann::json::parse(read_all(run / "train.json"));
    CHECK(tj["init_from"] == fs::absolute(kGolden / c).lexically_normal().string());
    fs::path model;
    for (const auto& e : fs::recursive_directory_iterator(run))
      if (e.path().filename() == "model.safetensors") model = e.path();
    REQUIRE(!model.empty());
    const auto got = SafeTensorsFile::load(model.string());
    // every tensor of the shards, value for value
    const auto index = nlohmann::json::parse(read_all(kGolden / c / "model.safetensors.index.json"));
    std::size_t n = 0;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it, ++n) {
      INFO(it.key());
      const auto shard = SafeTensorsFile::load((kGolden / c / it.value().get<std::string>()).string());
      REQUIRE(got.contains(it.key()));
      CHECK(got.get<double>(it.key()) == shard.get<double>(it.key()));
    }
    CHECK(got.names().size() == n);
  }
  // --init-from with --size, --config or --preset is refused before anything is written
  for (const std::vector<std::string> extra : {std::vector<std::string>{"--size", "tiny"}, {"--preset", "g1_elementwise"}}) {
    const fs::path run = scratch() / "run_refused";
    std::vector<std::string> args = {"train", "--init-from", (kGolden / "qwen3").string(), "--data", corpus.string(),
                                     "--steps", "1", "--out", run.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const Run r = tapegrad(args);
    CHECK(r.code != 0);
    CHECK(r.err.find(extra[0]) != std::string::npos);
    CHECK_FALSE(fs::exists(run));
  }
}

TEST_CASE("a broken folder: every program names the shard or tensor and writes nothing") {
  const std::string tokens = (kGolden / "qwen3_moe" / "tokens.txt").string();
  const fs::path corpus = scratch() / "corpus2.txt";
  std::ofstream(corpus) << std::string(2000, 'a');
  struct Breakage {
    std::string name, expect;
    void (*apply)(const fs::path&);
  };
  const std::vector<Breakage> cases = {
      {"missing_shard", "model-00002-of-00003.safetensors", [](const fs::path& d) { fs::remove(d / "model-00002-of-00003.safetensors"); }},
      {"unlisted", "model.layers.1.mlp.gate.weight",
       [](const fs::path& d) {
         auto j = nlohmann::json::parse(read_all(d / "model.safetensors.index.json"));
         j["weight_map"].erase("model.layers.1.mlp.gate.weight");
         std::ofstream(d / "model.safetensors.index.json") << j.dump();
       }},
      {"no_config", "no config.json", [](const fs::path& d) { fs::remove(d / "config.json"); }},
  };
  for (const auto& b : cases) {
    INFO(b.name);
    const fs::path d = copy_case("qwen3_moe", "broken_" + b.name);
    b.apply(d);
    const fs::path out = scratch() / ("never_" + b.name + ".safetensors");
    Run r = tapegrad({"oracle", "--model", d.string(), "--tokens", tokens, "--out", out.string()});
    CHECK(r.code == 1);
    CHECK(r.err.find(b.expect) != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    r = tapegrad({"sample", "--model", d.string(), "--length", "2"});
    CHECK(r.code != 0);
    CHECK(r.err.find(b.expect) != std::string::npos);
    CHECK(r.out.empty());
    const fs::path run = scratch() / ("never_run_" + b.name);
    r = tapegrad({"train", "--init-from", d.string(), "--data", corpus.string(), "--steps", "1", "--out", run.string()});
    CHECK(r.code != 0);
    CHECK(r.err.find(b.expect) != std::string::npos);
    CHECK_FALSE(fs::exists(run));
  }
  // --model with --config / --weights is refused
  const Run r = tapegrad({"oracle", "--model", (kGolden / "qwen3").string(), "--config", "x.json", "--tokens", tokens,
                          "--out", (scratch() / "x.safetensors").string()});
  CHECK(r.code == 1);
  CHECK(r.err.find("not both") != std::string::npos);
}

// ---- oracle --hvp: the Hessian-vector product written for other implementations ----------

TEST_CASE("oracle --hvp writes hvp.<name> equal to PyTorch's torch.autograd.functional.hvp (tests/golden/hvp)") {
  const fs::path hvp_dir = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "hvp";
  for (const std::string c : {"baseline", "g1_headwise", "g1_elementwise", "more_experts"}) {
    CAPTURE(c);
    const fs::path d = hvp_dir / c, out = scratch() / ("hvp_" + c + ".safetensors");
    const Run r = tapegrad({"oracle", "--config", (d / "config.json").string(), "--weights",
                            (d / "weights.safetensors").string(), "--tokens", (d / "tokens.txt").string(), "--hvp",
                            (d / "direction.safetensors").string(), "--out", out.string()});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto got = SafeTensorsFile::load(out.string());
    const auto want = SafeTensorsFile::load((d / "expected.safetensors").string());
    std::size_t n = 0;
    double worst = 0;
    for (const auto& name : want.names()) {
      if (name.rfind("hvp.", 0) != 0) continue;
      REQUIRE_MESSAGE(got.contains(name), name);
      worst = std::max(worst, rel_err(got.get<double>(name), want.get<double>(name)));
      ++n;
    }
    CHECK(n > 5);
    CHECK(worst <= 1e-10);
    MESSAGE(c << ": " << n << " hvp tensors, worst relative error " << worst);
    // the first-order outputs are still there
    CHECK(got.contains("loss"));
    CHECK(rel_err(got.get<double>("loss"), want.get<double>("loss")) <= 1e-12);
  }
}

TEST_CASE("oracle --hvp refuses a direction that does not match the parameters, naming the tensor") {
  const fs::path d = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "hvp" / "baseline";
  const auto dir = SafeTensorsFile::load((d / "direction.safetensors").string());
  // one tensor missing, one mis-shaped, one extra
  tg::st::SafeTensorsWriter w;
  const auto names = dir.names();
  for (std::size_t i = 1; i < names.size(); ++i) {
    auto v = dir.get<double>(names[i]);
    if (i == 1) v = xt::xarray<double>(xt::zeros<double>({3}));
    w.add(names[i], v);
  }
  w.add("not.a.parameter", xt::xarray<double>(xt::zeros<double>({2})));
  const fs::path bad = scratch() / "bad_direction.safetensors", out = scratch() / "bad_hvp_out.safetensors";
  w.write(bad.string());
  fs::remove(out);
  const std::vector<std::string> base = {"oracle", "--config", (d / "config.json").string(), "--weights",
                                         (d / "weights.safetensors").string(), "--tokens", (d / "tokens.txt").string()};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return tapegrad(a);
  };
  Run r = with({"--hvp", bad.string(), "--out", out.string()});
  CHECK(r.code == 1);
  CHECK(r.err.find("--hvp " + bad.string()) != std::string::npos);
  CHECK(r.err.find("no tensor '" + names[0] + "'") != std::string::npos);
  CHECK(r.err.find("'" + names[1] + "' has shape (3)") != std::string::npos);
  CHECK(r.err.find("'not.a.parameter' is not a parameter") != std::string::npos);
  CHECK_FALSE(fs::exists(out));
  // --out naming the direction file would overwrite an input
  r = with({"--hvp", bad.string(), "--out", bad.string()});
  CHECK(r.code == 1);
  CHECK(r.err.find("would overwrite its input") != std::string::npos);
}
