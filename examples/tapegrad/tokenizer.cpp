// examples/tapegrad/tokenizer.cpp — `tapegrad tokenizer encode|decode|train`.
//
// What it is for: using a tokenizer.json (nn/tokenizer.hpp) from a shell and from tests:
//   tapegrad tokenizer encode --tokenizer FILE   text on stdin, one line of ids per input line
//                                                (the line without its '\n'; --whole: all of
//                                                stdin as one text, ids on one line)
//   tapegrad tokenizer decode --tokenizer FILE   lines of ids on stdin, the bytes of each line
//                                                followed by '\n'
//   tapegrad tokenizer train --vocab N --data FILE --out tokenizer.json
//                                                learns a byte-level BPE (Note [BPE training])
// What it is not: the tokenizer itself, or the pre-tokenised token files (nn/tokens.hpp).
#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "commands.hpp"
#include "flags.hpp"
#include "nn/data.hpp"
#include "nn/tokenizer.hpp"
#include "run_folder.hpp"  // write_file_atomic

namespace {

using namespace tg;

std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

void print_ids(const std::vector<std::int32_t>& ids, std::string& out) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ' ';
    out += std::to_string(ids[i]);
  }
  out += '\n';
}

int run_tokenizer(int argc, char** argv) {
  CLI::App app{"Byte-level BPE tokenizers (Hugging Face tokenizer.json): encode, decode, train"};
  app.name("tapegrad tokenizer");
  app.require_subcommand(1);
  std::string file;
  bool whole = false;
  auto* enc = app.add_subcommand("encode", "text on stdin -> one line of ids per input line");
  enc->add_option("--tokenizer", file, "a tokenizer.json")->required();
  enc->add_flag("--whole", whole, "encode all of stdin as one text (ids on one line)");
  auto* dec = app.add_subcommand("decode", "lines of ids on stdin -> the bytes of each line, then '\\n'");
  dec->add_option("--tokenizer", file, "a tokenizer.json")->required();
  auto* tr = app.add_subcommand("train", "learn a byte-level BPE on a text file and write a tokenizer.json");
  std::size_t vocab = 4096, min_freq = 2;
  std::string data, out;
  std::vector<std::string> specials = {"<|endoftext|>"};
  tr->add_option("--vocab", vocab, "vocabulary size: 256 bytes + merges + special tokens")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t(257), std::size_t(1) << 24));
  tr->add_option("--data", data, "the text to learn from")->required();
  tr->add_option("--out", out, "the tokenizer.json to write")->required();
  tr->add_option("--min-frequency", min_freq, "never merge a pair seen fewer times")->capture_default_str();
  tr->add_option("--special", specials, "special tokens (added after the merges)")->capture_default_str();
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);

  if (*enc) {
    const text::Tokenizer tok = text::Tokenizer::from_file(file);
    const std::string in = read_stdin();
    std::string o;
    if (whole) {
      print_ids(tok.encode(in), o);
    } else {
      std::size_t start = 0;
      while (start < in.size()) {
        std::size_t nl = in.find('\n', start);
        if (nl == std::string::npos) nl = in.size();
        print_ids(tok.encode(std::string_view(in).substr(start, nl - start)), o);
        start = nl + 1;
      }
    }
    std::cout << o << std::flush;
    return 0;
  }
  if (*dec) {
    const text::Tokenizer tok = text::Tokenizer::from_file(file);
    std::string line, o;
    std::size_t lineno = 0;
    while (std::getline(std::cin, line)) {
      ++lineno;
      std::vector<std::int32_t> ids;
      std::istringstream ls(line);
      std::string w;
      while (ls >> w) {
        std::int64_t v = 0;
        std::size_t used = 0;
        try {
          v = std::stoll(w, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != w.size() || v < 0 || v > INT32_MAX)
          throw std::runtime_error("decode: line " + std::to_string(lineno) + ": '" + w + "' is not a token id");
        ids.push_back(static_cast<std::int32_t>(v));
      }
      try {
        o += tok.decode(ids);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error("decode: line " + std::to_string(lineno) + ": " + e.what());
      }
      o += '\n';
    }
    std::cout << o << std::flush;
    return 0;
  }
  // train
  data::Corpus corpus = data::Corpus::open(data);
  text::TrainOptions o;
  o.vocab_size = vocab;
  o.min_frequency = min_freq;
  o.special_tokens = specials;
  const auto t0 = std::chrono::steady_clock::now();
  const auto j = text::train_bpe(std::string_view(reinterpret_cast<const char*>(corpus.data()), corpus.size()), o);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string textj = j.dump(1) + "\n";
  const text::Tokenizer check = text::Tokenizer::from_string(textj, out);  // what we write reads back
  cli::run::write_file_atomic(out, textj);
  std::cerr << "tokenizer: " << j["model"]["merges"].size() << " merges, vocab " << check.vocab_size() << ", learnt in "
            << sec << " s; wrote " << out << "\n";
  return 0;
}

const bool registered = tg::cli::register_command(
    {"tokenizer", "byte-level BPE tokenizers: encode, decode (stdin/stdout), train a tokenizer.json", run_tokenizer});

}  // namespace
