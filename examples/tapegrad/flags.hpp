// examples/tapegrad/flags.hpp — checks every program applies to its command line.
//
// Note [Finite number flags]
// CLI::Range(lo, hi) lets NaN through: every comparison with NaN is false, so `--clip nan`
// once passed, ran with clipping silently off and wrote "clip": null into train.json. And
// an unranged float flag takes "inf" or "1e999" as well. `refuse_non_finite(app)`, called
// once after the options are declared, checks every option of type FLOAT (CLI11's type
// name for float, double and vectors of them) in the app and its subcommands when the
// command line has been parsed, so a new float flag is covered without anyone remembering
// to add a check.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <string>

namespace tg::cli {

// The message for a value that is not a finite number, or "" when it is fine (or is not a
// number at all: CLI11's own conversion reports that).
inline std::string non_finite_reason(const std::string& value) {
  std::size_t start = 0;
  while (start <= value.size()) {
    const std::size_t comma = value.find(',', start);
    const std::string part = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) {
      char* end = nullptr;
      const double v = std::strtod(part.c_str(), &end);
      if (end != part.c_str() && !std::isfinite(v)) return "must be a finite number, got " + part;
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return "";
}

inline void check_finite_options(CLI::App& app) {
  for (const CLI::Option* opt : app.get_options()) {
    if (opt->get_type_name().rfind("FLOAT", 0) != 0) continue;
    for (const std::string& r : opt->results())
      if (const std::string why = non_finite_reason(r); !why.empty())
        throw CLI::ValidationError(opt->get_name(), why);
  }
}

// Note [Finite number flags]: installs the check on `app` and every subcommand.
inline void refuse_non_finite(CLI::App& app) {
  app.parse_complete_callback([&app] { check_finite_options(app); });
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) refuse_non_finite(*sub);
}

}  // namespace tg::cli
