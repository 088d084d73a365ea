#!/bin/bash
# bench/bpe_vs_bytes.sh — issue 11's figure: a byte-level BPE model against the byte model
# of the same parameter count, trained side by side for the same steps on KJV, compared by
# validation bits per byte of text at equal wall time.
#
#   bash bench/bpe_vs_bytes.sh            (from the repository root, after setup.sh)
#   STEPS=1200 VOCAB=1024 OUT=runs/bpe bash bench/bpe_vs_bytes.sh
#
# The models: the study size (d 128, 4 layers, 4 heads of 32, SwiGLU, untied embeddings).
# Bytes: vocab 256, intermediate 384. BPE: the tokenizer's vocabulary (VOCAB, learned by
# `tapegrad tokenizer train` on the training part of the text only: the first 95%, the
# split `train` trains on) and an intermediate size chosen so that the parameter counts are
# equal: the extra embedding and lm_head rows, 2 * (V - 256) * 128, come out of the MLPs,
# 3 * 128 * (384 - I) per layer. Both train with the same flags (B 16 x T 256 tokens a step,
# so the BPE model sees several times more text a step), one thread each, at the same time
# (so they share the machine alike). val loss and bits/byte are per byte of text for both
# (Note [Loss per byte] in examples/tapegrad/train.cpp). The table: each run's steps, its
# wall time, its final val bits/byte, and the BPE model's val bits/byte at the byte model's
# final elapsed time (interpolated in metrics.csv), and the other way round.
set -euo pipefail
cd "$(dirname "$0")/.."
TG=${TG:-build/bin/tapegrad}
DATA=${DATA:-data/kjv.txt}
OUT=${OUT:-runs/bpe}
STEPS=${STEPS:-1200}
VOCAB=${VOCAB:-1024}
mkdir -p "$OUT"
# The tokenizer learns from the training part only (train's --val-fraction 0.05 holds out the end).
bytes=$(stat -c %s "$DATA")
head -c $(( bytes * 95 / 100 )) "$DATA" > "$OUT/train_part.txt"
[ -s "$OUT/tokenizer.json" ] || $TG tokenizer train --vocab "$VOCAB" --data "$OUT/train_part.txt" --out "$OUT/tokenizer.json"
V=$(/usr/bin/python3 -c "import json,sys; t=json.load(open('$OUT/tokenizer.json')); print(max([*t['model']['vocab'].values(), *[a['id'] for a in t.get('added_tokens', [])]]) + 1)")
# equal parameters: 2 (V - 256) 128 = 4 * 3 * 128 (384 - I)  =>  I = 384 - (V - 256) / 6
I=$(( 384 - (V - 256) / 6 ))
/usr/bin/python3 - "$OUT" "$V" "$I" <<'EOF'
import json, sys
out, V, I = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = json.load(open("docs/sinks/study_model.json"))
json.dump(base, open(f"{out}/bytes_config.json", "w"), indent=2)
base.update(vocab_size=V, intermediate_size=I)
json.dump(base, open(f"{out}/bpe_config.json", "w"), indent=2)
EOF
common=(--data "$DATA" --val-fraction 0.05 --steps "$STEPS" --batch 16 --seq-len 256 --lr 3e-3 --min-lr 3e-4
        --warmup 100 --weight-decay 0.1 --clip 1 --seed 1 --eval-every $(( STEPS / 12 )) --eval-batches 16
        --save-every "$STEPS" --threads 1 --sample-len 0 --log-every 100)
run() { # name config [extra flags]
  local name=$1 config=$2; shift 2
  if [ -f "$OUT/$name/train.json" ]; then
    $TG train --resume "$OUT/$name" --threads 1 --sample-len 0 > "$OUT/$name.log" 2>&1
  else
    $TG train --config "$config" "${common[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  fi
}
run bytes "$OUT/bytes_config.json" &
run bpe "$OUT/bpe_config.json" --tokenizer "$OUT/tokenizer.json" &
wait
grep -h "parameters" "$OUT/bytes.log" "$OUT/bpe.log" | head -2 || true
/usr/bin/python3 - "$OUT" "$V" "$I" <<'EOF'
import csv, sys
out, V, I = sys.argv[1], sys.argv[2], sys.argv[3]
def rows(name):
    r = [x for x in csv.DictReader(open(f"{out}/{name}/metrics.csv")) if x.get("val_bpb") not in (None, "", "nan")]
    return [(float(x["elapsed_s"]), float(x["val_bpb"]), int(x["step"])) for x in r]
def at(rs, t):  # val bits/byte at elapsed time t, linear between evaluations
    for (t0, b0, _), (t1, b1, _) in zip(rs, rs[1:]):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * (t - t0) / (t1 - t0)
    return float("nan")
b, p = rows("bytes"), rows("bpe")
print(f"| model | vocab | intermediate | steps | wall time | final val bits/byte | at the other's final time |")
print(f"|---|---|---|---|---|---|---|")
print(f"| bytes | 256 | 384 | {b[-1][2]} | {b[-1][0]:.0f} s | {b[-1][1]:.4f} | {at(b, p[-1][0]):.4f} at {p[-1][0]:.0f} s |")
print(f"| BPE | {V} | {I} | {p[-1][2]} | {p[-1][0]:.0f} s | {p[-1][1]:.4f} | {at(p, b[-1][0]):.4f} at {b[-1][0]:.0f} s |")
EOF
