// nn/plot.hpp — PNG plots through gnuplot, and the loss curve of a training run.
//
// What it is for: the one place that runs gnuplot (a child process, stdin and stdout to
// /dev/null, stderr captured for the message), writes its PNG atomically (a temporary,
// then rename), and says why when it cannot (gnuplot missing or failing): a plot is never
// worth failing a run for, so callers warn and go on.
//
// What it is not: a plotting library; scripts are gnuplot text the caller writes.
#pragma once

#include <string>
#include <vector>

#include "nn/metrics.hpp"

namespace tg::plot {

// Is `gnuplot` on the PATH?
bool have_gnuplot();
// A gnuplot string literal: single quotes, a quote doubled, a newline made a space.
std::string quote(const std::string& s);
// A gnuplot data block `$name << EOD ... EOD` with the given rows (NaN for non-finite).
std::string datablock(const std::string& name, const std::vector<std::vector<double>>& rows);

// Runs gnuplot on `body` after "set terminal png size w,h; set output <temporary>", then
// renames the temporary to `png`. Returns false with `why` set (gnuplot missing, failing
// with its message, or the rename failing); `png` is then untouched.
bool gnuplot_png(const std::string& body, const std::string& png, int w, int h, std::string* why);

// Train and validation loss against the step (nats per byte, with bits per byte on the
// right axis) into `png_path`; false with `why` as gnuplot_png.
bool plot_loss(const std::vector<train::MetricsRow>& rows, const std::string& png_path, const std::string& title,
               std::string* why);

}  // namespace tg::plot
