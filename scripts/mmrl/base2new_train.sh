#!/bin/bash
# MMRL base-to-new, step 1: train on the base half (16 shots).
# (REG_WEIGHT per dataset, EuroSAT REP_DIM 2048: from MMRL.dataset_opts, as the official code applies them)
# usage: DATA=/path/to/datasets bash scripts/mmrl/base2new_train.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=MMRL
run_base2new_train "$@"
