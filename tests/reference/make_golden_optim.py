#!/usr/bin/python3
"""Writes tapegrad's optimizer golden files: tests/golden/optim/<case>.safetensors.

What this is for: the C++ optim tests feed the stored gradients, step by step, to their
AdamW / SGD (with the stored learning rate, clipping where on), and compare the parameters
after every step with the trajectories computed here by torch.optim in float64.

What this is not: a model test. The gradients are deterministic pseudo-random tensors,
not derived from any model, so that the C++ test needs no autograd graph.

Self-checks (every run, fail loudly): each torch trajectory is recomputed by a hand-written
numpy implementation of the same formulas (AdamW, SGD with momentum / Nesterov, global-norm
clipping) and must agree to 1e-13 relative; the schedule is checked at its end points; the
clipping case must have both clipped and unclipped steps; two generations are
byte-identical; written files read back identically.

Usage (from the repository root):
    /usr/bin/python3 tests/reference/make_golden_optim.py            # regenerate
    /usr/bin/python3 tests/reference/make_golden_optim.py --check    # compare with committed files
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import safetensors_io as st  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

OUT_DEFAULT = os.path.normpath(os.path.join(HERE, "..", "golden", "optim"))
STEPS = 20
SHAPES = {"weight": (5, 3), "bias": (7,), "cube": (2, 3, 4)}
GROUPS_DECAY = [{"params": ["weight", "cube"], "weight_decay": 0.1},
                {"params": ["bias"], "weight_decay": 0.0}]
# gradient scale per step (cycled): total norms about 0.14, 0.41, 1.2, 3.4, so that a
# max_norm of 0.5 clips some steps and leaves others alone
GRAD_SCALES = [0.02, 0.06, 0.18, 0.5]

SCHEDULE_FORMULA = ("lr_t = peak*(t+1)/warmup for t < warmup, else "
                    "floor + (peak-floor)*0.5*(1+cos(pi*(t-warmup)/(total-warmup))), t = 0..total-1")


def warmup_cosine(t, peak, warmup, total, floor):
    """Learning rate of step t (0-based): linear warm-up from 0, then cosine to floor."""
    if t < warmup:
        return peak * (t + 1) / warmup
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))


CASES = {
    "adamw": {
        "optimizer": "adamw", "lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8,
        "groups": GROUPS_DECAY, "max_norm": None, "schedule": None,
    },
    "adamw_clip_schedule": {
        "optimizer": "adamw", "lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8,
        "groups": GROUPS_DECAY, "max_norm": 0.5,
        "schedule": {"type": "warmup_cosine", "peak_lr": 1e-2, "warmup_steps": 5, "total_steps": 20,
                     "floor_lr": 1e-3, "formula": SCHEDULE_FORMULA},
    },
    "sgd_momentum": {
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
        "groups": GROUPS_DECAY, "max_norm": None, "schedule": None,
    },
    "sgd_nesterov": {
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True,
        "groups": GROUPS_DECAY, "max_norm": None, "schedule": None,
    },
}


def lr_at(spec, t):
    s = spec["schedule"]
    if s is None:
        return spec["lr"]
    return warmup_cosine(t, s["peak_lr"], s["warmup_steps"], s["total_steps"], s["floor_lr"])


def make_data(name):
    """p0 and the gradient of every step, seeded by the case's index."""
    gen = torch.Generator().manual_seed(1000 + sorted(CASES).index(name))
    p0 = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    grads = []
    for t in range(STEPS):
        scale = GRAD_SCALES[t % len(GRAD_SCALES)]
        grads.append({n: scale * torch.randn(s, generator=gen) for n, s in SHAPES.items()})
    return p0, grads


def run_torch(spec, p0, grads):
    """Returns per-step params, lrs, norms and the final optimizer state, via torch.optim."""
    params = {n: torch.nn.Parameter(v.clone()) for n, v in p0.items()}
    groups = [{"params": [params[n] for n in g["params"]], "weight_decay": g["weight_decay"]}
              for g in spec["groups"]]
    if spec["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                                foreach=False)
    else:
        opt = torch.optim.SGD(groups, lr=spec["lr"], momentum=spec["momentum"], dampening=spec["dampening"],
                              nesterov=spec["nesterov"], foreach=False)
    traj, lrs, norms = [], [], []
    for t in range(STEPS):
        lr = lr_at(spec, t)
        for g in opt.param_groups:
            g["lr"] = lr
        for n, p in params.items():
            p.grad = grads[t][n].clone()
        if spec["max_norm"] is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), spec["max_norm"], norm_type=2.0))
        opt.step()
        lrs.append(lr)
        traj.append({n: p.detach().clone() for n, p in params.items()})
    state = {}
    for n, p in params.items():
        for k, v in opt.state[p].items():
            if k == "step":
                continue
            state["state.%s.%s" % (k, n)] = v.detach().clone()
    if spec["optimizer"] == "adamw":
        state["state.step"] = torch.tensor(float(STEPS))
    return traj, lrs, norms, state


def run_numpy(spec, p0, grads):
    """The same trajectory from the formulas, written out by hand (the self-check oracle)."""
    p = {n: v.numpy().copy() for n, v in p0.items()}
    wd = {n: g["weight_decay"] for g in spec["groups"] for n in g["params"]}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v2 = {n: np.zeros_like(v) for n, v in p.items()}
    buf = {}
    traj, norms = [], []
    for t in range(STEPS):
        lr = lr_at(spec, t)
        g = {n: grads[t][n].numpy().copy() for n in p}
        if spec["max_norm"] is not None:
            total = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
            norms.append(total)
            coef = min(spec["max_norm"] / (total + 1e-6), 1.0)
            g = {n: x * coef for n, x in g.items()}
        for n in p:
            if spec["optimizer"] == "adamw":
                b1, b2 = spec["betas"]
                step = t + 1
                p[n] = p[n] * (1 - lr * wd[n])
                m[n] = b1 * m[n] + (1 - b1) * g[n]
                v2[n] = b2 * v2[n] + (1 - b2) * g[n] * g[n]
                denom = np.sqrt(v2[n]) / math.sqrt(1 - b2 ** step) + spec["eps"]
                p[n] = p[n] - lr / (1 - b1 ** step) * m[n] / denom
            else:
                d = g[n] + wd[n] * p[n]
                if n not in buf:
                    buf[n] = d.copy()
                else:
                    buf[n] = spec["momentum"] * buf[n] + (1 - spec["dampening"]) * d
                d = d + spec["momentum"] * buf[n] if spec["nesterov"] else buf[n]
                p[n] = p[n] - lr * d
        traj.append({n: x.copy() for n, x in p.items()})
    return traj, norms


def check(cond, msg):
    if not cond:
        raise SystemExit("SELF-CHECK FAILED: " + msg)


def case_bytes(name):
    spec = CASES[name]
    p0, grads = make_data(name)
    traj, lrs, norms, state = run_torch(spec, p0, grads)

    ntraj, nnorms = run_numpy(spec, p0, grads)
    for t in range(STEPS):
        for n in SHAPES:
            a, b = traj[t][n].numpy(), ntraj[t][n]
            err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)
            check(err < 1e-13, "%s step %d %s: torch vs hand-written %.3g" % (name, t, n, err))
    if spec["max_norm"] is not None:
        check(all(abs(float(a) - b) < 1e-13 * b for a, b in zip(norms, nnorms)), name + ": norms")
        clipped = sum(1 for x in nnorms if x > spec["max_norm"])
        check(0 < clipped < STEPS, name + ": clipping should be active on some steps only")
    if spec["schedule"] is not None:
        s = spec["schedule"]
        check(abs(lrs[0] - s["peak_lr"] / s["warmup_steps"]) < 1e-15 * s["peak_lr"], "schedule start")
        check(abs(lrs[s["warmup_steps"]] - s["peak_lr"]) < 1e-15 * s["peak_lr"], "schedule peak")
        check(all(s["floor_lr"] < x <= s["peak_lr"] * (1 + 1e-15) for x in lrs), "schedule range")

    tensors = {}
    for n, v in p0.items():
        tensors["p0." + n] = v
    for t in range(STEPS):
        for n in SHAPES:
            tensors["grad.%d.%s" % (t, n)] = grads[t][n]
            tensors["p.%d.%s" % (t, n)] = traj[t][n]
        tensors["lr.%d" % t] = torch.tensor(lrs[t])
        if spec["max_norm"] is not None:
            tensors["norm.%d" % t] = norms[t].detach().clone()
    tensors.update(state)

    meta = {"format": "pt", "case": json.dumps(name), "steps": json.dumps(STEPS),
            "param_names": json.dumps(list(SHAPES)),
            "generator": json.dumps("tests/reference/make_golden_optim.py"),
            "torch_version": json.dumps(torch.__version__)}
    for k, v in spec.items():
        meta[k] = json.dumps(v)
    if spec["optimizer"] == "adamw":
        meta["semantics"] = json.dumps(
            "torch.optim.AdamW (foreach=False, amsgrad=False): p *= 1-lr*wd; m = b1*m+(1-b1)*g; "
            "v = b2*v+(1-b2)*g*g; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = 1-based step")
    else:
        meta["semantics"] = json.dumps(
            "torch.optim.SGD (foreach=False): d = g + wd*p (coupled L2); buf = d at the first step, "
            "else buf = momentum*buf + (1-dampening)*d; d = d + momentum*buf if nesterov else buf; p -= lr*d")
    if spec["max_norm"] is not None:
        meta["clip"] = json.dumps(
            "torch.nn.utils.clip_grad_norm_(all params, max_norm, norm_type=2) before each step: "
            "norm = sqrt(sum g^2) over all tensors (returned, stored as norm.<t>); "
            "g *= min(max_norm/(norm+1e-6), 1)")
    data = st.encode(tensors, meta)
    back, bmeta = st.decode(data)
    check(bmeta == meta and set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors),
          name + ": round trip")
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT, help="output folder (default tests/golden/optim)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; fail if the files in --out differ from a fresh generation")
    args = ap.parse_args()
    first = {n: case_bytes(n) for n in CASES}
    second = {n: case_bytes(n) for n in CASES}
    check(first == second, "two generations differ (non-determinism)")
    print("hand-written oracle and determinism checks passed for %d cases" % len(first))
    if args.check:
        bad = [n for n, d in first.items()
               if not os.path.exists(os.path.join(args.out, n + ".safetensors"))
               or open(os.path.join(args.out, n + ".safetensors"), "rb").read() != d]
        check(not bad, "committed optimizer golden files differ: %s" % bad)
        print("committed optimizer golden files are up to date")
        return
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for n, d in first.items():
        with open(os.path.join(args.out, n + ".safetensors"), "wb") as f:
            f.write(d)
        total += len(d)
    print("wrote %d cases, %d bytes, to %s" % (len(first), total, args.out))


if __name__ == "__main__":
    main()
