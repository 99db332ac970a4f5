# shellcheck shell=bash
# Shared logic of scripts/run.sh (the generic entry point: `bash scripts/run.sh TRAINER STEP ARGS...`, for every
# declared method, a plugin's included) and of every scripts/<trainer>/*.sh (CoOp-style per-method scripts: each
# only names its trainer, then calls one run_* function below). The default config per protocol is the one the
# method declares in its trainer class. The output layout and the train.py command line come from mmpt/experiments/layout.py, the same code
# the sweep runner (python -m mmpt.sweep) uses.
#
# Environment:
#   DATA        dataset root (required; the folder that holds caltech-101/, oxford_pets/, imagenet/, ...)
#   CFG         config name under configs/trainers/<Trainer>/ (default: the method's declared default, the sweep's)
#   OUTPUT      output root (default: output, relative to the current folder)
#   OPTS        extra KEY VALUE config options, shell-quoted, e.g. OPTS="OPTIM.MAX_EPOCH 1 INPUT.SIZE '(32, 32)'"
#               (KEY VALUE pairs after the script's positional arguments are appended too); a run with extra
#               options gets its own folder, <cfg>__<KEY>=<value>,... (see mmpt/experiments/layout.py)
#   SHOTS       shots for base-to-new and cross-dataset training (default 16)
#   LOAD_EPOCH  epoch an evaluation loads (default: OPTIM.MAX_EPOCH of the config after OPTS)
#   PYTHON      python interpreter (default: python)
#   NGPUS       processes (GPUs) per run on this node (default 1); > 1 starts train.py through torchrun
#   NNODES      nodes per run (default 1); > 1: run the same command on every node, with RDZV_ENDPOINT
#   RDZV_ENDPOINT  HOST:PORT every node reaches (a node of the run), for NNODES > 1 (docs/DISTRIBUTED.md)
#   DRY_RUN=1   print the command instead of running it
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPTS_DIR")
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-output}
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

_die() {
    echo "$(basename "$(dirname "$0")")/$(basename "$0"): error: $*" >&2
    exit 2
}

USAGE_CMD="bash $0"  # how the usage line names the command (run.sh adds TRAINER STEP)

_require_args() {  # _require_args N "USAGE" "$@"
    local n=$1 usage=$2
    shift 2
    if (($# < n)); then
        _die "usage: [DATA=/path/to/datasets] $USAGE_CMD $usage [KEY VALUE ...]"
    fi
}

_require_data() {
    if [[ -z "${DATA:-}" ]]; then
        _die "DATA is not set: run as DATA=/path/to/datasets bash $0 ... (the folder holding imagenet/, caltech-101/, ...)"
    fi
    if [[ ! -d "$DATA" ]]; then
        _die "DATA=$DATA is not a folder"
    fi
}

# _run_stage STAGE DATASET SEED SHOTS [KEY VALUE ...]: run one train.py command unless its results exist
_run_stage() {
    local stage=$1 dataset=$2 seed=$3 shots=$4
    shift 4
    _require_data
    local -a opts=()
    eval "opts=(${OPTS:-})"
    opts+=("$@")
    local plan
    plan=$("$PYTHON" -m mmpt.experiments.layout plan --stage "$stage" --trainer "$TRAINER" --cfg "${CFG:-}" \
        --dataset "$dataset" --seed "$seed" --shots "$shots" --data "$DATA" --output "$OUTPUT" \
        --python "$PYTHON" ${LOAD_EPOCH:+--load-epoch "$LOAD_EPOCH"} --nproc "${NGPUS:-1}" --nnodes "${NNODES:-1}" \
        --rdzv-endpoint "${RDZV_ENDPOINT:-}" ${PLAN_TEACHER:+--teacher} -- "${opts[@]}") || exit 2
    local RUN_DIR RUN_DONE
    local -a RUN_CMD
    eval "$plan"
    if [[ "$RUN_DONE" == 1 ]]; then
        echo "Skipping $RUN_DIR: its results already exist (result.json records a finished run, config.yaml matches); delete the folder to rerun"
        return 0
    fi
    echo "Running ${PLAN_TEACHER:+the teacher of }$stage -> $RUN_DIR"
    echo "+ ${RUN_CMD[*]@Q}"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        return 0
    fi
    "${RUN_CMD[@]}"
}

# base2new_train.sh DATASET SEED: 16 shots of the base half; the log ends with the base-class test accuracy
run_base2new_train() {
    _require_args 2 "DATASET SEED" "$@"
    _run_stage base2new_train "$1" "$2" "${SHOTS:-16}" "${@:3}"
}

# base2new_test.sh DATASET SEED: the base-trained model on the new half (ZeroshotCLIP: on both halves)
run_base2new_test() {
    _require_args 2 "DATASET SEED" "$@"
    if [[ "$TRAINER" == ZeroshotCLIP ]]; then
        _run_stage base2new_test_base "$1" "$2" "${SHOTS:-16}" "${@:3}"
    fi
    _run_stage base2new_test_new "$1" "$2" "${SHOTS:-16}" "${@:3}"
}

# few_shot.sh DATASET SHOTS SEED: train on SHOTS per class, test on the full test set
run_few_shot() {
    _require_args 3 "DATASET SHOTS SEED" "$@"
    _run_stage fewshot "$1" "$3" "$2" "${@:4}"
}

# xd_train.sh SEED: the cross-dataset / domain-generalisation source model (ImageNet, 16 shots, all classes)
run_xd_train() {
    _require_args 1 "SEED" "$@"
    _run_stage xd_train imagenet "$1" "${SHOTS:-16}" "${@:2}"
}

# xd_test.sh DATASET SEED: the ImageNet model on a target (the 10 others, or imagenetv2 / imagenet_sketch /
# imagenet_a / imagenet_r); ZeroshotCLIP evaluates directly (on the 11 datasets too: the few-shot CLIP row)
run_xd_test() {
    _require_args 2 "DATASET SEED" "$@"
    _run_stage xd_test "$1" "$2" "${SHOTS:-16}" "${@:3}"
}

# Transductive methods (PromptKD: trains on the unlabeled images of every class it is tested on, from a teacher):
# teacher.sh PROTOCOL DATASET: stage 1, the teacher run (base2new: on DATASET's base half; xd: on ImageNet)
run_teacher() {
    _require_args 2 "PROTOCOL DATASET (PROTOCOL: base2new or xd)" "$@"
    case "$1" in
        base2new) PLAN_TEACHER=1 _run_stage base2new_train_all "$2" 1 0 "${@:3}" ;;
        xd) PLAN_TEACHER=1 _run_stage xd_train_target "$2" 1 0 "${@:3}" ;;
        *) _die "unknown protocol '$1' (base2new or xd)" ;;
    esac
}

# base2new_train.sh DATASET SEED (stage 2): the student on every class's full training split, unlabeled
run_base2new_train_all() {
    _require_args 2 "DATASET SEED" "$@"
    _run_stage base2new_train_all "$1" "$2" 0 "${@:3}"
}

# base2new_test.sh DATASET SEED: that student on the base half, then on the new half
run_base2new_test_transductive() {
    _require_args 2 "DATASET SEED" "$@"
    _run_stage base2new_test_base "$1" "$2" 0 "${@:3}"
    _run_stage base2new_test_new "$1" "$2" 0 "${@:3}"
}

# xd_train.sh TARGET SEED (stage 2): the student on the target's full training split, unlabeled, tested there
run_xd_train_target() {
    _require_args 2 "TARGET SEED" "$@"
    _run_stage xd_train_target "$1" "$2" 0 "${@:3}"
}

# the steps of every protocol, by the per-method scripts' names (scripts/<trainer>/<step>.sh)
STEPS="base2new_train base2new_test few_shot xd_train xd_test"

# run.sh TRAINER STEP ARGS...: STEP's run_* function for TRAINER (a declared method's registry name)
run_step() {
    if (($# < 2)); then
        _die "usage: [DATA=/path/to/datasets] bash $0 TRAINER STEP ARGS... [KEY VALUE ...] (STEP: ${STEPS// / / })"
    fi
    TRAINER=$1
    local step=$2
    shift 2
    USAGE_CMD="bash $0 $TRAINER $step"
    case "$step" in
        base2new_train) run_base2new_train "$@" ;;
        base2new_test) run_base2new_test "$@" ;;
        few_shot) run_few_shot "$@" ;;
        xd_train) run_xd_train "$@" ;;
        xd_test) run_xd_test "$@" ;;
        *) _die "unknown step '$step' (known: ${STEPS// /, })" ;;
    esac
}
