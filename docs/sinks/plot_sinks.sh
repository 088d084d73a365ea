#!/bin/bash
# docs/sinks/plot_sinks.sh RUNS_DIR OUT_DIR — draws the sink metrics over training (from each
# run folder's diagnostics.csv, written by `tapegrad train --diag-every N`) with gnuplot.
# Columns (nn/diagnostics.hpp): 2 tokens, 3 sink_rate, 4 f_attn, 5 f_attn_uniform,
# 6 f_attn_max_head, 7 key1_attn, 8 max_h_first, 9 max_h_rest, 10 gate_first, 11 gate_rest.
set -eu
RUNS=$1; OUT=$2
mkdir -p "$OUT"
runs="baseline-bos-lr0.01-wd0.5 baseline-nobos-lr0.01-wd0.5 g1_elementwise-bos-lr0.01-wd0.5 g1_headwise-bos-lr0.01-wd0.5"
plot() {  # file title ylabel column [log]
  local cmd="" sep=""
  for r in $runs; do
    [ -f "$RUNS/$r/diagnostics.csv" ] || continue
    cmd="$cmd$sep'$RUNS/$r/diagnostics.csv' using (\$2/1e6):$4 with lines lw 2 title '$r'"
    sep=", "
  done
  [ "$4" = 4 ] && cmd="$cmd, '$RUNS/baseline-bos-lr0.01-wd0.5/diagnostics.csv' using (\$2/1e6):5 with lines dt 2 lc 'black' title 'uniform attention'"
  gnuplot -e "set terminal pngcairo noenhanced size 900,500; set output '$OUT/$1'; set datafile separator ','; set key autotitle columnhead outside right; set xlabel 'tokens seen (M)'; set ylabel '$3'; set title '$2'; set grid; plot $cmd"
}
plot f_attn.png "F-Attn (mean attention on position 0, queries >= 1), mean over layers and heads" "F-Attn" 4
plot f_attn_max_head.png "the largest per-head F-Attn (Sink_1^0.3 needs > 0.3)" "max over heads" 6
plot max_h_first.png "max |h| of the layer outputs at position 0 (BOS)" "max |h|" 8
plot max_h_rest.png "max |h| of the layer outputs at positions >= 1" "max |h|" 9
plot gate_first.png "mean gate score at position 0 (BOS)" "gate" 10
plot gate_rest.png "mean gate score at positions >= 1" "gate" 11
