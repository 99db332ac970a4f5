#!/bin/bash
# TCP cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots; not in the release: its
# base-to-new ImageNet config, 25 epochs).
# usage: DATA=/path/to/datasets bash scripts/tcp/xd_train.sh SEED [KEY VALUE ...]
# (env CFG, OUTPUT, OPTS, PYTHON, DRY_RUN: see scripts/common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
TRAINER=TCP
run_xd_train "$@"
