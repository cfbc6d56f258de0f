#!/usr/bin/env bash
# session 21: scripts/make_default_model.sh end to end on a fresh folder (a worktree of HEAD, so that its
# final copy into the package lands there), THREADS=1 PROCS=2 as the README says
cd /tmp/s21/wt
. /work/main/.venv/bin/activate
export PYTHONPATH=/tmp/s21/wt/src
lscpu | grep "Model name"
git log --oneline | head -1
/usr/bin/time -v env THREADS=1 PROCS=2 scripts/make_default_model.sh /work/main/runs/s21/dm
