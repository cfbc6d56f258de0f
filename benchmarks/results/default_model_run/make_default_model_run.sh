#!/usr/bin/env bash
# Session 18: scripts/make_default_model.sh end to end (THREADS=1 PROCS=2), toy_world recipe with iterations=19000
set -euo pipefail
cd /work/main
start=$(date +%s)
THREADS=1 PROCS=2 PYTHON=.venv/bin/python bash scripts/make_default_model.sh runs/s18/dm
echo "script $(( $(date +%s) - start )) s"
