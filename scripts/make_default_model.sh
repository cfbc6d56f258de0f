#!/usr/bin/env bash
# Reproduces the built-in default model (src/partclipseg/resources/default_model) and the example
# images: generate the toy world, train the 'toy' config with the toy_world recipe on the CPU, copy.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/default_model}
python -m partclipseg.data.toyworld "$work/data" --train 1000 --val 200 --seed 0 --overwrite
partclipseg train toy_world "root=$work/data/ToyWorld" --out "$work/run"
mkdir -p src/partclipseg/resources/default_model
cp "$work/run/final/config.json" "$work/run/final/model.safetensors" src/partclipseg/resources/default_model/
python scripts/pick_examples.py "$work/data/ToyWorld" examples/images
