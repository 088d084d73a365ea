#!/usr/bin/env python3
"""bench/distributed.py — data-parallel training over MPI ranks: alternates the configurations
of issue 12 over several rounds and prints medians, ratios and the scaling model.

What it is for: running build/bin/bench_distributed (bench/distributed.cpp) as
  1 rank x 1 thread, 1 rank x 2 threads, 2 ranks x 1 thread with overlap on, and off,
one after the other in every round (so a change of the machine's load hits them all), then
printing per configuration the median over rounds of ms/step, tokens/s, the time in
communication per step (after backward, and in all), and for 2 ranks the bandwidth of the
gradient sum against plain MPI_Allreduce of the same bytes in the same run; ratios are
tokens/s against 1 rank x 1 thread. The load average is printed before and after.

Then the scaling model (bench/README.md "Scaling model"): with G bytes of gradients, a
step of t seconds of computation per machine, N machines, a ring reduce-scatter +
all-gather of b buckets moving 2(N-1)/N * G bytes per machine at bandwidth W with a
latency a per message, the communication takes
  t_c = 2(N-1)/N * G / W + 2(N-1) * b * a
and, without overlap, the efficiency t / (t + t_c) >= 90% needs t_c <= t/9, i.e.
  W >= 2(N-1)/N * G / (t/9 - 2(N-1) * b * a).
The table gives that W for N = 2, 8, 64 from the measured t (1 rank at --model-threads).

What it is not: a test (nothing is asserted).

Usage: bench/distributed.py [--bin build/bin/bench_distributed] [--size baby] [--rounds 5]
                            [--steps 4] [--warmup-steps 1] [--latency-us 20] [--mpirun mpirun]
                            [--csv PATH]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

CONFIGS = [  # name, ranks, threads, overlap
    ("1r x 1t", 1, 1, "on"),
    ("1r x 2t", 1, 2, "on"),
    ("2r x 1t overlap", 2, 1, "on"),
    ("2r x 1t no-overlap", 2, 1, "off"),
]


def parse_kv(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def run(args, ranks, threads, overlap):
    cmd = [args.bin, "--size", args.size, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
           "--threads", str(threads), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
           "--overlap", overlap, "--ar-reps", str(args.ar_reps)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if ranks > 1:
        # One machine: oversubscribe (2 ranks on 2 cores shared with other work), no core
        # binding (it would pin both ranks' threads to the cores mpirun picked).
        cmd = [args.mpirun, "-np", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit("bench/distributed.py: %s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-2000:]))
    config = result = None
    for line in p.stdout.splitlines():
        if line.startswith("config "):
            config = parse_kv(line)
        elif line.startswith("result "):
            result = parse_kv(line)
    if not result:
        sys.exit("bench/distributed.py: no result line from %s:\n%s" % (" ".join(cmd), p.stdout[-2000:]))
    return config, {k: float(v) for k, v in result.items()}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def med(xs):
    xs = [x for x in xs if x == x]  # drop nan
    return statistics.median(xs) if xs else float("nan")


def needed_bandwidth(G, t, N, buckets, latency):
    """Bytes/s a machine's link needs for 90% efficiency without overlap (None: latency alone too much)."""
    budget = t / 9.0 - 2 * (N - 1) * buckets * latency
    if budget <= 0:
        return None
    return 2.0 * (N - 1) / N * G / budget


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="build/bin/bench_distributed")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--size", default="baby")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--ar-reps", type=int, default=5)
    ap.add_argument("--latency-us", type=float, default=20.0, help="per-message latency of the scaling model")
    ap.add_argument("--model-threads", type=int, default=2, help="the 1-rank configuration whose step time the model uses")
    ap.add_argument("--csv")
    args = ap.parse_args()

    load0 = loadavg()
    print("load average before: %s (%d cores)" % (load0, os.cpu_count()))
    rows = {name: [] for name, *_ in CONFIGS}
    meta = None
    for r in range(args.rounds):
        for name, ranks, threads, overlap in CONFIGS:
            config, res = run(args, ranks, threads, overlap)
            if ranks > 1:
                meta = config
            rows[name].append(res)
            print("round %d %-20s %8.1f ms/step  wait %6.1f ms  comm %6.1f ms" %
                  (r, name, res["median_ms"], res["wait_ms"], res["comm_ms"]), flush=True)
    load1 = loadavg()

    base = med([x["tokens_per_s"] for x in rows[CONFIGS[0][0]]])
    print("\n%s, B %d x T %d, float32, %d rounds (medians over rounds of each run's median step)" %
          (args.size, args.batch, args.seq_len, args.rounds))
    print("%-20s %9s %9s %7s %9s %9s %12s %14s" % ("config", "ms/step", "tokens/s", "ratio", "wait ms", "comm ms",
                                                   "sum GB/s", "Allreduce GB/s"))
    summary = {}
    for name, ranks, threads, overlap in CONFIGS:
        xs = rows[name]
        s = {k: med([x[k] for x in xs]) for k in xs[0]}
        s["ratio"] = s["tokens_per_s"] / base
        summary[name] = s
        bw = ("%12.2f %14.2f" % (s["reducer_gbps"], s["allreduce_gbps"])) if ranks > 1 else "%12s %14s" % ("-", "-")
        print("%-20s %9.1f %9.0f %6.2fx %9.1f %9.1f %s" % (name, s["median_ms"], s["tokens_per_s"], s["ratio"],
                                                          s["wait_ms"], s["comm_ms"], bw))
    ov, no = summary["2r x 1t overlap"], summary["2r x 1t no-overlap"]
    print("overlap saves %.1f ms/step (%.1f%%); gradient sum %.2fx MPI_Allreduce's bandwidth" %
          (no["median_ms"] - ov["median_ms"], 100 * (no["median_ms"] - ov["median_ms"]) / no["median_ms"],
           ov["reducer_gbps"] / ov["allreduce_gbps"]))
    print("load average after: %s" % load1)

    G = float(meta["grad_bytes"]) if meta else float("nan")
    buckets = int(meta["buckets"]) if meta else 0
    t = summary["1r x %dt" % args.model_threads]["median_ms"] / 1e3
    lat = args.latency_us * 1e-6
    print("\nscaling model: G = %.1f MB of gradients, t = %.0f ms/step (1 rank x %d threads, B %d per machine), "
          "%d buckets, latency %.0f us per message" % (G / 1e6, t * 1e3, args.model_threads, args.batch, buckets,
                                                      args.latency_us))
    print("bandwidth per machine for 90% efficiency without overlap: "
          "W >= 2(N-1)/N * G / (t/9 - 2(N-1) * buckets * latency)")
    print("%-6s %-5s %14s %10s %10s" % ("size", "N", "bytes/step", "GB/s", "Gbit/s"))
    for N in (2, 8, 64):
        w = needed_bandwidth(G, t, N, buckets, lat)
        moved = 2.0 * (N - 1) / N * G
        if w is None:
            print("%-6s %-5d %12.1f MB %10s %10s" % (args.size, N, moved / 1e6, "latency", "bound"))
        else:
            print("%-6s %-5d %12.1f MB %10.2f %10.1f" % (args.size, N, moved / 1e6, w / 1e9, 8 * w / 1e9))

    if args.csv:
        with open(args.csv, "w") as f:
            f.write("case,threads,ours,peer,unit,ratio\n")
            for name, ranks, threads, overlap in CONFIGS:
                s = summary[name]
                f.write("%s %s,%d,%.2f,%.2f,tokens/s,%.4f\n" % (args.size, name, threads, s["tokens_per_s"], base,
                                                                  s["ratio"]))
            f.write("%s gradient sum,1,%.3f,%.3f,GB/s,%.4f\n" % (args.size, ov["reducer_gbps"], ov["allreduce_gbps"],
                                                                 ov["reducer_gbps"] / ov["allreduce_gbps"]))


if __name__ == "__main__":
    main()
