#!/bin/bash
# KgCoOp few-shot recognition: train on SHOTS per class, test on the full test set.
# (KgCoOp's release runs this protocol as its "xd" script: 4 shots, all classes, each of the 11 datasets.)
# usage: DATA=/path/to/datasets bash scripts/kgcoop/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=KgCoOp
run_few_shot "$@"
