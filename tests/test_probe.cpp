// tests/test_probe.cpp — `tapegrad probe`: the paper's Table 4 for a checkpoint.
//
// Known answers: a model whose q_proj is all zeros has all attention scores 0, so its
// attention is exactly uniform (F-Attn = the uniform reference mean_{i=1..T-1} 1/(i+1),
// for every layer and head), and with an elementwise G1 gate (its scores are q_proj rows
// too) every gate score is sigmoid(0) = 0.5. At T = 4 the uniform F-Attn is 0.3611 > 0.3,
// so every head is a "sink head" (Sink_1^0.3 = 1); at T = 8 it is 0.2475 (Sink = 0). The
// cross-entropy is checked against `tapegrad oracle` on the same windows.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "nn/config.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;

namespace {

fs::path program() { return fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "bin" / "tapegrad"; }
fs::path scratch() { return tg::testing::scratch_dir("probe"); }

std::string sh_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

struct Run {
  int code = -1;
  std::string out, err;
};

Run tapegrad(const std::vector<std::string>& args) {
  static int n = 0;
  const fs::path o = scratch() / ("out_" + std::to_string(n)), e = scratch() / ("err_" + std::to_string(n));
  ++n;
  std::string cmd = sh_quote(program().string());
  for (const auto& a : args) cmd += " " + sh_quote(a);
  cmd += " </dev/null >" + sh_quote(o.string()) + " 2>" + sh_quote(e.string());
  const int status = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  r.out = tg::testing::read_all(o);
  r.err = tg::testing::read_all(e);
  return r;
}

// The number after `label` in the probe's report.
double number_after(const std::string& text, const std::string& label) {
  const auto at = text.find(label);
  REQUIRE_MESSAGE(at != std::string::npos, "no '" << label << "' in:\n" << text);
  return std::stod(text.substr(at + label.size()));
}

double uniform_f_attn(int T) {
  double s = 0;
  for (int i = 1; i < T; ++i) s += 1.0 / (i + 1);
  return s / (T - 1);
}

// A tiny gated model (vocab 256, 2 layers) with q_proj zeroed: uniform attention, gates 0.5.
struct UniformModel {
  fs::path config, weights;
};
UniformModel make_uniform_model() {
  const fs::path dir = scratch() / "uniform";
  fs::create_directories(dir);
  tg::nn::ModelConfig c;
  c.vocab_size = 256, c.hidden_size = 16, c.intermediate_size = 32, c.num_hidden_layers = 2;
  c.num_attention_heads = 2, c.num_key_value_heads = 2, c.head_dim = 8, c.max_position_embeddings = 64;
  c.gate.position = tg::nn::GatePosition::Sdpa;
  c.gate.granularity = tg::nn::GateGranularity::Elementwise;
  c.validate();
  tg::nn::CausalLM<double> m(c, 7);
  tg::st::SafeTensorsWriter w;
  std::size_t zeroed = 0;
  for (auto& [name, v] : m.state_dict()) {
    if (name.find("q_proj.weight") != std::string::npos) {
      v.fill(0.0);
      ++zeroed;
    }
    w.add(name, v);
  }
  REQUIRE(zeroed == 2);
  UniformModel u{dir / "config.json", dir / "weights.safetensors"};
  c.save(u.config.string());
  w.write(u.weights.string());
  return u;
}

fs::path kjv_text() {
  const fs::path p = scratch() / "text.txt";
  std::ofstream(p) << "In the beginning God created the heaven and the earth. And the earth was without form, and "
                      "void; and darkness was upon the face of the deep.\n";
  return p;
}

}  // namespace

TEST_CASE("probe: uniform attention gives the uniform F-Attn, Sink_1^0.3 at T 4 and not at T 8, gates 0.5") {
  const UniformModel u = make_uniform_model();
  const fs::path text = kjv_text();
  for (int T : {4, 8}) {
    CAPTURE(T);
    const Run r = tapegrad({"probe", "--config", u.config.string(), "--weights", u.weights.string(), "--text",
                            text.string(), "--seq-len", std::to_string(T), "--windows", "3", "--dtype", "f64"});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    CHECK(r.out.find("3 windows of " + std::to_string(T) + " tokens") != std::string::npos);
    CHECK(number_after(r.out, "\nF-Attn ") == doctest::Approx(uniform_f_attn(T)).epsilon(1e-4));
    CHECK(number_after(r.out, "uniform attention over " + std::to_string(T) + " positions: ") ==
          doctest::Approx(uniform_f_attn(T)).epsilon(1e-4));
    CHECK(number_after(r.out, "largest head ") == doctest::Approx(uniform_f_attn(T)).epsilon(1e-4));
    CHECK(number_after(r.out, "\nSink_1^0.3 ") == (T == 4 ? 1.0 : 0.0));
    CHECK(number_after(r.out, "gate score: mean ") == doctest::Approx(0.5).epsilon(1e-6));
    // one table row per layer
    CHECK(r.out.find("\n| 0 | ") != std::string::npos);
    CHECK(r.out.find("\n| 1 | ") != std::string::npos);
    CHECK(r.out.find("\n| 2 | ") == std::string::npos);
  }
}

TEST_CASE("probe: the cross-entropy is the oracle's loss on the same windows - --bos-id leads each window") {
  const UniformModel u = make_uniform_model();
  const fs::path text = kjv_text();
  // The probe's windows: consecutive runs of T-1 bytes after the BOS id 255.
  const std::string bytes = tg::testing::read_all(text);
  const int T = 6, N = 2;
  const fs::path tokens = scratch() / "tokens.txt";
  {
    std::ofstream t(tokens);
    for (int w = 0; w < N; ++w) {
      t << 255;
      for (int k = 0; k < T - 1; ++k) t << " " << int(static_cast<unsigned char>(bytes[w * (T - 1) + k]));
      t << "\n";
    }
  }
  const fs::path out = scratch() / "oracle.safetensors";
  const Run o = tapegrad({"oracle", "--config", u.config.string(), "--weights", u.weights.string(), "--tokens",
                          tokens.string(), "--out", out.string()});
  REQUIRE_MESSAGE(o.code == 0, o.err);
  const double loss = tg::st::SafeTensorsFile::load(out.string()).get<double>("loss")();
  const Run p = tapegrad({"probe", "--config", u.config.string(), "--weights", u.weights.string(), "--text",
                          text.string(), "--seq-len", std::to_string(T), "--windows", std::to_string(N), "--bos-id",
                          "255", "--dtype", "f64"});
  REQUIRE_MESSAGE(p.code == 0, p.err);
  CHECK(p.out.find("(each led by token 255)") != std::string::npos);
  CHECK(number_after(p.out, "cross-entropy ") == doctest::Approx(loss).epsilon(1e-6));
  CHECK(number_after(p.out, "perplexity ") == doctest::Approx(std::exp(loss)).epsilon(1e-5));
}

TEST_CASE("probe --model: a Hugging Face folder, its tokenizer.json reads the text") {
  const fs::path folder = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "hf" / "paper_gated";
  const Run r = tapegrad({"probe", "--model", folder.string(), "--text", kjv_text().string(), "--seq-len", "16",
                          "--windows", "2"});
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.find("2 windows of 16 tokens") != std::string::npos);
  CHECK(r.out.find("gate score: mean ") != std::string::npos);  // the paper's gated config
  const double ppl = number_after(r.out, "perplexity ");
  CHECK(std::isfinite(ppl));
  CHECK(ppl > 1.0);
}

TEST_CASE("probe: bad input names the flag, the file or the field") {
  const UniformModel u = make_uniform_model();
  const fs::path text = kjv_text();
  const std::vector<std::string> base = {"probe", "--config", u.config.string(), "--weights", u.weights.string()};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return tapegrad(a);
  };
  Run r = with({"--text", text.string(), "--seq-len", "65"});
  CHECK(r.code == 1);
  CHECK(r.err.find("--seq-len 65 is more than the model's max_position_embeddings 64") != std::string::npos);
  r = with({"--text", text.string(), "--bos-id", "256"});
  CHECK(r.code == 1);
  CHECK(r.err.find("--bos-id 256 is not below the model's vocab_size 256") != std::string::npos);
  const fs::path one = scratch() / "one.txt";
  std::ofstream(one) << "x";
  r = with({"--text", one.string()});
  CHECK(r.code == 1);
  CHECK(r.err.find("--text " + one.string() + ": 1 tokens, too few for one window of 2 positions") != std::string::npos);
  const fs::path fifo = scratch() / "fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  r = with({"--text", fifo.string()});
  CHECK(r.code == 1);
  CHECK(r.err.find(fifo.string()) != std::string::npos);
  r = tapegrad({"probe", "--text", text.string()});
  CHECK(r.code == 1);
  CHECK(r.err.find("give --model DIR, or --config FILE with --weights FILE") != std::string::npos);
  r = with({"--text", text.string(), "--model", "somewhere"});
  CHECK(r.code == 1);
  CHECK(r.err.find("not both") != std::string::npos);
}
