// tests/test_train_tokenizer.cpp — `tapegrad train --tokenizer FILE`: a tiny model trained on the
// tokens of a small BPE tokenizer made in the test (`tapegrad tokenizer train --vocab 300`): the run
// folder (train.json names the tokenizer and its hash, tokenizer.json is copied in), the token file
// beside the text (reused, rebuilt when the text changes), exact resume, a changed tokenizer refused
// on resume, `sample --run` decoding with the run's tokenizer, a --config whose vocab_size is too
// small refused naming both, and --bos taking the id after the vocabulary.
//
// The program is the one built beside this test (<build>/bin/tapegrad; TAPEGRAD_BIN overrides).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "nn/checkpoint.hpp"
#include "nn/config.hpp"
#include "nn/tokenizer.hpp"

#include "program_util.hpp"

namespace fs = std::filesystem;
using namespace tg;
using namespace tg::testing;  // program(), TempDir, run(), tiny_args(), ... (program_util.hpp)

namespace {

// A tokenizer of `vocab` ids learnt on `data` by the program.
std::string make_tokenizer(const TempDir& d, const std::string& data, int vocab, const std::string& name) {
  const Result r = run({"tokenizer", "train", "--vocab", std::to_string(vocab), "--data", data, "--out", d / name});
  INFO(r.output);
  REQUIRE(r.status == 0);
  return d / name;
}

}  // namespace

TEST_CASE("train --tokenizer: the run folder, the token file, exact resume, sample --run decodes with the run's tokenizer") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  const std::string tok = make_tokenizer(d, d / "text.txt", 300, "tok.json");
  const auto tokenizer = text::Tokenizer::from_file(tok);
  REQUIRE(tokenizer.vocab_size() == 300);

  const std::string whole = d / "whole", parts = d / "parts";
  const Result a = run(plus(tiny_args(d / "text.txt", whole, 16), {"--tokenizer", tok}));
  INFO(a.output);
  REQUIRE(a.status == 0);
  CHECK(contains(a.output, "tokens: encoded"));
  CHECK(contains(a.output, "nats/token"));
  // The model's vocabulary is the tokenizer's; train.json names it; the folder holds a copy.
  CHECK(run_config(whole).vocab_size == 300);
  const auto tj = nlohmann::json::parse(read(whole + "/train.json"));
  CHECK(tj.at("tokenizer").get<std::string>() == fs::absolute(tok).lexically_normal().string());
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(tokenizer.hash()));
  CHECK(tj.at("tokenizer_hash").get<std::string>() == hash);
  CHECK(read(whole + "/tokenizer.json") == read(tok));
  const std::string token_file = d / (std::string("text.txt.tokens-") + hash);
  CHECK(fs::exists(token_file));
  // val_loss is per byte (val_bpb = val_loss / ln 2) and below the loss per token: a token of
  // this tokenizer carries more than one byte on average.
  {
    std::istringstream in(read(whole + "/metrics.csv"));
    std::string line, last;
    while (std::getline(in, line)) last = line;
    std::vector<std::string> f;
    std::stringstream ls(last);
    for (std::string x; std::getline(ls, x, ',');) f.push_back(x);
    REQUIRE(f.size() >= 5);
    const double val_loss = std::stod(f[3]), val_bpb = std::stod(f[4]);
    CHECK(val_bpb == doctest::Approx(val_loss / std::log(2.0)).epsilon(1e-5));
    const auto p = a.output.rfind("nats/token");
    REQUIRE(p != std::string::npos);
    const auto q = a.output.rfind(", ", p);
    const double per_token = std::stod(a.output.substr(q + 2, p - q - 2));
    CHECK(val_loss < per_token);
  }

  // A second run reuses the token file; the resumed run gives the same losses bit for bit.
  const Result b1 = run(plus(tiny_args(d / "text.txt", parts, 16), {"--tokenizer", tok, "--stop-at", "6"}));
  INFO(b1.output);
  REQUIRE(b1.status == 0);
  CHECK(contains(b1.output, "tokens: reused"));
  const Result b2 = run({"train", "--resume", parts, "--threads", "1", "--sample-len", "0"});
  INFO(b2.output);
  REQUIRE(b2.status == 0);
  CHECK(loss_columns(read(whole + "/metrics.csv")) == loss_columns(read(parts + "/metrics.csv")));
  CHECK(read(ckpt(whole) + "/model.safetensors") == read(ckpt(parts) + "/model.safetensors"));

  // An edited text makes the token file stale: it is rebuilt.
  write(d / "text.txt", corpus_text(20000) + "and the lord said unto moses.\n");
  const Result c = run(plus(tiny_args(d / "text.txt", d / "edited", 2), {"--tokenizer", tok}));
  INFO(c.output);
  CHECK(c.status == 0);
  CHECK(contains(c.output, "tokens: encoded"));

  // sample --run decodes with the run's tokenizer: the text is the prompt then tokens of its vocabulary.
  const Result s = run({"sample", "--run", whole, "--length", "40", "--prompt", "the lord", "--raw", "--threads", "1"});
  INFO(s.output);
  REQUIRE(s.status == 0);
  CHECK(contains(s.output, "40 tokens"));
  const std::string text = s.output.substr(0, s.output.find("\n("));
  REQUIRE(text.rfind("the lord", 0) == 0);
  // The generated bytes are a concatenation of the vocabulary's tokens: they re-encode and decode to themselves.
  CHECK(tokenizer.decode(tokenizer.encode(text)) == text);
  CHECK(text.size() > std::string("the lord").size());
}

TEST_CASE("train --tokenizer: a changed tokenizer is refused on resume, a --config vocab_size below the tokenizer's is refused, --bos takes the next id") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  const std::string tok = make_tokenizer(d, d / "text.txt", 300, "tok.json");
  const std::string other = make_tokenizer(d, d / "text.txt", 280, "other.json");
  const std::string dir = d / "run";
  const Result a = run(plus(tiny_args(d / "text.txt", dir, 8), {"--tokenizer", tok, "--stop-at", "4"}));
  INFO(a.output);
  REQUIRE(a.status == 0);
  const auto before = snapshot(dir);
  const Result r = run({"train", "--resume", dir, "--tokenizer", other, "--threads", "1"});
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(contains(r.output, "--tokenizer " + other));
  CHECK(contains(r.output, "is not the tokenizer this run was trained with"));
  CHECK(snapshot(dir) == before);
  // The run folder's copy replaced: refused too.
  write(dir + "/tokenizer.json", read(other));
  const Result r2 = run({"train", "--resume", dir, "--threads", "1"});
  INFO(r2.output);
  CHECK(r2.status != 0);
  CHECK(contains(r2.output, "tokenizer.json"));
  CHECK(contains(r2.output, "is not the tokenizer this run was trained with"));
  // The same tokenizer given again is accepted.
  write(dir + "/tokenizer.json", read(tok));
  const Result r3 = run({"train", "--resume", dir, "--tokenizer", tok, "--threads", "1", "--sample-len", "0"});
  INFO(r3.output);
  CHECK(r3.status == 0);

  // A --config with a vocabulary smaller than the tokenizer's: refused, naming both; nothing written.
  auto cfg = nn::named_size("tiny");
  cfg.vocab_size = 256;
  write(d / "small.json", cfg.to_json().dump(2));
  const std::string out = d / "refused";
  const Result v = run({"train", "--config", d / "small.json", "--tokenizer", tok, "--data", d / "text.txt", "--out", out,
                        "--steps", "2", "--threads", "1"});
  INFO(v.output);
  CHECK(v.status != 0);
  CHECK(contains(v.output, "small.json: vocab_size 256"));
  CHECK(contains(v.output, "tok.json"));
  CHECK(contains(v.output, "300"));
  CHECK(!fs::exists(out));

  // --bos: the id after the tokenizer's vocabulary.
  const std::string bos = d / "bos";
  const Result b = run(plus(tiny_args(d / "text.txt", bos, 2), {"--tokenizer", tok, "--bos"}));
  INFO(b.output);
  REQUIRE(b.status == 0);
  CHECK(nlohmann::json::parse(read(bos + "/train.json")).at("bos_id").get<int>() == 300);
  CHECK(run_config(bos).vocab_size == 301);
}
