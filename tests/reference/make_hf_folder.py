"""Writes synthetic Hugging Face model folders with reference logits (tests/golden/hf/).

    /usr/bin/python3 tests/reference/make_hf_folder.py            # writes tests/golden/hf/
    /usr/bin/python3 tests/reference/make_hf_folder.py --check    # compare with committed files
    /usr/bin/python3 tests/reference/make_hf_folder.py --out DIR [--case NAME]

What it is for: the folders a user downloads from the Hub, made small: config.json exactly as
Hugging Face's Qwen3 / Qwen3-MoE and the Gated Attention paper's released files carry it
(only the sizes shrunk), BF16 weights in shards model-0000k-of-0000n.safetensors with
model.safetensors.index.json, a byte-level BPE tokenizer.json, and, for a fixed token
sequence, the logits the model must give (tests/test_hf_programs.cpp loads each folder
through `oracle --model`, `sample --model`, `train --init-from` and `probe --model`).

The forward here (`hf_forward`) is written from Hugging Face's modeling_qwen3.py /
modeling_qwen3_moe.py and the paper's released modeling_qwen3.py (qiuzh20/gated_attention:
q_proj widened and viewed as (kv groups, [queries of the group, gates of the group]),
`qkv_bias` on q/k/v/o_proj, attn_output * sigmoid(gate) before o_proj), in float64 from the
BF16-rounded weights. A self-check compares it with tests/reference/model.py (written from
nn/MODEL.md) on every case: two independent readings must agree to 1e-12.

Cases:
  qwen3         Qwen3-8B's config (tie_word_embeddings true like Qwen3-0.6B, so the folder
                has no lm_head.weight), 3 shards
  qwen3_moe     Qwen3-30B-A3B's config (E 8, k 2, output_router_logits false), 3 shards
  paper_gated   the paper's released config: auto_map, qkv_bias true, use_qk_norm,
                elementwise_attn_output_gate true, 2 shards
  paper_headwise  the same with headwise_attn_output_gate true, one model.safetensors

Each folder holds config.json, the weights, tokenizer.json, and:
  tokens.txt             one line of T 16 ids (merged tokens and <|endoftext|> among them)
  expected.safetensors   F64: logits (B,T,V), loss (mean next-token cross-entropy; Hugging
                         Face adds no MoE aux loss when output_router_logits is false)
  sample.json            prompt (ASCII text), prompt_ids (this script's BPE), greedy_ids (8
                         argmax steps, each with a top-2 logit gap > 1e-3 so float32 agrees),
                         greedy_hex (their bytes, hex: they need not be UTF-8)
"""

import argparse
import filecmp
import json
import math
import os
import re
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402
import safetensors_io as S  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DEFAULT = os.path.join(ROOT, "tests", "golden", "hf")
torch.set_num_threads(1)
f64 = torch.float64

# ---------------------------------------------------------------------------------------
# Configs (as published, sizes shrunk)
# ---------------------------------------------------------------------------------------

VOCAB = 272  # tokenizer: 256 bytes + 8 merges + <|endoftext|> = 265 ids; padded as Qwen pads

QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 264, "eos_token_id": 264, "head_dim": 8, "hidden_act": "silu",
    "hidden_size": 24, "initializer_range": 0.02, "intermediate_size": 32,
    "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
    "use_sliding_window": False, "vocab_size": VOCAB,
}
QWEN3_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 264, "decoder_sparse_step": 1, "eos_token_id": 264, "head_dim": 8,
    "hidden_act": "silu", "hidden_size": 24, "initializer_range": 0.02, "intermediate_size": 32,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 16, "norm_topk_prob": True,
    "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": VOCAB,
}
PAPER = {
    "architectures": ["Qwen3ForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_qwen3.Qwen3Config",
                 "AutoModelForCausalLM": "modeling_qwen3.Qwen3ForCausalLM"},
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 264, "eos_token_id": 264,
    "head_dim": 8, "hidden_act": "silu", "hidden_size": 24, "initializer_range": 0.02,
    "intermediate_size": 32, "max_position_embeddings": 4096, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "qkv_bias": True,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.0",
    "use_cache": True, "use_qk_norm": True, "use_sliding_window": False, "vocab_size": VOCAB,
    "elementwise_attn_output_gate": True, "headwise_attn_output_gate": False,
}
PAPER_HW = dict(PAPER, elementwise_attn_output_gate=False, headwise_attn_output_gate=True)

CASES = [("qwen3", QWEN3, 3), ("qwen3_moe", QWEN3_MOE, 3), ("paper_gated", PAPER, 2), ("paper_headwise", PAPER_HW, 0)]

# ---------------------------------------------------------------------------------------
# Parameters (Hugging Face names and shapes, from the modeling files' __init__)
# ---------------------------------------------------------------------------------------


def hf_shapes(cfg):
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    bias = cfg.get("qkv_bias", cfg["attention_bias"])
    q_rows = H * D * 2 if cfg.get("elementwise_attn_output_gate") else H * D + H if cfg.get("headwise_attn_output_gate") else H * D
    s = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = (V, C)
    for i in range(L):
        p = "model.layers.%d." % i
        s[p + "input_layernorm.weight"] = (C,)
        s[p + "post_attention_layernorm.weight"] = (C,)
        a = p + "self_attn."
        s[a + "q_proj.weight"] = (q_rows, C)
        s[a + "k_proj.weight"] = (K * D, C)
        s[a + "v_proj.weight"] = (K * D, C)
        s[a + "o_proj.weight"] = (C, H * D)
        if bias:
            s[a + "q_proj.bias"], s[a + "k_proj.bias"] = (q_rows,), (K * D,)
            s[a + "v_proj.bias"], s[a + "o_proj.bias"] = (K * D,), (C,)
        s[a + "q_norm.weight"] = (D,)
        s[a + "k_norm.weight"] = (D,)
        if cfg.get("num_experts", 0):
            E, Fm = cfg["num_experts"], cfg["moe_intermediate_size"]
            s[p + "mlp.gate.weight"] = (E, C)
            for e in range(E):
                x = p + "mlp.experts.%d." % e
                s[x + "gate_proj.weight"], s[x + "up_proj.weight"], s[x + "down_proj.weight"] = (Fm, C), (Fm, C), (C, Fm)
        else:
            Fi = cfg["intermediate_size"]
            s[p + "mlp.gate_proj.weight"], s[p + "mlp.up_proj.weight"] = (Fi, C), (Fi, C)
            s[p + "mlp.down_proj.weight"] = (C, Fi)
    return s


def bf16(t):
    return t.to(torch.bfloat16).to(f64)


def random_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    P = {}
    for n, shp in sorted(hf_shapes(cfg).items()):
        if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
            t = 1 + 0.1 * torch.randn(shp, generator=g, dtype=f64)
        elif n.endswith(".bias"):
            t = 0.2 * torch.randn(shp, generator=g, dtype=f64)
        elif "embed_tokens" in n:
            t = 0.5 * torch.randn(shp, generator=g, dtype=f64)
        else:
            t = 0.3 * torch.randn(shp, generator=g, dtype=f64)
        P[n] = bf16(t)  # the values the BF16 files hold, exactly
    return P

# ---------------------------------------------------------------------------------------
# The forward, as Hugging Face's and the paper's modeling_qwen3.py compute it (float64)
# ---------------------------------------------------------------------------------------


def rms(x, w, eps):  # Qwen3RMSNorm
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def lin(x, P, name):
    y = x @ P[name + ".weight"].t()
    return y + P[name + ".bias"] if name + ".bias" in P else y


def hf_attention(cfg, P, a, x):
    B, T, _ = x.shape
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    G = H // K
    q = lin(x, P, a + "q_proj")
    gate = None
    if cfg.get("headwise_attn_output_gate"):
        q, gate = torch.split(q.view(B, T, K, -1), [D * G, G], dim=-1)
        gate = gate.reshape(B, T, -1, 1)
        q = q.reshape(B, T, -1, D).transpose(1, 2)
    elif cfg.get("elementwise_attn_output_gate"):
        q, gate = torch.split(q.view(B, T, K, -1), [D * G, D * G], dim=-1)
        gate = gate.reshape(B, T, -1, D)
        q = q.reshape(B, T, -1, D).transpose(1, 2)
    else:
        q = q.view(B, T, -1, D).transpose(1, 2)
    k = lin(x, P, a + "k_proj").view(B, T, -1, D).transpose(1, 2)
    v = lin(x, P, a + "v_proj").view(B, T, -1, D).transpose(1, 2)
    eps = cfg["rms_norm_eps"]
    q, k = rms(q, P[a + "q_norm.weight"], eps), rms(k, P[a + "k_norm.weight"], eps)
    inv_freq = 1.0 / (float(cfg["rope_theta"]) ** (torch.arange(0, D, 2, dtype=f64) / D))
    freqs = torch.arange(T, dtype=f64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k = k[:, :, None].expand(B, K, G, T, D).reshape(B, H, T, D)  # repeat_kv
    v = v[:, :, None].expand(B, K, G, T, D).reshape(B, H, T, D)
    w = q @ k.transpose(2, 3) / math.sqrt(D)
    w = w + torch.full((T, T), float("-inf"), dtype=f64).triu(1)
    out = (torch.softmax(w, dim=-1) @ v).transpose(1, 2)  # (B,T,H,D)
    if gate is not None:
        out = out * torch.sigmoid(gate)
    return lin(out.reshape(B, T, -1), P, a + "o_proj")


def hf_mlp(P, p, x):  # Qwen3MLP
    g = lin(x, P, p + "gate_proj")
    return lin(torch.nn.functional.silu(g) * lin(x, P, p + "up_proj"), P, p + "down_proj")


def hf_moe(cfg, P, p, x, gaps):  # Qwen3MoeSparseMoeBlock
    B, T, C = x.shape
    h = x.view(-1, C)
    probs = torch.softmax(lin(h, P, p + "gate"), dim=1)
    w, sel = torch.topk(probs, cfg["num_experts_per_tok"], dim=-1)
    srt = torch.sort(probs, dim=-1, descending=True).values
    gaps.append(float((srt[:, cfg["num_experts_per_tok"] - 1] - srt[:, cfg["num_experts_per_tok"]]).min()))
    if cfg["norm_topk_prob"]:
        w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h)
    for e in range(cfg["num_experts"]):
        tok, slot = torch.where(sel == e)
        if len(tok):
            out[tok] += w[tok, slot, None] * hf_mlp(P, p + "experts.%d." % e, h[tok])
    return out.view(B, T, C)


def hf_forward(cfg, P, tokens, gaps=None):
    gaps = [] if gaps is None else gaps
    eps = cfg["rms_norm_eps"]
    h = P["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        h = h + hf_attention(cfg, P, p + "self_attn.", rms(h, P[p + "input_layernorm.weight"], eps))
        y = rms(h, P[p + "post_attention_layernorm.weight"], eps)
        h = h + (hf_moe(cfg, P, p + "mlp.", y, gaps) if cfg.get("num_experts", 0) else hf_mlp(P, p + "mlp.", y))
    h = rms(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    return h @ head.t()


def as_model_py_config(cfg):
    """The same model in tests/reference/model.py's vocabulary (nn/MODEL.md's fields)."""
    c = dict(cfg)
    c["attention_bias"] = cfg.get("qkv_bias", cfg["attention_bias"])
    c["use_qk_norm"] = True
    c.setdefault("router_aux_loss_coef", 0.0)
    c["router_z_loss_coef"] = 0.0
    if cfg.get("elementwise_attn_output_gate") or cfg.get("headwise_attn_output_gate"):
        c["gate_position"] = "sdpa"
        c["gate_granularity"] = "headwise" if cfg.get("headwise_attn_output_gate") else "elementwise"
    return c

# ---------------------------------------------------------------------------------------
# The tokenizer: byte-level BPE, ids 0..255 the bytes, 8 merges, <|endoftext|>
# ---------------------------------------------------------------------------------------


def bytes_to_unicode():  # GPT-2's table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


B2U = bytes_to_unicode()
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("n", "d"), ("Ġa", "nd"), ("o", "f")]
SPECIAL = "<|endoftext|>"
SPECIAL_ID = 256 + len(MERGES)


def tokenizer_json():
    vocab = {B2U[b]: b for b in range(256)}
    for i, (a, b) in enumerate(MERGES):
        vocab[a + b] = 256 + i
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": SPECIAL_ID, "content": SPECIAL, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [a + " " + b for a, b in MERGES]},
    }


# GPT-2's pre-tokenizer regex restricted to ASCII text (Python's re has no \p{L}).
ASCII_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def encode_ascii(text):
    assert all(ord(c) < 128 for c in text)
    vocab = tokenizer_json()["model"]["vocab"]
    rank = {m: i for i, m in enumerate(MERGES)}
    ids = []
    for piece in ASCII_PIECES.findall(text):
        sym = [B2U[b] for b in piece.encode()]
        while True:
            pairs = [(rank[(sym[i], sym[i + 1])], i) for i in range(len(sym) - 1) if (sym[i], sym[i + 1]) in rank]
            if not pairs:
                break
            r = min(pairs)[0]
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and rank.get((sym[i], sym[i + 1])) == r:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids += [vocab[s] for s in sym]
    return ids


def token_bytes(i):
    if i < 256:
        return bytes([i])
    if i < SPECIAL_ID:
        u2b = {u: b for b, u in B2U.items()}
        a, b = MERGES[i - 256]
        return bytes(u2b[c] for c in a + b)
    if i == SPECIAL_ID:
        return SPECIAL.encode()
    return b""  # padding ids past the tokenizer

# ---------------------------------------------------------------------------------------


def check(ok, what):
    if not ok:
        raise SystemExit("SELF-CHECK FAILED: " + what)


def zlib_seed(name):
    import zlib
    return zlib.crc32(name.encode())


def make_case(name, cfg, nshards, out):
    P = random_weights(cfg, zlib_seed(name))
    # tokens: merged tokens, bytes and the special token
    tokens = torch.tensor([[SPECIAL_ID, 84, 258, 33, 259, 262, 65, 263, 10, 72, 257, 256, 108, 260, 261, SPECIAL_ID]],
                          dtype=torch.int64)
    gaps = []
    logits = hf_forward(cfg, P, tokens, gaps)
    # (1) the HF reading equals nn/MODEL.md's reading (tests/reference/model.py)
    mcfg = as_model_py_config(cfg)
    M.validate(mcfg)
    other, _, _ = M.forward(mcfg, P, tokens)
    err = float((other - logits).abs().max() / logits.abs().max())
    check(err < 1e-12, "%s: hf_forward and model.forward differ by %.3g" % (name, err))
    check(not gaps or min(gaps) > 1e-4, "%s: router near-tie (%.3g)" % (name, min(gaps or [1])))
    V = cfg["vocab_size"]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    # (2) greedy continuation of an ASCII prompt, no near-ties
    prompt = "In the land of"
    prompt_ids = encode_ascii(prompt)
    check(prompt_ids == [73, 110, 258, 32, 108, 97, 261, 32, 263], "%s: encode_ascii gave %s" % (name, prompt_ids))
    ids = list(prompt_ids)
    greedy = []
    for _ in range(8):
        lg = hf_forward(cfg, P, torch.tensor([ids]))[0, -1]
        top = torch.topk(lg, 2).values
        check(float(top[0] - top[1]) > 1e-3, "%s: greedy near-tie %.3g" % (name, float(top[0] - top[1])))
        nxt = int(torch.argmax(lg))
        greedy.append(nxt)
        ids.append(nxt)
    text = b"".join(token_bytes(i) for i in greedy).hex()

    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(), f, ensure_ascii=False, indent=1)
        f.write("\n")
    names = sorted(P)
    if nshards == 0:
        S.save(os.path.join(d, "model.safetensors"), P, {"format": "pt"}, dtype="BF16")
    else:
        per = math.ceil(len(names) / nshards)
        weight_map = {}
        for s in range(nshards):
            shard = "model-%05d-of-%05d.safetensors" % (s + 1, nshards)
            part = {n: P[n] for n in names[s * per:(s + 1) * per]}
            S.save(os.path.join(d, shard), part, {"format": "pt"}, dtype="BF16")
            weight_map.update({n: shard for n in part})
        total = sum(2 * P[n].numel() for n in names)
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
            f.write("\n")
    with open(os.path.join(d, "tokens.txt"), "w") as f:
        for row in tokens.tolist():
            f.write(" ".join(map(str, row)) + "\n")
    S.save(os.path.join(d, "expected.safetensors"), {"logits": logits, "loss": loss}, {"case": name}, dtype="F64")
    with open(os.path.join(d, "sample.json"), "w") as f:
        json.dump({"prompt": prompt, "prompt_ids": prompt_ids, "greedy_ids": greedy, "greedy_hex": text}, f, indent=1)
        f.write("\n")
    print("  %-15s %6d params  loss %.6f  greedy %s" % (name, sum(t.numel() for t in P.values()), float(loss), greedy))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT)
    ap.add_argument("--check", action="store_true", help="fail if the files in --out differ from a fresh generation")
    ap.add_argument("--case", action="append", help="only these cases")
    a = ap.parse_args()
    cases = [c for c in CASES if not a.case or c[0] in a.case]
    target = tempfile.mkdtemp() if a.check else a.out
    for name, cfg, nshards in cases:
        if not a.check and os.path.isdir(os.path.join(target, name)):
            shutil.rmtree(os.path.join(target, name))
        make_case(name, cfg, nshards, target)
    if a.check:
        bad = []
        for name, _, _ in cases:
            cmp = filecmp.dircmp(os.path.join(target, name), os.path.join(a.out, name))
            bad += [name + "/" + f for f in cmp.diff_files + cmp.left_only + cmp.right_only]
            bad += [name + "/" + f for f in filecmp.cmpfiles(os.path.join(target, name), os.path.join(a.out, name),
                                                             cmp.common_files, shallow=False)[1]]
        shutil.rmtree(target)
        if bad:
            raise SystemExit("differs from a fresh generation: " + ", ".join(sorted(set(bad))))
        print("check: identical")


if __name__ == "__main__":
    main()
