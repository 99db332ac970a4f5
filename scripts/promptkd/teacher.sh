#!/bin/bash
# PromptKD stage 1: the PromptSRC teacher its default config names (ViT-L/14; base2new: the base half of DATASET,
# 16 shots; xd: ImageNet, 16 shots, DATASET = any target). Skipped when it has finished.
# usage: DATA=/path/to/datasets bash scripts/promptkd/teacher.sh base2new|xd DATASET [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=PromptKD
run_teacher "$@"
