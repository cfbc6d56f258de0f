#!/usr/bin/env bash
# data + pretraining stages of scripts/make_default_model.sh (same commands), THREADS=1 PROCS=2
set -euo pipefail
cd /work/main
. .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592
work=runs/s20/dm
start=$(date +%s)
stamp() { echo "[stages] $(( $(date +%s) - start )) s: $*"; }
python -m partclipseg.data.toyworld "$work/data" --train 6000 --val 200 --seed 0 --workers 2 --overwrite
python -m partclipseg.data.toyworld "$work/test" --train 0 --val 300 --seed 20261202 --workers 2 --overwrite
stamp "data ready"
env OMP_NUM_THREADS=2 python -m partclipseg.cli pretrain toy_world_pretrain "root=$work/data/ToyWorld" --out "$work/pretrain" --resume --no-progress
stamp "pretraining done"
