// tests/test_util.hpp — small helpers shared by the test suites.
#pragma once

#include <unistd.h>

#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

// The message of the exception that evaluating `expr` throws, or "" if it throws nothing.
#define THROW_MSG(expr)                 \
  [&]() -> std::string {                \
    try {                               \
      (void)(expr);                     \
    } catch (const std::exception& e) { \
      return e.what();                  \
    }                                   \
    return "";                          \
  }()

namespace tg::testing {

// A scratch directory for this test process (`tg_test_<name>_<pid>` under the system's
// temporary directory), made empty on first use and removed at exit.
inline std::filesystem::path scratch_dir(const std::string& name) {
  struct Scratch {
    std::filesystem::path dir;
    explicit Scratch(std::filesystem::path d) : dir(std::move(d)) {
      std::filesystem::remove_all(dir);
      std::filesystem::create_directories(dir);
    }
    ~Scratch() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static Scratch s(std::filesystem::temp_directory_path() / ("tg_test_" + name + "_" + std::to_string(::getpid())));
  return s.dir;
}

// The whole file as bytes ("" if it cannot be read).
inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace tg::testing
