#!/usr/bin/env bash
set -euo pipefail
cd /work/main
work=runs/dm256
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
PY=.venv/bin/python
start=$(date +%s); stamp() { echo "[run256] $(( $(date +%s) - start )) s: $*"; }
$PY -m partclipseg.data.toyworld $work/data --train 6000 --val 200 --seed 0 --workers 2 --overwrite
$PY -m partclipseg.data.toyworld $work/test --train 0 --val 300 --seed 20261202 --workers 2 --overwrite
stamp data
OMP_NUM_THREADS=2 $PY -m partclipseg.cli pretrain toy_world_pretrain root=$work/data/ToyWorld --out $work/pretrain --resume --no-progress
stamp pretrain
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m partclipseg.cli train runs/s11/toy_world_256.json root=$work/data/ToyWorld init=$work/pretrain/final --out $work/parts --resume --no-progress
stamp parts
$PY -m partclipseg.train.select $work/parts --out $work/best
for p in oracle-obj pred-all; do $PY -m partclipseg.cli evaluate --dataset toy_world --root $work/test/ToyWorld --model $work/best --protocol $p --out $work/eval/$p.json --no-progress; done
stamp done
