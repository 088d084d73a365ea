# docs/sinks/plot.gp — the curves of docs/sinks/report.md from data/*.csv
#   cd docs/sinks && gnuplot plot.gp
set datafile separator ","
set terminal pngcairo noenhanced size 720,440 font ",10"
set key top left
set grid
set xlabel "tokens seen (millions)"
P = "baseline g1_elementwise g1_headwise"
f(p) = sprintf("data/%s.diagnostics.csv", p)

set output "f_attn_max_head.png"
set title "largest per-head F-Attn (attention on the BOS token), study model, T 512"
plot for [p in P] f(p) using ($2/1e6):6 with linespoints title p, \
     f("baseline") using ($2/1e6):5 with lines dt 2 lc rgb "gray" title "uniform attention"

set output "f_attn_mean.png"
set title "mean F-Attn over layers and heads"
plot for [p in P] f(p) using ($2/1e6):4 with linespoints title p, \
     f("baseline") using ($2/1e6):5 with lines dt 2 lc rgb "gray" title "uniform attention"

set output "max_h.png"
set title "max |h| of the layer outputs away from BOS (M-Act)"
set key top right
plot for [p in P] f(p) using ($2/1e6):9 with linespoints title p

set output "gate.png"
set title "mean gate score: at BOS (solid) and elsewhere (dashed)"
set yrange [0:0.6]
plot for [p in "g1_elementwise g1_headwise"] f(p) using ($2/1e6):10 with linespoints title p." at BOS", \
     for [p in "g1_elementwise g1_headwise"] f(p) using ($2/1e6):11 with lines dt 2 title p." elsewhere"
set yrange [*:*]

set output "val_loss.png"
set title "validation loss (nats/byte)"
set key top right
set logscale y
plot for [p in P] sprintf("data/%s.val.csv", p) using ($1*4096/1e6):4 with linespoints title p
