"""bench/sample.py — one-token decoding: `tapegrad sample` against a PyTorch decode loop.

What it is for: the speed of generating text with a KV cache, the way a user samples
from a trained model, on both sides with the same weights: the baby model (baseline
preset), random float32 weights, a one-byte prompt, then --length bytes, each one a
forward pass of one token against the cache, a softmax at temperature 0.8 and a draw.
tapegrad is `build/bin/tapegrad sample --config --weights` (it prints its own bytes/s,
timed over the generation); PyTorch is the loop below (torch.no_grad, float32, the
cache as preallocated tensors), timed the same way, in a fresh process per setting:
its matrix-vector products go to OpenBLAS, whose own threads and kernel choice
(OPENBLAS_NUM_THREADS, OPENBLAS_CORETYPE) are fixed at start-up, so each thread count
is tried with OpenBLAS at 1 thread and at that count, with the environment's kernels
and with OpenBLAS's own choice, and the best is the peer. Before timing, the PyTorch decode
loop is checked against the reference model's full forward (tests/reference/model.py)
on the same weights, so the loop being timed computes the model.

What it is not: a test, or a sampler to use (the reference model has no cache; this
loop supports the baseline preset only).

Usage: /usr/bin/python3 bench/sample.py [--length 1000] [--threads 1,2] [--rounds 3]
                                          [--bin build/bin/tapegrad] [--csv PATH]
Rows (`--csv`): case,threads,ours,peer,unit,ratio with ours/peer in bytes/s.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import model as ref  # noqa: E402
import safetensors_io  # noqa: E402


def baby_config(bin_dir):
    """The baby model's config.json, as tapegrad writes it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        subprocess.run([os.path.join(bin_dir, "bench_train_step"), "--dump-config", path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)


class Decoder:
    """Baseline-preset decoding with a KV cache, in float32 (one token at a time)."""

    def __init__(self, cfg, P, max_len):
        if ref.gate_of(cfg)["gate_position"] != "none" or cfg.get("num_experts", 0):
            raise ValueError("bench/sample.py decodes the baseline (dense, ungated) model only")
        self.cfg, self.P = cfg, {k: v.float().contiguous() for k, v in P.items()}
        self.L, H, K, D = (cfg["num_hidden_layers"], cfg["num_attention_heads"],
                           cfg["num_key_value_heads"], cfg["head_dim"])
        self.H, self.K, self.D, self.G = H, K, D, H // K
        cos, sin = ref.rope_cos_sin(cfg, max_len)
        self.cos, self.sin = cos.float(), sin.float()                  # (T,D)
        self.kc = torch.zeros(self.L, K, max_len, D)                   # keys after norm + RoPE
        self.vc = torch.zeros(self.L, K, max_len, D)
        self.t = 0

    def step(self, token):
        """Logits (V,) of the next token after `token` at position self.t."""
        cfg, P, t, eps = self.cfg, self.P, self.t, self.cfg["rms_norm_eps"]
        H, K, D, G = self.H, self.K, self.D, self.G
        h = P["model.embed_tokens.weight"][token]                      # (C,)
        cos, sin = self.cos[t], self.sin[t]
        for i in range(self.L):
            p = "model.layers.%d." % i
            a = p + "self_attn."
            x = ref.rms_norm(h, P[p + "input_layernorm.weight"], eps)
            q = (P[a + "q_proj.weight"] @ x).view(H, D)
            k = (P[a + "k_proj.weight"] @ x).view(K, D)
            v = (P[a + "v_proj.weight"] @ x).view(K, D)
            q = ref.rms_norm(q, P[a + "q_norm.weight"], eps)
            k = ref.rms_norm(k, P[a + "k_norm.weight"], eps)
            q = q * cos + ref.rotate_half(q) * sin
            k = k * cos + ref.rotate_half(k) * sin
            self.kc[i, :, t] = k
            self.vc[i, :, t] = v
            keys, vals = self.kc[i, :, :t + 1], self.vc[i, :, :t + 1]  # (K,t+1,D)
            qg = q.view(K, G, D)
            probs = torch.softmax(qg @ keys.transpose(1, 2) / math.sqrt(D), dim=-1)  # (K,G,t+1)
            o = (probs @ vals).reshape(H * D)
            h = h + P[a + "o_proj.weight"] @ o
            y = ref.rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
            f = P[p + "mlp.down_proj.weight"] @ (torch.nn.functional.silu(P[p + "mlp.gate_proj.weight"] @ y)
                                                 * (P[p + "mlp.up_proj.weight"] @ y))
            h = h + f
        h = ref.rms_norm(h, P["model.norm.weight"], eps)
        head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else P["lm_head.weight"]
        self.t += 1
        return head @ h


def check_decoder(cfg, P):
    """The decode loop's logits against the reference full forward (float64 there)."""
    tokens = torch.randint(0, cfg["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    full, _, _ = ref.forward(cfg, P, tokens)                            # (1,T,V) float64
    dec = Decoder(cfg, P, 16)
    got = torch.stack([dec.step(int(tok)) for tok in tokens[0]])
    err = (got.double() - full[0]).abs().max().item()
    scale = full.abs().max().item()
    if not err <= 1e-4 * max(1.0, scale):
        raise SystemExit("bench/sample.py: the PyTorch decode loop disagrees with the reference "
                         "forward (max |diff| %.3g, max |logit| %.3g)" % (err, scale))
    return err, scale


def torch_bytes_per_s(cfg, P, length, threads, seed):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec = Decoder(cfg, P, length + 2)
        token = 10                                                      # the prompt: "\n"
        t0 = time.perf_counter()
        for _ in range(length):
            logits = dec.step(token)
            probs = torch.softmax(logits / 0.8, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=gen))
        return length / (time.perf_counter() - t0)


def tapegrad_bytes_per_s(binary, config, weights, length, threads, seed):
    r = subprocess.run([binary, "sample", "--config", config, "--weights", weights,
                        "--length", str(length), "--threads", str(threads), "--seed", str(seed),
                        "--temperature", "0.8", "--prompt", "\n"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    m = re.search(r"\((\d+) bytes in ([0-9.]+) s, ([0-9.]+) bytes/s", r.stderr)
    if not m:
        raise SystemExit("bench/sample.py: no timing line in the output of tapegrad sample:\n" + r.stderr)
    return int(m.group(1)) / float(m.group(2))


def torch_child(args, threads, ob_threads, coretype):
    """bytes/s of the PyTorch loop in a fresh process with the given OpenBLAS setting."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(ob_threads))
    if coretype == "auto":
        env.pop("OPENBLAS_CORETYPE", None)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-child", str(threads),
                        "--length", str(args.length), "--bin", args.bin, "--seed", str(args.seed)],
                       check=True, env=env, stdout=subprocess.PIPE, text=True)
    return float(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin", "tapegrad"))
    ap.add_argument("--csv")
    args = ap.parse_args()
    bin_dir = os.path.dirname(os.path.abspath(args.bin))

    cfg = baby_config(bin_dir)
    P = ref.random_params(cfg, torch.Generator().manual_seed(0), linear_std=0.05, embed_std=0.5)
    if args.torch_child is not None:                                    # one timing, printed
        print(torch_bytes_per_s(cfg, P, args.length, args.torch_child, args.seed))
        return
    err, scale = check_decoder(cfg, P)
    print("bench/sample: baby model (baseline), float32, random weights, %d bytes after a "
          "one-byte prompt, temperature 0.8" % args.length)
    print("PyTorch decode loop checked against the reference forward: max |diff| %.2e "
          "(logits up to %.2f)" % (err, scale))
    print("load average at start: %s" % " ".join("%.2f" % x for x in os.getloadavg()))

    rows = []
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "config.json")
        weights = os.path.join(d, "model.safetensors")
        with open(config, "w") as f:
            json.dump(cfg, f)
        safetensors_io.save(weights, {k: v.float() for k, v in P.items()}, dtype="F32")
        env_core = os.environ.get("OPENBLAS_CORETYPE", "none")
        for threads in [int(x) for x in args.threads.split(",")]:
            settings = [(ob, core) for ob in sorted({1, threads}) for core in ("env", "auto")]
            ours, peer = [], {s: [] for s in settings}
            for r in range(args.rounds):                               # alternating
                ours.append(tapegrad_bytes_per_s(args.bin, config, weights, args.length, threads, r))
                for s in settings:
                    args.seed = r
                    peer[s].append(torch_child(args, threads, *s))
            o = statistics.median(ours)
            best = max(settings, key=lambda s: statistics.median(peer[s]))
            p = statistics.median(peer[best])
            rows.append(("decode_baby", threads, o, p))
            print("threads %d   tapegrad %7.1f bytes/s (rounds %s)" % (threads, o, " ".join("%.0f" % x for x in ours)))
            for s in settings:
                print("            PyTorch, OpenBLAS %d thread(s), kernels %-4s (%s) %7.1f bytes/s (rounds %s)%s" % (
                    s[0], s[1], env_core if s[1] == "env" else "auto-detected", statistics.median(peer[s]),
                    " ".join("%.0f" % x for x in peer[s]), "   <- best" if s == best else ""))
            print("            ratio tapegrad / PyTorch best: %.2f" % (o / p))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("case,threads,ours,peer,unit,ratio\n")
            for name, t, o, p in rows:
                f.write("%s,%d,%.3f,%.3f,bytes/s,%.4f\n" % (name, t, o, p, o / p))


if __name__ == "__main__":
    main()
