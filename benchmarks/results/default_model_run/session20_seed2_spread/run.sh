#!/usr/bin/env bash
# the shipped toy_world recipe with part-training seed 2, from this session's towers (stages.sh), as scripts/make_default_model.sh runs it
set -euo pipefail
cd /work/main; . .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
work=runs/s20/dm
start=$(date +%s)
stamp() { echo "[seed2] $(( $(date +%s) - start )) s: $*"; }
env OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train toy_world \
  "root=$work/data/ToyWorld" "init=$work/pretrain/final" seed=2 --out runs/s20/seed2 --resume --no-progress
stamp "part training done"
python -m partclipseg.train.select runs/s20/seed2 --out runs/s20/seed2_best
for protocol in oracle-obj pred-all; do
  python -m partclipseg.cli evaluate --dataset toy_world --root "$work/test/ToyWorld" --model runs/s20/seed2_best \
    --protocol $protocol --out runs/s20/seed2_eval/$protocol.json --no-progress
done
stamp "evaluation done"
