// nn/diagnostics.cpp — see diagnostics.hpp: Sink_1^eps, F-Attn and its uniform reference,
// BOS-against-elsewhere statistics.
#include "nn/diagnostics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

namespace tg::nn {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

template <class T>
std::vector<double> head_key_attention(const xt::xarray<T>& probs, std::size_t key) {
  if (probs.dimension() != 4)
    throw std::invalid_argument("head_key_attention: probs must be (B,H,Tq,Tk), got " +
                                std::to_string(probs.dimension()) + " dimensions");
  const std::size_t B = probs.shape()[0], H = probs.shape()[1], Tq = probs.shape()[2], Tk = probs.shape()[3];
  if (Tq > Tk) throw std::invalid_argument("head_key_attention: more queries than keys");
  std::vector<double> out(H, kNaN);
  if (key >= Tk) return out;
  const std::size_t first_pos = std::max<std::size_t>(key, 1);
  for (std::size_t h = 0; h < H; ++h) {
    double sum = 0;
    std::size_t count = 0;
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t i = 0; i < Tq; ++i)
        if (Tk - Tq + i >= first_pos) {
          sum += double(probs.data()[((b * H + h) * Tq + i) * Tk + key]);
          ++count;
        }
    if (count) out[h] = sum / double(count);
  }
  return out;
}

double mean_over_heads(const std::vector<double>& v) {
  double s = 0;
  std::size_t n = 0;
  for (double x : v)
    if (!std::isnan(x)) s += x, ++n;
  return n ? s / double(n) : kNaN;
}

SinkRate sink_rate(const std::vector<std::vector<double>>& head_attention, double eps) {
  SinkRate r;
  std::size_t above = 0, total = 0;
  for (const auto& layer : head_attention) {
    std::size_t a = 0;
    for (double x : layer) a += x > eps;  // NaN is not above
    r.per_layer.push_back(layer.empty() ? kNaN : double(a) / double(layer.size()));
    above += a, total += layer.size();
  }
  r.overall = total ? double(above) / double(total) : kNaN;
  return r;
}

double uniform_first_token_attention(std::size_t T) {
  if (T < 2) return kNaN;
  double s = 0;
  for (std::size_t i = 1; i < T; ++i) s += 1.0 / double(i + 1);
  return s / double(T - 1);
}

SinkSummary summarize_sinks(const Diagnostics& d, std::size_t seq_len, double eps) {
  SinkSummary s;
  s.eps = eps, s.seq_len = seq_len;
  std::vector<std::vector<double>> heads;
  double key1 = 0, gf = 0, gr = 0;
  std::size_t nk1 = 0, ng = 0;
  s.f_attn_max_head = 0;
  for (const auto& l : d.layers) {
    heads.push_back(l.head_first_token_attention);
    s.f_attn.push_back(l.first_token_attention);
    for (double x : l.head_first_token_attention)
      if (!std::isnan(x)) s.f_attn_max_head = std::max(s.f_attn_max_head, x);
    if (!std::isnan(l.second_token_attention)) key1 += l.second_token_attention, ++nk1;
    s.max_h_first = std::max(s.max_h_first, l.max_h_first);
    s.max_h_rest = std::max(s.max_h_rest, l.max_h_rest);
    s.max_h_layer.push_back(l.max_ffn_residual);
    if (l.has_gate_scores) gf += l.gate_first.mean, gr += l.gate_rest.mean, ++ng;
  }
  s.sink = sink_rate(heads, eps);
  s.f_attn_mean = mean_over_heads(s.f_attn);
  s.f_attn_uniform = uniform_first_token_attention(seq_len);
  s.key1_attention = nk1 ? key1 / double(nk1) : kNaN;
  s.gate_first = ng ? gf / double(ng) : kNaN;
  s.gate_rest = ng ? gr / double(ng) : kNaN;
  return s;
}

std::string sink_csv_header(std::size_t layers) {
  std::string h =
      "step,tokens,sink_rate,f_attn,f_attn_uniform,f_attn_max_head,key1_attn,max_h_first,max_h_rest,gate_first,gate_rest";
  for (std::size_t l = 0; l < layers; ++l) h += ",sink_L" + std::to_string(l);
  for (std::size_t l = 0; l < layers; ++l) h += ",f_attn_L" + std::to_string(l);
  for (std::size_t l = 0; l < layers; ++l) h += ",max_h_L" + std::to_string(l);
  return h;
}

std::string sink_csv_row(std::int64_t step, std::uint64_t tokens, const SinkSummary& s) {
  std::string r = std::to_string(step) + "," + std::to_string(tokens);
  auto put = [&](double v) {
    r += ',';
    if (std::isnan(v)) return;  // an empty field
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    r += buf;
  };
  for (double v : {s.sink.overall, s.f_attn_mean, s.f_attn_uniform, s.f_attn_max_head, s.key1_attention, s.max_h_first,
                   s.max_h_rest, s.gate_first, s.gate_rest})
    put(v);
  for (double v : s.sink.per_layer) put(v);
  for (double v : s.f_attn) put(v);
  for (double v : s.max_h_layer) put(v);
  return r;
}

template std::vector<double> head_key_attention<float>(const xt::xarray<float>&, std::size_t);
template std::vector<double> head_key_attention<double>(const xt::xarray<double>&, std::size_t);

}  // namespace tg::nn
