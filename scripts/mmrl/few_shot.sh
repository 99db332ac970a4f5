#!/bin/bash
# MMRL few-shot recognition: train on SHOTS per class, test on the full test set.
# (StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT: GPA mean 45, std 5, from MMRL.dataset_opts)
# usage: DATA=/path/to/datasets bash scripts/promptsrc/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=MMRL
run_few_shot "$@"
