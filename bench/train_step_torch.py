#!/usr/bin/python3
"""bench/train_step_torch.py — the PyTorch side of bench/train_step.py, in its own process.

What it is for: train_step.py starts every PyTorch measurement as a fresh process
(`train_step.py --worker ...` or `--peak-worker ...`), which lands here: torch_worker()
trains the independent reference model of tests/reference/model.py in float32 and prints
one `step` line per step and a `result` line; peak_worker() measures OpenBLAS's sgemm
peak through torch.mm. The line format and the /proc readings are train_step.py's
(status_kib, reset_hwm). See train_step.py for what is measured and why.
"""

import json
import math
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return -1


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def torch_worker(a):
    import torch

    torch.set_num_threads(a.torch_threads)
    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    import model as ref  # tests/reference/model.py

    # The thin float32 wrapper: the reference's own RoPE table, cast to float32, cached.
    rope64 = ref.rope_cos_sin
    cache = {}

    def rope_cos_sin_f32(cfg, T):
        if T not in cache:
            c, s = rope64(cfg, T)
            cache[T] = (c.float(), s.float())
        return cache[T]

    ref.rope_cos_sin = rope_cos_sin_f32

    with open(a.config) as f:
        cfg = json.load(f)
    gen = torch.Generator().manual_seed(a.seed)
    P = {k: v.float().requires_grad_() for k, v in
         ref.random_params(cfg, gen, linear_std=0.02, embed_std=0.02).items()}
    params = sum(p.numel() for p in P.values())
    matmul = sum(p.numel() for n, p in P.items() if p.dim() == 2 and n != "model.embed_tokens.weight")
    if cfg.get("tie_word_embeddings", False):
        matmul += cfg["vocab_size"] * cfg["hidden_size"]
    B, T = a.batch, a.seq_len
    L, H, D = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["head_dim"]
    flops = 6.0 * matmul * B * T + 12.0 * L * H * D * T * B * T
    # Same rule as tapegrad's make_param_groups: no decay for norms, biases, vectors.
    decay = [p for n, p in P.items() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in P.items() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, foreach=a.foreach)
    print("config preset=%s impl=pytorch torch_threads=%d openblas_threads=%s coretype=%s foreach=%d "
          "batch=%d seq_len=%d params=%d matmul_params=%d model_flops=%.6e" %
          (a.preset, a.torch_threads, os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
           os.environ.get("OPENBLAS_CORETYPE", "auto"), int(a.foreach), B, T, params, matmul, flops), flush=True)

    g = torch.Generator().manual_seed(a.seed + 12345)
    n_steps = a.warmup_steps + a.steps
    batches = [torch.randint(0, cfg["vocab_size"], (B, T), generator=g) for _ in range(n_steps)]
    rss_before = status_kib("VmRSS:")
    hwm_build = status_kib("VmHWM:")
    hwm_reset = reset_hwm()
    tot, cpu, fw, bw, op = [], [], [], [], []
    for s in range(n_steps):
        pf0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0 = time.process_time()  # the whole process, all threads
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        f0, fc0 = time.perf_counter(), time.process_time()
        logits, _, _ = ref.forward(cfg, P, batches[s])
        loss = ref.loss_from(cfg, logits, batches[s], None, None)
        tf, cf = time.perf_counter() - f0, time.process_time() - fc0
        if logits.dtype != torch.float32:
            sys.exit("train_step.py worker: logits are %s, not float32" % logits.dtype)
        b0, bc0 = time.perf_counter(), time.process_time()
        loss.backward()
        tb, cb = time.perf_counter() - b0, time.process_time() - bc0
        lv = float(loss.detach())
        o0, oc0 = time.perf_counter(), time.process_time()
        opt.step()
        to, co = time.perf_counter() - o0, time.process_time() - oc0
        del logits, loss
        tt = time.perf_counter() - t0
        tc = time.process_time() - c0
        pf = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - pf0
        warm = s < a.warmup_steps
        print("step i=%d warmup=%d ms=%.3f cpu_ms=%.3f fwd_ms=%.3f bwd_ms=%.3f opt_ms=%.3f fwd_cpu_ms=%.3f "
              "bwd_cpu_ms=%.3f opt_cpu_ms=%.3f minflt=%d loss=%.6f" %
              (s, int(warm), tt * 1e3, tc * 1e3, tf * 1e3, tb * 1e3, to * 1e3, cf * 1e3, cb * 1e3, co * 1e3, pf, lv),
              flush=True)
        if not math.isfinite(lv):
            sys.exit("train_step.py worker: loss is %g" % lv)
        if not warm:
            tot.append(tt * 1e3), cpu.append(tc * 1e3), fw.append(tf * 1e3), bw.append(tb * 1e3), op.append(to * 1e3)
    hwm = status_kib("VmHWM:")
    peak = max(hwm, hwm_build) if hwm_reset else hwm
    med = statistics.median(tot)
    print("result median_ms=%.3f cpu_ms=%.3f fwd_ms=%.3f bwd_ms=%.3f opt_ms=%.3f tokens_per_s=%.2f "
          "model_gflops=%.3f rss_before_kib=%d peak_rss_kib=%d step_rise_kib=%d hwm_reset=%d" %
          (med, statistics.median(cpu), statistics.median(fw), statistics.median(bw), statistics.median(op), B * T / (med / 1e3),
           flops / (med / 1e3) / 1e9, rss_before, peak, hwm - rss_before, int(hwm_reset)), flush=True)


def peak_worker(a):
    """OpenBLAS sgemm (torch.mm, float32) GFLOP/s at n, best and median of several calls, by
    wall time and by the process's CPU time (the latter is the one-core peak on a loaded
    machine; with more threads it also counts OpenBLAS's spin-waiting)."""
    import torch

    torch.set_num_threads(1)
    n = a.n
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(x, y)
    ts, cs = [], []
    for _ in range(a.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(x, y)
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    f = 2 * n ** 3 / 1e9
    print("peak n=%d best_gflops=%.2f median_gflops=%.2f best_cpu_gflops=%.2f" %
          (n, f / min(ts), f / statistics.median(ts), f / max(min(cs), 1e-9)), flush=True)
