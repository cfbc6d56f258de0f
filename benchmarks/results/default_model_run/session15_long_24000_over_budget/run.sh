#!/usr/bin/env bash
# Session 15: the shipped recipe with twice the part-training steps (24000 of 4 images; poly schedule stretched), same data and towers as the shipped run: where does the curve go with 2x the budget
set -euo pipefail
cd /work/main
W=runs/s15/long24k
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
start=$(date +%s)
env OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train toy_world \
  root=runs/dm_b4/data/ToyWorld init=runs/dm_b4/pretrain/final iterations=24000 --out $W/parts --resume --no-progress
echo "part training $(( $(date +%s) - start )) s"
.venv/bin/python -m partclipseg.train.select $W/parts --out $W/best
for protocol in oracle-obj pred-all; do
  .venv/bin/python -m partclipseg.cli evaluate --dataset toy_world --root runs/dm_b4/test/ToyWorld --model $W/best \
    --protocol $protocol --out $W/eval/$protocol.json --no-progress
done
echo "finished $(( $(date +%s) - start )) s"
