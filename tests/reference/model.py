"""Independent PyTorch reference of the tapegrad model (nn/MODEL.md), for golden files.

What this is for: make_golden_model.py uses it to compute, in float64 with torch
autograd, the logits, loss and every parameter gradient that the C++ model must
reproduce. It is written from nn/MODEL.md, the Gated Attention paper (Qiu et al. 2025)
and its released code's q_proj layout, and Hugging Face Qwen3 / Qwen3-MoE conventions;
it is deliberately not derived from the C++ code.

Two implementations live here:
  - `forward`: vectorised torch, differentiable (the one that makes the golden files);
  - `forward_loops`: numpy, one token / one head / one key at a time with explicit index
    arithmetic for every weight layout (the oracle for `forward`; forward values only).

What this is not: a training library. No initialisation scheme (the golden files use
deliberately large random weights), no KV cache, no dropout, no padding masks.

Conventions: a model is (cfg, P) where cfg is the config.json dict and P maps Hugging Face
parameter names to tensors. Dimension names: B batch, T sequence, C hidden, H query heads,
K kv heads, D head_dim, V vocab, F intermediate, E experts, k experts per token, G = H/K.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

GATE_POSITIONS = ("none", "sdpa", "value", "key", "query", "dense")
GATE_DEFAULTS = {
    "gate_position": "none",
    "gate_granularity": "elementwise",
    "gate_head_shared": False,
    "gate_combine": "multiplicative",
    "gate_activation": "sigmoid",
    "gate_input_dependent": True,
    "gate_probe": "none",
}

# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


def gate_of(cfg):
    """The seven gate fields of cfg, defaults filled in."""
    return {k: cfg.get(k, v) for k, v in GATE_DEFAULTS.items()}


def g1_input_dependent(cfg):
    """True when the G1 gate weights live in a widened q_proj."""
    g = gate_of(cfg)
    return g["gate_position"] == "sdpa" and g["gate_input_dependent"] and g["gate_probe"] == "none"


def validate(cfg):
    """Checks the rules of MODEL.md that this reference relies on; raises ValueError."""
    g = gate_of(cfg)
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if H % K:
        raise ValueError("num_attention_heads %d not a multiple of num_key_value_heads %d" % (H, K))
    if cfg["head_dim"] % 2:
        raise ValueError("head_dim must be even for rotate_half RoPE")
    if g["gate_position"] not in GATE_POSITIONS:
        raise ValueError("bad gate_position %r" % g["gate_position"])
    if g["gate_granularity"] not in ("elementwise", "headwise"):
        raise ValueError("bad gate_granularity")
    if g["gate_combine"] not in ("multiplicative", "additive"):
        raise ValueError("bad gate_combine")
    if g["gate_activation"] not in ("sigmoid", "silu", "identity", "ns_sigmoid"):
        raise ValueError("bad gate_activation")
    if g["gate_probe"] not in ("none", "rmsnorm", "silu"):
        raise ValueError("bad gate_probe")
    if g["gate_probe"] != "none" and g["gate_position"] != "sdpa":
        raise ValueError("gate_probe needs gate_position sdpa")
    if not g["gate_input_dependent"]:
        if g["gate_position"] != "sdpa":
            raise ValueError("input-independent gate needs gate_position sdpa")
        if g["gate_combine"] != "multiplicative":
            raise ValueError("input-independent gate is multiplicative (MODEL.md)")
    if g["gate_position"] == "dense" and (g["gate_granularity"] != "elementwise" or g["gate_head_shared"]):
        raise ValueError("dense gate is elementwise and head-specific only")
    ew = bool(cfg.get("elementwise_attn_output_gate", False))
    hw = bool(cfg.get("headwise_attn_output_gate", False))
    if g1_input_dependent(cfg):
        if ew != (g["gate_granularity"] == "elementwise") or hw != (g["gate_granularity"] == "headwise"):
            raise ValueError("HF gate flags disagree with gate_granularity")
    elif ew or hw:
        raise ValueError("HF gate flags set without an input-dependent G1 gate")
    if cfg.get("num_experts", 0) > 0 and cfg["num_experts_per_tok"] > cfg["num_experts"]:
        raise ValueError("num_experts_per_tok > num_experts")


def param_shapes(cfg):
    """Ordered dict name -> shape of every parameter, Hugging Face names."""
    validate(cfg)
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    g = gate_of(cfg)
    bias = cfg.get("attention_bias", False)
    E = cfg.get("num_experts", 0)
    shapes = {"model.embed_tokens.weight": (V, C)}
    for i in range(L):
        p = "model.layers.%d." % i
        shapes[p + "input_layernorm.weight"] = (C,)
        q_rows = H * D
        if g1_input_dependent(cfg):
            q_rows += H * D if g["gate_granularity"] == "elementwise" else H
        a = p + "self_attn."
        shapes[a + "q_proj.weight"] = (q_rows, C)
        shapes[a + "k_proj.weight"] = (K * D, C)
        shapes[a + "v_proj.weight"] = (K * D, C)
        shapes[a + "o_proj.weight"] = (C, H * D)
        if bias:
            shapes[a + "q_proj.bias"] = (q_rows,)
            shapes[a + "k_proj.bias"] = (K * D,)
            shapes[a + "v_proj.bias"] = (K * D,)
            shapes[a + "o_proj.bias"] = (C,)
        if cfg.get("use_qk_norm", True):
            shapes[a + "q_norm.weight"] = (D,)
            shapes[a + "k_norm.weight"] = (D,)
        pos = g["gate_position"]
        if pos in ("value", "key", "query"):
            n = H if pos == "query" else K
            shapes[a + "gate_proj.weight"] = (n * D if g["gate_granularity"] == "elementwise" else n, C)
        elif pos == "dense":
            shapes[a + "gate_proj.weight"] = (C, C)
        elif pos == "sdpa" and not g["gate_input_dependent"]:
            shapes[a + "gate_theta"] = (H, D)
        if pos == "sdpa" and g["gate_probe"] == "rmsnorm":
            shapes[a + "sdpa_norm.weight"] = (D,)
        if cfg.get("sandwich_norm", False):
            shapes[p + "post_attn_sandwich_norm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        if E > 0:
            Fm = cfg["moe_intermediate_size"]
            shapes[p + "mlp.gate.weight"] = (E, C)
            for e in range(E):
                x = p + "mlp.experts.%d." % e
                shapes[x + "gate_proj.weight"] = (Fm, C)
                shapes[x + "up_proj.weight"] = (Fm, C)
                shapes[x + "down_proj.weight"] = (C, Fm)
        else:
            Fi = cfg["intermediate_size"]
            shapes[p + "mlp.gate_proj.weight"] = (Fi, C)
            shapes[p + "mlp.up_proj.weight"] = (Fi, C)
            shapes[p + "mlp.down_proj.weight"] = (C, Fi)
        if cfg.get("sandwich_norm", False):
            shapes[p + "post_mlp_sandwich_norm.weight"] = (C,)
    shapes["model.norm.weight"] = (C,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, C)
    return shapes


def random_params(cfg, generator, linear_std=0.3, embed_std=0.5, bias_std=0.2):
    """Large random float64 weights so that gates, norms and softmaxes are in non-trivial
    regimes: linears ~ N(0, linear_std), embeddings ~ N(0, embed_std), norm weights
    1 + 0.1 N(0,1), biases ~ N(0, bias_std), gate_theta ~ N(0,1)."""
    P = {}
    for name, shape in param_shapes(cfg).items():
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = 1.0 + 0.1 * z
        elif name.endswith(".bias"):
            t = bias_std * z
        elif name.endswith("gate_theta"):
            t = z
        elif name == "model.embed_tokens.weight":
            t = embed_std * z
        else:
            t = linear_std * z
        P[name] = t
    return P


# ---------------------------------------------------------------------------------------
# Building blocks (torch)
# ---------------------------------------------------------------------------------------


def rms_norm(x, w, eps):
    """y = x / sqrt(mean(x^2, last axis) + eps) * w."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def linear(x, w, b=None):
    """x (..., in) @ w(out, in)^T + b."""
    y = x @ w.t()
    return y if b is None else y + b


def rope_frequencies(cfg):
    """(inv_freq (D/2,) as python floats, attention_factor) per MODEL.md / HF."""
    D, theta = cfg["head_dim"], float(cfg["rope_theta"])
    rs = cfg.get("rope_scaling")
    rtype = None if rs is None else rs.get("rope_type", rs.get("type"))
    if rtype in (None, "default"):
        return [theta ** (-2.0 * i / D) for i in range(D // 2)], 1.0
    if rtype != "yarn":
        raise ValueError("rope_type %r not supported" % rtype)
    s = float(rs["factor"])
    Lo = float(rs["original_max_position_embeddings"])
    beta_fast = float(rs.get("beta_fast", 32))
    beta_slow = float(rs.get("beta_slow", 1))

    def corr_dim(r):
        return D * math.log(Lo / (r * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), D - 1)
    if high == low:
        high += 0.001
    inv = []
    for i in range(D // 2):
        pos_freq = theta ** (2.0 * i / D)
        inv_extra = 1.0 / pos_freq
        inv_inter = 1.0 / (s * pos_freq)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extra_factor = 1.0 - ramp
        inv.append(inv_inter * (1.0 - extra_factor) + inv_extra * extra_factor)
    attention_factor = 0.1 * math.log(s) + 1.0 if s > 1 else 1.0
    return inv, attention_factor


def rope_cos_sin(cfg, T):
    """cos, sin of shape (T, D) for positions 0..T-1 (rotate_half convention)."""
    inv, af = rope_frequencies(cfg)
    inv = torch.tensor(inv, dtype=torch.float64)
    pos = torch.arange(T, dtype=torch.float64)
    angle = pos[:, None] * inv[None, :]           # (T, D/2)
    emb = torch.cat([angle, angle], dim=-1)       # (T, D)
    return torch.cos(emb) * af, torch.sin(emb) * af


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def gate_activation(s, name):
    if name == "sigmoid":
        return torch.sigmoid(s)
    if name == "silu":
        return s * torch.sigmoid(s)
    if name == "identity":
        return s
    if name == "ns_sigmoid":
        return 0.5 + 0.5 * torch.sigmoid(s)
    raise ValueError(name)


def apply_gate(Y, s, g):
    """Y (B,T,n,D) or (B,T,C); s broadcastable scores with the head axis at -2 (when
    per-head). Head-shared: s averaged over its head axis (keepdim) before the activation."""
    if g["gate_head_shared"]:
        s = s.mean(dim=-2, keepdim=True)
    a = gate_activation(s, g["gate_activation"])
    return Y * a if g["gate_combine"] == "multiplicative" else Y + a


def attention(cfg, P, pre, x):
    """pre = 'model.layers.{i}.self_attn.'; x (B,T,C) is the attention input after
    input_layernorm. Returns (B,T,C)."""
    B, T, C = x.shape
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    G = H // K
    eps = cfg["rms_norm_eps"]
    g = gate_of(cfg)
    pos = g["gate_position"]
    headwise = g["gate_granularity"] == "headwise"

    q_all = linear(x, P[pre + "q_proj.weight"], P.get(pre + "q_proj.bias"))
    s1 = None
    if g1_input_dependent(cfg):
        gw = G if headwise else G * D                     # gate columns per kv group
        q_all = q_all.view(B, T, K, G * D + gw)
        q = q_all[..., :G * D].reshape(B, T, H, D)        # query head g*G + j from group g, slot j
        s1 = q_all[..., G * D:].reshape(B, T, H, 1 if headwise else D)
    else:
        q = q_all.view(B, T, H, D)
    k = linear(x, P[pre + "k_proj.weight"], P.get(pre + "k_proj.bias")).view(B, T, K, D)
    v = linear(x, P[pre + "v_proj.weight"], P.get(pre + "v_proj.bias")).view(B, T, K, D)

    if pos in ("query", "key", "value"):                  # G4 / G3 / G2, before QK-norm and RoPE
        n = H if pos == "query" else K
        s = linear(x, P[pre + "gate_proj.weight"]).view(B, T, n, 1 if headwise else D)
        if pos == "query":
            q = apply_gate(q, s, g)
        elif pos == "key":
            k = apply_gate(k, s, g)
        else:
            v = apply_gate(v, s, g)

    if cfg.get("use_qk_norm", True):
        q = rms_norm(q, P[pre + "q_norm.weight"], eps)
        k = rms_norm(k, P[pre + "k_norm.weight"], eps)

    cos, sin = rope_cos_sin(cfg, T)                       # (T,D)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin

    qh = q.permute(0, 2, 1, 3)                            # (B,H,T,D)
    kh = k.permute(0, 2, 1, 3).repeat_interleave(G, dim=1)  # query head h uses kv head h // G
    vh = v.permute(0, 2, 1, 3).repeat_interleave(G, dim=1)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(D)     # (B,H,T,T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = (probs @ vh).permute(0, 2, 1, 3)                  # (B,T,H,D)

    if pos == "sdpa":                                     # G1 and its probes
        if g["gate_probe"] == "rmsnorm":
            o = rms_norm(o, P[pre + "sdpa_norm.weight"], eps)
        elif g["gate_probe"] == "silu":
            o = o * torch.sigmoid(o)
        elif not g["gate_input_dependent"]:
            o = o * gate_activation(P[pre + "gate_theta"], g["gate_activation"])
        else:
            o = apply_gate(o, s1, g)

    out = linear(o.reshape(B, T, H * D), P[pre + "o_proj.weight"], P.get(pre + "o_proj.bias"))
    if pos == "dense":                                    # G5 on o_proj's output
        out = apply_gate(out, linear(x, P[pre + "gate_proj.weight"]), g)
    return out


def swiglu(y, wg, wu, wd):
    """down(silu(gate(y)) * up(y))."""
    a = linear(y, wg)
    return linear(a * torch.sigmoid(a) * linear(y, wu), wd)


def moe(cfg, P, pre, y, stats=None):
    """pre = 'model.layers.{i}.mlp.'; y (B,T,C). Returns (out (B,T,C), aux, z).
    If stats is a dict, appends to stats["router_gap"] the smallest gap, over tokens, between
    the k-th and (k+1)-th routing probability (a near-tie would make top-k fragile)."""
    B, T, C = y.shape
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    N = B * T
    yf = y.reshape(N, C)
    logits_r = linear(yf, P[pre + "gate.weight"])         # (N,E)
    p = torch.softmax(logits_r, dim=-1)
    # top-k, ties broken towards the lower expert index (stable descending sort)
    order = torch.sort(p.detach(), dim=-1, descending=True, stable=True).indices
    chosen = torch.zeros(N, E, dtype=torch.float64).scatter(1, order[:, :k], 1.0)
    if stats is not None and k < E:
        ps = p.detach().gather(1, order)
        stats.setdefault("router_gap", []).append(float((ps[:, k - 1] - ps[:, k]).min()))
    w = p * chosen
    if cfg.get("norm_topk_prob", True):
        w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(yf)
    for e in range(E):
        x = pre + "experts.%d." % e
        out = out + w[:, e:e + 1] * swiglu(yf, P[x + "gate_proj.weight"], P[x + "up_proj.weight"],
                                           P[x + "down_proj.weight"])
    aux = E * torch.sum(chosen.sum(0) / N * p.mean(0))
    z = torch.logsumexp(logits_r, dim=-1).pow(2).mean()
    return out.view(B, T, C), aux, z


def forward(cfg, P, tokens, stats=None):
    """tokens (B,T) int64. Returns (logits (B,T,V), aux, z); aux and z are the means over
    MoE layers (None for a dense model). stats: optional dict, see moe()."""
    eps = cfg["rms_norm_eps"]
    sandwich = cfg.get("sandwich_norm", False)
    is_moe = cfg.get("num_experts", 0) > 0
    h = P["model.embed_tokens.weight"][tokens]            # (B,T,C)
    auxes, zs = [], []
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        x = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        a = attention(cfg, P, p + "self_attn.", x)
        if sandwich:
            a = rms_norm(a, P[p + "post_attn_sandwich_norm.weight"], eps)
        h = h + a
        y = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        if is_moe:
            f, aux, z = moe(cfg, P, p + "mlp.", y, stats)
            auxes.append(aux)
            zs.append(z)
        else:
            f = swiglu(y, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"],
                       P[p + "mlp.down_proj.weight"])
        if sandwich:
            f = rms_norm(f, P[p + "post_mlp_sandwich_norm.weight"], eps)
        h = h + f
    h = rms_norm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    logits = h @ head.t()
    if not is_moe:
        return logits, None, None
    return logits, torch.stack(auxes).mean(), torch.stack(zs).mean()


def loss_from(cfg, logits, tokens, aux, z):
    """Mean next-token cross-entropy (+ MoE terms)."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    if aux is None:
        return ce
    return ce + cfg["router_aux_loss_coef"] * aux + cfg["router_z_loss_coef"] * z


# ---------------------------------------------------------------------------------------
# The loop oracle (numpy, one element at a time where layouts matter)
# ---------------------------------------------------------------------------------------


def forward_loops(cfg, P, tokens):
    """Same model as `forward`, written as directly as possible in numpy float64.
    P: name -> numpy array; tokens: (B,T) ints. Returns (logits, loss, aux, z)."""
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    H, K, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    G = H // K
    eps = cfg["rms_norm_eps"]
    g = gate_of(cfg)
    pos = g["gate_position"]
    headwise = g["gate_granularity"] == "headwise"
    g1dep = g1_input_dependent(cfg)
    E = cfg.get("num_experts", 0)
    sandwich = cfg.get("sandwich_norm", False)
    B, T = tokens.shape
    inv_freq, af = rope_frequencies(cfg)

    def rms(v, w):
        return v / math.sqrt(float(np.mean(v * v)) + eps) * w

    def act(s):
        name = g["gate_activation"]
        sig = 1.0 / (1.0 + np.exp(-s))
        return {"sigmoid": sig, "silu": s * sig, "identity": s, "ns_sigmoid": 0.5 + 0.5 * sig}[name]

    def gate(Yh, Sh):
        """Yh: list of per-head vectors; Sh: list of per-head scores (vector or length-1)."""
        if g["gate_head_shared"]:
            mean = sum(Sh) / len(Sh)
            Sh = [mean] * len(Sh)
        out = []
        for y, s in zip(Yh, Sh):
            a = act(np.asarray(s, dtype=np.float64))
            if a.size == 1:
                a = np.full(D, float(a.reshape(-1)[0]))
            out.append(y * a if g["gate_combine"] == "multiplicative" else y + a)
        return out

    def rope(vec, t):
        out = np.empty(D)
        half = D // 2
        for i in range(half):
            c = math.cos(t * inv_freq[i]) * af
            s = math.sin(t * inv_freq[i]) * af
            out[i] = vec[i] * c - vec[i + half] * s
            out[i + half] = vec[i + half] * c + vec[i] * s
        return out

    def silu(a):
        return a / (1.0 + np.exp(-a))

    def mv(w, x, b=None):
        y = np.array([float(np.dot(w[r], x)) for r in range(w.shape[0])])
        return y if b is None else y + b

    h = [[P["model.embed_tokens.weight"][int(tokens[b, t])].copy() for t in range(T)] for b in range(B)]
    aux_sum = z_sum = 0.0
    for layer in range(L):
        p = "model.layers.%d." % layer
        a_ = p + "self_attn."
        bq, bk, bv, bo = (P.get(a_ + n + "_proj.bias") for n in "qkvo")
        Q = [[None] * T for _ in range(B)]
        Kc = [[None] * T for _ in range(B)]
        Vc = [[None] * T for _ in range(B)]
        S1 = [[None] * T for _ in range(B)]
        X = [[None] * T for _ in range(B)]
        for b in range(B):
            for t in range(T):
                x = rms(h[b][t], P[p + "input_layernorm.weight"])
                X[b][t] = x
                qrow = mv(P[a_ + "q_proj.weight"], x, bq)
                krow = mv(P[a_ + "k_proj.weight"], x, bk)
                vrow = mv(P[a_ + "v_proj.weight"], x, bv)
                qs, s1 = [], []
                for hh in range(H):
                    if g1dep:
                        grp, j = hh // G, hh % G
                        width = G * D + (G if headwise else G * D)
                        base = grp * width
                        qs.append(qrow[base + j * D: base + (j + 1) * D])
                        if headwise:
                            s1.append(qrow[base + G * D + j: base + G * D + j + 1])
                        else:
                            s1.append(qrow[base + G * D + j * D: base + G * D + (j + 1) * D])
                    else:
                        qs.append(qrow[hh * D:(hh + 1) * D])
                ks = [krow[kk * D:(kk + 1) * D] for kk in range(K)]
                vs = [vrow[kk * D:(kk + 1) * D] for kk in range(K)]
                if pos in ("query", "key", "value"):
                    n = H if pos == "query" else K
                    srow = mv(P[a_ + "gate_proj.weight"], x)
                    sh = [srow[i:i + 1] if headwise else srow[i * D:(i + 1) * D] for i in range(n)]
                    if pos == "query":
                        qs = gate(qs, sh)
                    elif pos == "key":
                        ks = gate(ks, sh)
                    else:
                        vs = gate(vs, sh)
                if cfg.get("use_qk_norm", True):
                    qs = [rms(v, P[a_ + "q_norm.weight"]) for v in qs]
                    ks = [rms(v, P[a_ + "k_norm.weight"]) for v in ks]
                Q[b][t] = [rope(v, t) for v in qs]
                Kc[b][t] = [rope(v, t) for v in ks]
                Vc[b][t] = vs
                S1[b][t] = s1
        for b in range(B):
            for t in range(T):
                heads = []
                for hh in range(H):
                    kv = hh // G
                    sc = [float(np.dot(Q[b][t][hh], Kc[b][u][kv])) / math.sqrt(D) for u in range(t + 1)]
                    m = max(sc)
                    ex = [math.exp(s - m) for s in sc]
                    tot = sum(ex)
                    o = np.zeros(D)
                    for u in range(t + 1):
                        o += ex[u] / tot * Vc[b][u][kv]
                    heads.append(o)
                if pos == "sdpa":
                    if g["gate_probe"] == "rmsnorm":
                        heads = [rms(o, P[a_ + "sdpa_norm.weight"]) for o in heads]
                    elif g["gate_probe"] == "silu":
                        heads = [silu(o) for o in heads]
                    elif not g["gate_input_dependent"]:
                        heads = [o * act(P[a_ + "gate_theta"][hh]) for hh, o in enumerate(heads)]
                    else:
                        heads = gate(heads, S1[b][t])
                out = mv(P[a_ + "o_proj.weight"], np.concatenate(heads), bo)
                if pos == "dense":
                    out = gate([out], [mv(P[a_ + "gate_proj.weight"], X[b][t])])[0]
                if sandwich:
                    out = rms(out, P[p + "post_attn_sandwich_norm.weight"])
                h[b][t] = h[b][t] + out
        counts = np.zeros(E)
        psum = np.zeros(E)
        zsum = 0.0
        for b in range(B):
            for t in range(T):
                y = rms(h[b][t], P[p + "post_attention_layernorm.weight"])
                if E == 0:
                    f = mv(P[p + "mlp.down_proj.weight"],
                           silu(mv(P[p + "mlp.gate_proj.weight"], y)) * mv(P[p + "mlp.up_proj.weight"], y))
                else:
                    lr = mv(P[p + "mlp.gate.weight"], y)
                    m = max(lr)
                    ex = [math.exp(v - m) for v in lr]
                    tot = sum(ex)
                    pr = [v / tot for v in ex]
                    lse = m + math.log(tot)
                    zsum += lse * lse
                    top = sorted(range(E), key=lambda e: (-pr[e], e))[:cfg["num_experts_per_tok"]]
                    wsum = sum(pr[e] for e in top) if cfg.get("norm_topk_prob", True) else 1.0
                    f = np.zeros(C)
                    for e in top:
                        x_ = p + "mlp.experts.%d." % e
                        ye = mv(P[x_ + "down_proj.weight"],
                                silu(mv(P[x_ + "gate_proj.weight"], y)) * mv(P[x_ + "up_proj.weight"], y))
                        f += pr[e] / wsum * ye
                        counts[e] += 1
                    psum += np.array(pr)
                if sandwich:
                    f = rms(f, P[p + "post_mlp_sandwich_norm.weight"])
                h[b][t] = h[b][t] + f
        if E > 0:
            N = B * T
            aux_sum += E * float(np.sum(counts / N * psum / N))
            z_sum += zsum / N
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    logits = np.zeros((B, T, V))
    for b in range(B):
        for t in range(T):
            logits[b, t] = mv(head, rms(h[b][t], P["model.norm.weight"]))
    ce = 0.0
    for b in range(B):
        for t in range(T - 1):
            row = logits[b, t]
            m = float(np.max(row))
            ce += m + math.log(float(np.sum(np.exp(row - m)))) - row[int(tokens[b, t + 1])]
    ce /= B * (T - 1)
    if E == 0:
        return logits, ce, None, None
    aux, z = aux_sum / L, z_sum / L
    return logits, ce + cfg["router_aux_loss_coef"] * aux + cfg["router_z_loss_coef"] * z, aux, z
