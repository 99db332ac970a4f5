#!/bin/bash
# The generic entry point: one protocol step of any declared method (the repository's, or one declared outside it
# through MMPT_TRAINER_MODULES), with the method's declared default config. The same commands and folders as
# scripts/<trainer>/<step>.sh and python -m mmpt.sweep.
# usage: DATA=/path/to/datasets bash scripts/run.sh TRAINER STEP ARGS... [KEY VALUE ...]
#   bash scripts/run.sh CoOp base2new_train DATASET SEED      bash scripts/run.sh CoOp base2new_test DATASET SEED
#   bash scripts/run.sh CoOp few_shot DATASET SHOTS SEED
#   bash scripts/run.sh CoOp xd_train SEED                    bash scripts/run.sh CoOp xd_test DATASET SEED
# (env CFG, OUTPUT, OPTS, SHOTS, LOAD_EPOCH, PYTHON, NGPUS, NNODES, RDZV_ENDPOINT, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step "$@"
