#!/bin/bash
# ExtrasLinearProbeCoOp cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots).
# usage: DATA=/path/to/datasets bash scripts/coop_dept/xd_train.sh SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ExtrasLinearProbeCoOp
run_xd_train "$@"
