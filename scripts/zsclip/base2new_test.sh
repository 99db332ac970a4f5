#!/bin/bash
# ZeroshotCLIP base-to-new: zero-shot CLIP on the base and on the new half.
# usage: DATA=/path/to/datasets bash scripts/zsclip/base2new_test.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ZeroshotCLIP
run_base2new_test "$@"
