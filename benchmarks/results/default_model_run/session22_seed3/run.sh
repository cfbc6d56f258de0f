#!/usr/bin/env bash
# session 22: the recipe (new selection rule) with part-training seed 3, from session 21's data and towers
set -euo pipefail
cd /work/main; . .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
w=runs/s21/dm
env OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train toy_world \
  "root=$w/data/ToyWorld" "init=$w/pretrain/final" seed=3 --out runs/s22/seed3 --resume --no-progress
python -m partclipseg.train.select runs/s22/seed3 --out runs/s22/seed3_best
for p in oracle-obj pred-all; do
  python -m partclipseg.cli evaluate --dataset toy_world --root $w/test/ToyWorld --model runs/s22/seed3_best --protocol $p --out runs/s22/seed3_eval/$p.json --no-progress
done
echo finished
