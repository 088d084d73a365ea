#!/bin/bash
# docs/sinks/run.sh — the runs of docs/sinks/report.md (issue 17), from the repository root:
#   bash docs/sinks/run.sh            (resumable: a rerun continues unfinished runs)
# Started before `tapegrad study --mode sinks` existed; the mode uses the same folder names.
# Pilot: baseline, BOS, T 512, B 8, 500 steps (2.05 M tokens) at (lr, wd) in
# {(1e-2,0.5),(3e-3,0.1),(1e-2,0.1)}. Choice (declared before the runs): the pilot whose last
# diagnostics row has the largest f_attn_max_head (column 6). Then the full comparison
# baseline / g1_elementwise / g1_headwise at STEPS_FULL steps in that setting.
set -u
TG=${TG:-build/bin/tapegrad}
DATA=${DATA:-data/kjv.txt}
ROOT=${ROOT:-runs/sinks}
STEPS_FULL=${STEPS_FULL:-4000}
mkdir -p $ROOT/full $ROOT/pilot
cp docs/sinks/study_model.json $ROOT/full/base_config.json
cp docs/sinks/study_model.json $ROOT/pilot/base_config.json
run() { # out preset lr wd steps diag
  local out=$1 p=$2 lr=$3 wd=$4 steps=$5 diag=$6
  local name=$p-bos-lr$lr-wd$wd dir=$out/runs/$p-bos-lr$lr-wd$wd
  local warm=$(( steps/10 < 100 ? steps/10 : 100 ))
  local minlr=$(python3 -c "print(repr($lr/10))")
  mkdir -p $out/logs
  if [ -f $dir/train.json ] && ls $dir/checkpoints/*/model.safetensors >/dev/null 2>&1; then
    nice -n 5 $TG train --resume $dir --threads 1 --sample-len 0 --log-every 50 >>$out/logs/$name.log 2>&1
  else
    rm -rf $dir
    nice -n 5 $TG train --config $out/base_config.json --preset $p --data $DATA --val-fraction 0.05 \
      --steps $steps --batch 8 --seq-len 512 --lr $lr --min-lr $minlr --warmup $warm --weight-decay $wd \
      --clip 1 --seed 1 --eval-every $(( steps/20 )) --eval-batches 4 --save-every $(( steps/5 )) \
      --diag-every $diag --diag-batches 2 --bos --out $dir --threads 1 --sample-len 0 --log-every 50 \
      >>$out/logs/$name.log 2>&1
  fi
  echo "$(date -u +%H:%M) done $name rc=$?" >> $ROOT/worker.log
}
P=$ROOT/pilot
for s in "0.01 0.5" "0.003 0.1" "0.01 0.1"; do set -- $s; run $P baseline $1 $2 500 25; done
best=$(for d in $P/runs/baseline-*; do echo "$(tail -1 $d/diagnostics.csv | cut -d, -f6) $d"; done | sort -g | tail -1)
echo "$(date -u +%H:%M) pilot choice: $best" >> $ROOT/worker.log
b=$(basename ${best#* }); lr=$(echo $b | sed 's/.*-lr\([^-]*\)-wd.*/\1/'); wd=${b##*-wd}
echo "$lr $wd" > $ROOT/choice
F=$ROOT/full
for p in baseline g1_elementwise g1_headwise; do run $F $p $lr $wd $STEPS_FULL 100; done
echo "$(date -u +%H:%M) all done" >> $ROOT/worker.log
