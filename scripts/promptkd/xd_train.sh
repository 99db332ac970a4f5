#!/bin/bash
# PromptKD cross-dataset, stage 2: a student on TARGET's full training split, unlabeled, taught by the ImageNet
# teacher (scripts/promptkd/teacher.sh xd TARGET first), tested on TARGET.
# usage: DATA=/path/to/datasets bash scripts/promptkd/xd_train.sh TARGET SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=PromptKD
run_xd_train_target "$@"
