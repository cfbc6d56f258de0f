#!/usr/bin/env bash
# Session 18: the shipped toy_world recipe (19000 steps) with part-training seed 1, from session 18's data and towers
set -euo pipefail
cd /work/main
W=runs/s18/seed1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
start=$(date +%s)
env OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train toy_world \
  root=runs/s18/dm/data/ToyWorld init=runs/s18/dm/pretrain/final seed=1 --out $W/parts --resume --no-progress
echo "part training $(( $(date +%s) - start )) s"
.venv/bin/python -m partclipseg.train.select $W/parts --out $W/best
for protocol in oracle-obj pred-all; do
  .venv/bin/python -m partclipseg.cli evaluate --dataset toy_world --root runs/s18/dm/test/ToyWorld --model $W/best \
    --protocol $protocol --out $W/eval/$protocol.json --no-progress
done
echo "finished $(( $(date +%s) - start )) s"
