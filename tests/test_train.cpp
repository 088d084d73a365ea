// tests/test_train.cpp — `tapegrad train` and `tapegrad sample`, driven as programs on tiny
// models: the run folder, the KV-cache sampler, configs and presets, the default corpus,
// diagnostics, --detect-anomaly, and bad input. Resume, Ctrl-C and killed saves:
// test_train_resume.cpp.
//
// The program is the one built beside this test (<build>/bin/tapegrad; TAPEGRAD_BIN
// overrides). Every run is the `tiny` size on a small generated text with one thread, so
// the whole file takes a few seconds.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "nn/checkpoint.hpp"
#include "nn/config.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"

#include "program_util.hpp"

namespace fs = std::filesystem;
using namespace tg;
using namespace tg::testing;  // program(), TempDir, run(), tiny_args(), ... (program_util.hpp)

TEST_CASE("train: a tiny run writes the run folder and learns") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  const std::string out = d / "run";
  const Result r = run(plus(tiny_args(d / "text.txt", out, 60), {"--lr", "1e-2", "--sample-len", "40"}));
  INFO(r.output);
  REQUIRE(r.status == 0);
  for (const char* f : {"config.json", "train.json", "metrics.csv"}) CHECK(fs::exists(out + "/" + f));
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "manifest.json"})
    CHECK(fs::exists(ckpt(out) + "/" + f));
  CHECK(fs::path(ckpt(out)).filename() == "step-000060");
  CHECK(contains(r.output, "val loss"));
  CHECK(contains(r.output, "bits/byte"));
  CHECK(contains(r.output, "--- a sample"));

  // config.json: the model config plus the preset; the byte vocabulary.
  const auto cj = nlohmann::json::parse(read(out + "/config.json"));
  CHECK(cj["preset"] == "baseline");
  const nn::ModelConfig cfg = run_config(out);
  CHECK(cfg.vocab_size == 256);
  CHECK(cfg.hidden_size == nn::named_size("tiny").hidden_size);
  const auto tj = nlohmann::json::parse(read(out + "/train.json"));
  CHECK(tj["steps"] == 60);
  CHECK(tj["seq_len"] == 16);
  CHECK(tj["data_bytes"] == 20000);

  // metrics.csv: one row per step, validation every 4 steps and at the end, bpb = loss / ln 2.
  std::istringstream csv(read(out + "/metrics.csv"));
  std::string line;
  std::getline(csv, line);
  CHECK(line == "step,lr,train_loss,val_loss,val_bpb,tokens_per_s,elapsed_s,grad_norm");
  int rows = 0;
  double first_val = 0, last_val = 0;
  while (std::getline(csv, line)) {
    ++rows;
    std::vector<std::string> f;
    std::stringstream ls(line);
    std::string x;
    while (std::getline(ls, x, ',')) f.push_back(x);
    f.resize(8);
    CHECK(std::stoi(f[0]) == rows);
    const bool evaluated = rows % 4 == 0 || rows == 60;
    CHECK(!f[3].empty() == evaluated);
    if (evaluated) {
      const double v = std::stod(f[3]), bpb = std::stod(f[4]);
      CHECK(bpb == doctest::Approx(v / std::log(2.0)).epsilon(1e-12));
      if (first_val == 0) first_val = v;
      last_val = v;
    }
    CHECK(std::stod(f[7]) > 0);  // grad norm
  }
  CHECK(rows == 60);
  // From ln 256 = 5.55 nats (uniform) the model learns the 20-word text's letters.
  CHECK(first_val > 4.5);
  CHECK(last_val < 3.3);

  // The weights load into the model of config.json (Hugging Face names, F32).
  const auto weights = st::SafeTensorsFile::load(ckpt(out) + "/model.safetensors");
  CHECK(weights.contains("model.embed_tokens.weight"));
  CHECK(weights.dtype("model.embed_tokens.weight") == "F32");
  CHECK(weights.metadata().at("step") == "60");
  nn::CausalLM<float> model(cfg);
  CHECK_NOTHROW(model.load_from(weights));
  const auto optim = st::SafeTensorsFile::load(ckpt(out) + "/optimizer.safetensors");
  CHECK(optim.metadata().at("step") == "60");
  CHECK(optim.contains("exp_avg.model.embed_tokens.weight"));

  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    const std::string png = read(out + "/loss.png");
    REQUIRE(png.size() > 8);
    CHECK(png.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  }
  // No temporary files are left behind.
  for (auto& e : fs::directory_iterator(out)) CHECK(!contains(e.path().filename().string(), ".tmp"));
}

TEST_CASE("train --checkpoint-activations: the same losses and weights, bitwise, and it may change on --resume") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  for (const char* size : {"tiny", "tiny_moe"}) {
    CAPTURE(size);
    const std::string plain = d / (std::string("plain_") + size), ck = d / (std::string("ck_") + size);
    auto args = [&](const std::string& out) {
      auto a = tiny_args(d / "text.txt", out, 12);
      a[2] = size;  // --size
      return a;
    };
    const Result a = run(args(plain));
    REQUIRE(a.status == 0);
    const Result b1 = run(plus(args(ck), {"--checkpoint-activations", "--stop-at", "6"}));
    INFO(b1.output);
    REQUIRE(b1.status == 0);
    const Result b2 = run({"train", "--resume", ck, "--threads", "1", "--sample-len", "0"});  // now without it
    INFO(b2.output);
    REQUIRE(b2.status == 0);
    CHECK(loss_columns(read(plain + "/metrics.csv")) == loss_columns(read(ck + "/metrics.csv")));
    CHECK(read(ckpt(plain) + "/model.safetensors") == read(ckpt(ck) + "/model.safetensors"));
  }
}

TEST_CASE("sample: the same tokens with and without the KV cache") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  const std::string out = d / "run";
  REQUIRE(run(plus(tiny_args(d / "text.txt", out, 40), {"--lr", "1e-2", "--dtype", "f64"})).status == 0);
  auto sample = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"sample", "--run", out, "--length", "60", "--raw", "--threads", "1",
                                     "--prompt", "the lord"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = run(args);
    INFO(r.output);
    CHECK(r.status == 0);
    // stdout and stderr share the log: keep the text before the timing line.
    return r.output.substr(0, r.output.rfind("\n("));
  };
  for (const std::vector<std::string>& mode :
       {std::vector<std::string>{"--temperature", "0"}, {"--temperature", "1", "--seed", "3"},
        {"--temperature", "0.7", "--top-k", "5", "--seed", "4"}, {"--temperature", "1", "--top-p", "0.8"},
        {"--temperature", "0", "--context", "8"}}) {
    const std::string cached = sample(mode);
    const std::string uncached = sample(plus(mode, {"--no-cache"}));
    CAPTURE(mode[1]);
    CHECK(cached.rfind("the lord", 0) == 0);
    CHECK(cached.size() == std::string("the lord").size() + 60);  // the prompt, then 60 bytes
    CHECK(cached == uncached);
  }
  // Different seeds give different samples at temperature 1.
  CHECK(sample({"--temperature", "1", "--seed", "1"}) != sample({"--temperature", "1", "--seed", "2"}));

  // --config + --weights is the same model.
  const std::string via_files = sample({"--temperature", "0", "--dtype", "f64"});
  Result r = run({"sample", "--config", out + "/config.json", "--weights", ckpt(out) + "/model.safetensors", "--length",
                  "60", "--raw", "--threads", "1", "--prompt", "the lord", "--temperature", "0", "--dtype", "f64",
                  "--context", "16"});
  CHECK(r.status == 0);
  CHECK(r.output.substr(0, r.output.rfind("\n(")) == via_files);
}

TEST_CASE("train and sample: bad input is a clear error, a non-zero exit, and nothing is destroyed") {
  if (!have_program()) return;
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(2000));
  auto fails_with = [&](const std::vector<std::string>& args, const std::vector<std::string>& parts) {
    const Result r = run(args);
    INFO(r.output);
    CHECK(r.status != 0);
    for (const auto& p : parts) CHECK_MESSAGE(contains(r.output, p), "expected '" << p << "' in the output");
    return r;
  };

  SUBCASE("data problems") {
    fails_with(tiny_args(d / "missing.txt", d / "r1", 5), {"missing.txt", "no such file"});
    CHECK(!fs::exists(d / "r1"));
    fails_with(tiny_args(d.path.string(), d / "r2", 5), {"is a directory"});
    write(d / "empty.txt", "");
    fails_with(tiny_args(d / "empty.txt", d / "r3", 5), {"is empty"});
    // 2000 bytes: the validation split (2%) has 40 bytes, too few for 50+1.
    fails_with(plus(tiny_args(text, d / "r4", 5), {"--seq-len", "50", "--val-fraction", "0.02"}),
               {"validation split has 40 bytes", "at least 51"});
    fails_with(plus(tiny_args(text, d / "r5", 5), {"--seq-len", "5000"}), {"max_position_embeddings"});
    for (const char* r : {"r2", "r3", "r4", "r5"}) CHECK(!fs::exists(d / r));
  }

  SUBCASE("flags and values") {
    fails_with(plus(tiny_args(text, d / "r", 5), {"--bogus"}), {"--bogus"});
    fails_with({"train", "--steps", "-5", "--size", "tiny", "--data", text}, {"--steps"});
    fails_with({"train", "--steps", "ten", "--data", text}, {"--steps"});
    fails_with({"train", "--preset", "g7_magic", "--data", text}, {"g7_magic", "baseline", "g1_elementwise"});
    fails_with({"train", "--size", "huge", "--data", text}, {"huge", "tiny", "baby"});
    fails_with({"train", "--dtype", "f16", "--data", text}, {"f16"});
    fails_with(plus(tiny_args(text, d / "r", 5), {"--warmup", "10"}), {"--warmup 10 exceeds --steps 5"});
    fails_with(plus(tiny_args(text, d / "r", 5), {"--lr", "1e-4", "--min-lr", "1e-3"}), {"--min-lr"});
    fails_with({"sample", "--temperature", "-1"}, {"--temperature"});
    fails_with({"sample"}, {"--run"});
    fails_with({"sample", "--run", d / "nothing"}, {"not a run folder"});
    fails_with({"frobnicate"}, {"unknown command"});
    CHECK(!fs::exists(d / "r"));
  }

  SUBCASE("a run folder is never overwritten, and a failed resume leaves it as it was") {
    const std::string out = d / "run";
    REQUIRE(run(plus(tiny_args(text, out, 12), {"--stop-at", "6"})).status == 0);
    const auto original = snapshot(out);
    const std::string ck = ckpt(out);
    const auto original_ck = snapshot(ck);

    // A new run into the same folder.
    fails_with(tiny_args(text, out, 12), {"already holds a run", "--resume"});
    CHECK(snapshot(out) == original);
    // Settings that define the run cannot change on resume.
    fails_with({"train", "--resume", out, "--batch", "3"}, {"--batch", "train.json"});
    CHECK(snapshot(out) == original);
    // Another text.
    write(d / "other.txt", corpus_text(3000));
    fails_with({"train", "--resume", out, "--data", d / "other.txt"}, {"not the text this run was trained on"});
    CHECK(snapshot(out) == original);
    // No run there.
    fails_with({"train", "--resume", d / "elsewhere"}, {"holds no run"});
    // A run that stopped before its first checkpoint.
    fs::create_directories(d.path / "early");
    write(d / "early/config.json", original.at("config.json"));
    write(d / "early/train.json", original.at("train.json"));
    fails_with({"train", "--resume", d / "early"}, {"no checkpoint yet"});

    // A truncated checkpoint.
    const std::string model = ck + "/model.safetensors";
    write(model, original_ck.at("model.safetensors").substr(0, original_ck.at("model.safetensors").size() / 2));
    auto damaged = snapshot(out);
    fails_with({"train", "--resume", out, "--threads", "1"}, {"model.safetensors"});
    CHECK(snapshot(out) == damaged);
    fails_with({"sample", "--run", out}, {"model.safetensors"});
    write(model, original_ck.at("model.safetensors"));

    // Model and optimizer from different steps (no longer made by a crash: a checkpoint is one folder).
    const std::string other = d / "other_run";
    REQUIRE(run(plus(tiny_args(text, other, 12), {"--stop-at", "8"})).status == 0);
    write(ck + "/optimizer.safetensors", read(ckpt(other) + "/optimizer.safetensors"));
    damaged = snapshot(out);
    fails_with({"train", "--resume", out, "--threads", "1"}, {"optimizer.safetensors", "no loadable checkpoint"});
    CHECK(snapshot(out) == damaged);
    write(ck + "/optimizer.safetensors", original_ck.at("optimizer.safetensors"));

    // A config.json that does not match the weights (another width, another preset).
    auto cfg = nlohmann::json::parse(original.at("config.json"));
    cfg["intermediate_size"] = cfg["intermediate_size"].get<int>() + 8;
    write(out + "/config.json", cfg.dump());
    damaged = snapshot(out);
    fails_with({"train", "--resume", out, "--threads", "1"}, {"do not fit", "mlp"});
    CHECK(snapshot(out) == damaged);
    fails_with({"sample", "--run", out}, {"do not fit"});
    write(out + "/config.json", original.at("config.json"));
    write(d / "gated.json", nn::with_preset(run_config(out), "g1_elementwise").to_json().dump());
    fails_with({"sample", "--config", d / "gated.json", "--weights", model}, {"do not fit", "q_proj"});
    // Garbage JSON.
    write(out + "/train.json", "{ not json");
    fails_with({"train", "--resume", out}, {"train.json", "not valid JSON"});
    write(out + "/train.json", original.at("train.json"));

    // After all that, the intact folder still resumes.
    CHECK(snapshot(out) == original);
    const Result r = run({"train", "--resume", out, "--threads", "1", "--sample-len", "0"});
    INFO(r.output);
    CHECK(r.status == 0);
  }
}

TEST_CASE("train: --config with its preset, --preset on top of it, and configs that cannot work") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(5000));
  nn::ModelConfig base = nn::named_size("tiny");
  base.vocab_size = 256;
  auto j = nn::with_preset(base, "g1_headwise").to_json();
  j["preset"] = "g1_headwise";
  write(d / "gated.json", j.dump());
  auto args = [&](const std::string& cfg, const std::string& out) {
    std::vector<std::string> a = tiny_args(d / "text.txt", out, 3);
    a[1] = "--config";  // replaces "--size tiny"
    a[2] = cfg;
    return a;
  };
  Result r = run(args(d / "gated.json", d / "r1"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(read(d / "r1/config.json"))["preset"] == "g1_headwise");
  CHECK(run_config(d / "r1") == nn::with_preset(base, "g1_headwise"));
  // --preset replaces the file's gate.
  r = run(plus(args(d / "gated.json", d / "r2"), {"--preset", "g2_elementwise"}));
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(read(d / "r2/config.json"))["preset"] == "g2_elementwise");
  CHECK(run_config(d / "r2") == nn::with_preset(base, "g2_elementwise"));
  // A run's own config.json can start another run.
  REQUIRE(run(args(d / "r2/config.json", d / "r3")).status == 0);
  CHECK(run_config(d / "r3") == run_config(d / "r2"));

  // The byte tokenizer needs 256 ids; --size and --config exclude each other; bad JSON.
  write(d / "small_vocab.json", nn::named_size("tiny").to_json().dump());
  r = run(args(d / "small_vocab.json", d / "r4"));
  CHECK(r.status != 0);
  CHECK(contains(r.output, "vocab_size 48"));
  r = run(plus(args(d / "gated.json", d / "r5"), {"--size", "tiny"}));
  CHECK(r.status != 0);
  CHECK(contains(r.output, "--size or --config"));
  write(d / "bad.json", "{\"hidden_size\": 32, \"colour\": \"blue\"}");
  r = run(args(d / "bad.json", d / "r6"));
  CHECK(r.status != 0);
  CHECK(contains(r.output, "colour"));
  r = run(args(d / "missing.json", d / "r7"));
  CHECK(r.status != 0);
  CHECK(contains(r.output, "missing.json"));
  for (const char* f : {"r4", "r5", "r6", "r7"}) CHECK(!fs::exists(d / f));
}

TEST_CASE("train: the default corpus data/kjv.txt, and a clear error without it") {
  if (!have_program()) return;
  TempDir d;
  // A copy of the program at <d>/a/b/bin/tapegrad: its ../../data is <d>/a/data, which does
  // not exist, so only the current directory's data/kjv.txt can be found.
  fs::create_directories(d.path / "a" / "b" / "bin");
  const std::string exe = (d.path / "a" / "b" / "bin" / "tapegrad").string();
  fs::copy_file(program(), exe);
  fs::create_directories(d.path / "work");
  const std::vector<std::string> args = {"train", "--size", "tiny", "--steps", "3", "--batch", "2", "--seq-len", "16",
                                         "--eval-batches", "1", "--sample-len", "0", "--threads", "1", "--out", "run"};
  const Result missing = run(args, d / "work", exe);
  INFO(missing.output);
  CHECK(missing.status != 0);
  CHECK(contains(missing.output, "setup.sh"));
  CHECK(contains(missing.output, "--data"));
  CHECK(!fs::exists(d.path / "work" / "run"));

  fs::create_directories(d.path / "work" / "data");
  write((d.path / "work" / "data" / "kjv.txt").string(), corpus_text(5000));
  const Result found = run(args, d / "work", exe);
  INFO(found.output);
  CHECK(found.status == 0);
  CHECK(contains(found.output, "using the default corpus"));
  CHECK(contains(found.output, "kjv.txt"));
  // Without --out the run gets runs/<preset>-<size>-s<seed>, numbered when it exists.
  std::vector<std::string> no_out(args.begin(), args.end() - 2);
  REQUIRE(run(no_out, d / "work", exe).status == 0);
  REQUIRE(run(no_out, d / "work", exe).status == 0);
  CHECK(fs::exists(d.path / "work" / "runs" / "baseline-tiny-s0" / "checkpoints"));
  CHECK(fs::exists(d.path / "work" / "runs" / "baseline-tiny-s0-2" / "checkpoints"));
}

TEST_CASE("train: --bos and --doc-windows round-trip through the run folder, --diag-every writes diagnostics.csv") {
  if (!have_program()) return;
  TempDir d;
  // Documents separated by blank lines.
  std::string text;
  for (int k = 0; text.size() < 20000; ++k) text += "Chapter " + std::to_string(k) + "\n\n" + corpus_text(300) + "\n\n";
  write(d / "text.txt", text);
  const std::string dir = d / "run";
  const Result a = run(plus(tiny_args(d / "text.txt", dir, 12),
                            {"--bos", "--doc-windows", "blankline", "--diag-every", "4", "--stop-at", "6"}));
  INFO(a.output);
  REQUIRE(a.status == 0);
  const auto tj = nlohmann::json::parse(read(dir + "/train.json"));
  CHECK(tj.at("bos_id") == 256);
  CHECK(tj.at("doc_sep") == "blankline");
  CHECK(tj.at("diag_every") == 4);
  CHECK(run_config(dir).vocab_size == 257);  // the BOS id is in the vocabulary
  // Resumed from the folder alone: the windows stay BOS + document windows.
  const Result b = run({"train", "--resume", dir, "--threads", "1", "--sample-len", "0"});
  INFO(b.output);
  REQUIRE(b.status == 0);
  const auto tj2 = nlohmann::json::parse(read(dir + "/train.json"));
  CHECK(tj2.at("bos_id") == 256);
  CHECK(tj2.at("doc_sep") == "blankline");
  // diagnostics.csv: the header and the rows of steps 1, 4, 8, 12 (the rows of the first
  // part past its checkpoint at 6 are not there twice).
  std::istringstream in(read(dir + "/diagnostics.csv"));
  std::string line;
  std::vector<std::string> steps;
  std::getline(in, line);
  CHECK(contains(line, "sink_rate,f_attn,f_attn_uniform"));
  while (std::getline(in, line)) steps.push_back(line.substr(0, line.find(',')));
  CHECK(steps == std::vector<std::string>{"1", "4", "8", "12"});
  // An unknown separator is a clear error before anything is written.
  const Result bad = run(plus(tiny_args(d / "text.txt", d / "bad", 4), {"--doc-windows", "paragraphs"}));
  CHECK(bad.status != 0);
  CHECK(contains(bad.output, "document separator 'paragraphs'"));
  CHECK_FALSE(fs::exists(d / "bad"));
}

TEST_CASE("train --detect-anomaly: a run whose attention logits overflow names the op, its shapes and the layer") {
  // Issue 14 case 2: a diverging run named only the step, the loss and the gradient norm.
  // Here the weights start huge (initializer_range 3e18) and without QK-norm, so q.k
  // overflows float in the first layer's attention: the softmax of Inf is NaN.
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(5000));
  nn::ModelConfig c = nn::named_size("tiny");
  c.vocab_size = 256, c.use_qk_norm = false, c.initializer_range = 3e18;
  write(d / "wild.json", c.to_json().dump());
  auto args = [&](const std::string& out) {
    std::vector<std::string> a = tiny_args(d / "text.txt", out, 3);
    a[1] = "--config", a[2] = d / "wild.json";
    return a;
  };
  // Without the flag: the usual divergence message, which suggests the flag.
  const Result plain = run(args(d / "r1"));
  INFO(plain.output);
  CHECK(plain.status == 3);
  CHECK(contains(plain.output, "--detect-anomaly to name the op"));
  // With it (or TAPEGRAD_DETECT_ANOMALY=1): the first op, its inputs' shapes, the module.
  const Result r = run(plus(args(d / "r2"), {"--detect-anomaly"}));
  INFO(r.output);
  CHECK(r.status == 3);
  CHECK(contains(r.output, "step 1: anomaly: op 'attention' (inputs (2,17,4,6), (2,17,2,6), (2,17,2,6); in "
                           "model.layers.0.self_attn) produced NaN in its output"));
  CHECK(contains(r.output, "nothing was saved from this step"));
}

TEST_CASE("every float flag refuses NaN and Inf - defaults fit every size - sizes beyond the machine are refused first") {
  if (!have_program()) return;
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(4000));
  // Note [Finite number flags]: each float flag of each program, with nan, inf and 1e999.
  const std::vector<std::pair<std::vector<std::string>, std::string>> flags = {
      {tiny_args(text, d / "r", 2), "--lr"},         {tiny_args(text, d / "r", 2), "--min-lr"},
      {tiny_args(text, d / "r", 2), "--clip"},       {tiny_args(text, d / "r", 2), "--weight-decay"},
      {tiny_args(text, d / "r", 2), "--val-fraction"}, {{"sample", "--run", d / "r"}, "--temperature"},
      {{"sample", "--run", d / "r"}, "--top-p"},     {{"study", "--out", d / "s"}, "--lr"},
      {{"demo"}, "--lr"}};
  for (const auto& [args, flag] : flags)
    for (const char* bad : {"nan", "-nan", "inf", "1e999"}) {
      const Result r = run(plus(args, {flag, bad}));
      INFO(args[0] << " " << flag << " " << bad << ": " << r.output);
      CHECK(r.status != 0);
      CHECK(r.status < 128);
      CHECK(contains(r.output, flag));
      // NaN passes CLI::Range (Note [Finite number flags]); an infinity is out of any range.
      CHECK((contains(r.output, "finite") || contains(r.output, "not in range")));
    }
  CHECK(!fs::exists(d / "r"));
  CHECK(!fs::exists(d / "s"));
  // A comma list of numbers too.
  Result r = run({"study", "--out", d / "s", "--lrs", "0.1,nan"});
  CHECK(r.status == 1);
  CHECK(contains(r.output, "--lrs: 'nan'"));
  CHECK(!fs::exists(d / "s"));

  // `train --size tiny` with every other flag at its default: --seq-len shrinks to fit
  // tiny's 64 positions (it was 128 and failed).
  r = run({"train", "--size", "tiny", "--data", text, "--out", d / "tiny", "--steps", "2", "--sample-len", "0",
           "--threads", "1", "--batch", "2"});
  INFO(r.output);
  REQUIRE(r.status == 0);
  const auto targs = nlohmann::json::parse(read(d / "tiny/train.json"));
  CHECK(targs["seq_len"] == 63);

  // Sizes: refused before anything is written, naming the field and the bytes.
  const nn::ModelConfig tiny = run_config(d / "tiny");
  auto refuses = [&](const std::string& field, std::uint64_t value, const std::vector<std::string>& parts) {
    nlohmann::json j = nlohmann::json::parse(read(d / "tiny/config.json"));
    j[field] = value;
    const std::string cfg = d / ("cfg_" + field + ".json");
    write(cfg, j.dump());
    const Result rr = run({"train", "--config", cfg, "--data", text, "--out", d / ("big_" + field), "--steps", "2",
                           "--seq-len", "16", "--threads", "1"});
    INFO(field << ": " << rr.output);
    CHECK(rr.status == 1);
    for (const auto& p : parts) CHECK_MESSAGE(contains(rr.output, p), "expected '" << p << "'");
    CHECK(!fs::exists(d / ("big_" + field)));
  };
  refuses("num_hidden_layers", 1000000000ull, {"needs an estimated", "num_hidden_layers 1000000000 layers", "TB", "machine's memory"});
  refuses("hidden_size", 1000000000000ull, {"needs an estimated", "hidden_size 1000000000000"});
  refuses("hidden_size", 4000000000000000000ull, {"overflows 64 bits", "hidden_size 4000000000000000000"});
  refuses("max_position_embeddings", 1000000000000000ull, {"RoPE tables", "max_position_embeddings 1000000000000000"});
  // --max-memory below what the tiny model needs.
  r = run(plus(tiny_args(text, d / "small", 2), {"--max-memory", "100K"}));
  CHECK(r.status == 1);
  CHECK(contains(r.output, "more than --max-memory 100.0 KB"));
  r = run(plus(tiny_args(text, d / "small", 2), {"--max-memory", "lots"}));
  CHECK(r.status == 1);
  CHECK(contains(r.output, "--max-memory: 'lots' is not a size"));
  CHECK(!fs::exists(d / "small"));
  (void)tiny;
}

TEST_CASE("train: truncating or rewriting the corpus under a running job does not end it with a signal") {
  // Issue 14 case 4: the corpus was memory-mapped, and truncating it killed the process
  // with SIGBUS (exit 135). Now it is read into memory once (Note [The corpus is read,
  // not mapped], nn/data.cpp).
  if (!have_program()) return;
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(200000));
  const std::string log = d / "log.txt";
  const pid_t pid = spawn(plus(tiny_args(text, d / "run", 4000), {"--log-every", "1"}), log);
  // Wait for the first steps, then truncate the file and write something shorter.
  const auto t0 = std::chrono::steady_clock::now();
  while (!contains(read(log), "step 2/") && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(contains(read(log), "step 2/"));
  REQUIRE(::truncate(text.c_str(), 0) == 0);
  const bool still_running = !contains(read(log), "done: ");
  write(text, "short");
  const int status = wait_status(pid);
  INFO(read(log));
  CHECK(status == 0);  // it trains on the bytes it read, to the end
  CHECK(contains(read(log), "done: "));
  CHECK(still_running);  // the truncation happened while it trained
  // A resume then sees a different text and says so, naming the file.
  const Result r = run(plus(tiny_args(text, d / "run", 5000), {"--resume"}));
  CHECK(r.status == 1);
  CHECK(contains(r.output, "is not the text this run was trained on"));
}
