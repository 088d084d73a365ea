#!/bin/bash
# docs/zoo/ — the main table for every preset of the zoo but more_experts (which needs an MoE
# size), with the settings of docs/study (study model, 1,000 steps of 16 x 128 bytes, lr 3e-3,
# seed 1), on 2 ranks. From the repository root: bash docs/study/zoo_run.sh; then docs/zoo/ holds
# report.md, its plots and results/ (the run folders stay in runs/zoo).
set -eu
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe --bind-to none build/bin/tapegrad study --mode main --threads 1 \
  --presets baseline,more_kv_heads,more_q_heads,g1_elementwise,g2_elementwise,g3_elementwise,g4_elementwise,g5_elementwise,g1_headwise,g2_headwise,g1_head_shared,g2_head_shared,g1_additive_silu,g1_elementwise_silu,g1_rmsnorm,g1_silu_only,g1_additive_identity,g1_input_independent,g1_ns_sigmoid --timing-rounds 3 --out runs/zoo
mkdir -p docs/zoo
cp -r runs/zoo/report.md runs/zoo/*.png runs/zoo/results runs/zoo/study.json docs/zoo/
