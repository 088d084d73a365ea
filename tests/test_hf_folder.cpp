// tests/test_hf_folder.cpp — nn/hf_folder: Hugging Face model folders, single-file and
// sharded, BF16 shards, and every refusal of Note [Checking a sharded folder].
#include <doctest/doctest.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xadapt.hpp>

#include "nn/hf_folder.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace tg;
using tg::testing::scratch_dir;

namespace {

// One tensor to write: float values stored as F32 or BF16 (BF16: the value's top half, so
// values must be exactly representable; bf16_round makes them so).
struct Blob {
  std::string dtype;
  Shape shape;
  std::vector<float> values;
};

float bf16_round(float x) {  // round to nearest even, as torch does
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  u += 0x7FFF + ((u >> 16) & 1);
  return std::bit_cast<float>(u & 0xFFFF0000u);
}

// A safetensors file written by hand (the project's writer has no BF16).
void write_st(const fs::path& p, const std::map<std::string, Blob>& blobs) {
  nlohmann::json h = nlohmann::json::object();
  std::string data;
  for (const auto& [name, b] : blobs) {
    const std::size_t begin = data.size();
    for (float v : b.values) {
      const std::uint32_t u = std::bit_cast<std::uint32_t>(v);
      if (b.dtype == "BF16") {
        const std::uint16_t hi = static_cast<std::uint16_t>(u >> 16);
        data.append(reinterpret_cast<const char*>(&hi), 2);
      } else {
        data.append(reinterpret_cast<const char*>(&u), 4);
      }
    }
    h[name] = {{"dtype", b.dtype}, {"shape", b.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string header = h.dump();
  while (header.size() % 8) header += ' ';
  const std::uint64_t n = header.size();
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

nn::ModelConfig tiny(bool tied = false) {
  nn::ModelConfig c = nn::named_size("tiny");
  c.tie_word_embeddings = tied;
  return c;
}

// The model's parameters as blobs (values rounded to BF16 when dtype is BF16).
std::map<std::string, Blob> blobs_of(const nn::CausalLM<float>& m, const std::string& dtype) {
  std::map<std::string, Blob> out;
  for (const auto& [name, p] : m.named_parameters()) {
    Blob b{dtype, p.shape(), std::vector<float>(p.value().begin(), p.value().end())};
    if (dtype == "BF16")
      for (float& v : b.values) v = bf16_round(v);
    out[name] = b;
  }
  return out;
}

// Writes a folder: config.json and the blobs in `nshards` shards with an index (0: one
// model.safetensors). Returns the folder.
fs::path write_folder(const std::string& name, const nn::ModelConfig& c, const std::map<std::string, Blob>& blobs,
                      int nshards) {
  const fs::path d = scratch_dir("hf") / name;
  fs::remove_all(d);
  fs::create_directories(d);
  c.save((d / "config.json").string());
  if (nshards == 0) {
    write_st(d / "model.safetensors", blobs);
    return d;
  }
  std::vector<std::map<std::string, Blob>> shards(nshards);
  nlohmann::json wm = nlohmann::json::object();
  int i = 0;
  for (const auto& [n, b] : blobs) {
    const int s = i++ % nshards;
    shards[s][n] = b;
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
    wm[n] = fname;
  }
  for (int s = 0; s < nshards; ++s) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
    write_st(d / fname, shards[s]);
  }
  std::ofstream(d / "model.safetensors.index.json") << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump(1);
  return d;
}

Index some_tokens(std::size_t vocab) {
  Index t = Index::from_shape({2, 7});
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<std::int64_t>((i * 7 + 3) % vocab);
  return t;
}

xt::xarray<float> logits_of(const nn::CausalLM<float>& m, const Index& t) { return m.forward(t).value(); }

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(std::ifstream(p)); }
void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(1); }

}  // namespace

TEST_CASE("a sharded BF16 folder loads to the same model as one F32 file of the same values") {
  const nn::ModelConfig c = tiny();
  nn::CausalLM<float> src(c, 7);
  const auto bf = blobs_of(src, "BF16");
  auto f32 = bf;
  for (auto& [n, b] : f32) b.dtype = "F32";
  const fs::path one = write_folder("one_f32", c, f32, 0);
  const fs::path sharded = write_folder("sharded_bf16", c, bf, 3);

  const nn::HfFolder a = nn::HfFolder::open(one.string());
  const nn::HfFolder b = nn::HfFolder::open(sharded.string());
  CHECK(a.files().size() == 1);
  CHECK(b.files().size() == 3);
  CHECK(a.names() == b.names());
  CHECK(b.config() == c);
  CHECK(b.tokenizer_path().empty());
  CHECK(nn::is_hf_folder(sharded.string()));
  CHECK_FALSE(nn::is_hf_folder((sharded / "config.json").string()));
  std::uint64_t bytes = 0;
  for (const auto& f : b.files()) bytes += fs::file_size(f);
  CHECK(b.file_bytes() == bytes);

  nn::CausalLM<float> ma(a.config(), 1), mb(b.config(), 2);
  a.load_into(ma);
  b.load_into(mb);
  for (const auto& [n, p] : mb.named_parameters()) {
    INFO(n);
    CHECK(p.value() == ma.parameter(n).value());
    CHECK(p.value() == xt::xarray<float>(xt::adapt(bf.at(n).values, p.shape())));
  }
  const Index t = some_tokens(c.vocab_size);
  CHECK(logits_of(ma, t) == logits_of(mb, t));
  // The rounding mattered: the unrounded model differs (so the comparison above can fail).
  CHECK(logits_of(src, t) != logits_of(mb, t));

  // double loads the same values
  nn::CausalLM<double> md(b.config(), 3);
  b.load_into(md);
  CHECK(xt::allclose(md.parameter("model.embed_tokens.weight").value(),
                     xt::cast<double>(mb.parameter("model.embed_tokens.weight").value()), 0, 0));
}

TEST_CASE("tied embeddings: lm_head.weight skipped when equal to the embedding, refused when not - RoPE buffers skipped") {
  const nn::ModelConfig c = tiny(/*tied=*/true);
  nn::CausalLM<float> src(c, 5);
  auto blobs = blobs_of(src, "F32");
  REQUIRE_FALSE(blobs.count("lm_head.weight"));
  blobs["lm_head.weight"] = blobs.at("model.embed_tokens.weight");
  blobs["model.rotary_emb.inv_freq"] = Blob{"F32", {2}, {1.f, 0.5f}};
  const fs::path d = write_folder("tied_equal", c, blobs, 2);
  const nn::HfFolder f = nn::HfFolder::open(d.string());
  CHECK_FALSE(f.contains("lm_head.weight"));
  CHECK_FALSE(f.contains("model.rotary_emb.inv_freq"));
  CHECK(f.notice().find("lm_head.weight skipped") != std::string::npos);
  CHECK(f.notice().find("model.rotary_emb.inv_freq") != std::string::npos);
  nn::CausalLM<float> m(c, 9);
  f.load_into(m);
  const Index t = some_tokens(c.vocab_size);
  CHECK(logits_of(m, t) == logits_of(src, t));

  blobs["lm_head.weight"].values[3] += 1.0f;
  const fs::path d2 = write_folder("tied_differs", c, blobs, 2);
  const nn::HfFolder f2 = nn::HfFolder::open(d2.string());
  nn::CausalLM<float> m2(c, 9);
  const std::string msg = THROW_MSG(f2.load_into(m2));
  CHECK(msg.find("lm_head.weight differs from model.embed_tokens.weight") != std::string::npos);
  CHECK(msg.find("tie_word_embeddings") != std::string::npos);
}

TEST_CASE("refusals name the folder, the file and the tensor") {
  const nn::ModelConfig c = tiny();
  nn::CausalLM<float> src(c, 7);
  const auto blobs = blobs_of(src, "BF16");
  const std::string shard1 = "model-00001-of-00002.safetensors", shard2 = "model-00002-of-00002.safetensors";
  auto fresh = [&](const std::string& name) { return write_folder(name, c, blobs, 2); };
  auto open_msg = [](const fs::path& d) { return THROW_MSG(nn::HfFolder::open(d.string())); };

  SUBCASE("a missing shard") {
    const fs::path d = fresh("missing_shard");
    fs::remove(d / shard2);
    const std::string m = open_msg(d);
    CHECK(m.find("model.safetensors.index.json") != std::string::npos);
    CHECK(m.find("names shard " + shard2) != std::string::npos);
    CHECK(m.find("not in") != std::string::npos);
  }
  SUBCASE("a tensor missing from the shard the index names") {
    const fs::path d = fresh("missing_tensor");
    auto j = read_json(d / "model.safetensors.index.json");
    j["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shard1;
    write_json(d / "model.safetensors.index.json", j);
    const std::string m = open_msg(d);
    CHECK(m.find("puts tensor 'model.layers.9.mlp.up_proj.weight' in " + shard1 + ", which does not hold it") !=
          std::string::npos);
  }
  SUBCASE("a tensor the index does not list") {
    const fs::path d = fresh("unlisted");
    auto j = read_json(d / "model.safetensors.index.json");
    j["weight_map"].erase("model.norm.weight");
    write_json(d / "model.safetensors.index.json", j);
    const std::string m = open_msg(d);
    CHECK(m.find("holds tensor 'model.norm.weight', which") != std::string::npos);
    CHECK(m.find("does not list") != std::string::npos);
  }
  SUBCASE("a tensor in the wrong shard / stored twice") {
    const fs::path d = fresh("twice");
    auto j = read_json(d / "model.safetensors.index.json");
    const std::string n = "model.norm.weight";
    const std::string other = j["weight_map"][n] == shard1 ? shard2 : shard1;
    j["weight_map"][n] = other;
    write_json(d / "model.safetensors.index.json", j);
    const std::string m = open_msg(d);
    CHECK(m.find("holds tensor '" + n + "'") != std::string::npos);
    CHECK(m.find("puts in " + other) != std::string::npos);
  }
  SUBCASE("a duplicate key in the index") {
    const fs::path d = fresh("dupkey");
    std::ofstream(d / "model.safetensors.index.json")
        << "{\"weight_map\": {\"model.norm.weight\": \"" + shard1 + "\", \"model.norm.weight\": \"" + shard2 + "\"}}";
    const std::string m = open_msg(d);
    CHECK(m.find("model.norm.weight") != std::string::npos);
    CHECK(m.find("model.safetensors.index.json") != std::string::npos);
    CHECK(m.find("uplicate") != std::string::npos);
  }
  SUBCASE("a shard name outside the folder") {
    const fs::path d = fresh("traversal");
    auto j = read_json(d / "model.safetensors.index.json");
    j["weight_map"]["model.norm.weight"] = "../" + shard1;
    write_json(d / "model.safetensors.index.json", j);
    CHECK(open_msg(d).find("not a file name inside the folder") != std::string::npos);
  }
  SUBCASE("an index without weight_map, or with a non-string shard") {
    const fs::path d = fresh("no_map");
    write_json(d / "model.safetensors.index.json", nlohmann::json{{"metadata", nlohmann::json::object()}});
    CHECK(open_msg(d).find("has no \"weight_map\"") != std::string::npos);
    write_json(d / "model.safetensors.index.json", nlohmann::json{{"weight_map", {{"model.norm.weight", 3}}}});
    CHECK(open_msg(d).find("weight_map[\"model.norm.weight\"] must be a shard file name") != std::string::npos);
  }
  SUBCASE("both a single file and an index; no weights; a PyTorch .bin") {
    const fs::path d = fresh("both");
    write_st(d / "model.safetensors", blobs);
    CHECK(open_msg(d).find("holds both model.safetensors and model.safetensors.index.json") != std::string::npos);
    fs::remove(d / "model.safetensors");
    fs::remove(d / "model.safetensors.index.json");
    CHECK(open_msg(d).find("no weights") != std::string::npos);
    CHECK_FALSE(nn::is_hf_folder(d.string()));
    std::ofstream(d / "pytorch_model.bin") << "PK";
    CHECK(open_msg(d).find("pytorch_model.bin, a PyTorch pickle checkpoint") != std::string::npos);
  }
  SUBCASE("no config.json; not a folder; does not exist") {
    const fs::path d = fresh("noconfig");
    fs::remove(d / "config.json");
    CHECK(open_msg(d).find("no config.json") != std::string::npos);
    CHECK(open_msg(d / shard1).find("is not a folder") != std::string::npos);
    CHECK(open_msg(d / "nope").find("does not exist") != std::string::npos);
  }
  SUBCASE("a bad config is refused naming config.json and the key") {
    const fs::path d = fresh("badconfig");
    auto j = read_json(d / "config.json");
    j["sliding_window"] = 4096;
    j["use_sliding_window"] = true;
    write_json(d / "config.json", j);
    const std::string m = open_msg(d);
    CHECK(m.find("config.json") != std::string::npos);
    CHECK(m.find("sliding") != std::string::npos);
  }
  SUBCASE("a broken shard names the shard") {
    const fs::path d = fresh("broken_shard");
    std::ofstream(d / shard2, std::ios::trunc) << "garbage";
    CHECK(open_msg(d).find(shard2) != std::string::npos);
  }
  SUBCASE("weights that do not fit the config: missing, unexpected, mis-shaped, integer dtype") {
    auto b2 = blobs;
    b2.erase("lm_head.weight");
    b2["model.layers.0.extra.weight"] = Blob{"BF16", {2}, {1.f, 2.f}};
    b2["model.norm.weight"].shape = {b2["model.norm.weight"].values.size() / 2, 2};
    const fs::path d = write_folder("misfit", c, b2, 2);
    const nn::HfFolder f = nn::HfFolder::open(d.string());
    nn::CausalLM<float> m(c, 1);
    const auto before = m.parameter("model.embed_tokens.weight").value();
    const std::string msg = THROW_MSG(f.load_into(m));
    CHECK(msg.find(d.string()) != std::string::npos);
    CHECK(msg.find("missing parameter 'lm_head.weight'") != std::string::npos);
    CHECK(msg.find("unexpected entry 'model.layers.0.extra.weight'") != std::string::npos);
    CHECK(msg.find("'model.norm.weight' has shape") != std::string::npos);
    CHECK(msg.find("tie_word_embeddings true?") != std::string::npos);
    CHECK(m.parameter("model.embed_tokens.weight").value() == before);  // nothing changed
  }
}
