#!/usr/bin/env bash
# Reproduces the built-in default model (src/partclipseg/resources/default_model) and the example images:
#   1. draw the toy world (6000 training + 200 validation images, seed 0, 320-640 px) and a test set
#      drawn with a seed that no training step sees;
#   2. toy language-image pretraining of the vision and text towers (recipe toy_world_pretrain);
#   3. part training from the towers (recipe toy_world, supervision=parts+objects: the seen objects' part
#      masks and the object masks of every object, unseen ones included, as CLIPSeg's PhraseCut training
#      places cows and buses for the real model; no part of an unseen object is labelled), evaluated
#      every 3000 steps and at the end on every validation sample; the best checkpoint by harmonic mIoU is kept;
#   4. partclipseg evaluate (Oracle-Obj and Pred-All) on the test set;
#   5. copy the model into the package and pick the example images from the test set.
# Every step resumes where a killed run stopped. SMOKE=1: tiny sizes (seconds; CI), nothing copied.
# THREADS (default: torch's choice) sets OMP_NUM_THREADS: on shared cores 1 thread per job is faster.
# PROCS (default 1): part-training processes (torchrun, one batch split over them, 1 thread
# each; on the 2-core machine PROCS=2 trains twice as fast as one 1-thread process: 16 vs 8 images/s).
# Usage: scripts/make_default_model.sh [WORK_DIR]            (default runs/default_model)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/default_model}
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS; fi
# glibc: keep freed blocks of up to 32 MiB (a training step's logits and their gradients) in the heap
# instead of returning them to the kernel and page-faulting them back in every step (~7% per step)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-8589934592}
PYTHON=${PYTHON:-python}
TEST_SEED=20261202
if [ "${SMOKE:-0}" = 1 ]; then
  n_train=8; n_val=4; n_test=4; sizes=(--min-size 64 --max-size 96)
  pre=(iterations=4 batch_size=4 checkpoint_period=2 eval_period=4 log_period=1 image_size=64)
  parts=(iterations=4 batch_size=2 checkpoint_period=2 eval_period=2 eval_limit=4 log_period=1 image_size=64)
else
  n_train=6000; n_val=200; n_test=300; sizes=(); pre=(); parts=()
fi
start=$(date +%s)
stamp() { echo "[make_default_model] $(( $(date +%s) - start )) s: $*"; }

if [ ! -f "$work/data/ToyWorld/captions/val.json" ]; then
  $PYTHON -m partclipseg.data.toyworld "$work/data" --train $n_train --val $n_val --seed 0 "${sizes[@]}" --workers 2 --overwrite
fi
if [ ! -f "$work/test/ToyWorld/captions/val.json" ]; then
  $PYTHON -m partclipseg.data.toyworld "$work/test" --train 0 --val $n_test --seed $TEST_SEED "${sizes[@]}" --workers 2 --overwrite
fi
stamp "data ready"
# pretraining is one process: it gets the cores of all PROCS part-training processes (THREADS each); on the
# quiet 2-core machine 2 threads take 0.14 s a step against 0.26 s for one
procs=${PROCS:-1}
pre_launch=($PYTHON)
if [ -n "${THREADS:-}" ]; then pre_launch=(env OMP_NUM_THREADS=$(( THREADS * procs )) $PYTHON); fi
"${pre_launch[@]}" -m partclipseg.cli pretrain toy_world_pretrain "root=$work/data/ToyWorld" "${pre[@]}" --out "$work/pretrain" --resume --no-progress
stamp "pretraining done"
if [ "$procs" -gt 1 ]; then
  launch=(env OMP_NUM_THREADS=1 $PYTHON -m torch.distributed.run --standalone --nproc_per_node="$procs" -m partclipseg.cli)
else
  launch=($PYTHON -m partclipseg.cli)
fi
"${launch[@]}" train toy_world "root=$work/data/ToyWorld" "init=$work/pretrain/final" "${parts[@]}" \
  --out "$work/parts" --resume --no-progress
stamp "part training done"
$PYTHON -m partclipseg.train.select "$work/parts" --out "$work/best"
for protocol in oracle-obj pred-all; do
  $PYTHON -m partclipseg.cli evaluate --dataset toy_world --root "$work/test/ToyWorld" --model "$work/best" \
    --protocol $protocol --out "$work/eval/$protocol.json" --no-progress
done
stamp "evaluation done"
if [ "${SMOKE:-0}" != 1 ]; then
  mkdir -p src/partclipseg/resources/default_model
  cp "$work/best/config.json" "$work/best/model.safetensors" src/partclipseg/resources/default_model/
  $PYTHON scripts/pick_examples.py "$work/test/ToyWorld" examples/images
fi
stamp "finished"
