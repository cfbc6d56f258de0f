#!/usr/bin/env bash
# Session 16: today's time of the script's stages before part training (data, pretraining), on a fresh work folder; stopped when pretraining is done
cd /work/main
THREADS=1 PROCS=2 PYTHON=.venv/bin/python scripts/make_default_model.sh runs/s16/stages > runs/s16/stages.log 2>&1 &
pid=$!
while ! grep -q "pretraining done" runs/s16/stages.log; do sleep 2; if ! kill -0 $pid 2>/dev/null; then break; fi; done
pkill -f "partclipseg.cli train toy_world root=runs/s16/stages"; kill $pid 2>/dev/null; wait
grep make_default_model runs/s16/stages.log
