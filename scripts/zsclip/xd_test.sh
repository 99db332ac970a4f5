#!/bin/bash
# ZeroshotCLIP zero-shot CLIP on DATASET (the 11 datasets give the few-shot table's CLIP row).
# usage: DATA=/path/to/datasets bash scripts/zsclip/xd_test.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ZeroshotCLIP
run_xd_test "$@"
