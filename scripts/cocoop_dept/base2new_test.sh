#!/bin/bash
# ExtrasLinearProbeCoCoOp base-to-new, step 2: evaluate the base-trained model on the new half.
# usage: DATA=/path/to/datasets bash scripts/cocoop_dept/base2new_test.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ExtrasLinearProbeCoCoOp
run_base2new_test "$@"
