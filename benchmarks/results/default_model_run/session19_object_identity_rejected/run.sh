#!/usr/bin/env bash
# Session 19 (not shipped): scripts/make_default_model.sh end to end on a fresh folder, with the toy_world
# recipe's "loss" holding "object_identity_lambda": 0.2 (added to src/partclipseg/resources/recipes/toy_world.json
# for the run, then removed); everything else as shipped (19000 steps).
cd /work/main
start=$(date +%s)
THREADS=1 PROCS=2 PYTHON=.venv/bin/python bash scripts/make_default_model.sh runs/s19/dm
echo "script $(( $(date +%s) - start )) s"
