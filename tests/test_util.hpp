// tests/test_util.hpp — small helpers shared by the test suites.
#pragma once

#include <exception>
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
