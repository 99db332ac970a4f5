#!/bin/bash
# ExtrasLinearProbePromptSRC cross-dataset / domain generalisation, step 2: evaluate the ImageNet model on DATASET.
# usage: DATA=/path/to/datasets bash scripts/promptsrc_dept/xd_test.sh DATASET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=ExtrasLinearProbePromptSRC
run_xd_test "$@"
