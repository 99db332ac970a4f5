#!/bin/bash
# PromptKD base-to-new: the student evaluated on the base half and on the new half (teacher's text features).
# usage: DATA=/path/to/datasets bash scripts/promptkd/base2new_test.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=PromptKD
run_base2new_test_transductive "$@"
