#!/usr/bin/env bash
# The CUDA check of this repository, on one GPU, in under 8 minutes:
#   1. the test suite with MMPT_TEST_DEVICE=cuda (tests/test_device.py: bf16 / fp16 autocast, SDPA kernels,
#      GradScaler, shared prefix; the end-to-end runs train on the GPU with PREC amp);
#   2. the training step (every lever on in bf16, shared prefix off, fp16 + GradScaler, physical limit) with
#      its peak memory, and evaluation images/s in bf16 and fp16, at 100 and 1000 classes, random ViT-B/16;
#   3. a Markdown table for README (benchmarks/cuda_table.py), also written to <out>/table.md.
# Exit status: 0 all done; 2 bad arguments; 3 no CUDA device; else the first failing step's status.
set -uo pipefail

usage() {
    cat <<'EOF'
usage: benchmarks/cuda_check.sh [--out DIR] [--trainers "T1 T2 ..."|all] [--classes "100 1000"] [--repeats N]
                                [--skip-tests] [--skip-benchmarks] [--table-only] [--help]
  --out DIR          where logs, records.jsonl and table.md go (default benchmarks/results/cuda)
  --trainers LIST    trainers to benchmark (default: all = every declared method that trains)
  --classes LIST     class counts (default "100 1000")
  --repeats N        timed repeats per configuration (default 5, after 2 warm-up rounds)
  --skip-tests       benchmarks only;  --skip-benchmarks: tests only
  --table-only       print the table from DIR/records.jsonl (no GPU needed)
Environment: PYTHON (default python). Run from anywhere; it works in the repository root.
EOF
}

die() { echo "cuda_check.sh: $*" >&2; exit 2; }

OUT=benchmarks/results/cuda
TRAINERS=all
CLASSES="100 1000"
REPEATS=5
RUN_TESTS=1
RUN_BENCHMARKS=1
TABLE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift 2 ;;
        --trainers) [ $# -ge 2 ] || die "--trainers needs a list"; TRAINERS=$2; shift 2 ;;
        --classes) [ $# -ge 2 ] || die "--classes needs a list"; CLASSES=$2; shift 2 ;;
        --repeats) [ $# -ge 2 ] && [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--repeats needs a positive integer"
                   REPEATS=$2; shift 2 ;;
        --skip-tests) RUN_TESTS=0; shift ;;
        --skip-benchmarks) RUN_BENCHMARKS=0; shift ;;
        --table-only) TABLE_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for n in $CLASSES; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "--classes: '$n' is not a positive integer"; done

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RECORDS="$OUT/records.jsonl"

table() {
    "$PYTHON" benchmarks/cuda_table.py "$RECORDS" | tee "$OUT/table.md"
}

if [ "$TABLE_ONLY" = 1 ]; then
    [ -f "$RECORDS" ] || die "--table-only: no $RECORDS"
    table
    exit $?
fi

# fail fast, in one line, where there is no GPU
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
    version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "not importable")
    echo "cuda_check.sh: no CUDA device (torch $version with $PYTHON); this check needs one GPU" >&2
    exit 3
fi
mkdir -p "$OUT" || exit 2
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)' | tee "$OUT/gpu.txt"
started=$SECONDS

step() {  # step <name> <seconds> <command...>: run under a time limit, log to $OUT/<name>.log
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after $((SECONDS - started))s in all"
    return "$status"
}

if [ "$RUN_TESTS" = 1 ]; then
    MMPT_TEST_DEVICE=cuda step tests 210 "$PYTHON" -m pytest -q -x -p no:cacheprovider || exit $?
fi
if [ "$RUN_BENCHMARKS" = 1 ]; then
    rm -f "$RECORDS"
    # shellcheck disable=SC2086  # the lists split into arguments on purpose
    step train_step 150 "$PYTHON" benchmarks/train_step.py --device cuda --trainers $TRAINERS --classes $CLASSES \
        --only "shared prefix off" "precision fp16 + GradScaler" --limit --repeats "$REPEATS" --warmup 2 \
        --json "$RECORDS" || exit $?
    for precision in bf16 fp16; do
        # shellcheck disable=SC2086
        step "eval_$precision" 45 "$PYTHON" benchmarks/eval_throughput.py --device cuda --trainers $TRAINERS \
            --classes $CLASSES --batch 100 --precision "$precision" --repeats "$REPEATS" --warmup 2 \
            --json "$RECORDS" || exit $?
    done
    echo
    table || exit $?
fi
echo "cuda_check.sh: done in $((SECONDS - started))s; logs in $OUT"
