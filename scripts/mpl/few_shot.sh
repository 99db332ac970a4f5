#!/bin/bash
# MPL few-shot recognition: train on SHOTS per class, test on the full test set.
# usage: DATA=/path/to/datasets bash scripts/mpl/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=MPL
run_few_shot "$@"
