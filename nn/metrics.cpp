// nn/metrics.cpp — see metrics.hpp: metrics.csv out and back in.
#include "nn/metrics.hpp"

#include <charconv>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace tg::train {


namespace {

void put_number(std::string& out, double v) {
  if (std::isnan(v)) return;  // an empty field
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  out.append(buf, r.ptr);
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> f;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = line.find(',', b);
    f.push_back(line.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return f;
}

}  // namespace

std::string metrics_csv(const std::vector<MetricsRow>& rows) {
  std::string out = std::string(kMetricsHeader) + "\n";
  for (const auto& r : rows) {
    out += std::to_string(r.step);
    for (double v : {r.lr, r.train_loss, r.val_loss, r.val_bpb, r.tokens_per_s, r.elapsed_s, r.grad_norm}) {
      out += ',';
      put_number(out, v);
    }
    out += '\n';
  }
  return out;
}

std::vector<MetricsRow> parse_metrics_csv(const std::string& text, const std::string& label) {
  std::vector<MetricsRow> rows;
  std::istringstream in(text);
  std::string line;
  std::size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1) {
      if (line != kMetricsHeader)
        throw std::runtime_error(label + ": line 1 is not the metrics header '" + std::string(kMetricsHeader) + "'");
      continue;
    }
    if (line.empty()) continue;
    const auto f = split_fields(line);
    auto bad = [&](const std::string& why) {
      return std::runtime_error(label + ": line " + std::to_string(lineno) + ": " + why);
    };
    if (f.size() != 8) throw bad("expected 8 fields, found " + std::to_string(f.size()));
    MetricsRow r;
    {
      auto res = std::from_chars(f[0].data(), f[0].data() + f[0].size(), r.step);
      if (res.ec != std::errc() || res.ptr != f[0].data() + f[0].size()) throw bad("bad step '" + f[0] + "'");
    }
    double* dst[7] = {&r.lr, &r.train_loss, &r.val_loss, &r.val_bpb, &r.tokens_per_s, &r.elapsed_s, &r.grad_norm};
    for (int k = 0; k < 7; ++k) {
      const std::string& s = f[k + 1];
      if (s.empty()) {
        *dst[k] = kNone;
        continue;
      }
      auto res = std::from_chars(s.data(), s.data() + s.size(), *dst[k]);
      if (res.ec != std::errc() || res.ptr != s.data() + s.size()) throw bad("bad number '" + s + "'");
    }
    rows.push_back(r);
  }
  if (lineno == 0) throw std::runtime_error(label + ": empty (no header)");
  return rows;
}

}  // namespace tg::train
