#!/usr/bin/python3
"""Writes tapegrad's model golden files: tests/golden/model/<case>/.

What this is for: the C++ tests load each case's config.json, weights.safetensors and
tokens.txt, run the model, and compare logits, loss (and MoE aux_loss / z_loss) and every
parameter gradient against expected.safetensors, all computed here in float64 by the
independent PyTorch reference in model.py.

What this is not: a test of the C++ code (that lives in tests/test_*.cpp), nor a model
initialiser (weights are deliberately large random values, so that a wrong formula shows).

Every run first performs self-checks and fails loudly if one does not hold:
  1. the vectorised torch model equals the numpy loop oracle (model.forward_loops) on every
     case: logits, loss, aux, z to 1e-12 relative;
  2. the gradient of every case agrees with a central finite difference along a random
     direction;
  3. torch.autograd.gradcheck on a smaller model, for every preset and option;
  4. GQA equals MHA with duplicated kv heads (q_proj gate rows moved to the per-head layout);
     tied equals untied with lm_head = embed_tokens;
  5. two generations are byte-identical, and what is written reads back identically.

Usage (from the repository root):
    /usr/bin/python3 tests/reference/make_golden_model.py            # regenerate
    /usr/bin/python3 tests/reference/make_golden_model.py --check    # compare with committed files
"""

import argparse
import copy
import json
import math
import os
import sys
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model as M  # noqa: E402
import safetensors_io as st  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed summation order; also leaves the other core to the builds

OUT_DEFAULT = os.path.normpath(os.path.join(HERE, "..", "golden", "model"))

PRESETS = [
    "baseline", "more_kv_heads", "more_q_heads", "more_experts",
    "g1_elementwise", "g2_elementwise", "g3_elementwise", "g4_elementwise", "g5_elementwise",
    "g1_headwise", "g2_headwise", "g1_head_shared", "g2_head_shared",
    "g1_additive_silu", "g1_elementwise_silu",
    "g1_rmsnorm", "g1_silu_only", "g1_additive_identity",
    "g1_input_independent", "g1_ns_sigmoid",
]

MOE_FIELDS = {
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "norm_topk_prob": True,
    "router_aux_loss_coef": 0.01,
    "router_z_loss_coef": 0.001,
}


def tiny_config():
    """The tiny base size: GQA, untied, dense, no gate."""
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "vocab_size": 48,
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 6,
        "hidden_act": "silu",
        "max_position_embeddings": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "use_qk_norm": True,
        "initializer_range": 0.02,
        "elementwise_attn_output_gate": False,
        "headwise_attn_output_gate": False,
        **M.GATE_DEFAULTS,
        "sandwich_norm": False,
    }


def small_config():
    """An even smaller size for torch.autograd.gradcheck."""
    c = tiny_config()
    c.update(vocab_size=11, hidden_size=8, intermediate_size=6, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    return c


def with_moe(cfg, E=4, k=2, Fm=16):
    cfg = dict(cfg)
    cfg.update(MOE_FIELDS)
    cfg.update(num_experts=E, num_experts_per_tok=k, moe_intermediate_size=Fm)
    return cfg


def apply_preset(cfg, preset):
    """The MODEL.md presets table, applied to a base config."""
    cfg = dict(cfg)
    g = dict(M.GATE_DEFAULTS)
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if preset == "baseline":
        pass
    elif preset == "more_kv_heads":
        cfg["num_key_value_heads"] = min(2 * K, H)
    elif preset == "more_q_heads":
        cfg["num_attention_heads"] = int(round(1.5 * H / K)) * K
    elif preset == "more_experts":
        if cfg.get("num_experts", 0) <= 0:
            raise ValueError("more_experts needs an MoE base")
        cfg["num_experts"] = int(round(1.5 * cfg["num_experts"]))
    else:
        position = {"g1": "sdpa", "g2": "value", "g3": "key", "g4": "query", "g5": "dense"}[preset[:2]]
        g["gate_position"] = position
        rest = preset[3:]
        if rest == "elementwise":
            pass
        elif rest == "headwise":
            g["gate_granularity"] = "headwise"
        elif rest == "head_shared":
            g["gate_head_shared"] = True
        elif rest == "additive_silu":
            g.update(gate_combine="additive", gate_activation="silu")
        elif rest == "elementwise_silu":
            g["gate_activation"] = "silu"
        elif rest == "rmsnorm":
            g["gate_probe"] = "rmsnorm"
        elif rest == "silu_only":
            g["gate_probe"] = "silu"
        elif rest == "additive_identity":
            g.update(gate_combine="additive", gate_activation="identity")
        elif rest == "input_independent":
            g["gate_input_dependent"] = False
        elif rest == "ns_sigmoid":
            g["gate_activation"] = "ns_sigmoid"
        else:
            raise ValueError("unknown preset " + preset)
    cfg.update(g)
    dep = M.g1_input_dependent(cfg)
    cfg["elementwise_attn_output_gate"] = dep and g["gate_granularity"] == "elementwise"
    cfg["headwise_attn_output_gate"] = dep and g["gate_granularity"] == "headwise"
    M.validate(cfg)
    return cfg


def mha(cfg):
    cfg = dict(cfg)
    cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    return cfg


def cases(base_fn=tiny_config, moe_sizes=(4, 2, 16)):
    """[(name, cfg, B, T, description)] in a fixed order."""
    base = base_fn()
    moe_base = with_moe(base, *moe_sizes)
    out = []
    for p in PRESETS:
        b = moe_base if p == "more_experts" else base
        out.append((p, apply_preset(b, p), "preset %s on the base (H=4, K=2, untied, %s)"
                    % (p, "MoE E=4 k=2" if p == "more_experts" else "dense")))
    for p in ("baseline", "g1_elementwise", "g1_headwise"):
        out.append((p + "_mha", apply_preset(mha(base), p), "preset %s, MHA (K = H)" % p))
        c = dict(base, tie_word_embeddings=True)
        out.append((p + "_tied", apply_preset(c, p), "preset %s, tied lm_head" % p))
        out.append((p + "_moe", apply_preset(moe_base, p), "preset %s, MoE feed-forward" % p))
        c = dict(base, sandwich_norm=True)
        out.append((p + "_sandwich", apply_preset(c, p), "preset %s, sandwich norm" % p))
    c = dict(base, attention_bias=True)
    out.append(("g1_elementwise_attn_bias", apply_preset(c, "g1_elementwise"),
                "preset g1_elementwise with attention_bias (q,k,v,o biases incl. gate rows)"))
    T = 9
    c = dict(base, max_position_embeddings=16,
             rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4,
                           "beta_fast": 32, "beta_slow": 1})
    out.append(("baseline_yarn", apply_preset(c, "baseline"),
                "baseline with YaRN (factor 2, original 4; ramp degenerate: high == low)"))
    c = dict(base, rope_theta=100.0, max_position_embeddings=192,
             rope_scaling={"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 64,
                           "beta_fast": 32, "beta_slow": 1})
    out.append(("baseline_yarn_ramp", apply_preset(c, "baseline"),
                "baseline with YaRN (factor 3, original 64, rope_theta 100: ramp [0, 0.5, 1])"))
    c = dict(base, use_qk_norm=False)
    out.append(("baseline_no_qk_norm", apply_preset(c, "baseline"), "baseline without QK-norm"))
    return [(name, cfg, 2, T, desc) for name, cfg, desc in out]


# ---------------------------------------------------------------------------------------


def case_seed(name):
    return zlib.crc32(name.encode("utf-8"))


def make_inputs(name, cfg, B, T):
    gen = torch.Generator().manual_seed(case_seed(name))
    P = M.random_params(cfg, gen)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=gen)
    return P, tokens


def compute(cfg, P, tokens):
    """Returns (logits, loss, aux, z, grads) with autograd, all float64."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    logits, aux, z = M.forward(cfg, leaves, tokens)
    loss = M.loss_from(cfg, logits, tokens, aux, z)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return (logits.detach(), loss.detach(), None if aux is None else aux.detach(),
            None if z is None else z.detach(), dict(zip(names, grads)))


def rel_err(a, b):
    a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64))
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


def check(cond, msg):
    if not cond:
        raise SystemExit("SELF-CHECK FAILED: " + msg)


def case_files(name, cfg, B, T, desc):
    """Computes one case; returns {filename: bytes} and a short summary."""
    P, tokens = make_inputs(name, cfg, B, T)
    logits, loss, aux, z, grads = compute(cfg, P, tokens)

    # 1. loop oracle
    Pn = {k: v.numpy() for k, v in P.items()}
    l_logits, l_loss, l_aux, l_z = M.forward_loops(cfg, Pn, tokens.numpy())
    check(rel_err(logits, l_logits) < 1e-12, "%s: logits differ from loop oracle (%.3g)" % (name, rel_err(logits, l_logits)))
    check(abs(float(loss) - l_loss) < 1e-12 * abs(l_loss), "%s: loss differs from loop oracle" % name)
    if aux is not None:
        check(abs(float(aux) - l_aux) < 1e-12 * abs(l_aux), "%s: aux differs from loop oracle" % name)
        check(abs(float(z) - l_z) < 1e-12 * abs(l_z), "%s: z differs from loop oracle" % name)

    # 2. directional finite difference of the full loss
    gen = torch.Generator().manual_seed(case_seed(name) ^ 0x5EED)
    u = {k: torch.randn(v.shape, generator=gen) for k, v in P.items()}
    h = 1e-5

    def loss_at(sign):
        Q = {k: P[k] + sign * h * u[k] for k in P}
        lg, a, zz = M.forward(cfg, Q, tokens)
        return float(M.loss_from(cfg, lg, tokens, a, zz))

    fd = (loss_at(+1) - loss_at(-1)) / (2 * h)
    an = float(sum((grads[k] * u[k]).sum() for k in P))
    check(abs(fd - an) < 1e-6 * max(1.0, abs(an)), "%s: directional derivative %.12g vs gradient %.12g" % (name, fd, an))

    # top-k routing must not hinge on a near-tie (float32 runs must pick the same experts)
    stats = {}
    M.forward(cfg, P, tokens, stats)
    if "router_gap" in stats:
        check(min(stats["router_gap"]) > 1e-4, "%s: router top-k near-tie (gap %.3g)" % (name, min(stats["router_gap"])))

    summary = {"params": sum(v.numel() for v in P.values()), "loss": float(loss),
               "router_gap": min(stats.get("router_gap", [float("nan")]))}

    expected = {"logits": logits, "loss": loss}
    if aux is not None:
        expected["aux_loss"] = aux
        expected["z_loss"] = z
    for k, gk in grads.items():
        expected["grad." + k] = gk
    meta = {"format": "pt", "case": name, "description": desc,
            "generator": "tests/reference/make_golden_model.py"}
    files = {
        "config.json": (json.dumps(cfg, indent=2) + "\n").encode("utf-8"),
        "weights.safetensors": st.encode(P, {"format": "pt"}),
        "tokens.txt": "".join(" ".join(str(int(t)) for t in row) + "\n" for row in tokens).encode("ascii"),
        "expected.safetensors": st.encode(expected, meta),
    }
    # 5b. what is written reads back identically
    back, _ = st.decode(files["weights.safetensors"])
    check(set(back) == set(P) and all(torch.equal(back[k], P[k]) for k in P), name + ": weights round trip")
    back, m = st.decode(files["expected.safetensors"])
    check(m == meta and all(torch.equal(back[k], expected[k]) for k in expected), name + ": expected round trip")
    return files, summary


# ---------------------------------------------------------------------------------------
# Structural self-checks


def gqa_to_mha(cfg, P):
    """MHA config and weights computing the same function as the GQA (cfg, P): every kv
    head duplicated for the query heads that use it; G1 gate rows moved from the kv-group
    layout (each group: its G query heads' rows, then their gate rows) to the per-head
    layout of K' = H (each head: its D query rows, then its gate rows)."""
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    G = H // K
    g = M.gate_of(cfg)
    gw1 = 1 if g["gate_granularity"] == "headwise" else D    # gate rows per query head
    c2 = mha(cfg)
    Q = dict(P)
    for i in range(cfg["num_hidden_layers"]):
        a = "model.layers.%d.self_attn." % i

        def dup_kv(t, per):
            return torch.cat([t[(h // G) * per:(h // G + 1) * per] for h in range(H)], dim=0)

        for n in ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"):
            if a + n in P:
                Q[a + n] = dup_kv(P[a + n], D)
        if g["gate_position"] in ("key", "value"):
            per = 1 if g["gate_granularity"] == "headwise" else D
            Q[a + "gate_proj.weight"] = dup_kv(P[a + "gate_proj.weight"], per)
        if M.g1_input_dependent(cfg):
            for n in ("q_proj.weight", "q_proj.bias"):
                if a + n not in P:
                    continue
                t = P[a + n]
                width = G * D + G * gw1
                rows = []
                for h in range(H):
                    grp, j = h // G, h % G
                    base = grp * width
                    rows.append(t[base + j * D: base + (j + 1) * D])
                    rows.append(t[base + G * D + j * gw1: base + G * D + (j + 1) * gw1])
                Q[a + n] = torch.cat(rows, dim=0)
    return c2, Q


def structural_checks():
    base = tiny_config()
    for p in ("baseline", "g1_elementwise", "g1_headwise", "g1_head_shared", "g2_elementwise",
              "g2_headwise", "g3_elementwise", "g2_head_shared", "g1_additive_silu"):
        for with_bias in (False, True):
            cfg = apply_preset(dict(base, attention_bias=with_bias), p)
            P, tokens = make_inputs("structural_" + p, cfg, 2, 9)
            c2, Q = gqa_to_mha(cfg, P)
            check(set(Q) == set(M.param_shapes(c2)), p + ": MHA relayout has the wrong parameter set")
            check(all(tuple(Q[k].shape) == s for k, s in M.param_shapes(c2).items()), p + ": MHA relayout shapes")
            l1 = M.forward(cfg, P, tokens)[0]
            l2 = M.forward(c2, Q, tokens)[0]
            check(rel_err(l2, l1) < 1e-12, "%s: GQA and its MHA relayout differ (%.3g)" % (p, rel_err(l2, l1)))
    cfg = apply_preset(dict(base, tie_word_embeddings=True), "g1_elementwise")
    P, tokens = make_inputs("structural_tied", cfg, 2, 9)
    c2 = dict(cfg, tie_word_embeddings=False)
    Q = dict(P, **{"lm_head.weight": P["model.embed_tokens.weight"].clone()})
    check(rel_err(M.forward(c2, Q, tokens)[0], M.forward(cfg, P, tokens)[0]) == 0.0, "tied vs untied")
    # Presets change what MODEL.md says they change.
    shapes = {p: M.param_shapes(apply_preset(base, p)) for p in PRESETS if p != "more_experts"}
    n0 = sum(math.prod(s) for s in shapes["baseline"].values())
    C, H, K, D = 24, 4, 2, 6
    extra = {"g1_elementwise": C * H * D, "g1_headwise": C * H, "g2_elementwise": C * K * D,
             "g3_elementwise": C * K * D, "g4_elementwise": C * H * D, "g5_elementwise": C * C,
             "g2_headwise": C * K, "g1_rmsnorm": D, "g1_silu_only": 0, "g1_input_independent": H * D}
    for p, e in extra.items():
        n = sum(math.prod(s) for s in shapes[p].values())
        check(n - n0 == 2 * e, "%s adds %d parameters, expected %d" % (p, n - n0, 2 * e))


def gradchecks():
    """torch.autograd.gradcheck of the loss w.r.t. every parameter, small model."""
    small = small_config()
    todo = cases(small_config, moe_sizes=(3, 2, 4))
    for name, cfg, _, _, _ in todo:
        P, tokens = make_inputs("gradcheck_" + name, cfg, 1, 5)
        names = list(P)

        def fn(*ts):
            Q = dict(zip(names, ts))
            lg, a, z = M.forward(cfg, Q, tokens)
            return M.loss_from(cfg, lg, tokens, a, z)

        inputs = tuple(P[n].clone().requires_grad_(True) for n in names)
        ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)
        check(ok, "gradcheck failed for small " + name)
    return len(todo), small


# ---------------------------------------------------------------------------------------


def generate():
    all_files = {}
    summaries = {}
    for name, cfg, B, T, desc in cases():
        files, summary = case_files(name, cfg, B, T, desc)
        all_files[name] = files
        summaries[name] = summary
    return all_files, summaries


def index_json():
    """index.json: the case names in order, with what each one tests."""
    index = {"generator": "tests/reference/make_golden_model.py",
             "files": ["config.json", "weights.safetensors", "tokens.txt", "expected.safetensors"],
             "cases": [{"name": name, "description": desc, "B": B, "T": T}
                       for name, cfg, B, T, desc in cases()]}
    return (json.dumps(index, indent=2) + "\n").encode("utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT, help="output folder (default tests/golden/model)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; fail if the files in --out differ from a fresh generation")
    args = ap.parse_args()

    structural_checks()
    print("structural checks passed (GQA == MHA relayout, tied == untied, preset parameter counts)")
    n, _ = gradchecks()
    print("gradcheck passed for %d small-model cases" % n)
    first, summaries = generate()
    second, _ = generate()
    check(first == second, "two generations differ (non-determinism)")
    print("loop oracle, directional derivative and determinism checks passed for %d cases" % len(first))

    if args.check:
        bad = []
        for name, files in first.items():
            for fn, data in files.items():
                path = os.path.join(args.out, name, fn)
                if not os.path.exists(path) or open(path, "rb").read() != data:
                    bad.append(path)
        ipath = os.path.join(args.out, "index.json")
        if not os.path.exists(ipath) or open(ipath, "rb").read() != index_json():
            bad.append(ipath)
        present = sorted(d for d in os.listdir(args.out) if os.path.isdir(os.path.join(args.out, d)))
        extra = [d for d in present if d not in first]
        check(not bad and not extra, "committed golden files differ: %s %s" % (bad, extra))
        print("committed golden files are up to date")
        return
    index_bytes = index_json()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "index.json"), "wb") as f:
        f.write(index_bytes)
    total = len(index_bytes)
    for name, files in first.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        for fn, data in files.items():
            with open(os.path.join(d, fn), "wb") as f:
                f.write(data)
            total += len(data)
        s = summaries[name]
        gap = "" if math.isnan(s["router_gap"]) else "  min router gap %.3g" % s["router_gap"]
        print("  %-28s %6d params  loss %.6f%s" % (name, s["params"], s["loss"], gap))
    print("wrote %d cases, %d bytes, to %s" % (len(first), total, args.out))


if __name__ == "__main__":
    main()
