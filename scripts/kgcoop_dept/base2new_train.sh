#!/bin/bash
# ExtrasLinearProbeKgCoOp base-to-new, step 1: train on the base half (16 shots).
# usage: DATA=/path/to/datasets bash scripts/kgcoop_dept/base2new_train.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ExtrasLinearProbeKgCoOp
run_base2new_train "$@"
