#!/bin/bash
# MMA few-shot recognition: train on SHOTS per class, test on the full test set (not an official MMA
# protocol; base-to-new's configs).
# usage: DATA=/path/to/datasets bash scripts/mma/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=MMA
run_few_shot "$@"
