#!/bin/bash
# PromptKD base-to-new, stage 2: the student on the full training split of every class, unlabeled, taught by
# the stage-1 teacher (scripts/promptkd/teacher.sh base2new DATASET first; a missing teacher is refused in one line).
# usage: DATA=/path/to/datasets bash scripts/promptkd/base2new_train.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=PromptKD
run_base2new_train_all "$@"
