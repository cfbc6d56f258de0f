#!/usr/bin/env bash
# Recipe lab: toy_world part-training variants side by side on one machine (made for a lent GPU, where one
# toy run leaves the device mostly idle: six runs at once each took ~6.4 steps/s on an H200, 38 steps/s in
# all, against ~2.2 steps/s for the CPU recipe's two processes). Every variant starts from the same towers,
# draws the same toy world and runs the toy_world recipe with its own overrides; the validation Pred-All
# of every eval_period lands in the summary, so a run stopped at DEADLINE still compares the variants at
# equal steps (all share one schedule).
#
# Usage: benchmarks/gpu_recipe_lab.sh TOWERS NAME[:key=value,key=value...] ...
#   e.g. benchmarks/gpu_recipe_lab.sh runs/pretrain/final base ce05:loss.object_ce_lambda=0.5 lr2e3:lr=0.002
# NAME: letters, digits, '.', '_' or '-', each once, not "data" or "logs"; overrides are split at commas, so
# a value cannot hold one (give list values as their own variant-free recipe instead). Relative paths are
# taken from the caller's folder.
# Env: OUT (results; default runs/recipe_lab), W (work folder, default /tmp/recipe_lab), DEADLINE (seconds
# from the start after which the runs are stopped; default 540), TRAIN (training images, default 6000),
# WORKERS (toy-world drawing processes, default: the CPUs less 2), SMOKE=1 (tiny sizes, seconds).
# Writes OUT/summary.json ({variant: {"overrides", "val_pred_all": {step: [seen, unseen, harmonic]},
# "last_step", "seconds"}}) and OUT/logs.tgz (every log and metrics file; the device tool returns few files).
set -u
if [ $# -lt 2 ]; then echo "usage: $0 TOWERS NAME[:key=value,...] ..." >&2; exit 2; fi
towers=$1; shift
if [ ! -f "$towers/model.safetensors" ]; then echo "error: $towers has no model.safetensors (a pretraining run's final/)" >&2; exit 2; fi
seen=" "
for spec in "$@"; do
  name=${spec%%:*}
  if ! [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || [ "$name" = data ] || [ "$name" = logs ] || [ "$name" = . ] \
     || [ "$name" = .. ] || [[ "$seen" == *" $name "* ]]; then
    echo "error: variant name '$name' (from '$spec'): use letters, digits, '.', '_' or '-', each name once, not data or logs" >&2
    exit 2
  fi
  seen="$seen$name "
done
OUT=${OUT:-runs/recipe_lab}; W=${W:-/tmp/recipe_lab}; DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT" "$W/logs"
towers=$(realpath "$towers"); OUT=$(realpath "$OUT"); W=$(realpath "$W")
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
rm -f "$W"/logs/*
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
workers=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
if [ "${SMOKE:-0}" = 1 ]; then
  data=(--train 8 --val 4 --min-size 64 --max-size 96 --workers 1)
  extra=(iterations=4 batch_size=2 eval_period=2 eval_limit=4 log_period=1 image_size=64 num_workers=0)
else
  data=(--train "${TRAIN:-6000}" --val 200 --workers "$workers"); extra=(num_workers=2)
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$W/logs/env.txt" 2>&1
# the drawn world is reused only when it was drawn with the same arguments (a smoke world is not a full one)
stamp="seed 0 ${data[*]}"
if [ ! -f "$W/data/ToyWorld/captions/val.json" ] || [ "$(cat "$W/data/lab_stamp.txt" 2>/dev/null)" != "$stamp" ]; then
  rm -f "$W/data/lab_stamp.txt"
  $PY -m partclipseg.data.toyworld "$W/data" --seed 0 "${data[@]}" --overwrite > "$W/logs/data.log" 2>&1 \
    || { echo "error: drawing the toy world failed (see $W/logs/data.log)" >&2; exit 1; }
  echo "$stamp" > "$W/data/lab_stamp.txt"
fi
echo "data ready at $(el) s" >> "$W/logs/times.txt"
names=()
for spec in "$@"; do
  name=${spec%%:*}; overrides=()
  if [ "$spec" != "$name" ]; then IFS=, read -r -a overrides <<< "${spec#*:}"; fi
  names+=("$name"); echo "$name ${overrides[*]}" >> "$W/logs/variants.txt"
  rm -rf "${W:?}/$name"
  $PY -m partclipseg.cli train toy_world "root=$W/data/ToyWorld" "init=$towers" checkpoint_period=100000 \
    "${extra[@]}" "${overrides[@]}" --out "$W/$name" --no-progress > "$W/logs/$name.log" 2>&1 &
done
while [ -n "$(jobs -rp)" ] && [ "$(el)" -lt "$DEADLINE" ]; do sleep 5; done
echo "stopped at $(el) s; runs still going: $(jobs -rp | wc -l)" >> "$W/logs/times.txt"
kill $(jobs -rp) 2>/dev/null; wait 2>/dev/null
for n in "${names[@]}"; do [ -f "$W/$n/metrics.jsonl" ] && cp "$W/$n/metrics.jsonl" "$W/logs/$n.metrics.jsonl"; done
tar czf "$OUT/logs.tgz" -C "$W" logs
cat "$W/logs/times.txt"
# the summary; a variant that never logged a step failed (a bad override, a crash): named, exit 1
$PY - "$W/logs" "$OUT/summary.json" <<'PYEOF'
import json, sys
from pathlib import Path
logs, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for line in (logs / "variants.txt").read_text().splitlines():
    name, *overrides = line.split(" ")
    entry = {"overrides": [o for o in overrides if o], "val_pred_all": {}, "last_step": 0, "seconds": None}
    path = logs / f"{name}.metrics.jsonl"
    for row in (json.loads(x) for x in (path.read_text().splitlines() if path.exists() else [])):
        if "eval" in row:
            entry["val_pred_all"][str(row["step"])] = [round(row[k], 1) for k in ("seen", "unseen", "harmonic")]
        else:
            entry["last_step"], entry["seconds"] = row["step"], row.get("seconds")
    summary[name] = entry
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(summary, indent=1) + "\n")
tmp.replace(out)
failed = [name for name, entry in summary.items() if not entry["last_step"]]
if failed:
    sys.exit(f"error: variant(s) {', '.join(failed)} made no step (see their logs in logs.tgz)")
PYEOF
