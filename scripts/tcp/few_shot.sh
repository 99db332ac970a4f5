#!/bin/bash
# TCP few-shot recognition: train on SHOTS per class, test on the full test set.
# (TCP's release ships no few-shot settings: this uses its base-to-new configs.)
# usage: DATA=/path/to/datasets bash scripts/tcp/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=TCP
run_few_shot "$@"
