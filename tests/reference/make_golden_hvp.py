#!/usr/bin/python3
"""Writes tapegrad's Hessian-vector-product golden files: tests/golden/hvp/<preset>/.

    /usr/bin/python3 tests/reference/make_golden_hvp.py            # writes tests/golden/hvp/
    /usr/bin/python3 tests/reference/make_golden_hvp.py --check    # compare with committed files
    /usr/bin/python3 tests/reference/make_golden_hvp.py --out DIR

What this is for: second order checked against PyTorch. For the small model of every preset
of nn/MODEL.md's table (the gradcheck size of make_golden_model.py: V 11, C 8, F 6, 2 layers,
H 2, K 1, D 4; MoE E 3, k 2, F 4), this computes in float64, with the independent reference
of model.py, torch.autograd.functional.hvp of the loss (mean next-token cross-entropy, plus
the MoE terms, as model.loss_from) with respect to every parameter along a seeded random
direction. tests/test_hvp.cpp compares tapegrad's hvp() with it (<= 1e-10 relative),
and tests/test_oracle.cpp runs `tapegrad oracle --hvp direction.safetensors` on it.

What this is not: a test of the C++ code, nor a second copy of the model golden files
(tests/golden/model holds logits and gradients at a larger size).

Each case folder holds:
  config.json              the case's config (as make_golden_model.py writes it)
  weights.safetensors      F64, every parameter under its Hugging Face name
  tokens.txt               B lines of T token ids
  direction.safetensors    F64, the direction v: one tensor per parameter, named like the
                           weights, N(0, 1) seeded by the CRC-32 of the case name
  expected.safetensors     F64: loss (shape []), hvp.<name> for every parameter (H v)

Self-checks (the run stops with SELF-CHECK FAILED if one fails):
  1. H v equals a central difference of the gradient along v, (g(w + hv) - g(w - hv)) / 2h;
  2. the Hessian is symmetric through it: <u, H v> == <v, H u> for a second direction u;
  3. torch.autograd.functional.hvp equals the double-backward product computed by hand;
  4. MoE top-k routing has no near-tie (so the finite difference does not cross a switch);
  5. two generations are byte-identical, and what is written reads back identically.
"""

import argparse
import json
import os
import sys
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_golden_model as G  # noqa: E402  (presets, small_config, apply_preset)
import model as M  # noqa: E402
import safetensors_io as st  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed summation order: byte-identical output on this machine

OUT_DEFAULT = os.path.normpath(os.path.join(HERE, "..", "golden", "hvp"))
B, T = 2, 6


def check(cond, msg):
    if not cond:
        raise SystemExit("SELF-CHECK FAILED: " + msg)


def rel_err(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def case_configs():
    """[(preset, cfg)]: every preset on the small base (more_experts on its MoE base)."""
    small = G.small_config()
    moe_small = G.with_moe(small, 3, 2, 4)
    return [(p, G.apply_preset(moe_small if p == "more_experts" else small, p)) for p in G.PRESETS]


def seed_of(name):
    return zlib.crc32(("hvp_" + name).encode("utf-8"))


def make_case(name, cfg):
    gen = torch.Generator().manual_seed(seed_of(name))
    P = M.random_params(cfg, gen)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=gen)
    v = {k: torch.randn(t.shape, generator=gen) for k, t in P.items()}
    u = {k: torch.randn(t.shape, generator=gen) for k, t in P.items()}  # self-check 2 only
    return P, tokens, v, u


def case_files(name, cfg):
    P, tokens, v, u = make_case(name, cfg)
    names = list(P)

    def loss_fn(*ts):
        Q = dict(zip(names, ts))
        lg, a, z = M.forward(cfg, Q, tokens)
        return M.loss_from(cfg, lg, tokens, a, z)

    def grad_at(Q):
        leaves = [Q[n].clone().requires_grad_(True) for n in names]
        return dict(zip(names, torch.autograd.grad(loss_fn(*leaves), leaves)))

    w = tuple(P[n] for n in names)
    loss, hv = torch.autograd.functional.hvp(loss_fn, w, tuple(v[n] for n in names))
    hv = dict(zip(names, hv))

    # 4. routing away from ties
    stats = {}
    M.forward(cfg, P, tokens, stats)
    if "router_gap" in stats:
        check(min(stats["router_gap"]) > 1e-3, "%s: router top-k near-tie (gap %.3g)" % (name, min(stats["router_gap"])))
    # 1. central difference of the gradient along v
    h = 1e-5
    gp = grad_at({k: P[k] + h * v[k] for k in names})
    gm = grad_at({k: P[k] - h * v[k] for k in names})
    fd = torch.cat([((gp[k] - gm[k]) / (2 * h)).reshape(-1) for k in names])
    an = torch.cat([hv[k].reshape(-1) for k in names])
    check(rel_err(an, fd) < 1e-6, "%s: H v vs central difference of the gradient: %.3g" % (name, rel_err(an, fd)))
    # 2. symmetry: <u, Hv> == <v, Hu>
    _, hu = torch.autograd.functional.hvp(loss_fn, w, tuple(u[n] for n in names))
    uhv = float(sum((u[k] * hv[k]).sum() for k in names))
    vhu = float(sum((v[k] * hu[i]).sum() for i, k in enumerate(names)))
    check(abs(uhv - vhu) <= 1e-10 * max(1.0, abs(uhv)), "%s: <u,Hv> %.15g vs <v,Hu> %.15g" % (name, uhv, vhu))
    # 3. by hand: d<grad, v>/dw with create_graph
    leaves = [P[n].clone().requires_grad_(True) for n in names]
    g = torch.autograd.grad(loss_fn(*leaves), leaves, create_graph=True)
    gv = sum((gi * v[n]).sum() for gi, n in zip(g, names))
    hand = torch.autograd.grad(gv, leaves, allow_unused=True)
    for i, n in enumerate(names):
        ref = torch.zeros_like(P[n]) if hand[i] is None else hand[i]
        check(rel_err(hv[n], ref) <= 1e-12 or float((hv[n] - ref).abs().max()) < 1e-14,
              "%s: functional.hvp vs double backward for %s" % (name, n))

    expected = {"loss": loss.detach()}
    for n in names:
        expected["hvp." + n] = hv[n]
    meta = {"format": "pt", "case": name, "generator": "tests/reference/make_golden_hvp.py",
            "what": "hvp.<name> = torch.autograd.functional.hvp(loss, weights, direction), float64",
            "torch_version": torch.__version__}
    files = {
        "config.json": (json.dumps(cfg, indent=2) + "\n").encode("utf-8"),
        "weights.safetensors": st.encode(P, {"format": "pt"}),
        "tokens.txt": "".join(" ".join(str(int(t)) for t in row) + "\n" for row in tokens).encode("ascii"),
        "direction.safetensors": st.encode(v, {"format": "pt"}),
        "expected.safetensors": st.encode(expected, meta),
    }
    # 5b. what is written reads back identically
    for fn, ref in (("weights.safetensors", P), ("direction.safetensors", v), ("expected.safetensors", expected)):
        back, _ = st.decode(files[fn])
        check(set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref), name + ": " + fn + " round trip")
    summary = {"params": sum(t.numel() for t in P.values()), "loss": float(loss),
               "hv_norm": float(an.norm()), "fd_err": rel_err(an, fd)}
    return files, summary


def generate():
    out, summaries = {}, {}
    for name, cfg in case_configs():
        out[name], summaries[name] = case_files(name, cfg)
    return out, summaries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT, help="output folder (default tests/golden/hvp)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; fail if the files in --out differ from a fresh generation")
    args = ap.parse_args()

    first, summaries = generate()
    second, _ = generate()
    check(first == second, "two generations differ (non-determinism)")
    print("finite-difference, symmetry, double-backward and determinism checks passed for %d cases" % len(first))
    if args.check:
        bad = [os.path.join(args.out, name, fn) for name, files in first.items() for fn, data in files.items()
               if not os.path.exists(os.path.join(args.out, name, fn))
               or open(os.path.join(args.out, name, fn), "rb").read() != data]
        present = sorted(d for d in os.listdir(args.out) if os.path.isdir(os.path.join(args.out, d))) \
            if os.path.isdir(args.out) else []
        extra = [d for d in present if d not in first]
        check(not bad and not extra and present, "committed golden files differ: %s %s" % (bad, extra))
        print("committed golden files are up to date")
        return
    total = 0
    for name, files in first.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        for fn, data in files.items():
            with open(os.path.join(d, fn), "wb") as f:
                f.write(data)
            total += len(data)
        s = summaries[name]
        print("  %-22s %5d params  loss %.6f  |Hv| %.4g  fd rel err %.2g" % (name, s["params"], s["loss"],
                                                                           s["hv_norm"], s["fd_err"]))
    print("wrote %d cases, %d bytes, to %s" % (len(first), total, args.out))


if __name__ == "__main__":
    main()
