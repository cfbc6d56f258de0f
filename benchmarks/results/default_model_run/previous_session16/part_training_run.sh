#!/usr/bin/env bash
# Session 16: the toy_world recipe with the speed-ups (loss.pixel_stride=4, cache_resized, token rows synced alone) and 17000 steps of 4 (the whole script within 60 min); same data and towers as the shipped run
set -euo pipefail
cd /work/main
W=runs/s16/fast17k
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
start=$(date +%s)
env OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train toy_world \
  root=runs/dm_b4/data/ToyWorld init=runs/dm_b4/pretrain/final --out $W/parts --resume --no-progress
echo "part training $(( $(date +%s) - start )) s"
.venv/bin/python -m partclipseg.train.select $W/parts --out $W/best
for protocol in oracle-obj pred-all; do
  .venv/bin/python -m partclipseg.cli evaluate --dataset toy_world --root runs/dm_b4/test/ToyWorld --model $W/best \
    --protocol $protocol --out $W/eval/$protocol.json --no-progress
done
echo "finished $(( $(date +%s) - start )) s"
