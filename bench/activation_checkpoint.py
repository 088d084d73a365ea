#!/usr/bin/python3
"""bench/activation_checkpoint.py — what activation checkpointing costs and saves.

What it is for: issue 15's measurement of `checkpoint()` (autograd/activation_checkpoint.hpp)
as `tapegrad train --checkpoint-activations` uses it: one checkpointed segment per decoder
layer (CausalLM::set_checkpoint_layers). For each sequence length it runs
build/bin/bench_train_step (bench/train_step.cpp) with and without --checkpoint-activations,
alternately, round after round (order reversed every other round), each run a fresh process
(so its peak resident set is its own), and prints per configuration the median step time
(wall and process CPU), the peak resident set and the rise of the resident set during the
steps (peak - before: activations, gradients, AdamW moments, scratch), then the ratios
checkpointed / plain. Targets (issue 15): at T = 1024 the peak memory at most half, the step
time at most 1.35x.

What it is not: a test (nothing is asserted) or a comparison with PyTorch.

Usage:
  /usr/bin/python3 bench/activation_checkpoint.py [--bin build/bin/bench_train_step]
      [--size baby] [--batch 8] [--seq-lens 256,1024] [--threads 1] [--rounds 3]
      [--steps 3] [--warmup-steps 1]
"""

import argparse
import statistics
import subprocess
import sys


def run(a, seq_len, checkpoint):
    cmd = [a.bin, "--size", a.size, "--batch", str(a.batch), "--seq-len", str(seq_len), "--threads",
           str(a.threads), "--steps", str(a.steps), "--warmup-steps", str(a.warmup_steps)]
    if checkpoint:
        cmd.append("--checkpoint-activations")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    steps, result = [], None
    for line in out.splitlines():
        kind, *fields = line.split()
        kv = dict(f.split("=", 1) for f in fields if "=" in f)
        if kind == "step" and kv.get("warmup") == "0":
            steps.append((float(kv["ms"]), float(kv["cpu_ms"]), float(kv["loss"])))
        elif kind == "result":
            result = kv
    if result is None:
        sys.exit("no result line from: " + " ".join(cmd))
    return steps, int(result["peak_rss_kib"]), int(result["step_rise_kib"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="build/bin/bench_train_step")
    p.add_argument("--size", default="baby")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-lens", default="256,1024")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=1)
    a = p.parse_args()
    seq_lens = [int(s) for s in a.seq_lens.split(",")]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"activation checkpointing: size {a.size}, batch {a.batch}, {a.threads} thread(s), {a.rounds} rounds "
          f"x {a.steps} timed steps (after {a.warmup_steps} warm-up), load average {' '.join(load)}")
    data = {}  # (T, ckpt) -> lists
    for r in range(a.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for T in seq_lens:
            for ck in order:
                steps, peak, rise = run(a, T, ck)
                d = data.setdefault((T, ck), {"ms": [], "cpu": [], "loss": [], "peak": [], "rise": []})
                d["ms"] += [s[0] for s in steps]
                d["cpu"] += [s[1] for s in steps]
                d["loss"] += [s[2] for s in steps]
                d["peak"].append(peak)
                d["rise"].append(rise)
                print(f"  round {r + 1}: T {T:5d} {'checkpointed' if ck else 'plain       '} "
                      f"median {statistics.median([s[0] for s in steps]):8.1f} ms, peak {peak / 1024:7.1f} MiB",
                      flush=True)
    print()
    print("| T | run | step ms (median) | CPU ms | peak RSS MiB | rise MiB | loss of the last step |")
    print("|---|---|---|---|---|---|---|")
    for T in seq_lens:
        for ck in (False, True):
            d = data[(T, ck)]
            print(f"| {T} | {'checkpointed' if ck else 'plain'} | {statistics.median(d['ms']):.1f} | "
                  f"{statistics.median(d['cpu']):.1f} | {statistics.median(d['peak']) / 1024:.1f} | "
                  f"{statistics.median(d['rise']) / 1024:.1f} | {d['loss'][-1]:.6f} |")
    print()
    print("| T | time ratio (wall) | time ratio (CPU) | peak ratio | rise ratio | same losses |")
    print("|---|---|---|---|---|---|")
    for T in seq_lens:
        p0, p1 = data[(T, False)], data[(T, True)]
        same = p0["loss"] == p1["loss"]
        print(f"| {T} | {statistics.median(p1['ms']) / statistics.median(p0['ms']):.3f} | "
              f"{statistics.median(p1['cpu']) / statistics.median(p0['cpu']):.3f} | "
              f"{statistics.median(p1['peak']) / statistics.median(p0['peak']):.3f} | "
              f"{statistics.median(p1['rise']) / statistics.median(p0['rise']):.3f} | "
              f"{'bitwise' if same else 'differ'} |")


if __name__ == "__main__":
    main()
