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

namespace fs = std::filesystem;
using namespace tg;

namespace {

std::string program() {
  if (const char* env = std::getenv("TAPEGRAD_BIN")) return env;
  const fs::path self = fs::read_symlink("/proc/self/exe");
  return (self.parent_path().parent_path() / "bin" / "tapegrad").string();
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "tg_test_train_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// English-like text with a little structure: enough for a tiny model to learn something.
std::string corpus_text(std::size_t bytes) {
  const char* words[] = {"the", "lord", "said", "unto", "moses", "and", "he", "went", "up", "into", "mountain",
                         "of", "god", "light", "was", "good", "earth", "heaven", "water", "day"};
  std::string s;
  std::uint64_t x = 12345;
  while (s.size() < bytes) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += words[(x >> 33) % 20];
    s += ((x >> 20) % 9 == 0) ? ".\n" : " ";
  }
  s.resize(bytes);
  return s;
}

struct Result {
  int status = -1;     // exit code, or 128 + signal
  std::string output;  // stdout and stderr
};

// Starts the program with `args` in `cwd`, its output going to `log`; returns the pid.
pid_t spawn(const std::vector<std::string>& args, const std::string& log, const std::string& cwd = "",
            const std::string& exe = "") {
  const std::string prog = exe.empty() ? program() : exe;
  std::vector<std::string> full = {prog};
  full.insert(full.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ::_exit(126);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::execv(prog.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_status(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Result run(const std::vector<std::string>& args, const std::string& cwd = "", const std::string& exe = "") {
  static int counter = 0;
  const std::string log = (fs::temp_directory_path() / ("tg_test_train_log_" + std::to_string(::getpid()) + "_" +
                                                         std::to_string(counter++)))
                              .string();
  Result r;
  r.status = wait_status(spawn(args, log, cwd, exe));
  r.output = read(log);
  fs::remove(log);
  return r;
}

// A tiny run on `data`: one thread, no sample, no periodic checkpoints.
std::vector<std::string> tiny_args(const std::string& data, const std::string& out, int steps) {
  return {"train", "--size", "tiny", "--data", data, "--out", out, "--steps", std::to_string(steps), "--batch", "2",
          "--seq-len", "16", "--eval-every", "4", "--eval-batches", "2", "--save-every", "0", "--sample-len", "0",
          "--threads", "1"};
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The metrics.csv lines without the timing columns (tokens_per_s, elapsed_s).
std::vector<std::string> loss_columns(const std::string& csv) {
  std::vector<std::string> out;
  std::istringstream in(csv);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    std::string x;
    while (std::getline(ls, x, ',')) f.push_back(x);
    while (f.size() < 8) f.push_back("");
    out.push_back(f[0] + "," + f[1] + "," + f[2] + "," + f[3] + "," + f[4] + "," + f[7]);
  }
  return out;
}

// Every file of a folder with its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = read(e.path().string());
  return m;
}

nn::ModelConfig run_config(const std::string& dir) {
  auto j = nlohmann::json::parse(read(dir + "/config.json"));
  j.erase("preset");
  return nn::ModelConfig::from_json(j);
}

// The newest complete checkpoint folder of a run (checkpoints/step-NNNNNN).
std::string ckpt(const std::string& run_dir) {
  const std::string c = tg::train::latest_checkpoint(run_dir);
  if (c.empty()) FAIL_CHECK("no checkpoint in " << run_dir);
  return c;
}

bool have_program() {
  const bool ok = fs::exists(program());
  if (!ok) FAIL_CHECK("the tapegrad program was not found at " << program() << " (build it, or set TAPEGRAD_BIN)");
  return ok;
}


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
