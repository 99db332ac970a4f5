#!/bin/bash
# MMRL few-shot recognition: train on SHOTS per class, test on the full test set.
# (REG_WEIGHT per dataset, EuroSAT REP_DIM 2048: from MMRL.dataset_opts, as the official code applies them)
# usage: DATA=/path/to/datasets bash scripts/mmrl/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=MMRL
run_few_shot "$@"
