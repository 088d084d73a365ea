#!/usr/bin/env bash
# fuzz/run.sh — build the libFuzzer harnesses (clang, -fsanitize=fuzzer,address,undefined)
# and run each one.
#
#   bash fuzz/run.sh                 every harness for 60 s
#   bash fuzz/run.sh 20              every harness for 20 s
#   RUNS=100000 bash fuzz/run.sh     every harness for 100000 executions
#   bash fuzz/run.sh 60 config       one harness
#
# Seeds: the golden safetensors and config.json files of tests/golden, and fuzz/seeds/.
# A finding stops the run with the crashing input in build-fuzz/findings/<harness>/
# (exit status non-zero). Needs clang and libclang-rt-14-dev (setup.sh does not install
# them: .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
ONLY=${2:-}
OUT=build-fuzz
mkdir -p "$OUT"
CXX=${CXX_FUZZ:-clang++}
FLAGS=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.
       $(pkg-config --cflags libpcre2-8 libutf8proc))
LIBS=($(pkg-config --libs libpcre2-8 libutf8proc))
# The parsers and what they need, nothing more (no OpenMP, no kernels).
SOURCES=(nn/safetensors.cpp nn/config.cpp nn/tokens.cpp nn/tokenizer.cpp nn/files.cpp nn/data.cpp)
objs=()
for s in "${SOURCES[@]}"; do
  o="$OUT/$(basename "$s" .cpp).o"
  if [[ ! -f "$o" || "$s" -nt "$o" ]]; then
    echo "fuzz: compiling $s"
    "$CXX" "${FLAGS[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -c "$s" -o "$o"
  fi
  objs+=("$o")
done
seed() {  # seed DIR FILES...
  local dir=$1; shift
  mkdir -p "$dir"
  for f in "$@"; do
    if [[ -f "$f" ]]; then cp -f "$f" "$dir/$(echo "$f" | tr '/' '_')"; fi
  done
}
seed "$OUT/corpus/safetensors" tests/golden/model/baseline/weights.safetensors tests/golden/model/g1_elementwise/expected.safetensors fuzz/seeds/safetensors/*
seed "$OUT/corpus/config" tests/golden/model/*/config.json fuzz/seeds/config/*
seed "$OUT/corpus/tokens" fuzz/seeds/tokens/*
seed "$OUT/corpus/tokenizer" fuzz/seeds/tokenizer/*
status=0
for h in safetensors config tokens tokenizer; do
  [[ -n "$ONLY" && "$ONLY" != "$h" ]] && continue
  exe="$OUT/fuzz_$h"
  if [[ ! -f "$exe" || "fuzz/fuzz_$h.cpp" -nt "$exe" || "${objs[0]}" -nt "$exe" ]]; then
    echo "fuzz: linking fuzz_$h"
    "$CXX" "${FLAGS[@]}" "fuzz/fuzz_$h.cpp" "${objs[@]}" "${LIBS[@]}" -o "$exe"
  fi
  mkdir -p "$OUT/findings/$h"
  limit=(-max_total_time="$SECONDS_EACH")
  [[ -n "${RUNS:-}" ]] && limit=(-runs="$RUNS")
  if [[ -n "${RUNS:-}" ]]; then echo "fuzz: $h ($RUNS executions)"; else echo "fuzz: $h ($SECONDS_EACH s)"; fi
  if ! "$exe" "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$OUT/findings/$h/" \
      "$OUT/corpus/$h" 2> "$OUT/fuzz_$h.log"; then
    echo "fuzz: $h FOUND A PROBLEM; see $OUT/fuzz_$h.log and $OUT/findings/$h/" >&2
    tail -30 "$OUT/fuzz_$h.log" >&2
    status=1
  fi
  grep -E "^(#[0-9]+|Done)" "$OUT/fuzz_$h.log" | tail -1
done
exit $status
