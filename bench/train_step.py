#!/usr/bin/python3
"""bench/train_step.py — the baby model's training step, tapegrad against PyTorch, side by side.

What it is for: issue 6's `bench/train_step` benchmark. In one run it measures the full
training step (forward + loss, backward, AdamW) of the model of nn/MODEL.md at the `baby`
size (V 256, C 384, 6 layers, H = K = 6, D 64, SwiGLU 1024), batch 8, sequence 256, float32:

  - tapegrad: build/bin/bench_train_step (bench/train_step.cpp) at 1 and 2 threads;
  - PyTorch 1.13 (Debian's python3-torch, /usr/bin/python3): the independent reference
    model of tests/reference/model.py (imported, not modified), trained with
    torch.optim.AdamW, run by this script in its `--worker` mode.

Every measurement is a fresh process (so the peak resident set is that configuration's),
runs warm-up steps then timed steps, and prints one line per step. The configurations are
run alternately, round after round (the order reversed every other round), and each
figure is the median over all timed steps of all rounds. Phases:

  1. peak: OpenBLAS sgemm GFLOP/s at n = 2048 (via torch.mm) at 1 and 2 threads, the best
     of several calls — the peak the model FLOP utilisation (MFU) is stated against;
  2. PyTorch settings on the baseline preset: torch.set_num_threads 1 or 2 times
     OPENBLAS_NUM_THREADS 1 or 2, with OpenBLAS's kernels as the environment selects them
     (OPENBLAS_CORETYPE as set, e.g. Haswell = AVX2) and as OpenBLAS detects the CPU
     itself (OPENBLAS_CORETYPE removed), times glibc's malloc policy: its default, or
     "kept" (GLIBC_TUNABLES=--tunables: freed memory stays in the process instead of
     being unmapped and faulted in again next step — what tapegrad's programs do through
     tg::keep_freed_memory()); the fastest setting is "PyTorch best";
  3. presets baseline, g1_headwise, g1_elementwise: tapegrad 1 and 2 threads against
     PyTorch best (and PyTorch on one core, if that is not the best) — tokens/s, ratio,
     MFU, CPU time, peak memory, page faults; the gate overhead in tapegrad;
  3b. both sides with glibc's default malloc policy, one core each (tapegrad with
     --malloc-default, PyTorch 1 x 1 default): what keeping freed memory is worth;
  4. tapegrad's step time at sequence lengths 128, 256, 512, 1024 (and PyTorch best's,
     up to --peer-seq-max).

Wall time against CPU time: on a shared, loaded machine the wall time of a step says as
much about the other processes as about the program. Every step also reports the CPU time
of the whole process; for one-thread runs it is close to the wall time the step would take
on an idle machine, so the report gives both, and judges the targets on both.

Model FLOPs per step (PaLM's convention): 6 * (matmul parameters: every 2-D weight except
the embedding lookup) * tokens + 12 * L * H * D * T * tokens (attention scores and
values, fwd + bwd, full T x T). MFU = model FLOPs / step time / peak.

The PyTorch model runs in float32 through a thin wrapper (see TorchWorker): the reference
builds RoPE's cos/sin in float64 (it was written for float64 golden files), which would
promote q and k to float64; the wrapper replaces model.rope_cos_sin, in this process only,
by one returning the same table cast to float32 and cached per length. Everything else is
the reference's own code; the worker checks that the logits come out float32 and that its
parameter count equals tapegrad's.

The PyTorch side (the worker processes) is bench/train_step_torch.py.

What it is not: a test (targets are reported, not asserted) and not a profiler
(`bench_train_step --op-profile` times tapegrad's backward per op).

Usage:
  /usr/bin/python3 bench/train_step.py [--bin build/bin/bench_train_step] [--quick]
      [--rounds 3] [--steps 5] [--warmup-steps 2] [--csv PATH]
Output: a readable report on stdout; with --csv, rows `case,threads,ours,peer,unit,ratio`.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("baseline", "g1_headwise", "g1_elementwise")


# ---------------------------------------------------------------------------------------
# Shared: /proc memory, the line format
# ---------------------------------------------------------------------------------------


def parse_lines(text):
    """Lines 'kind k=v k=v ...' -> list of (kind, dict)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("config", "step", "result", "opbwd", "peak"):
            continue
        d = {}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                try:
                    d[k] = float(v) if any(c in v for c in ".e") or v.lstrip("-").isdigit() else v
                except ValueError:
                    d[k] = v
        out.append((parts[0], d))
    return out


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


class Runner:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="bench_train_step_")
        self.configs = {}
        self.log = open(a.log, "w") if a.log else None

    def config_path(self, preset):
        if preset not in self.configs:
            path = os.path.join(self.tmp, preset + ".json")
            subprocess.run([self.a.bin, "--size", self.a.size, "--preset", preset, "--seq-len", str(max(self.a.seq_lens + [self.a.seq_len])),
                            "--dump-config", path], check=True)
            self.configs[preset] = path
        return self.configs[preset]

    def run(self, cmd, env=None):
        e = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        t0 = time.time()
        p = subprocess.run(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.log:
            self.log.write("# %s  env=%s  (%.1f s, rc %d)\n%s%s\n" %
                           (" ".join(cmd), env, time.time() - t0, p.returncode, p.stdout, p.stderr))
            self.log.flush()
        if p.returncode != 0:
            raise RuntimeError("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
        return parse_lines(p.stdout)

    def tapegrad(self, preset, threads, seq_len, steps=None, warmup=None, malloc_default=False):
        a = self.a
        steps, warmup = steps or a.steps, a.warmup_steps if warmup is None else warmup
        return self.run([a.bin, "--size", a.size, "--preset", preset, "--threads", str(threads), "--seq-len", str(seq_len),
                         "--batch", str(a.batch), "--steps", str(steps), "--warmup-steps", str(warmup)]
                        + (["--malloc-default"] if malloc_default else []),
                        env={"OMP_NUM_THREADS": None, "GLIBC_TUNABLES": None})

    def pytorch(self, preset, setting, seq_len, steps=None, warmup=None):
        a = self.a
        steps, warmup = steps or a.steps, a.warmup_steps if warmup is None else warmup
        tt, bt, core, malloc = setting
        env = {"OPENBLAS_NUM_THREADS": str(bt), "OMP_NUM_THREADS": str(tt),
               "GLIBC_TUNABLES": a.tunables if malloc == "kept" else None}
        if core == "auto":
            env["OPENBLAS_CORETYPE"] = None
        return self.run([sys.executable, os.path.abspath(__file__), "--worker", "--config", self.config_path(preset),
                         "--preset", preset, "--torch-threads", str(tt), "--seq-len", str(seq_len),
                         "--batch", str(a.batch), "--steps", str(steps), "--warmup-steps", str(warmup)]
                        + (["--foreach"] if a.foreach else []), env=env)

    def peak(self, threads, core):
        env = {"OPENBLAS_NUM_THREADS": str(threads)}
        if core == "auto":
            env["OPENBLAS_CORETYPE"] = None
        lines = self.run([sys.executable, os.path.abspath(__file__), "--peak-worker", "--n", str(self.a.peak_n),
                          "--reps", str(self.a.peak_reps)], env=env)
        return [d for k, d in lines if k == "peak"][0]


class Stat:
    """All measurements of one configuration."""

    def __init__(self):
        self.steps, self.cpu, self.round_medians, self.peak, self.rise = [], [], [], [], []
        self.fwd, self.bwd, self.opt = [], [], []  # CPU ms of each phase
        self.minflt = []
        self.config = {}

    def add(self, lines):
        steps = [d for k, d in lines if k == "step" and not d["warmup"]]
        res = [d for k, d in lines if k == "result"][0]
        self.config = [d for k, d in lines if k == "config"][0]
        self.steps += [d["ms"] for d in steps]
        self.cpu += [d["cpu_ms"] for d in steps]
        self.fwd += [d["fwd_cpu_ms"] for d in steps]
        self.bwd += [d["bwd_cpu_ms"] for d in steps]
        self.opt += [d["opt_cpu_ms"] for d in steps]
        self.minflt += [d["minflt"] for d in steps]
        self.round_medians.append(res["median_ms"])
        self.peak.append(res["peak_rss_kib"] / 1024)
        self.rise.append(res["step_rise_kib"] / 1024)

    @property
    def ms(self):
        return statistics.median(self.steps) if self.steps else float("nan")

    @property
    def faults(self):
        return statistics.median(self.minflt) if self.minflt else float("nan")

    @property
    def cpu_ms(self):
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def tokens_per_s(self, tokens):
        return tokens / (self.ms / 1e3)

    @property
    def peak_mib(self):
        return statistics.median(self.peak) if self.peak else float("nan")

    @property
    def rise_mib(self):
        return statistics.median(self.rise) if self.rise else float("nan")

    def spread(self):
        if not self.round_medians:
            return ""
        return "%.0f-%.0f" % (min(self.round_medians), max(self.round_medians))


def setting_name(s):
    tt, bt, core, malloc = s
    return "torch %d thr, OpenBLAS %d thr, %s, malloc %s" % (
        tt, bt, "coretype " + core if core != "auto" else "auto-detected", malloc)


def setting_tag(s):
    return "t%d_b%d_%s_%s" % s


def uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt(x, p=1):
    return "NA" if x is None or (isinstance(x, float) and not math.isfinite(x)) else "%.*f" % (p, x)


def driver(a):
    if not os.path.exists(a.bin):
        sys.exit("train_step.py: %s not found (build it: cmake --build build --target bench_train_step)" % a.bin)
    R = Runner(a)
    csv = []
    tokens = a.batch * a.seq_len
    env_core = os.environ.get("OPENBLAS_CORETYPE")
    cores = ["env", "auto"] if env_core else ["auto"]
    if a.coretypes:
        cores = [c for c in a.coretypes.split(",")]
    core_label = {"env": env_core or "auto", "auto": "auto"}
    loads = [uptime()]
    t_start = time.time()
    print("bench/train_step: baby training step (forward, backward, AdamW), float32, batch %d, seq %d" %
          (a.batch, a.seq_len))
    print("load average (1/5/15 min) at start: %s   cores: %d   OPENBLAS_CORETYPE in env: %s" %
          (loads[0], os.cpu_count(), env_core or "unset"))
    print("each figure: median over all timed steps (%d per process, after %d warm-up) of %d alternating rounds;"
          " a fresh process per measurement" % (a.steps, a.warmup_steps, a.rounds), flush=True)

    # ---- 1. peak --------------------------------------------------------------------
    peaks, cpu_peaks = {}, {}
    for r in range(a.peak_rounds):
        for core in cores:
            for th in (1, 2):
                d = R.peak(th, core)
                peaks.setdefault((core, th), []).append(d["best_gflops"])
                cpu_peaks.setdefault((core, th), []).append(d["best_cpu_gflops"])
    peak = {k: max(v) for k, v in peaks.items()}
    cpu_peak = max(max(cpu_peaks[(c, 1)]) for c in cores)  # one thread: GFLOP per CPU-second
    # Wall-time peaks: one thread's is at least its CPU-time peak's (the load only hides it).
    best_peak = {1: max(cpu_peak, max(peak[(c, 1)] for c in cores)), 2: max(peak[(c, 2)] for c in cores)}
    print("\n1. peak: OpenBLAS sgemm n=%d (torch.mm float32), best call over %d rounds" % (a.peak_n, a.peak_rounds))
    for core in cores:
        print("   coretype %-10s 1 thread %7.1f GFLOP/s (%7.1f per CPU-second)   2 threads %7.1f GFLOP/s" %
              (core_label[core], peak[(core, 1)], max(cpu_peaks[(core, 1)]), peak[(core, 2)]))
    print("   MFU below is against %.1f GFLOP/s (1 thread: the best per CPU-second) and %.1f GFLOP/s (2 threads:"
          " wall time, lowered by the load)" % (best_peak[1], best_peak[2]), flush=True)
    for th in (1, 2):
        csv.append(("peak_sgemm_%d" % a.peak_n, th, float("nan"), best_peak[th], "GFLOP/s", float("nan")))

    # ---- 2. PyTorch thread settings ----------------------------------------------------
    settings = []
    mallocs = ["default", "kept"] if a.tunables else ["default"]
    for core in cores:
        for tt in a.torch_threads:
            for bt in a.openblas_threads:
                for m in mallocs:
                    settings.append((tt, bt, core, m))
    if a.torch_setting:
        f = a.torch_setting.split(",")
        settings = [(int(f[0]), int(f[1]), f[2], f[3] if len(f) > 3 else "default")]
    sweep = {s: Stat() for s in settings}
    if len(settings) > 1:
        for r in range(a.sweep_rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for s in order:
                sweep[s].add(R.pytorch("baseline", s, a.seq_len))
        print("\n2. PyTorch settings (baseline preset), %d rounds; malloc kept = GLIBC_TUNABLES=%s" %
              (a.sweep_rounds, a.tunables))
        print("   %-72s %9s %11s %9s %9s %9s" % ("setting", "ms/step", "round range", "tokens/s", "CPU ms", "peak MiB"))
        for s in settings:
            st = sweep[s]
            print("   %-72s %9.0f %11s %9.0f %9.0f %9.0f" % (setting_name(s), st.ms, st.spread(), st.tokens_per_s(tokens),
                                                        st.cpu_ms, st.peak_mib))
            csv.append(("pytorch_setting_" + setting_tag(s), s[0], float("nan"), st.tokens_per_s(tokens), "tokens/s",
                        float("nan")))
    best = min(settings, key=lambda s: sweep[s].ms if sweep[s].steps else 0)
    best_env = None
    if len(settings) > 1 and "env" in cores and "auto" in cores:
        best_env = min([s for s in settings if s[2] == "env" and s[3] == best[3]], key=lambda s: sweep[s].ms)
    print("   PyTorch best: %s%s" % (setting_name(best), "" if len(settings) > 1 else " (given by --torch-setting)"),
          flush=True)

    # ---- 3. presets ---------------------------------------------------------------------
    one = (1, 1, best[2], best[3])  # PyTorch on one core only: the CPU-time comparison below
    confs = []
    for p in a.presets:
        for th in a.threads:
            confs.append(("tapegrad", p, th))
        confs.append(("pytorch", p, best))
        if one != best:
            confs.append(("pytorch", p, one))
    stats = {c: Stat() for c in confs}
    for r in range(a.rounds):
        for c in (confs if r % 2 == 0 else confs[::-1]):
            impl, p, x = c
            stats[c].add(R.tapegrad(p, x, a.seq_len) if impl == "tapegrad" else R.pytorch(p, x, a.seq_len))
        print("   round %d/%d done (load %s, %.0f s elapsed)" % (r + 1, a.rounds, uptime(), time.time() - t_start),
              flush=True)
    loads.append(uptime())

    def preset_table(title, stats, pt_setting, threads, tag):
        if title:
            print(title)
        print("   %-15s %-12s %8s %11s %9s %6s %6s %8s %6s %6s %9s %9s %8s %8s %8s %8s" %
              ("preset", "impl", "ms/step", "round range", "tokens/s", "ratio", "MFU%", "CPU ms", "CPU rt", "MFUcpu",
               "peak MiB", "rise MiB", "fwd CPU", "bwd CPU", "opt CPU", "faults"))
        ratios = {}
        for p in a.presets:
            pt = stats[("pytorch", p, pt_setting)]
            rows = [("tapegrad %dt" % th, stats[("tapegrad", p, th)], th) for th in threads]
            rows.append(("pytorch", pt, max(pt_setting[0], pt_setting[1])))
            if ("pytorch", p, one) in stats and one != pt_setting:
                rows.append(("pytorch 1x1", stats[("pytorch", p, one)], 1))
            for name, st, th in rows:
                flops = st.config.get("model_flops", float("nan"))
                mfu = 100 * flops / (st.ms / 1e3) / 1e9 / best_peak[min(th, 2)]
                mfu_cpu = 100 * flops / (st.cpu_ms / 1e3) / 1e9 / best_peak[1]
                ratio, cpu_rt = pt.ms / st.ms, pt.cpu_ms / st.cpu_ms
                print("   %-15s %-12s %8.0f %11s %9.0f %6.2f %6.1f %8.0f %6.2f %6.1f %9.0f %9.0f %8.0f %8.0f %8.0f %8.0f" %
                      (p, name, st.ms, st.spread(), st.tokens_per_s(tokens), ratio, mfu, st.cpu_ms, cpu_rt, mfu_cpu,
                       st.peak_mib, st.rise_mib, statistics.median(st.fwd), statistics.median(st.bwd),
                       statistics.median(st.opt), st.faults))
                if name.startswith("tapegrad"):
                    ratios[(p, th)] = (ratio, cpu_rt)
                    pflops = pt.config.get("model_flops", float("nan"))
                    pth = min(max(pt_setting[0], pt_setting[1]), 2)
                    csv.append((tag + "tokens_per_s_" + p, th, st.tokens_per_s(tokens), pt.tokens_per_s(tokens),
                                "tokens/s", ratio))
                    csv.append((tag + "ms_" + p, th, st.ms, pt.ms, "ms", st.ms / pt.ms))
                    csv.append((tag + "cpu_ms_" + p, th, st.cpu_ms, pt.cpu_ms, "ms", st.cpu_ms / pt.cpu_ms))
                    csv.append((tag + "mfu_" + p, th, mfu, 100 * pflops / (pt.ms / 1e3) / 1e9 / best_peak[pth], "%",
                                float("nan")))
                    csv.append((tag + "peak_rss_" + p, th, st.peak_mib, pt.peak_mib, "MiB", st.peak_mib / pt.peak_mib))
                    csv.append((tag + "step_rise_" + p, th, st.rise_mib, pt.rise_mib, "MiB", st.rise_mib / pt.rise_mib))
        print("   ratio = PyTorch ms / this ms (tokens/s relative to PyTorch); MFU% = model FLOPs / wall time / peak at"
              " the thread count\n   used (PyTorch: max(torch, OpenBLAS threads)); CPU ms = CPU time of the whole"
              " process per step (all threads,\n   spin-waiting included); CPU rt = PyTorch CPU ms / this CPU ms;"
              " MFUcpu = model FLOPs / CPU time / 1-thread peak;\n   peak MiB = whole-process VmHWM during the"
              " steps; rise MiB = peak minus the resident set before the first step;\n   fwd/bwd/opt CPU = CPU ms of"
              " forward+loss, backward, AdamW; faults = minor page faults per step")
        return ratios

    print("\n3. training step, batch %d x seq %d = %d tokens; PyTorch = %s" %
          (a.batch, a.seq_len, tokens, setting_name(best)))
    ratios = preset_table("", stats, best, a.threads, "train_step_")
    if best_env is not None and best_env != best and sweep[best_env].steps:
        st = sweep[best_env]
        print("   (PyTorch with OpenBLAS as the environment sets it, %s: baseline %.0f ms/step = %.0f tokens/s,"
              " %.0f CPU ms)" % (setting_name(best_env), st.ms, st.tokens_per_s(tokens), st.cpu_ms))

    # gate overhead
    print("\n   gate overhead in tapegrad (step time over baseline; CPU time is the load-insensitive figure at 1 thread):")
    base_flops = stats[("tapegrad", "baseline", a.threads[0])].config.get("model_flops", float("nan"))
    overhead = {}

    def gate_overhead(stats, label, tag):
        for p in a.presets:
            if p == "baseline":
                continue
            added = 100 * (stats[("tapegrad", p, a.threads[0])].config["model_flops"] / base_flops - 1)
            limit = 2.0 if p == "g1_headwise" else added + 2.0
            for th in a.threads:
                if ("tapegrad", p, th) not in stats:
                    continue
                b, g = stats[("tapegrad", "baseline", th)], stats[("tapegrad", p, th)]
                ov, ovc = 100 * (g.ms / b.ms - 1), 100 * (g.cpu_ms / b.cpu_ms - 1)
                overhead[(label, p, th)] = (ov, ovc, limit)
                print("   %-15s %d thread(s)%s: wall %+6.1f%%  CPU time %+6.1f%%  (added model FLOPs %+.1f%%;"
                      " target <= %.1f%%)" % (p, th, label, ov, ovc, added, limit))
                csv.append((tag + p, th, g.ms, b.ms, "ms", g.ms / b.ms))
                csv.append((tag.replace("overhead_", "overhead_cpu_") + p, th, g.cpu_ms, b.cpu_ms, "ms",
                            g.cpu_ms / b.cpu_ms))

    gate_overhead(stats, "", "gate_overhead_")

    # ---- 3b. both sides with glibc's default malloc policy ----------------------------------
    if a.default_malloc_rounds:
        one_default = (1, 1, best[2], "default")
        tconfs = [("tapegrad", p, 1) for p in a.presets] + [("pytorch", p, one_default) for p in a.presets]
        dm_stats = {c: Stat() for c in tconfs}
        for r in range(a.default_malloc_rounds):
            for c in (tconfs if r % 2 == 0 else tconfs[::-1]):
                impl, p, x = c
                dm_stats[c].add(R.tapegrad(p, x, a.seq_len, malloc_default=True) if impl == "tapegrad" else
                                R.pytorch(p, x, a.seq_len))
        loads.append(uptime())
        tr = preset_table("\n3b. glibc's default malloc policy on both sides (tapegrad --malloc-default), one core each,"
                          " %d rounds" % a.default_malloc_rounds, dm_stats, one_default, [1], "malloc_default_")
        for k, v in tr.items():
            ratios[("malloc_default",) + k] = v
        gate_overhead(dm_stats, " (malloc default)", "malloc_default_gate_overhead_")

    # ---- 4. sequence lengths --------------------------------------------------------------
    seq = {}
    for T in a.seq_lens:
        for th in a.threads:
            seq[("tapegrad", T, th)] = Stat()
        if T <= a.peer_seq_max:
            seq[("pytorch", T, 0)] = Stat()
    keys = list(seq)
    for r in range(a.seq_rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            impl, T, th = k
            if impl == "tapegrad":
                seq[k].add(R.tapegrad("baseline", th, T, a.seq_steps, a.seq_warmup))
            else:
                seq[k].add(R.pytorch("baseline", best, T, a.seq_steps, a.seq_warmup))
    loads.append(uptime())
    print("\n4. step time vs sequence length (baseline, batch %d; %d rounds, %d steps after %d warm-up per process);"
          " wall ms / CPU ms" % (a.batch, a.seq_rounds, a.seq_steps, a.seq_warmup))
    print("   %-6s" % "T" + "".join("%22s" % ("tapegrad %dt" % th) for th in a.threads) +
          "%22s %12s %12s" % ("PyTorch", "tg peak MiB", "pt peak MiB"))
    for T in a.seq_lens:
        line = "   %-6d" % T
        for th in a.threads:
            st = seq[("tapegrad", T, th)]
            line += "%22s" % ("%.0f / %.0f" % (st.ms, st.cpu_ms))
        pt = seq.get(("pytorch", T, 0))
        line += "%22s" % ("%.0f / %.0f" % (pt.ms, pt.cpu_ms) if pt else "not run")
        line += " %12s %12s" % (fmt(seq[("tapegrad", T, a.threads[-1])].peak_mib, 0), fmt(pt.peak_mib, 0) if pt else "-")
        print(line)
        for th in a.threads:
            st = seq[("tapegrad", T, th)]
            csv.append(("seq_%d_ms" % T, th, st.ms, pt.ms if pt else float("nan"), "ms",
                        st.ms / pt.ms if pt else float("nan")))
            csv.append(("seq_%d_cpu_ms" % T, th, st.cpu_ms, pt.cpu_ms if pt else float("nan"), "ms",
                        st.cpu_ms / pt.cpu_ms if pt else float("nan")))
            csv.append(("seq_%d_peak_rss" % T, th, st.peak_mib, pt.peak_mib if pt else float("nan"), "MiB",
                        st.peak_mib / pt.peak_mib if pt else float("nan")))
    if len(a.seq_lens) > 1:
        t0, t1 = a.seq_lens[0], a.seq_lens[-1]
        for th in a.threads:
            print("   tapegrad %dt: T %d -> %d multiplies the CPU time per step by %.2f (tokens x %.0f)" %
                  (th, t0, t1, seq[("tapegrad", t1, th)].cpu_ms / seq[("tapegrad", t0, th)].cpu_ms, t1 / t0))

    # ---- targets -------------------------------------------------------------------------
    loads.append(uptime())

    def verdict(ok):
        return "met" if ok else "NOT met"

    print("\ntargets (%s, batch %d, seq %d):" % (a.size, a.batch, a.seq_len))
    for p in a.presets:
        w = max(ratios[(p, th)][0] for th in a.threads)
        line = "   tokens/s >= 1.5x PyTorch, %-15s wall: best tapegrad %.2fx (%s)" % (p, w, verdict(w >= 1.5))
        if 1 in a.threads:
            c = stats[("pytorch", p, one)].cpu_ms / stats[("tapegrad", p, 1)].cpu_ms
            line += ";  CPU time, 1 thread each: %.2fx (%s)" % (c, verdict(c >= 1.5))
        if ("malloc_default", p, 1) in ratios:
            c = ratios[("malloc_default", p, 1)][1]
            line += ";  both malloc default: %.2fx" % c
        print(line)
    for (label, p, th), (ov, ovc, lim) in sorted(overhead.items()):
        print("   gate overhead %-15s %dt%s: wall %+.1f%% (%s); CPU time %+.1f%% (%s); target <= %.1f%%" %
              (p, th, label, ov, verdict(ov <= lim), ovc, verdict(ovc <= lim), lim))
    for p in a.presets:
        for th in a.threads:
            tg_, pt = stats[("tapegrad", p, th)], stats[("pytorch", p, best)]
            print("   peak memory %-15s tapegrad %dt %.0f MiB vs PyTorch %.0f MiB, whole process (%s);"
                  " added by the steps %.0f vs %.0f MiB (%s)" %
                  (p, th, tg_.peak_mib, pt.peak_mib, verdict(tg_.peak_mib <= pt.peak_mib), tg_.rise_mib, pt.rise_mib,
                   verdict(tg_.rise_mib <= pt.rise_mib)))
    print("load average (1/5/15 min) at start%s / end: %s" %
          (" / after each phase" if len(loads) > 2 else "", " | ".join(loads)))
    print("total time %.0f s" % (time.time() - t_start))

    if a.csv:
        with open(a.csv, "w") as f:
            f.write("case,threads,ours,peer,unit,ratio\n")
            for case, th, ours, peer, unit, ratio in csv:
                f.write("%s,%d,%s,%s,%s,%s\n" % (case, th, fmt(ours, 3), fmt(peer, 3), unit, fmt(ratio, 4)))
        print("wrote %s" % a.csv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin", "bench_train_step"))
    ap.add_argument("--quick", action="store_true", help="1 round, 2 steps, seq 128/256, 2 PyTorch settings")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--threads", default="1,2", help="tapegrad thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep-rounds", type=int, default=None, help="rounds of the PyTorch settings sweep")
    ap.add_argument("--seq-rounds", type=int, default=None)
    ap.add_argument("--seq-steps", type=int, default=3, help="timed steps per process in the sequence sweep")
    ap.add_argument("--seq-warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--size", default="baby", help="named model size (tiny: a smoke test of this script)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seq-lens", default="128,256,512,1024")
    ap.add_argument("--peer-seq-max", type=int, default=1024, help="run PyTorch in the sequence sweep up to this T")
    ap.add_argument("--torch-threads", default="1,2")
    ap.add_argument("--openblas-threads", default="1,2")
    ap.add_argument("--coretypes", default=None, help="env,auto (default: both when OPENBLAS_CORETYPE is set)")
    ap.add_argument("--torch-setting", default=None,
                    help="skip the sweep: TORCH_THREADS,OPENBLAS_THREADS,env|auto[,default|kept]")
    ap.add_argument("--foreach", action="store_true", help="PyTorch AdamW(foreach=True)")
    ap.add_argument("--tunables", default="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
                    help="GLIBC_TUNABLES of PyTorch's 'malloc kept' settings; empty: PyTorch with the default only")
    ap.add_argument("--default-malloc-rounds", type=int, default=2,
                    help="rounds of phase 3b (both sides with glibc's default malloc); 0 skips it")
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--peak-reps", type=int, default=5)
    ap.add_argument("--peak-rounds", type=int, default=2)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--log", default=None, help="append every child's command and output here")
    # worker modes
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peak-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="baseline", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, default=1e-3, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=2048, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker or a.peak_worker:  # the PyTorch side, in this fresh process
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import train_step_torch
        if a.worker:
            a.torch_threads = int(a.torch_threads)
            return train_step_torch.torch_worker(a)
        return train_step_torch.peak_worker(a)
    a.presets = a.presets.split(",")
    if "baseline" not in a.presets:
        a.presets.insert(0, "baseline")
    a.threads = [int(x) for x in a.threads.split(",")]
    a.seq_lens = [int(x) for x in a.seq_lens.split(",")]
    a.torch_threads = [int(x) for x in a.torch_threads.split(",")]
    a.openblas_threads = [int(x) for x in a.openblas_threads.split(",")]
    if a.quick:
        a.rounds, a.steps, a.warmup_steps, a.seq_steps, a.default_malloc_rounds = 1, 2, 1, 2, 1
        a.seq_lens = [128, 256]
        a.peak_rounds, a.peak_reps, a.peak_n = 1, 3, 1024
        a.openblas_threads = [2]
        if a.sweep_rounds is None:
            a.sweep_rounds = 1
    if a.sweep_rounds is None:
        a.sweep_rounds = a.rounds
    if a.seq_rounds is None:
        a.seq_rounds = max(1, a.rounds - 1)
    driver(a)


if __name__ == "__main__":
    main()
