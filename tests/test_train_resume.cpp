// tests/test_train_resume.cpp — what `tapegrad train` promises about stopping and going
// on: --resume gives the losses of an uninterrupted run, bitwise; Ctrl-C finishes the
// step and leaves a checkpoint that loads and resumes; SIGKILL at random moments of
// checkpointing and a save that fails between any two of its stages never leave a run
// that cannot resume to the same losses; train.json keeps every flag across a resume.
//
// Driven as a program like test_train.cpp (program_util.hpp): the `tiny` size on a small
// generated text, one thread, except where a case says otherwise.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/checkpoint.hpp"
#include "nn/safetensors.hpp"

#include "program_util.hpp"

namespace fs = std::filesystem;
using namespace tg;
using namespace tg::testing;  // program(), TempDir, run(), tiny_args(), ... (program_util.hpp)

TEST_CASE("train: --resume gives the same losses as an uninterrupted run") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  for (const char* dtype : {"f32", "f64"}) {
    CAPTURE(dtype);
    const std::string whole = d / (std::string("whole_") + dtype), parts = d / (std::string("parts_") + dtype);
    const Result a = run(plus(tiny_args(d / "text.txt", whole, 24), {"--dtype", dtype}));
    REQUIRE(a.status == 0);
    const Result b1 = run(plus(tiny_args(d / "text.txt", parts, 24), {"--dtype", dtype, "--stop-at", "10"}));
    INFO(b1.output);
    REQUIRE(b1.status == 0);
    CHECK(contains(b1.output, "--resume"));
    CHECK(loss_columns(read(parts + "/metrics.csv")).size() == 11);  // header + 10 steps
    // Only the folder: every setting comes from train.json.
    const Result b2 = run({"train", "--resume", parts, "--threads", "1", "--sample-len", "0"});
    INFO(b2.output);
    REQUIRE(b2.status == 0);
    CHECK(contains(b2.output, "resuming at step 10"));
    const auto la = loss_columns(read(whole + "/metrics.csv")), lb = loss_columns(read(parts + "/metrics.csv"));
    REQUIRE(la.size() == 25);
    CHECK(la == lb);
    // The final weights are the same bytes too.
    CHECK(read(ckpt(whole) + "/model.safetensors") == read(ckpt(parts) + "/model.safetensors"));

    // Resuming a finished run changes nothing.
    const auto before = snapshot(parts);
    const Result again = run({"train", "--resume", parts, "--threads", "1"});
    CHECK(again.status == 0);
    CHECK(contains(again.output, "already finished"));
    CHECK(snapshot(parts) == before);
  }
}

TEST_CASE("train: Ctrl-C finishes the step, writes a checkpoint that loads and resumes, exits non-zero") {
  if (!have_program()) return;
  TempDir d;
  write(d / "text.txt", corpus_text(20000));
  const std::string out = d / "run", log = d / "log.txt";
  const pid_t pid = spawn(plus(tiny_args(d / "text.txt", out, 1000000), {"--log-every", "1", "--warmup", "2"}), log);
  // Wait for a few steps (at most 30 s).
  bool started = false;
  for (int i = 0; i < 300 && !started; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    started = contains(read(log), "step 3/");
  }
  if (!started) ::kill(pid, SIGKILL);
  REQUIRE(started);
  REQUIRE(::kill(pid, SIGINT) == 0);
  const int status = wait_status(pid);
  const std::string output = read(log);
  INFO(output);
  CHECK(status == 130);
  CHECK(contains(output, "interrupted"));
  CHECK(contains(output, "checkpoint written"));

  const auto weights = st::SafeTensorsFile::load(ckpt(out) + "/model.safetensors");
  const auto optim = st::SafeTensorsFile::load(ckpt(out) + "/optimizer.safetensors");
  const std::string step = weights.metadata().at("step");
  CHECK(optim.metadata().at("step") == step);
  const long k = std::stol(step);
  CHECK(k >= 3);
  nn::CausalLM<float> model(run_config(out));
  CHECK_NOTHROW(model.load_from(weights));
  // metrics.csv holds exactly the steps done.
  CHECK(loss_columns(read(out + "/metrics.csv")).size() == static_cast<std::size_t>(k) + 1);

  // And the run continues from it.
  const Result r = run({"train", "--resume", out, "--steps", std::to_string(k + 3), "--threads", "1"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(loss_columns(read(out + "/metrics.csv")).size() == static_cast<std::size_t>(k) + 4);
}

namespace {

// The temporaries and incomplete folders under a run's checkpoints/ (none after a start).
std::vector<std::string> leftovers(const std::string& run_dir) {
  std::vector<std::string> l;
  std::error_code ec;
  for (auto& e : fs::recursive_directory_iterator(run_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.find(".tmp.") != std::string::npos) l.push_back(e.path().string());
    if (n.rfind("step-", 0) == 0 && !fs::exists(e.path() / "manifest.json")) l.push_back(e.path().string());
  }
  return l;
}

// Kills `kills` runs with SIGKILL at random moments (uniform over the reference run's wall
// time, which with --save-every 1 is mostly checkpointing) and resumes each to the end: the
// losses must be the uninterrupted run's, bit for bit.
void kill_and_resume(int kills, std::uint64_t seed) {
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(6000));
  const int steps = 8;
  auto args = [&](const std::string& out) {
    return plus(tiny_args(text, out, steps), {"--save-every", "1", "--eval-every", "3"});
  };
  const auto t0 = std::chrono::steady_clock::now();
  const Result ref = run(args(d / "ref"));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(ref.output);
  REQUIRE(ref.status == 0);
  const auto expected = loss_columns(read(d / "ref/metrics.csv"));
  REQUIRE(expected.size() == steps + 1);
  std::uint64_t x = seed;
  int resumed = 0, equal = 0, killed_in_run = 0;
  for (int i = 0; i < kills; ++i) {
    const std::string out = d / ("k" + std::to_string(i));
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const double at = wall * (0.15 + 0.85 * double(x >> 11) / double(1ull << 53));
    const pid_t pid = spawn(args(out), d / "log.txt");
    std::this_thread::sleep_for(std::chrono::duration<double>(at));
    ::kill(pid, SIGKILL);
    const int st = wait_status(pid);
    if (st == 128 + SIGKILL) ++killed_in_run;
    Result r;
    if (tg::train::latest_checkpoint(out).empty()) {
      // Killed before its first checkpoint: nothing to resume; start it again.
      fs::remove_all(out);
      r = run(args(out));
    } else {
      r = run({"train", "--resume", out, "--threads", "1"});
      ++resumed;
    }
    INFO("kill " << i << " at " << at << " s: " << r.output);
    CHECK(r.status == 0);
    const bool same = loss_columns(read(out + "/metrics.csv")) == expected;
    CHECK(same);
    equal += same;
    const auto left = leftovers(out);
    CHECK_MESSAGE(left.empty(), (left.empty() ? std::string() : left.front()));
    fs::remove_all(out);
  }
  MESSAGE("kill test: " << kills << " kills (" << killed_in_run << " while running, the rest after it ended), "
                        << resumed << " resumed from a checkpoint, " << equal << " with bitwise equal losses; "
                        << "reference run " << wall << " s");
  CHECK(equal == kills);
}

}  // namespace

TEST_CASE("train: SIGKILL at 10 random moments of checkpointing - every run resumes to the same losses") {
  if (!have_program()) return;
  kill_and_resume(10, 42);
}

TEST_CASE("train: a save that fails between any two of its stages leaves the previous checkpoint loadable") {
  if (!have_program()) return;
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(6000));
  auto args = [&](const std::string& out) {
    return plus(tiny_args(text, out, 6), {"--save-every", "1", "--eval-every", "3"});
  };
  REQUIRE(run(args(d / "ref")).status == 0);
  const auto expected = loss_columns(read(d / "ref/metrics.csv"));
  for (int stage = 1; stage <= 6; ++stage) {
    const std::string out = d / ("f" + std::to_string(stage));
    REQUIRE(run(plus(args(out), {"--stop-at", "3"})).status == 0);
    ::setenv("TAPEGRAD_TEST_FAIL_SAVE_AT", std::to_string(stage).c_str(), 1);
    const Result failed = run({"train", "--resume", out, "--threads", "1"});
    ::unsetenv("TAPEGRAD_TEST_FAIL_SAVE_AT");
    INFO("stage " << stage << ": " << failed.output);
    CHECK(failed.status == 86);  // the hook ended it in the middle of the step-4 save
    const std::string newest = tg::train::latest_checkpoint(out);
    CHECK(fs::path(newest).filename() == (stage <= 4 ? "step-000003" : "step-000004"));
    // It loads, and the run goes on to the losses of the uninterrupted run; the leftovers
    // are removed at that start and only the newest 2 are kept.
    const Result r = run({"train", "--resume", out, "--threads", "1"});
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(contains(r.output, "resume: from"));
    if (stage <= 4) CHECK(contains(r.output, "left by an interrupted save"));
    CHECK(loss_columns(read(out + "/metrics.csv")) == expected);
    CHECK(leftovers(out).empty());
    CHECK(tg::train::list_checkpoints(out).size() == 2);
  }
}

TEST_SUITE("slow") {
  TEST_CASE("train: SIGKILL at 100 random moments of checkpointing - 100 of 100 resume to the same losses") {
    if (!have_program()) return;
    kill_and_resume(100, 7);
  }

  TEST_CASE("train: the baby model on 2 threads resumes exactly too") {
    if (!have_program()) return;
    TempDir d;
    write(d / "text.txt", corpus_text(20000));
    auto args = [&](const std::string& out) {
      return std::vector<std::string>{"train", "--size", "baby", "--preset", "g1_elementwise", "--data", d / "text.txt",
                                      "--out", out, "--steps", "6", "--batch", "2", "--seq-len", "32",
                                      "--eval-every", "3", "--eval-batches", "1", "--sample-len", "0", "--threads", "2"};
    };
    REQUIRE(run(args(d / "whole")).status == 0);
    REQUIRE(run(plus(args(d / "parts"), {"--stop-at", "3"})).status == 0);
    const Result r = run({"train", "--resume", d / "parts", "--threads", "2"});
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(loss_columns(read(d / "whole/metrics.csv")) == loss_columns(read(d / "parts/metrics.csv")));
    CHECK(read(ckpt(d / "whole") + "/model.safetensors") == read(ckpt(d / "parts") + "/model.safetensors"));
    // The optimizer state too (its metadata's elapsed time differs, so compare the contents).
    const auto a = st::SafeTensorsFile::load(ckpt(d / "whole") + "/optimizer.safetensors");
    const auto b = st::SafeTensorsFile::load(ckpt(d / "parts") + "/optimizer.safetensors");
    REQUIRE(a.names() == b.names());
    for (const auto& n : a.names()) CHECK_MESSAGE(a.get<float>(n) == b.get<float>(n), n);
    CHECK(a.metadata().at("data_rng") == b.metadata().at("data_rng"));
    CHECK(a.metadata().at("step") == "6");
  }
}

TEST_CASE("train.json records every flag and reads back: a resumed run keeps each one") {
  if (!have_program()) return;
  TempDir d;
  const std::string text = d / "text.txt";
  write(text, corpus_text(6000));
  // Every flag that train.json records, at a non-default value.
  const std::vector<std::string> args = {
      "train", "--size", "tiny", "--preset", "g1_elementwise", "--data", text, "--out", d / "run", "--val-fraction",
      "0.1", "--steps", "3", "--batch", "3", "--seq-len", "12", "--lr", "0.003", "--warmup", "1", "--min-lr",
      "0.0002", "--weight-decay", "0.05", "--clip", "0.5", "--seed", "7", "--threads", "1", "--eval-every", "2",
      "--eval-batches", "3", "--save-every", "2", "--bos", "--doc-windows", "line:.", "--diag-every", "2",
      "--diag-batches", "1", "--dtype", "f64", "--sample-len", "0", "--stop-at", "2"};
  Result r = run(args);
  INFO(r.output);
  REQUIRE(r.status == 0);
  const auto j = nlohmann::json::parse(read(d / "run/train.json"));
  CHECK(j["preset"] == "g1_elementwise");
  CHECK(j["val_fraction"] == 0.1);
  CHECK(j["steps"] == 3);
  CHECK(j["batch"] == 3);
  CHECK(j["seq_len"] == 12);
  CHECK(j["lr"] == 0.003);
  CHECK(j["warmup"] == 1);
  CHECK(j["min_lr"] == 0.0002);
  CHECK(j["weight_decay"] == 0.05);
  CHECK(j["clip"] == 0.5);
  CHECK(j["seed"] == 7);
  CHECK(j["eval_every"] == 2);
  CHECK(j["eval_batches"] == 3);
  CHECK(j["save_every"] == 2);
  CHECK(j["bos_id"] == 256);
  CHECK(j["doc_sep"] == "line:.");
  CHECK(j["diag_every"] == 2);
  CHECK(j["diag_batches"] == 1);
  CHECK(j["dtype"] == "f64");
  // Every value read back: the resume accepts each fixed flag at its recorded value ...
  std::vector<std::string> again = args;
  again.erase(std::find(again.begin(), again.end(), "--stop-at"), again.end());
  for (std::size_t i = 0; i < again.size(); ++i)
    if (again[i] == "--out") again[i] = "--resume";
  again.insert(again.end(), {"--sample-len", "0"});
  r = run(again);
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(contains(r.output, "resume: from"));
  // ... and no float became null (the --clip nan bug): every number is a number.
  const auto j2 = nlohmann::json::parse(read(d / "run/train.json"));
  for (auto it = j2.begin(); it != j2.end(); ++it) CHECK_MESSAGE(!it->is_null(), it.key() << " is null");
}

