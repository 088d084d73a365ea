// tests/test_oracle.cpp — the `tapegrad oracle` program, run as a user would run it:
// its output against the PyTorch golden files of tests/golden/model/ (float64 relative
// error <= 1e-9, float32 <= 1e-4), and bad inputs (ragged or invalid tokens, missing,
// extra or mis-shaped weights, bad flags): a non-zero exit, a message naming the
// problem, and an existing --out file left untouched.
//
// The program is found beside this test's build folder: <build>/tests/test_oracle ->
// <build>/bin/tapegrad (build the `tapegrad_cli` target first).
#include <sys/stat.h>
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "nn/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using tg::st::SafeTensorsFile;
using tg::st::SafeTensorsWriter;

namespace {

const fs::path kGolden = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "model";

fs::path program() {
  const fs::path self = fs::read_symlink("/proc/self/exe");
  return self.parent_path().parent_path() / "bin" / "tapegrad";
}

fs::path scratch() { return tg::testing::scratch_dir("oracle"); }
using tg::testing::read_all;

void write_all(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string sh_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

struct Run {
  int code = -1;
  std::string out, err;
};

// Runs `tapegrad oracle <args>`, capturing exit code, stdout and stderr.
Run oracle(const std::vector<std::string>& args) {
  static int n = 0;
  const fs::path o = scratch() / ("stdout_" + std::to_string(n)), e = scratch() / ("stderr_" + std::to_string(n));
  ++n;
  std::string cmd = sh_quote(program().string()) + " oracle";
  for (const auto& a : args) cmd += " " + sh_quote(a);
  cmd += " >" + sh_quote(o.string()) + " 2>" + sh_quote(e.string());
  const int status = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = read_all(o);
  r.err = read_all(e);
  return r;
}

std::vector<std::string> case_args(const fs::path& dir, const fs::path& out) {
  return {"--config", (dir / "config.json").string(), "--weights", (dir / "weights.safetensors").string(),
          "--tokens", (dir / "tokens.txt").string(), "--out", out.string()};
}

// max |got - want| / max |want| over one tensor.
double rel_err(const xt::xarray<double>& got, const xt::xarray<double>& want) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(got.data()[i] - want.data()[i]));
    scale = std::max(scale, std::abs(want.data()[i]));
  }
  if (std::isnan(diff) || std::isnan(scale)) return INFINITY;
  return scale > 0 ? diff / scale : diff;
}

// Compares an oracle output with a golden expected.safetensors: the same names, shapes,
// the expected dtype, every tensor within tol. Returns the worst error and its tensor.
std::pair<double, std::string> compare(const fs::path& got_path, const fs::path& want_path, const std::string& dtype, double tol) {
  auto got = SafeTensorsFile::load(got_path.string());
  auto want = SafeTensorsFile::load(want_path.string());
  CHECK(got.names() == want.names());
  double worst = 0;
  std::string worst_name;
  for (const auto& name : want.names()) {
    INFO(name);
    REQUIRE(got.contains(name));
    CHECK(got.dtype(name) == dtype);
    REQUIRE(got.shape(name) == want.shape(name));
    const double e = rel_err(got.get<double>(name), want.get<double>(name));
    if (e > worst || worst_name.empty()) worst = e, worst_name = name;
    CHECK(e <= tol);
  }
  return {worst, want_path.parent_path().filename().string() + ": " + worst_name};
}

std::vector<fs::path> golden_cases() {
  std::vector<fs::path> r;
  if (fs::exists(kGolden))
    for (auto& e : fs::directory_iterator(kGolden))
      if (fs::exists(e.path() / "config.json") && fs::exists(e.path() / "expected.safetensors")) r.push_back(e.path());
  std::sort(r.begin(), r.end());
  return r;
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

}  // namespace

TEST_CASE("the program exists") {
  INFO("expected at ", program().string(), " (build the tapegrad_cli target)");
  REQUIRE(fs::exists(program()));
  const Run r = oracle({"--help"});
  CHECK(r.code == 0);
  CHECK(has(r.out, "--dtype"));
  CHECK(has(r.out, "f64"));
}

TEST_CASE("oracle output matches every golden case in float64 (rel err <= 1e-9)") {
  REQUIRE(fs::exists(program()));
  const auto cases = golden_cases();
  REQUIRE(!cases.empty());
  std::pair<double, std::string> worst{0.0, ""};
  for (const auto& dir : cases) {
    INFO(dir.string());
    const fs::path out = scratch() / (dir.filename().string() + ".safetensors");
    write_all(out, "an older file, to be replaced");
    const Run r = oracle(case_args(dir, out));
    INFO(r.err);
    REQUIRE(r.code == 0);
    CHECK(has(r.out, "wrote"));
    worst = std::max(worst, compare(out, dir / "expected.safetensors", "F64", 1e-9));
  }
  MESSAGE(cases.size(), " golden cases, worst relative error ", worst.first, " (", worst.second, ")");
}

TEST_CASE("oracle --dtype f32 agrees to 1e-4") {
  REQUIRE(fs::exists(program()));
  for (const char* name : {"baseline", "baseline_moe", "g1_elementwise"}) {
    const fs::path dir = kGolden / name;
    if (!fs::exists(dir)) {
      MESSAGE("skipped: no golden case ", name);
      continue;
    }
    const fs::path out = scratch() / (std::string(name) + "_f32.safetensors");
    auto args = case_args(dir, out);
    args.insert(args.end(), {"--dtype", "f32"});
    const Run r = oracle(args);
    INFO(r.err);
    REQUIRE(r.code == 0);
    const auto worst = compare(out, dir / "expected.safetensors", "F32", 1e-4);
    MESSAGE("f32 ", worst.second, ": relative error ", worst.first);
    CHECK(SafeTensorsFile::load(out.string()).metadata().at("dtype") == "f32");
  }
}

// ||got - want|| / ||want|| over one tensor (the --drift report's measure).
double rel_l2(const xt::xarray<double>& got, const xt::xarray<double>& want) {
  double d2 = 0, w2 = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = got.data()[i] - want.data()[i];
    d2 += d * d;
    w2 += want.data()[i] * want.data()[i];
  }
  return std::sqrt(d2 / w2);
}

TEST_CASE("oracle --dtype bf16 --drift: emulated bf16 on any CPU, float32 output, its drift from f64 reported") {
  REQUIRE(fs::exists(program()));
  for (const char* name : {"baseline", "baseline_moe", "g1_elementwise"}) {
    const fs::path dir = kGolden / name;
    if (!fs::exists(dir)) {
      MESSAGE("skipped: no golden case ", name);
      continue;
    }
    INFO(std::string(name));
    std::map<std::string, double> logits_drift;
    for (const char* dtype : {"f32", "bf16"}) {
      INFO(std::string(dtype));
      const fs::path out = scratch() / (std::string(name) + "_" + dtype + "_drift.safetensors");
      auto args = case_args(dir, out);
      args.insert(args.end(), {"--dtype", dtype, "--drift"});
      // bf16 must not need AVX512_BF16: the emulation runs with the instruction set reported absent.
      setenv("TAPEGRAD_DISABLE_BF16", "1", 1);
      const Run r = oracle(args);
      unsetenv("TAPEGRAD_DISABLE_BF16");
      INFO(r.err);
      INFO(r.out);
      REQUIRE(r.code == 0);
      CHECK(has(r.out, std::string("drift of ") + dtype + " from f64"));
      CHECK(has(r.out, "logits     relative"));
      CHECK(has(r.out, "worst parameter"));
      const auto got = SafeTensorsFile::load(out.string());
      const auto want = SafeTensorsFile::load((dir / "expected.safetensors").string());
      CHECK(got.metadata().at("dtype") == dtype);
      CHECK(got.dtype("logits") == "F32");
      // The reported drift is the output's distance from float64 (the golden files are
      // PyTorch's float64, which the f64 oracle matches to 1e-9).
      const double reported = std::stod(got.metadata().at("drift_logits_rel"));
      const double measured = rel_l2(got.get<double>("logits"), want.get<double>("logits"));
      CHECK(reported == doctest::Approx(measured).epsilon(0.01));
      CHECK(std::stod(got.metadata().at("drift_grad_rel")) > 0);
      logits_drift[dtype] = reported;
      const std::string line = std::string(name) + " " + dtype + ": logits drift " + got.metadata().at("drift_logits_rel") +
                               ", gradients " + got.metadata().at("drift_grad_rel") + ", worst " +
                               got.metadata().at("drift_grad_worst");
      MESSAGE(line);
    }
    // float32 is float64 to ~1e-7; bf16's 8-bit operands move the logits by orders of
    // magnitude more, and still only by a small fraction.
    CHECK(logits_drift["f32"] < 1e-5);
    CHECK(logits_drift["bf16"] > 30 * logits_drift["f32"]);
    CHECK(logits_drift["bf16"] < 5e-2);
  }
  const fs::path dir = kGolden / "baseline";
  if (fs::exists(dir)) {
    auto args = case_args(dir, scratch() / "f64_drift.safetensors");
    args.push_back("--drift");
    const Run r = oracle(args);
    CHECK(r.code != 0);
    CHECK(has(r.err, "--drift"));
    CHECK_FALSE(fs::exists(scratch() / "f64_drift.safetensors"));
  }
}

TEST_CASE("bad inputs: non-zero exit, a message naming the problem, --out untouched") {
  REQUIRE(fs::exists(program()));
  const fs::path base = kGolden / "baseline";
  REQUIRE(fs::exists(base));
  const fs::path dir = scratch() / "bad";
  fs::create_directories(dir);
  const fs::path out = dir / "out.safetensors";
  const std::string sentinel = "existing output, must survive";

  // Weights variants: one tensor missing, one extra, one mis-shaped, one truncated file.
  auto good = SafeTensorsFile::load((base / "weights.safetensors").string());
  REQUIRE(good.contains("model.norm.weight"));
  auto rewrite = [&](const fs::path& p, const std::string& skip, const std::string& extra, const std::string& reshape) {
    SafeTensorsWriter w;
    for (const auto& n : good.names()) {
      if (n == skip) continue;
      if (n == reshape) {
        xt::xarray<double> v = xt::zeros<double>({good.shape(n)[0] + 1});
        w.add(n, v);
      } else {
        w.add(n, good.get<double>(n));
      }
    }
    if (!extra.empty()) w.add(extra, xt::xarray<double>{1.0, 2.0});
    w.write(p.string());
  };
  const fs::path w_missing = dir / "missing.safetensors", w_extra = dir / "extra.safetensors",
                 w_shape = dir / "shape.safetensors", w_trunc = dir / "trunc.safetensors";
  rewrite(w_missing, "model.norm.weight", "", "");
  rewrite(w_extra, "", "model.bogus.weight", "");
  rewrite(w_shape, "", "", "model.norm.weight");
  const std::string gw = read_all(base / "weights.safetensors");
  write_all(w_trunc, gw.substr(0, gw.size() - 5));

  // Token file variants (the base case has vocab_size 48).
  struct TokCase {
    std::string name, text;
    std::vector<std::string> expect;
  };
  const std::vector<TokCase> tok_cases = {
      {"ragged", "1 2 3 4\n5 6 7\n", {"line 2", "3 tokens but line 1 has 4", "ragged"}},
      {"not_integer", "1 2 3\n4 x 6\n", {"line 2", "'x' is not an integer"}},
      {"float", "1 2.5 3\n", {"line 1", "'2.5' is not an integer"}},
      {"too_big", "1 2 3\n\n4 48 6\n", {"line 3", "48 is out of range [0, 48)"}},
      {"negative", "1 -2 3\n", {"line 1", "-2 is out of range"}},
      {"huge", "1 99999999999999999999999 3\n", {"line 1", "out of range"}},
      {"one_token", "7\n", {"line 1", "at least 2"}},
      {"empty", "", {"empty"}},
      {"blank", "\n  \n\t\n", {"empty"}},
  };

  struct BadCase {
    std::string what;
    std::vector<std::string> args;
    std::vector<std::string> expect;  // substrings of stderr
  };
  std::vector<BadCase> cases;
  for (const auto& t : tok_cases) {
    const fs::path p = dir / ("tokens_" + t.name + ".txt");
    write_all(p, t.text);
    auto args = case_args(base, out);
    args[5] = p.string();
    auto expect = t.expect;
    expect.push_back(p.string());  // the file is named
    cases.push_back({"tokens " + t.name, args, expect});
  }
  auto with_weights = [&](const fs::path& w) {
    auto args = case_args(base, out);
    args[3] = w.string();
    return args;
  };
  cases.push_back({"missing tensor", with_weights(w_missing), {"missing parameter 'model.norm.weight'", w_missing.string()}});
  cases.push_back({"extra tensor", with_weights(w_extra), {"unexpected entry 'model.bogus.weight'"}});
  cases.push_back({"wrong shape", with_weights(w_shape), {"'model.norm.weight' has shape (25)", "(24)"}});
  cases.push_back({"truncated weights", with_weights(w_trunc), {"safetensors", w_trunc.string(), "out of range"}});
  cases.push_back({"no weights file", with_weights(dir / "nope.safetensors"), {"no such file", "nope.safetensors"}});
  {
    auto args = case_args(base, out);
    args[1] = (dir / "no_config.json").string();
    cases.push_back({"no config", args, {"no_config.json"}});
  }
  {
    const fs::path bad_cfg = dir / "bad_config.json";
    std::string c = read_all(base / "config.json");
    c.insert(c.find('{') + 1, "\"no_such_field\": 1,");
    write_all(bad_cfg, c);
    auto args = case_args(base, out);
    args[1] = bad_cfg.string();
    cases.push_back({"unknown config field", args, {"no_such_field"}});
  }
  {
    auto args = case_args(base, out);
    args.insert(args.end(), {"--dtype", "f16"});
    cases.push_back({"bad dtype", args, {"--dtype"}});
  }
  {
    auto args = case_args(base, out);
    args.resize(6);  // no --out
    cases.push_back({"no --out", args, {"--out"}});
  }

  {
    // Issue 14: a FIFO is refused at once (it used to block forever), sequences longer than
    // max_position_embeddings are refused as train refuses them, and a config whose sizes
    // would not fit any machine is refused before the weights are read.
    const fs::path fifo = dir / "fifo";
    fs::remove(fifo);
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    for (int i : {1, 3, 5}) {
      auto args = case_args(base, out);
      args[i] = fifo.string();
      cases.push_back({"FIFO as " + args[i - 1], args, {args[i - 1], "FIFO", "not a regular file"}});
    }
    const nlohmann::json cfg = nlohmann::json::parse(read_all(base / "config.json"));
    const std::size_t P = cfg["max_position_embeddings"].get<std::size_t>();
    std::string line;
    for (std::size_t i = 0; i < P + 1; ++i) line += "1 ";
    const fs::path long_tokens = dir / "tokens_long.txt";
    write_all(long_tokens, line + "\n");
    auto args = case_args(base, out);
    args[5] = long_tokens.string();
    cases.push_back({"too long", args, {std::to_string(P + 1) + " tokens are longer", "max_position_embeddings"}});
    nlohmann::json huge = cfg;
    huge["num_hidden_layers"] = 1000000000;
    const fs::path huge_cfg = dir / "huge_config.json";
    write_all(huge_cfg, huge.dump());
    args = case_args(base, out);
    args[1] = huge_cfg.string();
    cases.push_back({"huge config", args, {"huge_config.json", "needs an estimated", "num_hidden_layers", "memory"}});
  }

  for (const auto& c : cases) {
    INFO(c.what);
    write_all(out, sentinel);
    const Run r = oracle(c.args);
    INFO("stderr: ", r.err);
    CHECK(r.code != 0);
    CHECK(r.code < 128);  // an error exit, not a crash
    for (const auto& e : c.expect) CHECK_MESSAGE(has(r.err, e), "expected in stderr: ", e);
    CHECK(read_all(out) == sentinel);
  }
  // --out naming an input is refused and the input is kept (it used to be overwritten).
  for (int i : {1, 3, 5}) {
    const fs::path copy = dir / ("input_" + std::to_string(i));
    auto args = case_args(base, out);
    fs::copy_file(args[i], copy, fs::copy_options::overwrite_existing);
    const std::string before = read_all(copy);
    args[i] = copy.string();
    args[7] = copy.string();
    const Run r = oracle(args);
    INFO("stderr: ", r.err);
    CHECK(r.code != 0);
    CHECK(has(r.err, "--out"));
    CHECK(has(r.err, "would overwrite its input"));
    CHECK(read_all(copy) == before);
    fs::remove(copy);
  }
  // No temporary files left behind.
  for (auto& e : fs::directory_iterator(dir)) CHECK_MESSAGE(!has(e.path().filename().string(), ".tmp."), e.path().string());
  // And the output is not created when it did not exist.
  fs::remove(out);
  const Run r = oracle(with_weights(w_missing));
  CHECK(r.code != 0);
  CHECK_FALSE(fs::exists(out));
}
