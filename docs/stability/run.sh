#!/bin/bash
# docs/stability/run.sh — issue 17's learning-rate stability search (docs/stability/report.md),
# from the repository root: `bash docs/stability/run.sh` (resumable: the study continues).
# The study model made deeper (8 layers instead of 4) and without QK-norm (docs/stability/
# model.json), the paper's recipe for instability; baseline against g1_elementwise at four
# learning rates, 1,000 steps of 16 x 128 bytes each, on 2 ranks (one run per rank at a time).
set -eu
TG=${TG:-build/bin/tapegrad}
OUT=${OUT:-runs/stability}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe --bind-to none $TG study --mode lr --config docs/stability/model.json \
  --lrs 0.01,0.03,0.1,0.3 --steps 1000 --batch 16 --seq-len 128 --threads 1 --timing-rounds 0 \
  --eval-batches 8 --out "$OUT"
