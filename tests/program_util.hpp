// tests/program_util.hpp — helpers for the tests that drive the tapegrad program itself
// (test_train, test_train_tokenizer, test_study, test_distributed): where the program is,
// a temporary folder, files in and out, starting the program as a child process with its
// output in a log, and the arguments and run folders of a tiny training run.
//
// The program is the one built beside the test (<build>/bin/tapegrad); TAPEGRAD_BIN
// overrides it. Children run with OMP_NUM_THREADS=1, so a test's timing and results do not
// depend on the machine's core count.
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/checkpoint.hpp"
#include "nn/config.hpp"

namespace tg::testing {

// ---- the program and files -----------------------------------------------------------------

inline std::string program() {
  if (const char* env = std::getenv("TAPEGRAD_BIN")) return env;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path().parent_path() / "bin" / "tapegrad").string();
}

// False, with a failed check that says where the program was looked for, when it is missing.
inline bool have_program() {
  const bool ok = std::filesystem::exists(program());
  if (!ok) FAIL_CHECK("the tapegrad program was not found at " << program() << " (build it, or set TAPEGRAD_BIN)");
  return ok;
}

// A fresh folder under the system's temporary directory, removed with everything in it
// when the object goes; `d / "name"` is the path of a file in it.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "run") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("tg_test_" + tag + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

inline std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- child processes -----------------------------------------------------------------------

// Starts argv[0] (a path, or a name looked up in PATH) with argv, in `cwd` when it is not
// empty, stdout and stderr into the file `log`; returns the pid. The child runs with
// OMP_NUM_THREADS=1, and OpenMPI's consent to run as root (CI runs as root).
inline pid_t spawn_argv(const std::vector<std::string>& argv_in, const std::string& log, const std::string& cwd = "") {
  REQUIRE(!argv_in.empty());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ::_exit(126);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
    std::vector<char*> argv;
    for (auto& a : argv_in) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Starts the program (or `exe`) with `args`; see spawn_argv.
inline pid_t spawn(const std::vector<std::string>& args, const std::string& log, const std::string& cwd = "",
                   const std::string& exe = "") {
  return spawn_argv(plus({exe.empty() ? program() : exe}, args), log, cwd);
}

// The exit code of a child, or 128 + the signal that ended it.
inline int wait_status(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

struct Result {
  int status = -1;     // exit code, or 128 + signal
  std::string output;  // stdout and stderr
};

// Runs the program (or `exe`) with `args` in `cwd` to its end.
inline Result run(const std::vector<std::string>& args, const std::string& cwd = "", const std::string& exe = "") {
  static int counter = 0;
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("tg_test_log_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                              .string();
  Result r;
  r.status = wait_status(spawn(args, log, cwd, exe));
  r.output = read(log);
  std::filesystem::remove(log);
  return r;
}

// ---- tiny training runs --------------------------------------------------------------------

// English-like text with a little structure: enough for a tiny model to learn something.
inline std::string corpus_text(std::size_t bytes) {
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

// A tiny run on `data`: one thread, no sample, no periodic checkpoints.
inline std::vector<std::string> tiny_args(const std::string& data, const std::string& out, int steps) {
  return {"train", "--size", "tiny", "--data", data, "--out", out, "--steps", std::to_string(steps), "--batch", "2",
          "--seq-len", "16", "--eval-every", "4", "--eval-batches", "2", "--save-every", "0", "--sample-len", "0",
          "--threads", "1"};
}

// The metrics.csv lines without the timing columns (tokens_per_s, elapsed_s).
inline std::vector<std::string> loss_columns(const std::string& csv) {
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
inline std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[std::filesystem::relative(e.path(), dir).string()] = read(e.path().string());
  return m;
}

// The model configuration a run folder holds (config.json without its preset name).
inline nn::ModelConfig run_config(const std::string& dir) {
  auto j = nlohmann::json::parse(read(dir + "/config.json"));
  j.erase("preset");
  return nn::ModelConfig::from_json(j);
}

// The newest complete checkpoint folder of a run (checkpoints/step-NNNNNN).
inline std::string ckpt(const std::string& run_dir) {
  const std::string c = tg::train::latest_checkpoint(run_dir);
  if (c.empty()) FAIL_CHECK("no checkpoint in " << run_dir);
  return c;
}

}  // namespace tg::testing
