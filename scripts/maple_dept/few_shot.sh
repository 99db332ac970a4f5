#!/bin/bash
# ExtrasLinearProbeMaPLe few-shot recognition: train on SHOTS per class, test on the full test set.
# The head is trained on all classes here (USE_HEAD always, declared; ours: the release has no such protocol).
# usage: DATA=/path/to/datasets bash scripts/maple_dept/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ExtrasLinearProbeMaPLe
run_few_shot "$@"
